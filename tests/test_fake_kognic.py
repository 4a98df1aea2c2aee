"""The fake Kognic answers as the API contract says, faults included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from annopull.testing import FakeKognic, Fault, KognicProject

pytestmark = pytest.mark.anyio

SEARCH = "/v1/annotations/projects/{project}/annotation-type/{atype}/search"
BATCH_SEARCH = "/v1/annotations/projects/{project}/batch/{batch}/annotation-type/{atype}/search"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def kognic() -> AsyncIterator[FakeKognic]:
    project = KognicProject(count=250, page_size=20, batches=("a", "b", "c"))
    async with FakeKognic(projects=[project]) as fake:
        yield fake


async def get_token(session: aiohttp.ClientSession, kognic: FakeKognic) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": kognic.client_id,
        "client_secret": kognic.client_secret,
    }
    async with session.post(kognic.auth_url + "/v1/auth/oauth/token", data=form) as response:
        assert response.status == 200
        body = await response.json()
    token: str = body["access_token"]
    return token


async def auth(session: aiohttp.ClientSession, kognic: FakeKognic) -> dict[str, str]:
    return {"Authorization": f"Bearer {await get_token(session, kognic)}"}


async def first_page(
    session: aiohttp.ClientSession, kognic: FakeKognic, headers: dict[str, str]
) -> list[dict[str, Any]]:
    url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
    async with session.get(url, headers=headers) as response:
        assert response.status == 200
        items: list[dict[str, Any]] = (await response.json())["data"]
    return items


async def list_all(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[list[dict[str, Any]], int]:
    """Follow nextCursorId to the end; return the items and the number of pages."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"cursorId": cursor} if cursor is not None else {}
        async with session.get(url, headers=headers, params=params) as response:
            assert response.status == 200
            body = await response.json()
        pages += 1
        items += body["data"]
        cursor = body["metadata"]["nextCursorId"]
        if cursor is None:
            return items, pages


async def read_into(response: aiohttp.ClientResponse, received: bytearray) -> None:
    async for chunk in response.content.iter_any():
        received += chunk


async def test_token_flow(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """Right client credentials get a Bearer token with the configured lifetime."""
    form = {
        "grant_type": "client_credentials",
        "client_id": kognic.client_id,
        "client_secret": kognic.client_secret,
    }
    async with session.post(kognic.auth_url + "/v1/auth/oauth/token", data=form) as response:
        body = await response.json()
    assert response.status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"]
    assert kognic.stats.token_requests == 1


@pytest.mark.parametrize(
    "form",
    [
        pytest.param({"client_secret": "wrong"}, id="wrong-secret"),
        pytest.param({"client_id": "someone-else"}, id="wrong-id"),
    ],
)
async def test_token_bad_credentials(
    session: aiohttp.ClientSession, kognic: FakeKognic, form: dict[str, str]
) -> None:
    """Wrong client id or secret is a 401 with a JSON message, counted in stats."""
    data = {
        "grant_type": "client_credentials",
        "client_id": kognic.client_id,
        "client_secret": kognic.client_secret,
    } | form
    async with session.post(kognic.auth_url + "/v1/auth/oauth/token", data=data) as response:
        assert response.status == 401
        assert "message" in await response.json()
    assert kognic.stats.unauthorized == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer not-a-token"}, id="unknown"),
        pytest.param({"Authorization": "Basic abc"}, id="wrong-scheme"),
    ],
)
async def test_search_requires_token(
    session: aiohttp.ClientSession, kognic: FakeKognic, headers: dict[str, str]
) -> None:
    """The search API answers 401 without a valid Bearer token."""
    url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
    async with session.get(url, headers=headers) as response:
        assert response.status == 401
        assert "message" in await response.json()
    assert kognic.stats.unauthorized == 1


async def test_expire_tokens(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """After expire_tokens() an issued token answers 401; a new one works."""
    headers = await auth(session, kognic)
    url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
    kognic.expire_tokens()
    async with session.get(url, headers=headers) as response:
        assert response.status == 401
    async with session.get(url, headers=await auth(session, kognic)) as response:
        assert response.status == 200


async def test_token_ttl(session: aiohttp.ClientSession) -> None:
    """A token older than token_ttl answers 401."""
    async with FakeKognic(token_ttl=0.05) as kognic:
        headers = await auth(session, kognic)
        await asyncio.sleep(0.1)
        url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
        async with session.get(url, headers=headers) as response:
            assert response.status == 401


async def test_pagination_yields_expected(
    session: aiohttp.ClientSession, kognic: FakeKognic
) -> None:
    """Following cursors over many pages lists exactly expected(), content included."""
    headers = await auth(session, kognic)
    url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
    items, pages = await list_all(session, url, headers)
    expected = list(kognic.expected("demo", "demo"))
    assert pages == 13
    assert [(i["inputUuid"], i["created"]) for i in items] == [
        (e.scene_uuid, e.created) for e in expected
    ]
    assert {i["annotationType"] for i in items} == {"demo"}
    assert len({i["inputUuid"] for i in items}) == 250
    for item, annotation in zip(items[:40], expected[:40], strict=True):
        async with session.get(item["uri"]) as response:
            assert response.status == 200
            assert response.content_length == len(annotation.content)
            assert await response.read() == annotation.content
    assert sum(kognic.stats.content_requests.values()) == 40


async def test_batch_filter(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """The batch search lists only that batch's scenes (every third scene for "b")."""
    headers = await auth(session, kognic)
    url = kognic.api_url + BATCH_SEARCH.format(project="demo", batch="b", atype="demo")
    items, _ = await list_all(session, url, headers)
    everything = [e.scene_uuid for e in kognic.expected("demo", "demo")]
    assert [i["inputUuid"] for i in items] == everything[1::3]
    assert [i["inputUuid"] for i in items] == [
        e.scene_uuid for e in kognic.expected("demo", "demo", batch="b")
    ]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(SEARCH.format(project="nope", atype="demo"), id="project"),
        pytest.param(SEARCH.format(project="demo", atype="nope"), id="type"),
        pytest.param(BATCH_SEARCH.format(project="demo", batch="z", atype="demo"), id="batch"),
        pytest.param(
            "/v1/annotations/inputs/00000000-0000-4000-8000-000000000000/annotation-type/demo",
            id="scene",
        ),
    ],
)
async def test_unknown_is_404(
    session: aiohttp.ClientSession, kognic: FakeKognic, path: str
) -> None:
    """Unknown projects, batches, types and scenes are 404 with a JSON message."""
    async with session.get(kognic.api_url + path, headers=await auth(session, kognic)) as response:
        assert response.status == 404
        assert "message" in await response.json()


async def test_bad_cursor(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """A cursorId the server never issued is a 400."""
    url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
    headers = await auth(session, kognic)
    async with session.get(url, headers=headers, params={"cursorId": "x"}) as response:
        assert response.status == 400


async def test_single_annotation(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """The single-annotation endpoint embeds the same content the storage serves."""
    annotation = next(kognic.expected("demo", "demo"))
    url = f"{kognic.api_url}/v1/annotations/inputs/{annotation.scene_uuid}/annotation-type/demo"
    async with session.get(url, headers=await auth(session, kognic)) as response:
        body = await response.json()
    assert body["data"]["inputUuid"] == annotation.scene_uuid
    assert body["data"]["created"] == annotation.created
    assert body["data"]["content"] == json.loads(annotation.content)


async def test_content_is_openlabel(session: aiohttp.ClientSession) -> None:
    """Content is valid OpenLABEL JSON of about content_size bytes, different per scene."""
    project = KognicProject(count=50, content_size=20_000)
    async with FakeKognic(projects=[project]) as kognic:
        annotations = list(kognic.expected("demo", "demo"))
    documents = [json.loads(a.content) for a in annotations]
    assert all(18_000 < len(a.content) < 22_000 for a in annotations)
    assert all(set(d["openlabel"]) == {"metadata", "objects", "frames"} for d in documents)
    assert [d["openlabel"]["metadata"]["name"] for d in documents] == [
        a.scene_uuid for a in annotations
    ]
    assert len({a.content for a in annotations}) == 50
    assert kognic.content("demo", annotations[7].scene_uuid, "demo") == annotations[7].content


async def test_data_is_deterministic() -> None:
    """The same seed gives the same scenes; another seed gives others."""
    fakes = [FakeKognic(projects=[KognicProject(count=5, seed=seed)]) for seed in (1, 1, 2)]
    listings = [
        [(a.scene_uuid, a.created, a.content) for a in f.expected("demo", "demo")] for f in fakes
    ]
    assert listings[0] == listings[1]
    assert {uuid for uuid, _, _ in listings[0]}.isdisjoint(uuid for uuid, _, _ in listings[2])


async def test_signed_url_expiry() -> None:
    """A storage URL past its expiry is a 403."""
    async with aiohttp.ClientSession() as session, FakeKognic(url_ttl=0) as kognic:
        item = (await first_page(session, kognic, await auth(session, kognic)))[0]
        async with session.get(item["uri"]) as response:
            assert response.status == 403
            assert "expired" in (await response.json())["message"]


async def test_bad_signature(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """A storage URL whose signature does not match is a 403."""
    item = (await first_page(session, kognic, await auth(session, kognic)))[0]
    async with session.get(item["uri"].replace("signature=", "signature=0")) as response:
        assert response.status == 403


async def test_storage_rejects_auth_header(
    session: aiohttp.ClientSession, kognic: FakeKognic
) -> None:
    """Storage answers 400 to a request carrying Authorization, and counts it."""
    headers = await auth(session, kognic)
    item = (await first_page(session, kognic, headers))[0]
    async with session.get(item["uri"], headers=headers) as response:
        assert response.status == 400
    assert kognic.stats.storage_requests_with_auth_header == 1


@pytest.mark.parametrize(
    ("range_header", "status", "piece"),
    [
        pytest.param("bytes=10-19", 206, slice(10, 20), id="closed"),
        pytest.param("bytes=100-", 206, slice(100, None), id="open"),
        pytest.param("bytes=-7", 206, slice(-7, None), id="suffix"),
        pytest.param("bytes=0-0,5-6", 200, slice(None), id="multi-ignored"),
    ],
)
async def test_storage_range(
    session: aiohttp.ClientSession,
    kognic: FakeKognic,
    range_header: str,
    status: int,
    piece: slice,
) -> None:
    """Storage honours a single byte range with 206 and Content-Range."""
    item = (await first_page(session, kognic, await auth(session, kognic)))[0]
    content = kognic.content("demo", item["inputUuid"], "demo")
    async with session.get(item["uri"], headers={"Range": range_header}) as response:
        assert response.status == status
        assert await response.read() == content[piece]
    if status == 206:
        start = piece.start % len(content)
        assert response.headers["Content-Range"] == (
            f"bytes {start}-{start + len(content[piece]) - 1}/{len(content)}"
        )


async def test_storage_range_unsatisfiable(
    session: aiohttp.ClientSession, kognic: FakeKognic
) -> None:
    """A range past the end is a 416 naming the size."""
    item = (await first_page(session, kognic, await auth(session, kognic)))[0]
    size = len(kognic.content("demo", item["inputUuid"], "demo"))
    async with session.get(item["uri"], headers={"Range": f"bytes={size}-"}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == f"bytes */{size}"


async def test_fault_status_with_retry_after(
    session: aiohttp.ClientSession, kognic: FakeKognic
) -> None:
    """A status fault answers its status and Retry-After `times` times, then clears."""
    headers = await auth(session, kognic)
    kognic.faults.add(Fault(target="search", status=429, retry_after="3", times=2))
    url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
    for _ in range(2):
        async with session.get(url, headers=headers) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "3"
            assert "message" in await response.json()
    async with session.get(url, headers=headers) as response:
        assert response.status == 200


async def test_fault_on_token(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """Token faults hit the auth endpoint."""
    kognic.faults.add(Fault(target="token", status=503))
    form = {"grant_type": "client_credentials", "client_id": kognic.client_id}
    async with session.post(kognic.auth_url + "/v1/auth/oauth/token", data=form) as response:
        assert response.status == 503
    assert await get_token(session, kognic)


async def test_fault_truncate(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """truncate_after sends the full Content-Length but cuts the body after N bytes."""
    item = (await first_page(session, kognic, await auth(session, kognic)))[0]
    content = kognic.content("demo", item["inputUuid"], "demo")
    kognic.faults.add(Fault(target="content", truncate_after=100))
    received = bytearray()
    async with session.get(item["uri"]) as response:
        assert response.content_length == len(content)
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_into(response, received)
    assert received == content[:100]
    assert kognic.stats.content_bytes == 100
    async with session.get(item["uri"]) as response:
        assert await response.read() == content


async def test_fault_stall(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """A stall fault delays the answer past a client read timeout."""
    item = (await first_page(session, kognic, await auth(session, kognic)))[0]
    kognic.faults.add(Fault(target="content", stall=2.0))
    timeout = aiohttp.ClientTimeout(sock_read=0.2)
    with pytest.raises(asyncio.TimeoutError):
        async with session.get(item["uri"], timeout=timeout) as response:
            await response.read()
    async with session.get(item["uri"], timeout=timeout) as response:
        assert response.status == 200


async def test_fault_match(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """A fault with match applies only to that scene's content."""
    first, second = (await first_page(session, kognic, await auth(session, kognic)))[:2]
    kognic.faults.add(Fault(target="content", status=500, match=second["inputUuid"]))
    async with session.get(first["uri"]) as response:
        assert response.status == 200
    async with session.get(second["uri"]) as response:
        assert response.status == 500
    async with session.get(second["uri"]) as response:
        assert response.status == 200


async def test_faults_clear(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """clear() drops faults not yet used."""
    kognic.faults.add(Fault(target="token", status=500, times=5))
    kognic.faults.clear()
    assert await get_token(session, kognic)


async def test_update_scenes(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """update_scenes gives a later created and new content; old URLs keep the old version."""
    headers = await auth(session, kognic)
    before = await first_page(session, kognic, headers)
    old_content = kognic.content("demo", before[3]["inputUuid"], "demo")
    kognic.update_scenes("demo", [before[3]["inputUuid"]])
    after = await first_page(session, kognic, headers)
    assert after[3]["created"] > max(item["created"] for item in before)
    assert [a["created"] for i, a in enumerate(after) if i != 3] == [
        b["created"] for i, b in enumerate(before) if i != 3
    ]
    new_content = kognic.content("demo", after[3]["inputUuid"], "demo")
    assert new_content != old_content
    async with session.get(after[3]["uri"]) as response:
        assert await response.read() == new_content
    async with session.get(before[3]["uri"]) as response:
        assert await response.read() == old_content
    expected = list(kognic.expected("demo", "demo"))
    assert (expected[3].created, expected[3].content) == (after[3]["created"], new_content)


async def test_credentials_file_content(kognic: FakeKognic) -> None:
    """The KOGNIC_CREDENTIALS object carries the fake's client id and secret."""
    content = kognic.credentials_file_content()
    assert set(content) == {"clientId", "clientSecret", "email", "userId", "issuer"}
    assert (content["clientId"], content["clientSecret"]) == (
        kognic.client_id,
        kognic.client_secret,
    )


def test_loopback_only() -> None:
    """The fake refuses to listen on a non-loopback address."""
    with pytest.raises(ValueError, match="loopback"):
        FakeKognic(host="0.0.0.0")


def test_urls_need_start() -> None:
    """URLs of a fake that is not started are an error, not a wrong value."""
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeKognic().api_url

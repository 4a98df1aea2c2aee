"""The fake Kognic answers as the API contract says, faults included."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import pytest

from annopull.testing import Chaos, ChaosEvent, FakeKognic, Fault, KognicProject

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


async def get_json(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], **params: str
) -> tuple[int, Any]:
    async with session.get(url, headers=headers, params=params) as response:
        return response.status, await response.json()


async def test_v2_input_read(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """v2/inputs/{uuid}/annotation is the contract's partial annotation; its uri serves the
    same content as the bulk listing's."""
    scene = list(kognic.expected("demo", "demo"))[5]
    expected = kognic.scene_annotation("demo", scene.scene_uuid, "demo")
    url = f"{kognic.api_url}/v2/inputs/{expected.input_uuid}/annotation"
    headers = await auth(session, kognic)
    status, body = await get_json(session, url, headers, useDefaultCartesian="true")
    assert status == 200
    assert set(body) == {"inputUuid", "sceneUuid", "requestUid", "created", "uri"}
    assert (body["inputUuid"], body["sceneUuid"], body["requestUid"], body["created"]) == (
        expected.input_uuid,
        scene.scene_uuid,
        expected.request_uid,
        scene.created,
    )
    async with session.get(body["uri"]) as response:
        assert await response.read() == scene.content == expected.content
    assert kognic.stats.cartesian_reads == 1
    assert kognic.stats.content_requests[scene.scene_uuid] == 1


async def test_v2_scene_read(session: aiohttp.ClientSession) -> None:
    """v2/scenes/{uuid}/annotations lists one partial annotation per type; unknown is 404."""
    project = KognicProject(annotation_types=("a", "b", "c"), count=4, batches=("x", "y"))
    async with FakeKognic(projects=[project]) as kognic:
        scene = list(kognic.expected("demo", "a"))[3].scene_uuid
        headers = await auth(session, kognic)
        url = f"{kognic.api_url}/v2/scenes/{scene}/annotations"
        status, body = await get_json(session, url, headers)
        expected = [kognic.scene_annotation("demo", scene, t) for t in ("a", "b", "c")]
        missing, _ = await get_json(session, url.replace(scene, str(uuid.uuid4())), headers)
        unauthorized, _ = await get_json(session, url, {})
    assert status == 200
    assert [item["inputUuid"] for item in body["data"]] == [e.input_uuid for e in expected]
    assert {item["sceneUuid"] for item in body["data"]} == {scene}
    assert len({item["requestUid"] for item in body["data"]}) == 3
    assert (missing, unauthorized) == (404, 401)


async def test_annotation_by_id(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """The annotation-integration host serves an annotation by id, with the same token."""
    scene = list(kognic.expected("demo", "demo"))[2]
    annotation_id = kognic.annotation_id("demo", scene.scene_uuid, "demo")
    expected = kognic.scene_annotation("demo", scene.scene_uuid, "demo")
    url = f"{kognic.annotation_integration_url}/v1/annotations/{annotation_id}"
    assert kognic.annotation_integration_url not in (kognic.api_url, kognic.storage_url)
    headers = await auth(session, kognic)
    status, body = await get_json(session, url, headers, isoBoxes="true")
    unknown, _ = await get_json(session, url.replace(annotation_id, str(uuid.uuid4())), headers)
    unauthorized, _ = await get_json(session, url, {})
    assert status == 200
    assert set(body) == {
        "id",
        "sceneId",
        "requestId",
        "requestInputId",
        "requestUid",
        "isPreliminary",
        "signedUrl",
        "expiresAt",
        "created",
    }
    assert (body["id"], body["sceneId"], body["requestInputId"], body["requestUid"]) == (
        annotation_id,
        scene.scene_uuid,
        expected.input_uuid,
        expected.request_uid,
    )
    assert body["isPreliminary"] is False
    assert isinstance(body["requestId"], int)
    assert datetime.fromisoformat(body["expiresAt"]) > datetime.now(UTC)
    async with session.get(body["signedUrl"]) as response:
        assert await response.read() == scene.content
    assert (unknown, unauthorized) == (404, 401)
    assert kognic.stats.cartesian_reads == 1


async def test_annotation_ids_are_stable_and_distinct() -> None:
    """Ids, input uuids and request uids come from the seed: the same for the same seed,
    distinct per scene and type, and one request per batch and type."""
    project = KognicProject(count=6, batches=("x", "y"), annotation_types=("a", "b"))
    fakes = [FakeKognic(projects=[project]) for _ in range(2)]
    scenes = [e.scene_uuid for e in fakes[0].expected("demo", "a")]
    described = [
        [f.scene_annotation("demo", s, t) for s in scenes for t in ("a", "b")] for f in fakes
    ]
    assert described[0] == described[1]
    assert len({d.annotation_id for d in described[0]}) == 12
    assert len({d.input_uuid for d in described[0]}) == 12
    assert len({d.request_uid for d in described[0]}) == 4


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


# -- echoed errors, redirects, custom messages (Fault) -------------------------------------


async def test_fault_echo_token(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """An echoing token fault quotes the form body, client_secret included, in its message."""
    kognic.faults.add(Fault(target="token", status=401, echo=True, message="invalid_client"))
    form = {
        "grant_type": "client_credentials",
        "client_id": kognic.client_id,
        "client_secret": kognic.client_secret,
    }
    async with session.post(kognic.auth_url + "/v1/auth/oauth/token", data=form) as response:
        assert response.status == 401
        message = (await response.json())["message"]
    assert message.startswith("invalid_client: POST " + kognic.auth_url)
    assert f"client_secret={kognic.client_secret}" in message


async def test_fault_echo_search(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """An echoing API fault quotes the Authorization header (the bearer token)."""
    headers = await auth(session, kognic)
    kognic.faults.add(Fault(target="search", status=400, echo=True))
    url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
    async with session.get(url, headers=headers) as response:
        assert response.status == 400
        body = await response.json()
    assert f"Authorization: {headers['Authorization']}" in body["message"]
    assert body["request"]["headers"]["Authorization"] == headers["Authorization"]


async def test_fault_echo_storage_xml(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """An echoing storage fault answers one line of XML quoting the signed query."""
    item = (await first_page(session, kognic, await auth(session, kognic)))[0]
    kognic.faults.add(Fault(target="content", status=403, echo=True))
    signature = item["uri"].rpartition("signature=")[2]
    async with session.get(item["uri"]) as response:
        assert response.status == 403
        assert response.content_type == "application/xml"
        text = await response.text()
    assert "\n" not in text.split("<StringToSign>")[0]
    assert "<Code>SignatureDoesNotMatch</Code>" in text
    assert f"<SignatureProvided>{signature}</SignatureProvided>" in text
    assert f"signature={signature}</Details>" in text


async def test_fault_redirect_loop(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """A redirect fault sends the client back to the same signed URL until it gives up."""
    item = (await first_page(session, kognic, await auth(session, kognic)))[0]
    kognic.faults.add(Fault(target="content", redirect=True, times=100))
    async with session.get(item["uri"], allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == item["uri"]
    with pytest.raises(aiohttp.TooManyRedirects):
        async with session.get(item["uri"], max_redirects=5):
            pass


async def test_fault_message(session: aiohttp.ClientSession, kognic: FakeKognic) -> None:
    """message replaces the injected-fault text of a status fault."""
    kognic.faults.add(Fault(target="token", status=503, message="maintenance window"))
    form = {"grant_type": "client_credentials", "client_id": kognic.client_id}
    async with session.post(kognic.auth_url + "/v1/auth/oauth/token", data=form) as response:
        assert (await response.json())["message"] == "maintenance window"


# -- chaos --------------------------------------------------------------------------------


def chaos_fake(chaos: Chaos, **kwargs: Any) -> FakeKognic:
    project = KognicProject(count=60, page_size=10, content_size=3000)
    return FakeKognic(projects=[project], chaos=chaos, **kwargs)


async def fetch_all(
    session: aiohttp.ClientSession, kognic: FakeKognic, items: list[dict[str, Any]]
) -> list[tuple[int, int]]:
    """GET each item's content in order; return (status, bytes received or -1 if cut)."""
    seen: list[tuple[int, int]] = []
    for item in items:
        received = bytearray()
        async with session.get(item["uri"]) as response:
            try:
                await read_into(response, received)
            except aiohttp.ClientPayloadError:
                seen.append((response.status, -1))
                continue
            seen.append((response.status, len(received)))
    return seen


async def test_chaos_decide_same_seed_same_decisions() -> None:
    """decide() depends only on (seed, target, key, n): equal seeds agree, others differ."""
    knobs: dict[str, Any] = {
        "error_rate": 0.3,
        "cut_rate": 0.2,
        "stall_rate": 0.2,
        "wrong_length_rate": 0.2,
        "malformed_rate": 0.3,
        "latency": 0.05,
        "latency_spread": 0.02,
    }
    calls = [(t, f"k{k}", n) for t in ("search", "content") for k in range(30) for n in range(3)]
    first = [Chaos(seed=4, **knobs).decide(*call) for call in calls]
    again = [Chaos(seed=4, **knobs).decide(*call) for call in reversed(calls)][::-1]
    other = [Chaos(seed=5, **knobs).decide(*call) for call in calls]
    assert first == again
    assert first != other
    assert {d.status for d in first} >= {None, 500, 502, 503}
    assert {d.malformed for d in first if d.target == "content"} == {None}


@pytest.mark.parametrize(
    ("knob", "field"),
    [
        pytest.param("error_rate", "status", id="5xx"),
        pytest.param("cut_rate", "cut", id="cut"),
        pytest.param("stall_rate", "stall", id="stall"),
        pytest.param("wrong_length_rate", "wrong_length", id="wrong-length"),
        pytest.param("malformed_rate", "malformed", id="malformed"),
    ],
)
def test_chaos_rates(knob: str, field: str) -> None:
    """Each rate hits about that fraction of requests, and 0 and 1 mean never and always."""
    calls = [("search", f"page{k}", 0) for k in range(4000)]
    for rate, low, high in ((0.0, 0, 0), (0.25, 900, 1100), (1.0, 4000, 4000)):
        chaos = Chaos(seed=1, **{knob: rate})
        hits = sum(getattr(chaos.decide(*call), field) is not None for call in calls)
        assert low <= hits <= high, (rate, hits)


@pytest.mark.parametrize(
    ("shape", "spread"), [pytest.param("uniform", 0.05), pytest.param("lognormal", 0.8)]
)
def test_chaos_latency_spread(shape: Literal["uniform", "lognormal"], spread: float) -> None:
    """Latency has the asked-for mean; uniform stays within the spread, lognormal has a tail."""
    chaos = Chaos(seed=2, latency=0.1, latency_spread=spread, latency_shape=shape)
    waits = [chaos.decide("content", f"s{k}", 0).latency for k in range(4000)]
    assert statistics.fmean(waits) == pytest.approx(0.1, rel=0.08)
    assert len(set(waits)) > 3000
    if shape == "uniform":
        assert 0.05 <= min(waits) < 0.052
        assert 0.148 < max(waits) <= 0.15
    else:
        assert min(waits) > 0
        assert statistics.median(waits) < 0.08  # most answers are quick...
        assert max(waits) > 0.5  # ...and a few are very slow


def test_chaos_rejects_bad_settings() -> None:
    """Rates outside [0, 1], unknown targets or kinds, and non-5xx statuses are refused."""
    for bad in (
        {"error_rate": 1.5},
        {"cut_rate": -0.1},
        {"latency": -1.0},
        {"targets": frozenset({"nowhere"})},
        {"malformed_kinds": ("bad",)},
        {"error_statuses": (404,)},
        {"export_error_rate": 0.6, "export_stuck_rate": 0.6},
        {"rate_burst": 0},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each message names its knob
            Chaos(**bad)


async def test_chaos_5xx_as_decided(session: aiohttp.ClientSession) -> None:
    """The storage answers exactly the 5xx that decide() predicts, and records them."""
    chaos = Chaos(seed=3, error_rate=0.4, targets=frozenset({"content"}))
    async with chaos_fake(chaos) as kognic:
        items = await first_page(session, kognic, await auth(session, kognic))
        seen = await fetch_all(session, kognic, items)
        events = list(kognic.stats.chaos)
    predicted = [chaos.decide("content", item["inputUuid"], 0).status for item in items]
    assert [status for status, _ in seen] == [p or 200 for p in predicted]
    assert 0 < sum(p is not None for p in predicted) < len(items)
    assert events == [
        ChaosEvent("content", item["inputUuid"], f"status {p}")
        for item, p in zip(items, predicted, strict=True)
        if p is not None
    ]


async def test_chaos_same_seed_same_sequence(session: aiohttp.ClientSession) -> None:
    """Two fakes with the same seed misbehave alike on the same requests; another seed does not."""
    chaos = Chaos(seed=11, error_rate=0.2, cut_rate=0.2, wrong_length_rate=0.2)
    runs = []
    for seed in (11, 11, 12):
        async with chaos_fake(replace(chaos, seed=seed, targets=frozenset({"content"}))) as fake:
            items = await first_page(session, fake, await auth(session, fake))
            seen = await fetch_all(session, fake, items + items)
            runs.append((seen, [event[1:] for event in fake.stats.chaos]))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert any(received == -1 for _, received in runs[0][0])


async def test_chaos_rate_limit(session: aiohttp.ClientSession) -> None:
    """Beyond the bucket a server answers 429 with Retry-After; the bucket refills at the rate."""
    async with chaos_fake(Chaos(rate_limit=1.0, rate_burst=2)) as kognic:
        headers = await auth(session, kognic)  # the auth server has its own bucket
        url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
        statuses = []
        for _ in range(4):
            async with session.get(url, headers=headers) as response:
                statuses.append(response.status)
                retry_after = response.headers.get("Retry-After")
        await asyncio.sleep(1.1)
        async with session.get(url, headers=headers) as response:
            refilled = response.status
        events = [event.action for event in kognic.stats.chaos]
    assert statuses == [200, 200, 429, 429]
    assert retry_after == "1"
    assert refilled == 200
    assert events == ["rate-limited", "rate-limited"]


async def test_chaos_cut_bodies(session: aiohttp.ClientSession) -> None:
    """A cut body sends full headers, then the decided fraction of the body, then drops."""
    chaos = Chaos(seed=5, cut_rate=1.0, targets=frozenset({"content"}))
    async with chaos_fake(chaos) as kognic:
        items = (await first_page(session, kognic, await auth(session, kognic)))[:5]
        for item in items:
            content = kognic.content("demo", item["inputUuid"], "demo")
            cut = chaos.decide("content", item["inputUuid"], 0).cut
            assert cut is not None
            received = bytearray()
            async with session.get(item["uri"]) as response:
                assert response.content_length == len(content)
                with pytest.raises(aiohttp.ClientPayloadError):
                    await read_into(response, received)
            assert received == content[: int(cut * len(content))]


async def test_chaos_stalled_bodies(session: aiohttp.ClientSession) -> None:
    """A stalled body pauses mid-way: a patient client gets it all, an impatient one times out."""
    chaos = Chaos(seed=6, stall_rate=1.0, stall=0.6, targets=frozenset({"content"}))
    async with chaos_fake(chaos) as kognic:
        item = (await first_page(session, kognic, await auth(session, kognic)))[0]
        content = kognic.content("demo", item["inputUuid"], "demo")
        started = time.monotonic()
        async with session.get(item["uri"]) as response:
            assert await response.read() == content
        assert time.monotonic() - started >= 0.6
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(
                item["uri"], timeout=aiohttp.ClientTimeout(sock_read=0.2)
            ) as response:
                await response.read()
        assert [e.action.split()[0] for e in kognic.stats.chaos] == ["stall", "stall"]


async def test_chaos_wrong_content_length(session: aiohttp.ClientSession) -> None:
    """A shorter Content-Length yields a short body that looks complete; a longer one drops."""
    chaos = Chaos(seed=7, wrong_length_rate=1.0, targets=frozenset({"content"}))
    kinds = set()
    async with chaos_fake(chaos) as kognic:
        items = await first_page(session, kognic, await auth(session, kognic))
        for item in items:
            content = kognic.content("demo", item["inputUuid"], "demo")
            decision = chaos.decide("content", item["inputUuid"], 0)
            declared = decision.declared_length(len(content))
            received = bytearray()
            async with session.get(item["uri"]) as response:
                assert response.content_length == declared != len(content)
                if declared < len(content):
                    await read_into(response, received)
                    assert received == content[:declared]
                    kinds.add("shorter")
                else:
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await read_into(response, received)
                    assert received == content
                    kinds.add("longer")
    assert kinds == {"shorter", "longer"}


async def test_chaos_expiring_urls(session: aiohttp.ClientSession) -> None:
    """Signed URLs are valid for url_ttl seconds, to the millisecond, then answer 403."""
    async with chaos_fake(Chaos(), url_ttl=0.5) as kognic:
        item = (await first_page(session, kognic, await auth(session, kognic)))[0]
        async with session.get(item["uri"]) as response:
            assert response.status == 200
        await asyncio.sleep(0.6)
        async with session.get(item["uri"]) as response:
            assert response.status == 403
            assert "expired" in (await response.json())["message"]


@pytest.mark.parametrize("kind", ["invalid-json", "missing-fields", "non-list-data"])
async def test_chaos_malformed_pages(session: aiohttp.ClientSession, kind: str) -> None:
    """Malformed listing pages are 200 answers with bad JSON, missing fields or a non-list data."""
    chaos = Chaos(seed=8, malformed_rate=1.0, malformed_kinds=(kind,))
    async with chaos_fake(chaos) as kognic:
        headers = await auth(session, kognic)
        url = kognic.api_url + SEARCH.format(project="demo", atype="demo")
        for cursor in range(0, 60, 10):
            async with session.get(url, headers=headers, params={"cursorId": cursor}) as response:
                assert response.status == 200
                text = await response.text()
            if kind == "invalid-json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(text)
                continue
            body = json.loads(text)
            if kind == "non-list-data":
                assert not isinstance(body["data"], list)
            else:
                fields = {"inputUuid", "annotationType", "created", "uri"}
                assert "data" not in body or any(set(i) != fields for i in body["data"])
        assert [e.action for e in kognic.stats.chaos] == [f"malformed {kind}"] * 6


async def test_chaos_auth_down_for_requests(session: aiohttp.ClientSession) -> None:
    """The first N token requests answer 503 with Retry-After; then tokens are issued."""
    async with chaos_fake(Chaos(auth_down_requests=2)) as kognic:
        form = {
            "grant_type": "client_credentials",
            "client_id": kognic.client_id,
            "client_secret": kognic.client_secret,
        }
        for _ in range(2):
            async with session.post(kognic.auth_url + "/v1/auth/oauth/token", data=form) as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
        assert await get_token(session, kognic)
        assert [e.action for e in kognic.stats.chaos] == ["auth-down", "auth-down"]


async def test_chaos_auth_down_for_seconds(session: aiohttp.ClientSession) -> None:
    """For auth_down_for seconds after start the auth server answers 503, then it recovers."""
    async with chaos_fake(Chaos(auth_down_for=1.0)) as kognic:
        form = {"grant_type": "client_credentials", "client_id": kognic.client_id}
        async with session.post(kognic.auth_url + "/v1/auth/oauth/token", data=form) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "1"
        await asyncio.sleep(1.1)
        assert await get_token(session, kognic)


async def test_chaos_targets_and_faults_first(session: aiohttp.ClientSession) -> None:
    """Chaos spares endpoints outside its targets, and a scripted fault replaces it."""
    chaos = Chaos(error_rate=1.0, targets=frozenset({"content"}))
    async with chaos_fake(chaos) as kognic:
        items = await first_page(session, kognic, await auth(session, kognic))
        kognic.faults.add(Fault(target="content", truncate_after=10**9))
        seen = await fetch_all(session, kognic, items[:2])
    assert seen[0] == (200, len(kognic.content("demo", items[0]["inputUuid"], "demo")))
    assert seen[1][0] in (500, 502, 503)

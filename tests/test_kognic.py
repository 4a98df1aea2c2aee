"""The Kognic source against the fake Kognic over loopback: listing, streaming, bulk download.

Every output is read back with an independent reader (``zipfile``, the file system, ``json``)
and compared with what the fake served, byte for byte.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from annopull._client import Client
from annopull._config import EngineConfig, KognicConfig, Secret
from annopull._errors import ApiError, AuthError, NotFoundError, TransferError
from annopull._sinks import DirectorySink, JsonlSink, Sink, ZipSink, sink_for
from annopull._sources.kognic import Annotation, KognicSource
from annopull._transport.auth import ApiKeyAuth
from annopull._transport.http import Transport
from annopull.testing import ExpectedAnnotation, FakeKognic, Fault, KognicProject
from annopull.testing.faults import start_app

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., Client]

PROJECT = KognicProject(
    project="P",
    batches=("a", "b"),
    annotation_types=("T", "U"),
    count=60,
    page_size=7,
    content_size=3000,
)


def _expected(fake: FakeKognic, batch: str | None = None, atype: str = "T") -> dict[str, bytes]:
    return {e.scene_uuid: e.content for e in fake.expected("P", atype, batch)}


def _zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert len(names) == len(set(names))
        return {name: archive.read(name) for name in names}


def _as_entries(expected: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{scene}.json": content for scene, content in expected.items()}


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in {".part", ".journal", ".tmp"})


@pytest.mark.parametrize(
    ("batch", "atype"),
    [
        pytest.param(None, "T", id="whole-project"),
        pytest.param("a", "T", id="batch-a"),
        pytest.param("b", "U", id="batch-b-other-type"),
    ],
)
async def test_zip_holds_exactly_what_was_served(
    kognic_client: MakeClient, tmp_path: Path, batch: str | None, atype: str
) -> None:
    """Each listed annotation becomes one {scene_uuid}.json entry equal byte for byte."""
    async with FakeKognic(projects=[PROJECT]) as fake:
        async with kognic_client(fake) as client:
            report = await client.kognic.download(
                "P", atype, batch=batch, sink=ZipSink(tmp_path / "out.zip")
            )
        expected = _expected(fake, batch, atype)
        assert fake.stats.storage_requests_with_auth_header == 0
        assert fake.stats.search_requests == math.ceil(len(expected) / PROJECT.page_size)
    assert len(expected) == (60 if batch is None else 30)
    assert _zip_entries(tmp_path / "out.zip") == _as_entries(expected)
    assert (report.listed, report.downloaded, report.failures) == (len(expected), len(expected), ())
    assert report.bytes == sum(map(len, expected.values()))
    assert report.ok
    assert report.output == str(tmp_path / "out.zip")
    assert _leftovers(tmp_path) == []


async def test_directory_holds_one_file_per_annotation(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """The folder output holds one {scene_uuid}.json per annotation, equal to what was served."""
    out = tmp_path / "folder"
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        report = await client.kognic.download("P", "T", batch="a", sink=DirectorySink(out))
        expected = _expected(fake, "a")
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert files == _as_entries(expected)
    assert report.downloaded == 30


async def test_jsonl_lines_hold_fields_and_parsed_content(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """Each JSON line carries scene_uuid, annotation_type, created and the served JSON."""
    out = tmp_path / "out.jsonl"
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        await client.kognic.download("P", "U", sink=JsonlSink(out))
        expected = {e.scene_uuid: e for e in fake.expected("P", "U")}
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == len(expected) == 60
    for line in lines:
        served = expected.pop(line["scene_uuid"])
        assert line == {
            "scene_uuid": served.scene_uuid,
            "annotation_type": "U",
            "created": served.created,
            "content": json.loads(served.content),
        }
    assert expected == {}
    assert _leftovers(tmp_path) == []


async def test_pagination_over_many_pages(kognic_client: MakeClient, tmp_path: Path) -> None:
    """A 500-item project listed three at a time arrives complete, each page read once."""
    project = KognicProject(
        project="P", annotation_types=("T",), count=500, page_size=3, content_size=300
    )
    async with FakeKognic(projects=[project]) as fake:
        async with kognic_client(fake, concurrency=16) as client:
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
        expected = _expected(fake)
        assert fake.stats.search_requests == 167
        assert sum(fake.stats.content_requests.values()) == 500
    assert report.downloaded == 500
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


async def test_project_annotations_yields_each_once(kognic_client: MakeClient) -> None:
    """The async iterator yields every annotation exactly once with its served content."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        got: list[Annotation] = []
        async with client.kognic.project_annotations("P", "T", batch="b") as annotations:
            async for ann in annotations:
                got.append(ann)
        expected = {e.scene_uuid: e for e in fake.expected("P", "T", "b")}
    assert len(got) == len({a.scene_uuid for a in got}) == 30
    for ann in got:
        served = expected[ann.scene_uuid]
        assert (ann.content, ann.created, ann.annotation_type) == (
            served.content,
            served.created,
            "T",
        )
        assert ann.json() == json.loads(served.content)


async def test_project_annotations_early_exit_cancels(kognic_client: MakeClient) -> None:
    """Leaving the block early stops the fetches: no requests go out afterwards."""
    project = KognicProject(project="P", annotation_types=("T",), count=400, page_size=10)
    async with FakeKognic(projects=[project]) as fake, kognic_client(fake, concurrency=4) as client:
        with anyio.fail_after(5):
            async with client.kognic.project_annotations("P", "T") as annotations:
                async for _ann in annotations:
                    break
        after_exit = (fake.stats.search_requests, sum(fake.stats.content_requests.values()))
        await anyio.sleep(0.2)
        assert (fake.stats.search_requests, sum(fake.stats.content_requests.values())) == (
            after_exit
        )
    # Bounded read-ahead: a handful of pages and fetches, never the whole project.
    assert after_exit[0] <= 3
    assert after_exit[1] <= 20


async def _drain(client: Client, batch: str) -> None:
    async with client.kognic.project_annotations("P", "T", batch=batch) as annotations:
        async for _ann in annotations:
            pass


async def test_project_annotations_raises_when_an_item_fails(kognic_client: MakeClient) -> None:
    """An item that fails for good raises TransferError itself (not a group), without hanging."""
    async with FakeKognic(projects=[PROJECT]) as fake:
        bad = next(fake.expected("P", "T", "a")).scene_uuid
        fake.faults.add(Fault(target="content", status=500, times=10, match=bad))
        async with kognic_client(fake, max_attempts=2) as client:
            with anyio.fail_after(10), pytest.raises(TransferError) as info:
                await _drain(client, "a")
    assert info.value.item == bad
    assert "after 2 attempts" in str(info.value)


async def test_listing_failing_mid_run_raises_annopull_error(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """A search page failing for good after the first stops download() with TransferError."""
    async with FakeKognic(projects=[PROJECT]) as fake:
        fake.faults.add(Fault(target="search"), Fault(target="search", status=500, times=50))
        async with kognic_client(fake, max_attempts=2) as client:
            with anyio.fail_after(10), pytest.raises(TransferError) as info:
                await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
    assert info.value.status == 500
    assert "/v1/annotations/projects/P/annotation-type/T/search" in str(info.value)
    assert not (tmp_path / "o.zip").exists()


async def test_get_annotation_and_unknown_scene(kognic_client: MakeClient) -> None:
    """A single fetch returns the served content; an unknown scene is a NotFoundError."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        served = next(fake.expected("P", "U", "b"))
        ann = await client.kognic.get_annotation(served.scene_uuid, "U")
        with pytest.raises(NotFoundError) as info:
            await client.kognic.get_annotation("00000000-0000-4000-8000-000000000000", "U")
    assert (ann.scene_uuid, ann.created, ann.annotation_type) == (
        served.scene_uuid,
        served.created,
        "U",
    )
    assert ann.json() == json.loads(served.content)
    assert info.value.status == 404


async def test_token_refreshed_before_expiry(kognic_client: MakeClient, tmp_path: Path) -> None:
    """With a token living 0.4 s, a longer run fetches new tokens and never gets a 401."""
    project = KognicProject(
        project="P", annotation_types=("T",), count=40, page_size=2, content_size=200
    )
    async with FakeKognic(projects=[project], token_ttl=0.4) as fake:
        # 30 requests/s (per host, so the 40 content fetches alone take over a second).
        async with kognic_client(fake, concurrency=2, rate_limit=30) as client:
            start = time.monotonic()
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
            elapsed = time.monotonic() - start
        expected = _expected(fake)
        stats = fake.stats
    assert elapsed > 0.8
    assert stats.token_requests >= 3
    assert stats.unauthorized == 0
    assert report.downloaded == 40
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


async def test_token_revoked_mid_run_one_refetch(kognic_client: MakeClient) -> None:
    """A 401 mid-run costs exactly one new token and the listing goes on."""
    project = KognicProject(project="P", annotation_types=("T",), count=30, page_size=2)
    async with FakeKognic(projects=[project]) as fake:
        async with kognic_client(fake, concurrency=2) as client:
            seen: set[str] = set()
            async with client.kognic.project_annotations("P", "T") as annotations:
                async for ann in annotations:
                    if not seen:
                        fake.expire_tokens()
                    seen.add(ann.scene_uuid)
        assert seen == set(_expected(fake))
        assert fake.stats.token_requests == 2
        assert fake.stats.unauthorized == 1


def _http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


@pytest.mark.parametrize(
    ("target", "retry_after", "at_least"),
    [
        pytest.param("content", lambda: "1", 0.95, id="content-seconds"),
        pytest.param("search", lambda: "1", 0.95, id="search-seconds"),
        pytest.param("content", lambda: _http_date(2), 0.9, id="content-http-date"),
    ],
)
async def test_429_retry_after_honoured(
    kognic_client: MakeClient,
    tmp_path: Path,
    target: str,
    retry_after: Callable[[], str],
    at_least: float,
) -> None:
    """A 429 with Retry-After is waited out (at least the asked delay), then all arrives."""
    project = KognicProject(project="P", annotation_types=("T",), count=5, content_size=500)
    async with FakeKognic(projects=[project]) as fake:
        fake.faults.add(Fault(target=target, status=429, retry_after=retry_after()))
        async with kognic_client(fake) as client:
            start = time.monotonic()
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
            elapsed = time.monotonic() - start
        expected = _expected(fake)
    assert elapsed >= at_least
    assert elapsed < 5
    assert report.ok
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


async def test_503_bursts_survived(kognic_client: MakeClient, tmp_path: Path) -> None:
    """Bursts of 503 on search and storage are retried away; every request is accounted for."""
    project = KognicProject(
        project="P", annotation_types=("T",), count=20, page_size=5, content_size=500
    )
    async with FakeKognic(projects=[project]) as fake:
        fake.faults.add(
            Fault(target="search", status=503, times=3),
            Fault(target="content", status=503, times=12),
        )
        async with kognic_client(fake, max_attempts=16, concurrency=4) as client:
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
        expected = _expected(fake)
        assert fake.stats.search_requests == 4 + 3
        assert sum(fake.stats.content_requests.values()) == 20 + 12
    assert report.ok
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


async def test_body_cut_mid_stream_retried(kognic_client: MakeClient, tmp_path: Path) -> None:
    """A body dropped after 1000 of 50,000 bytes (twice) is fetched again and lands intact."""
    project = KognicProject(project="P", annotation_types=("T",), count=4, content_size=50_000)
    async with FakeKognic(projects=[project]) as fake:
        victim = next(fake.expected("P", "T")).scene_uuid
        fake.faults.add(Fault(target="content", truncate_after=1000, times=2, match=victim))
        async with kognic_client(fake) as client:
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
        expected = _expected(fake)
        assert fake.stats.content_requests[victim] == 3
    assert report.ok
    assert report.bytes == sum(map(len, expected.values()))
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


async def test_stalled_answer_caught_by_read_timeout(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """A storage answer stalled for 5 s is abandoned after the 0.3 s read timeout and retried."""
    project = KognicProject(project="P", annotation_types=("T",), count=3, content_size=800)
    async with FakeKognic(projects=[project]) as fake:
        victim = next(fake.expected("P", "T")).scene_uuid
        fake.faults.add(Fault(target="content", stall=5.0, match=victim))
        async with kognic_client(fake, read_timeout=0.3) as client:
            start = time.monotonic()
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
            elapsed = time.monotonic() - start
        expected = _expected(fake)
        assert fake.stats.content_requests[victim] == 2
    assert 0.3 <= elapsed < 3
    assert report.ok
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


async def test_retries_exhausted_item_reported_rest_kept(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """An item failing every attempt is listed with status, attempts and a signature-free URL."""
    project = KognicProject(project="P", annotation_types=("T",), count=6, content_size=500)
    async with FakeKognic(projects=[project]) as fake:
        victim = next(fake.expected("P", "T")).scene_uuid
        fake.faults.add(Fault(target="content", status=503, times=100, match=victim))
        async with kognic_client(fake, max_attempts=3) as client:
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
        expected = _expected(fake)
        assert fake.stats.content_requests[victim] == 3
        storage = fake.storage_url
    assert not report.ok
    assert [f.item for f in report.failures] == [victim]
    reason = report.failures[0].reason
    assert "HTTP 503" in reason
    assert "after 3 attempts" in reason
    assert f"{storage}/o/P/T/{victim}/v0" in reason
    assert "signature" not in reason
    assert "expires" not in reason
    assert "?" not in reason
    assert report.to_dict()["status"] == "partial"
    assert report.to_dict()["failed"] == [
        {
            "item": victim,
            "reason": reason,
            "url": f"{storage}/o/P/T/{victim}/v0",
            "status": 503,
            "attempts": 3,
        }
    ]
    del expected[victim]
    assert (report.downloaded, report.listed) == (5, 6)
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


async def test_expired_signed_urls_relisted(kognic_client: MakeClient, tmp_path: Path) -> None:
    """URLs that expire before they are used are renewed by re-listing their page."""
    project = KognicProject(
        project="P", annotation_types=("T",), count=6, page_size=3, content_size=500
    )
    async with FakeKognic(projects=[project], url_ttl=1) as fake:
        scenes = list(_expected(fake))
        # Each first request waits past the URL's lifetime, so storage answers 403.
        fake.faults.add(*(Fault(target="content", stall=1.2, match=s) for s in scenes))
        async with kognic_client(fake, concurrency=6) as client:
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
        expected = _expected(fake)
        stats = fake.stats
    assert report.ok, report.failures
    assert all(stats.content_requests[s] >= 2 for s in scenes)
    assert stats.search_requests >= 2 + 2  # both pages listed again
    assert stats.storage_requests_with_auth_header == 0
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


async def test_relisting_keeps_cartesian(kognic_client: MakeClient, tmp_path: Path) -> None:
    """A page re-listed for fresh URLs asks for the same cuboid convention as the first time."""
    project = KognicProject(project="P", annotation_types=("T",), count=4, page_size=2)
    async with FakeKognic(projects=[project], url_ttl=1) as fake:
        scenes = list(_expected(fake))
        fake.faults.add(*(Fault(target="content", stall=1.2, match=s) for s in scenes))
        async with kognic_client(fake, concurrency=4) as client:
            report = await client.kognic.download(
                "P", "T", sink=ZipSink(tmp_path / "o.zip"), cartesian=True
            )
        stats = fake.stats
    assert report.ok, report.failures
    assert stats.search_requests >= 4  # both pages listed again
    assert stats.cartesian_searches == stats.search_requests


@pytest.mark.parametrize(
    "sink_factory",
    [
        pytest.param(lambda p: ZipSink(p / "o.zip"), id="zip"),
        pytest.param(lambda p: DirectorySink(p / "folder"), id="folder"),
        pytest.param(lambda p: JsonlSink(p / "o.jsonl"), id="jsonl"),
    ],
)
async def test_bad_credentials_leave_no_output(
    kognic_client: MakeClient, tmp_path: Path, sink_factory: Callable[[Path], Sink]
) -> None:
    """A refused secret raises AuthError naming the client id, not the secret; nothing written."""
    out = tmp_path / "out"
    out.mkdir()
    async with FakeKognic(projects=[PROJECT]) as fake:
        async with kognic_client(fake, secret="wrong-s3cr3t-value") as client:
            with pytest.raises(AuthError) as info:
                await client.kognic.download("P", "T", sink=sink_factory(out))
        assert fake.stats.token_requests == 1
    message = str(info.value)
    assert fake.client_id in message
    assert "wrong-s3cr3t-value" not in message
    assert "wrong-s3cr3t-value" not in repr(info.value)
    assert info.value.status == 401
    assert _names(out) == []


@pytest.mark.parametrize(
    ("project", "batch", "atype"),
    [
        pytest.param("nope", None, "T", id="project"),
        pytest.param("P", "zzz", "T", id="batch"),
        pytest.param("P", None, "nope", id="annotation-type"),
    ],
)
async def test_unknown_project_clear_error_no_output(
    kognic_client: MakeClient, tmp_path: Path, project: str, batch: str | None, atype: str
) -> None:
    """An unknown project, batch or type is a NotFoundError with the platform's words."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        with pytest.raises(NotFoundError) as info:
            await client.kognic.download(
                project, atype, batch=batch, sink=ZipSink(tmp_path / "o.zip")
            )
    unknown = ({"nope", "zzz"} & {project, batch, atype}).pop()
    assert info.value.status == 404
    assert repr(unknown) in str(info.value)
    assert _names(tmp_path) == []


async def test_reprs_hide_the_secret(kognic_client: MakeClient) -> None:
    """No repr of the client, its source or token manager shows the client secret."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        source = client.kognic
        shown = [repr(client), repr(source), repr(source._auth), repr(client.config)]
    for text in shown:
        assert fake.client_secret not in text
    assert "KognicTokenManager(client_id='fake-client-id')" in shown


def test_expected_is_listing_order() -> None:
    """The oracle is sound: expected() names distinct scenes with distinct contents."""
    fake = FakeKognic(projects=[PROJECT])
    items: list[ExpectedAnnotation] = list(fake.expected("P", "T"))
    assert len({e.scene_uuid for e in items}) == 60
    assert len({e.content for e in items}) == 60


async def test_fresh_url_from_cache_expired_too_is_relisted(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """A re-listed URL that has itself expired by the time it is used is re-listed again."""
    project = KognicProject(project="P", annotation_types=("T",), count=2, page_size=2)
    async with FakeKognic(projects=[project], url_ttl=1) as fake:
        first, second = list(_expected(fake))
        # `first` waits out its URL and gets the page re-listed; `second` waits until the
        # URLs of that re-listing have expired as well.
        fake.faults.add(
            Fault(target="content", stall=1.2, match=first),
            Fault(target="content", stall=2.5, match=second),
        )
        async with kognic_client(fake, concurrency=2) as client:
            report = await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
        expected = _expected(fake)
        assert fake.stats.search_requests == 3
    assert report.ok, report.failures
    assert _zip_entries(tmp_path / "o.zip") == _as_entries(expected)


@contextlib.asynccontextmanager
async def _source_over(routes: list[web.RouteDef], **engine: Any) -> AsyncIterator[KognicSource]:
    """A KognicSource whose API is a hand-made server of ``routes`` (for broken listings)."""
    runner, base = await start_app(routes, host="127.0.0.1")
    try:
        async with Transport(engine=EngineConfig(**engine)) as transport:
            yield KognicSource(
                transport=transport,
                config=KognicConfig(api_url=base),
                auth=ApiKeyAuth(Secret("k")),
            )
    finally:
        await runner.cleanup()


SEARCH_ROUTE = "/v1/annotations/projects/P/annotation-type/T/search"


async def test_listing_that_does_not_advance_is_an_error() -> None:
    """A search answer handing back the cursor it was given ends the listing with ApiError."""
    pages: list[str | None] = []

    async def search(request: web.Request) -> web.Response:
        pages.append(request.query.get("cursorId"))
        return web.json_response({"data": [], "metadata": {"nextCursorId": "same"}})

    async with _source_over([web.get(SEARCH_ROUTE, search)]) as source:
        with pytest.raises(ApiError, match="went back to an earlier cursor 'same'"):
            _ = [ref async for ref in source.list_annotations("P", "T")]
    assert pages == [None, "same"]


async def test_listing_cursor_cycle_is_an_error() -> None:
    """Cursors A -> B -> A end the listing with ApiError instead of paging forever."""
    pages: list[str | None] = []
    following = {None: "A", "A": "B", "B": "A"}

    async def search(request: web.Request) -> web.Response:
        cursor = request.query.get("cursorId")
        pages.append(cursor)
        return web.json_response({"data": [], "metadata": {"nextCursorId": following[cursor]}})

    async with _source_over([web.get(SEARCH_ROUTE, search)]) as source:
        with pytest.raises(ApiError, match="earlier cursor 'A'"):
            _ = [ref async for ref in source.list_annotations("P", "T")]
    assert pages == [None, "A", "B"]


async def test_hostile_listing_items_fail_alone_and_the_rest_arrive(tmp_path: Path) -> None:
    """NUL, over-long and missing fields, a bad port: each item fails alone, the rest arrive."""
    content = b'{"openlabel": {}}'
    good = [f"good-{i}" for i in range(3)]

    def listed(scene: object, *, created: str = "c", uri: str | None = "x") -> dict[str, object]:
        item: dict[str, object] = {"inputUuid": scene, "annotationType": "T", "created": created}
        if uri is not None:
            item["uri"] = uri
        return item

    async def search(request: web.Request) -> web.Response:
        here = f"http://{request.host}/o"
        items: list[object] = [listed(g, uri=f"{here}/{g}") for g in good]
        items += [
            listed("nul\x00x", uri=f"{here}/x"),
            listed("u" * 5000, uri=f"{here}/x"),
            listed("long-created", created="9" * 70000, uri=f"{here}/x"),
            listed("bad-port", uri="http://127.0.0.1:99999/o/x"),
            listed("no-uri", uri=None),
            "not an object",
        ]
        return web.json_response({"data": items, "metadata": {"nextCursorId": None}})

    async def storage(request: web.Request) -> web.Response:
        return web.Response(body=content)

    routes = [web.get(SEARCH_ROUTE, search), web.get("/o/{name}", storage)]
    async with _source_over(routes) as source:
        report = await source.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
    failed = {f.item[:20]: f.reason for f in report.failures}
    assert len(report.failures) == 6, failed
    assert "control character" in failed["nul\x00x"]
    assert "5000 characters" in failed["u" * 20]
    assert "70000 characters" in failed["long-created"]
    assert "Port out of range" in failed["bad-port"]
    assert "no 'uri'" in failed["no-uri"]
    assert any("not an object" in reason for reason in failed.values())
    with zipfile.ZipFile(tmp_path / "o.zip") as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {
            f"{g}.json": content for g in good
        }


@pytest.mark.parametrize("output", ["o.zip", "o.jsonl", "folder/"])
async def test_scene_listed_twice_is_written_once(tmp_path: Path, output: str) -> None:
    """A listing that names a scene on two pages still gives one entry per scene."""
    pages = {None: (["a", "b"], "2"), "2": (["b", "c"], "3"), "3": (["b"], None)}

    async def search(request: web.Request) -> web.Response:
        scenes, cursor = pages[request.query.get("cursorId")]
        origin = request.url.origin()
        items = [
            {
                "inputUuid": scene,
                "annotationType": "T",
                "created": "2024-01-01T00:00:00Z",
                "uri": f"{origin}/s/{scene}",
            }
            for scene in scenes
        ]
        return web.json_response({"data": items, "metadata": {"nextCursorId": cursor}})

    async def storage(request: web.Request) -> web.Response:
        return web.json_response({"openlabel": {"scene": request.match_info["scene"]}})

    routes = [web.get(SEARCH_ROUTE, search), web.get("/s/{scene}", storage)]
    async with _source_over(routes, concurrency=1) as source:
        report = await source.download("P", "T", sink=sink_for(f"{tmp_path}/{output}"))
    assert (report.downloaded, report.skipped, report.listed) == (3, 2, 5)
    if output.endswith("/"):
        names = sorted(p.name for p in (tmp_path / output).iterdir())
    elif output.endswith(".zip"):
        names = sorted(zipfile.ZipFile(tmp_path / output).namelist())
    else:
        lines = (tmp_path / output).read_bytes().splitlines()
        names = sorted(f"{json.loads(line)['scene_uuid']}.json" for line in lines)
    assert names == ["a.json", "b.json", "c.json"]


async def test_content_that_is_not_a_json_document_fails_alone(tmp_path: Path) -> None:
    """An HTML page served with 200 for one scene is that scene's failure; the rest arrive."""
    content = b'{"openlabel": {}}'

    async def search(request: web.Request) -> web.Response:
        here = f"http://{request.host}/o"
        items = [
            {"inputUuid": s, "annotationType": "T", "created": "c", "uri": f"{here}/{s}"}
            for s in ("good-1", "html", "good-2")
        ]
        return web.json_response({"data": items, "metadata": {"nextCursorId": None}})

    async def storage(request: web.Request) -> web.Response:
        if request.match_info["name"] == "html":
            return web.Response(body=b"<html><body>Sign in</body></html>", content_type="text/html")
        return web.Response(body=content)

    routes = [web.get(SEARCH_ROUTE, search), web.get("/o/{name}", storage)]
    async with _source_over(routes) as source:
        report = await source.download("P", "T", sink=DirectorySink(tmp_path / "out"))
    assert [(f.item, "not a JSON document" in f.reason) for f in report.failures] == [
        ("html", True)
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good-1.json", "good-2.json"]

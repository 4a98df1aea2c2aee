"""annopull.compat.kognic_io: kognic-io's client, on annopull's engine, against FakeKognic."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import requests

import annopull
from annopull.compat.kognic_io import (
    Annotation,
    AsyncKognicIOClient,
    InputAnnotation,
    KognicIOClient,
    NotFoundHTTPError,
)
from annopull.testing import FakeKognic, Fault, KognicProject, run_in_thread

PROJECT = KognicProject(
    project="P",
    batches=("B1", "B2"),
    annotation_types=("T", "U"),
    count=120,
    page_size=25,
    content_size=900,
)


@pytest.fixture
def fake(clean_env: None) -> Iterator[FakeKognic]:
    """A FakeKognic on a thread of its own, for the synchronous client."""
    with run_in_thread(FakeKognic(projects=[PROJECT])) as served:
        yield served


def hosts(fake: FakeKognic) -> dict[str, Any]:
    return {
        "host": fake.api_url,
        "auth_host": fake.auth_url,
        "annotation_integration_api_host": fake.annotation_integration_url,
    }


def make(fake: FakeKognic, **options: Any) -> KognicIOClient:
    return KognicIOClient(auth=(fake.client_id, fake.client_secret), **hosts(fake), **options)


def expected(fake: FakeKognic, batch: str | None = None, atype: str = "T") -> dict[str, Any]:
    return {e.scene_uuid: json.loads(e.content) for e in fake.expected("P", atype, batch)}


def loop_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "annopull-kognic-io"]


def fetched(fake: FakeKognic) -> int:
    return sum(fake.stats.content_requests.values())


def settle(fake: FakeKognic) -> int:
    """The content requests once no more arrive (the fake runs on another thread)."""
    before = fetched(fake)
    while True:
        time.sleep(0.2)
        now = fetched(fake)
        if now == before:
            return now
        before = now


# -- the bulk read, against the bulk pull ----------------------------------------------------


@pytest.mark.parametrize(
    "batch", [pytest.param(None, id="project"), pytest.param("B2", id="batch")]
)
def test_sync_client_returns_what_the_bulk_pull_writes(
    fake: FakeKognic, tmp_path: Path, kognic_client: Any, batch: str | None
) -> None:
    """get_project_annotations yields every scene of the bulk pull's zip with the same content."""
    out = tmp_path / "out.zip"

    async def bulk() -> None:
        async with kognic_client(fake) as client:
            report = await client.kognic.download("P", "T", batch=batch, sink=annopull.ZipSink(out))
            assert report.ok

    annopull_run(bulk)
    with make(fake) as client:
        got = list(client.annotation.get_project_annotations("P", "T", batch=batch))
    with zipfile.ZipFile(out) as archive:
        pulled = {name: json.loads(archive.read(name)) for name in archive.namelist()}
    assert len(got) == len(pulled) == len(expected(fake, batch))
    assert {f"{a.scene_uuid}.json": a.content for a in got} == pulled
    first = got[0]
    assert isinstance(first, Annotation)
    assert (first.annotation_type, first.is_preliminary) == ("T", False)
    assert first.created.tzinfo is not None
    created = {e.scene_uuid: e.created for e in fake.expected("P", "T", batch)}
    assert all(a.created == datetime.fromisoformat(created[a.scene_uuid]) for a in got)


def annopull_run(work: Any) -> None:
    """Run an async function on a fresh event loop (the fake serves from its own thread)."""
    import asyncio

    asyncio.run(work())


@pytest.mark.anyio
async def test_async_client_returns_what_the_bulk_pull_writes(
    clean_env: None, tmp_path: Path, kognic_client: Any
) -> None:
    """AsyncKognicIOClient's async generator yields the bulk pull's scenes and contents."""
    out = tmp_path / "out.zip"
    async with FakeKognic(projects=[PROJECT]) as served:
        async with kognic_client(served) as client:
            await client.kognic.download("P", "U", batch="B1", sink=annopull.ZipSink(out))
        auth = (served.client_id, served.client_secret)
        async with AsyncKognicIOClient(auth=auth, **hosts(served)) as kognic_io:
            listing = kognic_io.annotation.get_project_annotations("P", "U", batch="B1")
            got = {f"{a.scene_uuid}.json": a.content async for a in listing}
            single = await kognic_io.annotation.get_annotation(
                scene_uuid=next(iter(got)).removesuffix(".json"), annotation_type="U"
            )
            with pytest.raises(NotFoundHTTPError) as missing:
                await kognic_io.annotation.get_annotation("no-such-scene", "U")
    with zipfile.ZipFile(out) as archive:
        assert got == {name: json.loads(archive.read(name)) for name in archive.namelist()}
    assert single.content == got[f"{single.scene_uuid}.json"]
    assert missing.value.status == 404


@pytest.mark.anyio
async def test_async_client_stops_an_abandoned_iteration(clean_env: None) -> None:
    """An async generator left early (and one failing) stops its fetches; others go on."""
    async with FakeKognic(projects=[PROJECT], latency=0.01) as served:
        auth = (served.client_id, served.client_secret)
        async with AsyncKognicIOClient(auth=auth, max_connections=2, **hosts(served)) as client:
            listing = client.annotation.get_project_annotations("P", "T")
            async for _ in listing:
                break
            await listing.aclose()
            stopped = fetched(served)
            await anyio.sleep(0.2)
            assert fetched(served) == stopped
            scene = next(iter(expected(served)))
            served.faults.add(Fault(target="content", match=scene, status=404))
            with pytest.raises(NotFoundHTTPError):
                [a async for a in client.annotation.get_project_annotations("P", "T")]
            left = [a async for a in client.annotation.get_project_annotations("P", "T", "B1")]
    assert len(left) == PROJECT.count // 2


@pytest.mark.anyio
async def test_async_client_must_be_entered(clean_env: None) -> None:
    """Calling a method outside `async with` is a clear error, not a hang."""
    client = AsyncKognicIOClient(auth=("id", "secret"), host="http://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="async with AsyncKognicIOClient"):
        await client.annotation.get_annotation("s", "T")


# -- the single read -------------------------------------------------------------------------


def test_get_annotation_returns_the_content(fake: FakeKognic) -> None:
    """get_annotation gives the scene's content parsed, with the official attribute types."""
    scene, content = next(iter(expected(fake, atype="U").items()))
    with make(fake) as client:
        got = client.annotation.get_annotation(scene, "U")
    assert (got.scene_uuid, got.annotation_type, got.content) == (scene, "U", content)
    assert got.created == datetime(2024, 1, 1, tzinfo=UTC)
    assert got.is_preliminary is False


def test_get_annotation_takes_the_deprecated_input_uuid(fake: FakeKognic) -> None:
    """input_uuid= still works for scene_uuid=, with kognic-io's DeprecationWarning."""
    scene = next(iter(expected(fake)))
    with make(fake) as client, pytest.warns(DeprecationWarning, match='"input_uuid"'):
        got = client.annotation.get_annotation(input_uuid=scene, annotation_type="T")
    assert got.scene_uuid == scene
    with pytest.warns(DeprecationWarning, match="scene_uuid"):
        assert got.input_uuid == scene


def test_a_missing_annotation_is_a_404_http_error(fake: FakeKognic) -> None:
    """A 404 is both requests' HTTPError (response.status_code) and annopull's NotFoundError."""
    with make(fake) as client, pytest.raises(requests.HTTPError) as caught:
        client.annotation.get_annotation("no-such-scene", "T")
    error = caught.value
    assert isinstance(error, NotFoundHTTPError)
    assert isinstance(error, annopull.NotFoundError)
    assert error.response.status_code == 404
    assert error.status == 404
    assert "no-such-scene" in str(error)


def test_an_unknown_project_is_a_404_from_the_generator(fake: FakeKognic) -> None:
    """Iterating a project that does not exist raises the 404 at the first next()."""
    with make(fake) as client:
        annotations = client.annotation.get_project_annotations("nope", "T")
        with pytest.raises(NotFoundHTTPError) as caught:
            next(annotations)
    assert caught.value.response.status_code == 404
    assert loop_threads() == []


# -- the v2 and by-id reads --------------------------------------------------------------


def check_input_annotation(got: InputAnnotation, fake: FakeKognic, scene: str, atype: str) -> None:
    """``got`` is the fake's annotation of ``scene`` and ``atype``, attribute by attribute."""
    want = fake.scene_annotation("P", scene, atype)
    assert isinstance(got, InputAnnotation)
    assert (got.input_uuid, got.scene_uuid, got.request_uid) == (
        want.input_uuid,
        scene,
        want.request_uid,
    )
    assert got.created == datetime.fromisoformat(want.created)
    assert got.is_preliminary is False
    assert got.content == json.loads(want.content)


def test_get_annotation_for_input(fake: FakeKognic) -> None:
    """get_annotation_for_input gives the input's annotation with kognic-io's attributes."""
    scene = next(iter(expected(fake)))
    with make(fake) as client:
        got = client.annotation.get_annotation_for_input(fake.input_uuid("P", scene, "U"))
        with pytest.raises(NotFoundHTTPError) as missing:
            client.annotation.get_annotation_for_input("00000000-0000-4000-8000-000000000000")
    check_input_annotation(got, fake, scene, "U")
    assert missing.value.response.status_code == 404


def test_get_annotations_for_scene(fake: FakeKognic) -> None:
    """get_annotations_for_scene gives one annotation per type of the scene, contents in."""
    scene = list(expected(fake))[3]
    with make(fake) as client:
        got = client.annotation.get_annotations_for_scene(scene)
        with pytest.raises(NotFoundHTTPError) as missing:
            client.annotation.get_annotations_for_scene("00000000-0000-4000-8000-000000000000")
    by_input = {a.input_uuid: a for a in got}
    assert len(got) == len(PROJECT.annotation_types)
    for atype in PROJECT.annotation_types:
        check_input_annotation(by_input[fake.input_uuid("P", scene, atype)], fake, scene, atype)
    assert missing.value.status == 404


def test_get_annotation_by_id(fake: FakeKognic) -> None:
    """get_annotation_by_id reads the annotation-integration host; an unknown id is a 404."""
    scene = list(expected(fake))[5]
    with make(fake) as client:
        got = client.annotation.get_annotation_by_id(fake.annotation_id("P", scene, "T"))
        with pytest.raises(requests.HTTPError) as missing:
            client.annotation.get_annotation_by_id("00000000-0000-4000-8000-000000000000")
    check_input_annotation(got, fake, scene, "T")
    assert missing.value.response.status_code == 404


def test_iso_rotated_cuboids_reaches_every_single_read(fake: FakeKognic) -> None:
    """iso_rotated_cuboids=True asks each single, v2 and by-id read for ISO 8855 cuboids."""
    scene = next(iter(expected(fake)))
    with make(fake) as client:
        annotation = client.annotation
        annotation.get_annotation(scene, "T")
        annotation.get_annotation_for_input(fake.input_uuid("P", scene, "T"))
        assert fake.stats.cartesian_reads == 0
        annotation.get_annotation(scene, "T", iso_rotated_cuboids=True)
        annotation.get_annotation_for_input(
            fake.input_uuid("P", scene, "T"), iso_rotated_cuboids=True
        )
        annotation.get_annotations_for_scene(scene, iso_rotated_cuboids=True)
        annotation.get_annotation_by_id(
            fake.annotation_id("P", scene, "T"), iso_rotated_cuboids=True
        )
    assert fake.stats.cartesian_reads == 4


# -- options of get_project_annotations -------------------------------------------------------


def test_include_content_false_lists_without_fetching(fake: FakeKognic) -> None:
    """include_content=False yields every scene with content None and fetches no content."""
    with make(fake) as client:
        got = list(client.annotation.get_project_annotations("P", "T", include_content=False))
    assert {a.scene_uuid for a in got} == set(expected(fake))
    assert all(a.content is None for a in got)
    assert fetched(fake) == 0


@pytest.mark.parametrize("iso", [True, False])
def test_iso_rotated_cuboids_reaches_every_listing_page(fake: FakeKognic, iso: bool) -> None:
    """iso_rotated_cuboids=True asks every search page for useDefaultCartesian=true."""
    with make(fake) as client:
        got = list(client.annotation.get_project_annotations("P", "T", iso_rotated_cuboids=iso))
    assert len(got) == PROJECT.count
    pages = PROJECT.count // PROJECT.page_size + 1
    assert fake.stats.search_requests == pages
    assert fake.stats.cartesian_searches == (pages if iso else 0)


# -- stopping ---------------------------------------------------------------------------------


def test_leaving_the_loop_early_stops_the_fetches(fake: FakeKognic) -> None:
    """A break stops fetching at once: the requests stop, bounded by the prefetch."""
    with make(fake, max_connections=4) as client:
        for count, _ in enumerate(client.annotation.get_project_annotations("P", "T"), 1):
            if count == 3:
                break
        stopped = settle(fake)
        # The 3, and what the engine and the handoff held ahead (see the next test).
        assert 3 <= stopped <= 3 + 5 * 4 + 8
        assert client.annotation.get_annotation(next(iter(expected(fake))), "T").content
    assert loop_threads() == []


def test_a_slow_loop_holds_a_bounded_number_ahead(fake: FakeKognic) -> None:
    """While the caller does not ask for more, only a bounded number are fetched ahead."""
    with make(fake, max_connections=2) as client:
        annotations = client.annotation.get_project_annotations("P", "T")
        next(annotations)
        ahead = settle(fake)
        assert ahead <= 1 + 5 * 2 + 8
        rest = list(annotations)
    assert len(rest) == PROJECT.count - 1


def test_closing_the_generator_and_the_client_leaves_no_thread(fake: FakeKognic) -> None:
    """generator.close() then client.close() end the loop thread; close() twice is fine."""
    client = make(fake)
    annotations = client.annotation.get_project_annotations("P", "T")
    next(annotations)
    assert loop_threads() == ["annopull-kognic-io"]
    annotations.close()
    client.close()
    client.close()
    assert loop_threads() == []
    with pytest.raises(annopull.AnnopullError, match="closed"):
        client.annotation.get_annotation("s", "T")


def test_closing_the_client_while_iterating_raises_instead_of_hanging(fake: FakeKognic) -> None:
    """An iteration whose client was closed (from another thread) ends with an error."""
    client = make(fake, max_connections=1)
    annotations = client.annotation.get_project_annotations("P", "T")
    next(annotations)
    closer = threading.Thread(target=client.close)
    closer.start()

    def drain() -> None:
        for _ in annotations:
            time.sleep(0.01)

    with pytest.raises(annopull.AnnopullError, match="closed while iterating"):
        drain()
    closer.join()
    assert loop_threads() == []


def test_a_dropped_client_stops_its_thread(fake: FakeKognic) -> None:
    """A client never closed is stopped when it is garbage collected."""
    scene = next(iter(expected(fake)))
    # Used as a temporary: the call keeps it alive while it runs.
    assert make(fake).annotation.get_annotation(scene, "T").scene_uuid == scene
    gc.collect()
    assert loop_threads() == []


def test_a_content_failing_for_good_raises_from_the_loop(fake: FakeKognic) -> None:
    """A content that keeps failing raises annopull's TransferError; the client goes on."""
    scene = next(iter(expected(fake)))
    fake.faults.add(Fault(target="content", match=scene, status=500, times=100))
    with make(fake, max_retry_attempts=1, max_retry_wait_time=0.01) as client:
        with pytest.raises(annopull.RetryableStatusError) as caught:
            list(client.annotation.get_project_annotations("P", "T"))
        fake.faults.clear()
        assert len(list(client.annotation.get_project_annotations("P", "T"))) == PROJECT.count
    assert caught.value.item == scene
    assert caught.value.attempts == 2


# -- the constructor --------------------------------------------------------------------------


def test_credentials_from_a_file(fake: FakeKognic, tmp_path: Path) -> None:
    """auth= a credentials JSON file path is read as kognic-io reads it."""
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(fake.credentials_file_content()))
    scene = next(iter(expected(fake)))
    for auth in (str(path), path):
        with KognicIOClient(auth=auth, **hosts(fake)) as client:
            assert client.annotation.get_annotation(scene, "T").scene_uuid == scene


@pytest.mark.parametrize("variables", ["file", "id-and-secret"])
def test_credentials_from_the_environment(
    fake: FakeKognic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variables: str
) -> None:
    """auth=None reads KOGNIC_CREDENTIALS, else KOGNIC_CLIENT_ID and KOGNIC_CLIENT_SECRET."""
    if variables == "file":
        path = tmp_path / "credentials.json"
        path.write_text(json.dumps(fake.credentials_file_content()))
        monkeypatch.setenv("KOGNIC_CREDENTIALS", str(path))
    else:
        monkeypatch.setenv("KOGNIC_CLIENT_ID", fake.client_id)
        monkeypatch.setenv("KOGNIC_CLIENT_SECRET", fake.client_secret)
    scene = next(iter(expected(fake)))
    with KognicIOClient(**hosts(fake)) as client:
        assert client.annotation.get_annotation(scene, "T").scene_uuid == scene


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        pytest.param(None, "no Kognic credentials", id="none"),
        pytest.param(("id",), "pair of strings", id="short-tuple"),
        pytest.param(42, "not int", id="wrong-type"),
        pytest.param("/nonexistent/credentials.json", "cannot read", id="missing-file"),
    ],
)
def test_unusable_credentials_are_refused_at_construction(
    clean_env: None, auth: Any, message: str
) -> None:
    """Like kognic-io, the constructor refuses credentials it cannot use (ConfigError)."""
    with pytest.raises(annopull.ConfigError, match=message):
        KognicIOClient(auth=auth, host="http://127.0.0.1:9", auth_host="http://127.0.0.1:9")
    assert loop_threads() == []


def test_wrong_credentials_are_an_auth_error_on_first_use(fake: FakeKognic) -> None:
    """Credentials the auth server refuses raise annopull's AuthError from the first call."""
    with (
        KognicIOClient(auth=(fake.client_id, "wrong"), **hosts(fake)) as client,
        pytest.raises(annopull.AuthError),
    ):
        client.annotation.get_annotation("s", "T")
    assert "wrong" not in repr(client)


def test_kognic_io_parameters_map_onto_the_engine(clean_env: None) -> None:
    """max_connections, timeout, max_retry_* become engine settings; the rest is accepted."""
    client = KognicIOClient(
        auth=("id", "secret"),
        host="http://127.0.0.1:9/",
        auth_host="http://127.0.0.1:8",
        annotation_integration_api_host="http://127.0.0.1:7",
        order_execution_api_host="http://127.0.0.1:6",
        workspace_api_host="http://127.0.0.1:5",
        project_management_api_host="http://127.0.0.1:4",
        client_organization_id=3,
        max_retry_attempts=5,
        max_retry_wait_time=7,
        timeout=4,
        max_connections=12,
        write_workspace_id="w",
        workspace_id="w",
        max_upload_retry_attempts=1,
        max_upload_retry_wait_time=1,
    )
    engine = client._config.engine
    assert (engine.concurrency, engine.read_timeout, engine.connect_timeout) == (12, 4.0, 4.0)
    assert (engine.retry.max_attempts, engine.retry.backoff_max) == (6, 7.0)
    assert (client._config.kognic.api_url, client._config.kognic.auth_url) == (
        "http://127.0.0.1:9/",
        "http://127.0.0.1:8",
    )
    defaults = KognicIOClient(auth=("id", "secret"))._config
    assert defaults.engine == annopull.EngineConfig()
    assert defaults.kognic.api_url == "https://input.app.kognic.com"
    with pytest.raises(annopull.ConfigError, match="timeout must be more than 0"):
        KognicIOClient(auth=("id", "secret"), timeout=0)
    client.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loop_threads() == []


def test_readme_migration_changes_only_the_import() -> None:
    """The README's before/after blocks differ in the import line alone, and the after compiles."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()

    def block(tag: str) -> list[str]:
        return readme.split(f"<!-- migration:{tag} -->", 1)[1].split("```")[1].splitlines()

    before, after = block("before"), block("after")
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert changed == [
        (
            "from kognic.io.client import KognicIOClient",
            "from annopull.compat.kognic_io import KognicIOClient",
        )
    ]
    compile("\n".join(after), "README.md", "exec")


SCRIPT_NEVER_CLOSING = """
import sys
from annopull.compat.kognic_io import KognicIOClient

client = KognicIOClient(auth=tuple(sys.argv[3:5]), host=sys.argv[1], auth_host=sys.argv[2])
for count, annotation in enumerate(client.annotation.get_project_annotations("P", "T")):
    if count == 2:
        break
left_open = client.annotation.get_project_annotations("P", "T")
print(next(left_open).scene_uuid)
"""


def test_a_script_that_never_closes_exits_cleanly(fake: FakeKognic, tmp_path: Path) -> None:
    """A script leaving its client and a generator open exits 0, promptly, without a trace."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_NEVER_CLOSING)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            fake.api_url,
            fake.auth_url,
            fake.client_id,
            fake.client_secret,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() in expected(fake)
    assert time.monotonic() - started < 30


def test_big_contents_are_parsed_off_the_loop_and_no_thread_is_left(clean_env: None) -> None:
    """Contents from 256 KiB on are parsed in a worker thread, which ends with the client."""
    big = KognicProject(project="P", annotation_types=("T",), count=4, content_size=400_000)
    with run_in_thread(FakeKognic(projects=[big])) as served:
        before = set(threading.enumerate())
        with make(served) as client:
            got = {
                a.scene_uuid: a.content for a in client.annotation.get_project_annotations("P", "T")
            }
            workers = [t.name for t in threading.enumerate() if t.name == "AnyIO worker thread"]
        # anyio's idle worker is told to stop when the loop ends, and exits right after.
        for thread in set(threading.enumerate()) - before:
            thread.join(5)
        left = [t.name for t in set(threading.enumerate()) - before]
        want = {e.scene_uuid: json.loads(e.content) for e in served.expected("P", "T")}
    assert got == want
    assert workers
    assert left == []

"""Converting and validating while pulling: ``KognicSource.download(transform=, validate=)``
and the worker pool under it, against the fake Kognic over loopback.

Outputs are read back with zipfile/json and compared entry by entry with what the fake
served, converted by the same function in this process. The transforms live in
``tests/transforms_for_tests.py``, importable by name in the worker processes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import transforms_for_tests as transforms
from annopull import ParsedAnnotation, Renamed, TransformError, WorkerPoolError
from annopull._client import Client
from annopull._config import Config, EngineConfig, KognicConfig
from annopull._errors import ConfigError
from annopull._pipeline.workers import WorkerPool, load_function
from annopull._sinks import JsonlSink, ZipSink
from annopull.testing import FakeKognic, KognicProject

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., Client]

PROJECT = KognicProject(project="P", annotation_types=("T",), count=40, page_size=9)


def _zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def _summaries(fake: FakeKognic) -> dict[str, Any]:
    """What ``transforms.summarize`` makes of every served annotation, by entry name."""
    return {
        f"{e.scene_uuid}.json": transforms.summary_of(
            e.scene_uuid, e.annotation_type, orjson.loads(e.content)
        )
        for e in fake.expected("P", "T")
    }


def _even(scene_uuid: str) -> bool:
    return int(scene_uuid[-1], 16) % 2 == 0


async def _download(client: Client, out: Path, **options: Any) -> Any:
    async with client:
        return await client.kognic.download("P", "T", sink=ZipSink(out), **options)


async def _pull(
    make: MakeClient, out: Path, *, project: KognicProject = PROJECT, **options: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Pull PROJECT into ``out`` through a fresh fake: the report, the summaries of what
    it served (by entry name) and the zip's entries parsed."""
    async with FakeKognic(projects=[project]) as fake:
        report = await _download(make(fake), out, **options)
        expected = _summaries(fake)
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        entries = {name: json.loads(archive.read(name)) for name in archive.namelist()}
    return report, expected, entries


@pytest.mark.parametrize("mode", ["process", "thread"])
async def test_transform_converts_every_annotation(
    kognic_client: MakeClient, tmp_path: Path, mode: str
) -> None:
    """Every entry of the zip is the transform of what the fake served for that scene."""
    report, expected, entries = await _pull(
        kognic_client,
        tmp_path / "out.zip",
        transform=transforms.summarize,
        workers=2,
        workers_mode=mode,
    )
    assert report.ok
    assert report.downloaded == 40
    assert report.left_out == 0
    assert entries == expected


async def test_process_and_thread_workers_run_where_they_say(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """Process workers run the function in other processes, thread workers in this one."""
    pids: dict[str, set[int]] = {}
    async with FakeKognic(projects=[PROJECT]) as fake:
        for mode in ("process", "thread"):
            out = tmp_path / f"{mode}.zip"
            await _download(
                kognic_client(fake), out, transform=transforms.worker_pid, workers_mode=mode
            )
            pids[mode] = {json.loads(b)["pid"] for b in _zip_entries(out).values()}
    assert pids["thread"] == {os.getpid()}
    assert os.getpid() not in pids["process"]
    assert 1 <= len(pids["process"]) <= 2


async def test_a_transform_that_raises_fails_those_items_and_delivers_the_rest(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """Items it raised for are failures with the exception in one line; the rest arrive."""
    report, expected, entries = await _pull(
        kognic_client, tmp_path / "out.zip", transform=transforms.fail_on_even_names, workers=2
    )
    wanted = {name: s for name, s in expected.items() if not _even(s["scene"])}
    failed = {f.item: f.reason for f in report.failures}
    assert set(failed) == {s["scene"] for s in expected.values() if _even(s["scene"])}
    assert failed
    assert report.downloaded == len(wanted)
    for scene, reason in failed.items():
        assert reason == f"transform raised ValueError: no conversion for {scene}"
    assert entries == wanted


async def test_returning_none_leaves_items_out_without_failing(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """None leaves the scene out, counted as left out; the run is complete."""
    report, expected, entries = await _pull(
        kognic_client,
        tmp_path / "out.zip",
        transform=transforms.drop_even_names,
        workers_mode="thread",
    )
    wanted = {name: s for name, s in expected.items() if not _even(s["scene"])}
    assert report.ok
    assert report.skipped == 0
    assert report.left_out == len(expected) - len(wanted) > 0
    assert report.to_dict()["left_out"] == report.left_out
    assert entries == wanted


async def test_renamed_output_gets_its_name_and_is_not_taken_for_json(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """Renamed(csv, "x.csv") writes x.csv; JSON Lines stores that non-JSON text as base64."""
    async with FakeKognic(projects=[PROJECT]) as fake:
        async with kognic_client(fake) as client:
            await client.kognic.download(
                "P", "T", sink=ZipSink(tmp_path / "out.zip"), transform=transforms.to_csv
            )
            await client.kognic.download(
                "P", "T", sink=JsonlSink(tmp_path / "out.jsonl"), transform=transforms.to_csv
            )
        expected = {
            f"{e.scene_uuid}.csv": transforms.to_csv(_parsed(e)).content
            for e in fake.expected("P", "T")
        }
    entries = _zip_entries(tmp_path / "out.zip")
    assert {name: body.decode() for name, body in entries.items()} == expected
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {
        f"{line['scene_uuid']}.csv": base64.b64decode(line["content_base64"]).decode()
        for line in lines
    } == expected


def _parsed(expected: Any) -> ParsedAnnotation:
    return ParsedAnnotation(
        scene_uuid=expected.scene_uuid,
        annotation_type=expected.annotation_type,
        created=expected.created,
        content=orjson.loads(expected.content),
    )


async def test_big_items_go_to_the_workers_and_back_through_files(
    tmp_path: Path,
) -> None:
    """Items and outputs bigger than spool_memory travel as files and arrive intact."""
    project = KognicProject(project="P", annotation_types=("T",), count=12, content_size=40_000)
    async with FakeKognic(projects=[project]) as fake:
        config = Config(
            kognic=KognicConfig(api_url=fake.api_url, auth_url=fake.auth_url),
            engine=EngineConfig(spool_memory=4096),
        )
        env = {"KOGNIC_CLIENT_ID": fake.client_id, "KOGNIC_CLIENT_SECRET": fake.client_secret}
        report = await _download(
            Client(config=config, env=env),
            tmp_path / "out.zip",
            transform=transforms.to_csv,
            workers=1,
        )
        expected = {
            f"{e.scene_uuid}.csv": transforms.to_csv(_parsed(e)).content.encode()
            for e in fake.expected("P", "T")
        }
    assert report.ok
    assert min(len(body) for body in expected.values()) > 4096
    assert _zip_entries(tmp_path / "out.zip") == expected
    leftovers = [p.name async for p in anyio.Path(tmp_path).iterdir()]
    assert not [name for name in leftovers if name.startswith(".annopull-")]


async def test_a_return_value_no_output_can_hold_is_that_items_failure(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """An int (or a tuple) is a failure that says what to return instead."""
    async with FakeKognic(projects=[PROJECT]) as fake:
        report = await _download(
            kognic_client(fake),
            tmp_path / "out.zip",
            transform=transforms.returns_int,
            workers_mode="thread",
        )
    assert report.downloaded == 0
    assert len(report.failures) == 40
    assert report.failures[0].reason.startswith("transform returned int: return bytes, str")


async def test_validate_passes_valid_documents_through_unchanged(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """--validate on the fake's OpenLABEL documents: all valid, written byte for byte."""
    async with FakeKognic(projects=[PROJECT]) as fake:
        report = await _download(kognic_client(fake), tmp_path / "out.zip", validate=True)
        expected = {f"{e.scene_uuid}.json": e.content for e in fake.expected("P", "T")}
    assert report.ok
    assert report.downloaded == 40
    assert _zip_entries(tmp_path / "out.zip") == expected


async def test_validate_fails_and_leaves_out_invalid_documents_before_transforming(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """Invalid documents fail with the field and message; valid ones are transformed."""
    project = KognicProject(
        project="P", annotation_types=("T",), count=40, invalid_scenes=frozenset({3, 17})
    )
    report, expected, entries = await _pull(
        kognic_client,
        tmp_path / "out.zip",
        project=project,
        validate=True,
        transform=transforms.summarize,
        workers=2,
    )
    served = [summary["scene"] for summary in expected.values()]
    invalid = {served[3], served[17]}
    assert {f.item for f in report.failures} == invalid
    for failure in report.failures:
        assert failure.reason == (
            "not valid OpenLABEL, left out of the output: openlabel.metadata.schema_version: "
            "Input should be '1.0.0'"
        )
    assert entries == {name: s for name, s in expected.items() if s["scene"] not in invalid}


async def test_a_transform_workers_cannot_import_is_refused_before_any_request(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """A lambda cannot go to worker processes: ConfigError, nothing asked of Kognic."""
    async with FakeKognic(projects=[PROJECT]) as fake:
        with pytest.raises(ConfigError, match="module-level function"):
            await _download(kognic_client(fake), tmp_path / "out.zip", transform=lambda a: a)
        assert fake.stats.token_requests == fake.stats.search_requests == 0
        # Thread workers take it.
        report = await _download(
            kognic_client(fake),
            tmp_path / "out.zip",
            transform=lambda a: a.scene_uuid,
            workers_mode="thread",
        )
    assert report.ok
    assert sorted(_zip_entries(tmp_path / "out.zip").values()) == sorted(
        e.scene_uuid.encode() for e in fake.expected("P", "T")
    )


async def test_a_dying_worker_fails_its_items_and_the_pool_starts_again(
    kognic_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process that dies fails the items in the pool with it; the rest arrive."""
    # The fake's scenes are known before it serves them.
    crash = list(FakeKognic(projects=[PROJECT]).expected("P", "T"))[10].scene_uuid
    monkeypatch.setenv("ANNOPULL_TEST_CRASH_SCENE", crash)
    report, expected, entries = await _pull(
        lambda fake: kognic_client(fake, concurrency=2),
        tmp_path / "out.zip",
        transform=transforms.crash_on,
        workers=1,
    )
    failed = {f.item: f.reason for f in report.failures}
    assert crash in failed
    # One worker holds at most two documents: the one it works on and the next.
    assert len(failed) <= 2
    assert all("worker process died" in reason for reason in failed.values())
    assert entries == {name: s for name, s in expected.items() if s["scene"] not in failed}


async def test_workers_that_keep_dying_stop_the_run(
    kognic_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every item kills its worker, the run stops with WorkerPoolError, resumable."""
    monkeypatch.setenv("ANNOPULL_TEST_CRASH_SCENE", "*")
    async with FakeKognic(projects=[PROJECT]) as fake:
        with pytest.raises(WorkerPoolError, match="died 4 times in a row"):
            await _download(
                kognic_client(fake, concurrency=2),
                tmp_path / "out.zip",
                transform=transforms.crash_on,
                workers=1,
            )
    assert (tmp_path / "out.zip.journal").exists() or not (tmp_path / "out.zip").exists()


async def test_thread_pool_runs_at_most_workers_at_once() -> None:
    """Thread mode never runs more than ``workers`` calls at once."""
    running = peak = 0

    def work(_: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        time.sleep(0.02)
        running -= 1

    async with WorkerPool(workers=3, mode="thread") as pool, anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(pool.run, work, i)
    assert peak == 3


async def test_leaving_the_pool_on_cancel_stops_a_long_job_at_once() -> None:
    """A cancelled run does not wait for a worker process busy with a long job."""
    started = time.monotonic()
    with anyio.move_on_after(1.0):
        async with WorkerPool(workers=1) as pool:
            await pool.run(time.sleep, 60)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("no_colon", "MODULE:FUNCTION", id="malformed"),
        pytest.param("no_such_module_xyz:f", "cannot import no_such_module_xyz", id="no-module"),
        pytest.param("transforms_for_tests:nope", "has no 'nope'", id="no-attribute"),
        pytest.param("transforms_for_tests:NOT_CALLABLE", "not a function", id="not-callable"),
    ],
)
def test_load_function_refuses_what_it_cannot_call(spec: str, message: str) -> None:
    """A bad MODULE:FUNCTION is a ConfigError saying what is wrong."""
    with pytest.raises(ConfigError, match=message):
        load_function(spec)


def test_load_function_imports_a_nested_name() -> None:
    """MODULE:FUNCTION resolves to the very function."""
    assert load_function("transforms_for_tests:summarize") is transforms.summarize


def test_worker_pool_checks_its_settings() -> None:
    """Workers out of range and unknown modes are ConfigErrors."""
    with pytest.raises(ConfigError, match="workers must be 1 to 256"):
        WorkerPool(workers=0)
    with pytest.raises(ConfigError, match="'process' or 'thread'"):
        WorkerPool(mode="fork")  # type: ignore[arg-type]


def test_transform_error_is_in_the_tree() -> None:
    """TransformError and WorkerPoolError are AnnopullErrors; Renamed holds its parts."""
    assert issubclass(WorkerPoolError, TransformError)
    assert Renamed(b"x", "a.txt") == Renamed(content=b"x", name="a.txt")


async def test_a_resume_must_use_the_same_transform_and_validation(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """The transform's name and validate are in the run's fingerprint; none leaves it as was."""
    from annopull._sources.kognic_transform import StagedSource

    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        listing = _listing(client)
        staged = StagedSource(listing, transform=transforms.summarize, validate=True)
        assert staged.fingerprint == {
            **listing.fingerprint,
            "transform": "transforms_for_tests:summarize",
            "validate": "true",
        }
        # Items pass through unchanged.
        async with contextlib.aclosing(staged.items()) as items:
            first = await anext(items)
        assert first.key == next(iter(fake.expected("P", "T"))).scene_uuid


def _listing(client: Client) -> Any:
    from annopull._sources.kognic import _Listing

    return _Listing(client.kognic, "P", "T", batch=None, cartesian=False)

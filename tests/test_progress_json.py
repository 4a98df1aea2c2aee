"""``--progress json`` and ``[engine] progress``: the lines a real CLI run writes on stderr."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from annopull._config import ConfigError, load_config
from annopull._progress import Counts, JsonProgress
from annopull.testing import FakeKognic, FakePlatforms, KognicProject, run_in_thread

PROJECT = KognicProject(
    project="P", batches=("a",), annotation_types=("T",), count=40, page_size=5, content_size=3000
)


@pytest.fixture
def fake(clean_env: None) -> Iterator[FakeKognic]:
    # Storage answers after 0.3 s: with 4 in flight, 40 items take ~3 s, several intervals.
    kognic = FakeKognic(projects=[PROJECT], latency=0.3)
    with run_in_thread(FakePlatforms(kognic=kognic)):
        yield kognic


def _run(fake: FakeKognic, cwd: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    argv = [sys.executable, "-m", "annopull", "kognic", "--project", "P", "--annotation-type"]
    argv += ["T", "-o", "out.zip", "--concurrency", "4", *extra]
    environment = {
        **os.environ,
        "ANNOPULL_KOGNIC_API_URL": fake.api_url,
        "ANNOPULL_KOGNIC_AUTH_URL": fake.auth_url,
        "ANNOPULL_ENGINE_MAX_CONCURRENCY": "4",
        "KOGNIC_CLIENT_ID": fake.client_id,
        "KOGNIC_CLIENT_SECRET": fake.client_secret,
        **(env or {}),
    }
    return subprocess.run(
        argv, env=environment, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_json_lines_of_a_real_run(fake: FakeKognic, tmp_path: Path) -> None:
    """Every interval a parsable line with rising counts; the last one has the exact totals."""
    done = _run(fake, tmp_path, "--progress", "json")
    assert done.returncode == 0, done.stderr
    events = _events(done.stderr)
    assert len(events) >= 3, done.stderr
    *ticks, last = events
    assert {e["event"] for e in ticks} == {"progress"}
    assert last["event"] == "done"
    expected = {e.scene_uuid: e.content for e in fake.expected("P", "T")}
    assert last["downloaded"] == last["listed"] == len(expected)
    assert last["listing_done"] is True
    assert last["skipped"] == last["failed"] == 0
    assert last["bytes"] == sum(map(len, expected.values()))
    assert last["job"] == "kognic P/T"
    assert last["shard"] is None
    assert last["limit"] == 4
    assert last["retries"] == 0
    for before, after in itertools.pairwise(events):
        assert after["elapsed_s"] > before["elapsed_s"]
        assert after["downloaded"] >= before["downloaded"]
        assert after["bytes"] >= before["bytes"]
    assert 0 < ticks[0]["downloaded"] < len(expected)
    # The one plain line after the JSON is the summary; no secret or token anywhere.
    assert done.stderr.splitlines()[-1].startswith("annopull: out.zip: 40 annotations")
    for secret in (fake.client_secret, *fake.stats.issued_tokens):
        assert secret not in done.stderr
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert {n[:-5]: archive.read(n) for n in archive.namelist()} == expected


def test_config_key_and_shard(fake: FakeKognic, tmp_path: Path) -> None:
    """``ANNOPULL_ENGINE_PROGRESS=json`` does the same; a shard run names its shard K/N."""
    done = _run(fake, tmp_path, "--shard", "2/3", env={"ANNOPULL_ENGINE_PROGRESS": "json"})
    assert done.returncode == 0, done.stderr
    events = _events(done.stderr)
    assert events
    assert {e["shard"] for e in events} == {"2/3"}
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert events[-1]["downloaded"] == len(archive.namelist()) > 0


def test_quiet_wins_and_none_is_silent(fake: FakeKognic, tmp_path: Path) -> None:
    """``-q`` over ``--progress json``, and ``--progress none``: only the summary line."""
    for flags in (("--progress", "json", "-q"), ("--progress", "none")):
        (tmp_path / "out.zip").unlink(missing_ok=True)
        done = _run(fake, tmp_path, *flags)
        assert done.returncode == 0, done.stderr
        assert len(done.stderr.splitlines()) == 1
        assert "40 annotations" in done.stderr


def test_bad_progress_setting_is_a_config_error() -> None:
    """An unknown ``[engine] progress`` names the modes it accepts."""
    with pytest.raises(ConfigError, match="progress must be one of auto, bar, json, none"):
        load_config(env={"ANNOPULL_ENGINE_PROGRESS": "fancy"})


def test_lines_mask_secrets_and_counts_add_up() -> None:
    """A status quoting a signed URL is masked in the line; Counts of shards sum."""
    stream = io.StringIO()
    with JsonProgress("job", stream=stream, interval=60, shard=(1, 2)) as progress:
        progress.listed(3)
        progress.item_done()
        progress.item_done(skipped=True)
        progress.item_failed()
        progress.bytes(10)
        progress.status("waiting on https://s.example/x?X-Amz-Signature=abcdef123456")
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["status"] == "waiting on https://s.example/x"
    assert (event["listed"], event["downloaded"], event["skipped"], event["failed"]) == (3, 1, 1, 1)
    total = Counts.total([Counts(listed=2, listing_done=True, bytes=5), Counts(listed=1)])
    assert total == Counts(listed=3, listing_done=False, bytes=5)
    assert Counts.total([]).listing_done is False

"""``--shards N --ray local``: sharded runs on a local Ray against the fake Kognic.

The Ray runs are real subprocesses of the CLI starting Ray on loopback (``--ray-cpus 2``);
each carries a marker in its environment, which every Ray process inherits, so that the
test can end by pid whatever a run left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from annopull._cli import main
from annopull._config import Config, EngineConfig
from annopull._fleet.parts import LocalParts
from annopull._fleet.runner import ShardJob, TaskEnv, _with_shared_rate, task_env
from annopull._pipeline.pull import in_shard
from annopull.testing import Chaos, FakeKognic, FakePlatforms, KognicProject, run_in_thread

PROJECT = KognicProject(
    project="P", batches=("a",), annotation_types=("T",), count=80, page_size=9, content_size=1500
)
N = 4
MARKER = "ANNOPULL_TEST_RAY_RUN"

ray_test = pytest.mark.slow


@pytest.fixture(name="fake")
def fake_fixture(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeKognic]:
    # Storage answers after 0.1 s, so that a shard runs long enough to be killed mid-way.
    kognic = FakeKognic(projects=[PROJECT], latency=0.1)
    monkeypatch.chdir(tmp_path)
    with run_in_thread(FakePlatforms(kognic=kognic)):
        yield kognic


def _env(fake: FakeKognic, marker: str) -> dict[str, str]:
    return {
        **os.environ,
        "ANNOPULL_KOGNIC_API_URL": fake.api_url,
        "ANNOPULL_KOGNIC_AUTH_URL": fake.auth_url,
        "ANNOPULL_ENGINE_CONCURRENCY": "2",
        "ANNOPULL_ENGINE_MAX_CONCURRENCY": "2",
        "KOGNIC_CLIENT_ID": fake.client_id,
        "KOGNIC_CLIENT_SECRET": fake.client_secret,
        MARKER: marker,
    }


def _argv(*extra: str, output: str = "out/") -> list[str]:
    argv = [sys.executable, "-m", "annopull", "kognic", "--project", "P", "--annotation-type"]
    argv += ["T", "-o", output, "--shards", str(N), "--ray", "local", "--ray-cpus", "2"]
    return [*argv, *extra]


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (the run and every Ray process)."""
    found = []
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(name="marker")
def marker_fixture() -> Iterator[str]:
    """A marker for this test's runs; every process carrying it is killed at the end."""
    value = uuid.uuid4().hex
    yield value
    for pid in _marked_pids(value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _run(
    fake: FakeKognic, marker: str, *extra: str, output: str = "out/"
) -> subprocess.CompletedProcess[str]:
    """The sharded CLI run to its end, stdout and stderr captured."""
    return subprocess.run(
        _argv(*extra, output=output),
        env=_env(fake, marker),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def run_killing_shard_2(
    fake: FakeKognic, marker: str, lock: Path, *extra: str, output: str = "out/"
) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run, and SIGKILL the worker holding shard 2's lock once half its scenes were served."""
    shard_keys = {e.scene_uuid for e in fake.expected("P", "T") if in_shard(e.scene_uuid, (2, N))}
    killed: list[int] = []

    def kill_when_half_done() -> None:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and not killed:
            served = sum(fake.stats.content_requests[key] for key in shard_keys)
            holder = lock.read_text().strip() if lock.exists() else ""
            if served >= len(shard_keys) // 2 and holder.isdigit():
                os.kill(int(holder), signal.SIGKILL)
                killed.append(int(holder))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_half_done)
    killer.start()
    done = _run(fake, marker, *extra, output=output)
    killer.join()
    return done, killed


def _parts(folder: Path) -> dict[str, dict[str, bytes]]:
    parts = {}
    for path in sorted(folder.glob("part-*-of-*.zip")):
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None
            parts[path.name] = {n: archive.read(n) for n in archive.namelist()}
    return parts


def _check_exact(fake: FakeKognic, folder: Path) -> dict[str, Any]:
    """The parts hold the batch exactly (each scene once, in its shard); the manifest agrees."""
    expected = {f"{e.scene_uuid}.json": e for e in fake.expected("P", "T")}
    parts = _parts(folder)
    assert sorted(parts) == [f"part-{k:05d}-of-{N:05d}.zip" for k in range(1, N + 1)]
    union: dict[str, bytes] = {}
    for name, entries in parts.items():
        k = int(name[5:10])
        assert all(in_shard(entry[:-5], (k, N)) for entry in entries)
        assert not union.keys() & entries.keys()
        union.update(entries)
    assert union == {name: e.content for name, e in expected.items()}
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_bytes())
    assert manifest["counts"] == {"entries": len(expected), "duplicates": 0, "failed": 0}
    for key, entry in manifest["entries"].items():
        assert f"{key}.json" in parts[entry["part"]]
        assert entry["version"] == expected[f"{key}.json"].created
    return manifest


@ray_test
def test_four_shards_on_ray_make_exactly_the_batch(
    fake: FakeKognic, tmp_path: Path, marker: str
) -> None:
    """4 shards as Ray tasks: the union of the parts is the batch; totals in the JSON lines."""
    started = time.monotonic()
    done = _run(fake, marker, "--progress", "json", "--summary", "run.json")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    _check_exact(fake, tmp_path / "out")
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    last = events[-1]
    assert last["event"] == "done"
    assert last["shards_finished"] == N
    assert last["downloaded"] == PROJECT.count
    assert last["bytes"] == sum(len(e.content) for e in fake.expected("P", "T"))
    summary = json.loads((tmp_path / "run.json").read_bytes())
    assert summary["status"] == "complete"
    assert summary["downloaded"] == PROJECT.count
    assert summary["manifest"] == "out/manifest.json"
    assert fake.client_secret not in done.stderr + (tmp_path / "run.json").read_text()
    print(f"4 shards on a local Ray (2 CPUs): {elapsed:.1f} s wall, Ray start included")


@ray_test
def test_a_killed_shard_task_is_retried_and_resumes(
    fake: FakeKognic, tmp_path: Path, marker: str
) -> None:
    """SIGKILL of shard 2's worker mid-way: Ray reruns the task, which resumes its part."""
    lock = tmp_path / "out" / f"part-00002-of-{N:05d}.zip.lock"
    done, killed = run_killing_shard_2(fake, marker, lock, "-q")
    assert killed, "shard 2 was never seen running"
    assert done.returncode == 0, done.stderr
    _check_exact(fake, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / f"part-00002-of-{N:05d}.summary.json").read_bytes())
    # The rerun continued the killed attempt's part (its journal and .part), not a new one.
    assert summary["resumed"] is True
    assert summary["downloaded"] + summary["skipped"] == PROJECT.count


@ray_test
def test_resume_runs_only_the_shards_not_complete(
    fake: FakeKognic, tmp_path: Path, marker: str
) -> None:
    """Parts 1, 2, 4 from single runs: without --resume refused; with it only shard 3 runs."""
    (tmp_path / "out").mkdir()
    os.environ.update({k: v for k, v in _env(fake, marker).items() if k.startswith("KOGNIC_")})
    for k in (1, 2, 4):
        argv = ["kognic", "--project", "P", "--annotation-type", "T", "-q", "--shard", f"{k}/{N}"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ANNOPULL_KOGNIC_API_URL", fake.api_url)
            patch.setenv("ANNOPULL_KOGNIC_AUTH_URL", fake.auth_url)
            assert main([*argv, "-o", f"out/part-{k:05d}-of-{N:05d}.zip"]) == 0
    refused = _run(fake, marker, "-q")
    assert refused.returncode == 2
    assert "holds parts of an earlier run (shard 1, 2, 4): add --resume" in refused.stderr
    before = dict(fake.stats.content_requests)
    done = _run(fake, marker, "-q", "--resume", "--summary", "run.json")
    assert done.returncode == 0, done.stderr
    fetched = {
        key for key, count in fake.stats.content_requests.items() if count > before.get(key, 0)
    }
    assert fetched == {
        e.scene_uuid for e in fake.expected("P", "T") if in_shard(e.scene_uuid, (3, N))
    }
    summary = json.loads((tmp_path / "run.json").read_bytes())
    assert summary["already_complete"] == [1, 2, 4]
    assert [p["shard"] for p in summary["parts"]] == [3]
    _check_exact(fake, tmp_path / "out")


def test_without_ray_installed_exit_2_names_the_extra(tmp_path: Path) -> None:
    """No Ray: exit 2 and the pip command, before anything is listed or written."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from annopull._cli import main\n"
        "sys.exit(main(['urls', 'list.txt', '-o', 'out/', '--shards', '2', '-q']))"
    )
    (tmp_path / "list.txt").write_text("http://127.0.0.1:9/a.json\n")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'annopull[ray]'" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-o", "out/", "--shards", "4", "--shard", "1/4"], "use --shard K/N to run one shard"),
        (["-o", "out/", "--ray", "local"], "--ray and --ray-cpus go with --shards N"),
        (["-o", "out.zip", "--shards", "4"], "give a folder ending in '/'"),
    ],
)
def test_flag_mistakes_exit_2(
    clean_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    """Mixed or misplaced sharding flags: one line, exit 2, nothing started."""
    monkeypatch.chdir(tmp_path)
    assert main(["kognic", "--project", "P", "--annotation-type", "T", "-q", *flags]) == 2
    assert message in capsys.readouterr().err


def test_task_env_carries_credentials_it_never_shows(tmp_path: Path) -> None:
    """A credentials file is read on the driver; the tasks' copy hides its values."""
    secret = "file-secret-do-not-print"
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"clientId": "the-id", "clientSecret": secret}))
    env = {"KOGNIC_CREDENTIALS": str(path), "AWS_REGION": "eu-north-1", "HOME": "/root"}
    carried = task_env(env, Config())
    assert carried.values() == {
        "KOGNIC_CLIENT_ID": "the-id",
        "KOGNIC_CLIENT_SECRET": secret,
        "AWS_REGION": "eu-north-1",
    }
    assert secret not in repr(carried) + str(carried)


@ray_test
def test_scenes_on_ray_with_a_failed_item(fake: FakeKognic, tmp_path: Path, marker: str) -> None:
    """``kognic scenes --shards 2``: the parts hold the list; the unknown scene is in the
    manifest's failures (from its shard's summary) and the run exits 1."""
    unknown = "00000000-0000-4000-8000-000000000000"
    served = list(fake.expected("P", "T"))
    (tmp_path / "scenes.txt").write_text(
        "".join(f"{s}\n" for s in [unknown, *(e.scene_uuid for e in served)])
    )
    argv = [sys.executable, "-m", "annopull", "kognic", "scenes", "--scene-list", "scenes.txt"]
    argv += ["--annotation-type", "T", "-o", "out/", "--shards", "2", "--ray", "local"]
    done = subprocess.run(
        [*argv, "--ray-cpus", "2", "-q"],
        env=_env(fake, marker),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    union: dict[str, Any] = {}
    for entries in _parts(tmp_path / "out").values():
        union.update({name: json.loads(data) for name, data in entries.items()})
    assert union == {f"{e.scene_uuid}.json": json.loads(e.content) for e in served}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_bytes())
    shard = 1 if in_shard(unknown, (1, 2)) else 2
    (failure,) = manifest["failures"]
    assert failure["item"] == unknown
    assert failure["part"] == f"part-{shard:05d}-of-00002.zip"
    assert failure["status"] == 404
    assert manifest["counts"] == {"entries": len(served), "duplicates": 0, "failed": 1}
    assert "1 failed" in done.stderr


@ray_test
def test_shards_together_keep_to_the_run_s_rate_limit(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    """A 12 req/s budget for the run, on storage that turns away more than 14 req/s (burst
    5): the shards running at once share the budget, so storage never answers 429."""
    chaos = Chaos(rate_limit=14.0, rate_burst=5, targets=frozenset({"content"}))
    kognic = FakeKognic(projects=[PROJECT], chaos=chaos)
    monkeypatch.chdir(tmp_path)
    with run_in_thread(FakePlatforms(kognic=kognic)):
        env = {**_env(kognic, marker), "ANNOPULL_ENGINE_RATE_LIMIT": "12"}
        done = subprocess.run(
            _argv("-q"), env=env, capture_output=True, text=True, timeout=240, check=False
        )
    assert done.returncode == 0, done.stderr
    _check_exact(kognic, tmp_path / "out")
    turned_away = [e for e in kognic.stats.chaos if e.action == "rate-limited"]
    # Unsplit, two tasks at 12 req/s each would drain the burst within half a second.
    assert turned_away == []
    assert sum(kognic.stats.content_requests.values()) == PROJECT.count


def test_rate_limit_is_split_between_the_tasks_running_at_once() -> None:
    """A 12 req/s budget over 4 shards on 2 CPUs: each task gets 6; no budget, no split."""
    cluster = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    job = ShardJob(
        label="x",
        pull=None,
        store=LocalParts(Path("out")),
        shards=4,
        config=Config(engine=EngineConfig(rate_limit=12.0)),
        env=TaskEnv({}),
    )
    assert _with_shared_rate(cluster, job, parallel=4).config.engine.rate_limit == 6.0
    assert _with_shared_rate(cluster, job, parallel=1).config.engine.rate_limit == 12.0
    free = dataclasses.replace(job, config=Config())
    assert _with_shared_rate(cluster, free, parallel=4).config.engine.rate_limit == 0.0

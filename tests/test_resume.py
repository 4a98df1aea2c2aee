"""Crash-safe resume: the CLI killed (SIGKILL) or stopped (SIGINT/SIGTERM) mid-pull, then resumed.

Every test runs ``annopull kognic`` as a subprocess against a fake Kognic served over
loopback from a thread of the test process, so the fake's request counters see both runs.
The fake is slowed by small stalls on each content request so that a kill lands mid-run.
This module also holds the harness that ``test_signals.py`` and ``test_incremental.py`` use.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from annopull.testing import FakeKognic, FakePlatforms, Fault, KognicProject, run_in_thread

PROJECT = "resume"
TYPE = "openlabel"
#: Seconds between the writer's journal commits when fewer than 512 entries arrive (Checkpointer).
COMMIT_INTERVAL = 2.0


@dataclass
class Pull:
    """A fake Kognic on a background thread and how to run the CLI against it."""

    fake: FakeKognic
    tmp: Path
    project: str = PROJECT
    annotation_type: str = TYPE

    def env(self) -> dict[str, str]:
        """The CLI's environment: credentials and URLs of the fake, nothing inherited."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ANNOPULL_", "KOGNIC_")) and k != "CI"
        }
        return env | {
            "KOGNIC_CLIENT_ID": self.fake.client_id,
            "KOGNIC_CLIENT_SECRET": self.fake.client_secret,
            "ANNOPULL_KOGNIC_API_URL": self.fake.api_url,
            "ANNOPULL_KOGNIC_AUTH_URL": self.fake.auth_url,
        }

    def argv(self, output: Path | str, *extra: str, concurrency: int = 4) -> list[str]:
        """``annopull kognic`` for this project into ``output``, plus ``extra`` options."""
        out = str(output) + ("/" if isinstance(output, Path) and not output.suffix else "")
        return [
            sys.executable,
            "-m",
            "annopull",
            "kognic",
            "--project",
            self.project,
            "--annotation-type",
            self.annotation_type,
            "-o",
            out,
            "-q",
            "--concurrency",
            str(concurrency),
            *extra,
        ]

    def run(
        self, output: Path | str, *extra: str, timeout: float = 60.0, concurrency: int = 4
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI to its end."""
        return subprocess.run(
            self.argv(output, *extra, concurrency=concurrency),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, output: Path | str, *extra: str, concurrency: int = 4) -> subprocess.Popen[str]:
        """Start the CLI without waiting for it."""
        return subprocess.Popen(
            self.argv(output, *extra, concurrency=concurrency),
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def expected(self, batch: str | None = None) -> dict[str, bytes]:
        """Scene uuid -> the content the fake serves now."""
        return {
            e.scene_uuid: e.content
            for e in self.fake.expected(self.project, self.annotation_type, batch)
        }

    def created(self) -> dict[str, str]:
        """Scene uuid -> the ``created`` the fake lists now."""
        return {
            e.scene_uuid: e.created for e in self.fake.expected(self.project, self.annotation_type)
        }

    def requests(self) -> Counter[str]:
        """A snapshot of the fake's content requests per scene."""
        return Counter(self.fake.stats.content_requests)

    def slow_down(self, stall: float) -> None:
        """Make every content request wait ``stall`` seconds before it is answered."""
        self.fake.faults.add(Fault(target="content", stall=stall, times=10**9))


@contextlib.contextmanager
def serve(tmp: Path, *projects: KognicProject) -> Iterator[Pull]:
    """Run a fake Kognic with ``projects`` (one small default) for the ``with`` block."""
    projects = projects or (KognicProject(project=PROJECT, annotation_types=(TYPE,)),)
    fake = FakeKognic(projects=projects)
    with run_in_thread(FakePlatforms(kognic=fake)):
        yield Pull(fake=fake, tmp=tmp)


# -- output readers -----------------------------------------------------------------------


def journal_of(output: Path) -> Path:
    """Where the sink for ``output`` keeps its journal."""
    if output.suffix in (".zip", ".jsonl"):
        return output.with_name(output.name + ".journal")
    return output / ".annopull.journal"


def partial_of(output: Path) -> Path:
    """The file (or folder) an interrupted run leaves."""
    return output.with_name(output.name + ".part") if output.suffix else output


def journaled(journal: Path) -> dict[str, str]:
    """Committed ``key -> version`` rows of a journal (what a resume will not fetch again)."""
    uri = f"file:{journal}?mode=rw"  # never create a journal that is not there
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
        rows = conn.execute("SELECT key, version FROM entries").fetchall()
    return {str(k): str(v) for k, v in rows}


def journal_count(journal: Path) -> int:
    """Committed rows of a journal that another process is writing (0 while it has none)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    except sqlite3.Error:
        return 0


def check_unzip(path: Path) -> None:
    """``unzip -t`` accepts the archive (skipped locally without unzip, failed under CI)."""
    unzip = shutil.which("unzip")
    if unzip is None:
        if os.environ.get("CI") == "true":
            pytest.fail("unzip is not installed")
        return
    done = subprocess.run([unzip, "-t", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "No errors detected" in done.stdout


def read_zip(path: Path) -> dict[str, bytes]:
    """Scene uuid -> entry bytes, after zipfile and unzip check the archive; no duplicates."""
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert len(names) == len(set(names)), "an entry is in the zip twice"
        entries = {name.removesuffix(".json"): archive.read(name) for name in names}
    check_unzip(path)
    return entries


def read_folder(path: Path) -> dict[str, bytes]:
    """Scene uuid -> file bytes; the folder must hold nothing but the entries."""
    files = sorted(p.name for p in path.iterdir())
    assert all(name.endswith(".json") and not name.startswith(".") for name in files), files
    return {name.removesuffix(".json"): (path / name).read_bytes() for name in files}


def read_jsonl(path: Path) -> dict[str, bytes]:
    """Scene uuid -> the content bytes embedded in its line; one line per scene."""
    entries: dict[str, bytes] = {}
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        # The content is spliced in verbatim as the line's last field.
        _, sep, content = line.partition(b',"content":')
        assert sep, line[:200]
        assert record["scene_uuid"] not in entries, "a scene is in the file twice"
        assert orjson.loads(content[:-1]) == record["content"]
        entries[record["scene_uuid"]] = content[:-1]
    return entries


def read_output(output: Path) -> dict[str, bytes]:
    """The entries of a finished zip, folder or JSON Lines output."""
    if output.suffix == ".zip":
        return read_zip(output)
    if output.suffix == ".jsonl":
        return read_jsonl(output)
    return read_folder(output)


def assert_complete(pull: Pull, output: Path) -> None:
    """The output holds every scene once, byte-identical to the fake; no run leftovers."""
    entries = read_output(output)
    expected = pull.expected()
    assert entries.keys() == expected.keys()
    different = [k for k in expected if entries[k] != expected[k]]
    assert not different, f"{len(different)} entries differ from the fake, e.g. {different[0]}"
    assert not journal_of(output).exists()
    if output.suffix:
        assert not partial_of(output).exists()


# -- interruptions ------------------------------------------------------------------------


def wait_for(condition: object, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Poll ``condition()`` until true; fail if the process ends or time runs out first."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the pull ended (exit {process.returncode}) too early: {err[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            process.communicate()
            pytest.fail("the pull did not get far enough in time")
        time.sleep(0.01)


def kill_after_commit(
    pull: Pull, output: Path, seed: int, *extra: str
) -> tuple[dict[str, str], Counter[str]]:
    """Start a pull, SIGKILL it at a seeded moment after its first journal commit.

    Returns the committed journal rows and the fake's content requests at the kill.
    """
    rng = random.Random(seed)
    process = pull.start(output, *extra)
    journal = journal_of(output)
    wait_for(lambda: journal_count(journal) > 0, process)
    # Somewhere between two commits: some entries are written but not yet journaled.
    time.sleep(rng.uniform(0.2, COMMIT_INTERVAL * 0.8))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    return journaled(journal), settled(pull)


def settled(pull: Pull) -> Counter[str]:
    """The fake's content requests once requests a dead client already sent are counted."""
    last, stable_since = pull.requests(), time.monotonic()
    while time.monotonic() - stable_since < 0.3:
        time.sleep(0.05)
        now = pull.requests()
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def interrupt(
    pull: Pull, output: Path, signum: int, *extra: str, after: int = 20
) -> subprocess.CompletedProcess[str]:
    """Start a pull and send it ``signum`` once the fake has served ``after`` contents.

    From then until the process has exited, the fake holds every content request, so on a
    loaded machine the run cannot finish between the count and the signal.
    """
    process = pull.start(output, *extra)
    wait_for(lambda: sum(pull.fake.stats.content_requests.values()) >= after, process)
    hold = Fault(target="content", stall=2.0, times=10**9)
    pull.fake.faults.add(hold, first=True)
    try:
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        pull.fake.faults.remove(hold)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def snapshot(output: Path) -> dict[str, bytes]:
    """Every file an interrupted run left for ``output``, with its bytes."""
    paths = [partial_of(output), journal_of(output)]
    paths += list(output.parent.glob(output.name + ".journal-*"))
    files: dict[str, bytes] = {}
    for path in paths:
        if path.is_dir():
            files |= {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
        elif path.exists():
            files[str(path)] = path.read_bytes()
    return files


def assert_fetched_only_missing(
    pull: Pull, held: dict[str, str], before: Counter[str], after: Counter[str]
) -> None:
    """The resumed run fetched each scene the journal lacked once, and none it held."""
    second = after - before
    missing = pull.expected().keys() - held.keys()
    assert set(second) == missing
    assert all(n == 1 for n in second.values()), second.most_common(3)
    # Across both runs: every scene once, plus only what the killed run had not committed.
    wasted = sum(before.values()) - len(held)
    assert sum(after.values()) == len(pull.expected()) + wasted
    assert wasted > 0, "the interruption landed where nothing was in flight"
    assert all(before[key] == 1 for key in held)


# -- tests --------------------------------------------------------------------------------

SLOW_PROJECT = KognicProject(
    project=PROJECT, annotation_types=(TYPE,), count=400, content_size=1500, page_size=50
)


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(1, id="seed1"),
        pytest.param(2, id="seed2"),
        pytest.param(3, id="seed3"),
        pytest.param(4, id="seed4", marks=pytest.mark.slow),
        pytest.param(5, id="seed5", marks=pytest.mark.slow),
    ],
)
def test_sigkill_zip_then_resume(tmp_path: Path, seed: int) -> None:
    """A zip pull SIGKILLed mid-run resumes into a valid zip holding every scene once."""
    kill_and_resume(tmp_path, tmp_path / "backfill.zip", seed)


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        pytest.param("folder", 11, id="folder"),
        pytest.param("out.jsonl", 12, id="jsonl"),
        pytest.param("folder", 13, id="folder-seed13", marks=pytest.mark.slow),
        pytest.param("out.jsonl", 14, id="jsonl-seed14", marks=pytest.mark.slow),
    ],
)
def test_sigkill_folder_and_jsonl_then_resume(tmp_path: Path, name: str, seed: int) -> None:
    """Folder and JSON Lines pulls SIGKILLed mid-run resume to every scene once, unchanged."""
    kill_and_resume(tmp_path, tmp_path / name, seed)


def kill_and_resume(tmp_path: Path, output: Path, seed: int) -> None:
    """SIGKILL a slowed pull after a commit, resume it, check output and fetch counts."""
    with serve(tmp_path, SLOW_PROJECT) as pull:
        pull.slow_down(0.04)
        held, before = kill_after_commit(pull, output, seed)
        assert held, "nothing was journaled before the kill"
        assert len(held) < SLOW_PROJECT.count
        assert partial_of(output).exists()
        if output.suffix:
            assert not output.exists()

        pull.fake.faults.clear()  # full speed for the resumed run
        summary = tmp_path / "summary.json"
        done = pull.run(output, "--resume", "--summary", str(summary))
        assert done.returncode == 0, done.stderr
        assert_complete(pull, output)
        assert_fetched_only_missing(pull, held, before, pull.requests())
        report = orjson.loads(summary.read_bytes())
        assert report["resumed"] is True
        assert report["downloaded"] == SLOW_PROJECT.count - len(held)
        assert report["skipped"] == len(held)


# -- refusals and fresh starts ------------------------------------------------------------

SMALL_PROJECT = KognicProject(
    project=PROJECT,
    batches=("b1", "b2"),
    annotation_types=(TYPE, "other-type"),
    count=200,
    content_size=800,
    page_size=40,
)
OTHER_PROJECT = KognicProject(project="other", batches=("b1",), annotation_types=(TYPE,), count=10)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("out.zip", id="zip"),
        pytest.param("folder", id="folder"),
        pytest.param("out.jsonl", id="jsonl"),
    ],
)
def test_leftover_without_resume_is_refused(tmp_path: Path, name: str) -> None:
    """A run over an interrupted one's output without --resume exits 2, deleting nothing."""
    output = tmp_path / name
    with serve(tmp_path, SMALL_PROJECT) as pull:
        # Slow enough that the growing limit cannot finish the small project before the signal.
        pull.slow_down(0.2)
        stopped = interrupt(pull, output, signal.SIGINT)
        assert stopped.returncode == 130, stopped.stderr
        left = snapshot(output)
        assert str(journal_of(output)) in left, stopped.stderr
        fetched = pull.requests()

        again = pull.run(output)
        assert again.returncode == 2
        lines = again.stderr.strip().splitlines()
        assert len(lines) == 1, again.stderr
        assert lines[0].startswith("annopull: error: ")
        assert "--resume" in lines[0]
        assert str(partial_of(output)) in lines[0]
        assert snapshot(output) == left
        assert pull.requests() == fetched, "a refused run fetched content"


def test_resume_of_another_run_is_refused(tmp_path: Path) -> None:
    """--resume whose project, type, batch, shard or --since differ from the journal's exits 2."""
    output = tmp_path / "out.zip"
    with serve(tmp_path, SMALL_PROJECT, OTHER_PROJECT) as pull:
        pull.slow_down(0.03)
        stopped = interrupt(pull, output, signal.SIGINT, "--batch", "b1")
        assert stopped.returncode == 130, stopped.stderr
        left = snapshot(output)
        fetched = pull.requests()

        cases = [
            (["--batch", "b1"], "project", {"project": "other"}),
            (["--batch", "b1"], "annotation_type", {"annotation_type": "other-type"}),
            (["--batch", "b2"], "batch", {}),
            ([], "batch", {}),
            (["--batch", "b1", "--shard", "1/2"], "shard", {}),
            (["--batch", "b1", "--since", "2024-01-01T00:00:00Z"], "since", {}),
        ]
        for extra, differs, change in cases:
            other = Pull(fake=pull.fake, tmp=tmp_path, **change)
            refused = other.run(output, "--resume", *extra)
            assert refused.returncode == 2, (extra, change, refused.stderr)
            lines = refused.stderr.strip().splitlines()
            assert len(lines) == 1, refused.stderr
            assert f"journal is for {differs} " in lines[0], (differs, lines[0])
            assert snapshot(output) == left
        assert pull.requests() == fetched, "a refused run fetched content"

        # The matching command still resumes.
        pull.fake.faults.clear()
        done = pull.run(output, "--resume", "--batch", "b1")
        assert done.returncode == 0, done.stderr
        entries = read_zip(output)
        assert entries == pull.expected(batch="b1")


def test_resume_with_nothing_to_resume_runs_fresh(tmp_path: Path) -> None:
    """--resume with no interrupted run is a full fresh pull, each scene fetched once."""
    output = tmp_path / "out.zip"
    summary = tmp_path / "summary.json"
    with serve(tmp_path, SMALL_PROJECT) as pull:
        done = pull.run(output, "--resume", "--summary", str(summary))
        assert done.returncode == 0, done.stderr
        assert_complete(pull, output)
        assert pull.requests() == Counter(dict.fromkeys(pull.expected(), 1))
        report = orjson.loads(summary.read_bytes())
        assert report["resumed"] is False
        assert report["downloaded"] == SMALL_PROJECT.count


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("out.zip", id="zip"),
        pytest.param("out.jsonl", id="jsonl"),
        pytest.param("folder", id="folder"),
    ],
)
def test_sigkill_before_first_commit_then_resume(tmp_path: Path, name: str) -> None:
    """A run killed before its first journal commit resumes from nothing to a full output."""
    output = tmp_path / name
    with serve(tmp_path, SMALL_PROJECT) as pull:
        pull.slow_down(0.03)
        process = pull.start(output)
        wait_for(lambda: pull.requests().total() >= 12, process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
        assert journaled(journal_of(output)) == {}
        assert partial_of(output).exists()
        before = settled(pull)

        pull.fake.faults.clear()
        summary = tmp_path / "summary.json"
        done = pull.run(output, "--resume", "--summary", str(summary))
        assert done.returncode == 0, done.stderr
        assert_complete(pull, output)
        assert pull.requests() - before == Counter(dict.fromkeys(pull.expected(), 1))
        assert orjson.loads(summary.read_bytes())["resumed"] is True


def test_resume_refuses_a_part_shorter_than_its_journal(tmp_path: Path) -> None:
    """A .part cut short behind the journal's back is refused (exit 2), not resumed into garbage."""
    output = tmp_path / "out.zip"
    with serve(tmp_path, SMALL_PROJECT) as pull:
        pull.slow_down(0.03)
        stopped = interrupt(pull, output, signal.SIGINT, after=40)
        assert stopped.returncode == 130, stopped.stderr
        part = partial_of(output)
        with part.open("r+b") as f:
            f.truncate(part.stat().st_size // 2)
        left = snapshot(output)

        refused = pull.run(output, "--resume")
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "journal expects at least" in lines[0]
        assert snapshot(output) == left


@contextlib.contextmanager
def tiny_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (skipped where mounting is not allowed)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("name", ["out.zip", "out.jsonl", "folder"])
def test_disk_full_exits_2_with_the_path_and_resumes_after_space_is_freed(
    tmp_path: Path, name: str
) -> None:
    """A full disk ends the run with exit 2, the path and a hint; freed, --resume completes."""
    project = KognicProject(
        project=PROJECT, annotation_types=(TYPE,), count=300, content_size=4000, page_size=50
    )
    with serve(tmp_path, project) as pull, tiny_disk(tmp_path / "disk", "256k") as disk:
        output = disk / name
        full = pull.run(output)
        assert full.returncode == 2, full.stderr
        lines = [line for line in full.stderr.splitlines() if line.startswith("annopull: error")]
        assert len(lines) == 1, full.stderr
        assert "No space left on device" in lines[0]
        assert str(disk) in lines[0]
        assert "free space, then run the same command again with --resume" in lines[0]
        assert "Traceback" not in full.stderr
        held = journaled(journal_of(output))
        assert len(held) < 300
        fetched = pull.requests()

        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        done = pull.run(output, "--resume")
        assert done.returncode == 0, done.stderr
        assert read_output(output) == pull.expected()
        again = pull.requests() - fetched
        assert not set(again) & set(held), "a journaled scene was fetched again"


def test_disk_full_under_the_spool_is_not_retried_as_a_network_error(tmp_path: Path) -> None:
    """Items spilling to a full disk end the run at once (exit 2), not after 8 downloads each."""
    project = KognicProject(
        project=PROJECT, annotation_types=(TYPE,), count=40, content_size=60_000, page_size=40
    )
    with serve(tmp_path, project) as pull, tiny_disk(tmp_path / "disk", "96k") as disk:
        env = pull.env() | {"ANNOPULL_ENGINE_SPOOL_MEMORY": "4096"}
        full = subprocess.run(
            pull.argv(disk / "out.zip"), env=env, capture_output=True, text=True, timeout=60
        )
        assert full.returncode == 2, full.stderr
        assert "No space left on device" in full.stderr
        assert "Traceback" not in full.stderr
        assert max(pull.requests().values()) == 1, "an item was downloaded again"


@pytest.mark.parametrize("name", ["out.zip", "out.jsonl", "folder"])
def test_a_second_run_on_the_same_output_is_refused_and_the_first_finishes(
    tmp_path: Path, name: str
) -> None:
    """Two runs with --resume on one output: the second exits 2 naming the first one's pid."""
    output = tmp_path / name
    with serve(tmp_path, SMALL_PROJECT) as pull:
        # Slow enough that the first run outlasts the second's start on a loaded machine.
        pull.slow_down(0.25)
        first = pull.start(output, "--resume")
        lock = journal_of(output).with_suffix(".lock")
        wait_for(lambda: lock.exists() and pull.requests().total() > 0, first)
        second = pull.run(output, "--resume")
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"another run (pid {first.pid}) is writing" in lines[0]
        _, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert read_output(output) == pull.expected()

"""Graceful stop: SIGINT and SIGTERM exit 130 with a resume hint, keep the run, and it resumes.

The CLI runs as a subprocess against a slowed fake Kognic on a thread of the test process
(harness in ``test_resume.py``).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from annopull.testing import Fault, KognicProject
from test_resume import (
    PROJECT,
    TYPE,
    assert_complete,
    assert_fetched_only_missing,
    interrupt,
    journal_of,
    journaled,
    partial_of,
    serve,
    settled,
    wait_for,
)

CONCURRENCY = 4
PROJECT_SPEC = KognicProject(
    project=PROJECT, annotation_types=(TYPE,), count=240, content_size=1200, page_size=40
)


@pytest.mark.parametrize(
    ("signum", "name", "after"),
    [
        pytest.param(signal.SIGINT, "out.zip", 30, id="sigint-zip"),
        pytest.param(signal.SIGTERM, "out.zip", 90, id="sigterm-zip"),
        pytest.param(signal.SIGINT, "folder", 60, id="sigint-folder"),
        pytest.param(signal.SIGTERM, "out.jsonl", 45, id="sigterm-jsonl"),
    ],
)
def test_signal_stops_cleanly_and_resumes(
    tmp_path: Path, signum: signal.Signals, name: str, after: int
) -> None:
    """A signalled pull exits 130 naming --resume, keeps its journal, and resumes to complete."""
    output = tmp_path / name
    with serve(tmp_path, PROJECT_SPEC) as pull:
        pull.slow_down(0.03)
        stopped = interrupt(pull, output, signum, after=after)
        assert stopped.returncode == 130, stopped.stderr
        lines = stopped.stderr.strip().splitlines()
        assert lines[0] == f"annopull: error: {signum.name}: stopping, keeping what arrived"
        hint = lines[-1]
        assert hint.startswith(f"annopull: what arrived is kept in {output}")
        assert hint.endswith(" --resume")
        assert f"-o {output}" in hint
        assert "Traceback" not in stopped.stderr

        # Everything written before the stop is journaled: nothing is lost to the batch.
        held = journaled(journal_of(output))
        before = settled(pull)
        assert partial_of(output).exists()
        assert 0 < len(held) < PROJECT_SPEC.count
        # What was fetched but not kept is at most the fetches in flight, the fetched
        # results queued for the writer, and the entry being written.
        assert sum(before.values()) - len(held) <= 2 * CONCURRENCY + 1

        pull.fake.faults.clear()
        done = pull.run(output, "--resume")
        assert done.returncode == 0, done.stderr
        assert_complete(pull, output)
        assert_fetched_only_missing(pull, held, before, pull.requests())


def test_second_resume_after_second_signal(tmp_path: Path) -> None:
    """A resumed run can itself be stopped and resumed again; the zip is still complete."""
    output = tmp_path / "out.zip"
    with serve(tmp_path, PROJECT_SPEC) as pull:
        pull.slow_down(0.03)
        first = interrupt(pull, output, signal.SIGINT, after=30)
        assert first.returncode == 130, first.stderr
        second = interrupt(pull, output, signal.SIGTERM, "--resume", after=110)
        assert second.returncode == 130, second.stderr
        hint = second.stderr.strip().splitlines()[-1]
        assert hint.endswith(" --resume")
        assert hint.count("--resume") == 1, hint
        held = journaled(journal_of(output))
        before = settled(pull)
        assert len(held) > 30

        pull.fake.faults.clear()
        done = pull.run(output, "--resume")
        assert done.returncode == 0, done.stderr
        assert_complete(pull, output)
        second_run = pull.requests() - before
        assert set(second_run) == pull.expected().keys() - held.keys()


def test_repeated_signal_still_exits_130_with_hint(tmp_path: Path) -> None:
    """A second Ctrl-C or SIGTERM during the stop neither kills the cleanup nor the hint."""
    with serve(tmp_path, PROJECT_SPEC) as pull:
        pull.slow_down(0.03)
        for n, (gap, second) in enumerate(
            [(0.0, signal.SIGINT), (0.01, signal.SIGTERM), (0.03, signal.SIGINT)]
        ):
            output = tmp_path / f"out{n}.zip"
            # The stalled requests of the run stopped before are still being counted.
            target = settled(pull).total() + 30
            process = pull.start(output)
            wait_for(lambda t=target: pull.requests().total() >= t, process)
            process.send_signal(signal.SIGINT)
            time.sleep(gap)
            process.send_signal(second)
            _, err = process.communicate(timeout=30)
            assert process.returncode == 130, (gap, err)
            assert "Traceback" not in err
            assert err.strip().splitlines()[-1].endswith(" --resume"), (gap, err)
            assert journaled(journal_of(output))

        pull.fake.faults.clear()
        done = pull.run(output, "--resume")
        assert done.returncode == 0, done.stderr
        assert_complete(pull, output)


def test_stop_before_anything_written_says_so(tmp_path: Path) -> None:
    """SIGINT while the first listing page is read: exit 130, no files, and no false hint."""
    output = tmp_path / "out.zip"
    with serve(tmp_path, PROJECT_SPEC) as pull:
        pull.fake.faults.add(Fault(target="search", stall=5.0))
        process = pull.start(output)
        wait_for(lambda: pull.fake.stats.search_requests >= 1, process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "nothing was written yet; run the same command again" in err
    assert "--resume" not in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []

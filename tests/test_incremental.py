"""Incremental pulls: --since, --skip-existing (zip, folder, .jsonl, .journal) and --shard K/N.

Each test runs ``annopull kognic`` as a subprocess against a fake Kognic on a thread of the
test process and counts what the fake served (harness in ``test_resume.py``). The fake lists
scene ``i`` as created at ``2024-01-01T00:00:00Z + i seconds``; ``update_scenes`` gives a scene
new content and a ``created`` years later.
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest

from annopull.testing import KognicProject
from test_resume import (
    PROJECT,
    TYPE,
    Pull,
    interrupt,
    journal_of,
    journaled,
    read_output,
    read_zip,
    serve,
    settled,
)

COUNT = 150
SPEC = KognicProject(
    project=PROJECT, annotation_types=(TYPE,), count=COUNT, content_size=900, page_size=25
)


def summary_of(path: Path) -> dict[str, object]:
    """The ``--summary`` JSON a run wrote."""
    report: dict[str, object] = orjson.loads(path.read_bytes())
    return report


def run_ok(pull: Pull, output: Path, *extra: str) -> dict[str, object]:
    """Run a pull that must succeed; return its summary."""
    summary = output.parent / f"{output.name}.summary.json"
    done = pull.run(output, "--summary", str(summary), *extra)
    assert done.returncode == 0, done.stderr
    return summary_of(summary)


# -- --since ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "since",
    [
        pytest.param("2024-01-01T00:01:00Z", id="utc"),
        pytest.param("2024-01-01T02:01:00+02:00", id="offset"),
        pytest.param("2024-01-01T00:01:00", id="naive-is-utc"),
    ],
)
def test_since_keeps_only_later_annotations(tmp_path: Path, since: str) -> None:
    """--since fetches and writes only annotations created strictly after TIME."""
    output = tmp_path / "nightly.zip"
    with serve(tmp_path, SPEC) as pull:
        created = pull.created()
        wanted = {k for k, c in created.items() if c > "2024-01-01T00:01:00Z"}
        assert len(wanted) == COUNT - 61  # scenes 61.. are after minute one; 60 is not

        report = run_ok(pull, output, "--since", since)
        assert pull.requests() == Counter(dict.fromkeys(wanted, 1))
        entries = read_zip(output)
        expected = pull.expected()
        assert entries == {k: expected[k] for k in wanted}
        assert report["downloaded"] == len(wanted)
        assert report["skipped"] == COUNT - len(wanted)


def test_since_picks_up_updated_old_scenes(tmp_path: Path) -> None:
    """A nightly --since run fetches the old scenes that were updated, and only new work."""
    output = tmp_path / "nightly"
    with serve(tmp_path, SPEC) as pull:
        created = pull.created()
        recent = {k for k, c in created.items() if c > "2024-01-01T00:02:00Z"}
        old = sorted(created.keys() - recent)
        updated = set(random.Random(7).sample(old, 5))
        pull.fake.update_scenes(PROJECT, updated)

        run_ok(pull, output, "--since", "2024-01-01T00:02:00Z")
        assert pull.requests() == Counter(dict.fromkeys(recent | updated, 1))
        expected = pull.expected()
        assert read_output(output) == {k: expected[k] for k in recent | updated}


# -- --skip-existing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "previous",
    [
        pytest.param("previous.zip", id="zip"),
        pytest.param("previous", id="folder"),
        pytest.param("previous.jsonl", id="jsonl"),
    ],
)
def test_skip_existing_fetches_only_changed_scenes(tmp_path: Path, previous: str) -> None:
    """--skip-existing with an earlier zip, folder or .jsonl re-fetches only updated scenes."""
    earlier = tmp_path / previous
    with serve(tmp_path, SPEC) as pull:
        run_ok(pull, earlier)
        first = pull.requests()
        assert first == Counter(dict.fromkeys(pull.expected(), 1))
        changed = set(random.Random(previous).sample(sorted(first), 9))
        pull.fake.update_scenes(PROJECT, changed)

        day = tmp_path / "day.zip"
        report = run_ok(pull, day, "--skip-existing", str(earlier))
        assert pull.requests() - first == Counter(dict.fromkeys(changed, 1))
        expected = pull.expected()
        assert read_zip(day) == {k: expected[k] for k in changed}
        assert report["downloaded"] == len(changed)
        assert report["skipped"] == COUNT - len(changed)


def test_skip_existing_from_an_interrupted_runs_journal(tmp_path: Path) -> None:
    """--skip-existing with a .journal skips the scenes it holds unless they changed since."""
    earlier = tmp_path / "earlier.zip"
    with serve(tmp_path, SPEC) as pull:
        pull.slow_down(0.03)
        stopped = interrupt(pull, earlier, signal.SIGINT, after=40)
        assert stopped.returncode == 130, stopped.stderr
        journal = journal_of(earlier)
        held = journaled(journal)
        assert 0 < len(held) < COUNT
        pull.fake.faults.clear()
        before = settled(pull)
        changed = set(random.Random(3).sample(sorted(held), 4))
        pull.fake.update_scenes(PROJECT, changed)

        day = tmp_path / "day.zip"
        run_ok(pull, day, "--skip-existing", str(journal))
        wanted = (pull.expected().keys() - held.keys()) | changed
        assert pull.requests() - before == Counter(dict.fromkeys(wanted, 1))
        expected = pull.expected()
        assert read_zip(day) == {k: expected[k] for k in wanted}
        # The journal was only read: the interrupted run can still be resumed.
        assert journaled(journal) == held


def test_skip_existing_mirrors_a_folder_in_place(tmp_path: Path) -> None:
    """Pulling into the folder that --skip-existing reads updates only the changed files."""
    mirror = tmp_path / "mirror"
    with serve(tmp_path, SPEC) as pull:
        run_ok(pull, mirror)
        first = pull.requests()
        changed = set(random.Random(11).sample(sorted(first), 6))
        pull.fake.update_scenes(PROJECT, changed)

        run_ok(pull, mirror, "--skip-existing", str(mirror))
        assert pull.requests() - first == Counter(dict.fromkeys(changed, 1))
        assert read_output(mirror) == pull.expected()
        # The next night nothing changed: nothing is fetched.
        again = pull.requests()
        report = run_ok(pull, mirror, "--skip-existing", str(mirror))
        assert pull.requests() == again
        assert report["skipped"] == COUNT


# -- --shard ------------------------------------------------------------------------------


def test_shards_are_disjoint_and_cover_every_scene(tmp_path: Path) -> None:
    """--shard K/3 for K = 1..3 pull disjoint sets whose union is every scene, each once."""
    with serve(tmp_path, SPEC) as pull:
        shards = [read_zip_after(pull, tmp_path / f"part{k}.zip", f"{k}/3") for k in (1, 2, 3)]
        expected = pull.expected()
        for shard in shards:
            assert 0 < len(shard) < COUNT
            assert shard == {k: expected[k] for k in shard}
        union = [key for shard in shards for key in shard]
        assert len(union) == len(set(union)), "a scene is in two shards"
        assert set(union) == expected.keys()
        assert pull.requests() == Counter(dict.fromkeys(expected, 1))


def read_zip_after(pull: Pull, output: Path, shard: str) -> dict[str, bytes]:
    """Pull one shard into ``output`` and read it back."""
    report = run_ok(pull, output, "--shard", shard)
    entries = read_zip(output)
    assert report["downloaded"] == len(entries)
    return entries


@pytest.mark.parametrize("name", ["day.zip", "day.jsonl"])
def test_skip_existing_refuses_its_own_output_file(tmp_path: Path, name: str) -> None:
    """--skip-existing naming the output file itself exits 2 and leaves that file untouched."""
    output = tmp_path / name
    with serve(tmp_path, SPEC) as pull:
        run_ok(pull, output)
        before = output.read_bytes()
        fetched = pull.requests()
        refused = pull.run(output, "--skip-existing", str(output))
        assert refused.returncode == 2, refused.stderr
        assert "is also the output" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert output.read_bytes() == before
        assert pull.requests() == fetched

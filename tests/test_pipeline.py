"""The source-neutral pull pipeline: selection, names, per-item failures, lock, report."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest

import annopull
from annopull._storage.lock import OutputBusyError, OutputLock

pytestmark = pytest.mark.anyio


class MemorySource:
    """Items from a dict; fetch writes the bytes, or raises for the keys in ``broken``."""

    def __init__(
        self,
        notes: Mapping[str, bytes],
        *,
        names: Mapping[str, str] | None = None,
        versions: Mapping[str, str] | None = None,
        broken: frozenset[str] = frozenset(),
    ) -> None:
        self.notes = notes
        self.names = names or {}
        self.versions = versions or {}
        self.broken = broken
        self.fetched: list[str] = []

    fingerprint: ClassVar[dict[str, str]] = {"source": "memory"}

    async def items(self) -> AsyncGenerator[annopull.Item, None]:
        for key in self.notes:
            yield annopull.Item(
                key=key, name=self.names.get(key, f"{key}.json"), version=self.versions.get(key, "")
            )

    async def fetch(
        self, item: annopull.Item, target: object, *, on_bytes: Callable[[int], None]
    ) -> None:
        self.fetched.append(item.key)
        if item.key in self.broken:
            raise annopull.NetworkError(
                "connection reset", url="http://127.0.0.1:1/x?sig=s3cret", item=item.key
            )
        await target.write(self.notes[item.key])  # type: ignore[attr-defined]
        on_bytes(len(self.notes[item.key]))


def _zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {n: archive.read(n) for n in archive.namelist()}


async def test_failed_items_reported_with_context_rest_delivered(tmp_path: Path) -> None:
    """A fetch that fails is a failure with its url (no query), the others are written."""
    notes = {f"k{i}": b'{"i": %d}' % i for i in range(20)}
    source = MemorySource(notes, broken=frozenset({"k3", "k7"}))
    report = await annopull.pull(source, annopull.ZipSink(tmp_path / "o.zip"))
    assert sorted(f.item for f in report.failures) == ["k3", "k7"]
    assert {f.url for f in report.failures} == {"http://127.0.0.1:1/x"}
    assert (report.listed, report.downloaded, report.skipped) == (20, 18, 0)
    assert _zip(tmp_path / "o.zip") == {
        f"{k}.json": v for k, v in notes.items() if k not in {"k3", "k7"}
    }


async def test_unusable_names_are_per_item_failures_and_duplicates_get_unique_names(
    tmp_path: Path,
) -> None:
    """An unusable name fails its item alone; a name used twice gets ``(2)``; ``..`` is cut."""
    notes = {"a": b"{}", "b": b"[]", "c": b"{}", "d": b'"x"'}
    names = {"a": "same.json", "b": "same.json", "c": "\x00", "d": "../../d.json"}
    report = await annopull.pull(
        MemorySource(notes, names=names), annopull.DirectorySink(tmp_path / "out")
    )
    assert [f.item for f in report.failures] == ["c"]
    assert "NUL" in report.failures[0].reason
    files = {
        p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    }
    assert files == {"same.json": b"{}", "same (2).json": b"[]", "d.json": b'"x"'}


async def test_a_key_listed_twice_is_written_once(tmp_path: Path) -> None:
    """An item the listing names twice is fetched and written once, and counted as skipped."""

    class Twice(MemorySource):
        async def items(self) -> AsyncGenerator[annopull.Item, None]:
            for _ in range(2):
                async for item in super().items():
                    yield item

    source = Twice({"a": b"1", "b": b"2"})
    report = await annopull.pull(source, annopull.JsonlSink(tmp_path / "o.jsonl"))
    lines = (tmp_path / "o.jsonl").read_bytes().splitlines()
    assert len(lines) == 2
    assert (report.downloaded, report.skipped) == (2, 2)


async def test_since_with_an_unparsable_version_fails_that_item_only(tmp_path: Path) -> None:
    """With since, a version that is no time is that item's failure; older ones are skipped."""
    notes = {"old": b"1", "new": b"2", "bad": b"3"}
    versions = {"old": "2026-01-01T00:00:00Z", "new": "2026-06-01T00:00:00Z", "bad": "soon"}
    selection = annopull.Selection(since=datetime(2026, 3, 1, tzinfo=UTC))
    report = await annopull.pull(
        MemorySource(notes, versions=versions),
        annopull.ZipSink(tmp_path / "o.zip"),
        selection=selection,
    )
    assert [f.item for f in report.failures] == ["bad"]
    assert (report.downloaded, report.skipped) == (1, 1)
    assert _zip(tmp_path / "o.zip") == {"new.json": b"2"}


async def test_shards_are_disjoint_and_cover_every_key(tmp_path: Path) -> None:
    """Shards 1..3 of 3 together hold every key exactly once."""
    notes = {f"key-{i}": str(i).encode() for i in range(60)}
    seen: list[str] = []
    for k in (1, 2, 3):
        out = tmp_path / f"p{k}.zip"
        await annopull.pull(
            MemorySource(notes), annopull.ZipSink(out), selection=annopull.Selection(shard=(k, 3))
        )
        seen += list(_zip(out))
    assert sorted(seen) == sorted(f"{k}.json" for k in notes)


@contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[int]:
    """Another process holding ``path``'s output lock; yields its pid, kills it on exit."""
    script = (
        "import time; from pathlib import Path; from annopull._storage.lock import OutputLock; "
        f"OutputLock(Path({str(path)!r}), output='o').acquire(); print('held', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.communicate()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_output_locked_by_another_run_is_refused_and_untouched(tmp_path: Path) -> None:
    """While another process holds the output's lock, a pull refuses (naming its pid)."""
    out = tmp_path / "o.zip"
    with lock_held_elsewhere(tmp_path / "o.zip.lock") as pid:
        source = MemorySource({"a": b"1"})
        with pytest.raises(OutputBusyError, match=f"pid {pid}"):
            await annopull.pull(source, annopull.ZipSink(out))
        assert source.fetched == []
        assert _names(tmp_path) == ["o.zip.lock"]
    # The kernel dropped the dead holder's lock: the next run goes ahead and cleans up.
    report = await annopull.pull(MemorySource({"a": b"1"}), annopull.ZipSink(out))
    assert report.ok
    assert _names(tmp_path) == ["o.zip"]


def test_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    """A second lock on the same path fails at once; after release it can be taken again."""
    first = OutputLock(tmp_path / "x.lock", output="x")
    first.acquire()
    started = time.monotonic()
    with pytest.raises(OutputBusyError):
        OutputLock(tmp_path / "x.lock", output="x").acquire()
    assert time.monotonic() - started < 1.0
    first.release()
    assert not (tmp_path / "x.lock").exists()
    with OutputLock(tmp_path / "x.lock", output="x"):
        assert (tmp_path / "x.lock").read_text().strip().isdigit()


async def test_missing_or_unwritable_folder_is_refused_before_listing(tmp_path: Path) -> None:
    """An output in a folder that does not exist, or cannot be written, fails before any fetch."""
    source = MemorySource({"a": b"1"})
    with pytest.raises(annopull.ConfigError, match="does not exist"):
        await annopull.pull(source, annopull.ZipSink(tmp_path / "nope" / "o.zip"))
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not _writable_despite_mode(locked):
            with pytest.raises(annopull.ConfigError, match="cannot write"):
                await annopull.pull(source, annopull.ZipSink(locked / "o.zip"))
    finally:
        locked.chmod(0o700)
    assert source.fetched == []


def _writable_despite_mode(folder: Path) -> bool:
    """Root ignores file modes; then the permission case cannot be staged."""
    probe = folder / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return False
    probe.unlink()
    return True

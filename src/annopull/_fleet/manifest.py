"""``manifest.json``: what a complete set of parts holds, built from the parts themselves.

Every entry of every part is read from the parts' central directories (record by record,
never a whole directory in memory) into a temporary SQLite index, which finds keys held by
more than one part; the manifest is then streamed out of the index. Memory stays flat
whatever the number of scenes. A key is the entry name without its folder and extension
(a scene uuid), and its version the entry's comment, as skip-existing reads them.

::

    {"format": "annopull-manifest/1", "prefix": ..., "shards": N, "created": ...,
     "counts": {"entries": ..., "duplicates": ..., "failed": ...},
     "parts": [{"shard": k, "part": "part-...zip", "entries": ..., "bytes": ..., "failed": ...}],
     "duplicates": [{"key": ..., "parts": [...]}],
     "failures": [{"part": ..., "item": ..., "reason": ...}],
     "entries": {key: {"part": ..., "version": ..., "name": ...}, ...}}
"""

from __future__ import annotations

import posixpath
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson

from annopull._fleet.parts import (
    MANIFEST_NAME,
    PartSet,
    PartStore,
    part_name,
    scan_parts,
    summary_name,
)
from annopull._redact import redact_data
from annopull._zip.reader import iter_entry_comments

__all__ = ["FORMAT", "ManifestReport", "build_manifest"]

FORMAT: Final = "annopull-manifest/1"
_BATCH: Final = 5000
#: Duplicates named in the report (the manifest lists them all).
_SHOWN: Final = 5


@dataclass(frozen=True, kw_only=True)
class ManifestReport:
    """What :func:`build_manifest` found.

    ``written`` is where the manifest went, or ``None`` when the set of parts is not
    complete (then no manifest is written: one that exists always describes a whole run).
    """

    parts: PartSet
    entries: int = 0
    duplicates: int = 0
    duplicate_keys: tuple[str, ...] = ()
    failed: int = 0
    written: str | None = None
    per_part: tuple[dict[str, Any], ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Complete, each key in one part only, and no item failed."""
        return self.parts.complete and not self.duplicates and not self.failed


def build_manifest(store: PartStore, *, shards: int | None = None) -> ManifestReport:
    """Check the parts under ``store`` and, when they form a complete set, write the manifest.

    Blocking (it reads every part's central directory): call it from a worker thread.

    Args:
        store: where the parts are.
        shards: the run's number of shards (read from the parts' names when omitted).

    Raises:
        ConfigError: no parts, or parts of several runs under one prefix.
        ZipFormatError: a part is not a readable zip.
        StorageError: the manifest cannot be written.
    """
    parts = scan_parts(store, shards=shards)
    if not parts.complete:
        return ManifestReport(parts=parts)
    work = Path(tempfile.mkdtemp(prefix="annopull-manifest-"))
    try:
        index = _Index(work / "index.sqlite")
        try:
            return _build(store, parts, index, work / MANIFEST_NAME)
        finally:
            index.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(store: PartStore, parts: PartSet, index: _Index, out: Path) -> ManifestReport:
    n = parts.shards
    per_part: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for k in range(1, n + 1):
        name = part_name(k, n)
        with store.open(name) as fh:
            count = index.add(k, _entries(fh, f"{store.description}{name}"))
        failed = _failures(store, k, n)
        failures += [{"part": name, **failure} for failure in failed]
        per_part.append(
            {
                "shard": k,
                "part": name,
                "entries": count,
                "bytes": store.size(name),
                "failed": len(failed),
            }
        )
    duplicates = index.duplicate_count()
    header = {
        "format": FORMAT,
        "prefix": store.description,
        "shards": n,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {"entries": index.key_count(), "duplicates": duplicates, "failed": len(failures)},
        "parts": per_part,
    }
    with out.open("wb") as fh:
        _write(fh, header, index, n, redact_data(failures))
    store.write(MANIFEST_NAME, out)
    return ManifestReport(
        parts=parts,
        entries=index.key_count(),
        duplicates=duplicates,
        duplicate_keys=tuple(key for key, _ in index.duplicates(limit=_SHOWN)),
        failed=len(failures),
        written=f"{store.description}{MANIFEST_NAME}",
        per_part=tuple(per_part),
    )


def _entries(fh: IO[bytes], where: str) -> Iterator[tuple[str, str, str]]:
    for name, comment in iter_entry_comments(fh, where=where):
        if not name.endswith("/"):
            yield posixpath.splitext(posixpath.basename(name))[0], comment, name


def _failures(store: PartStore, k: int, n: int) -> list[dict[str, Any]]:
    """The failed items the shard's summary lists (none when it left no summary)."""
    data = store.read(summary_name(k, n))
    if data is None:
        return []
    try:
        failed = orjson.loads(data).get("failed", [])
    except (orjson.JSONDecodeError, AttributeError):
        return []
    return [f for f in failed if isinstance(f, dict)] if isinstance(failed, list) else []


def _write(
    fh: IO[bytes], header: dict[str, Any], index: _Index, n: int, failures: list[Any]
) -> None:
    """The manifest, its big parts (duplicates, entries) streamed from the index."""
    parts = [part_name(k, n) for k in range(1, n + 1)]
    fh.write(orjson.dumps(header)[:-1])
    fh.write(b',"duplicates":[')
    for i, (key, shards) in enumerate(index.duplicates()):
        record = {"key": key, "parts": [parts[k - 1] for k in shards]}
        fh.write((b"," if i else b"") + orjson.dumps(record))
    fh.write(b'],"failures":' + orjson.dumps(failures) + b',"entries":{')
    for i, (key, k, version, name) in enumerate(index.first_entries()):
        record = {"part": parts[k - 1], "version": version, "name": name}
        fh.write((b"," if i else b"") + orjson.dumps(key) + b":" + orjson.dumps(record))
    fh.write(b"}}\n")


class _Index:
    """Every entry of every part on disk, in part order; one part's rows per key kept apart."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path)
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.execute(
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY, key TEXT, shard INT, version TEXT, "
            "name TEXT)"
        )
        self._indexed = False

    def add(self, shard: int, entries: Iterator[tuple[str, str, str]]) -> int:
        """Add one part's entries; return how many it holds."""
        count = 0
        batch: list[tuple[str, int, str, str]] = []
        for key, version, name in entries:
            batch.append((key, shard, version, name))
            if len(batch) >= _BATCH:
                count += self._insert(batch)
        return count + self._insert(batch)

    def _insert(self, batch: list[tuple[str, int, str, str]]) -> int:
        with self._conn:
            self._conn.executemany(
                "INSERT INTO entries (key, shard, version, name) VALUES (?, ?, ?, ?)", batch
            )
        count = len(batch)
        batch.clear()
        return count

    def _index(self) -> None:
        # Built once after loading: cheaper than keeping an index up to date while inserting.
        if not self._indexed:
            self._conn.execute("CREATE INDEX by_key ON entries (key, seq)")
            self._indexed = True

    def key_count(self) -> int:
        self._index()
        return int(self._conn.execute("SELECT count(DISTINCT key) FROM entries").fetchone()[0])

    def duplicate_count(self) -> int:
        self._index()
        query = "SELECT count(*) FROM (SELECT key FROM entries GROUP BY key HAVING count(*) > 1)"
        return int(self._conn.execute(query).fetchone()[0])

    def duplicates(self, *, limit: int = -1) -> Iterator[tuple[str, list[int]]]:
        """Each key held more than once, with the shards that hold it, in key order."""
        self._index()
        query = (
            "SELECT key, group_concat(shard) FROM entries GROUP BY key HAVING count(*) > 1 "
            "ORDER BY key LIMIT ?"
        )
        for key, shards in self._conn.execute(query, (limit,)):
            yield key, [int(s) for s in str(shards).split(",")]

    def first_entries(self) -> Iterator[tuple[str, int, str, str]]:
        """Each key's first entry (the lowest part holding it), in part and write order."""
        self._index()
        query = (
            "SELECT key, shard, version, name FROM entries WHERE seq IN "
            "(SELECT min(seq) FROM entries GROUP BY key) ORDER BY seq"
        )
        yield from self._conn.execute(query)

    def close(self) -> None:
        self._conn.close()

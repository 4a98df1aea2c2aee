"""The resume journal: one row per finished output entry, kept in SQLite.

Why SQLite (stdlib ``sqlite3``) rather than an append-only JSON Lines file:

* **Atomic batches.** Rows added since the last :meth:`Journal.commit` live in one open
  transaction; a crash loses the whole batch or none of it, so a resume never has to parse a
  torn last record or guess where a half-written line ends.
* **Indexed lookups instead of RAM.** Resume, dedupe (``has_name``) and skip-existing
  (``version_of``) are B-tree lookups on disk, so memory stays flat at 10^6 entries where a
  JSONL journal would need an in-memory set of every name and key.
* **Ordered streaming.** The zip central directory is written at the end by paging through the
  rows in offset order (:meth:`Journal.entries`), a few hundred at a time.

The database runs in WAL mode with ``synchronous=FULL``: a commit appends the batch to the
write-ahead log and fsyncs that one file, where the rollback journal needs at least two fsyncs
per transaction. Callers flush and fsync their own output *before* :meth:`Journal.commit`, so a
committed row always describes bytes that are already on disk.

The connection is opened with ``check_same_thread=False`` because the writers call it from
worker threads (never two at once); the class itself does no locking.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Final

from annopull._errors import ResumeError

__all__ = ["Journal", "JournalEntry"]

_SCHEMA_VERSION: Final = "1"
# Rows fetched per query by entries(): big enough to amortise the query, small enough that a
# million-entry journal never sits in RAM.
_PAGE_ROWS: Final = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """One finished entry of the output, as recorded in the journal.

    Args:
        name: the entry name in the output (zip entry name, file name, or JSONL file).
        key: the item key, e.g. a scene uuid; ``""`` if the item has none.
        version: the item version, e.g. the annotation's ``created``, for skip-existing.
        offset: zip: offset of the local header; JSONL: start of the line.
        end_offset: offset just past the entry's data (and data descriptor, if any).
        crc32: CRC-32 of the uncompressed data.
        compressed_size: bytes of (compressed) data in the output.
        uncompressed_size: bytes of data before compression.
        method: zip compression method, 0 stored or 8 deflate.
        flags: zip general-purpose flags of the local header.
        dos_time: MS-DOS time field.
        dos_date: MS-DOS date field.
        zip64: whether the local header carries a ZIP64 extra field.
        comment: the central-directory file comment.
    """

    name: str
    key: str = ""
    version: str = ""
    offset: int = 0
    end_offset: int = 0
    crc32: int = 0
    compressed_size: int = 0
    uncompressed_size: int = 0
    method: int = 0
    flags: int = 0
    dos_time: int = 0
    dos_date: int = 0
    zip64: bool = False
    comment: str = ""


_COLUMNS: Final = tuple(f.name for f in fields(JournalEntry))
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)}, seq FROM entries"
_INSERT: Final = (
    f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_DDL: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # seq keeps insertion order as the tie-break for rows that share an offset (JSONL rows
    # written by separate runs); name is not unique because a JSONL sink repeats its file name.
    """CREATE TABLE entries (
        seq INTEGER PRIMARY KEY,
        name TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL,
        offset INTEGER NOT NULL, end_offset INTEGER NOT NULL, crc32 INTEGER NOT NULL,
        compressed_size INTEGER NOT NULL, uncompressed_size INTEGER NOT NULL,
        method INTEGER NOT NULL, flags INTEGER NOT NULL,
        dos_time INTEGER NOT NULL, dos_date INTEGER NOT NULL,
        zip64 INTEGER NOT NULL, comment TEXT NOT NULL)""",
    "CREATE INDEX entries_name ON entries (name)",
    "CREATE INDEX entries_key ON entries (key, seq)",
    "CREATE INDEX entries_offset ON entries (offset, seq)",
)


def _row_to_entry(row: tuple[object, ...]) -> JournalEntry:
    # The trailing seq column only orders pages; it is not part of the entry.
    values = dict(zip(_COLUMNS, row[:-1], strict=True))
    values["zip64"] = bool(values["zip64"])
    return JournalEntry(**values)  # type: ignore[arg-type]


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are opened explicitly in add(), so the batch boundary
    # is exactly commit() and nothing else.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _describe_mismatch(
    stored_kind: str, stored: Mapping[str, str], kind: str, fingerprint: Mapping[str, str]
) -> str | None:
    differences = []
    if stored_kind != kind:
        differences.append(f"journal is for kind {stored_kind!r}, not {kind!r}")
    for name in sorted(stored.keys() | fingerprint.keys()):
        old, new = stored.get(name, ""), fingerprint.get(name, "")
        if old != new:
            differences.append(f"journal is for {name} {old!r}, not {new!r}")
    return "; ".join(differences) or None


class Journal:
    """A durable, indexed record of the entries an output already holds.

    Create one with :meth:`create`, :meth:`open_existing` or :meth:`temporary`; rows added with
    :meth:`add` become durable at the next :meth:`commit`.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, temp_dir: Path | None) -> None:
        self._conn = conn
        self.path = path
        self._temp_dir = temp_dir

    @classmethod
    def create(cls, path: Path, *, kind: str, fingerprint: Mapping[str, str]) -> Journal:
        """Create a fresh journal at ``path``, replacing any old one.

        Args:
            path: the journal file; ``-wal`` and ``-shm`` files appear beside it.
            kind: the output kind (``"zip"``, ``"dir"``, ``"jsonl"``), checked on resume.
            fingerprint: what the run is for (project, export, filters), checked on resume.
        """
        return cls._create(path, kind=kind, fingerprint=fingerprint, temp_dir=None)

    @classmethod
    def open_existing(cls, path: Path, *, kind: str, fingerprint: Mapping[str, str]) -> Journal:
        """Open the journal of an interrupted run to resume it.

        Args:
            path: the journal file.
            kind: the output kind the caller is about to write.
            fingerprint: what the caller's run is for.

        Raises:
            ResumeError: the journal is missing or unreadable, or its kind or fingerprint
                differ from the caller's (the message names the differing keys).
        """
        if not path.is_file():
            raise ResumeError("no journal to resume from", item=str(path))
        try:
            conn = _connect(path)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            conn.execute("SELECT count(*) FROM entries").fetchone()
        except sqlite3.Error as exc:
            raise ResumeError(f"journal is unreadable: {exc}", item=str(path)) from exc
        if meta.get("schema") != _SCHEMA_VERSION:
            conn.close()
            raise ResumeError("journal has an unknown schema", item=str(path))
        stored = {k[3:]: v for k, v in meta.items() if k.startswith("fp:")}
        mismatch = _describe_mismatch(meta.get("kind", ""), stored, kind, fingerprint)
        if mismatch is not None:
            conn.close()
            raise ResumeError(mismatch, item=str(path))
        return cls(conn, path, temp_dir=None)

    @classmethod
    def temporary(cls, *, kind: str) -> Journal:
        """Create a journal in a private temp folder that :meth:`close` deletes.

        For outputs that cannot be resumed (a zip streamed to stdout) but still need the
        journal to dedupe names and to write the central directory without RAM.
        """
        temp_dir = Path(tempfile.mkdtemp(prefix="annopull-journal-"))
        return cls._create(
            temp_dir / "journal.sqlite", kind=kind, fingerprint={}, temp_dir=temp_dir
        )

    @classmethod
    def _create(
        cls, path: Path, *, kind: str, fingerprint: Mapping[str, str], temp_dir: Path | None
    ) -> Journal:
        _remove_files(path)
        conn = _connect(path)
        meta = [("schema", _SCHEMA_VERSION), ("kind", kind)]
        meta += [(f"fp:{k}", v) for k, v in fingerprint.items()]
        with conn:
            conn.execute("BEGIN")
            for statement in _DDL:
                conn.execute(statement)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", meta)
        return cls(conn, path, temp_dir=temp_dir)

    @staticmethod
    def read_versions(path: Path) -> Iterator[tuple[str, str]]:
        """Yield ``(key, version)`` of every keyed row of any run's journal, read-only.

        No kind or fingerprint check: this lists what an earlier run holds (skip-existing),
        it does not continue that run.

        Raises:
            ResumeError: the file is not a readable journal.
        """
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                yield from conn.execute("SELECT key, version FROM entries WHERE key != ''")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise ResumeError(f"not a readable annopull journal: {exc}", item=str(path)) from None

    def add(self, entry: JournalEntry) -> None:
        """Record ``entry``; it stays pending until the next :meth:`commit`."""
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")
        self._conn.execute(_INSERT, astuple(entry))

    def commit(self) -> None:
        """Make every pending row durable. Flush and fsync the output data first."""
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def rollback_pending(self) -> None:
        """Drop the rows added since the last :meth:`commit`."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def has_name(self, name: str) -> bool:
        """Whether an entry called ``name`` is recorded, pending rows included."""
        row = self._conn.execute("SELECT 1 FROM entries WHERE name = ? LIMIT 1", (name,))
        return row.fetchone() is not None

    def version_of(self, key: str) -> str | None:
        """The version last recorded for ``key`` (pending rows included), or ``None``."""
        cursor = self._conn.execute(
            "SELECT version FROM entries WHERE key = ? ORDER BY seq DESC LIMIT 1", (key,)
        )
        row = cursor.fetchone()
        return None if row is None else str(row[0])

    def entries(self) -> Iterator[JournalEntry]:
        """Every row in offset order (insertion order among equal offsets), fetched in pages.

        Each page is a separate keyset query, so the iterator stays valid across commits and
        never holds more than one page of rows.
        """
        query = f"{_SELECT} WHERE (offset, seq) > (?, ?) ORDER BY offset, seq LIMIT {_PAGE_ROWS}"
        last = (-1, -1)
        while True:
            rows = self._conn.execute(query, last).fetchall()
            for row in rows:
                yield _row_to_entry(row)
            if len(rows) < _PAGE_ROWS:
                return
            last = (rows[-1][_COLUMNS.index("offset")], rows[-1][-1])

    def last(self) -> JournalEntry | None:
        """The row with the highest offset (latest inserted among equals), or ``None``."""
        row = self._conn.execute(f"{_SELECT} ORDER BY offset DESC, seq DESC LIMIT 1").fetchone()
        return None if row is None else _row_to_entry(row)

    def count(self) -> int:
        """How many rows are recorded, pending ones included."""
        return int(self._conn.execute("SELECT count(*) FROM entries").fetchone()[0])

    def total_uncompressed(self) -> int:
        """The sum of ``uncompressed_size`` over every row."""
        row = self._conn.execute("SELECT coalesce(sum(uncompressed_size), 0) FROM entries")
        return int(row.fetchone()[0])

    def close(self) -> None:
        """Close the connection, dropping pending rows; a temporary journal is deleted."""
        self._conn.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def delete(self) -> None:
        """Close the journal and remove its file and the ``-wal``/``-shm`` files beside it."""
        self.close()
        _remove_files(self.path)


def _remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()

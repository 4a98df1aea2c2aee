"""The ledger: what an output already holds, kept by the pull pipeline in SQLite.

One row per finished entry: the item's key and version, the entry's name in the output, and
the sink's *receipt* for it — opaque bytes only the sink reads back (a zip's central-directory
row, a JSON Lines record's offsets). Key, version and name serve every destination alike
(resume, de-duplication, skip-existing); the receipt lets a sink resume and finish (a zip's
central directory is streamed from the receipts) without the ledger knowing its format.
Both land in the same transaction, so they never disagree after a crash.

Why SQLite (stdlib ``sqlite3``) rather than an append-only JSON Lines file:

* **Atomic batches.** Rows added since the last :meth:`Ledger.commit` live in one open
  transaction; a crash loses the whole batch or none of it, so a resume never has to parse a
  torn last record or guess where a half-written line ends.
* **Indexed lookups instead of RAM.** Resume, dedupe (``has_name``) and skip-existing
  (``version_of``) are B-tree lookups on disk, so memory stays flat at 10^6 entries where a
  JSONL file would need an in-memory set of every name and key.
* **Ordered streaming.** Receipts come back in write order (:meth:`Ledger.receipts`), a few
  hundred at a time.

The database runs in WAL mode with ``synchronous=FULL``: a commit appends the batch to the
write-ahead log and fsyncs that one file, where the rollback journal needs at least two fsyncs
per transaction. The pipeline makes the sink's data durable *before* :meth:`Ledger.commit`,
so a committed row always describes bytes that are already on disk.

The connection is opened with ``check_same_thread=False`` because the pipeline calls it from
worker threads (never two at once); the class itself does no locking. Lookups that run while
writes go on use a second, read-only connection (:meth:`Ledger.reader`).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from annopull._errors import ResumeError, StorageError

__all__ = ["Ledger", "LedgerRow"]

_SCHEMA_VERSION: Final = "2"
# Rows fetched per query by receipts(): big enough to amortise the query, small enough that a
# million-entry ledger never sits in RAM.
_PAGE_ROWS: Final = 512
_DDL: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE entries (
        seq INTEGER PRIMARY KEY,
        key TEXT NOT NULL, version TEXT NOT NULL, name TEXT NOT NULL,
        receipt BLOB NOT NULL)""",
    "CREATE INDEX entries_name ON entries (name)",
    "CREATE INDEX entries_key ON entries (key, seq)",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerRow:
    """One finished entry.

    Args:
        key: the item's identity (a scene uuid, a URL).
        version: the item's version (an annotation's ``created``), kept exactly.
        name: the entry's name in the output.
        receipt: the sink's own record of the entry, opaque to the ledger.
    """

    key: str
    version: str
    name: str
    receipt: bytes = b""


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are opened explicitly in record(), so the batch
    # boundary is exactly commit() and nothing else.
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


class Ledger:
    """A durable, indexed record of the entries an output already holds.

    Create one with :meth:`create`, :meth:`open_existing` or :meth:`temporary`; rows added with
    :meth:`record` become durable at the next :meth:`commit`.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, temp_dir: Path | None) -> None:
        self._conn = conn
        self.path = path
        self._temp_dir = temp_dir

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    @classmethod
    def create(cls, path: Path, *, kind: str, fingerprint: Mapping[str, str]) -> Ledger:
        """Create a fresh ledger at ``path``, replacing any old one.

        Args:
            path: the ledger file; ``-wal`` and ``-shm`` files appear beside it.
            kind: the output kind (``"zip"``, ``"dir"``, ``"jsonl"``), checked on resume.
            fingerprint: what the run is for (source, filters), checked on resume.
        """
        return cls._create(path, kind=kind, fingerprint=fingerprint, temp_dir=None)

    @classmethod
    def open_existing(cls, path: Path, *, kind: str, fingerprint: Mapping[str, str]) -> Ledger:
        """Open the ledger of an interrupted run to resume it.

        Raises:
            ResumeError: the ledger is missing or unreadable, or its kind or fingerprint
                differ from the caller's (the message names the differing keys).
        """
        conn = cls._open_checked(path)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        stored = {k[3:]: v for k, v in meta.items() if k.startswith("fp:")}
        mismatch = _describe_mismatch(meta.get("kind", ""), stored, kind, fingerprint)
        if mismatch is not None:
            conn.close()
            raise ResumeError(mismatch, item=str(path))
        return cls(conn, path, temp_dir=None)

    @staticmethod
    def _open_checked(path: Path) -> sqlite3.Connection:
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
            raise ResumeError("journal was written by another annopull version", item=str(path))
        return conn

    @classmethod
    def temporary(cls, *, kind: str, directory: Path | None = None) -> Ledger:
        """Create a ledger in a private temp folder that :meth:`close` deletes.

        For outputs that cannot be resumed (a zip streamed to stdout) but still need the
        ledger to dedupe names and to finish the output without RAM.
        """
        temp_dir = Path(tempfile.mkdtemp(prefix="annopull-ledger-", dir=directory))
        return cls._create(temp_dir / "ledger.sqlite", kind=kind, fingerprint={}, temp_dir=temp_dir)

    @classmethod
    def _create(
        cls, path: Path, *, kind: str, fingerprint: Mapping[str, str], temp_dir: Path | None
    ) -> Ledger:
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

    def reader(self) -> Ledger:
        """A second, read-only view of the committed rows, for lookups while writes go on."""
        conn = sqlite3.connect(_read_only_uri(self.path), uri=True, check_same_thread=False)
        return Ledger(conn, self.path, temp_dir=None)

    @staticmethod
    def read_versions(path: Path) -> Iterator[tuple[str, str]]:
        """Yield ``(key, version)`` of every row of any run's ledger, read-only.

        No kind or fingerprint check: this lists what an earlier run holds (skip-existing),
        it does not continue that run.

        Raises:
            ResumeError: the file is not a readable ledger.
        """
        try:
            conn = sqlite3.connect(_read_only_uri(path), uri=True)
            try:
                yield from conn.execute("SELECT key, version FROM entries")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise ResumeError(f"not a readable annopull journal: {exc}", item=str(path)) from None

    def record(self, rows: Iterable[LedgerRow]) -> None:
        """Add ``rows`` in write order; they stay pending until the next :meth:`commit`.

        Raises:
            StorageError: the disk under the ledger failed (full, say).
        """
        with self._storage_errors():
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT INTO entries (key, version, name, receipt) VALUES (?, ?, ?, ?)",
                ((r.key, r.version, r.name, r.receipt) for r in rows),
            )

    def commit(self) -> None:
        """Make every pending row durable. Make the output's data durable first.

        Raises:
            StorageError: the disk under the ledger failed (full, say).
        """
        with self._storage_errors():
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    def rows_after(self, count: int) -> list[LedgerRow]:
        """The rows recorded after the first ``count`` (pending ones included), in order."""
        # seq counts up from 1 without gaps: rows are only ever appended.
        cursor = self._conn.execute(
            "SELECT key, version, name, receipt FROM entries WHERE seq > ? ORDER BY seq",
            (count,),
        )
        return [LedgerRow(key=k, version=v, name=n, receipt=bytes(r)) for k, v, n, r in cursor]

    @contextlib.contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """SQLite's failures of the disk as annopull's; a full disk keeps its errno."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                cause = OSError(
                    errno.ENOSPC if code == sqlite3.SQLITE_FULL else errno.EIO, str(exc)
                )
                raise StorageError(f"cannot write the journal: {exc}", path=self.path) from cause
            raise

    def has_name(self, name: str) -> bool:
        """Whether an entry called ``name`` is recorded, pending rows included."""
        row = self._conn.execute("SELECT 1 FROM entries WHERE name = ? LIMIT 1", (name,))
        return row.fetchone() is not None

    def held_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` are recorded (pending rows included): a query per few hundred."""
        return self._held("key", keys)

    def held_names(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` are recorded (pending rows included): a query per few hundred."""
        return self._held("name", names)

    def _held(self, column: str, values: Iterable[str]) -> set[str]:
        # One indexed IN query per batch instead of a statement per entry; pages stay below
        # SQLite's oldest limit on bound parameters (999).
        wanted = list(dict.fromkeys(values))
        found: set[str] = set()
        for start in range(0, len(wanted), _PAGE_ROWS):
            page = wanted[start : start + _PAGE_ROWS]
            marks = ",".join("?" * len(page))
            query = f"SELECT DISTINCT {column} FROM entries WHERE {column} IN ({marks})"
            found.update(row[0] for row in self._conn.execute(query, page))
        return found

    def version_of(self, key: str) -> str | None:
        """The version last recorded for ``key`` (pending rows included), or ``None``."""
        cursor = self._conn.execute(
            "SELECT version FROM entries WHERE key = ? ORDER BY seq DESC LIMIT 1", (key,)
        )
        row = cursor.fetchone()
        return None if row is None else str(row[0])

    def receipts(self) -> Iterator[bytes]:
        """Every row's receipt in write order, fetched in pages.

        Each page is a separate keyset query, so the iterator stays valid across commits and
        never holds more than one page of rows.
        """
        query = f"SELECT seq, receipt FROM entries WHERE seq > ? ORDER BY seq LIMIT {_PAGE_ROWS}"
        last = -1
        while True:
            rows = self._conn.execute(query, (last,)).fetchall()
            for _seq, receipt in rows:
                yield bytes(receipt)
            if len(rows) < _PAGE_ROWS:
                return
            last = rows[-1][0]

    def last_receipt(self) -> bytes | None:
        """The receipt of the entry written last, or ``None`` when there is none."""
        row = self._conn.execute("SELECT receipt FROM entries ORDER BY seq DESC LIMIT 1")
        found = row.fetchone()
        return None if found is None else bytes(found[0])

    def count(self) -> int:
        """How many rows are recorded, pending ones included."""
        return int(self._conn.execute("SELECT count(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        """Close the connection, dropping pending rows; a temporary ledger is deleted."""
        self._conn.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def delete(self) -> None:
        """Close the ledger and remove its file and the ``-wal``/``-shm`` files beside it."""
        self.close()
        _remove_files(self.path)


def _read_only_uri(path: Path) -> str:
    """A read-only SQLite URI for ``path``; quoted, since ``#``, ``?`` or ``%`` in a folder
    name would otherwise open another file (and drop ``mode=ro``)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def _remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()

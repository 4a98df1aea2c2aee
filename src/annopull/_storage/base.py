"""Where an output's bytes go: the storage protocols under every sink.

Two shapes cover every output annopull writes::

    ObjectStorage ── open() ──> Blob        one object built front to back (a zip, a .jsonl,
                                            a downloaded export): appended to, patched in
                                            place where the medium allows, published whole
    TreeStorage ──── create() ─> AtomicFile  many small objects (a folder of files), each one
                                            appearing whole or not at all

Implementations: :mod:`annopull._storage.local` (a local file or folder),
:mod:`annopull._storage.stream` (an unseekable stream such as stdout) and
:mod:`annopull._storage.bucket` (S3: a multipart upload, or one object per file); sinks
never see which one they write to. A storage whose resume state must live beside the output
in the store itself (a bucket, so a run resumes from any machine) has a :class:`RemoteState`;
local storages keep the pipeline's journal beside the file and have none.

Every method blocks: sinks call them from worker threads, in batches, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from annopull._errors import StorageError

__all__ = [
    "AtomicFile",
    "Blob",
    "ObjectStorage",
    "RemoteState",
    "RunHeader",
    "StateRow",
    "TreeStorage",
    "UnreadableRangeError",
]


class UnreadableRangeError(StorageError):
    """A blob cannot read back bytes it made durable (an object store's uploaded parts)."""


#: One ledger row as remote state keeps it: key, version, entry name, receipt.
StateRow = tuple[str, str, str, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunHeader:
    """What an unfinished run recorded about itself in remote state."""

    kind: str
    fingerprint: Mapping[str, str]


class RemoteState(Protocol):
    """A run's resume state kept in the store beside its output (blocking methods).

    The pipeline's ledger stays a local cache; this is the truth a resume on any machine
    rebuilds it from. :meth:`commit` is the durability point: rows are only committed once
    the bytes they describe are in the store.
    """

    @property
    def description(self) -> str:
        """Where the state lives, as shown to a person."""

    @property
    def committed(self) -> int:
        """How many rows are recorded as durable (an unfinished run's included)."""

    def prepare(self) -> None:
        """Check the store answers (a missing bucket is a ConfigError now, before any
        listing) and make the local folder of the ledger cache."""

    def read(self) -> RunHeader | None:
        """The unfinished run's header, or ``None`` when there is no unfinished run."""

    def start(self, *, kind: str, fingerprint: Mapping[str, str]) -> None:
        """Begin a fresh run's state; refuses when another run's state appeared meanwhile.

        Raises:
            OutputBusyError: another run started on this output.
        """

    def rows(self) -> Iterator[StateRow]:
        """Every committed row of the unfinished run, in write order."""

    def commit(self, rows: Sequence[StateRow]) -> int:
        """Record the first of ``rows`` whose bytes are durable; return how many.

        ``rows`` are the entries written since the last :attr:`committed`, in write order.
        An object store's entries are durable once the part holding them went up, so the
        last few may have to wait (the next part is not full yet): the caller offers them
        again, with the next ones, at its next checkpoint.
        """

    def clear(self) -> None:
        """Remove the state after the output was finished."""


class Blob(Protocol):
    """One object being written, front to back.

    ``seekable`` blobs (a local ``.part`` file) can be patched in place, read back and cut
    short; an unseekable one (a pipe) only takes appends.
    """

    @property
    def seekable(self) -> bool:
        """Whether :meth:`patch`, :meth:`read_at` and :meth:`truncate` work."""

    @property
    def position(self) -> int:
        """Bytes written so far (where the next :meth:`write` lands)."""

    def write(self, data: bytes) -> None:
        """Append ``data``."""

    def patch(self, offset: int, data: bytes) -> None:
        """Overwrite bytes already written at ``offset``; the position stays."""

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer at the end).

        Raises:
            UnreadableRangeError: an object store's blob reaches back only to its last
                durable point (its parts cannot be read until the upload completes).
        """

    def truncate(self, size: int) -> None:
        """Drop everything after the first ``size`` bytes; the position becomes ``size``."""

    def sync(self) -> None:
        """Make everything written so far durable (what a checkpoint stands on).

        A blob with :class:`RemoteState` may keep small writes buffered (an upload part has
        a minimum size); its state's ``commit`` says which entries became durable.
        """

    def mark_boundary(self) -> None:
        """Note that an entry ended here: nothing before will be patched or cut again.

        Writers call it once per finished entry; an object store may upload what is before
        it as a part now (and count the entries each part holds).
        """

    def close(self) -> None:
        """Release the object without publishing it; what was synced stays for a resume."""


@runtime_checkable
class ObjectStorage(Protocol):
    """The place of one output object: its unfinished form, and its final one."""

    @property
    def description(self) -> str:
        """The output as shown to a person (a path, ``stdout``)."""

    @property
    def state_path(self) -> Path | None:
        """Where resume state is kept beside the object, or ``None`` when it cannot resume."""

    @property
    def partial_path(self) -> Path | None:
        """Where the unfinished object can be read locally, if it can."""

    def has_partial(self) -> bool:
        """Whether an unfinished object from an earlier run is there."""

    def open(self, *, resume: bool) -> Blob:
        """Start the object afresh, or (``resume``) continue the unfinished one at its end."""

    def publish(self, blob: Blob) -> None:
        """Make ``blob`` durable and put it in its final place, atomically; closes it."""

    def discard_partial(self) -> None:
        """Remove the unfinished object (e.g. after it was extracted elsewhere)."""

    @property
    def remote_state(self) -> RemoteState | None:
        """Resume state kept in the store itself, or ``None`` (see :class:`RemoteState`)."""


class AtomicFile(Protocol):
    """One file of a tree, invisible under its name until :meth:`commit`."""

    def write(self, data: bytes) -> None:
        """Append ``data``."""

    def commit(self, *, mtime: datetime | None = None, mode: int | None = None) -> None:
        """Give the file its time and mode, then its name (replacing any file of that name)."""

    def discard(self) -> None:
        """Forget the file; nothing of it remains."""


@runtime_checkable
class TreeStorage(Protocol):
    """A folder of objects written one by one, each atomically."""

    @property
    def description(self) -> str:
        """The folder as shown to a person."""

    @property
    def state_path(self) -> Path | None:
        """Where resume state is kept (inside the folder), or ``None``."""

    def prepare(self) -> None:
        """Create the folder when missing and remove what a killed run left half-written."""

    def create(self, name: str) -> AtomicFile:
        """Start the file ``name`` (a sanitised relative name, ``/``-separated)."""

    def put(self, name: str, data: Iterable[bytes], *, mtime: datetime | None = None) -> int:
        """Write a whole file atomically; return its size."""

    def sync(self) -> None:
        """Make every committed file and its folder entry durable."""

    @property
    def remote_state(self) -> RemoteState | None:
        """Resume state kept in the store itself, or ``None`` (see :class:`RemoteState`)."""

"""The sink interface: where pulled entries go, one at a time, as streams of chunks.

A sink turns entries into an output format (a zip, files in a folder, JSON Lines) and writes
it through a storage (:mod:`annopull._storage`). It keeps no journal of its own: for each
entry it hands back a *receipt*, which whoever drives it (the pull pipeline) records beside
the item's key and version, and gives back through :class:`Records` to resume or finish.

Life of a sink::

    sink.attach(records, resume=...)     # what was recorded before (on resume)
    async with sink:                     # opens; closes on success, aborts on error
        receipt = await sink.write(info, chunks)
        await sink.flush()               # before the receipts are committed as durable
    sink.result                          # what the finished output holds
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol, Self, TypeVar

import anyio

from annopull._errors import AnnopullError
from annopull._storage.base import ObjectStorage, RemoteState

__all__ = ["EntryInfo", "ObjectSink", "Records", "Sink", "SinkResult", "run_shielded"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryInfo:
    """What a sink needs to know about one entry besides its bytes.

    Args:
        name: the entry's name in the output: sanitised and unique (the driver's job).
        key: the item's identity (a scene uuid, a URL).
        version: the item's version (an annotation's ``created``).
        mtime: the entry's time stamp in the output.
        size: the byte count, when known before the bytes arrive.
        fields: extra fields of the item (JSON Lines writes them beside the content).
        json: whether the content must be a JSON document (JSON Lines embeds it; a
            non-JSON body is refused). When False, JSON Lines stores other bytes as base64.
    """

    name: str
    key: str = ""
    version: str = ""
    mtime: datetime | None = None
    size: int | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    json: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkResult:
    """What a finished sink holds."""

    output: str
    entries: int
    bytes_written: int


class Records(Protocol):
    """The receipts a sink handed out, as its driver recorded them (write order)."""

    def receipts(self) -> Iterator[bytes]:
        """Every recorded receipt, oldest first (earlier runs' too, on resume)."""

    def last_receipt(self) -> bytes | None:
        """The receipt of the entry written last, or ``None``."""

    def count(self) -> int:
        """How many receipts are recorded."""


class Sink(abc.ABC):
    """Where entries go: attached to its records, opened once, written, then closed or aborted.

    ``write`` is called by one task at a time; what the caller's chunk iterator raises
    passes through unchanged and leaves no half entry behind. An entry the sink cannot take
    (an unusable name, content that is not JSON for JSON Lines) raises an
    :class:`~annopull.AnnopullError` for that entry alone; the sink stays usable.
    """

    #: Output kind recorded in the ledger, so a resume into another kind is refused.
    kind: ClassVar[str] = ""

    def __init__(self) -> None:
        self._records: Records | None = None
        self._resume = False
        self._result: SinkResult | None = None

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """The output, as shown to a person (a path, or ``stdout``)."""

    @property
    def unfinished(self) -> str:
        """Where the unfinished output is while a run writes it (a ``.part`` file, say)."""
        return self.description

    @property
    @abc.abstractmethod
    def state_path(self) -> Path | None:
        """Where the driver keeps its ledger beside the output; ``None``: cannot resume."""

    @abc.abstractmethod
    def has_partial(self) -> bool:
        """Whether an interrupted run's unfinished output is there (blocking)."""

    def prepare(self) -> None:
        """Create what the ledger's place needs (a folder output's folder); blocking.

        With :attr:`remote_state`, also checks the store answers (a missing bucket is a
        ConfigError before anything is listed).
        """
        state = self.remote_state
        if state is not None:
            state.prepare()

    @property
    def remote_state(self) -> RemoteState | None:
        """Resume state kept in the store beside the output (an object store), or ``None``.

        When there is one, the driver rebuilds its ledger from it on resume, and commits
        rows only when :meth:`RemoteState.commit` says their bytes are durable.
        """
        return None

    def attach(self, records: Records, *, resume: bool) -> None:
        """Give the sink its records; with ``resume`` it continues the unfinished output."""
        self._records = records
        self._resume = resume

    @property
    def records(self) -> Records:
        if self._records is None:
            raise RuntimeError(f"{type(self).__name__} has no records: attach() it first")
        return self._records

    @property
    def result(self) -> SinkResult:
        """What the finished output holds (after a successful ``async with``)."""
        if self._result is None:
            raise RuntimeError(f"{type(self).__name__} is not finished")
        return self._result

    @abc.abstractmethod
    async def open(self) -> None:
        """Start the output, or continue the unfinished one when attached with ``resume``.

        Raises:
            ResumeError: the unfinished output does not match its records.
        """

    @abc.abstractmethod
    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> bytes:
        """Write one entry and return its receipt."""

    async def write_many(
        self, entries: Sequence[tuple[EntryInfo, bytes]]
    ) -> list[bytes | AnnopullError]:
        """Write several entries whose bytes are in memory, in order.

        Returns each entry's receipt, or, in its place, the error that refused that one
        entry; the others are written all the same. Sinks with a per-call cost (a
        worker-thread hop) override this to pay it once.
        """
        results: list[bytes | AnnopullError] = []
        for info, data in entries:
            try:
                results.append(await self.write(info, _single(data)))
            except AnnopullError as exc:
                results.append(exc)
        return results

    @abc.abstractmethod
    async def flush(self) -> None:
        """Make every entry written so far durable (before its receipt is committed)."""

    @abc.abstractmethod
    async def close(self) -> SinkResult:
        """Finish the output so that it is complete and in its final place."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Stop, keeping every finished entry durable for a resume."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded both ways: a stop signal arriving while the output is being finished must
        # not leave a complete output looking interrupted, nor an aborted one half-flushed.
        with anyio.CancelScope(shield=True):
            if exc is None:
                self._result = await self.close()
            else:
                await self.abort()


class ObjectSink(Sink):
    """A sink whose output is one object in an :class:`ObjectStorage` (a zip, a ``.jsonl``).

    Args:
        storage: where the object goes.
    """

    def __init__(self, storage: ObjectStorage) -> None:
        super().__init__()
        self._storage = storage

    @property
    def description(self) -> str:
        return self._storage.description

    @property
    def unfinished(self) -> str:
        partial = self._storage.partial_path
        return str(partial) if partial is not None else self.description

    @property
    def state_path(self) -> Path | None:
        return self._storage.state_path

    def has_partial(self) -> bool:
        return self._storage.has_partial()

    @property
    def remote_state(self) -> RemoteState | None:
        return self._storage.remote_state


async def run_shielded(func: Callable[..., T], *args: object) -> T:
    """Run blocking ``func`` in a worker thread, shielded from cancellation.

    For work that must finish once started (a batch appended whole), so a stop signal can
    never leave half of it behind.
    """
    with anyio.CancelScope(shield=True):
        return await anyio.to_thread.run_sync(func, *args)
    raise AssertionError("unreachable: a shielded scope does not swallow the return")


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data

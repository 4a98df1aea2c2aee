"""The sink interface: where pulled entries go, one at a time, as streams of chunks."""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio

from annopull._errors import ConfigError, ResumeError, TransferError
from annopull._pipeline.journal import Journal

__all__ = ["Checkpointer", "EntryInfo", "Sink", "SinkResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryInfo:
    """What a sink needs to know about one entry besides its bytes.

    Args:
        name: the entry's name in the output (``{scene_uuid}.json``); sinks sanitise it.
        key: the item's identity (the scene uuid), for resume and skip-existing.
        version: the item's version (the annotation's ``created``).
        mtime: the entry's time stamp in the output.
        size: the byte count, when known before the bytes arrive.
        fields: extra fields of the item (JSON Lines writes them beside the content).
    """

    name: str
    key: str = ""
    version: str = ""
    mtime: datetime | None = None
    size: int | None = None
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkResult:
    """What a finished sink holds."""

    output: str
    entries: int
    bytes_written: int


class Sink(abc.ABC):
    """Where entries go: opened once, written entry by entry, then closed or aborted.

    A sink keeps a journal of the entries it holds, beside its output, so that an
    interrupted run can be resumed (``resume=True``) and an entry is never written twice.
    ``write`` is called by one task at a time; what the caller's chunk iterator raises
    passes through unchanged and leaves no half entry behind.
    """

    #: Output kind recorded in the journal, so a resume into another kind is refused.
    kind: str = ""

    def __init__(self) -> None:
        self._journal: Journal | None = None
        self._held: Journal | None = None

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """The output, as shown to a person (a path, or ``stdout``)."""

    @property
    def journal_path(self) -> Path | None:
        """Where the journal lives, or ``None`` for a sink that cannot be resumed."""
        return None

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError(f"{type(self).__name__} is not open")
        return self._journal

    @abc.abstractmethod
    async def open(self, *, fingerprint: Mapping[str, str], resume: bool = False) -> bool:
        """Prepare the output; return True when an interrupted run is being resumed.

        Args:
            fingerprint: what the run is for; a resumed journal must match it.
            resume: continue an interrupted run when its journal is there (a fresh start
                when there is none, so that scripts can always pass it).

        Raises:
            ResumeError: an interrupted run is there but ``resume`` was not asked for, or
                its journal does not match ``fingerprint`` or the partial output.
        """

    @abc.abstractmethod
    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> str:
        """Write one entry and return the name it got in the output."""

    async def write_many(
        self, entries: Sequence[tuple[EntryInfo, bytes]]
    ) -> list[str | TransferError]:
        """Write several entries whose bytes are in memory, in order.

        Returns each entry's name in the output, or, in its place, the
        :class:`TransferError` that refused that one entry (e.g. content that is not JSON
        for a JSON Lines output); the others are written all the same. Sinks with a
        per-call cost (a worker-thread hop) override this to pay it once.
        """
        results: list[str | TransferError] = []
        for info, data in entries:
            try:
                results.append(await self.write(info, _single(data)))
            except TransferError as exc:
                results.append(exc)
        return results

    @abc.abstractmethod
    async def close(self) -> SinkResult:
        """Finish the output so that it is complete and in its final place."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Stop, keeping every finished entry durable and journaled for a resume."""

    def version_of(self, key: str) -> str | None:
        """The version of ``key`` that an interrupted run already wrote, or ``None``.

        Answered from a second, read-only connection to the journal: the writer uses the
        first one from worker threads, and SQLite keeps two connections consistent where
        one shared across threads would need a lock around every call.
        """
        return self._held.version_of(key) if self._held is not None and key else None

    def holds(self, key: str) -> bool:
        """Whether this run's output already has an entry for ``key`` (pending ones too).

        Call it only between writes: it uses the writer's own journal connection, which is
        idle then.
        """
        return bool(key) and self.journal.version_of(key) is not None

    def _close_held(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def _close_journals(self, *, delete: bool) -> None:
        self._close_held()
        if delete:
            self.journal.delete()
        else:
            self.journal.close()

    async def _open_journal(
        self, *, fingerprint: Mapping[str, str], resume: bool, partial: Path
    ) -> tuple[Journal, bool]:
        """The journal for this run: the interrupted run's (resume) or a fresh one."""
        path = self.journal_path
        if path is not None and not await anyio.Path(path.parent).is_dir():
            raise ConfigError(f"the output's folder does not exist: {path.parent}")
        if path is None:
            return await anyio.to_thread.run_sync(lambda: Journal.temporary(kind=self.kind)), False
        leftover = await anyio.Path(path).exists() and await anyio.Path(partial).exists()
        if leftover and resume:

            def reopen() -> Journal:
                return Journal.open_existing(path, kind=self.kind, fingerprint=fingerprint)

            journal = await anyio.to_thread.run_sync(reopen)
            self._held = await anyio.to_thread.run_sync(reopen)
            return journal, True
        if leftover:
            raise ResumeError(
                f"{partial} holds an interrupted run: add --resume to continue it, "
                f"or delete it and {path.name} to start over"
            )
        journal = await anyio.to_thread.run_sync(
            lambda: Journal.create(path, kind=self.kind, fingerprint=fingerprint)
        )
        return journal, False


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Checkpointer:
    """Makes a sink's data and then its journal durable every so many entries or seconds.

    Each checkpoint costs an fsync or two, so it is batched; a crash loses at most one batch
    of entries, which a resume fetches again.

    Args:
        journal: the sink's journal, committed after ``flush``.
        flush: makes the sink's own data durable (runs in a worker thread).
        every: entries between checkpoints.
        interval: seconds between checkpoints.
    """

    def __init__(
        self,
        journal: Journal,
        flush: Callable[[], None],
        *,
        every: int = 512,
        interval: float = 2.0,
    ) -> None:
        self._journal = journal
        self._flush = flush
        self._every = every
        self._interval = interval
        self._pending = 0
        self._last = time.monotonic()

    async def entry_added(self) -> None:
        """Count one journaled entry; checkpoint when the batch is full or old."""
        self._pending += 1
        if self._pending >= self._every or time.monotonic() - self._last >= self._interval:
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Flush the data, then commit the journal (never the other way round)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._checkpoint)

    def _checkpoint(self) -> None:
        self._flush()
        self._journal.commit()
        self._pending = 0
        self._last = time.monotonic()

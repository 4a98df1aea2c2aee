"""A download's byte target over a storage blob: async on the outside, blocking writes in threads.

The transport streams a download into a :class:`~annopull._transport.http.ByteTarget`
(``size``, ``write``, ``truncate``); a :class:`~annopull._storage.base.Blob` only blocks.
:class:`BlobTarget` joins the two: network chunks are gathered in memory and handed to the
blob from a worker thread about once per :data:`BATCH_SIZE`, so a download costs one thread
hop per batch instead of one per network chunk. A full batch is written in the background
while the next one arrives (the network and the disk overlap); the batch after that waits
for it, so memory stays bounded by two batches. An observer (a checksum, say) may see every
chunk in that same worker thread, right after it is written::

    async with await BlobTarget.open(storage, resume=True) as target:
        await transport.download(url, target, resume=True)
        await target.sync()              # everything on disk, e.g. to verify it there
        await target.publish(storage)    # durable, then in its final place
    # leaving the block without publishing keeps what arrived (synced) for a resume
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Self

import anyio
import anyio.to_thread

from annopull._storage.base import Blob, ObjectStorage

__all__ = ["BATCH_SIZE", "BlobTarget"]

#: Bytes gathered before one hop to the worker thread.
BATCH_SIZE: Final = 1 << 20


class BlobTarget:
    """An async byte target that writes to ``blob`` in batches, from worker threads.

    ``size`` counts the batched bytes as held, so a retry's Range request asks for exactly
    what is missing whether or not they reached the blob yet. One task uses a target at a
    time (as one download does). A batch that fails in the background (a full disk) raises
    from the next call, once; the bytes batched after it are dropped with it, so ``size`` is
    again what the blob holds and a retry asks for exactly those bytes again.

    Args:
        blob: an open blob; writes continue at its position.
        batch_size: bytes gathered before they are handed to the blob.
    """

    def __init__(self, blob: Blob, *, batch_size: int = BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._blob = blob
        self._batch_size = batch_size
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._written = blob.position
        # The batch being written in the background, and its size.
        self._flight: asyncio.Future[None] | None = None
        self._flight_size = 0
        self._observer: Callable[[bytes], None] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, storage: ObjectStorage, *, resume: bool, batch_size: int = BATCH_SIZE
    ) -> BlobTarget:
        """Open ``storage``'s object (continuing the unfinished one with ``resume``).

        Args:
            storage: where the object goes.
            resume: continue at the end of what an earlier run left, else start afresh.
            batch_size: see :class:`BlobTarget`.
        """
        blob = await anyio.to_thread.run_sync(functools.partial(storage.open, resume=resume))
        return cls(blob, batch_size=batch_size)

    def __repr__(self) -> str:
        return (
            f"BlobTarget(size={self.size}, writing={self._flight_size}, "
            f"pending={self._pending_size})"
        )

    @property
    def size(self) -> int:
        """Bytes held: those in the blob and those batched for it."""
        return self._written + self._flight_size + self._pending_size

    def watch(self, observer: Callable[[bytes], None] | None) -> None:
        """Call ``observer`` with every chunk from now on, in order, in the worker thread just
        after the chunk is written (so it reads bytes still in the CPU's cache).

        What it raises stops that batch (the chunks after it are not written) and comes out
        of the call that waits for the batch, as a failed write would. Bytes written when the
        target is closed unpublished are not observed: nobody is left to look.
        """
        self._observer = observer

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; the blob gets it with the next full batch."""
        self._check_open()
        if not chunk:
            return
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= self._batch_size:
            await self._land()
            self._launch()

    async def truncate(self, size: int) -> None:
        """Drop everything after the first ``size`` bytes; appends continue from there."""
        self._check_open()
        if size < 0:
            raise ValueError(f"cannot truncate to {size} bytes")
        if size >= self.size:
            return
        await self._land()
        if size >= self._written:
            # The cut falls in the batch: nothing written needs to change.
            self._trim_pending(size - self._written)
            return
        self._pending.clear()
        self._pending_size = 0
        await self._run(functools.partial(self._blob.truncate, size))

    async def flush(self) -> None:
        """Hand the batched bytes to the blob (not yet durable; see :meth:`sync`)."""
        self._check_open()
        await self._land()
        if self._pending:
            await self._run(self._drain)

    async def sync(self) -> None:
        """Make every byte held durable in the blob, e.g. before it is read back by path."""
        self._check_open()
        await self._run(self._drain_and_sync)

    async def publish(self, storage: ObjectStorage) -> None:
        """Write what is batched, then publish the blob through ``storage`` (closing it).

        Args:
            storage: the storage that opened the blob.
        """
        self._check_open()

        def publish() -> None:
            self._drain()
            storage.publish(self._blob)

        try:
            # A worker thread, once started, runs to its end: a stop signal cannot leave the
            # object half published.
            await self._run(publish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._run(self._keep_quietly)
            raise
        finally:
            self._closed = True

    async def aclose(self) -> None:
        """Write and sync what arrived, then close the blob unpublished; safe to repeat."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            try:
                self._drain_and_sync(observe=False)
            finally:
                self._blob.close()

        # Shielded: after a stop signal the bytes that arrived are what a resume stands on.
        with anyio.CancelScope(shield=True):
            try:
                await self._land()
            finally:
                await self._run(close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- helpers; _run, _launch, _land and _trim_pending run on the loop, the rest in a thread
    async def _run(self, func: Callable[[], object]) -> None:
        """Run ``func`` in a worker thread once the batch in flight has landed."""
        await self._land()
        try:
            await anyio.to_thread.run_sync(func)
        finally:
            # The blob says what it holds, even after a write that failed half-way.
            self._written = self._blob.position

    def _launch(self) -> None:
        """Start writing the batch in the background; :meth:`_land` waits for it."""
        batch, self._pending = self._pending, []
        self._flight_size, self._pending_size = self._pending_size, 0
        # A future rather than an awaited hop, so that the next batch arrives meanwhile.
        # anyio has no such call; annopull runs on asyncio's loop (or uvloop) only.
        loop = asyncio.get_running_loop()
        self._flight = loop.run_in_executor(None, self._write_all, batch, self._observer)

    async def _land(self) -> None:
        """Wait for the batch in flight, if any; raise what it raised (dropping the batch
        after it, so ``size`` is what the blob holds)."""
        flight = self._flight
        if flight is None:
            return
        try:
            # Shielded: a cancel must not abandon a write that is running; the next call
            # (aclose, shielded itself) waits for it again.
            await asyncio.shield(flight)
        except BaseException:
            if flight.done() and not flight.cancelled() and flight.exception() is not None:
                self._pending.clear()
                self._pending_size = 0
            raise
        finally:
            if flight.done():
                self._flight = None
                self._flight_size = 0
                self._written = self._blob.position

    def _drain(self, *, observe: bool = True) -> None:
        pending, self._pending = self._pending, []
        self._pending_size = 0
        self._write_all(pending, self._observer if observe else None)

    def _write_all(self, chunks: Sequence[bytes], observer: Callable[[bytes], None] | None) -> None:
        # Chunk by chunk rather than joined: a join would copy the batch into a new buffer,
        # one more batch allocated (and paged in); the blob's own buffer merges small writes.
        for chunk in chunks:
            self._blob.write(chunk)
            if observer is not None:
                observer(chunk)

    def _drain_and_sync(self, *, observe: bool = True) -> None:
        self._drain(observe=observe)
        self._blob.sync()

    def _keep_quietly(self) -> None:
        # A publish that did not happen (stopped before it began, or failed): keep what
        # arrived for a resume as aclose would. The blob may be closed already, and the
        # publish error is the one to report, not a second one from syncing or closing.
        with contextlib.suppress(OSError, ValueError):
            self._drain_and_sync(observe=False)
        with contextlib.suppress(OSError, ValueError):
            self._blob.close()

    def _trim_pending(self, keep: int) -> None:
        kept: list[bytes] = []
        total = 0
        for chunk in self._pending:
            if total + len(chunk) >= keep:
                if keep > total:
                    kept.append(chunk[: keep - total])
                total = keep
                break
            kept.append(chunk)
            total += len(chunk)
        self._pending = kept
        self._pending_size = total

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("BlobTarget is closed")

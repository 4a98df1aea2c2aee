"""A download's byte target over a storage blob: async on the outside, blocking writes in threads.

The transport streams a download into a :class:`~annopull._transport.http.ByteTarget`
(``size``, ``write``, ``truncate``); a :class:`~annopull._storage.base.Blob` only blocks.
:class:`BlobTarget` joins the two: network chunks are gathered in memory and handed to the
blob from a worker thread about once per :data:`BATCH_SIZE`, so a download costs one thread
hop per MiB instead of one per network chunk, and memory stays bounded by one batch::

    async with await BlobTarget.open(storage, resume=True) as target:
        await transport.download(url, target, resume=True)
        await target.sync()              # everything on disk, e.g. to verify it there
        await target.publish(storage)    # durable, then in its final place
    # leaving the block without publishing keeps what arrived (synced) for a resume
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
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
    time (as one download does).

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
        return f"BlobTarget(size={self.size}, pending={self._pending_size})"

    @property
    def size(self) -> int:
        """Bytes held: those in the blob and those batched for it."""
        return self._written + self._pending_size

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; the blob gets it with the next full batch."""
        self._check_open()
        if not chunk:
            return
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= self._batch_size:
            await self._run(self._drain)

    async def truncate(self, size: int) -> None:
        """Drop everything after the first ``size`` bytes; appends continue from there."""
        self._check_open()
        if size < 0:
            raise ValueError(f"cannot truncate to {size} bytes")
        if size >= self.size:
            return
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
                self._drain_and_sync()
            finally:
                self._blob.close()

        # Shielded: after a stop signal the bytes that arrived are what a resume stands on.
        with anyio.CancelScope(shield=True):
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

    # -- helpers; all but _run and _trim_pending run in the worker thread ------------------
    async def _run(self, func: Callable[[], object]) -> None:
        try:
            await anyio.to_thread.run_sync(func)
        finally:
            # The blob says what it holds, even after a write that failed half-way.
            self._written = self._blob.position

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_size = 0
        # Chunk by chunk rather than joined: a join would copy the batch into a new buffer,
        # one more MiB allocated (and paged in) per batch; the blob's own buffer merges small
        # writes anyway.
        for chunk in pending:
            self._blob.write(chunk)

    def _drain_and_sync(self) -> None:
        self._drain()
        self._blob.sync()

    def _keep_quietly(self) -> None:
        # A publish that did not happen (stopped before it began, or failed): keep what
        # arrived for a resume as aclose would. The blob may be closed already, and the
        # publish error is the one to report, not a second one from syncing or closing.
        with contextlib.suppress(OSError, ValueError):
            self._drain_and_sync()
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

"""Directory output: one file per entry, each written atomically."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterable, Sequence
from pathlib import Path

import anyio

from annopull._errors import AnnopullError, StorageError
from annopull._sinks.base import EntryInfo, Sink, SinkResult, run_shielded
from annopull._storage.base import TreeStorage
from annopull._storage.local import LocalTree

__all__ = ["DirectorySink"]

JOURNAL_NAME = ".annopull.journal"


class DirectorySink(Sink):
    """Writes each entry to ``<folder>/<name>`` via a temporary name and a rename.

    A reader never sees a half-written file. Each file's modification time is set to the
    entry's time (the annotation's ``created``), which skip-existing reads back. The journal
    lives in the folder while a run is going and is removed when it completes.

    Args:
        path: the folder (created when missing), or any
            :class:`~annopull._storage.base.TreeStorage`.
    """

    kind = "dir"

    def __init__(self, path: Path | str | TreeStorage) -> None:
        super().__init__()
        self._tree: TreeStorage = (
            path
            if isinstance(path, TreeStorage)
            else LocalTree(Path(path), state_name=JOURNAL_NAME)
        )
        self._bytes = 0

    def __repr__(self) -> str:
        return f"DirectorySink({self.description!r})"

    @property
    def description(self) -> str:
        return self._tree.description

    @property
    def state_path(self) -> Path | None:
        return self._tree.state_path

    def has_partial(self) -> bool:
        # The folder is the output itself: a journal in it is the whole sign of a stopped run.
        return True

    def prepare(self) -> None:
        # Only the folder, for the journal and the lock: what a killed run left half-written
        # is removed by open(), once this run holds the lock.
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._tree.prepare)

    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> bytes:
        file = await anyio.to_thread.run_sync(self._tree.create, info.name)
        size = 0
        try:
            async for chunk in chunks:
                await anyio.to_thread.run_sync(file.write, chunk)
                size += len(chunk)
            await anyio.to_thread.run_sync(lambda: file.commit(mtime=info.mtime))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(file.discard)
            raise
        self._bytes += size
        return b""

    async def write_many(
        self, entries: Sequence[tuple[EntryInfo, bytes]]
    ) -> list[bytes | AnnopullError]:
        """Write in-memory entries with one worker-thread call for the whole batch."""
        # Shielded: each file is renamed into place whole; stopping between them would be
        # safe, but the batch is short and finishing it keeps the counts honest.
        return await run_shielded(self._put_all, entries)

    def _put_all(self, entries: Sequence[tuple[EntryInfo, bytes]]) -> list[bytes | AnnopullError]:
        results: list[bytes | AnnopullError] = []
        for info, data in entries:
            try:
                self._bytes += self._tree.put(info.name, (data,), mtime=info.mtime)
            except AnnopullError as exc:
                results.append(exc)
                continue
            except OSError as exc:
                # A name this file system will not take (too long, say) is this entry's
                # problem; a full disk is everyone's and stops the run.
                if exc.errno in _RUN_ERRNOS:
                    raise
                results.append(StorageError(f"cannot write file: {exc.strerror}", item=info.name))
                continue
            results.append(b"")
        return results

    async def flush(self) -> None:
        await anyio.to_thread.run_sync(self._tree.sync)

    async def close(self) -> SinkResult:
        await self.flush()
        return SinkResult(
            output=self.description, entries=self.records.count(), bytes_written=self._bytes
        )

    async def abort(self) -> None:
        await self.flush()


_RUN_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})

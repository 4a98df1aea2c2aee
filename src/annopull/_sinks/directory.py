"""Directory output: one file per entry, each written atomically."""

from __future__ import annotations

import contextlib
import errno
import struct
from collections.abc import AsyncIterable, Iterator, Sequence
from pathlib import Path
from typing import Final

import anyio

from annopull._errors import AnnopullError, ZipFormatError
from annopull._sinks.base import EntryInfo, Sink, SinkResult, run_shielded
from annopull._storage.base import RemoteState, TreeStorage
from annopull._storage.local import LocalTree

__all__ = ["DirectorySink"]

JOURNAL_NAME = ".annopull.journal"
#: A file's receipt: its size (the folder itself says the rest).
_SIZE: Final = struct.Struct("<Q")


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
        super().prepare()
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def remote_state(self) -> RemoteState | None:
        return self._tree.remote_state

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._tree.prepare)

    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> bytes:
        with _name_errors(info.name):
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
        return _SIZE.pack(size)

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
                with _name_errors(info.name):
                    size = self._tree.put(info.name, (data,), mtime=info.mtime)
            except AnnopullError as exc:
                results.append(exc)
                continue
            results.append(_SIZE.pack(size))
        return results

    async def flush(self) -> None:
        await anyio.to_thread.run_sync(self._tree.sync)

    async def close(self) -> SinkResult:
        await self.flush()
        # Every run's files, from their receipts: a resumed run did not write them all.
        sizes = [_SIZE.unpack(r)[0] if r else 0 for r in self.records.receipts()]
        return SinkResult(output=self.description, entries=len(sizes), bytes_written=sum(sizes))

    async def abort(self) -> None:
        await self.flush()


#: What a file system answers for a name it will not take: that entry's problem alone.
_NAME_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ, errno.EEXIST, errno.ENOTDIR, errno.EISDIR}
)


@contextlib.contextmanager
def _name_errors(name: str) -> Iterator[None]:
    """A name the file system refuses is that entry's failure; any other OSError (a full
    disk, say) is everyone's and goes on up to stop the run."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _NAME_ERRNOS:
            raise
        raise ZipFormatError(
            f"the file system refuses this name: {exc.strerror}", item=name[:120]
        ) from None

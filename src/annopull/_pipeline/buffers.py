"""A download's byte target held in memory first: a spool that spills to disk.

It implements :class:`annopull._transport.http.ByteTarget`, so a retry can cut it back. Disk
writes go to a worker thread (aiofiles), never blocking the event loop. A download into an
output file goes through storage instead (:class:`annopull._storage.target.BlobTarget`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiofiles
import anyio

from annopull._errors import StorageError

__all__ = ["MemoryBudget", "Spool"]


class MemoryBudget:
    """The bytes every spool of one pull may hold in memory together; past it they spill.

    ``memory_limit`` bounds one spool; this bounds them all, so the adaptive concurrency
    limit growing to hundreds of big downloads at once costs disk, not RAM. Spools use it
    from one event loop only, so it needs no lock.

    Args:
        total: bytes all spools may hold in memory at once.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; ``False`` (nothing reserved) when that would pass the total."""
        if self.held + size > self.total:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Return ``size`` reserved bytes."""
        self.held -= size


class Spool:
    """Holds one downloaded item: in memory up to ``memory_limit`` bytes, then in a temp file.

    This is what bounds a pull's memory: spools of at most ``memory_limit`` bytes each,
    together at most their ``budget``, whatever the size of a document or of the export.

    Args:
        memory_limit: bytes kept in RAM before spilling to a temporary file.
        directory: where the temporary file goes (the output's folder keeps it on one disk).
        budget: shared with the pull's other spools; this one spills when it is spent.
    """

    def __init__(
        self,
        *,
        memory_limit: int,
        directory: Path | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._limit = memory_limit
        self._directory = directory
        self._budget = budget
        self._memory = bytearray()
        self._file: Any = None
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._size

    @property
    def in_memory(self) -> bool:
        """True while nothing has spilled to disk."""
        return self._file is None

    @property
    def directory(self) -> Path | None:
        """Where the temporary file goes (``None``: the system's temporary folder)."""
        return self._directory

    @classmethod
    async def adopt(cls, path: Path, *, memory_limit: int) -> Spool:
        """A spilled spool holding the file at ``path``, which it takes over (and unlinks).

        For bytes another process wrote to disk: they are never read into memory here.
        """
        spool = cls(memory_limit=memory_limit, directory=path.parent)
        with spool._disk_errors():
            fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDWR)
            try:
                os.unlink(path)
                spool._size = os.fstat(fd).st_size
                spool._file = await aiofiles.open(fd, "r+b")
            except BaseException:
                os.close(fd)
                raise
        return spool

    async def save_as(self, path: Path) -> None:
        """Copy the held bytes to the file at ``path``, in a worker thread, piece by piece.

        For handing a spilled item to another process by name.

        Raises:
            StorageError: the copy failed.
        """
        with self._disk_errors():
            if self._file is None:
                await anyio.Path(path).write_bytes(bytes(self._memory))
                return
            await self._file.flush()
            await anyio.to_thread.run_sync(_copy_fd, self._file.fileno(), path, self._size)

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``, spilling to disk once the memory limit is passed.

        Raises:
            StorageError: the disk under the spool failed (a local problem, which retrying
                the download would only repeat).
        """
        if (
            self._file is None
            and len(self._memory) + len(chunk) <= self._limit
            and (self._budget is None or self._budget.take(len(chunk)))
        ):
            self._memory += chunk
        else:
            with self._disk_errors():
                if self._file is None:
                    await self._spill()
                await self._file.write(chunk)
        self._size += len(chunk)

    @contextlib.contextmanager
    def _disk_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            where = self._directory or Path(tempfile.gettempdir())
            raise StorageError(
                f"cannot spool an item to disk: {exc.strerror or exc}", path=where
            ) from exc

    async def truncate(self, size: int) -> None:
        """Keep only the first ``size`` bytes."""
        if self._file is None:
            self._free(len(self._memory) - size)
            del self._memory[size:]
        else:
            with self._disk_errors():
                await self._file.truncate(size)
                await self._file.seek(size)
        self._size = size

    def getvalue(self) -> bytes:
        """The bytes held, when they are still in memory."""
        if self._file is not None:
            raise RuntimeError("spool has spilled to disk; read it with chunks()")
        return bytes(self._memory)

    async def chunks(self, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """Yield the held bytes in pieces of ``size``."""
        if self._file is None:
            view = memoryview(self._memory)
            for start in range(0, len(view), size):
                yield bytes(view[start : start + size])
            return
        await self._file.seek(0)
        while chunk := await self._file.read(size):
            yield chunk

    async def aclose(self) -> None:
        """Free the memory and delete the temporary file."""
        self._free(len(self._memory))
        self._memory = bytearray()
        if self._file is not None:
            file, self._file = self._file, None
            with anyio.CancelScope(shield=True):
                await file.close()

    async def _spill(self) -> None:
        fd, name = await anyio.to_thread.run_sync(
            lambda: tempfile.mkstemp(prefix=".annopull-spool-", dir=self._directory)
        )
        # Unlinked at once: the OS frees it even if the process is killed.
        os.unlink(name)
        self._file = await aiofiles.open(fd, "w+b")
        await self._file.write(bytes(self._memory))
        self._free(len(self._memory))
        self._memory = bytearray()

    def _free(self, size: int) -> None:
        """Return ``size`` bytes of memory this spool no longer holds to the budget."""
        if self._budget is not None and size > 0:
            self._budget.give(size)


def _copy_fd(fd: int, path: Path, size: int) -> None:
    """Copy ``size`` bytes of ``fd`` (from its start, leaving its offset alone) to ``path``."""
    with path.open("wb") as out:
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(1 << 20, size - offset), offset)
            if not chunk:
                break
            out.write(chunk)
            offset += len(chunk)

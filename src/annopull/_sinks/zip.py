"""Zip output: a file (resumable) or a stream such as stdout, built entry by entry."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from typing import BinaryIO

from annopull._errors import AnnopullError
from annopull._sinks.base import EntryInfo, ObjectSink, SinkResult
from annopull._storage.base import ObjectStorage
from annopull._storage.local import LocalFile
from annopull._storage.stream import StreamStorage
from annopull._zip.records import CentralRow
from annopull._zip.writer import WholeEntry, ZipWriter

__all__ = ["ZipSink"]


class ZipSink(ObjectSink):
    """Builds a zip incrementally: memory stays flat whatever the number of entries.

    A path is written as ``<path>.part`` (patched headers, no data descriptors) with a
    journal ``<path>.journal`` beside it, and renamed only when complete. ``"-"`` or a binary
    stream gets a streamed zip (data descriptors), which cannot be resumed. Each entry's
    comment is its version (an annotation's ``created``), which skip-existing reads back.

    Args:
        target: the ``.zip`` path, ``"-"`` for stdout, a binary stream, or any
            :class:`~annopull._storage.base.ObjectStorage`.
        compress_level: zlib level, 0 to store entries uncompressed.
    """

    kind = "zip"

    def __init__(
        self, target: Path | str | BinaryIO | ObjectStorage, *, compress_level: int = 1
    ) -> None:
        super().__init__(_storage_for(target))
        self._level = compress_level
        self._writer: ZipWriter | None = None

    def __repr__(self) -> str:
        return f"ZipSink({self.description!r})"

    async def open(self) -> None:
        last = self.records.last_receipt() if self._resume else None
        self._writer = await ZipWriter.open(
            self._storage,
            resume=self._resume,
            resume_after=CentralRow.decode(last) if last is not None else None,
            compress_level=self._level,
        )

    @property
    def _open_writer(self) -> ZipWriter:
        if self._writer is None:
            raise RuntimeError("ZipSink is not open")
        return self._writer

    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> bytes:
        row = await self._open_writer.add_entry(
            info.name,
            chunks,
            mtime=info.mtime,
            size_hint=info.size,
            compress=self._level > 0,
            comment=info.version,
        )
        return row.encode()

    async def write_many(
        self, entries: Sequence[tuple[EntryInfo, bytes]]
    ) -> list[bytes | AnnopullError]:
        """Write in-memory entries with one worker-thread call for the whole batch."""
        rows = await self._open_writer.add_whole_entries(
            [
                WholeEntry(
                    name=info.name,
                    data=data,
                    mtime=info.mtime,
                    compress=self._level > 0,
                    comment=info.version,
                )
                for info, data in entries
            ]
        )
        return [row if isinstance(row, AnnopullError) else row.encode() for row in rows]

    async def flush(self) -> None:
        await self._open_writer.flush()

    async def close(self) -> SinkResult:
        records = self.records
        result = await self._open_writer.close(
            CentralRow.decode(receipt) for receipt in records.receipts()
        )
        return SinkResult(
            output=self.description, entries=result.entries, bytes_written=result.bytes_written
        )

    async def abort(self) -> None:
        if self._writer is not None:
            await self._writer.abort()


def _storage_for(target: Path | str | BinaryIO | ObjectStorage) -> ObjectStorage:
    if target == "-":
        return StreamStorage(sys.stdout.buffer)
    if isinstance(target, str | Path):
        return LocalFile(Path(target))
    if isinstance(target, ObjectStorage):
        return target
    return StreamStorage(target, description=str(getattr(target, "name", "stream")))

"""Zip output: a file (resumable) or a stream such as stdout, built entry by entry."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from annopull._errors import TransferError
from annopull._sinks.base import EntryInfo, Sink, SinkResult
from annopull._zip.writer import WholeEntry, ZipWriter

__all__ = ["ZipSink"]


class ZipSink(Sink):
    """Builds a zip incrementally: memory stays flat whatever the number of entries.

    A path is written as ``<path>.part`` (patched headers, no data descriptors) with a
    journal ``<path>.journal`` beside it, and renamed only when complete. ``"-"`` or a binary
    stream gets a streamed zip (data descriptors), which cannot be resumed.

    Args:
        target: the ``.zip`` path, ``"-"`` for stdout, or a binary stream.
        compress_level: zlib level, 0 to store entries uncompressed.
    """

    kind = "zip"

    def __init__(self, target: Path | str | BinaryIO, *, compress_level: int = 6) -> None:
        super().__init__()
        if target == "-":
            target = sys.stdout.buffer
        self._target: Path | BinaryIO = Path(target) if isinstance(target, str | Path) else target
        self._level = compress_level
        self._writer: ZipWriter | None = None

    @property
    def description(self) -> str:
        return str(self._target) if isinstance(self._target, Path) else "stdout"

    @property
    def journal_path(self) -> Path | None:
        if isinstance(self._target, Path):
            return self._target.with_name(self._target.name + ".journal")
        return None

    async def open(self, *, fingerprint: Mapping[str, str], resume: bool = False) -> bool:
        partial = (
            self._target.with_name(self._target.name + ".part")
            if isinstance(self._target, Path)
            else Path()
        )
        journal, resumed = await self._open_journal(
            fingerprint=fingerprint, resume=resume, partial=partial
        )
        self._journal = journal
        self._writer = await ZipWriter.open(
            self._target, journal=journal, resume=resumed, compress_level=self._level
        )
        return resumed

    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> str:
        assert self._writer is not None
        entry = await self._writer.add_entry(
            info.name,
            chunks,
            mtime=info.mtime,
            size_hint=info.size,
            compress=self._level > 0,
            key=info.key,
            version=info.version,
            comment=info.version,
        )
        return entry.name

    async def write_many(
        self, entries: Sequence[tuple[EntryInfo, bytes]]
    ) -> list[str | TransferError]:
        """Write in-memory entries with one worker-thread call for the whole batch."""
        assert self._writer is not None
        rows = await self._writer.add_whole_entries(
            [
                WholeEntry(
                    name=info.name,
                    data=data,
                    mtime=info.mtime,
                    compress=self._level > 0,
                    key=info.key,
                    version=info.version,
                    comment=info.version,
                )
                for info, data in entries
            ]
        )
        return [row.name for row in rows]

    async def close(self) -> SinkResult:
        assert self._writer is not None
        result = await self._writer.close()  # deletes the journal it was given
        self._close_held()
        return SinkResult(
            output=self.description, entries=result.entries, bytes_written=result.bytes_written
        )

    async def abort(self) -> None:
        if self._writer is not None:
            await self._writer.abort()  # closes the journal it was given
        self._close_held()

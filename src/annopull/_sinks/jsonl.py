"""JSON Lines output: one line per annotation, its fields beside its parsed content."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Mapping
from pathlib import Path
from typing import IO

import anyio
import orjson

from annopull._errors import TransferError, ZipFormatError
from annopull._pipeline.journal import JournalEntry
from annopull._sinks.base import Checkpointer, EntryInfo, Sink, SinkResult

__all__ = ["JsonlSink"]


class JsonlSink(Sink):
    """Writes ``{"scene_uuid":…, "annotation_type":…, "created":…, "content":{…}}`` lines.

    The file is written as ``<path>.part`` and renamed when complete; the journal beside it
    records each line's end offset, so a resume cuts off a torn last line and goes on.

    Args:
        path: the ``.jsonl`` file to produce.
    """

    kind = "jsonl"

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)
        self._part = self.path.with_name(self.path.name + ".part")
        self._file: IO[bytes] | None = None
        self._offset = 0
        self._checkpointer: Checkpointer | None = None

    @property
    def description(self) -> str:
        return str(self.path)

    @property
    def journal_path(self) -> Path:
        return self.path.with_name(self.path.name + ".journal")

    async def open(self, *, fingerprint: Mapping[str, str], resume: bool = False) -> bool:
        journal, resumed = await self._open_journal(
            fingerprint=fingerprint, resume=resume, partial=self._part
        )
        self._journal = journal
        last = journal.last()
        self._offset = last.end_offset if resumed and last is not None else 0
        self._file = await anyio.to_thread.run_sync(self._open_part, resumed)
        self._checkpointer = Checkpointer(journal, self._flush)
        return resumed

    def _open_part(self, resumed: bool) -> IO[bytes]:
        file = self._part.open("r+b" if resumed else "wb")
        if resumed:
            if os.fstat(file.fileno()).st_size < self._offset:
                file.close()
                raise ZipFormatError(
                    f"{self._part} is shorter than its journal says; delete it and "
                    f"{self.journal_path.name} to start over"
                )
            file.truncate(self._offset)
            file.seek(self._offset)
        return file

    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> str:
        content = b"".join([chunk async for chunk in chunks])
        line = await anyio.to_thread.run_sync(_line, info, content)
        start = self._offset
        await anyio.to_thread.run_sync(self._append, line)
        self.journal.add(
            JournalEntry(
                name=info.name,
                key=info.key,
                version=info.version,
                offset=start,
                end_offset=self._offset,
                uncompressed_size=len(content),
            )
        )
        assert self._checkpointer is not None
        await self._checkpointer.entry_added()
        return info.name

    def _append(self, line: bytes) -> None:
        assert self._file is not None
        self._file.write(line)
        self._offset += len(line)

    def _flush(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())

    async def close(self) -> SinkResult:
        assert self._checkpointer is not None
        await self._checkpointer.checkpoint()
        entries = self.journal.count()
        await anyio.to_thread.run_sync(self._finish)
        return SinkResult(output=str(self.path), entries=entries, bytes_written=self._offset)

    def _finish(self) -> None:
        assert self._file is not None
        self._file.close()
        os.replace(self._part, self.path)
        self._close_journals(delete=True)

    async def abort(self) -> None:
        if self._file is None or self._checkpointer is None:
            return
        await self._checkpointer.checkpoint()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._file.close)
        self._close_journals(delete=False)


def _line(info: EntryInfo, content: bytes) -> bytes:
    """One JSON line; the content is checked to be JSON and embedded without re-encoding."""
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise TransferError(f"content is not valid JSON: {exc}", item=info.key) from None
    # Raw bytes are spliced in as they came unless they span lines (pretty-printed JSON),
    # which would break the one-record-per-line promise.
    embedded = parsed if b"\n" in content or b"\r" in content else orjson.Fragment(content)
    return orjson.dumps({**info.fields, "content": embedded}) + b"\n"

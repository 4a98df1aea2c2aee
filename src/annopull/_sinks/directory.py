"""Directory output: one file per entry, each written atomically."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterable, Mapping
from datetime import datetime
from pathlib import Path

import aiofiles
import anyio

from annopull._pipeline.journal import JournalEntry
from annopull._sinks.base import Checkpointer, EntryInfo, Sink, SinkResult
from annopull._storage.durability import fsync_path
from annopull._zip.writer import name_candidates, sanitize_entry_name

__all__ = ["DirectorySink"]

JOURNAL_NAME = ".annopull._pipeline.journal"
_TEMP_SUFFIX = ".tmp"
#: ``.<name>.<8 hex digits>.tmp``: the temporary name of an entry being written.
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(_TEMP_SUFFIX))


class DirectorySink(Sink):
    """Writes each entry to ``<folder>/<name>`` via a temporary name and a rename.

    A reader never sees a half-written file. Each file's modification time is set to the
    entry's time (the annotation's ``created``), which ``--skip-existing`` reads back. The
    journal lives in the folder while a run is going and is removed when it completes.

    Args:
        path: the folder; created when missing.
    """

    kind = "dir"

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)
        self._unsynced: list[Path] = []
        self._bytes = 0
        self._checkpointer: Checkpointer | None = None

    @property
    def description(self) -> str:
        return f"{self.path}/"

    @property
    def journal_path(self) -> Path:
        return self.path / JOURNAL_NAME

    async def open(self, *, fingerprint: Mapping[str, str], resume: bool = False) -> bool:
        await anyio.Path(self.path).mkdir(parents=True, exist_ok=True)
        journal, resumed = await self._open_journal(
            fingerprint=fingerprint, resume=resume, partial=self.path
        )
        self._journal = journal
        self._checkpointer = Checkpointer(journal, self._sync)
        if resumed:
            # A killed run leaves the temporary file of the entry it was writing.
            await anyio.to_thread.run_sync(_remove_temp_files, self.path)
        return resumed

    async def write(self, info: EntryInfo, chunks: AsyncIterable[bytes]) -> str:
        name = self._unique(sanitize_entry_name(info.name))
        final = self.path / name
        temp = final.with_name(f".{final.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
        await anyio.Path(final.parent).mkdir(parents=True, exist_ok=True)
        size = 0
        try:
            async with aiofiles.open(temp, "wb") as out:
                async for chunk in chunks:
                    await out.write(chunk)
                    size += len(chunk)
            await anyio.to_thread.run_sync(_place, temp, final, info.mtime)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(FileNotFoundError):
                await anyio.Path(temp).unlink()
            raise
        self._unsynced.append(final)
        self._bytes += size
        self.journal.add(
            JournalEntry(name=name, key=info.key, version=info.version, uncompressed_size=size)
        )
        assert self._checkpointer is not None
        await self._checkpointer.entry_added()
        return name

    def _unique(self, name: str) -> str:
        return next(c for c in name_candidates(name) if not self.journal.has_name(c))

    def _sync(self) -> None:
        # The files' data and their names in the folders must be on disk before the journal
        # says they are done.
        folders = set()
        for path in self._unsynced:
            with contextlib.suppress(FileNotFoundError):
                fsync_path(path)
            folders.add(path.parent)
        for folder in folders:
            fsync_path(folder)
        self._unsynced.clear()

    async def close(self) -> SinkResult:
        assert self._checkpointer is not None
        await self._checkpointer.checkpoint()
        entries = self.journal.count()
        await anyio.to_thread.run_sync(lambda: self._close_journals(delete=True))
        return SinkResult(output=self.description, entries=entries, bytes_written=self._bytes)

    async def abort(self) -> None:
        if self._checkpointer is None:
            return
        await self._checkpointer.checkpoint()
        self._close_journals(delete=False)


def _place(temp: Path, final: Path, mtime: datetime | None) -> None:
    if mtime is not None:
        stamp = mtime.timestamp()
        os.utime(temp, (stamp, stamp))
    os.replace(temp, final)


def _remove_temp_files(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if _TEMP_NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))

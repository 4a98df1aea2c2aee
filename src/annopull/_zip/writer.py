"""An incremental, resumable zip builder whose memory does not grow with the archive.

It writes through a :class:`~annopull._storage.base.Blob`, so the same code builds a zip in a
local ``.part`` file, on stdout, or (later) in an object store. Two modes, chosen by the blob
(see ``/work/shared/ZIP-NOTES.md`` for the reader rules behind them):

* **Patch mode** (a seekable blob): each streamed entry's local header is written first and,
  once the data is through, rewritten in place with the real CRC and sizes. No descriptors.
* **Descriptor mode** (an unseekable blob, e.g. stdout): never seeks; entries longer than one
  batch get flag bit 3 and a data descriptor.

Entries whose whole data arrives within the first ~1 MiB batch (the common case for annotation
files) are written in one go with their real CRC and sizes in the local header, in both modes:
no seek-back, no descriptor, and never a ZIP64 extra for a small entry.

The writer keeps no per-entry state: each finished entry is handed back as a
:class:`~annopull._zip.records.CentralRow`, which the caller keeps (the pipeline's ledger
stores it beside the item's key and version, in the same transaction) and gives back at
:meth:`ZipWriter.close`, so the central directory streams from disk. Names arrive sanitised
and unique (the caller's rule, see :mod:`annopull._zip.names`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import anyio
import anyio.to_thread

from annopull._errors import ResumeError, ZipFormatError
from annopull._storage.base import Blob, ObjectStorage, UnreadableRangeError
from annopull._zip.codec import Z_FINISH, Z_SYNC_FLUSH, crc32, raw_deflater
from annopull._zip.names import sanitize_entry_name
from annopull._zip.records import (
    DEFLATED,
    FLAG_DESCRIPTOR,
    FLAG_UTF8,
    LOCAL_HEADER,
    LOCAL_SIG,
    STORED,
    U16_MAX,
    U32_MAX,
    CentralRow,
    central_header,
    data_descriptor,
    dos_datetime,
    end_records,
    local_header,
    padding_extra,
    sizes_need_zip64,
    version_needed,
    zip64_for_unknown_end,
    zip64_local_extra,
)

__all__ = ["BATCH_BYTES", "WholeEntry", "ZipResult", "ZipWriter"]

# Data is handed to a worker thread in batches of about this size: one thread hop per MiB
# (or per small entry), never per network chunk.
BATCH_BYTES: Final = 1 << 20
# Central-directory bytes gathered before each write at close().
_CD_BUFFER: Final = 1 << 20
# Data of at least two pieces is deflated a piece per core (zlib and ISA-L both let go of
# the GIL), as pigz does: each piece primed with the window before it and ended with a sync
# flush, so the pieces join into one valid stream.
_PIECE: Final = 256 << 10
_WINDOW: Final = 32 << 10


@dataclass(frozen=True, slots=True)
class ZipResult:
    """What :meth:`ZipWriter.close` produced.

    Args:
        entries: number of entries in the archive.
        bytes_written: size of the whole archive in bytes.
    """

    entries: int
    bytes_written: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WholeEntry:
    """An entry whose data is all in memory, for :meth:`ZipWriter.add_whole_entries`.

    Args:
        name: the entry name (sanitised, and unique in the archive: the caller's job).
        data: the entry's bytes.
        mtime: modification time; default now.
        compress: deflate (default) or store (patch mode only).
        comment: the central-directory file comment.
    """

    name: str
    data: bytes = field(repr=False)
    mtime: datetime | None = None
    compress: bool = True
    comment: str = ""


@dataclass(slots=True, kw_only=True)
class _OpenEntry:
    """The one entry being written; dropped as soon as its row is handed back."""

    requested: str
    comment: bytes
    dos_time: int
    dos_date: int
    method: int
    size_hint: int | None
    name: bytes = b""
    offset: int = -1  # where the local header starts; -1 while nothing is written
    header_len: int = 0
    flags: int = 0
    zip64: bool = False
    crc: int = 0
    compressed: int = 0
    uncompressed: int = 0
    finished: bool = False
    # The last _WINDOW bytes deflated, which prime the next batch's first piece.
    window: bytes = field(default=b"", repr=False)


class _Archive:
    """The byte-level writer; every method blocks and runs in a worker thread."""

    def __init__(self, blob: Blob, *, level: int) -> None:
        self.blob = blob
        self.offset = blob.position
        self.failed = False
        self._level = level
        self._pool: ThreadPoolExecutor | None = None

    def write_batch(self, entry: _OpenEntry, data: bytes) -> None:
        """Stream one batch of a multi-batch entry, writing its header first if needed."""
        if entry.offset < 0:
            self._begin(entry)
        self._write(self._process(entry, data, final=False))
        if not entry.zip64 and sizes_need_zip64(entry.compressed, entry.uncompressed):
            raise ZipFormatError(
                f"entry outgrew its size hint of {entry.size_hint} bytes", item=entry.requested
            )

    def finish_entry(self, entry: _OpenEntry, data: bytes) -> CentralRow:
        """Write the last batch, fix up the header, and describe the finished entry."""
        if entry.offset < 0:
            self._write_whole(entry, data)
        else:
            self._write_tail(entry, data)
        entry.finished = True
        self.blob.mark_boundary()
        return CentralRow(
            name=entry.name.decode(),
            offset=entry.offset,
            end_offset=self.offset,
            crc32=entry.crc,
            compressed_size=entry.compressed,
            uncompressed_size=entry.uncompressed,
            method=entry.method,
            flags=entry.flags,
            dos_time=entry.dos_time,
            dos_date=entry.dos_date,
            zip64=entry.zip64,
            comment=entry.comment.decode(),
        )

    def write_whole_entries(
        self, entries: Sequence[tuple[_OpenEntry, bytes]]
    ) -> list[CentralRow | ZipFormatError]:
        """Write several in-memory entries in one call (one worker-thread hop for all).

        An entry the format refuses is answered with its error in its place; the others are
        written all the same.
        """
        rows: list[CentralRow | ZipFormatError] = []
        for entry, data in entries:
            try:
                rows.append(self.finish_entry(entry, data))
            except ZipFormatError as exc:
                self.discard(entry)
                rows.append(exc)
            except BaseException:
                self.discard(entry)
                raise
        return rows

    def discard(self, entry: _OpenEntry) -> None:
        """Remove the bytes of a failed entry (patch mode) or mark the stream broken."""
        if entry.offset < 0 or entry.finished:
            return
        if not self.blob.seekable:
            self.failed = True
            return
        self.blob.truncate(entry.offset)
        self.offset = entry.offset

    def write_central_directory(self, rows: Iterable[CentralRow]) -> int:
        """Stream the central directory and end records from ``rows``; return entry count."""
        cd_offset = self.offset
        entries = 0
        buffer = bytearray()
        for row in rows:
            buffer += central_header(row)
            entries += 1
            if len(buffer) >= _CD_BUFFER:
                self._write(bytes(buffer))
                buffer.clear()
        self._write(bytes(buffer))
        self._write(
            end_records(entries=entries, cd_offset=cd_offset, cd_size=self.offset - cd_offset)
        )
        return entries

    def _begin(self, entry: _OpenEntry) -> None:
        """Pick the final name and write a placeholder local header for a streamed entry."""
        self._assign_name(entry)
        entry.zip64 = zip64_for_unknown_end(entry.size_hint)
        entry.offset = self.offset
        if not self.blob.seekable:
            entry.flags |= FLAG_DESCRIPTOR
        header = self._local_header(entry, zip64_slots=entry.zip64)
        entry.header_len = len(header)
        self._write(header)

    def _write_whole(self, entry: _OpenEntry, data: bytes) -> None:
        """Write an entry whose data is all in hand: real values in the header, nothing to fix."""
        self._assign_name(entry)
        entry.offset = self.offset
        payload = self._process(entry, data, final=True)
        entry.zip64 = sizes_need_zip64(entry.compressed, entry.uncompressed)
        header = self._local_header(entry, zip64_slots=entry.zip64)
        self._write(header + payload)

    def _write_tail(self, entry: _OpenEntry, data: bytes) -> None:
        """Finish a streamed entry: last data, then the rewritten header or a descriptor."""
        self._write(self._process(entry, data, final=True))
        if entry.flags & FLAG_DESCRIPTOR:
            self._finish_descriptor(entry)
        else:
            self._patch_header(entry)

    def _finish_descriptor(self, entry: _OpenEntry) -> None:
        if not entry.zip64 and sizes_need_zip64(entry.compressed, entry.uncompressed):
            raise ZipFormatError("entry outgrew its size hint", item=entry.requested)
        self._write(
            data_descriptor(
                crc=entry.crc,
                compressed=entry.compressed,
                uncompressed=entry.uncompressed,
                zip64=entry.zip64,
            )
        )

    def _patch_header(self, entry: _OpenEntry) -> None:
        # A reserved ZIP64 extra is turned into padding when the entry turned out small, so
        # the entry reads as plain ZIP32: Java's ZipInputStream (JDK-8298530) and Safari
        # mishandle small ZIP64 entries, and the padding keeps the data offset unchanged.
        if entry.zip64 and not sizes_need_zip64(entry.compressed, entry.uncompressed):
            entry.zip64 = False
            header = self._local_header(entry, zip64_slots=False, pad_to=entry.header_len)
        else:
            header = self._local_header(entry, zip64_slots=entry.zip64)
        self.blob.patch(entry.offset, header)

    def _local_header(self, entry: _OpenEntry, *, zip64_slots: bool, pad_to: int = 0) -> bytes:
        descriptor = bool(entry.flags & FLAG_DESCRIPTOR)
        # With a descriptor the local header carries zeros (and a ZIP64 extra with zero sizes,
        # which libarchive reading a pipe needs to expect the 24-byte descriptor).
        crc = 0 if descriptor else entry.crc
        compressed = 0 if descriptor else entry.compressed
        uncompressed = 0 if descriptor else entry.uncompressed
        extra = b""
        if zip64_slots:
            extra = zip64_local_extra(compressed=compressed, uncompressed=uncompressed)
            compressed = uncompressed = U32_MAX
        elif pad_to:
            extra = padding_extra(pad_to - LOCAL_HEADER.size - len(entry.name))
        return local_header(
            name=entry.name,
            flags=entry.flags,
            method=entry.method,
            dos_time=entry.dos_time,
            dos_date=entry.dos_date,
            crc=crc,
            compressed=compressed,
            uncompressed=uncompressed,
            version=version_needed(zip64=zip64_slots, offset=entry.offset),
            extra=extra,
        )

    def _assign_name(self, entry: _OpenEntry) -> None:
        entry.name = entry.requested.encode()
        if not (entry.requested.isascii() and entry.comment.isascii()):
            entry.flags |= FLAG_UTF8

    def _process(self, entry: _OpenEntry, data: bytes, *, final: bool) -> bytes:
        """CRC and compress one batch; end the deflate stream when the entry has no more data."""
        entry.crc = crc32(data, entry.crc)
        entry.uncompressed += len(data)
        out = data if entry.method == STORED else self._deflate(entry, data, final=final)
        entry.compressed += len(out)
        return out

    def _deflate(self, entry: _OpenEntry, data: bytes, *, final: bool) -> bytes:
        """The batch's part of the entry's raw deflate stream, big batches on every core."""
        view = memoryview(data)
        starts = range(0, len(data), _PIECE) if data else range(1)
        jobs = [
            (
                entry.window if start == 0 else view[start - _WINDOW : start],
                view[start : start + _PIECE],
                final and start == starts[-1],
            )
            for start in starts
        ]
        if len(data) >= _WINDOW:
            entry.window = bytes(view[-_WINDOW:])
        else:
            entry.window = (entry.window + data)[-_WINDOW:]
        if len(jobs) == 1:
            return self._deflate_piece(jobs[0])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1, thread_name_prefix="annopull-deflate"
            )
        return b"".join(self._pool.map(self._deflate_piece, jobs))

    def _deflate_piece(self, job: tuple[bytes | memoryview, memoryview, bool]) -> bytes:
        primer, piece, last = job
        packer = raw_deflater(self._level, primer)
        return packer.compress(piece) + packer.flush(Z_FINISH if last else Z_SYNC_FLUSH)

    def close_pool(self) -> None:
        """Stop the deflate threads (at the end of the archive)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown()

    def _write(self, data: bytes) -> None:
        self.blob.write(data)
        self.offset += len(data)


def _resume_point(blob: Blob, last: CentralRow | None, where: str) -> int:
    """Check the bytes at the last recorded entry match it; return where the next one goes."""
    if last is None:
        return 0
    if blob.position < last.end_offset:
        raise ResumeError(
            f"partial archive is {blob.position} bytes, its journal expects at least "
            f"{last.end_offset}",
            item=where,
        )
    name = last.name.encode()
    try:
        head = blob.read_at(last.offset, LOCAL_HEADER.size + len(name))
    except UnreadableRangeError:
        # An object store cannot read its parts back before the upload completes; it
        # checked them itself (sizes and ETags against its manifests) when it resumed.
        return last.end_offset
    fixed = LOCAL_HEADER.unpack_from(head) if len(head) >= LOCAL_HEADER.size else None
    if fixed is None or fixed[0] != LOCAL_SIG or head[LOCAL_HEADER.size :] != name:
        raise ResumeError(
            f"partial archive has no header for {last.name!r} at offset {last.offset}",
            item=where,
        )
    return last.end_offset


def _open_blob(storage: ObjectStorage, resume_after: CentralRow | None, resume: bool) -> Blob:
    blob = storage.open(resume=resume)
    if not resume:
        return blob
    try:
        blob.truncate(_resume_point(blob, resume_after, storage.description))
    except BaseException:
        blob.close()
        raise
    return blob


async def _batched(chunks: AsyncIterable[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    """Join the caller's chunks into batches of at least ``limit`` bytes (the last may be less)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        if not chunk:
            continue
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            yield b"".join(parts)
            parts.clear()
            size = 0
    if parts:
        yield b"".join(parts)


class ZipWriter:
    """Writes a zip entry by entry, streaming each entry's data through worker threads.

    Open it with :meth:`open`, add entries with :meth:`add_entry` or
    :meth:`add_whole_entries` (concurrent calls are serialised), make what is written durable
    with :meth:`flush`, and finish with :meth:`close` or :meth:`abort`.
    """

    def __init__(self, archive: _Archive, storage: ObjectStorage) -> None:
        self._archive = archive
        self._storage = storage
        self._lock = anyio.Lock()
        self._done = False

    @classmethod
    async def open(
        cls,
        storage: ObjectStorage,
        *,
        resume: bool = False,
        resume_after: CentralRow | None = None,
        compress_level: int = 1,
    ) -> ZipWriter:
        """Start (or resume) an archive.

        Args:
            storage: where the archive goes; a seekable blob gets patch mode, a stream
                descriptor mode.
            resume: continue the storage's unfinished archive.
            resume_after: the last entry recorded as durable; the unfinished archive is cut
                back to its end (``None``: to nothing).
            compress_level: deflate level 0-9 (0: entries stored; see _zip.codec).

        Raises:
            ResumeError: the unfinished archive does not match ``resume_after``, or the
                storage cannot resume.
        """
        if not 0 <= compress_level <= 9:
            raise ZipFormatError(f"compress_level must be 0-9, not {compress_level}")
        blob = await anyio.to_thread.run_sync(_open_blob, storage, resume_after, resume)
        return cls(_Archive(blob, level=compress_level), storage)

    @property
    def seekable(self) -> bool:
        """Whether the archive is in patch mode (and so can drop a failed entry)."""
        return self._archive.blob.seekable

    async def add_entry(
        self,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        mtime: datetime | None = None,
        size_hint: int | None = None,
        compress: bool = True,
        comment: str = "",
    ) -> CentralRow:
        """Stream one entry into the archive.

        Args:
            name: the entry name; sanitised (see
                :func:`~annopull._zip.names.sanitize_entry_name`); unique: the caller's job.
            chunks: the entry's data. If it raises, the partial entry is discarded and the
                exception propagates unchanged; in patch mode the writer stays usable, in
                descriptor mode a failure after the first ~1 MiB breaks the stream for good.
            mtime: modification time; default now; clamped to the DOS range 1980-2107.
            size_hint: the expected uncompressed size; a size known to fit lets a large entry
                stay ZIP32. Entries under one batch never need it.
            compress: deflate (default) or store; descriptor mode always deflates because
                Java's ZipInputStream rejects stored entries with a data descriptor.
            comment: the central-directory file comment.

        Returns:
            The entry's central-directory row, to give back at :meth:`close`.

        Raises:
            ZipFormatError: the name or comment is unusable, the writer is closed or broken,
                or the data outgrew a ``size_hint`` that made the entry ZIP32.
        """
        entry = self._open_entry(
            name, mtime=mtime, size_hint=size_hint, compress=compress, comment=comment
        )
        async with self._lock:
            self._check_open()
            try:
                return await self._stream_entry(entry, chunks)
            except BaseException:
                # Shielded: a cancelled add_entry must still cut its partial bytes away, or
                # the next entry would be written after garbage.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._archive.discard, entry)
                raise

    async def add_whole_entries(
        self, entries: Sequence[WholeEntry]
    ) -> list[CentralRow | ZipFormatError]:
        """Write several entries whose data is in memory, in one worker-thread call.

        Many small entries (Kognic documents of a few KB) would otherwise cost a thread hop
        each, which dominates their compression; batching keeps the event loop free and the
        archive fast. Entries are written in order.

        Returns:
            Each entry's row, or in its place the :class:`ZipFormatError` that refused that
            one entry (an unusable name, say); the others are written all the same.
        """
        batch: list[tuple[_OpenEntry, bytes]] = []
        refused: dict[int, ZipFormatError] = {}
        for index, e in enumerate(entries):
            try:
                opened = self._open_entry(
                    e.name,
                    mtime=e.mtime,
                    size_hint=len(e.data),
                    compress=e.compress,
                    comment=e.comment,
                )
            except ZipFormatError as exc:
                refused[index] = exc
                continue
            batch.append((opened, e.data))
        async with self._lock:
            self._check_open()
            with anyio.CancelScope(shield=True):
                # Shielded: the batch is all in memory and quick; a half-written batch would
                # leave partial bytes that only discard() could cut away.
                written = await anyio.to_thread.run_sync(self._archive.write_whole_entries, batch)
        rows = iter(written)
        return [refused[i] if i in refused else next(rows) for i in range(len(entries))]

    def _open_entry(
        self,
        name: str,
        *,
        mtime: datetime | None,
        size_hint: int | None,
        compress: bool,
        comment: str,
    ) -> _OpenEntry:
        dos_time, dos_date = dos_datetime(mtime or datetime.now(UTC))
        try:
            encoded_comment = comment.encode()
        except UnicodeEncodeError:
            raise ZipFormatError("entry comment is not valid Unicode", item=name) from None
        entry = _OpenEntry(
            requested=sanitize_entry_name(name),
            comment=encoded_comment,
            dos_time=dos_time,
            dos_date=dos_date,
            method=DEFLATED if compress or not self.seekable else STORED,
            size_hint=size_hint,
        )
        if len(entry.comment) > U16_MAX:
            raise ZipFormatError("entry comment is longer than 65535 bytes", item=name)
        return entry

    async def _stream_entry(self, entry: _OpenEntry, chunks: AsyncIterable[bytes]) -> CentralRow:
        # One batch of look-ahead: the last batch goes out together with the header fix-up,
        # so a small entry costs a single thread hop.
        async with contextlib.aclosing(_batched(chunks, BATCH_BYTES)) as batches:
            current = await anext(batches, b"")
            async for following in batches:
                await anyio.to_thread.run_sync(self._archive.write_batch, entry, current)
                current = following
            return await anyio.to_thread.run_sync(self._archive.finish_entry, entry, current)

    async def flush(self) -> None:
        """Make everything written so far durable (before its rows are recorded as such)."""
        async with self._lock:
            if not self._done:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._archive.blob.sync)

    async def close(self, rows: Iterable[CentralRow]) -> ZipResult:
        """Write the central directory from ``rows`` and publish the archive.

        Args:
            rows: every entry's row, in the order the entries were written (all runs').

        A failed close (disk full, cancelled) still leaves a resumable archive: a resume cuts
        the half-written central directory away.
        """
        async with self._lock:
            self._check_open()
            self._done = True
            try:
                return await anyio.to_thread.run_sync(self._finish, rows)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._stop)
                raise

    def _finish(self, rows: Iterable[CentralRow]) -> ZipResult:
        self._archive.close_pool()
        entries = self._archive.write_central_directory(rows)
        self._storage.publish(self._archive.blob)
        return ZipResult(entries=entries, bytes_written=self._archive.offset)

    async def abort(self) -> None:
        """Stop without finishing: what is written made durable, the blob closed.

        The unfinished archive stays for a later resume. Does nothing if the writer is
        already closed or aborted.
        """
        async with self._lock:
            if self._done:
                return
            self._done = True
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._stop)

    def _stop(self) -> None:
        blob = self._archive.blob
        self._archive.close_pool()
        try:
            # Nothing written to a stream can be resumed; its flush is only a courtesy to
            # whoever reads it, and a reader that went away must not hide the real error.
            with contextlib.suppress(OSError) if not blob.seekable else contextlib.nullcontext():
                blob.sync()
        finally:
            blob.close()

    def _check_open(self) -> None:
        if self._done:
            raise ZipFormatError("the zip writer is already closed")
        if self._archive.failed:
            raise ZipFormatError("the zip stream is broken by an earlier failed entry")

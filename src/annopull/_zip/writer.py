"""An incremental, resumable zip builder whose memory does not grow with the archive.

Two output modes (see ``/work/shared/ZIP-NOTES.md`` for the reader rules behind them):

* **Patch mode** (a :class:`~pathlib.Path`): the archive is written to ``<target>.part``; each
  entry's local header is written first and, once the data is streamed, rewritten in place with
  the real CRC and sizes. No data descriptors. ``close()`` renames ``.part`` to the target.
* **Descriptor mode** (any binary stream, e.g. ``sys.stdout.buffer``): never seeks or asks the
  position; entries longer than one batch get flag bit 3 and a data descriptor.

Entries whose whole data arrives within the first ~1 MiB batch (the common case for annotation
files) are written in one go with their real CRC and sizes in the local header, in both modes:
no seek-back, no descriptor, and never a ZIP64 extra for a small entry.

Every finished entry is recorded in the :class:`~annopull._pipeline.journal.Journal`; the central
directory is streamed from it at ``close()``, so no per-entry state stays in RAM.

The module has two layers: pure format functions (struct layouts, DOS time, ZIP64 decisions,
name sanitising) and the writer, a synchronous ``_Archive`` driven from worker threads by the
async :class:`ZipWriter`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import struct
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

import anyio
import anyio.to_thread

from annopull._errors import ResumeError, ZipFormatError
from annopull._pipeline.journal import Journal, JournalEntry
from annopull._storage.durability import fsync_path

__all__ = ["WholeEntry", "ZipResult", "ZipWriter", "sanitize_entry_name"]

# --------------------------------------------------------------------------------------------
# Pure format code
# --------------------------------------------------------------------------------------------

LOCAL_SIG: Final = 0x04034B50
DESCRIPTOR_SIG: Final = 0x08074B50
CENTRAL_SIG: Final = 0x02014B50
ZIP64_END_SIG: Final = 0x06064B50
ZIP64_LOCATOR_SIG: Final = 0x07064B50
END_SIG: Final = 0x06054B50

LOCAL_HEADER: Final = struct.Struct("<IHHHHHIIIHH")
CENTRAL_HEADER: Final = struct.Struct("<IHHHHHHIIIHHHHHII")
DESCRIPTOR_32: Final = struct.Struct("<IIII")
DESCRIPTOR_64: Final = struct.Struct("<IIQQ")
ZIP64_LOCAL_EXTRA: Final = struct.Struct("<HHQQ")
ZIP64_END: Final = struct.Struct("<IQHHIIQQQQ")
ZIP64_LOCATOR: Final = struct.Struct("<IIQI")
END: Final = struct.Struct("<IHHHHIIH")

STORED: Final = 0
DEFLATED: Final = 8
FLAG_DESCRIPTOR: Final = 1 << 3
FLAG_UTF8: Final = 1 << 11
ZIP64_EXTRA_ID: Final = 0x0001
# Android zipalign's alignment extra: readers skip it, and "aligned to 1 byte" is always true,
# which makes it an honest filler for a reserved ZIP64 extra that turned out not to be needed.
PADDING_EXTRA_ID: Final = 0xD935

U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFFFFFF
# Largest size known in advance that still fits ZIP32 once zlib's worst-case expansion is added.
ZIP32_SAFE_SIZE: Final = 4_293_656_841
VERSION_DEFAULT: Final = 20
VERSION_ZIP64: Final = 45
VERSION_MADE_BY: Final = (3 << 8) | VERSION_ZIP64  # high byte 3: Unix, so external attrs apply
EXTERNAL_ATTRS: Final = 0o100644 << 16  # regular file, rw-r--r--

_DOS_MIN: Final = datetime(1980, 1, 1)
_DOS_MAX: Final = datetime(2107, 12, 31, 23, 59, 58)
_DRIVE: Final = re.compile(r"^[A-Za-z]:")


def sanitize_entry_name(name: str) -> str:
    """Return ``name`` as a safe relative zip entry name.

    Backslashes become ``/``; a drive letter, leading slashes, empty, ``.`` and ``..`` segments
    are dropped, so the name can never point outside the extraction folder.

    Raises:
        ZipFormatError: nothing is left of the name, or it contains a NUL character.
    """
    if "\x00" in name:
        raise ZipFormatError("entry name contains a NUL character", item=repr(name))
    path = _DRIVE.sub("", name.replace("\\", "/"))
    segments = [s for s in path.split("/") if s not in ("", ".", "..")]
    if not segments:
        raise ZipFormatError("entry name is empty after sanitising", item=repr(name))
    return "/".join(segments)


def name_candidates(name: str) -> Iterator[str]:
    """Yield ``name``, then ``"a (2).json"``, ``"a (3).json"``, … for dedupe."""
    yield name
    stem, ext = posixpath.splitext(name)
    n = 2
    while True:
        yield f"{stem} ({n}){ext}"
        n += 1


def dos_datetime(when: datetime) -> tuple[int, int]:
    """Return ``(dos_time, dos_date)`` for ``when``, clamped to the 1980…2107 DOS range.

    Aware datetimes are converted to UTC: the zip field has no zone, and UTC keeps the
    archive the same whichever machine writes it.
    """
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    when = min(max(when, _DOS_MIN), _DOS_MAX)
    dos_time = (when.hour << 11) | (when.minute << 5) | (when.second // 2)
    dos_date = ((when.year - 1980) << 9) | (when.month << 5) | when.day
    return dos_time, dos_date


def sizes_need_zip64(compressed: int, uncompressed: int) -> bool:
    """Whether either size is too big for a 32-bit field (0xFFFFFFFF is the ZIP64 sentinel)."""
    return compressed >= U32_MAX or uncompressed >= U32_MAX


def zip64_for_unknown_end(size_hint: int | None) -> bool:
    """Whether an entry whose end is not yet seen must be written as ZIP64."""
    return size_hint is None or size_hint > ZIP32_SAFE_SIZE


def version_needed(*, zip64: bool, offset: int) -> int:
    """The "version needed" of an entry, identical in its local and central header.

    An entry at an offset past 4 GiB needs ZIP64 in its central header, so it says 45 in
    both headers even when its local header has no ZIP64 extra (.NET rejects a mismatch).
    """
    return VERSION_ZIP64 if zip64 or offset >= U32_MAX else VERSION_DEFAULT


def zip64_local_extra(*, compressed: int, uncompressed: int) -> bytes:
    """A local ZIP64 extra carrying both sizes (uncompressed first)."""
    return ZIP64_LOCAL_EXTRA.pack(ZIP64_EXTRA_ID, 16, uncompressed, compressed)


def padding_extra(total: int) -> bytes:
    """A neutral extra field of exactly ``total`` bytes (≥ 6) that readers ignore."""
    return struct.pack("<HHH", PADDING_EXTRA_ID, total - 4, 1) + bytes(total - 6)


def local_header(
    *,
    name: bytes,
    flags: int,
    method: int,
    dos_time: int,
    dos_date: int,
    crc: int,
    compressed: int,
    uncompressed: int,
    version: int,
    extra: bytes = b"",
) -> bytes:
    """A local file header followed by its name and extra field."""
    fixed = LOCAL_HEADER.pack(
        LOCAL_SIG,
        version,
        flags,
        method,
        dos_time,
        dos_date,
        crc,
        compressed,
        uncompressed,
        len(name),
        len(extra),
    )
    return fixed + name + extra


def data_descriptor(*, crc: int, compressed: int, uncompressed: int, zip64: bool) -> bytes:
    """A signed data descriptor; 24 bytes when the local header has a ZIP64 extra, else 16."""
    if zip64:
        return DESCRIPTOR_64.pack(DESCRIPTOR_SIG, crc, compressed, uncompressed)
    return DESCRIPTOR_32.pack(DESCRIPTOR_SIG, crc, compressed, uncompressed)


def central_header(entry: JournalEntry) -> bytes:
    """The central directory header of a journalled entry.

    Only the fields that hit the 0xFFFFFFFF sentinel go into its ZIP64 extra, in the
    APPNOTE order (uncompressed, compressed, offset); 7-Zip warns about anything else.
    """
    slots = []
    wide = []
    for value in (entry.uncompressed_size, entry.compressed_size, entry.offset):
        if value >= U32_MAX:
            slots.append(U32_MAX)
            wide.append(value)
        else:
            slots.append(value)
    extra = b""
    if wide:
        extra = struct.pack(f"<HH{len(wide)}Q", ZIP64_EXTRA_ID, 8 * len(wide), *wide)
    name = entry.name.encode()
    # Padded to the local extra's length when possible: zipinfo (and naive readers that find
    # the data via central-directory lengths) assume the two extras are equally long.
    missing = local_extra_length(entry, len(name)) - len(extra)
    if missing >= 6:
        extra += padding_extra(missing)
    comment = entry.comment.encode()
    fixed = CENTRAL_HEADER.pack(
        CENTRAL_SIG,
        VERSION_MADE_BY,
        version_needed(zip64=entry.zip64, offset=entry.offset),
        entry.flags,
        entry.method,
        entry.dos_time,
        entry.dos_date,
        entry.crc32,
        slots[1],
        slots[0],
        len(name),
        len(extra),
        len(comment),
        0,
        0,
        EXTERNAL_ATTRS,
        slots[2],
    )
    return fixed + name + extra + comment


def local_extra_length(entry: JournalEntry, name_length: int) -> int:
    """The extra-field length of a journalled entry's local header, derived from its span."""
    descriptor = 0
    if entry.flags & FLAG_DESCRIPTOR:
        descriptor = DESCRIPTOR_64.size if entry.zip64 else DESCRIPTOR_32.size
    header_and_extra = entry.end_offset - entry.offset - entry.compressed_size - descriptor
    return header_and_extra - LOCAL_HEADER.size - name_length


def end_records(*, entries: int, cd_offset: int, cd_size: int) -> bytes:
    """The end-of-central-directory record, preceded by the ZIP64 record and locator if needed."""
    zip64 = entries >= U16_MAX or cd_offset >= U32_MAX or cd_size >= U32_MAX
    tail = END.pack(
        END_SIG,
        0,
        0,
        min(entries, U16_MAX),
        min(entries, U16_MAX),
        min(cd_size, U32_MAX),
        min(cd_offset, U32_MAX),
        0,
    )
    if not zip64:
        return tail
    zip64_end_offset = cd_offset + cd_size
    record = ZIP64_END.pack(
        ZIP64_END_SIG,
        ZIP64_END.size - 12,
        VERSION_MADE_BY,
        VERSION_ZIP64,
        0,
        0,
        entries,
        entries,
        cd_size,
        cd_offset,
    )
    locator = ZIP64_LOCATOR.pack(ZIP64_LOCATOR_SIG, 0, zip64_end_offset, 1)
    return record + locator + tail


# --------------------------------------------------------------------------------------------
# The synchronous archive, driven from worker threads
# --------------------------------------------------------------------------------------------

# Data is handed to a worker thread in batches of about this size: one thread hop per MiB
# (or per small entry), never per network chunk.
BATCH_BYTES: Final = 1 << 20
# Central-directory bytes gathered before each write at close().
_CD_BUFFER: Final = 1 << 20
_FILE_BUFFER: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class ZipResult:
    """What :meth:`ZipWriter.close` produced.

    Args:
        path: the finished archive, or ``None`` when written to a stream.
        entries: number of entries in the archive.
        bytes_written: size of the whole archive in bytes.
    """

    path: Path | None
    entries: int
    bytes_written: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WholeEntry:
    """An entry whose data is all in memory, for :meth:`ZipWriter.add_whole_entries`.

    Args:
        name: the wanted entry name (sanitised and made unique like ``add_entry``'s).
        data: the entry's bytes.
        mtime: modification time; default now.
        compress: deflate (default) or store (patch mode only).
        key: the item key, recorded for skip-existing.
        version: the item version, recorded for skip-existing.
        comment: the central-directory file comment.
    """

    name: str
    data: bytes = field(repr=False)
    mtime: datetime | None = None
    compress: bool = True
    key: str = ""
    version: str = ""
    comment: str = ""


@dataclass(slots=True, kw_only=True)
class _OpenEntry:
    """The one entry being written; dropped as soon as it is journalled."""

    requested: str
    key: str
    version: str
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
    recorded: bool = False
    compressor: zlib._Compress | None = field(default=None, repr=False)


class _Archive:
    """The byte-level writer; every method blocks and runs in a worker thread."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        journal: Journal,
        patch: bool,
        offset: int,
        level: int,
        commit_every: int,
        commit_interval: float,
    ) -> None:
        self.stream = stream
        self.journal = journal
        self.patch = patch
        self.offset = offset
        self.failed = False
        self._level = level
        self._commit_every = commit_every
        self._commit_interval = commit_interval
        self._uncommitted = 0
        self._last_commit = time.monotonic()

    def write_batch(self, entry: _OpenEntry, data: bytes) -> None:
        """Stream one batch of a multi-batch entry, writing its header first if needed."""
        if entry.offset < 0:
            self._begin(entry)
        self._write(self._process(entry, data, final=False))
        if not entry.zip64 and sizes_need_zip64(entry.compressed, entry.uncompressed):
            raise ZipFormatError(
                f"entry outgrew its size hint of {entry.size_hint} bytes", item=entry.requested
            )

    def finish_entry(self, entry: _OpenEntry, data: bytes) -> JournalEntry:
        """Write the last batch, fix up the header, and journal the entry."""
        if entry.offset < 0:
            self._write_whole(entry, data)
        else:
            self._write_tail(entry, data)
        row = JournalEntry(
            name=entry.name.decode(),
            key=entry.key,
            version=entry.version,
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
        self.journal.add(row)
        entry.recorded = True
        self._uncommitted += 1
        if (
            self._uncommitted >= self._commit_every
            or time.monotonic() - self._last_commit >= self._commit_interval
        ):
            self.checkpoint()
        return row

    def write_whole_entries(
        self, entries: Sequence[tuple[_OpenEntry, bytes]]
    ) -> list[JournalEntry]:
        """Write several in-memory entries in one call (one worker-thread hop for all)."""
        rows = []
        for entry, data in entries:
            try:
                rows.append(self.finish_entry(entry, data))
            except BaseException:
                self.discard(entry)
                raise
        return rows

    def discard(self, entry: _OpenEntry) -> None:
        """Remove the bytes of a failed entry (patch mode) or mark the stream broken."""
        if entry.offset < 0 or entry.recorded:
            return
        if not self.patch:
            self.failed = True
            return
        self.stream.seek(entry.offset)
        self.stream.truncate()
        self.offset = entry.offset

    def checkpoint(self) -> None:
        """Flush (and fsync in patch mode) the archive, then commit the journal."""
        self.stream.flush()
        if self.patch:
            os.fsync(self.stream.fileno())
        self.journal.commit()
        self._uncommitted = 0
        self._last_commit = time.monotonic()

    def finish(self, part: Path | None, target: Path | None) -> ZipResult:
        """Write the central directory, make the archive durable, move it into place."""
        entries = self._write_central_directory()
        self.stream.flush()
        if part is not None and target is not None:
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.replace(part, target)
            fsync_path(target.parent)  # the rename is durable only once the folder is
        self.journal.delete()
        return ZipResult(path=target, entries=entries, bytes_written=self.offset)

    def abort(self) -> None:
        """Keep what is written resumable: data durable, journal committed, file closed."""
        if self.stream.closed:  # finish() got as far as closing the file
            self.journal.close()
            return
        try:
            if self.patch:
                self.checkpoint()
            else:
                # Nothing written to a stream can be resumed; the flush is only a courtesy to
                # whoever reads it, and a reader that went away must not hide the real error.
                with contextlib.suppress(OSError):
                    self.stream.flush()
        finally:
            if self.patch:
                self.stream.close()
            self.journal.close()

    def _write_central_directory(self) -> int:
        """Stream the central directory and end records from the journal; return entry count."""
        cd_offset = self.offset
        entries = 0
        buffer = bytearray()
        for row in self.journal.entries():
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
        if not self.patch:
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
        self.stream.seek(entry.offset)
        self.stream.write(header)
        self.stream.seek(self.offset)

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
        name = next(c for c in name_candidates(entry.requested) if not self.journal.has_name(c))
        entry.name = name.encode()
        if len(entry.name) > U16_MAX:
            raise ZipFormatError("entry name is longer than 65535 bytes", item=entry.requested)
        if not (name.isascii() and entry.comment.isascii()):
            entry.flags |= FLAG_UTF8

    def _process(self, entry: _OpenEntry, data: bytes, *, final: bool) -> bytes:
        """CRC and compress one batch; flush the compressor when the entry has no more data."""
        entry.crc = zlib.crc32(data, entry.crc)
        entry.uncompressed += len(data)
        if entry.method == STORED:
            out = data
        else:
            if entry.compressor is None:
                entry.compressor = zlib.compressobj(self._level, zlib.DEFLATED, -15)
            out = entry.compressor.compress(data)
            if final:
                out += entry.compressor.flush()
        entry.compressed += len(out)
        return out

    def _write(self, data: bytes) -> None:
        self.stream.write(data)
        self.offset += len(data)


def _open_part(part: Path, journal: Journal, *, resume: bool) -> tuple[BinaryIO, int]:
    """Open ``<target>.part`` for writing; on resume, cut it back to the journal's last row."""
    if not resume:
        if journal.count():
            raise ResumeError(
                "journal already holds entries; resume, or start with a fresh journal",
                item=str(journal.path),
            )
        return open(part, "w+b", buffering=_FILE_BUFFER), 0
    if not part.is_file():
        raise ResumeError("no partial archive to resume", item=str(part))
    stream = open(part, "r+b", buffering=_FILE_BUFFER)  # noqa: SIM115 - kept open
    try:
        offset = _check_resume_point(stream, journal, part)
        stream.seek(offset)
        stream.truncate()
    except BaseException:
        stream.close()
        raise
    return stream, offset


def _check_resume_point(stream: BinaryIO, journal: Journal, part: Path) -> int:
    """Return the last committed row's end offset after checking the bytes there match it."""
    last = journal.last()
    if last is None:
        return 0
    size = os.fstat(stream.fileno()).st_size
    if size < last.end_offset:
        raise ResumeError(
            f"partial archive is {size} bytes, journal expects at least {last.end_offset}",
            item=str(part),
        )
    name = last.name.encode()
    stream.seek(last.offset)
    head = stream.read(LOCAL_HEADER.size + len(name))
    fixed = LOCAL_HEADER.unpack_from(head) if len(head) >= LOCAL_HEADER.size else None
    if fixed is None or fixed[0] != LOCAL_SIG or head[LOCAL_HEADER.size :] != name:
        raise ResumeError(
            f"partial archive has no header for {last.name!r} at offset {last.offset}",
            item=str(part),
        )
    return last.end_offset


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


# --------------------------------------------------------------------------------------------
# The async writer
# --------------------------------------------------------------------------------------------


class ZipWriter:
    """Writes a zip entry by entry, streaming each entry's data through worker threads.

    Open it with :meth:`open`, add entries with :meth:`add_entry` (one at a time; concurrent
    calls are serialised), and finish with :meth:`close`. Used as ``async with``, leaving with an
    exception calls :meth:`abort` so the run can be resumed; leaving normally does nothing.
    """

    def __init__(self, archive: _Archive, *, part: Path | None, target: Path | None) -> None:
        self._archive = archive
        self._part = part
        self._target = target
        self._lock = anyio.Lock()
        self._done = False

    @classmethod
    async def open(
        cls,
        target: Path | BinaryIO,
        *,
        journal: Journal,
        resume: bool = False,
        compress_level: int = 6,
        commit_every: int = 512,
        commit_interval: float = 2.0,
    ) -> ZipWriter:
        """Start (or resume) an archive.

        Args:
            target: a path (written as ``<target>.part`` in patch mode, renamed by
                :meth:`close`) or a binary stream such as ``sys.stdout.buffer`` (descriptor
                mode: never seeks, never resumable).
            journal: where finished entries are recorded; a fresh one unless resuming
                (opening the old one with :meth:`Journal.open_existing` is the caller's job).
            resume: continue ``<target>.part`` after its journal's last committed row.
            compress_level: zlib level 0-9 for deflated entries.
            commit_every: make the archive and journal durable after this many entries...
            commit_interval: ...or after this many seconds, whichever comes first.

        Raises:
            ResumeError: resume asked for a stream, the partial archive is missing or does
                not match the journal, or a fresh archive was given a non-empty journal.
        """
        if not 0 <= compress_level <= 9:
            raise ZipFormatError(f"compress_level must be 0-9, not {compress_level}")
        if commit_every < 1 or commit_interval < 0:
            raise ZipFormatError("commit_every must be >= 1 and commit_interval >= 0")

        def archive(stream: BinaryIO, *, patch: bool, offset: int) -> _Archive:
            return _Archive(
                stream,
                journal=journal,
                patch=patch,
                offset=offset,
                level=compress_level,
                commit_every=commit_every,
                commit_interval=commit_interval,
            )

        if isinstance(target, Path):
            part = target.with_name(target.name + ".part")
            stream, offset = await anyio.to_thread.run_sync(
                functools.partial(_open_part, part, journal, resume=resume)
            )
            return cls(archive(stream, patch=True, offset=offset), part=part, target=target)
        if resume:
            raise ResumeError("a zip written to a stream cannot be resumed")
        if await anyio.to_thread.run_sync(journal.count):
            raise ResumeError("a zip written to a stream needs an empty journal")
        return cls(archive(target, patch=False, offset=0), part=None, target=None)

    async def add_entry(
        self,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        mtime: datetime | None = None,
        size_hint: int | None = None,
        compress: bool = True,
        key: str = "",
        version: str = "",
        comment: str = "",
    ) -> JournalEntry:
        """Stream one entry into the archive and journal it.

        Args:
            name: the wanted entry name; sanitised (see :func:`sanitize_entry_name`) and made
                unique against the journal (``a.json`` → ``a (2).json``).
            chunks: the entry's data. If it raises, the partial entry is discarded and the
                exception propagates unchanged; in patch mode the writer stays usable, in
                descriptor mode a failure after the first ~1 MiB breaks the stream for good.
            mtime: modification time; default now; clamped to the DOS range 1980-2107.
            size_hint: the expected uncompressed size; a size known to fit lets a large entry
                stay ZIP32. Entries under one batch never need it.
            compress: deflate (default) or store; descriptor mode always deflates because
                Java's ZipInputStream rejects stored entries with a data descriptor.
            key: the item key, recorded for skip-existing.
            version: the item version, recorded for skip-existing.
            comment: the central-directory file comment.

        Returns:
            The journal row of the entry, with the name actually used.

        Raises:
            ZipFormatError: the name is unusable, the writer is closed or broken, or the data
                outgrew a ``size_hint`` that made the entry ZIP32.
        """
        entry = self._open_entry(
            name,
            mtime=mtime,
            size_hint=size_hint,
            compress=compress,
            key=key,
            version=version,
            comment=comment,
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

    async def add_whole_entries(self, entries: Sequence[WholeEntry]) -> list[JournalEntry]:
        """Write several entries whose data is in memory, in one worker-thread call.

        Many small entries (Kognic documents of a few KB) would otherwise cost a thread hop
        each, which dominates their compression; batching keeps the event loop free and the
        archive fast. Entries are written in order; if one fails, those before it stay.

        Returns:
            The journal rows, in order, with the names actually used.

        Raises:
            ZipFormatError: as :meth:`add_entry`.
        """
        batch = [
            (
                self._open_entry(
                    e.name,
                    mtime=e.mtime,
                    size_hint=len(e.data),
                    compress=e.compress,
                    key=e.key,
                    version=e.version,
                    comment=e.comment,
                ),
                e.data,
            )
            for e in entries
        ]
        async with self._lock:
            self._check_open()
            with anyio.CancelScope(shield=True):
                # Shielded: the batch is all in memory and quick; a half-written batch would
                # leave partial bytes that only discard() could cut away.
                rows = await anyio.to_thread.run_sync(self._archive.write_whole_entries, batch)
        return rows

    def _open_entry(
        self,
        name: str,
        *,
        mtime: datetime | None,
        size_hint: int | None,
        compress: bool,
        key: str,
        version: str,
        comment: str,
    ) -> _OpenEntry:
        dos_time, dos_date = dos_datetime(mtime or datetime.now(UTC))
        entry = _OpenEntry(
            requested=sanitize_entry_name(name),
            key=key,
            version=version,
            comment=comment.encode(),
            dos_time=dos_time,
            dos_date=dos_date,
            method=DEFLATED if compress or not self._archive.patch else STORED,
            size_hint=size_hint,
        )
        if len(entry.comment) > U16_MAX:
            raise ZipFormatError("entry comment is longer than 65535 bytes", item=name)
        return entry

    async def _stream_entry(self, entry: _OpenEntry, chunks: AsyncIterable[bytes]) -> JournalEntry:
        # One batch of look-ahead: the last batch goes out together with the header fix-up and
        # the journal row, so a small entry costs a single thread hop.
        async with contextlib.aclosing(_batched(chunks, BATCH_BYTES)) as batches:
            current = await anext(batches, b"")
            async for following in batches:
                await anyio.to_thread.run_sync(self._archive.write_batch, entry, current)
                current = following
            return await anyio.to_thread.run_sync(self._archive.finish_entry, entry, current)

    async def close(self) -> ZipResult:
        """Write the central directory, fsync, rename ``.part`` to the target, delete the journal.

        A stream target is flushed but left open: it belongs to the caller.
        """
        async with self._lock:
            self._check_open()
            self._done = True
            try:
                return await anyio.to_thread.run_sync(
                    self._archive.finish, self._part, self._target
                )
            except BaseException:
                # A failed close (disk full, cancelled) must still leave a resumable .part:
                # resume cuts the half-written central directory away.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._archive.abort)
                raise

    async def abort(self) -> None:
        """Stop without finishing: data flushed and fsynced, journal committed, file closed.

        The ``.part`` file and the journal stay for a later ``resume=True``. Does nothing if
        the writer is already closed or aborted.
        """
        async with self._lock:
            if self._done:
                return
            self._done = True
            await anyio.to_thread.run_sync(self._archive.abort)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            # Shielded so a cancelled pull still leaves a resumable .part and journal.
            with anyio.CancelScope(shield=True):
                await self.abort()

    def _check_open(self) -> None:
        if self._done:
            raise ZipFormatError("the zip writer is already closed")
        if self._archive.failed:
            raise ZipFormatError("the zip stream is broken by an earlier failed entry")

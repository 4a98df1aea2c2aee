"""Zip record layouts: signatures, struct formats, and pure functions that build records.

Nothing here does I/O; the writer (:mod:`annopull._zip.writer`) and the reader
(:mod:`annopull._zip.reader`) share these layouts so that they can never disagree. The rules
behind the ZIP64 and padding decisions are in ``/work/shared/ZIP-NOTES.md``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "CENTRAL_HEADER",
    "CENTRAL_SIG",
    "DEFLATED",
    "DESCRIPTOR_32",
    "DESCRIPTOR_64",
    "DESCRIPTOR_SIG",
    "END",
    "END_SIG",
    "FLAG_DESCRIPTOR",
    "FLAG_UTF8",
    "LOCAL_HEADER",
    "LOCAL_SIG",
    "STORED",
    "U16_MAX",
    "U32_MAX",
    "ZIP64_END",
    "ZIP64_END_SIG",
    "ZIP64_LOCATOR",
    "ZIP64_LOCATOR_SIG",
    "CentralRow",
    "central_header",
    "data_descriptor",
    "dos_datetime",
    "end_records",
    "local_extra_length",
    "local_header",
    "padding_extra",
    "sizes_need_zip64",
    "version_needed",
    "zip64_for_unknown_end",
    "zip64_local_extra",
]

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


@dataclass(frozen=True, slots=True, kw_only=True)
class CentralRow:
    """What the central directory needs to know of one written entry.

    The writer hands one out per finished entry; whoever keeps the output's records (the pull
    pipeline's ledger) stores it as :meth:`encode` bytes and gives them back at the end, so the
    central directory is streamed from disk, never held in RAM.

    Args:
        name: the entry name as stored.
        offset: where the entry's local header starts.
        end_offset: just past its data (and data descriptor, if any).
        crc32: CRC-32 of the uncompressed data.
        compressed_size: bytes of (compressed) data in the archive.
        uncompressed_size: bytes before compression.
        method: 0 stored or 8 deflated.
        flags: general-purpose flags of the local header.
        dos_time: MS-DOS time field.
        dos_date: MS-DOS date field.
        zip64: whether the local header carries a ZIP64 extra field.
        comment: the central-directory file comment.
    """

    name: str
    offset: int
    end_offset: int
    crc32: int
    compressed_size: int
    uncompressed_size: int
    method: int
    flags: int
    dos_time: int
    dos_date: int
    zip64: bool
    comment: str = ""

    def encode(self) -> bytes:
        """The row as compact bytes (fixed fields, then name and comment)."""
        name = self.name.encode()
        # Field by field: dataclasses.astuple deep-copies, and this runs once per entry.
        fixed = _ROW.pack(
            self.offset,
            self.end_offset,
            self.crc32,
            self.compressed_size,
            self.uncompressed_size,
            self.method,
            self.flags,
            self.dos_time,
            self.dos_date,
            self.zip64,
            len(name),
        )
        return fixed + name + self.comment.encode()

    @classmethod
    def decode(cls, data: bytes) -> CentralRow:
        """The row :meth:`encode` made."""
        *fixed, name_length = _ROW.unpack_from(data)
        start = _ROW.size
        name = data[start : start + name_length].decode()
        comment = data[start + name_length :].decode()
        offset, end, crc, csize, usize, method, flags, dtime, ddate, zip64 = fixed
        return cls(
            name=name,
            offset=offset,
            end_offset=end,
            crc32=crc,
            compressed_size=csize,
            uncompressed_size=usize,
            method=method,
            flags=flags,
            dos_time=dtime,
            dos_date=ddate,
            zip64=bool(zip64),
            comment=comment,
        )


# offset, end_offset, crc32, sizes, method, flags, DOS time and date, zip64, name length.
_ROW: Final = struct.Struct("<QQIQQHHHH?H")


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


def central_header(entry: CentralRow) -> bytes:
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


def local_extra_length(entry: CentralRow, name_length: int) -> int:
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

"""Check a zip's entries as its bytes arrive, so a download need not read the file again.

:class:`StreamCheck` is fed the archive from its first byte, in order. It walks the local
headers, CRCs each entry's data (inflating deflated entries) and fails at the first entry
whose CRC or size differs from its header. At the end, :meth:`StreamCheck.finish` reads only
the central directory of the finished file and holds every entry in it against what went by:
same offset, name, CRC and sizes. A truncated archive, a bad CRC, a central directory that
names data that never arrived: each is a :class:`~annopull._errors.ZipFormatError`.

What the walk cannot follow (data descriptors, whose sizes come after the data; encrypted or
unknown methods; anything but a local header where one should be; a stream cut back by a
retry) makes it *undecided*: :meth:`StreamCheck.finish` then returns ``None`` and the caller
verifies the finished file the slow way (:func:`~annopull._zip.reader.verify_zip`).

Memory: the header being parsed, one inflate buffer, and a few dozen bytes per entry seen.

With the speed extra (``annopull[speed]``, which brings ``isal``) the CRCs are ISA-L's (see
:mod:`annopull._zip.codec`).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from annopull._errors import ZipFormatError
from annopull._zip.codec import crc32
from annopull._zip.reader import ZipCheck, open_zip
from annopull._zip.records import (
    CENTRAL_SIG,
    DEFLATED,
    END_SIG,
    FLAG_DESCRIPTOR,
    LOCAL_HEADER,
    LOCAL_SIG,
    STORED,
    U32_MAX,
    ZIP64_END_SIG,
)

__all__ = ["StreamCheck"]

# Inflated bytes produced per step, so a small bomb cannot blow up memory.
_INFLATE_STEP: Final = 1 << 20
_FLAG_ENCRYPTED: Final = 1
_ZIP64_EXTRA_ID: Final = 0x0001
_EXTRA_HEAD: Final = struct.Struct("<HH")
_END_OF_ENTRIES: Final = frozenset({CENTRAL_SIG, END_SIG, ZIP64_END_SIG})


@dataclass(frozen=True, slots=True)
class _Seen:
    """An entry whose data went by with the CRC and sizes its local header promised."""

    name: bytes
    crc: int
    compressed: int
    uncompressed: int


class _Entry:
    """The entry whose data is arriving."""

    __slots__ = ("compressed", "crc", "got", "inflater", "name", "offset", "remaining", "size")

    def __init__(
        self, *, name: bytes, offset: int, method: int, crc: int, compressed: int, size: int
    ) -> None:
        self.name = name
        self.offset = offset
        self.crc = crc
        self.compressed = compressed
        self.size = size
        self.remaining = compressed
        self.got = (0, 0)  # (CRC so far, uncompressed bytes so far)
        self.inflater = zlib.decompressobj(-15) if method == DEFLATED else None

    def update(self, data: memoryview) -> None:
        crc, count = self.got
        if self.inflater is None:
            crc, count = crc32(data, crc), count + len(data)
        else:
            pending: bytes | memoryview = data
            while pending:
                out = self.inflater.decompress(pending, _INFLATE_STEP)
                crc, count = crc32(out, crc), count + len(out)
                pending = self.inflater.unconsumed_tail
                if count > self.size:
                    break
        self.got = (crc, count)
        self.remaining -= len(data)

    def check(self) -> _Seen:
        name = self.name.decode("utf-8", "replace")
        if self.inflater is not None and not self.inflater.eof:
            raise ZipFormatError("corrupt zip entry: its deflate data does not end", item=name)
        crc, count = self.got
        if count != self.size:
            raise ZipFormatError(
                f"corrupt zip entry: {count} bytes, its header says {self.size}", item=name
            )
        if crc != self.crc:
            raise ZipFormatError(f"corrupt zip entry: bad CRC-32 {crc:08x}", item=name)
        return _Seen(self.name, self.crc, self.compressed, self.size)


class StreamCheck:
    """Walks a zip's bytes as they arrive: feed every byte in order, then :meth:`finish`.

    Raises :class:`~annopull._errors.ZipFormatError` from :meth:`feed` at the first entry
    whose data does not match its header. Blocking (CRCs, inflate): call it off the loop.
    """

    def __init__(self) -> None:
        self._head = bytearray()  # the local header being parsed
        self._entry: _Entry | None = None
        self._position = 0  # bytes walked so far
        self._head_start = 0  # where the header being parsed begins
        self._seen: dict[int, _Seen] = {}
        self._at_directory = False
        #: Why the walk cannot decide (the file must be verified the slow way), or ``None``.
        self.undecided: str | None = None

    def feed(self, data: bytes | memoryview) -> None:
        """Take the archive's next bytes.

        Raises:
            ZipFormatError: an entry's data does not match its header.
        """
        view = memoryview(data)
        while view and not self._at_directory and self.undecided is None:
            before = len(view)
            entry = self._entry
            view = self._data(entry, view) if entry is not None else self._header(view)
            self._position += before - len(view)

    def give_up(self, why: str) -> None:
        """Stop walking (the stream was cut back, say): :meth:`finish` will return ``None``."""
        if self.undecided is None:
            self.undecided = why

    def finish(self, path: Path | BinaryIO) -> ZipCheck | None:
        """Hold the finished file's central directory against the entries that went by.

        Returns ``None`` when the walk was undecided (verify ``path`` the slow way).

        Raises:
            ZipFormatError: the file has no readable central directory, or it names an entry
                that did not go by as it says.
        """
        if self.undecided is None and not self._at_directory:
            self.undecided = "the archive ended inside its entries"
        if self.undecided is not None:
            return None
        archive = open_zip(path)
        try:
            infos = archive.infolist()
        finally:
            archive.close()
        for info in infos:
            seen = self._seen.get(info.header_offset)
            if seen is None or not _matches(seen, info):
                raise ZipFormatError(
                    "corrupt zip: the central directory does not match the entry at offset "
                    f"{info.header_offset}",
                    item=info.filename,
                )
        return ZipCheck(entries=len(infos), total_uncompressed=sum(i.file_size for i in infos))

    def _data(self, entry: _Entry, view: memoryview) -> memoryview:
        take = min(len(view), entry.remaining)
        entry.update(view[:take])
        if entry.remaining == 0:
            self._seen[entry.offset] = entry.check()
            self._entry = None
        return view[take:]

    def _header(self, view: memoryview) -> memoryview:
        head = self._head
        fixed = LOCAL_HEADER.size
        if not head:
            self._head_start = self._position
        if len(head) < 4:
            take = min(len(view), 4 - len(head))
            head += view[:take]
            view = view[take:]
            if len(head) < 4:
                return view
            signature = int.from_bytes(head[:4], "little")
            if signature in _END_OF_ENTRIES:
                self._at_directory = True
                return view
            if signature != LOCAL_SIG:
                self.undecided = f"no local header at offset {self._head_start}"
                return view
        need = fixed
        if len(head) >= fixed:
            name_length, extra_length = LOCAL_HEADER.unpack_from(head)[9:]
            need += name_length + extra_length
        take = min(len(view), need - len(head))
        head += view[:take]
        view = view[take:]
        if len(head) < need:
            return view
        if need == fixed and sum(LOCAL_HEADER.unpack_from(head)[9:]):
            return view  # the name and extra come next
        self._open(bytes(head), offset=self._head_start)
        head.clear()
        return view

    def _open(self, head: bytes, *, offset: int) -> None:
        (_, _, flags, method, _, _, crc, compressed, size, name_length, extra_length) = (
            LOCAL_HEADER.unpack_from(head)
        )
        fixed = LOCAL_HEADER.size
        name = head[fixed : fixed + name_length]
        extra = head[fixed + name_length : fixed + name_length + extra_length]
        if flags & (_FLAG_ENCRYPTED | FLAG_DESCRIPTOR) or method not in (STORED, DEFLATED):
            self.undecided = "an entry with a data descriptor, encryption or another method"
            return
        if U32_MAX in (compressed, size):
            size, compressed = _zip64_sizes(extra, size=size, compressed=compressed)
        entry = _Entry(
            name=name, offset=offset, method=method, crc=crc, compressed=compressed, size=size
        )
        if compressed == 0:
            self._seen[offset] = entry.check() if method == STORED else _empty(entry)
        else:
            self._entry = entry


def _empty(entry: _Entry) -> _Seen:
    """A deflated entry of no bytes at all: only an empty file may be that."""
    if entry.size or entry.crc:
        raise ZipFormatError(
            "corrupt zip entry: no data", item=entry.name.decode("utf-8", "replace")
        )
    return _Seen(entry.name, 0, 0, 0)


def _zip64_sizes(extra: bytes, *, size: int, compressed: int) -> tuple[int, int]:
    """The real sizes from a local ZIP64 extra (uncompressed first, each only if saturated)."""
    at = 0
    while at + _EXTRA_HEAD.size <= len(extra):
        kind, length = _EXTRA_HEAD.unpack_from(extra, at)
        body = extra[at + _EXTRA_HEAD.size : at + _EXTRA_HEAD.size + length]
        at += _EXTRA_HEAD.size + length
        if kind != _ZIP64_EXTRA_ID:
            continue
        values = [int.from_bytes(body[i : i + 8], "little") for i in range(0, len(body) - 7, 8)]
        if size == U32_MAX and values:
            size = values.pop(0)
        if compressed == U32_MAX and values:
            compressed = values.pop(0)
    return size, compressed


def _matches(seen: _Seen, info: zipfile.ZipInfo) -> bool:
    return (
        seen.name == info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        and seen.crc == info.CRC
        and seen.compressed == info.compress_size
        and seen.uncompressed == info.file_size
    )

"""Reading finished zips: verify every CRC, extract safely, stream a JSON Lines member.

Reading uses the stdlib :mod:`zipfile` (which holds the central directory in RAM, a few hundred
bytes per entry) and streams entry *data* in chunks, always in worker threads. Every failure of
the archive itself surfaces as :class:`~annopull._errors.ZipFormatError` naming the entry.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Final

import anyio
import anyio.to_thread
import orjson

from annopull._errors import UnsafeEntryError, ZipFormatError
from annopull._storage.base import AtomicFile
from annopull._storage.local import LocalTree
from annopull._zip.names import unsafe_name_reason
from annopull._zip.records import (
    CENTRAL_HEADER,
    CENTRAL_SIG,
    END,
    END_SIG,
    FLAG_UTF8,
    U16_MAX,
    ZIP64_END,
    ZIP64_END_SIG,
    ZIP64_LOCATOR,
    ZIP64_LOCATOR_SIG,
)

__all__ = [
    "ExtractLimits",
    "ExtractReport",
    "ZipCheck",
    "extract_zip",
    "iter_jsonl_member",
    "open_zip",
    "read_entry_comments",
    "unsafe_entry_reason",
    "verify_zip",
]

_CHUNK: Final = 1 << 20
# Entries verified per worker-thread call: one hop per group keeps a million small entries
# fast while cancellation is still noticed between groups.
_VERIFY_GROUP: Final = 256
# What a damaged archive raises inside zipfile: bad CRC or header (BadZipFile), broken deflate
# data (zlib.error), a truncated file (EOFError).
_READ_ERRORS: Final = (zipfile.BadZipFile, zlib.error, EOFError)


@dataclass(frozen=True, slots=True)
class ZipCheck:
    """The result of :func:`verify_zip`.

    Args:
        entries: number of entries, all of whose CRCs matched.
        total_uncompressed: sum of their uncompressed sizes.
    """

    entries: int
    total_uncompressed: int


@dataclass(frozen=True, slots=True)
class ExtractReport:
    """The result of :func:`extract_zip`.

    Args:
        files: every file written, in archive order.
        bytes_written: total bytes of file data written.
    """

    files: tuple[Path, ...]
    bytes_written: int


def open_zip(path: Path | BinaryIO) -> zipfile.ZipFile:
    """``path`` (a file, or a seekable reader) as a :class:`zipfile.ZipFile` (its central
    directory read); blocking.

    Raises:
        ZipFormatError: it is not a readable zip.
    """
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        where = str(getattr(path, "name", path))
        raise ZipFormatError(f"cannot open zip: {exc}", item=where) from exc


def _drain(archive: zipfile.ZipFile, info: zipfile.ZipInfo, sink: AtomicFile | None) -> int:
    """Read one entry to the end (which makes zipfile check its CRC); return its size."""
    size = 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                size += len(chunk)
                if sink is not None:
                    sink.write(chunk)
    except _READ_ERRORS as exc:
        raise ZipFormatError(f"corrupt zip entry: {exc}", item=info.filename) from exc
    return size


def _verify_group(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> int:
    return sum(_drain(archive, info, None) for info in infos)


async def verify_zip(path: Path | BinaryIO) -> ZipCheck:
    """Read every entry of ``path`` and check its CRC, in worker threads.

    Args:
        path: the zip to check, or a seekable binary file of it (an object store's
            ranged reader).

    Raises:
        ZipFormatError: the archive cannot be opened, or an entry is corrupt (its name is in
            the error).
    """
    archive = await anyio.to_thread.run_sync(open_zip, path)
    try:
        infos = archive.infolist()
        total = 0
        for start in range(0, len(infos), _VERIFY_GROUP):
            group = infos[start : start + _VERIFY_GROUP]
            total += await anyio.to_thread.run_sync(_verify_group, archive, group)
        return ZipCheck(entries=len(infos), total_uncompressed=total)
    finally:
        archive.close()


def unsafe_entry_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting ``info`` could write outside the destination, or ``None`` if it is safe."""
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_ISLNK(mode):
        return "symlink entry"
    # orig_filename is the name as stored: zipfile cuts filename at a NUL, hiding what follows.
    return unsafe_name_reason(info.orig_filename)


def _check_all_safe(archive: zipfile.ZipFile) -> None:
    for info in archive.infolist():
        reason = unsafe_entry_reason(info)
        if reason is not None:
            raise UnsafeEntryError(
                f"refusing unsafe zip entry ({reason})", item=repr(info.filename)
            )


def _extract_one(archive: zipfile.ZipFile, info: zipfile.ZipInfo, tree: LocalTree) -> Path | None:
    """Write one entry into ``tree`` atomically; ``None`` for a folder entry."""
    name = "/".join(s for s in info.filename.split("/") if s not in ("", "."))
    if info.is_dir():
        (tree.path / name).mkdir(parents=True, exist_ok=True)
        return None
    file = tree.create(name)
    try:
        _drain(archive, info, file)
    except BaseException:
        file.discard()
        raise
    # Like unzip: the entry's permission bits, less the umask.
    file.commit(mode=_file_mode(info))
    return tree.path.joinpath(*name.split("/"))


def _read_umask() -> int:
    # Read once at import, on the main thread: os.umask can only be read by setting it, which
    # would briefly change it for every thread.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _file_mode(info: zipfile.ZipInfo) -> int:
    """The entry's Unix permission bits (0644 when it has none), less the umask and setuid."""
    mode = (info.external_attr >> 16) & 0o777 or 0o644
    return mode & ~_UMASK


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtractLimits:
    """How much an archive may expand to, so a zip bomb is refused before it fills a disk.

    Args:
        max_bytes: the most bytes all entries together may hold, uncompressed (0: no cap).
        max_ratio: the most an entry may expand (uncompressed / compressed size). Real
            annotation exports compress JSON ten- to fifty-fold; bombs a thousand-fold.
    """

    max_bytes: int = 0
    max_ratio: float = 1000.0


async def extract_zip(
    path: Path, dest: Path, *, limits: ExtractLimits | None = None
) -> ExtractReport:
    """Extract ``path`` into ``dest`` entry by entry, streamed, each file via temp + rename.

    Every entry name and size is checked before anything is written, so an archive with one
    unsafe entry (absolute path, drive letter, ``..``, backslash, symlink) or one that would
    expand past ``limits`` writes nothing at all. The sizes checked are the ones the archive
    declares; zipfile refuses data that runs past them, so they cannot lie.

    Args:
        path: the zip to extract.
        dest: the destination folder; created if missing. Existing files are replaced.
        limits: size and expansion caps (the defaults of :class:`ExtractLimits` if omitted).

    Raises:
        UnsafeEntryError: an entry could land outside ``dest``, or the archive would expand
            past ``limits``.
        ZipFormatError: the archive or an entry is corrupt.
    """
    archive = await anyio.to_thread.run_sync(open_zip, path)
    try:
        await anyio.to_thread.run_sync(_check_all_safe, archive)
        await anyio.to_thread.run_sync(_check_sizes, archive, limits or ExtractLimits())
        tree = LocalTree(dest)
        await anyio.to_thread.run_sync(tree.prepare)
        files: list[Path] = []
        written = 0
        for info in archive.infolist():
            target = await anyio.to_thread.run_sync(_extract_one, archive, info, tree)
            if target is not None:
                files.append(target)
                written += info.file_size
        await anyio.to_thread.run_sync(tree.sync)
        return ExtractReport(files=tuple(files), bytes_written=written)
    finally:
        archive.close()


def _check_sizes(archive: zipfile.ZipFile, limits: ExtractLimits) -> None:
    total = 0
    for info in archive.infolist():
        total += info.file_size
        # Tiny entries may expand a lot in ratio and still be harmless: judge by size too.
        if info.file_size > _RATIO_FLOOR and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise UnsafeEntryError(
                f"refusing an entry that expands {info.file_size / max(info.compress_size, 1):.0f}"
                f"-fold (more than {limits.max_ratio:g}): a zip bomb?",
                item=repr(info.filename),
            )
    if limits.max_bytes and total > limits.max_bytes:
        raise UnsafeEntryError(
            f"refusing to extract {total} bytes, more than the cap of {limits.max_bytes}",
            item=str(archive.filename),
        )


#: Entries up to this size are never refused for their ratio.
_RATIO_FLOOR: Final = 1 << 20


class _JsonlReader:
    """Reads a JSON Lines member in ~1 MiB batches; every method blocks (worker thread)."""

    def __init__(self, path: Path, member: str) -> None:
        self._archive = open_zip(path)
        try:
            self._stream = self._archive.open(member)
        except KeyError as exc:
            self._archive.close()
            raise ZipFormatError(f"zip has no member {member!r}", item=str(path)) from exc
        self._member = member
        self._tail = b""
        self._line = 0

    def next_batch(self) -> list[dict[str, Any]] | None:
        """The objects of the next batch of complete lines, or ``None`` at the end."""
        try:
            chunk = self._stream.read(_CHUNK)
        except _READ_ERRORS as exc:
            raise ZipFormatError(f"corrupt zip entry: {exc}", item=self._member) from exc
        if not chunk:
            if not self._tail:
                return None
            lines, self._tail = [self._tail], b""
        else:
            data = self._tail + chunk
            cut = data.rfind(b"\n")
            lines = data[:cut].split(b"\n") if cut >= 0 else []
            self._tail = data[cut + 1 :]
        return [item for line in lines if (item := self._parse(line)) is not None]

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        self._line += 1
        if not line.strip():
            return None
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ZipFormatError(
                f"line {self._line} is not JSON: {exc}", item=self._member
            ) from exc
        if not isinstance(item, dict):
            raise ZipFormatError(f"line {self._line} is not a JSON object", item=self._member)
        return item

    def close(self) -> None:
        self._stream.close()
        self._archive.close()


async def iter_jsonl_member(path: Path, member: str) -> AsyncIterator[dict[str, Any]]:
    """Yield the objects of the JSON Lines member ``member`` of ``path``, one per line.

    The member is read and parsed (orjson) in ~1 MiB batches in a worker thread; blank lines
    are skipped.

    Args:
        path: the zip.
        member: the entry name of the JSON Lines file.

    Raises:
        ZipFormatError: the member is missing or corrupt, or a line is not a JSON object.
    """
    reader = await anyio.to_thread.run_sync(_JsonlReader, path, member)
    try:
        while (batch := await anyio.to_thread.run_sync(reader.next_batch)) is not None:
            for item in batch:
                yield item
    finally:
        # Shielded so an abandoned or cancelled iteration still closes the file.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(reader.close)


def read_entry_comments(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(entry name, file comment)`` from the central directory of a finished zip.

    The central directory is read record by record, never whole: a million-entry archive
    costs no more memory than a small one (stdlib zipfile would hold a ZipInfo per entry).
    Blocking: call it from a worker thread. Names and comments are decoded as UTF-8 when the
    entry's UTF-8 flag is set, else as CP437.

    Raises:
        ZipFormatError: the file is not a zip, or its central directory is damaged.
    """
    try:
        with path.open("rb", buffering=1 << 20) as fh:
            count, cd_offset = _central_directory_position(fh, path)
            fh.seek(cd_offset)
            for _ in range(count):
                yield _central_record(fh, path)
    except OSError as exc:
        raise ZipFormatError(f"cannot read zip: {exc.strerror}", item=str(path)) from None


def _central_directory_position(fh: IO[bytes], path: Path) -> tuple[int, int]:
    """(entry count, central directory offset) from the end records, ZIP64 ones included."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - (END.size + U16_MAX)))
    tail = fh.read()
    at = tail.rfind(END_SIG.to_bytes(4, "little"))
    if at < 0 or at + END.size > len(tail):
        raise ZipFormatError("not a zip file (no end of central directory)", item=str(path))
    _, _, _, _, count, _, cd_offset, _ = END.unpack_from(tail, at)
    locator_at = at - ZIP64_LOCATOR.size
    if locator_at >= 0 and ZIP64_LOCATOR.unpack_from(tail, locator_at)[0] == ZIP64_LOCATOR_SIG:
        fh.seek(ZIP64_LOCATOR.unpack_from(tail, locator_at)[2])
        record = fh.read(ZIP64_END.size)
        fields = ZIP64_END.unpack(record) if len(record) == ZIP64_END.size else None
        if fields is None or fields[0] != ZIP64_END_SIG:
            raise ZipFormatError("damaged ZIP64 end of central directory", item=str(path))
        count, cd_offset = fields[7], fields[9]
    return count, cd_offset


def _central_record(fh: IO[bytes], path: Path) -> tuple[str, str]:
    head = fh.read(CENTRAL_HEADER.size)
    fields = CENTRAL_HEADER.unpack(head) if len(head) == CENTRAL_HEADER.size else None
    if fields is None or fields[0] != CENTRAL_SIG:
        raise ZipFormatError("damaged central directory", item=str(path))
    flags, name_len, extra_len, comment_len = fields[3], fields[10], fields[11], fields[12]
    name = fh.read(name_len)
    fh.seek(extra_len, os.SEEK_CUR)
    comment = fh.read(comment_len)
    encoding = "utf-8" if flags & FLAG_UTF8 else "cp437"
    return name.decode(encoding, "replace"), comment.decode(encoding, "replace")

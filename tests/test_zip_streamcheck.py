"""The zip check made as a download's bytes arrive (annopull._zip.streamcheck)."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import pytest

from annopull._errors import ZipFormatError
from annopull._zip.streamcheck import StreamCheck


def _zip(compression: int, *, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for index in range(12):
            noise = rng.randbytes(rng.randrange(0, 3000))
            archive.writestr(f"d/e{index}.json", noise + b"x" * rng.randrange(0, 200_000))
        archive.writestr("empty", b"")
    return buffer.getvalue()


def _walk(data: bytes, step: int) -> StreamCheck:
    check = StreamCheck()
    for start in range(0, len(data), step):
        check.feed(data[start : start + step])
    return check


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("step", [1, 29, 4096, 1 << 20])
def test_every_entry_checked_whatever_the_chunks(
    tmp_path: Path, compression: int, step: int
) -> None:
    """Fed in any chunk sizes, a sound zip is decided from its central directory alone."""
    data = _zip(compression)
    path = tmp_path / "a.zip"
    path.write_bytes(data)
    check = _walk(data, step).finish(path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    assert check is not None
    assert (check.entries, check.total_uncompressed) == (
        len(infos),
        sum(i.file_size for i in infos),
    )


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_flipped_data_byte_fails_as_it_arrives(compression: int) -> None:
    """One changed byte in an entry's data is a ZipFormatError naming that entry, mid-stream."""
    data = bytearray(_zip(compression))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("d/e3.json")
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    with pytest.raises(ZipFormatError, match="corrupt zip entry") as caught:
        _walk(bytes(data), 65536)
    assert caught.value.item == "d/e3.json"


def test_a_truncated_zip_is_refused(tmp_path: Path) -> None:
    """Cut inside the entries, the walk is undecided; cut in the directory, it fails."""
    data = _zip(zipfile.ZIP_DEFLATED)
    half = tmp_path / "half.zip"
    half.write_bytes(data[: len(data) // 2])
    assert _walk(data[: len(data) // 2], 4096).finish(half) is None
    tail = tmp_path / "tail.zip"
    tail.write_bytes(data[:-40])
    with pytest.raises(ZipFormatError, match="cannot open zip"):
        _walk(data[:-40], 4096).finish(tail)


def test_a_directory_naming_other_bytes_is_refused(tmp_path: Path) -> None:
    """A central directory whose CRC differs from the entry that went by is a ZipFormatError."""
    data = bytearray(_zip(zipfile.ZIP_STORED))
    central = data.index(b"PK\x01\x02")
    data[central + 16] ^= 0xFF  # the first directory entry's CRC
    path = tmp_path / "a.zip"
    path.write_bytes(data)
    with pytest.raises(ZipFormatError, match="central directory does not match"):
        _walk(bytes(data), 4096).finish(path)


def test_data_descriptors_leave_it_undecided(tmp_path: Path) -> None:
    """An entry whose sizes follow its data (a streamed zip) makes the caller verify the file."""
    buffer = io.BytesIO()

    class Unseekable(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            return buffer.write(b)

    with zipfile.ZipFile(Unseekable(), "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.json", b"{}" * 1000)
    path = tmp_path / "a.zip"
    path.write_bytes(buffer.getvalue())
    check = _walk(buffer.getvalue(), 100)
    assert check.undecided is not None
    assert check.finish(path) is None

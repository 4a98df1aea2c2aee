from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from annopull._errors import UnsafeEntryError, ZipFormatError
from annopull._storage.local import LocalFile
from annopull._zip.reader import (
    ExtractLimits,
    extract_zip,
    iter_jsonl_member,
    read_entry_comments,
    verify_zip,
)
from annopull._zip.writer import ZipWriter


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


ENTRIES = {
    "a.json": b'{"a": 1}',
    "scènes/ü.json": b'{"b": 2}' * 1000,
    "deep/er/c.bin": bytes(range(256)) * 100,
}


async def write_zip(tmp_path: Path, entries: dict[str, bytes], *, compress: bool = True) -> Path:
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    rows = [
        await writer.add_entry(name, chunks(data), compress=compress, comment=f"c:{name}")
        for name, data in entries.items()
    ]
    await writer.close(rows)
    return target


def stdlib_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return path


@pytest.mark.anyio
async def test_verify_counts_entries_and_bytes(tmp_path: Path) -> None:
    """verify_zip reads every entry and reports the count and total uncompressed size."""
    check = await verify_zip(await write_zip(tmp_path, ENTRIES))
    assert check.entries == 3
    assert check.total_uncompressed == sum(map(len, ENTRIES.values()))


@pytest.mark.anyio
async def test_verify_names_the_corrupt_entry(tmp_path: Path) -> None:
    """A flipped data byte is reported as ZipFormatError carrying that entry's name."""
    path = await write_zip(tmp_path, ENTRIES, compress=False)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("deep/er/c.bin")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + 500] ^= 0xFF
    path.write_bytes(raw)
    with pytest.raises(ZipFormatError) as caught:
        await verify_zip(path)
    assert caught.value.item == "deep/er/c.bin"


@pytest.mark.anyio
async def test_verify_rejects_a_non_zip(tmp_path: Path) -> None:
    """A file that is not a zip raises ZipFormatError, not zipfile.BadZipFile."""
    path = tmp_path / "not.zip"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(ZipFormatError, match="cannot open zip"):
        await verify_zip(path)


@pytest.mark.anyio
async def test_extract_writes_every_file_and_no_temp_files(tmp_path: Path) -> None:
    """Extraction recreates each entry byte-identical and leaves no temporary files behind."""
    path = await write_zip(tmp_path, ENTRIES)
    dest = tmp_path / "dest"
    report = await extract_zip(path, dest)
    assert report.files == tuple(dest.resolve() / name for name in ENTRIES)
    assert report.bytes_written == sum(map(len, ENTRIES.values()))
    written = {
        p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()
    }
    assert written == ENTRIES


def _symlink_info() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.anyio
@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("../evil.txt", id="parent"),
        pytest.param("ok/../../evil.txt", id="nested-parent"),
        pytest.param("/etc/evil.txt", id="absolute"),
        pytest.param("C:/evil.txt", id="drive"),
        pytest.param("a\\..\\..\\evil.txt", id="backslash"),
        pytest.param(_symlink_info(), id="symlink"),
    ],
)
async def test_extract_refuses_zip_slip_before_writing_anything(
    tmp_path: Path, bad: zipfile.ZipInfo | str
) -> None:
    """One unsafe entry anywhere raises UnsafeEntryError and not a single file is written."""
    path = stdlib_zip(tmp_path / "evil.zip", [("safe.txt", b"safe"), (bad, b"/etc/passwd")])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeEntryError):
        await extract_zip(path, dest)
    assert list(tmp_path.rglob("evil.txt")) == []  # noqa: ASYNC240 - test inspection
    assert not dest.exists() or list(dest.iterdir()) == []


@pytest.mark.anyio
async def test_extract_refuses_symlinked_folder_in_dest(tmp_path: Path) -> None:
    """A folder in dest that is a symlink to elsewhere is not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    path = stdlib_zip(tmp_path / "x.zip", [("sub/file.txt", b"x")])
    with pytest.raises(UnsafeEntryError, match="symlinked folder"):
        await extract_zip(path, dest)
    assert list(outside.iterdir()) == []


@pytest.mark.anyio
async def test_jsonl_member_streams_every_object_across_batches(tmp_path: Path) -> None:
    """A multi-MiB JSON Lines member yields every object in order; blank lines are skipped."""
    objects = [{"i": i, "label": "ü" * (i % 40)} for i in range(60_000)]
    body = b"\n".join(orjson.dumps(o) for o in objects) + b"\n\n"
    path = await write_zip(tmp_path, {"export.jsonl": body, "other": b"x"})
    seen = [item async for item in iter_jsonl_member(path, "export.jsonl")]
    assert seen == objects


@pytest.mark.anyio
async def test_jsonl_member_without_final_newline(tmp_path: Path) -> None:
    """The last line counts even without a trailing newline."""
    path = await write_zip(tmp_path, {"e.jsonl": b'{"a": 1}\n{"b": 2}'})
    assert [item async for item in iter_jsonl_member(path, "e.jsonl")] == [{"a": 1}, {"b": 2}]


@pytest.mark.anyio
async def test_jsonl_member_errors_name_member_and_line(tmp_path: Path) -> None:
    """A bad line is reported with its line number; a missing member as ZipFormatError."""
    path = await write_zip(tmp_path, {"e.jsonl": b'{"a": 1}\n\n[1, 2]\n'})
    with pytest.raises(ZipFormatError, match="line 3 is not a JSON object") as caught:
        _ = [item async for item in iter_jsonl_member(path, "e.jsonl")]
    assert caught.value.item == "e.jsonl"
    with pytest.raises(ZipFormatError, match="no member 'absent'"):
        _ = [item async for item in iter_jsonl_member(path, "absent")]


@pytest.mark.anyio
async def test_read_entry_comments_returns_central_directory_comments(tmp_path: Path) -> None:
    """Each entry's comment (e.g. the annotation's created) comes back with its name."""
    path = await write_zip(tmp_path, ENTRIES)
    assert list(read_entry_comments(path)) == [(name, f"c:{name}") for name in ENTRIES]


@pytest.mark.anyio
async def test_extracted_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """Extracted files get the entry's mode less the umask, not mkstemp's 0600."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, mode in [("plain.txt", 0o644), ("script.sh", 0o755)]:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, b"x")
    await extract_zip(archive, tmp_path / "out")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out" / "plain.txt").stat().st_mode) == 0o644 & ~umask
    assert stat.S_IMODE((tmp_path / "out" / "script.sh").stat().st_mode) == 0o755 & ~umask


def test_entry_comments_streamed_past_zip64_count(tmp_path: Path) -> None:
    """Comments of a 70,000-entry zip (ZIP64 end records) match zipfile's, names in UTF-8."""
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(70_000):
            info = zipfile.ZipInfo(f"scène-{i}.json")
            info.comment = f"2024-01-01T00:00:{i % 60:02d}Z".encode()
            zf.writestr(info, b"{}")
    with zipfile.ZipFile(archive) as zf:
        expected = [(i.filename, i.comment.decode()) for i in zf.infolist()]
    assert list(read_entry_comments(archive)) == expected


def test_entry_comments_of_a_non_zip_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a zip raises ZipFormatError naming it, not a struct error."""
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not a zip at all" * 100)
    with pytest.raises(ZipFormatError, match="no end of central directory"):
        list(read_entry_comments(bogus))


def _bomb(path: Path, *, zeros: int = 0, data: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fine.json", b'{"ok": true}')
        archive.writestr("zeros.bin", bytes(zeros) + data)
    return path


@pytest.mark.anyio
async def test_extraction_refuses_an_entry_that_expands_past_the_ratio(tmp_path: Path) -> None:
    """An entry expanding more than max_ratio-fold is refused before anything is written."""
    bomb = _bomb(tmp_path / "bomb.zip", zeros=8 << 20)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UnsafeEntryError, match=r"expands \d+-fold"):
        await extract_zip(bomb, tmp_path / "out", limits=ExtractLimits(max_ratio=100))
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.anyio
async def test_extraction_refuses_an_archive_past_the_size_cap(tmp_path: Path) -> None:
    """All entries together past max_bytes are refused; under the caps the same zip extracts."""
    bomb = _bomb(tmp_path / "bomb.zip", data=os.urandom(2 << 20))
    with pytest.raises(UnsafeEntryError, match="more than the cap of 1000000"):
        await extract_zip(bomb, tmp_path / "out", limits=ExtractLimits(max_bytes=1_000_000))
    report = await extract_zip(bomb, tmp_path / "ok")
    assert report.bytes_written == (2 << 20) + len(b'{"ok": true}')
    assert (tmp_path / "ok" / "zeros.bin").stat().st_size == 2 << 20

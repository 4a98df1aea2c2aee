from __future__ import annotations

import io
import os
import sqlite3
import struct
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from annopull._errors import ResumeError, ZipFormatError
from annopull._pipeline.journal import Journal
from annopull._zip.writer import (
    BATCH_BYTES,
    LOCAL_HEADER,
    PADDING_EXTRA_ID,
    ZIP64_EXTRA_ID,
    ZipWriter,
    dos_datetime,
    sanitize_entry_name,
)

FINGERPRINT = {"project": "A"}


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def failing(data: bytes, error: BaseException) -> AsyncIterator[bytes]:
    async for chunk in chunks(data):
        yield chunk
    raise error


def new_journal(tmp_path: Path) -> Journal:
    return Journal.create(tmp_path / "out.journal", kind="zip", fingerprint=FINGERPRINT)


def read_all(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def local_extra(path: Path, name: str) -> bytes:
    """The extra field of ``name``'s local header, read from the raw bytes."""
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(name).header_offset
    raw = path.read_bytes()
    fields = LOCAL_HEADER.unpack_from(raw, offset)
    start = offset + LOCAL_HEADER.size + fields[9]
    return raw[start : start + fields[10]]


class NoSeekStream(io.RawIOBase):
    """A write-only stream that fails the test if anything seeks or asks its position."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        view = memoryview(b)  # type: ignore[arg-type]
        self.data += view
        return view.nbytes

    def seek(self, *args: object) -> int:
        raise AssertionError("descriptor mode must not seek")

    def tell(self) -> int:
        raise AssertionError("descriptor mode must not tell")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("a.json", "a.json", id="plain"),
        pytest.param("dir\\sub\\a.json", "dir/sub/a.json", id="backslashes"),
        pytest.param("C:\\Windows\\a.json", "Windows/a.json", id="drive"),
        pytest.param("/etc/passwd", "etc/passwd", id="absolute"),
        pytest.param("../../a/./b/../c.json", "a/b/c.json", id="dot-segments"),
        pytest.param("a//b/", "a/b", id="empty-segments"),
        pytest.param("scènes/ü.json", "scènes/ü.json", id="utf8"),
    ],
)
def test_sanitize_entry_name(raw: str, expected: str) -> None:
    """Names lose every part that could escape the extraction folder, and nothing else."""
    assert sanitize_entry_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "/", "..", "./..", "C:", "a\x00b"])
def test_sanitize_rejects_unusable_names(raw: str) -> None:
    """Names that are empty after sanitising, or hold a NUL, raise ZipFormatError."""
    with pytest.raises(ZipFormatError):
        sanitize_entry_name(raw)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        pytest.param(
            datetime(2024, 5, 17, 13, 45, 31), datetime(2024, 5, 17, 13, 45, 30), id="odd"
        ),
        pytest.param(datetime(1970, 1, 1), datetime(1980, 1, 1), id="before-1980"),
        pytest.param(datetime(2200, 1, 1), datetime(2107, 12, 31, 23, 59, 58), id="after-2107"),
        pytest.param(
            datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
            datetime(2024, 1, 1, 10),
            id="aware-to-utc",
        ),
    ],
)
def test_dos_datetime_clamps_and_rounds(when: datetime, expected: datetime) -> None:
    """DOS time keeps 2-second precision, converts aware times to UTC, clamps to 1980-2107."""
    dos_time, dos_date = dos_datetime(when)
    decoded = datetime(
        (dos_date >> 9) + 1980,
        (dos_date >> 5) & 0xF,
        dos_date & 0x1F,
        dos_time >> 11,
        (dos_time >> 5) & 0x3F,
        (dos_time & 0x1F) * 2,
    )
    assert decoded == expected


@pytest.mark.anyio
async def test_entries_round_trip_with_dedupe_comments_and_times(tmp_path: Path) -> None:
    """Stored and deflated entries read back byte-identical, duplicates get ' (n)' names,
    comments land in the central directory and mtimes in the headers."""
    target = tmp_path / "out.zip"
    when = datetime(2023, 3, 4, 5, 6, 8, tzinfo=UTC)
    writer = await ZipWriter.open(target, journal=new_journal(tmp_path))
    names = []
    for i, name in enumerate(["a.json", "./a.json", "a.json", "b", "/b"]):
        row = await writer.add_entry(
            name, chunks(b"%d" % i * 1000), compress=i % 2 == 0, mtime=when, comment=f"c{i}"
        )
        names.append(row.name)
    result = await writer.close()
    assert names == ["a.json", "a (2).json", "a (3).json", "b", "b (2)"]
    assert result.entries == 5
    assert result.path == target
    assert result.bytes_written == target.stat().st_size
    assert not (tmp_path / "out.zip.part").exists()
    assert not (tmp_path / "out.journal").exists()
    assert read_all(target) == {n: b"%d" % i * 1000 for i, n in enumerate(names)}
    with zipfile.ZipFile(target) as archive:
        infos = archive.infolist()
    assert [i.compress_type for i in infos] == [8, 0, 8, 0, 8]
    assert [i.comment for i in infos] == [b"c0", b"c1", b"c2", b"c3", b"c4"]
    assert {i.date_time for i in infos} == {(2023, 3, 4, 5, 6, 8)}


@pytest.mark.anyio
async def test_small_entries_stay_zip32_and_large_unknown_size_gets_padding(
    tmp_path: Path,
) -> None:
    """Entries without a size hint stay ZIP32: small ones have no extra, a multi-batch one
    has its reserved ZIP64 extra rewritten as padding and is recorded as zip64=False."""
    target = tmp_path / "out.zip"
    big = os.urandom(BATCH_BYTES) * 3
    writer = await ZipWriter.open(target, journal=new_journal(tmp_path))
    small_row = await writer.add_entry("small", chunks(b"x" * 5000))
    big_row = await writer.add_entry("big", chunks(big), compress=False)
    await writer.close()
    assert not small_row.zip64
    assert not big_row.zip64
    assert local_extra(target, "small") == b""
    extra = local_extra(target, "big")
    assert struct.unpack_from("<H", extra)[0] == PADDING_EXTRA_ID
    assert ZIP64_EXTRA_ID.to_bytes(2, "little") not in extra[:2]
    assert read_all(target)["big"] == big


@pytest.mark.anyio
async def test_failing_iterator_discards_only_that_entry(tmp_path: Path) -> None:
    """An exception from the chunks propagates unchanged, its partial bytes are cut away,
    and the writer goes on: the finished zip holds exactly the good entries."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(target, journal=new_journal(tmp_path))
    first = await writer.add_entry("good-1", chunks(b"1" * 10))
    boom = RuntimeError("network gone")
    for data in (b"small", os.urandom(BATCH_BYTES * 2 + 5)):
        with pytest.raises(RuntimeError) as info:
            await writer.add_entry("bad", failing(data, boom))
        assert info.value is boom
    second = await writer.add_entry("good-2", chunks(b"2" * 10))
    assert second.offset == first.end_offset
    await writer.close()
    assert read_all(target) == {"good-1": b"1" * 10, "good-2": b"2" * 10}


@pytest.mark.anyio
async def test_size_hint_keeps_a_multi_batch_entry_zip32(tmp_path: Path) -> None:
    """A streamed entry with a known size below the ZIP32 bound gets no ZIP64 extra at all."""
    target = tmp_path / "out.zip"
    data = os.urandom(BATCH_BYTES * 2 + 1)
    writer = await ZipWriter.open(target, journal=new_journal(tmp_path))
    row = await writer.add_entry("hinted", chunks(data), size_hint=len(data))
    await writer.close()
    assert not row.zip64
    assert local_extra(target, "hinted") == b""
    assert read_all(target) == {"hinted": data}


@pytest.mark.anyio
async def test_descriptor_mode_never_seeks_and_always_deflates(tmp_path: Path) -> None:
    """A stream target is written front to back only; compress=False still deflates; the
    result has descriptors only for multi-batch entries and reads back identical."""
    stream = NoSeekStream()
    big = os.urandom(BATCH_BYTES + 100)
    writer = await ZipWriter.open(stream, journal=Journal.temporary(kind="zip"))
    await writer.add_entry("small", chunks(b"s" * 100), compress=False)
    await writer.add_entry("big", chunks(big), size_hint=len(big))
    await writer.add_entry("small", chunks(b"t" * 100))
    result = await writer.close()
    assert result.path is None
    assert result.bytes_written == len(stream.data)
    path = tmp_path / "s.zip"
    path.write_bytes(stream.data)
    assert read_all(path) == {"small": b"s" * 100, "big": big, "small (2)": b"t" * 100}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    assert [i.compress_type for i in infos] == [8, 8, 8]
    assert [bool(i.flag_bits & 0x08) for i in infos] == [False, True, False]


@pytest.mark.anyio
async def test_descriptor_mode_failure_after_first_batch_breaks_the_writer() -> None:
    """In descriptor mode a failure inside the first batch leaves the stream intact, but one
    after bytes went out marks the writer failed for every later call."""
    stream = NoSeekStream()
    writer = await ZipWriter.open(stream, journal=Journal.temporary(kind="zip"))
    with pytest.raises(ValueError, match="early"):
        await writer.add_entry("a", failing(b"x" * 10, ValueError("early")))
    assert len(stream.data) == 0
    await writer.add_entry("b", chunks(b"ok"))
    with pytest.raises(ValueError, match="late"):
        await writer.add_entry("c", failing(os.urandom(2 * BATCH_BYTES), ValueError("late")))
    with pytest.raises(ZipFormatError, match="broken"):
        await writer.add_entry("d", chunks(b"more"))
    await writer.abort()


@pytest.mark.anyio
async def test_resume_after_abort_truncates_torn_tail(tmp_path: Path) -> None:
    """After abort(), garbage appended to .part is cut off on resume and the finished zip
    holds the old and new entries, byte-identical."""
    target = tmp_path / "out.zip"
    journal_path = tmp_path / "out.journal"
    async with await ZipWriter.open(target, journal=new_journal(tmp_path)) as writer:
        await writer.add_entry("one", chunks(b"1" * 3000))
        await writer.add_entry("two", chunks(b"2" * 3000), compress=False)
        await writer.abort()
    part = tmp_path / "out.zip.part"
    size = part.stat().st_size
    with part.open("ab") as f:
        f.write(b"PK\x03\x04torn half-written entry")
    journal = Journal.open_existing(journal_path, kind="zip", fingerprint=FINGERPRINT)
    writer = await ZipWriter.open(target, journal=journal, resume=True)
    assert part.stat().st_size == size
    row = await writer.add_entry("one", chunks(b"3" * 3000))
    await writer.close()
    assert row.name == "one (2)"
    assert read_all(target) == {"one": b"1" * 3000, "two": b"2" * 3000, "one (2)": b"3" * 3000}


@pytest.mark.anyio
async def test_async_with_exception_aborts_and_keeps_resume_state(tmp_path: Path) -> None:
    """Leaving `async with` by an exception keeps .part and a committed journal."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(
        target, journal=new_journal(tmp_path), commit_every=1000, commit_interval=3600
    )

    async def fail_inside() -> None:
        async with writer:
            await writer.add_entry("kept", chunks(b"k"))
            raise KeyError("stop")

    with pytest.raises(KeyError):
        await fail_inside()
    journal = Journal.open_existing(tmp_path / "out.journal", kind="zip", fingerprint=FINGERPRINT)
    assert [e.name for e in journal.entries()] == ["kept"]
    journal.close()
    assert (tmp_path / "out.zip.part").exists()
    assert not target.exists()


@pytest.mark.anyio
async def test_commit_every_makes_rows_durable(tmp_path: Path) -> None:
    """With commit_every=3 the journal on disk shows rows in steps of 3."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(
        target, journal=new_journal(tmp_path), commit_every=3, commit_interval=3600
    )
    seen = []
    for i in range(7):
        await writer.add_entry(f"e{i}", chunks(b"e"))
        with sqlite3.connect(tmp_path / "out.journal") as other:
            seen.append(other.execute("SELECT count(*) FROM entries").fetchone()[0])
    await writer.abort()
    assert seen == [0, 0, 3, 3, 3, 6, 6]


@pytest.mark.anyio
async def test_resume_refuses_mismatched_part(tmp_path: Path) -> None:
    """Resume fails with ResumeError when .part is missing, too short, or has another
    entry at the journal's last offset."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(target, journal=new_journal(tmp_path))
    await writer.add_entry("only", chunks(b"o" * 100))
    await writer.abort()
    part = tmp_path / "out.zip.part"
    good = part.read_bytes()

    async def resume() -> None:
        journal = Journal.open_existing(
            tmp_path / "out.journal", kind="zip", fingerprint=FINGERPRINT
        )
        try:
            await ZipWriter.open(target, journal=journal, resume=True)
        finally:
            journal.close()

    part.write_bytes(good[:-10])
    with pytest.raises(ResumeError, match="expects at least"):
        await resume()
    part.write_bytes(good.replace(b"only", b"ONLY"))
    with pytest.raises(ResumeError, match="no header for 'only'"):
        await resume()
    part.unlink()
    with pytest.raises(ResumeError, match="no partial archive"):
        await resume()


@pytest.mark.anyio
async def test_fresh_archive_refuses_nonempty_journal_and_streams_refuse_resume(
    tmp_path: Path,
) -> None:
    """A non-resume open with a used journal, and resume on a stream, raise ResumeError."""
    journal = new_journal(tmp_path)
    writer = await ZipWriter.open(tmp_path / "a.zip", journal=journal)
    await writer.add_entry("x", chunks(b"x"))
    with pytest.raises(ResumeError, match="already holds entries"):
        await ZipWriter.open(tmp_path / "b.zip", journal=journal)
    with pytest.raises(ResumeError, match="cannot be resumed"):
        await ZipWriter.open(NoSeekStream(), journal=journal, resume=True)  # type: ignore[arg-type]
    await writer.abort()


@pytest.mark.anyio
async def test_closed_writer_refuses_more_entries(tmp_path: Path) -> None:
    """add_entry and close after close() raise ZipFormatError instead of corrupting the zip."""
    writer = await ZipWriter.open(tmp_path / "a.zip", journal=new_journal(tmp_path))
    await writer.close()
    with pytest.raises(ZipFormatError, match="closed"):
        await writer.add_entry("late", chunks(b"x"))
    with pytest.raises(ZipFormatError, match="closed"):
        await writer.close()
    assert read_all(tmp_path / "a.zip") == {}

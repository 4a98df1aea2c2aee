"""ZipWriter over LocalFile (patch mode) and StreamStorage (descriptor mode), read by zipfile."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from annopull._errors import ResumeError, ZipFormatError
from annopull._storage.local import LocalFile
from annopull._storage.stream import StreamStorage
from annopull._zip.records import LOCAL_HEADER, PADDING_EXTRA_ID, ZIP64_EXTRA_ID, CentralRow
from annopull._zip.writer import BATCH_BYTES, WholeEntry, ZipWriter


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def failing(data: bytes, error: BaseException) -> AsyncIterator[bytes]:
    async for chunk in chunks(data):
        yield chunk
    raise error


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


def stream_storage(stream: NoSeekStream) -> StreamStorage:
    return StreamStorage(stream)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_entries_round_trip_with_sanitised_names_comments_and_times(tmp_path: Path) -> None:
    """Stored and deflated entries read back byte-identical under their sanitised names,
    comments land in the central directory and mtimes in the headers; only the zip remains."""
    target = tmp_path / "out.zip"
    when = datetime(2023, 3, 4, 5, 6, 8, tzinfo=UTC)
    writer = await ZipWriter.open(LocalFile(target))
    rows = []
    for i, name in enumerate(["a.json", "./b.json", "c\\d.json", "/e", "f"]):
        rows.append(
            await writer.add_entry(
                name, chunks(b"%d" % i * 1000), compress=i % 2 == 0, mtime=when, comment=f"c{i}"
            )
        )
    result = await writer.close(rows)
    names = [row.name for row in rows]
    assert names == ["a.json", "b.json", "c/d.json", "e", "f"]
    assert result.entries == 5
    assert result.bytes_written == target.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zip"]  # noqa: ASYNC240 - test inspection
    assert read_all(target) == {n: b"%d" % i * 1000 for i, n in enumerate(names)}
    with zipfile.ZipFile(target) as archive:
        infos = archive.infolist()
    assert [i.compress_type for i in infos] == [8, 0, 8, 0, 8]
    assert [i.comment for i in infos] == [b"c0", b"c1", b"c2", b"c3", b"c4"]
    assert {i.date_time for i in infos} == {(2023, 3, 4, 5, 6, 8)}
    assert [i.header_offset for i in infos] == [row.offset for row in rows]


@pytest.mark.anyio
async def test_small_entries_stay_zip32_and_large_unknown_size_gets_padding(
    tmp_path: Path,
) -> None:
    """Entries without a size hint stay ZIP32: small ones have no extra, a multi-batch one
    has its reserved ZIP64 extra rewritten as padding and is recorded as zip64=False."""
    target = tmp_path / "out.zip"
    big = os.urandom(BATCH_BYTES) * 3
    writer = await ZipWriter.open(LocalFile(target))
    small_row = await writer.add_entry("small", chunks(b"x" * 5000))
    big_row = await writer.add_entry("big", chunks(big), compress=False)
    await writer.close([small_row, big_row])
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
    writer = await ZipWriter.open(LocalFile(target))
    first = await writer.add_entry("good-1", chunks(b"1" * 10))
    boom = RuntimeError("network gone")
    for data in (b"small", os.urandom(BATCH_BYTES * 2 + 5)):
        with pytest.raises(RuntimeError) as info:
            await writer.add_entry("bad", failing(data, boom))
        assert info.value is boom
    second = await writer.add_entry("good-2", chunks(b"2" * 10))
    assert second.offset == first.end_offset
    await writer.close([first, second])
    assert read_all(target) == {"good-1": b"1" * 10, "good-2": b"2" * 10}


@pytest.mark.anyio
async def test_size_hint_keeps_a_multi_batch_entry_zip32(tmp_path: Path) -> None:
    """A streamed entry with a known size below the ZIP32 bound gets no ZIP64 extra at all."""
    target = tmp_path / "out.zip"
    data = os.urandom(BATCH_BYTES * 2 + 1)
    writer = await ZipWriter.open(LocalFile(target))
    row = await writer.add_entry("hinted", chunks(data), size_hint=len(data))
    await writer.close([row])
    assert not row.zip64
    assert local_extra(target, "hinted") == b""
    assert read_all(target) == {"hinted": data}


@pytest.mark.anyio
async def test_descriptor_mode_never_seeks_and_always_deflates(tmp_path: Path) -> None:
    """A stream target is written front to back only; compress=False still deflates; the
    result has descriptors only for multi-batch entries and reads back identical."""
    stream = NoSeekStream()
    big = os.urandom(BATCH_BYTES + 100)
    writer = await ZipWriter.open(stream_storage(stream))
    assert not writer.seekable
    rows = [
        await writer.add_entry("small", chunks(b"s" * 100), compress=False),
        await writer.add_entry("big", chunks(big), size_hint=len(big)),
        await writer.add_entry("small-2", chunks(b"t" * 100)),
    ]
    result = await writer.close(rows)
    assert result.entries == 3
    assert result.bytes_written == len(stream.data)
    path = tmp_path / "s.zip"
    path.write_bytes(stream.data)
    assert read_all(path) == {"small": b"s" * 100, "big": big, "small-2": b"t" * 100}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    assert [i.compress_type for i in infos] == [8, 8, 8]
    assert [bool(i.flag_bits & 0x08) for i in infos] == [False, True, False]


@pytest.mark.anyio
async def test_descriptor_mode_failure_after_first_batch_breaks_the_writer() -> None:
    """In descriptor mode a failure inside the first batch leaves the stream intact, but one
    after bytes went out marks the writer failed for every later call."""
    stream = NoSeekStream()
    writer = await ZipWriter.open(stream_storage(stream))
    with pytest.raises(ValueError, match="early"):
        await writer.add_entry("a", failing(b"x" * 10, ValueError("early")))
    assert len(stream.data) == 0
    await writer.add_entry("b", chunks(b"ok"))
    with pytest.raises(ValueError, match="late"):
        await writer.add_entry("c", failing(os.urandom(2 * BATCH_BYTES), ValueError("late")))
    with pytest.raises(ZipFormatError, match="broken"):
        await writer.add_entry("d", chunks(b"more"))
    with pytest.raises(ZipFormatError, match="broken"):
        await writer.add_whole_entries([WholeEntry(name="e", data=b"more")])
    await writer.abort()


@pytest.mark.anyio
async def test_resume_after_abort_truncates_torn_tail(tmp_path: Path) -> None:
    """After abort(), garbage appended to .part is cut off on resume and the finished zip
    holds the old and new entries, byte-identical."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    rows = [
        await writer.add_entry("one", chunks(b"1" * 3000)),
        await writer.add_entry("two", chunks(b"2" * 3000), compress=False),
    ]
    await writer.abort()
    part = tmp_path / "out.zip.part"
    size = part.stat().st_size
    assert size == rows[-1].end_offset
    with part.open("ab") as f:
        f.write(b"PK\x03\x04torn half-written entry")
    writer = await ZipWriter.open(LocalFile(target), resume=True, resume_after=rows[-1])
    assert part.stat().st_size == size
    row = await writer.add_entry("three", chunks(b"3" * 3000))
    assert row.offset == size
    # The rows come back through their bytes, as the ledger hands them to a resumed run.
    await writer.close(CentralRow.decode(r.encode()) for r in [*rows, row])
    assert read_all(target) == {"one": b"1" * 3000, "two": b"2" * 3000, "three": b"3" * 3000}


@pytest.mark.anyio
async def test_abort_keeps_the_synced_part_and_publishes_nothing(tmp_path: Path) -> None:
    """abort() leaves a .part holding every written entry, no zip, and a writer that refuses
    more work; a second abort() does nothing."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    row = await writer.add_entry("kept", chunks(b"k" * 100))
    await writer.abort()
    await writer.abort()
    part = tmp_path / "out.zip.part"
    assert part.stat().st_size == row.end_offset
    assert not target.exists()
    with pytest.raises(ZipFormatError, match="closed"):
        await writer.add_entry("late", chunks(b"x"))
    with pytest.raises(ZipFormatError, match="closed"):
        await writer.close([row])
    assert not target.exists()


@pytest.mark.anyio
async def test_flushed_rows_let_a_resumed_writer_continue_and_later_rows_are_cut(
    tmp_path: Path,
) -> None:
    """flush() then keeping the rows is a checkpoint: a writer resumed after rows[-1] cuts
    away every entry written after it and continues right at its end."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    kept = [await writer.add_entry(f"e{i}", chunks(b"%d" % i * 500)) for i in range(3)]
    await writer.flush()
    lost = [await writer.add_entry(f"lost{i}", chunks(b"L" * 500)) for i in range(2)]
    await writer.flush()
    await writer.abort()
    part = tmp_path / "out.zip.part"
    assert part.stat().st_size == lost[-1].end_offset > kept[-1].end_offset
    writer = await ZipWriter.open(LocalFile(target), resume=True, resume_after=kept[-1])
    assert part.stat().st_size == kept[-1].end_offset
    more = await writer.add_entry("e3", chunks(b"3" * 500))
    assert more.offset == kept[-1].end_offset
    result = await writer.close([*kept, more])
    assert result.entries == 4
    assert read_all(target) == {f"e{i}": b"%d" % i * 500 for i in range(4)}


@pytest.mark.anyio
async def test_resume_with_no_kept_rows_starts_from_nothing(tmp_path: Path) -> None:
    """resume=True with resume_after=None (nothing was durable yet) cuts the .part to zero."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    await writer.add_entry("unrecorded", chunks(b"u" * 100))
    await writer.abort()
    writer = await ZipWriter.open(LocalFile(target), resume=True, resume_after=None)
    assert (tmp_path / "out.zip.part").stat().st_size == 0
    row = await writer.add_entry("first", chunks(b"f"))
    await writer.close([row])
    assert read_all(target) == {"first": b"f"}


@pytest.mark.anyio
async def test_resume_refuses_mismatched_part(tmp_path: Path) -> None:
    """Resume fails with ResumeError when .part is missing, too short, or has another
    entry at the last row's offset."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    row = await writer.add_entry("only", chunks(b"o" * 100))
    await writer.abort()
    part = tmp_path / "out.zip.part"
    good = part.read_bytes()

    async def resume() -> None:
        resumed = await ZipWriter.open(LocalFile(target), resume=True, resume_after=row)
        await resumed.abort()

    part.write_bytes(good[:-10])
    with pytest.raises(ResumeError, match="at least") as caught:
        await resume()
    assert caught.value.item == str(target)
    part.write_bytes(good.replace(b"only", b"ONLY"))
    with pytest.raises(ResumeError, match="no header for 'only'"):
        await resume()
    part.unlink()
    with pytest.raises(ResumeError, match="missing") as caught:
        await resume()
    assert caught.value.item == str(part)
    assert not part.exists(), "a resume must not make an empty .part in place of a lost one"


@pytest.mark.anyio
async def test_fresh_open_replaces_a_leftover_part_and_streams_refuse_resume(
    tmp_path: Path,
) -> None:
    """A non-resume open starts the .part afresh (no old entry survives); resume on a stream
    raises ResumeError."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    await writer.add_entry("old", chunks(b"x" * 100))
    await writer.abort()
    writer = await ZipWriter.open(LocalFile(target))
    row = await writer.add_entry("new", chunks(b"y"))
    assert row.offset == 0
    await writer.close([row])
    assert read_all(target) == {"new": b"y"}
    with pytest.raises(ResumeError, match="cannot be resumed"):
        await ZipWriter.open(stream_storage(NoSeekStream()), resume=True, resume_after=row)


@pytest.mark.anyio
async def test_closed_writer_refuses_more_entries(tmp_path: Path) -> None:
    """add_entry, add_whole_entries and close after close() raise ZipFormatError instead of
    corrupting the zip."""
    writer = await ZipWriter.open(LocalFile(tmp_path / "a.zip"))
    await writer.close([])
    with pytest.raises(ZipFormatError, match="closed"):
        await writer.add_entry("late", chunks(b"x"))
    with pytest.raises(ZipFormatError, match="closed"):
        await writer.add_whole_entries([WholeEntry(name="late", data=b"x")])
    with pytest.raises(ZipFormatError, match="closed"):
        await writer.close([])
    assert read_all(tmp_path / "a.zip") == {}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "seekable", [pytest.param(True, id="patch-mode"), pytest.param(False, id="descriptor-mode")]
)
async def test_add_whole_entries_answers_a_refused_entry_in_its_place(
    tmp_path: Path, seekable: bool
) -> None:
    """Each unusable entry (NUL name, nothing-left name, overlong comment) gets its
    ZipFormatError at its index; the others are written back to back and read back intact."""
    target = tmp_path / "out.zip"
    stream = NoSeekStream()
    storage = LocalFile(target) if seekable else stream_storage(stream)
    writer = await ZipWriter.open(storage)
    when = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
    entries = [
        WholeEntry(name="ok-1.json", data=b"1" * 300, mtime=when, comment="c1"),
        WholeEntry(name="\x00", data=b"nul"),
        WholeEntry(name="ok-2.json", data=b"2" * 300, compress=False),
        WholeEntry(name="../", data=b"parent"),
        WholeEntry(name="long-comment", data=b"c", comment="c" * 0x10000),
        WholeEntry(name="dir/ok-3.json", data=b""),
    ]
    answers = await writer.add_whole_entries(entries)
    assert [type(a) for a in answers] == [
        CentralRow,
        ZipFormatError,
        CentralRow,
        ZipFormatError,
        ZipFormatError,
        CentralRow,
    ]
    refused = [a for a in answers if isinstance(a, ZipFormatError)]
    assert [e.item for e in refused] == ["'\\x00'", "'../'", "long-comment"]
    assert "NUL" in refused[0].reason
    assert "empty" in refused[1].reason
    assert "comment" in refused[2].reason
    rows = [a for a in answers if isinstance(a, CentralRow)]
    assert [r.name for r in rows] == ["ok-1.json", "ok-2.json", "dir/ok-3.json"]
    assert [r.offset for r in rows[1:]] == [r.end_offset for r in rows[:-1]]
    await writer.close(rows)
    if not seekable:
        target.write_bytes(stream.data)
    assert read_all(target) == {
        "ok-1.json": b"1" * 300,
        "ok-2.json": b"2" * 300,
        "dir/ok-3.json": b"",
    }
    with zipfile.ZipFile(target) as archive:
        infos = archive.infolist()
    assert [i.comment for i in infos] == [b"c1", b"", b""]
    assert infos[0].date_time == (2024, 6, 1, 12, 0, 0)
    # compress=False stores in patch mode; a stream always deflates.
    assert [i.compress_type for i in infos] == [8, 0 if seekable else 8, 8]
    assert not any(i.flag_bits & 0x08 for i in infos)


@pytest.mark.anyio
async def test_add_entry_refuses_an_unusable_name_and_writes_nothing(tmp_path: Path) -> None:
    """A NUL or empty name raises ZipFormatError before any byte is written; the writer goes on."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    for bad in ("a\x00b", "/./", "x" * 0x10000):
        with pytest.raises(ZipFormatError):
            await writer.add_entry(bad, chunks(b"data"))
    row = await writer.add_entry("good", chunks(b"g"))
    assert row.offset == 0
    await writer.close([row])
    assert read_all(target) == {"good": b"g"}


@pytest.mark.anyio
async def test_writer_keeps_duplicate_names_as_given(tmp_path: Path) -> None:
    """The writer no longer dedupes: two entries of one name both land under that name
    (making names unique is the pipeline's job, see name_candidates)."""
    target = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(target))
    rows = [
        await writer.add_entry("a.json", chunks(b"first")),
        await writer.add_entry("./a.json", chunks(b"second")),
    ]
    await writer.close(rows)
    assert [r.name for r in rows] == ["a.json", "a.json"]
    with zipfile.ZipFile(target) as archive:
        assert [(i.filename, archive.read(i)) for i in archive.infolist()] == [
            ("a.json", b"first"),
            ("a.json", b"second"),
        ]


@pytest.mark.anyio
async def test_bad_compress_level_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    """compress_level outside 0-9 raises ZipFormatError and creates no .part."""
    with pytest.raises(ZipFormatError, match="compress_level"):
        await ZipWriter.open(LocalFile(tmp_path / "out.zip"), compress_level=10)
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 - test inspection

"""The pure record layer of annopull._zip.records: DOS times, CentralRow bytes, header builders."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from datetime import datetime, timedelta, timezone

import pytest

from annopull._zip.records import (
    CENTRAL_HEADER,
    FLAG_DESCRIPTOR,
    FLAG_UTF8,
    STORED,
    U32_MAX,
    CentralRow,
    central_header,
    dos_datetime,
    end_records,
    local_header,
)

GIB = 1 << 30


def row(**overrides: object) -> CentralRow:
    values: dict[str, object] = {
        "name": "scene-1.json",
        "offset": 100,
        "end_offset": 190,
        "crc32": 0xDEADBEEF,
        "compressed_size": 50,
        "uncompressed_size": 61,
        "method": 8,
        "flags": 0,
        "dos_time": 1234,
        "dos_date": 5678,
        "zip64": False,
        "comment": "created-1",
    }
    values.update(overrides)
    return CentralRow(**values)  # type: ignore[arg-type]


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


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(row(), id="plain"),
        pytest.param(row(comment=""), id="no-comment"),
        pytest.param(
            row(
                offset=5 * GIB + 3,
                end_offset=10 * GIB + 99,
                compressed_size=5 * GIB + 17,
                uncompressed_size=U32_MAX + 1,
                crc32=U32_MAX,
                flags=FLAG_DESCRIPTOR | FLAG_UTF8,
                zip64=True,
            ),
            id="zip64-sizes-and-offset",
        ),
        pytest.param(
            row(name="scènes/ü-🚗.json", comment="créé 2024-01-01T00:00:00Z ✓", flags=FLAG_UTF8),
            id="utf8-name-and-comment",
        ),
        pytest.param(row(name="n" * 0xFFFF, comment="c" * 0xFFFF), id="longest-name-and-comment"),
        pytest.param(row(method=STORED, dos_time=0xFFFF, dos_date=0xFFFF), id="field-maxima"),
    ],
)
def test_central_row_round_trips_through_bytes(original: CentralRow) -> None:
    """decode(encode(row)) gives back every field, including ZIP64-sized values and UTF-8."""
    encoded = original.encode()
    assert isinstance(encoded, bytes)
    assert CentralRow.decode(encoded) == original


def test_central_row_bytes_are_compact() -> None:
    """A row costs a fixed header plus its name and comment bytes, nothing per field name."""
    small = row(name="a", comment="")
    utf8 = row(name="ü", comment="é")
    assert len(utf8.encode()) == len(small.encode()) + 3  # "ü" is 2 bytes, "é" 2 (vs 1 + 0)


def test_central_header_puts_only_sentinel_fields_in_its_zip64_extra() -> None:
    """Sizes past 4 GiB become 0xFFFFFFFF and exactly those go to the extra; the offset stays."""
    entry = row(
        offset=1000,
        compressed_size=5 * GIB,
        uncompressed_size=6 * GIB,
        end_offset=1000 + 30 + len("scene-1.json") + 20 + 5 * GIB,
        zip64=True,
    )
    header = central_header(entry)
    fields = CENTRAL_HEADER.unpack_from(header)
    compressed, uncompressed, name_len, extra_len = fields[8], fields[9], fields[10], fields[11]
    offset = fields[16]
    assert (compressed, uncompressed, offset) == (U32_MAX, U32_MAX, 1000)
    extra = header[CENTRAL_HEADER.size + name_len : CENTRAL_HEADER.size + name_len + extra_len]
    assert struct.unpack_from("<HHQQ", extra) == (0x0001, 16, 6 * GIB, 5 * GIB)


def test_builders_alone_make_a_zip_that_zipfile_reads() -> None:
    """A local header, data, central header and end record from the builders read back intact."""
    data = "grüße\n".encode() * 100
    name = "dir/grüße.txt".encode()
    dos_time, dos_date = dos_datetime(datetime(2024, 2, 29, 12, 30, 10))
    crc = zlib.crc32(data)
    head = local_header(
        name=name,
        flags=FLAG_UTF8,
        method=STORED,
        dos_time=dos_time,
        dos_date=dos_date,
        crc=crc,
        compressed=len(data),
        uncompressed=len(data),
        version=20,
    )
    entry = CentralRow(
        name=name.decode(),
        offset=0,
        end_offset=len(head) + len(data),
        crc32=crc,
        compressed_size=len(data),
        uncompressed_size=len(data),
        method=STORED,
        flags=FLAG_UTF8,
        dos_time=dos_time,
        dos_date=dos_date,
        zip64=False,
        comment="ünïcode comment",
    )
    directory = central_header(entry)
    raw = head + data + directory
    raw += end_records(entries=1, cd_offset=len(head) + len(data), cd_size=len(directory))
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        assert archive.testzip() is None
        (info,) = archive.infolist()
        assert info.filename == "dir/grüße.txt"
        assert info.comment.decode() == "ünïcode comment"
        assert info.date_time == (2024, 2, 29, 12, 30, 10)
        assert archive.read(info) == data


@pytest.mark.parametrize(
    ("entries", "cd_offset", "zip64"),
    [
        pytest.param(3, 1000, False, id="small"),
        pytest.param(0xFFFF, 1000, True, id="entry-count"),
        pytest.param(3, U32_MAX, True, id="cd-offset"),
    ],
)
def test_end_records_add_zip64_records_only_when_needed(
    entries: int, cd_offset: int, zip64: bool
) -> None:
    """The ZIP64 end record and locator appear exactly when a classic field would overflow."""
    tail = end_records(entries=entries, cd_offset=cd_offset, cd_size=46)
    assert tail[-22:-18] == b"PK\x05\x06"
    assert (b"PK\x06\x06" in tail) is zip64
    assert (b"PK\x06\x07" in tail) is zip64
    assert len(tail) == (22 + 56 + 20 if zip64 else 22)

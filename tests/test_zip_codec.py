"""The zip's deflate and CRC-32: ISA-L's (the speed extra) or zlib's, each a valid zip."""

from __future__ import annotations

import importlib.util
import random
import shutil
import zipfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from annopull._storage.local import LocalFile
from annopull._zip import codec
from annopull._zip.writer import BATCH_BYTES, ZipWriter

HAS_ISAL = importlib.util.find_spec("isal") is not None


@pytest.fixture(params=["zlib", "isal"])
def deflate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with this deflate; the other one is hidden."""
    if request.param == "isal":
        if not HAS_ISAL:
            pytest.skip("isal (annopull[speed]) is not installed")
        monkeypatch.setattr(codec, "_ISAL", importlib.import_module("isal.isal_zlib"))
    else:
        monkeypatch.setattr(codec, "_ISAL", None)
    return str(request.param)


def _document(size: int, seed: int) -> bytes:
    """JSON-like bytes that compress as OpenLABEL does (repeated keys, random ids)."""
    rng = random.Random(seed)
    parts = []
    for _ in range(size // 50 + 1):
        parts.append(f'{{"uuid": "{rng.getrandbits(128):032x}", "val": [{rng.random():.6f}]}}, ')
    return "".join(parts).encode()[:size]


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("level", [1, 5, 9])
def test_deflater_pieces_primed_and_flushed_join_into_one_stream(deflate: str, level: int) -> None:
    """Pieces primed with the window before them join into the original (pigz's way)."""
    data = _document(300_000, seed=level)
    window = 32 << 10
    out = b""
    for start in range(0, len(data), 100_000):
        primer = data[max(0, start - window) : start] or None
        packer = codec.raw_deflater(level, primer)
        last = start + 100_000 >= len(data)
        out += packer.compress(data[start : start + 100_000])
        out += packer.flush(codec.Z_FINISH if last else codec.Z_SYNC_FLUSH)
    assert zlib.decompress(out, -15) == data
    assert len(out) < len(data) // 2


def test_crc32_is_zlib_s() -> None:
    """Whichever library computes it, a CRC is zlib's value (it goes in the zip's headers)."""
    data = _document(70_000, seed=3)
    assert codec.crc32(data, 0) == zlib.crc32(data)
    assert codec.crc32(memoryview(data)[1000:], zlib.crc32(data[:1000])) == zlib.crc32(data)


@pytest.mark.anyio
async def test_archive_of_small_and_multi_piece_entries_reads_back(
    deflate: str, tmp_path: Path
) -> None:
    """A zip written with this deflate (entries of one piece and of many) tests clean."""
    entries = {
        "small.json": _document(4_000, seed=1),
        "big.json": _document(3 * BATCH_BYTES + 12_345, seed=2),
    }
    path = tmp_path / "out.zip"
    writer = await ZipWriter.open(LocalFile(path), compress_level=1)
    rows = [await writer.add_entry(name, chunks(data)) for name, data in entries.items()]
    await writer.close(rows)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert {i.filename: archive.read(i) for i in archive.infolist()} == entries
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in archive.infolist())
    if shutil.which("unzip"):
        tested = await anyio.run_process(["unzip", "-t", str(path)], check=False)
        assert tested.returncode == 0, tested.stdout

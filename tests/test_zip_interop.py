"""Archives written by ZipWriter, checked by every independent reader in tests/zip_readers.py."""

from __future__ import annotations

import random
import subprocess
import sys
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import pytest

from annopull._pipeline.ledger import Ledger, LedgerRow
from annopull._storage.local import LocalFile
from annopull._storage.stream import StreamStorage
from annopull._zip.names import name_candidates, sanitize_entry_name
from annopull._zip.records import CentralRow
from annopull._zip.writer import BATCH_BYTES, ZipResult, ZipWriter
from zip_readers import READERS, Manifest

FINGERPRINT = {"project": "interop"}
GIB = 1 << 30
Builder = Callable[[Path], Manifest]


async def chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def repeated(block: bytes, total: int) -> AsyncIterator[bytes]:
    """``total`` bytes made of ``block`` repeated (cheap data for multi-GiB entries)."""
    sent = 0
    while sent < total:
        piece = block[: total - sent]
        sent += len(piece)
        yield piece


def payload(i: int) -> bytes:
    """Deterministic, varied entry data; every 37th entry is empty."""
    if i % 37 == 0:
        return b""
    return (f'{{"scene": {i}, "label": "ü-{"x" * (i % 50)}"}}\n' * (1 + i % 7)).encode()


def entry_name(i: int) -> str:
    return f"scènes/{i // 100:03d}/{i:05d}.json" if i % 3 else f"flat-{i:05d}.json"


def manifest_of(items: dict[str, bytes]) -> Manifest:
    return {name: (len(data), zlib.crc32(data)) for name, data in items.items()}


def ledger_row(row: CentralRow) -> LedgerRow:
    """The ledger row the pipeline keeps for a written entry: its name, comment and receipt."""
    return LedgerRow(key=row.name, version=row.comment, name=row.name, receipt=row.encode())


class Output:
    """A writer and what the pull pipeline keeps beside it: unique names and every row.

    Names are made unique the pipeline's way (sanitise, first free ``name_candidates``). With
    a ledger, each row is recorded as its receipt and every ``commit_every`` rows is a
    checkpoint: the archive is flushed first, then the ledger committed.
    """

    def __init__(
        self, writer: ZipWriter, *, ledger: Ledger | None = None, commit_every: int = 50
    ) -> None:
        self.writer = writer
        self.ledger = ledger
        self.commit_every = commit_every
        self.rows: list[CentralRow] = []
        self.taken: set[str] = set()

    async def add(self, name: str, data: AsyncIterable[bytes], **options: Any) -> CentralRow:
        unique = next(c for c in name_candidates(sanitize_entry_name(name)) if c not in self.taken)
        row = await self.writer.add_entry(unique, data, **options)
        self.taken.add(row.name)
        self.rows.append(row)
        if self.ledger is not None:
            self.ledger.record([ledger_row(row)])
            if len(self.rows) % self.commit_every == 0:
                await self.writer.flush()
                self.ledger.commit()
        return row

    async def close(self) -> ZipResult:
        return await self.writer.close(self.rows)


async def add_small_entries(output: Output, count: int, items: dict[str, bytes]) -> None:
    for i in range(count):
        data = payload(i)
        row = await output.add(
            entry_name(i), chunks(data), compress=i % 2 == 0, comment=f"created-{i}"
        )
        items[row.name] = data


def large_items() -> dict[str, tuple[bytes, bool]]:
    """Multi-batch entries (name -> data, compress): random stored and compressible deflated."""
    noise = random.Random(7).randbytes(BATCH_BYTES * 3 + 7)
    text = b"".join(payload(i) for i in range(1, 40)) * 500
    return {"large/noise.bin": (noise, False), "large/text.jsonl": (text, True)}


async def add_large_entries(output: Output, items: dict[str, bytes], *, hinted: bool) -> None:
    for name, (data, compress) in large_items().items():
        hint = len(data) if hinted else None
        row = await output.add(name, chunks(data), size_hint=hint, compress=compress)
        items[row.name] = data


def build_mixed(directory: Path) -> Manifest:
    """Patch mode: 300 small stored/deflated UTF-8 entries, duplicates, big entries."""
    target = directory / "mixed.zip"

    async def main() -> Manifest:
        items: dict[str, bytes] = {}
        output = Output(await ZipWriter.open(LocalFile(target)))
        await add_small_entries(output, 300, items)
        await add_large_entries(output, items, hinted=False)
        # The same names again: the second pair lands as "large/noise (2).bin" and so on.
        await add_large_entries(output, items, hinted=True)
        assert "large/noise (2).bin" in items
        await output.close()
        return manifest_of(items)

    return anyio.run(main)


def build_through_pipe(directory: Path, *, hinted: bool) -> Manifest:
    """Descriptor mode through a real pipe into ``cat``, which writes the file."""
    target = directory / ("stream.zip" if hinted else "stream-unknown.zip")

    async def main(pipe: BinaryIO) -> Manifest:
        items: dict[str, bytes] = {}
        output = Output(await ZipWriter.open(StreamStorage(pipe)))
        await add_small_entries(output, 300, items)
        await add_large_entries(output, items, hinted=hinted)
        await output.close()
        return manifest_of(items)

    with target.open("wb") as out:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=out)
        assert cat.stdin is not None
        try:
            manifest = anyio.run(main, cat.stdin)
        finally:
            cat.stdin.close()
            cat.wait()
    return manifest


def build_many(directory: Path) -> Manifest:
    """70,000 tiny entries: more than 0xFFFF, so the ZIP64 end record is needed."""
    target = directory / "many.zip"

    async def main() -> Manifest:
        writer = await ZipWriter.open(LocalFile(target))
        rows = [
            await writer.add_entry(f"e/{i}", chunks(b"%d" % i), compress=i % 2 == 0)
            for i in range(70_000)
        ]
        await writer.close(rows)
        return {f"e/{i}": (len(b"%d" % i), zlib.crc32(b"%d" % i)) for i in range(70_000)}

    return anyio.run(main)


KILLED_CHILD = """
import os, sys, anyio
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from annopull._pipeline.ledger import Ledger
from annopull._storage.local import LocalFile
from annopull._zip.writer import ZipWriter
from test_zip_interop import FINGERPRINT, Output, add_large_entries, add_small_entries

async def main():
    d = Path(sys.argv[1])
    ledger = Ledger.create(d / "resumed.journal", kind="zip", fingerprint=FINGERPRINT)
    writer = await ZipWriter.open(LocalFile(d / "resumed.zip"))
    output = Output(writer, ledger=ledger, commit_every=50)
    await add_large_entries(output, {}, hinted=False)
    await add_small_entries(output, 230, {})
    os._exit(0)  # a kill: no abort, no flush, 32 ledger rows and the file tail uncommitted

anyio.run(main)
"""


def build_resumed(directory: Path) -> Manifest:
    """A writer killed mid-run (os._exit), then resumed from its ledger and finished."""
    subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, str(directory), str(Path(__file__).parent)],
        check=True,
    )
    target = directory / "resumed.zip"

    async def main() -> None:
        ledger = Ledger.open_existing(
            directory / "resumed.journal", kind="zip", fingerprint=FINGERPRINT
        )
        # 2 large + 198 small rows were committed; the last 32 entries were lost with the kill.
        assert ledger.count() == 200
        last = ledger.last_receipt()
        assert last is not None
        writer = await ZipWriter.open(
            LocalFile(target), resume=True, resume_after=CentralRow.decode(last)
        )
        for i in range(300):
            if not ledger.has_name(entry_name(i)):
                row = await writer.add_entry(
                    entry_name(i), chunks(payload(i)), compress=i % 2 == 0, comment=f"created-{i}"
                )
                ledger.record([ledger_row(row)])
        await writer.flush()
        ledger.commit()
        await writer.close(CentralRow.decode(receipt) for receipt in ledger.receipts())
        ledger.delete()

    anyio.run(main)
    large = {name: data for name, (data, _) in large_items().items()}
    return manifest_of({**large, **{entry_name(i): payload(i) for i in range(300)}})


def build_huge(directory: Path, *, stream: bool) -> Manifest:
    """A > 4 GiB entry of cheap data, then small entries whose offsets are past 4 GiB."""
    target = directory / ("huge-stream.zip" if stream else "huge.zip")
    size = 4 * GIB + 3 * BATCH_BYTES + 11
    block = bytes(BATCH_BYTES)

    async def main(out: Path | BinaryIO) -> Manifest:
        storage = LocalFile(out) if isinstance(out, Path) else StreamStorage(out)
        writer = await ZipWriter.open(storage, compress_level=1)
        rows = [
            await writer.add_entry("small-first", chunks(b"first")),
            await writer.add_entry("huge.bin", repeated(block, size), compress=stream),
        ]
        assert rows[1].zip64
        assert rows[1].uncompressed_size == size
        items = {"small-first": b"first"}
        for i in range(3):
            row = await writer.add_entry(f"after-{i}", chunks(payload(i + 1)), compress=i == 0)
            # Deflated zeros shrink to a few MiB: the stream case tests ZIP64 sizes instead.
            assert stream or row.offset > 4 * GIB
            items[row.name] = payload(i + 1)
            rows.append(row)
        await writer.close(rows)
        crc = 0
        for _ in range(size // BATCH_BYTES):
            crc = zlib.crc32(block, crc)
        crc = zlib.crc32(block[: size % BATCH_BYTES], crc)
        return {**manifest_of(items), "huge.bin": (size, crc)}

    if not stream:
        return anyio.run(main, target)
    with target.open("wb") as out:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=out)
        assert cat.stdin is not None
        try:
            return anyio.run(main, cat.stdin)
        finally:
            cat.stdin.close()
            cat.wait()


CASES: dict[str, Builder] = {
    "mixed": build_mixed,
    "stream": lambda d: build_through_pipe(d, hinted=True),
    "stream-unknown-size": lambda d: build_through_pipe(d, hinted=False),
    "resumed": build_resumed,
    "many": build_many,
    "huge": lambda d: build_huge(d, stream=False),
    "huge-stream": lambda d: build_huge(d, stream=True),
}
SLOW_CASES = {"huge", "huge-stream"}


class ArchiveCache:
    """Builds each case once per module, on first use, in one temp folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.built: dict[str, Manifest] = {}

    def get(self, case: str) -> tuple[Path, Manifest]:
        if case not in self.built:
            self.built[case] = CASES[case](self.directory)
        name = {"stream": "stream.zip", "stream-unknown-size": "stream-unknown.zip"}
        return self.directory / name.get(case, f"{case}.zip"), self.built[case]


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveCache]:
    """The archive cache; multi-GiB files are deleted when the module is done."""
    cache = ArchiveCache(tmp_path_factory.mktemp("interop"))
    yield cache
    for leftover in cache.directory.glob("*.zip"):
        leftover.unlink()


def _params() -> Iterator[object]:
    for case in CASES:
        for reader in READERS:
            marks: list[pytest.MarkDecorator] = []
            if case in SLOW_CASES:
                marks.append(pytest.mark.slow)
            if case == "stream-unknown-size" and reader == "java-zipinputstream":
                # JDK 17's ZipInputStream picks the descriptor width from the actual sizes,
                # not from the local ZIP64 extra (JDK-8298530), so it misreads the 24-byte
                # descriptor of a < 4 GiB entry of unknown size. Pass size_hint to avoid it.
                marks.append(pytest.mark.xfail(reason="JDK-8298530", strict=True))
            yield pytest.param(case, reader, id=f"{case}-{reader}", marks=marks)


@pytest.mark.parametrize(("case", "reader"), list(_params()))
def test_reader_sees_every_entry_intact(
    archives: ArchiveCache, case: str, reader: str, tmp_path: Path
) -> None:
    """The reader accepts the archive and reads exactly the entries written, same bytes."""
    path, expected = archives.get(case)
    assert READERS[reader](path, tmp_path) == expected

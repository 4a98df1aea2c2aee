"""The sink conformance suite: every destination passes the same tests.

Each destination is one :class:`SinkCase` in :data:`CASES`: how to build its sink for an output
in a scratch folder, how to read the finished output back with an *independent* reader
(``zipfile`` for zips, the file system for folders, ``json`` for JSON Lines), and what it
promises (resume, names, time stamps, flat memory). Adding a destination means adding one
``SinkCase``; every test below then runs against it.

Sinks are driven the way the pipeline drives them: directly (a real :class:`Ledger`, each
receipt recorded with the item's key and version, ``flush`` then ``commit``) for the low-level
cases, and through :func:`annopull._pipeline.pull.pull` with a small in-test
:class:`DictSource` for the end-to-end ones. The kill test runs a pull in a subprocess that
imports this very module (see :func:`killed_pull`), so both runs share one source and one case.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, cast

import anyio
import pytest

import annopull._pipeline.pull as pipeline
from annopull._errors import AnnopullError, ConfigError, TransferError, ZipFormatError
from annopull._pipeline.ledger import Ledger, LedgerRow
from annopull._pipeline.pull import Item, PullReport, pull
from annopull._sinks import DirectorySink, EntryInfo, JsonlSink, Sink, ZipSink, sink_for
from annopull._transport.http import ByteTarget

pytestmark = pytest.mark.anyio

MiB = 1 << 20
FINGERPRINT = {"source": "conformance"}
VERSION = "2024-03-04T05:06:08Z"
#: Whole, even seconds: a zip's DOS time keeps two-second steps and no zone (UTC here).
WHEN = datetime(2024, 3, 4, 5, 6, 8, tzinfo=UTC)
JOURNAL = ".annopull.journal"


# -- independent readers ------------------------------------------------------------------


def read_zip(path: Path) -> dict[str, bytes]:
    """Entry name -> bytes, each checked against its CRC by zipfile; no name twice."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert len(names) == len(set(names)), "an entry is in the zip twice"
        return {name: archive.read(name) for name in names}


def zip_mtimes(path: Path) -> dict[str, datetime]:
    """Entry name -> its DOS time stamp, read as UTC."""
    with zipfile.ZipFile(path) as archive:
        return {i.filename: datetime(*i.date_time, tzinfo=UTC) for i in archive.infolist()}


def read_folder(path: Path) -> dict[str, bytes]:
    """Relative ``/`` path -> bytes of every file in the folder (hidden and temporary ones too)."""
    return {
        file.relative_to(path).as_posix(): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def folder_mtimes(path: Path) -> dict[str, datetime]:
    """Relative ``/`` path -> modification time of every file in the folder."""
    return {
        file.relative_to(path).as_posix(): datetime.fromtimestamp(file.stat().st_mtime, UTC)
        for file in path.rglob("*")
        if file.is_file()
    }


def folder_size(path: Path) -> int:
    """Bytes of every file in the folder."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def read_jsonl(path: Path) -> dict[str, bytes]:
    """Item key -> content: ``content`` re-serialised compactly, or ``content_base64`` decoded."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the last line is torn"
    entries: dict[str, bytes] = {}
    for line in data.splitlines():
        record = json.loads(line)
        key = record["key"]
        assert key not in entries, f"{key} is in the file twice"
        if "content_base64" in record:
            entries[key] = base64.b64decode(record["content_base64"], validate=True)
        else:
            entries[key] = compact(record["content"])
    return entries


def compact(document: object) -> bytes:
    """The one serialisation test documents use, so a parsed document re-serialises exactly."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def is_zip(path: Path) -> bool:
    """Whether ``path`` holds a complete zip (an end of central directory record)."""
    return path.is_file() and zipfile.is_zipfile(path)


class NoSeekStream:
    """A pipe-like binary stream: appends to a real file; ``seek``/``tell`` raise and are noted.

    It never keeps the file open (each write appends and closes), so nothing is left for the
    garbage collector to warn about, whoever forgets to close the stream.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.refused: list[str] = []
        path.write_bytes(b"")

    def write(self, data: bytes) -> int:
        with self.path.open("ab") as file:
            return file.write(data)

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False

    def _refuse(self, what: str) -> None:
        self.refused.append(what)
        raise io.UnsupportedOperation(f"{what} on a pipe")

    def seek(self, *args: object) -> int:
        self._refuse("seek")
        return 0

    def tell(self) -> int:
        self._refuse("tell")
        return 0

    def truncate(self, *args: object) -> int:
        self._refuse("truncate")
        return 0

    def read(self, *args: object) -> bytes:
        self._refuse("read")
        return b""


# -- the destinations ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SinkCase:
    """One destination, as the suite needs to know it.

    Args:
        id: the pytest id.
        output: the finished output's name in the test's work folder.
        build: the sink for the output at the path given (no I/O until it is used).
        read: entries of the finished output, read by an independent reader: entry name ->
            bytes, or item key -> bytes where the output keeps no names (``keeps_names``).
        size: bytes the finished output holds (what ``result.bytes_written`` must say).
        finished: whether the output at the path looks complete to a reader.
        mtimes: entry -> time stamp, where the format keeps one.
        journal: where the ledger lives, relative to the work folder; ``None``: no resume.
        partial: what an interrupted run leaves instead of the output (relative), if a file.
        keeps_names: whether entries are stored under their (sanitised, unique) names.
        survives_late_chunk_error: whether a chunk iterator failing after the first batch
            went out leaves the sink usable (a pipe cannot take written bytes back).
    """

    id: str
    output: str
    build: Callable[[Path], Sink]
    read: Callable[[Path], dict[str, bytes]]
    size: Callable[[Path], int]
    finished: Callable[[Path], bool]
    mtimes: Callable[[Path], dict[str, datetime]] | None = None
    journal: str | None = None
    partial: str | None = None
    keeps_names: bool = True
    survives_late_chunk_error: bool = True

    @property
    def resumable(self) -> bool:
        return self.journal is not None

    def label(self, key: str, name: str) -> str:
        """How :attr:`read` names an entry of item ``key`` written as ``name``."""
        return name if self.keeps_names else key


def _file_size(path: Path) -> int:
    return path.stat().st_size


ZIP_FILE = SinkCase(
    id="zip",
    output="out.zip",
    build=ZipSink,
    read=read_zip,
    size=_file_size,
    finished=Path.exists,
    mtimes=zip_mtimes,
    journal="out.zip.journal",
    partial="out.zip.part",
)
ZIP_STDOUT = SinkCase(
    id="zip-stdout",
    output="stdout.zip",
    build=lambda path: ZipSink(cast(BinaryIO, NoSeekStream(path))),
    read=read_zip,
    size=_file_size,
    finished=is_zip,
    mtimes=zip_mtimes,
    survives_late_chunk_error=False,
)
FOLDER = SinkCase(
    id="folder",
    output="folder",
    build=DirectorySink,
    read=read_folder,
    size=folder_size,
    finished=lambda path: path.is_dir() and not (path / JOURNAL).exists(),
    mtimes=folder_mtimes,
    journal=f"folder/{JOURNAL}",
)
JSONL = SinkCase(
    id="jsonl",
    output="out.jsonl",
    build=JsonlSink,
    read=read_jsonl,
    size=_file_size,
    finished=Path.exists,
    journal="out.jsonl.journal",
    partial="out.jsonl.part",
    keeps_names=False,
)
CASES = (ZIP_FILE, ZIP_STDOUT, FOLDER, JSONL)
CASES_BY_ID = {case.id: case for case in CASES}


def params(
    *,
    only: Callable[[SinkCase], bool] | None = None,
    why: str = "",
    xfail: Mapping[str, str] | None = None,
) -> list[Any]:
    """Every case as a ``pytest.param``, skipped where ``only`` is false (saying ``why``).

    A case ``xfail`` names (id -> reason: a known limit or bug) is expected to fail an
    assertion, strictly: a fix makes it pass and the suite says so; any other error fails.
    """
    cases = []
    for case in CASES:
        marks: list[pytest.MarkDecorator] = []
        if only is not None and not only(case):
            marks.append(pytest.mark.skip(reason=f"{case.id}: {why}"))
        elif xfail and case.id in xfail:
            marks.append(
                pytest.mark.xfail(strict=True, reason=xfail[case.id], raises=AssertionError)
            )
        cases.append(pytest.param(case, id=case.id, marks=marks))
    return cases


ALL = params()
CANNOT_RESUME = "a streamed output cannot be resumed"
RESUMABLE = params(only=lambda case: case.resumable, why=CANNOT_RESUME)
RESULT_AFTER_RESUME = params(only=lambda case: case.resumable, why=CANNOT_RESUME)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The folder the output goes in, holding nothing else, so leftovers show."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def assert_only_output(case: SinkCase, work: Path) -> None:
    """The work folder holds the finished output and nothing else (no .part, no journal)."""
    assert sorted(os.listdir(work)) == [case.output]
    assert case.finished(work / case.output)


# -- test data ----------------------------------------------------------------------------


def document(n: int, pad: int = 40) -> bytes:
    """A small JSON document, serialised the way :func:`compact` re-serialises it."""
    return compact({"openlabel": {"n": n, "name": f"scène {n}", "pad": "x" * pad}})


def big_document(size: int) -> bytes:
    """A JSON document of about ``size`` bytes that no line break splits."""
    return compact({"openlabel": {"blob": "0123456789abcdef" * (size // 16)}})


def info(key: str, *, name: str | None = None, json_content: bool = True) -> EntryInfo:
    """The entry of item ``key``, named ``key`` unless told otherwise."""
    return EntryInfo(
        name=name or key,
        key=key,
        version=VERSION,
        mtime=WHEN,
        fields={"key": key},
        json=json_content,
    )


async def chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    """``data`` in pieces of ``size`` bytes."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def failing(error: BaseException, data: bytes, size: int) -> AsyncIterator[bytes]:
    """``data`` in pieces of ``size`` bytes, then ``error``."""
    async for chunk in chunks(data, size):
        yield chunk
    raise error


def committed_keys(journal: Path) -> set[str]:
    """The keys a ledger holds as committed, read with sqlite3 directly (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
        return {str(key) for (key,) in conn.execute("SELECT key FROM entries")}


def journal_count(journal: Path) -> int:
    """Committed rows of a ledger another process writes (0 while there is none)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    except sqlite3.Error:
        return 0


# -- driving a sink directly, as the pipeline does ----------------------------------------


class Driver:
    """Drives a sink as ``pull()`` does: a real ledger, receipts recorded, flush then commit.

    ``async with Driver(sink) as d:`` opens the ledger and the sink; on success it checkpoints,
    closes the sink and deletes the ledger; on error the sink aborts and the ledger commits what
    was recorded and closes (as ``pull()`` does).
    """

    def __init__(self, sink: Sink, *, resume: bool = False) -> None:
        self.sink = sink
        self.resume = resume
        self.ledger: Ledger | None = None

    @property
    def _ledger(self) -> Ledger:
        assert self.ledger is not None
        return self.ledger

    async def __aenter__(self) -> Self:
        sink = self.sink
        path = sink.state_path
        if path is None:
            self.ledger = Ledger.temporary(kind=sink.kind)
        else:
            sink.prepare()
            opener = Ledger.open_existing if self.resume else Ledger.create
            self.ledger = opener(path, kind=sink.kind, fingerprint=FINGERPRINT)
        sink.attach(self.ledger, resume=self.resume)
        await sink.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            try:
                await self.checkpoint()
            except BaseException as failed:
                await self.sink.__aexit__(type(failed), failed, failed.__traceback__)
                self._ledger.commit()
                self._ledger.close()
                raise
        await self.sink.__aexit__(exc_type, exc, tb)
        if exc is None:
            self._ledger.delete()
        else:
            self._ledger.commit()
            self._ledger.close()

    async def write(self, entry: EntryInfo, data: AsyncIterator[bytes]) -> None:
        """Write one streamed entry and record its receipt (not when the write raises)."""
        receipt = await self.sink.write(entry, data)
        self.record(entry, receipt)

    async def write_many(
        self, entries: Sequence[tuple[EntryInfo, bytes]]
    ) -> list[AnnopullError | None]:
        """Write in-memory entries; record each receipt; return each refusal (or ``None``)."""
        refusals: list[AnnopullError | None] = []
        for (entry, _data), outcome in zip(
            entries, await self.sink.write_many(entries), strict=True
        ):
            if isinstance(outcome, AnnopullError):
                refusals.append(outcome)
            else:
                self.record(entry, outcome)
                refusals.append(None)
        return refusals

    def record(self, entry: EntryInfo, receipt: bytes) -> None:
        self._ledger.record(
            [LedgerRow(key=entry.key, version=entry.version, name=entry.name, receipt=receipt)]
        )

    async def checkpoint(self) -> None:
        """The sink's data durable first, then the rows that describe it."""
        await self.sink.flush()
        self._ledger.commit()


# -- a source for pull() ------------------------------------------------------------------


@dataclass
class DictSource:
    """Lists one item per key of ``contents``; fetching one writes its bytes into the target.

    Args:
        contents: item key -> bytes; the key is also the entry name unless ``names`` says
            otherwise.
        names: item key -> the entry name the listing asks for.
        failing: keys whose fetch fails for good (a per-item failure).
        binary: keys whose content is not JSON (JSON Lines stores it as base64).
        pause_after: fetches after this many wait until ``pause`` seconds after the listing
            began (so that the pipeline's timed checkpoint falls due with few entries).
        pause: see ``pause_after``.
        stall_after: fetches after this many never end (for a run to be killed).
        log: a file each fetch appends its key to, before it starts (for another process).
    """

    contents: Mapping[str, bytes]
    names: Mapping[str, str] = field(default_factory=dict)
    failing: Collection[str] = ()
    binary: Collection[str] = ()
    pause_after: int | None = None
    pause: float = 0.0
    stall_after: int | None = None
    log: Path | None = None
    fetched: list[str] = field(default_factory=list)
    listed_at: float = 0.0

    @property
    def fingerprint(self) -> Mapping[str, str]:
        return FINGERPRINT

    async def items(self) -> AsyncIterator[Item]:
        self.listed_at = time.monotonic()
        for key in self.contents:
            yield Item(
                key=key,
                name=self.names.get(key, key),
                version=VERSION,
                mtime=WHEN,
                fields={"key": key},
                json=key not in self.binary,
            )

    async def fetch(
        self, item: Item, target: ByteTarget, *, on_bytes: Callable[[int], None]
    ) -> None:
        self.fetched.append(item.key)
        if self.log is not None:
            with self.log.open("a") as log:
                log.write(item.key + "\n")
        if self.stall_after is not None and len(self.fetched) > self.stall_after:
            await anyio.sleep_forever()
        if self.pause_after is not None and len(self.fetched) > self.pause_after:
            await anyio.sleep(max(0.0, self.listed_at + self.pause - time.monotonic()))
        if item.key in self.failing:
            raise TransferError("the fake platform said no", item=item.key, status=404)
        data = self.contents[item.key]
        for start in range(0, len(data), 64 * 1024):
            chunk = data[start : start + 64 * 1024]
            await target.write(chunk)
            on_bytes(len(chunk))


async def pull_into(case: SinkCase, work: Path, source: DictSource, **options: Any) -> PullReport:
    """``pull()`` from ``source`` into a fresh sink of ``case`` in ``work``."""
    return await pull(source, case.build(work / case.output), **options)


# -- 1. round trip ------------------------------------------------------------------------

ROUND_TRIP_NAMES = ["nested/deeper/leaf.json", "ünïcødé/ñame.json", "spaced name.json"]


@pytest.mark.parametrize("case", ALL)
async def test_round_trip_written_directly(case: SinkCase, work: Path) -> None:
    """Entries written in batches and in chunks read back byte-identical, named and timed."""
    output = work / case.output
    small = {f"e{n:03}.json": document(n) for n in range(100)}
    streamed = {name: document(n, pad=3000) for n, name in enumerate(ROUND_TRIP_NAMES)}
    binary = {"raw.bin": bytes(range(256)) * 40}
    sink = case.build(output)
    async with Driver(sink) as driver:
        keys = list(small)
        for start in range(0, len(keys), 64):
            batch = [(info(k), small[k]) for k in keys[start : start + 64]]
            assert await driver.write_many(batch) == [None] * len(batch)
        await driver.checkpoint()
        for name, data in streamed.items():
            await driver.write(info(name), chunks(data, 1000))
        for name, data in binary.items():
            await driver.write(info(name, json_content=False), chunks(data, 333))
    expected = small | streamed | binary
    assert case.read(output) == expected
    assert_only_output(case, work)
    assert (sink.result.entries, sink.result.bytes_written) == (len(expected), case.size(output))
    assert sink.result.output == sink.description
    if case.mtimes is not None:
        assert case.mtimes(output) == dict.fromkeys(expected, WHEN)


@pytest.mark.parametrize("case", ALL)
async def test_round_trip_through_pull_with_a_spilled_entry(case: SinkCase, work: Path) -> None:
    """pull() delivers many small items and one spilled to disk, byte-identical and timed."""
    contents = {f"item-{n:04}.json": document(n) for n in range(150)}
    contents["huge.json"] = big_document(3 * MiB)  # > spool_memory, and > one zip batch
    contents["blob.bin"] = os.urandom(100_000)
    source = DictSource(contents, binary={"blob.bin"})
    output = work / case.output
    sink = case.build(output)
    report = await pull(source, sink, spool_memory=256 * 1024, concurrency=8)
    assert report.ok, report.failures
    assert (report.downloaded, report.skipped) == (len(contents), 0)
    assert report.bytes == sum(map(len, contents.values()))
    assert sorted(source.fetched) == sorted(contents)
    assert case.read(output) == contents
    assert_only_output(case, work)
    assert (sink.result.entries, sink.result.bytes_written) == (len(contents), case.size(output))
    if case.mtimes is not None:
        assert case.mtimes(output) == dict.fromkeys(contents, WHEN)


# -- 2. abort -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL)
async def test_abort_leaves_no_output_and_keeps_what_was_committed(
    case: SinkCase, work: Path
) -> None:
    """An error inside the sink stops it unfinished; a resume finds every recorded entry."""
    output = work / case.output
    first = {f"a{n}.json": document(n) for n in range(20)}
    pending = {"b.json": document(100)}
    boom = RuntimeError("the run stops here")

    async def run_until_boom() -> None:
        async with Driver(case.build(output)) as driver:
            await driver.write_many([(info(k), v) for k, v in first.items()])
            await driver.checkpoint()
            await driver.write(info("b.json"), chunks(pending["b.json"]))
            # Written but never recorded: as if killed between the write and the ledger.
            await driver.sink.write(info("lost.json"), chunks(document(7)))
            raise boom

    with pytest.raises(RuntimeError) as raised:
        await run_until_boom()
    assert raised.value is boom
    assert not case.finished(output)
    if not case.resumable:
        return
    for left in (case.journal, case.partial):
        if left is not None:
            assert (work / left).exists(), f"{left} is gone"
    assert committed_keys(work / cast(str, case.journal)) == first.keys() | pending.keys()

    again = {"lost.json": document(7), "c.json": document(200)}
    resumed = case.build(output)
    async with Driver(resumed, resume=True) as driver:
        for key, data in again.items():
            await driver.write(info(key), chunks(data, 100))
    expected = first | pending | again
    assert case.read(output) == expected
    assert resumed.result.entries == len(expected)
    assert_only_output(case, work)


@pytest.mark.parametrize("case", RESULT_AFTER_RESUME)
async def test_result_after_resume_describes_the_whole_output(case: SinkCase, work: Path) -> None:
    """After a resume, result counts every entry and byte of the output, not just this run's."""
    output = work / case.output

    async def interrupted() -> None:
        async with Driver(case.build(output)) as driver:
            await driver.write_many([(info(f"a{n}.json"), document(n)) for n in range(10)])
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        await interrupted()
    resumed = case.build(output)
    async with Driver(resumed, resume=True) as driver:
        await driver.write(info("b.json"), chunks(document(10)))
    assert resumed.result.entries == 11
    assert resumed.result.bytes_written == case.size(output)


# -- 3. kill -9, then resume --------------------------------------------------------------

KILL_ITEMS = 150
#: The killed run checkpoints every this many seconds instead of the pipeline's 2 s: the
#: same code path, without the wait.
KILL_CHECKPOINT_SECONDS = 0.2
#: The killed run fetches this many at once, then waits until its timed checkpoint is due,
#: so its first commit holds a few dozen entries, not 512 (a folder fsyncs each file at a
#: checkpoint: 512 of them cost seconds).
KILL_PAUSE = (40, 0.5)
#: The killed run's fetches after this many never end, so it is surely mid-run when killed,
#: with entries written after its checkpoint and fetches in flight.
KILL_STALL = 70
#: The subprocess: load this module by its path and run :func:`killed_pull` from it.
KILL_SCRIPT = """
import importlib.util, sys
from pathlib import Path
import anyio
spec = importlib.util.spec_from_file_location("sink_conformance", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
anyio.run(module.killed_pull, sys.argv[2], Path(sys.argv[3]))
"""


def kill_contents() -> dict[str, bytes]:
    """The items of the kill test, the same in both processes."""
    return {f"k{n:04}.json": document(n, pad=200) for n in range(KILL_ITEMS)}


async def killed_pull(case_id: str, work: Path) -> None:
    """The subprocess side of the kill test: a pull that stalls, waiting for its SIGKILL."""
    case = CASES_BY_ID[case_id]
    assert isinstance(pipeline._CHECKPOINT_SECONDS, float), "the checkpoint interval moved"
    pipeline._CHECKPOINT_SECONDS = KILL_CHECKPOINT_SECONDS
    source = DictSource(
        kill_contents(),
        pause_after=KILL_PAUSE[0],
        pause=KILL_PAUSE[1],
        stall_after=KILL_STALL,
        log=work.parent / "fetched.log",
    )
    await pull_into(case, work, source, concurrency=8)


def start_and_kill(case: SinkCase, work: Path) -> list[str]:
    """Run :func:`killed_pull` in a subprocess; SIGKILL it after its first ledger commit.

    Returns the keys the killed run began to fetch.
    """
    log = work.parent / "fetched.log"
    journal = work / cast(str, case.journal)
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, __file__, case.id, str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (journal_count(journal) > 0 and log.exists() and _lines(log) > KILL_STALL):
            if process.poll() is not None:
                _, err = process.communicate()
                pytest.fail(f"the pull ended (exit {process.returncode}): {err.decode()[-2000:]}")
            assert time.monotonic() < deadline, "the pull did not get far enough in time"
            time.sleep(0.01)
        # Let the writer take what the fetches before the stall delivered.
        time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    return log.read_text().split()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


@pytest.mark.parametrize("case", RESUMABLE)
async def test_kill_9_then_resume_delivers_each_item_once(case: SinkCase, work: Path) -> None:
    """A pull SIGKILLed after a commit resumes to every item once, fetching none committed."""
    contents = kill_contents()
    started = await anyio.to_thread.run_sync(start_and_kill, case, work)
    output = work / case.output
    assert not case.finished(output)
    committed = committed_keys(work / cast(str, case.journal))
    assert 0 < len(committed) < KILL_ITEMS
    wasted = set(started) - committed
    assert wasted, "the kill landed where nothing was in flight"

    source = DictSource(contents)
    report = await pull_into(case, work, source, resume=True, concurrency=8)
    assert report.ok, report.failures
    assert report.resumed
    assert (report.skipped, report.downloaded) == (len(committed), KILL_ITEMS - len(committed))
    assert sorted(source.fetched) == sorted(contents.keys() - committed)
    assert wasted <= set(source.fetched)
    assert case.read(output) == contents
    assert_only_output(case, work)


# -- 4. unsafe and duplicate names --------------------------------------------------------

UNSAFE = {
    # key: (asked-for name, the name it must get)
    "dots": ("../x.json", "x.json"),
    "absolute": ("/abs.json", "abs.json"),
    "backslash": ("a\\b.json", "a/b.json"),
    "drive": ("C:evil.json", "evil.json"),
    "dup-1": ("dup.json", "dup.json"),
    "dup-2": ("dup.json", "dup (2).json"),
}
UNUSABLE = {"nul": ("\x00", "NUL"), "nothing-left": ("/../", "empty")}


@pytest.mark.parametrize("case", ALL)
async def test_unsafe_and_duplicate_names_through_pull(
    case: SinkCase, work: Path, tmp_path: Path
) -> None:
    """Unsafe names land inside the output, repeats get distinct names, unusable ones fail alone."""
    names = {key: asked for key, (asked, _) in (UNSAFE | UNUSABLE).items()}
    contents = {key: document(n) for n, key in enumerate([*UNSAFE, *UNUSABLE, "gone"])}
    names["gone"] = "gone.json"
    source = DictSource(contents, names=names, failing={"gone"})
    # One fetch at a time: the first of the two dup.json items is the one that keeps the name.
    report = await pull_into(case, work, source, concurrency=1)
    assert (report.listed, report.downloaded) == (len(contents), len(UNSAFE))
    reasons = {failure.item: failure.reason for failure in report.failures}
    assert reasons.keys() == {*UNUSABLE, "gone"}
    for key, (_, why) in UNUSABLE.items():
        assert why in reasons[key]
    expected = {case.label(key, name): contents[key] for key, (_, name) in UNSAFE.items()}
    assert case.read(work / case.output) == expected
    assert_only_output(case, work)
    assert sorted(os.listdir(tmp_path)) == ["work"], "something was written outside the output"


@pytest.mark.parametrize("case", ALL)
async def test_a_name_the_output_cannot_hold_fails_that_item_alone(
    case: SinkCase, work: Path
) -> None:
    """An entry under a name that is already a file fails alone, in memory or spilled alike."""
    clashing = {"a/small.json": document(1), "a/spilled.json": big_document(300_000)}
    contents = {"a": document(0), **clashing, "after.json": document(2)}
    report = await pull_into(
        case, work, DictSource(contents), spool_memory=64 * 1024, concurrency=1
    )
    failed = {failure.item for failure in report.failures}
    # A folder cannot hold a file "a" and a folder "a"; an archive or JSON Lines can.
    assert failed in (set(), clashing.keys())
    delivered = {k: v for k, v in contents.items() if k not in failed}
    assert case.read(work / case.output) == delivered
    assert report.downloaded == len(delivered)
    assert_only_output(case, work)


# -- 5. a chunk iterator raising mid-entry ------------------------------------------------


@pytest.mark.parametrize("case", ALL)
@pytest.mark.parametrize(
    ("written", "chunk"),
    [
        pytest.param(100, 10, id="in-first-batch"),
        # Past the zip writer's first 1 MiB batch: bytes of the entry are already out.
        pytest.param(3 * MiB, 256 * 1024, id="after-3-MiB"),
    ],
)
async def test_chunk_error_passes_through_and_leaves_no_half_entry(
    case: SinkCase, work: Path, written: int, chunk: int
) -> None:
    """What the caller's chunks raise comes out unchanged; the output holds only whole entries."""
    output = work / case.output
    good, later = document(1), document(2)
    boom = OSError("the network went away")

    async def good_bad_later(driver: Driver) -> None:
        await driver.write(info("good.json"), chunks(good))
        with pytest.raises(OSError, match="network went away") as raised:
            await driver.write(info("bad.json"), failing(boom, b"x" * written, chunk))
        assert raised.value is boom
        await driver.write(info("later.json"), chunks(later))

    if written > MiB and not case.survives_late_chunk_error:
        # A pipe cannot take back what it sent: the sink refuses to go on, and to finish,
        # rather than write an archive with half an entry in it.
        with pytest.raises(ZipFormatError, match="broken"):
            async with Driver(case.build(output)) as driver:
                await good_bad_later(driver)
        assert not case.finished(output)
        return
    async with Driver(case.build(output)) as driver:
        await good_bad_later(driver)
    assert case.read(output) == {"good.json": good, "later.json": later}
    assert_only_output(case, work)


# -- 6. a large entry, flat memory --------------------------------------------------------

LARGE_CHUNKS = 64  # of 1 MiB each


async def large_entry(digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """64 MiB in 1 MiB chunks, each made when asked for and hashed into ``digest``."""
    for n in range(LARGE_CHUNKS):
        chunk = hashlib.sha256(n.to_bytes(4, "big")).digest() * (MiB // 32)
        digest.update(chunk)
        yield chunk


@pytest.mark.parametrize("case", ALL)
async def test_large_entry_streams_with_flat_memory(case: SinkCase, work: Path) -> None:
    """A 64 MiB entry from an async generator goes through in far less than 64 MiB of memory."""
    output = work / case.output
    digest = hashlib.sha256()
    # Python allocations, every thread's: ru_maxrss is a high-water mark of the whole process
    # life, so an earlier test's peak would hide this one's growth.
    tracemalloc.start()
    try:
        async with Driver(case.build(output)) as driver:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            await driver.write(info("large.bin", json_content=False), large_entry(digest))
            peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 32 * MiB, f"writing a 64 MiB entry took {peak / MiB:.1f} MiB"
    entries = case.read(output)
    assert entries.keys() == {"large.bin"}
    assert len(entries["large.bin"]) == LARGE_CHUNKS * MiB
    assert hashlib.sha256(entries["large.bin"]).digest() == digest.digest()


# -- 7. the stdout zip streams ------------------------------------------------------------


async def test_stdout_zip_never_seeks_and_streams(work: Path) -> None:
    """A zip on a stream is never seeked or told, and an entry's bytes go out as they come."""
    path = work / "stdout.zip"
    stream = NoSeekStream(path)
    big = os.urandom(4 * MiB)  # incompressible: what goes in must come out as it goes
    seen_while_streaming: list[int] = []

    async def watched(data: bytes) -> AsyncIterator[bytes]:
        async for piece in chunks(data, 256 * 1024):
            seen_while_streaming.append(path.stat().st_size)
            yield piece

    async with Driver(ZipSink(cast(BinaryIO, stream))) as driver:
        await driver.write(info("small.json"), chunks(document(1)))
        await driver.checkpoint()
        after_first = path.stat().st_size
        await driver.write(info("big.json"), watched(big))
    assert stream.refused == []
    assert after_first > 0, "a flushed entry is still held back"
    # A whole MiB of the big entry was out before its last chunk was even asked for.
    assert seen_while_streaming[-1] >= after_first + MiB
    assert read_zip(path) == {"small.json": document(1), "big.json": big}
    with zipfile.ZipFile(path) as archive:
        # Streamed entries carry a data descriptor (flag bit 3): nothing was patched back.
        assert archive.getinfo("big.json").flag_bits & 0x08


def open_pipe() -> tuple[BinaryIO, bytearray, threading.Thread]:
    """An OS pipe: its writing end, what a thread drains from the other end, and that thread."""
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        with open(read_fd, "rb") as reader:
            while block := reader.read(MiB):
                received.extend(block)

    reader = threading.Thread(target=drain)
    reader.start()
    return open(write_fd, "wb"), received, reader


async def test_stdout_zip_through_a_real_pipe(tmp_path: Path) -> None:
    """pull() into an OS pipe (unseekable for real) gives a zip that zipfile reads back."""
    contents = {f"p{n:03}.json": document(n) for n in range(50)}
    contents["spilled.json"] = big_document(2 * MiB)
    pipe, received, reader = open_pipe()
    try:
        with pipe:
            report = await pull(
                DictSource(contents), ZipSink(pipe), spool_memory=256 * 1024, spool_dir=tmp_path
            )
    finally:
        await anyio.to_thread.run_sync(reader.join)
    assert report.ok, report.failures
    with zipfile.ZipFile(io.BytesIO(bytes(received))) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == contents


# -- what one format promises beyond the suite --------------------------------------------


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        pytest.param("-", ZipSink, id="stdout"),
        pytest.param("out.zip", ZipSink, id="zip"),
        pytest.param("OUT.ZIP", ZipSink, id="zip-upper"),
        pytest.param("folder/", DirectorySink, id="slash"),
        pytest.param("existing", DirectorySink, id="existing-folder"),
        pytest.param("existing.zip", DirectorySink, id="existing-folder-named-zip"),
        pytest.param("out.jsonl", JsonlSink, id="jsonl"),
    ],
)
def test_sink_for_picks_the_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, kind: type[Sink]
) -> None:
    """-o names the sink: .zip, -, a folder (trailing slash or existing), .jsonl."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing.zip").mkdir()
    sink = sink_for(output)
    assert type(sink) is kind
    if output == "-":
        assert sink.description == "stdout"
        assert sink.state_path is None


@pytest.mark.parametrize("output", ["out.txt", "out", "out.json"])
def test_sink_for_refuses_unknown_kinds(tmp_path: Path, output: str) -> None:
    """An -o whose kind cannot be told is a ConfigError that says what to use."""
    with pytest.raises(ConfigError, match=r"use a \.zip or \.jsonl file"):
        sink_for(str(tmp_path / output))


@pytest.mark.parametrize(
    ("level", "method"),
    [
        pytest.param(6, zipfile.ZIP_DEFLATED, id="deflate"),
        pytest.param(0, zipfile.ZIP_STORED, id="stored"),
    ],
)
async def test_zip_compress_level_picks_the_method(tmp_path: Path, level: int, method: int) -> None:
    """compress_level 0 stores entries, any other level deflates them."""
    out = tmp_path / "out.zip"
    async with Driver(ZipSink(out, compress_level=level)) as driver:
        await driver.write_many([(info("a.json"), document(1))])
        await driver.write(info("b.json"), chunks(document(2)))
    with zipfile.ZipFile(out) as archive:
        assert {i.compress_type for i in archive.infolist()} == {method}
    assert read_zip(out) == {"a.json": document(1), "b.json": document(2)}


async def test_jsonl_embeds_compact_content_verbatim_and_folds_pretty_content(
    tmp_path: Path,
) -> None:
    """Compact JSON is spliced in byte for byte; pretty-printed JSON is folded into one line."""
    out = tmp_path / "out.jsonl"
    compact_doc = b'{"openlabel":{"z":1,"a":[1,2]}}'
    async with Driver(JsonlSink(out)) as driver:
        await driver.write(info("compact"), chunks(compact_doc))
        await driver.write(info("pretty"), chunks(b'{\n  "openlabel": {\n    "b": 2\n  }\n}\n'))
    lines = out.read_bytes().splitlines()
    assert lines[0] == b'{"key":"compact","content":' + compact_doc + b"}"
    assert json.loads(lines[1]) == {"key": "pretty", "content": {"openlabel": {"b": 2}}}


async def test_jsonl_refuses_content_that_is_not_json_for_that_entry_alone(
    tmp_path: Path,
) -> None:
    """Non-JSON content is a TransferError for that entry, in write and write_many alike."""
    out = tmp_path / "out.jsonl"
    async with Driver(JsonlSink(out)) as driver:
        with pytest.raises(TransferError, match="not a JSON document") as raised:
            await driver.write(info("junk"), chunks(b"<html>oops</html>"))
        assert raised.value.item == "junk"
        refusals = await driver.write_many(
            [(info("fine"), b"{}"), (info("junk-2"), b"<html/>"), (info("also"), b"[]")]
        )
        assert [type(r) for r in refusals] == [type(None), TransferError, type(None)]
    assert read_jsonl(out) == {"fine": b"{}", "also": b"[]"}


async def test_jsonl_streams_entries_and_stores_other_bytes_as_base64(tmp_path: Path) -> None:
    """A streamed JSON document keeps its meaning on one line; other bytes stream as base64."""
    out = tmp_path / "out.jsonl"
    pretty = b'{\n  "text": "two\\nlines",\r\n  "n": [1,\n 2]\n}\n'
    binary = bytes(range(256)) * 3 + b"x"  # not a multiple of 3: the tail is padded
    async with Driver(JsonlSink(out)) as driver:
        await driver.write(info("doc"), chunks(pretty, 5))
        await driver.write(info("bin", json_content=False), chunks(binary, 7))
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == {"key": "doc", "content": json.loads(pretty)}
    record = json.loads(lines[1])
    assert record["key"] == "bin"
    assert base64.b64decode(record["content_base64"]) == binary

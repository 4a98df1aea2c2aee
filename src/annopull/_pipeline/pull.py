"""The pull pipeline: any source into any sink, concurrently, resumably.

::

    source.items() ─> [select] ─> fan_out: N × [fetch ─> stage] ─> [write a batch] ─> sink
                         │                                            │
                   ledger (resume) ·                        ledger.record, then every
                   selection (shard, since,                 512 entries or 2 s:
                   skip-existing)                           sink.flush(), ledger.commit()

A source only lists items (key, version, entry name, size hint) and fetches one item's bytes
into a target; a sink only turns entries into an output. Everything between — bounded
fan-out, per-item failures, de-duplication, entry names, selection, the ledger that makes a
run resumable, checkpoints, progress and the report — lives here, the same for every source
and destination.

Per-item problems (a fetch that fails for good, a name the sink refuses, an unparsable
version with ``since``) are failures in the report and the run goes on; what affects the
whole run (the listing failing, the disk, a cancellation) stops it, and what was written
stays durable and journaled for a resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.lowlevel

from annopull._config import EngineConfig
from annopull._errors import (
    AnnopullError,
    ConfigError,
    InvalidResponseError,
    ResumeError,
    RetryBudgetExhaustedError,
    StorageError,
    TransferError,
    WorkerPoolError,
)
from annopull._pipeline.buffers import MemoryBudget, Spool
from annopull._pipeline.ledger import Ledger, LedgerRow
from annopull._pipeline.remote import commit_durable, rebuild_ledger
from annopull._pipeline.scheduler import Fetched, fan_out
from annopull._progress import NullProgress, Progress
from annopull._sinks.base import EntryInfo, Sink
from annopull._storage.base import RemoteState
from annopull._storage.lock import OutputLock
from annopull._transport.flow import TransferStats
from annopull._transport.http import ByteTarget, Transport
from annopull._zip.names import name_candidates, sanitize_entry_name

__all__ = [
    "Failure",
    "InterruptedRunError",
    "Item",
    "PullReport",
    "Selection",
    "Selector",
    "Source",
    "Stage",
    "Staged",
    "in_shard",
    "parse_shard",
    "parse_time",
    "pull",
    "pull_through",
]

#: Checkpoint after this many entries or seconds, whichever comes first: each checkpoint
#: costs an fsync or two, and a crash loses at most one batch, which a resume fetches again.
_CHECKPOINT_ENTRIES = 512
_CHECKPOINT_SECONDS = 2.0
#: Spools held in memory at once, at most ``spool_memory`` each: the default concurrency's
#: worth. Downloads beyond it (the limit grows to hundreds on slow links) spill to disk.
_SPOOLS_IN_MEMORY = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One thing a source lists: what it is, and what its entry in the output is called.

    Sources subclass it to carry what their fetch needs (a signed URL, say).

    Args:
        key: the item's identity, stable across runs (a scene uuid, a URL).
        name: the wanted entry name; made safe and unique by the pipeline.
        version: the item's version (an annotation's ``created``); skip-existing compares it,
            ``since`` reads it as a time.
        size: the byte count, when the listing tells it.
        mtime: the entry's time stamp in the output.
        fields: extra fields JSON Lines writes beside the content.
        json: whether the content must be a JSON document (an object or an array); one
            that plainly is not (an HTML error page) is then that item's failure.
    """

    key: str
    name: str
    version: str = ""
    size: int | None = None
    mtime: datetime | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    json: bool = False


ItemT = TypeVar("ItemT", bound=Item)


class Source(Protocol[ItemT]):
    """What the pipeline pulls from."""

    @property
    def fingerprint(self) -> Mapping[str, str]:
        """What this run is for (e.g. project, type); a resume must match it.

        Read once the first item is listed (or the listing ended empty), so a source may
        learn it from reading its list.
        """

    def items(self) -> AsyncGenerator[ItemT, None]:
        """List the items lazily (read ahead no further than the fetches need)."""

    async def fetch(
        self, item: ItemT, target: ByteTarget, *, on_bytes: Callable[[int], None]
    ) -> ItemT | None:
        """Fetch ``item``'s bytes into ``target``; raise :class:`AnnopullError` for a failure.

        Returns ``None``, or the item as its answer described it when the listing could not
        (a list of scene uuids tells no versions): that item is the one written and
        journaled, and ``since`` and skip-existing are checked on it.
        """


@dataclass(frozen=True, slots=True)
class Staged:
    """What a stage hands on when it changes more than the bytes.

    Args:
        spool: the bytes to write.
        name: the entry's new name (made safe and unique like any), or ``None`` to keep it.
        json: whether the new bytes must be a JSON document, or ``None`` to keep the item's.
    """

    spool: Spool
    name: str | None = None
    json: bool | None = None


#: Between fetch and write: gets the item and its bytes, returns the bytes to write (the same
#: spool or a new one, or a :class:`Staged` to rename the entry too) or ``None`` to leave the
#: item out (counted as left out). An :class:`AnnopullError` it raises is that item's failure.
Stage = Callable[[ItemT, Spool], Awaitable[Spool | Staged | None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """An item that did not arrive, and why."""

    item: str
    reason: str
    url: str | None = None
    status: int | None = None
    attempts: int | None = None

    @classmethod
    def of(cls, item: str, exc: AnnopullError) -> Failure:
        """The failure ``exc`` describes, for ``item``."""
        return cls(
            item=item, reason=str(exc), url=exc.url, status=exc.status, attempts=exc.attempts
        )

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data; absent context is left out."""
        data: dict[str, Any] = {"item": self.item, "reason": self.reason}
        for name in ("url", "status", "attempts"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data


@dataclass(frozen=True, kw_only=True)
class PullReport:
    """What a pull did, the same for every source and destination.

    ``transfer`` is the transport's flow control per host (limits, retries, pauses, a host
    given up), filled by whoever owns the transport: ``Transport.stats()``.
    """

    output: str
    listed: int
    downloaded: int
    skipped: int
    failures: tuple[Failure, ...]
    bytes: int
    elapsed: float
    resumed: bool
    transfer: TransferStats = field(default_factory=TransferStats)
    #: Items a stage left out on purpose (a transform returning ``None``): not failures.
    left_out: int = 0

    @property
    def ok(self) -> bool:
        """True when every wanted item arrived."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the CLI's ``--summary``)."""
        return {
            "status": "complete" if self.ok else "partial",
            "output": self.output,
            "listed": self.listed,
            "downloaded": self.downloaded,
            "skipped": self.skipped,
            "left_out": self.left_out,
            "failed": [f.to_dict() for f in self.failures],
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed, 3),
            "resumed": self.resumed,
            # retries, pauses, hosts (limit, retries, pauses per host), budget_exhausted
            **self.transfer.to_dict(),
        }


class InterruptedRunError(ResumeError):
    """The output holds an interrupted run, and no resume was asked for."""


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which listed items to fetch.

    Args:
        since: only items whose version (a time) is after this moment.
        skip_existing: an earlier output (a finished zip, a folder, a ``.jsonl`` or a
            ``.journal``); an item whose version equals the one held there is skipped.
        shard: ``(k, n)``: only items whose key hashes to shard ``k`` of ``n`` (1-based).
    """

    since: datetime | None = None
    skip_existing: Path | None = None
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.shard is not None:
            k, n = self.shard
            if not 1 <= k <= n:
                raise ConfigError(f"a shard is k of n with 1 <= k <= n, got {k} of {n}")

    def fingerprint(self) -> dict[str, str]:
        """What of the selection a resume must match (skip-existing is not checked)."""
        return {
            "shard": "/".join(map(str, self.shard)) if self.shard else "",
            # A resume with another since would leave a mix of two selections in one output.
            "since": self.since.isoformat() if self.since else "",
        }


class Selector:
    """Applies a :class:`Selection` to items: the index of an earlier output loaded once.

    Use as ``async with Selector(selection) as selector``; :meth:`wants` is cheap and
    blocking-free enough for the listing task (an indexed lookup).
    """

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self._previous: Ledger | None = None

    async def __aenter__(self) -> Selector:
        if self.selection.skip_existing is not None:
            # Only --skip-existing reads an earlier output (and needs the zip reader).
            from annopull._pipeline.previous import load_previous_versions

            self._previous = await anyio.to_thread.run_sync(
                load_previous_versions, self.selection.skip_existing
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            previous, self._previous = self._previous, None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(previous.close)

    def wants(self, item: Item) -> bool:
        """Whether ``item`` passes every filter.

        Raises:
            TransferError: the item's version is not a time, and ``since`` needs one (a
                problem of that item, not of the run).
        """
        selection = self.selection
        if selection.shard is not None and not in_shard(item.key, selection.shard):
            return False
        # An item listed without a version is checked once its fetch has told it.
        return not item.version or self.wants_version(item)

    def wants_version(self, item: Item) -> bool:
        """Whether ``item``'s version passes ``since`` and skip-existing.

        Raises:
            TransferError: the item's version is not a time, and ``since`` needs one.
        """
        selection = self.selection
        if selection.since is not None:
            try:
                if parse_time(item.version) <= selection.since:
                    return False
            except ConfigError:
                raise TransferError(
                    f"its version {item.version[:80]!r} is not a time, so since cannot tell",
                    item=item.key,
                ) from None
        held = self._previous.version_of(item.key) if self._previous is not None else None
        return not _same_version(held, item.version)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as an aware datetime (UTC when it names no zone).

    Raises:
        ConfigError: ``text`` is not an ISO 8601 time.
    """
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ConfigError(f"not an ISO 8601 time: {text[:80]!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``.

    Raises:
        ConfigError: not ``K/N`` with ``1 <= K <= N``.
    """
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ConfigError(f"a shard is K/N with 1 <= K <= N, got {text!r}")
    return int(k), int(n)


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Stable across processes and machines: a hash of the key, not Python's ``hash``."""
    k, n = shard
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n == k - 1


def _same_version(held: str | None, version: str) -> bool:
    """Whether an earlier output holds this version (to the millisecond, for file times)."""
    if held is None:
        return False
    if held == version:
        return True
    try:
        return abs(parse_time(held).timestamp() - parse_time(version).timestamp()) < 0.001
    except ConfigError:
        return False


async def pull(
    source: Source[ItemT],
    sink: Sink,
    *,
    selection: Selection | None = None,
    resume: bool = False,
    stage: Stage[ItemT] | None = None,
    progress: Progress | None = None,
    concurrency: int | None = None,
    spool_memory: int | None = None,
    spool_dir: Path | None = None,
) -> PullReport:
    """Pull every selected item of ``source`` into ``sink`` and report what happened.

    Args:
        source: lists items and fetches their bytes.
        sink: where entries go (:class:`~annopull.ZipSink`, :class:`~annopull.DirectorySink`,
            :class:`~annopull.JsonlSink`).
        selection: filters (since, skip-existing, shard).
        resume: continue the interrupted run whose journal is beside the output (a fresh
            run when there is none, so that scripts can always ask for it).
        stage: runs on each item's bytes between fetch and write.
        progress: where progress goes.
        concurrency: fetches in flight at once (the engine's default when omitted).
        spool_memory: bytes of one item kept in RAM before it spills to a temporary file.
        spool_dir: where spilled items wait (the output's folder keeps them on its disk).

    Raises:
        InterruptedRunError: the output holds an interrupted run and ``resume`` is False.
        ResumeError: the interrupted run is of another source, selection or output kind.
        AnnopullError: the listing or the output failed (per-item failures do not raise:
            they are in the report).
    """
    defaults = EngineConfig()
    run = _Run(
        source=source,
        sink=sink,
        selection=selection or Selection(),
        stage=stage,
        progress=progress or NullProgress(),
        spool_memory=spool_memory or defaults.spool_memory,
        spool_dir=spool_dir,
    )
    return await run.go(resume=resume, concurrency=concurrency or defaults.concurrency)


async def pull_through(
    transport: Transport,
    source: Source[ItemT],
    sink: Sink,
    *,
    selection: Selection | None = None,
    resume: bool = False,
    stage: Stage[ItemT] | None = None,
    progress: Progress | None = None,
    spool_dir: Path | None = None,
) -> PullReport:
    """:func:`pull` with the settings of ``transport``'s engine, reporting its flow control.

    What a source that fetches through a :class:`Transport` calls: spool size comes from
    the engine, and the report carries the transport's limits, retries and pauses per host.
    Fetches run up to ``max_concurrency`` at once: each host's adaptive limit, which starts
    at ``concurrency``, decides how many of them are on the wire.
    """
    engine = transport.engine
    report = await pull(
        source,
        sink,
        selection=selection,
        resume=resume,
        stage=stage,
        progress=progress,
        concurrency=max(engine.concurrency, engine.max_concurrency),
        spool_memory=engine.spool_memory,
        spool_dir=spool_dir,
    )
    return dataclasses.replace(report, transfer=transport.stats())


class _Run(Generic[ItemT]):
    """One pull: its counters, its ledger, and the steps between source and sink."""

    def __init__(
        self,
        *,
        source: Source[ItemT],
        sink: Sink,
        selection: Selection,
        stage: Stage[ItemT] | None,
        progress: Progress,
        spool_memory: int,
        spool_dir: Path | None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.selection = selection
        self.stage = stage
        self.progress = progress
        self.spool_memory = spool_memory
        self.spool_dir = spool_dir
        self.spool_budget = MemoryBudget(_SPOOLS_IN_MEMORY * spool_memory)
        self.started = time.monotonic()
        self.listed = self.downloaded = self.skipped = self.left_out = self.bytes = 0
        self.failures: list[Failure] = []
        self.ledger: Ledger | None = None
        self.selector = Selector(selection)
        self.held: Ledger | None = None  # the interrupted run's rows, read-only
        self.created: Path | None = None  # a folder made for this run's output
        self.pending = 0
        self.last_checkpoint = time.monotonic()
        #: Items whose fetch described them anew, by the spool holding their bytes.
        self.learned: dict[Spool, ItemT] = {}

    async def go(self, *, resume: bool, concurrency: int) -> PullReport:
        lock = await anyio.to_thread.run_sync(self._lock_output)
        try:
            items = self.source.items()
            async with self.selector, aclosing(items):
                # The first item is listed before any output exists, so a wrong project or
                # bad credentials leave nothing behind.
                first = await anext(items, None)
                resumed = await anyio.to_thread.run_sync(self._open_ledger, resume)
                await self._write_all(self._selected(first, items), concurrency)
            return self._report(resumed)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_indexes)
                if lock is not None:
                    await anyio.to_thread.run_sync(lock.release)
                if self.created is not None and self.ledger is None:
                    # Stopped before any output existed (bad credentials, say): the folder
                    # made for the lock goes too, so nothing is left behind.
                    with contextlib.suppress(OSError):
                        await anyio.Path(self.created).rmdir()

    def _lock_output(self) -> OutputLock | None:
        """Check the output's place up front (before auth and listing) and lock it.

        Raises:
            ConfigError: the output's folder does not exist or cannot be written.
            OutputBusyError: another run is writing this output.
        """
        sink = self.sink
        path = sink.state_path
        if path is None:
            return None
        if not path.parent.exists():
            self.created = path.parent
        try:
            sink.prepare()
        except StorageError:
            raise
        except OSError as exc:
            raise ConfigError(f"cannot create {path.parent}: {exc.strerror}") from None
        if not path.parent.is_dir():
            raise ConfigError(f"the output's folder does not exist: {path.parent}")
        if self.spool_dir is None:
            # Beside the output, not in $TMPDIR (often RAM, often small): big items wait on
            # the disk the output is going to anyway.
            self.spool_dir = path.parent
        lock = OutputLock(path.with_suffix(".lock"), output=sink.description)
        try:
            lock.acquire()
        except PermissionError:
            raise ConfigError(f"cannot write in {path.parent}: permission denied") from None
        return lock

    def _open_ledger(self, resume: bool) -> bool:
        """The ledger for this run: the interrupted run's (resume) or a fresh one."""
        sink = self.sink
        fingerprint = {**self.source.fingerprint, **self.selection.fingerprint()}
        path = sink.state_path
        if path is None:
            self.ledger = Ledger.temporary(kind=sink.kind, directory=self.spool_dir)
            sink.attach(self.ledger, resume=False)
            return False
        if sink.remote_state is not None:
            return self._open_remote_ledger(sink.remote_state, path, fingerprint, resume)
        leftover = path.exists() and sink.has_partial()
        if leftover and not resume:
            raise InterruptedRunError(
                f"{sink.unfinished} holds an interrupted run: resume it, or delete it and "
                f"{path.name} to start over"
            )
        if leftover:
            self.ledger = Ledger.open_existing(path, kind=sink.kind, fingerprint=fingerprint)
            self.held = self.ledger.reader()
        else:
            self.ledger = Ledger.create(path, kind=sink.kind, fingerprint=fingerprint)
        sink.attach(self.ledger, resume=leftover)
        return leftover

    def _open_remote_ledger(
        self, state: RemoteState, path: Path, fingerprint: dict[str, str], resume: bool
    ) -> bool:
        """The ledger of an object-store output: rebuilt from the bucket on resume."""
        sink = self.sink
        header = state.read()
        if header is not None and not resume:
            raise InterruptedRunError(
                f"{sink.description} holds an interrupted run (its state is in "
                f"{state.description}): resume it, or delete that state to start over"
            )
        if header is not None:
            self.ledger = rebuild_ledger(
                state, header, path, kind=sink.kind, fingerprint=fingerprint
            )
            self.held = self.ledger.reader()
        else:
            self.ledger = Ledger.create(path, kind=sink.kind, fingerprint=fingerprint)
            state.start(kind=sink.kind, fingerprint=fingerprint)
        sink.attach(self.ledger, resume=header is not None)
        return header is not None

    def _close_indexes(self) -> None:
        if self.held is not None:
            self.held.close()

    async def _write_all(self, items: AsyncIterator[ItemT], concurrency: int) -> None:
        ledger = self.ledger
        assert ledger is not None
        try:
            # Opening, checkpoints, finishing and aborting all write the output: the disk
            # failing under any of them stops the run as a StorageError naming it.
            with self._output_errors():
                async with self.sink:
                    await fan_out(
                        items,
                        self._fetch,
                        self._write_batch,
                        concurrency=concurrency,
                        discard=_release,
                    )
                    # A stop must never reach the finish below: that would publish the
                    # partial output as complete.
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    # Everything written is made durable before the output is finished, so
                    # a crash while finishing still leaves a resumable run.
                    await self._checkpoint()
        except BaseException:
            with anyio.CancelScope(shield=True):
                # The sink's abort made its data durable; now the rows that describe it.
                await anyio.to_thread.run_sync(_commit_and_close, ledger)
            raise
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(ledger.delete)
            if self.sink.remote_state is not None:
                await anyio.to_thread.run_sync(self.sink.remote_state.clear)

    async def _selected(
        self, first: ItemT | None, rest: AsyncIterator[ItemT]
    ) -> AsyncIterator[ItemT]:
        if first is not None:
            if self._select(first):
                yield first
            skipped_in_a_row = 0
            async for item in rest:
                if self._select(item):
                    skipped_in_a_row = 0
                    yield item
                else:
                    skipped_in_a_row += 1
                    if skipped_in_a_row % 1024 == 0:
                        # A resume skipping most of a listing that needs no await (a list
                        # in memory) must still let signals and progress through.
                        await anyio.lowlevel.checkpoint()
        self.progress.listing_done()

    def _select(self, item: ItemT) -> bool:
        """Whether to fetch ``item``; counts it as skipped or failed when not."""
        self.progress.listed()
        if self.held is not None and self.held.version_of(item.key) is not None:
            self._skip()
            return False
        try:
            wanted = self.selector.wants(item)
        except AnnopullError as exc:
            self._fail(item.key, exc)
            return False
        if not wanted:
            self._skip()
        return wanted

    async def _fetch(self, item: ItemT) -> Staged | None:
        spool = Spool(
            memory_limit=self.spool_memory, directory=self.spool_dir, budget=self.spool_budget
        )
        try:
            learned = await self.source.fetch(item, spool, on_bytes=self.progress.bytes)
            if learned is not None or not item.version:
                item = learned or item
                if not self.selector.wants_version(item):
                    await spool.aclose()
                    self._skip()
                    return None
            staged = Staged(spool) if self.stage is None else await self.stage(item, spool)
            if staged is None:
                await spool.aclose()
                self._leave_out()
                return None
            staged = staged if isinstance(staged, Staged) else Staged(staged)
            if staged.spool is not spool:
                await spool.aclose()
        except (StorageError, RetryBudgetExhaustedError, WorkerPoolError):
            # The local disk under the spool, a host given up for the run, or a stage's
            # workers that keep dying: every item would fail the same way. Stopping keeps
            # what arrived resumable instead of finishing an output with holes.
            with anyio.CancelScope(shield=True):
                await spool.aclose()
            raise
        except AnnopullError as exc:
            await spool.aclose()
            self._fail(item.key, exc)
            return None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await spool.aclose()
            raise
        if learned is not None:
            self.learned[staged.spool] = learned
        return staged

    async def _write_batch(self, batch: list[Fetched[ItemT, Staged]]) -> None:
        """Write fetched items: those in memory together (one sink call), spilled ones streamed."""
        for fetched in batch:
            fetched.item = self.learned.pop(fetched.result.spool, fetched.item)
        try:
            named = self._name(batch)
            small = [(f, info) for f, info in named if f.result.spool.in_memory]
            entries = [(info, f.result.spool.getvalue()) for f, info in small]
            rows: list[LedgerRow] = []
            with self._output_errors():
                written = await self.sink.write_many(entries)
            for (fetched, info), outcome in zip(small, written, strict=True):
                self._settle(fetched, info, outcome, rows)
            for fetched, info in named:
                if not fetched.result.spool.in_memory:
                    self._settle(fetched, info, await self._stream(fetched, info), rows)
            await self._record(rows)
        finally:
            for fetched in batch:
                await fetched.result.spool.aclose()

    async def _stream(
        self, fetched: Fetched[ItemT, Staged], info: EntryInfo
    ) -> bytes | AnnopullError:
        """Write one spilled item; what the sink refuses for this entry alone is its failure."""
        try:
            with self._output_errors():
                return await self.sink.write(info, fetched.result.spool.chunks())
        except StorageError:
            raise
        except AnnopullError as exc:
            return exc

    @contextlib.contextmanager
    def _output_errors(self) -> Iterator[None]:
        """The disk (or store) failing under the output stops the run, as a StorageError."""
        try:
            yield
        except StorageError:
            raise
        except OSError as exc:
            # Not the network's: the transport turns its own OSErrors into TransferErrors.
            raise StorageError(
                f"cannot write the output: {exc.strerror or exc}", path=self.sink.unfinished
            ) from exc

    def _name(
        self, batch: list[Fetched[ItemT, Staged]]
    ) -> list[tuple[Fetched[ItemT, Staged], EntryInfo]]:
        """Drop items the output already holds; give the others safe, unique names.

        A listing that shifts while it is paged can name an item twice, and the output must
        hold each item once. Between writes the ledger's own connection is idle, so its
        pending rows (this run's) are seen too.
        """
        ledger = self.ledger
        assert ledger is not None
        # Two indexed queries for the whole batch, not one or two per entry.
        held = ledger.held_keys(f.item.key for f in batch)
        keys: set[str] = set()
        wanted: list[tuple[Fetched[ItemT, Staged], ItemT, str]] = []
        for fetched in batch:
            item = _restaged(fetched.item, fetched.result)
            if item.key in keys or item.key in held:
                self._skip()
                continue
            try:
                clean = sanitize_entry_name(item.name)
                _check_json(item, fetched.result.spool)
            except AnnopullError as exc:
                self._fail(item.key, exc)
                continue
            keys.add(item.key)
            wanted.append((fetched, item, clean))
        taken = ledger.held_names(clean for _, _, clean in wanted)
        names: set[str] = set()
        named = []
        for fetched, item, clean in wanted:
            name = next(
                c
                for c in name_candidates(clean)
                if c not in names and c not in taken and (c == clean or not ledger.has_name(c))
            )
            names.add(name)
            named.append((fetched, _entry_info(item, name, fetched.result.spool.size)))
        return named

    def _settle(
        self,
        fetched: Fetched[ItemT, Staged],
        info: EntryInfo,
        outcome: bytes | AnnopullError,
        rows: list[LedgerRow],
    ) -> None:
        if isinstance(outcome, AnnopullError):
            self._fail(fetched.item.key, outcome)
            return
        rows.append(LedgerRow(key=info.key, version=info.version, name=info.name, receipt=outcome))
        self.listed += 1
        self.downloaded += 1
        self.bytes += fetched.result.spool.size
        self.progress.item_done()

    async def _record(self, rows: list[LedgerRow]) -> None:
        ledger = self.ledger
        assert ledger is not None
        if rows:
            await anyio.to_thread.run_sync(ledger.record, rows)
        self.pending += len(rows)
        due = time.monotonic() - self.last_checkpoint >= _CHECKPOINT_SECONDS
        if self.pending >= _CHECKPOINT_ENTRIES or (due and self.pending):
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Make the sink's data durable, then the rows that describe it (never the reverse)."""
        ledger = self.ledger
        assert ledger is not None
        with anyio.CancelScope(shield=True):
            await self.sink.flush()
            await anyio.to_thread.run_sync(commit_durable, self.sink.remote_state, ledger)
        self.pending = 0
        self.last_checkpoint = time.monotonic()

    def _skip(self) -> None:
        self.listed += 1
        self.skipped += 1
        self.progress.item_done(skipped=True)

    def _leave_out(self) -> None:
        self.listed += 1
        self.left_out += 1
        self.progress.item_done(skipped=True)

    def _fail(self, item: str, exc: AnnopullError) -> None:
        self.listed += 1
        self.failures.append(Failure.of(item, exc))
        self.progress.item_failed()

    def _report(self, resumed: bool) -> PullReport:
        return PullReport(
            output=self.sink.description,
            listed=self.listed,
            downloaded=self.downloaded,
            skipped=self.skipped,
            failures=tuple(self.failures),
            bytes=self.bytes,
            elapsed=time.monotonic() - self.started,
            resumed=resumed,
            left_out=self.left_out,
        )


def _restaged(item: ItemT, staged: Staged) -> ItemT:
    """``item`` as its stage renamed or retyped it."""
    if staged.name is None and staged.json is None:
        return item
    return dataclasses.replace(
        item,
        name=item.name if staged.name is None else staged.name,
        json=item.json if staged.json is None else staged.json,
    )


def _check_json(item: Item, spool: Spool) -> None:
    """Refuse an item that should be a JSON document and plainly is not.

    Cheap on purpose (no parse on the hot path): the first and last bytes that are not white
    space must be ``{}`` or ``[]``, so an HTML error page served with 200 fails here. Items
    spilled to disk (bigger than ``spool_memory``) are not read back for this.

    Raises:
        InvalidResponseError: the bytes are not a JSON document.
    """
    if not item.json or not spool.in_memory:
        return
    body = spool.getvalue().strip()
    if len(body) < 2 or (body[0], body[-1]) not in _JSON_ENDS:
        raise InvalidResponseError("content is not a JSON document", item=item.key)


_JSON_ENDS = frozenset({(ord("{"), ord("}")), (ord("["), ord("]"))})


def _entry_info(item: Item, name: str, size: int) -> EntryInfo:
    return EntryInfo(
        name=name,
        key=item.key,
        version=item.version,
        mtime=item.mtime,
        size=size,
        fields=item.fields,
        json=item.json,
    )


def _commit_and_close(ledger: Ledger) -> None:
    """Keep what the stopped run journaled; the error that stopped it matters more than
    one more failure to commit (a full disk fails both; a resume then fetches those again)."""
    try:
        ledger.commit()
    except StorageError:
        pass
    finally:
        ledger.close()


async def _release(staged: Staged) -> None:
    await staged.spool.aclose()

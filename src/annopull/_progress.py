"""Progress reporting: what the engine tells, and a live display of it on stderr.

The engine only calls the :class:`Progress` protocol; :class:`NullProgress` is the default
for library use, :class:`TerminalProgress` the CLI's live bar (rich) on a terminal, with a
plain line every few seconds when stderr is a file or a pipe (cron logs, CI).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson

from annopull._redact import redact

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from annopull._transport.flow import TransferStats

__all__ = [
    "Counts",
    "JsonProgress",
    "NullProgress",
    "Progress",
    "TerminalProgress",
    "describe_transfer",
    "format_bytes",
]


class Progress(Protocol):
    """What a long job reports as it goes; every method must be cheap and never block."""

    def listed(self, count: int = 1) -> None:
        """``count`` more items are known to be wanted."""

    def listing_done(self) -> None:
        """The list of items is complete: the total is now final."""

    def item_done(self, *, skipped: bool = False) -> None:
        """One item arrived (or was skipped as already present)."""

    def item_failed(self) -> None:
        """One item failed for good."""

    def bytes(self, count: int) -> None:
        """``count`` bytes arrived (negative when a retry discarded some)."""

    def expect_bytes(self, total: int | None) -> None:
        """The job's size in bytes, when it is a single download."""

    def status(self, text: str) -> None:
        """A one-line state, e.g. an export job's status while it is being built."""


class NullProgress:
    """Reports nothing: the default for library calls."""

    def listed(self, count: int = 1) -> None:
        pass

    def listing_done(self) -> None:
        pass

    def item_done(self, *, skipped: bool = False) -> None:
        pass

    def item_failed(self) -> None:
        pass

    def bytes(self, count: int) -> None:
        pass

    def expect_bytes(self, total: int | None) -> None:
        pass

    def status(self, text: str) -> None:
        pass


@dataclass(slots=True, kw_only=True)
class Counts:
    """A job's item and byte counts at one moment; counts of several jobs add up."""

    listed: int = 0
    listing_done: bool = False
    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0

    @classmethod
    def total(cls, parts: Iterable[Counts]) -> Counts:
        """The sum of ``parts``; its listing is done when every part's is (and one exists)."""
        total = cls(listing_done=True)
        seen = False
        for part in parts:
            seen = True
            total.listed += part.listed
            total.listing_done = total.listing_done and part.listing_done
            total.downloaded += part.downloaded
            total.skipped += part.skipped
            total.failed += part.failed
            total.bytes += part.bytes
        total.listing_done = total.listing_done and seen
        return total


def format_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def describe_transfer(stats: TransferStats) -> str:
    """Flow control in a few words: ``'limit 48, paused 3 s, 12 retries'``.

    The limit is the busiest host's (the one most requests went to, storage in a bulk pull);
    a pause shows while one lasts, with the seconds it has left; a host given up is named.
    """
    parts = []
    busiest = stats.busiest()
    if busiest is not None:
        parts.append(f"limit {busiest.limit}")
    paused = stats.paused_for
    if paused > 0:
        parts.append(f"paused {math.ceil(paused)} s")
    if stats.retries:
        parts.append(f"{stats.retries} retr{'y' if stats.retries == 1 else 'ies'}")
    given_up = [h.host for h in stats.hosts if h.gave_up]
    if given_up:
        parts.append(f"gave up on {', '.join(given_up)}")
    return ", ".join(parts)


#: Seconds between updates of the live bar's fields (it redraws 5 times a second).
_UPDATE_INTERVAL = 0.1


class TerminalProgress:
    """Live progress on stderr: a rich bar on a terminal, periodic plain lines elsewhere.

    Use as a context manager around the job. Counts items (done, skipped, failed), bytes,
    rate and, once the listing is complete, the ETA; with :meth:`watch`, also the
    transport's flow control (the concurrency limit, a pause, retries).

    Args:
        label: what the job is, shown at the left.
        stream: where to draw (stderr).
        interval: seconds between plain lines when ``stream`` is not a terminal.
        live: draw the bar (True) or plain lines (False); ``None``: the bar on a terminal.
    """

    def __init__(
        self,
        label: str,
        *,
        stream: IO[str] | None = None,
        interval: float = 10.0,
        live: bool | None = None,
    ):
        self._stream = stream or sys.stderr
        self._label = label
        self._interval = interval
        self._live = self._stream.isatty() if live is None else live
        self._items_total = 0
        self._listing_done = False
        self.done = 0
        self.skipped = 0
        self.failed = 0
        self.byte_count = 0
        self._bytes_total: int | None = None
        self._status = ""
        self._started = time.monotonic()
        self._last_line = self._started
        self._last_update = -math.inf
        self._rich: RichProgress | None = None
        self._task: TaskID | None = None
        self._transfer: Callable[[], TransferStats] | None = None

    def watch(self, transfer: Callable[[], TransferStats]) -> None:
        """Show flow control in the line, e.g. ``limit 48, paused 3 s, 12 retries``.

        Args:
            transfer: returns the current stats, e.g. ``client.transport.stats``; called at
                each redraw, from the display's thread too.
        """
        self._transfer = transfer

    def __enter__(self) -> TerminalProgress:
        if self._live:
            # rich is imported only for a live bar: a quiet, JSON or piped run never needs it.
            from annopull._progress_bar import live_bar

            self._rich = live_bar(stream=self._stream, transfer_text=self._transfer_text)
            self._rich.start()
            self._task = self._rich.add_task(self._label, total=None, counts="", extra="")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # The bar shows its final state; plain output needs no last line, since the
        # command's one-line summary (or its error) follows.
        if self._rich is not None:
            self._refresh(force=True)
            self._rich.stop()

    # -- Progress protocol -------------------------------------------------------------
    def listed(self, count: int = 1) -> None:
        self._items_total += count
        self._refresh()

    def listing_done(self) -> None:
        self._listing_done = True
        self._refresh(force=True)

    def item_done(self, *, skipped: bool = False) -> None:
        self.done += 1
        self.skipped += skipped
        self._refresh()

    def item_failed(self) -> None:
        self.failed += 1
        self._refresh()

    def bytes(self, count: int) -> None:
        self.byte_count += count
        self._refresh()

    def expect_bytes(self, total: int | None) -> None:
        self._bytes_total = total
        self._refresh()

    def status(self, text: str) -> None:
        self._status = text
        self._refresh(force=True)

    def show(self, counts: Counts, *, status: str = "") -> None:
        """Show ``counts`` as they are, e.g. totals a driver gathers from its shards.

        Args:
            counts: the job's counts now (they replace what was counted so far).
            status: a one-line state shown beside them.
        """
        self._items_total = counts.listed
        self._listing_done = counts.listing_done
        self.done = counts.downloaded + counts.skipped
        self.skipped = counts.skipped
        self.failed = counts.failed
        self.byte_count = counts.bytes
        self._status = status
        self._refresh()

    # -- drawing -----------------------------------------------------------------------
    def _extra(self) -> str:
        parts = []
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.failed:
            failed = f"{self.failed} failed"
            parts.append(f"[red]{failed}[/red]" if self._live else failed)
        if self._status:
            parts.append(self._status)
        return "  ".join(parts)

    def _refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._rich is not None and self._task is not None:
            # The bar redraws 5 times a second: feeding it on every item or chunk would
            # cost more than the item itself on a fast pull.
            if not force and now - self._last_update < _UPDATE_INTERVAL:
                return
            self._last_update = now
            by_items = self._bytes_total is None
            self._rich.update(
                self._task,
                total=(self._items_total if self._listing_done else None)
                if by_items
                else self._bytes_total,
                completed=self.done + self.failed if by_items else self.byte_count,
                counts=self._counts(now),
                extra=self._extra(),
            )
            return
        if force or now - self._last_line >= self._interval:
            self._last_line = now
            print(self._plain_line(now), file=self._stream, flush=True)

    def _counts(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        total = f"/{self._items_total}" if self._listing_done else ""
        finished = self.done + self.failed
        items = f"{finished}{total} items ({finished / elapsed:.0f}/s)" if self._items_total else ""
        size = format_bytes(self.byte_count)
        if self._bytes_total:
            size += f"/{format_bytes(self._bytes_total)}"
        rate = f"{format_bytes(self.byte_count / elapsed)}/s"
        return "  ".join(f for f in (items, size, rate) if f)

    def _transfer_text(self) -> str:
        return describe_transfer(self._transfer()) if self._transfer is not None else ""

    def _plain_line(self, now: float) -> str:
        elapsed = now - self._started
        fields = [
            self._label,
            self._counts(now),
            f"{elapsed:.0f}s",
            self._extra(),
            self._transfer_text(),
        ]
        return " | ".join(f for f in fields if f)


class JsonProgress:
    """Progress for machines: one JSON object a line on stderr, every ``interval`` seconds.

    Each line is an ``"event": "progress"`` (and the last one ``"done"``) with the job, the
    shard, the elapsed seconds, the item counts (listed, downloaded, skipped, failed),
    bytes, rates and, with :meth:`watch`, the busiest host's concurrency limit, retries and
    a pause. Lines come on a timer, so a stalled job still shows it is alive. Every string
    is masked (:func:`~annopull._redact.redact`): no signed URL or secret reaches a log.
    Use as a context manager around the job.

    Args:
        label: what the job is (e.g. ``"kognic P/T"``).
        stream: where the lines go (stderr).
        interval: seconds between lines.
        shard: ``(k, n)`` when the job is one shard of a sharded run.
        emit: where each event goes instead of ``stream`` (called from a timer thread).
    """

    def __init__(
        self,
        label: str,
        *,
        stream: IO[str] | None = None,
        interval: float = 1.0,
        shard: tuple[int, int] | None = None,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._stream = stream or sys.stderr
        self._label = label
        self._interval = interval
        self._shard = f"{shard[0]}/{shard[1]}" if shard is not None else None
        self._emit = emit or self._write
        self.counts = Counts()
        self._status = ""
        self._started = time.monotonic()
        self._transfer: Callable[[], TransferStats] | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def watch(self, transfer: Callable[[], TransferStats]) -> None:
        """Add the transport's flow control to each line.

        Args:
            transfer: returns the current stats (``client.transport.stats``); called from
                the timer thread.
        """
        self._transfer = transfer

    def __enter__(self) -> JsonProgress:
        self._started = time.monotonic()
        self._ticker = threading.Thread(target=self._tick, name="annopull-progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._emit(self.event(final=True))

    def _tick(self) -> None:
        while not self._stop.wait(self._interval):
            self._emit(self.event())

    def _write(self, event: dict[str, Any]) -> None:
        print(json_line(event), file=self._stream, flush=True)

    def event(self, *, final: bool = False) -> dict[str, Any]:
        """The job's state now, as the JSON object a line holds."""
        counts = self.counts
        elapsed = time.monotonic() - self._started
        event: dict[str, Any] = {
            "event": "done" if final else "progress",
            "job": self._label,
            "shard": self._shard,
            "elapsed_s": round(elapsed, 3),
            "listed": counts.listed,
            "listing_done": counts.listing_done,
            "downloaded": counts.downloaded,
            "skipped": counts.skipped,
            "failed": counts.failed,
            "bytes": counts.bytes,
            "items_per_s": round((counts.downloaded + counts.failed) / max(elapsed, 1e-9), 1),
            "bytes_per_s": round(counts.bytes / max(elapsed, 1e-9)),
            "status": self._status,
            **transfer_fields(self._transfer() if self._transfer is not None else None),
        }
        return event

    # -- Progress protocol -------------------------------------------------------------
    def listed(self, count: int = 1) -> None:
        self.counts.listed += count

    def listing_done(self) -> None:
        self.counts.listing_done = True

    def item_done(self, *, skipped: bool = False) -> None:
        if skipped:
            self.counts.skipped += 1
        else:
            self.counts.downloaded += 1

    def item_failed(self) -> None:
        self.counts.failed += 1

    def bytes(self, count: int) -> None:
        self.counts.bytes += count

    def expect_bytes(self, total: int | None) -> None:
        pass  # a line carries bytes so far; a reader knowing the size divides itself

    def status(self, text: str) -> None:
        self._status = text


def transfer_fields(stats: TransferStats | None) -> dict[str, Any]:
    """Flow control as the fields of a progress event: limit, retries, pause seconds."""
    if stats is None:
        return {"limit": None, "retries": 0, "paused_s": 0.0}
    busiest = stats.busiest()
    return {
        "limit": busiest.limit if busiest is not None else None,
        "retries": stats.retries,
        "paused_s": round(stats.paused_for, 1),
    }


def json_line(event: dict[str, Any]) -> str:
    """``event`` as one line of JSON, every string in it masked."""
    return orjson.dumps(
        {key: redact(value) if isinstance(value, str) else value for key, value in event.items()}
    ).decode()

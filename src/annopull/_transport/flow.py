"""Flow control per host: an adaptive concurrency limit, a shared pause, a retry budget.

::

    a request ──> FlowControl.host(url) ──> HostFlow (one per scheme + host + port)
                                             ├── HostLimiter  acquire(): pause ─> limit ─> rate
                                             │                on_success: limit + 1/limit
                                             │                  (while the rate rises)
                                             │                on_overload: limit × 0.5
                                             ├── RetryBudget  retries ≤ floor + ratio × requests
                                             └── patience     seconds without a good answer

Every task retrying on its own turns a server's "slow down" into more load: a rate limit
then burns attempts instead of slowing the run. So the transport keeps, per host, what TCP
and Netflix's concurrency-limits keep per connection: a concurrency *limit* that grows by
one per window of good answers while latency holds and the answer rate keeps rising
with it (additive increase) and halves on a 429, a 503 or a timeout (multiplicative
decrease), and a *pause* that a ``Retry-After`` puts on every task talking to that host,
not only the one that got it. On top, a *retry
budget* in the spirit of the AWS SDK's retry quota and Google SRE's client-side throttling:
retries may be at most a share of a host's requests, and a host that gives no good answer
for ``host_wait_max`` seconds is given up. A host given up stays so for the rest of the
run: every later request to it fails at once with :class:`RetryBudgetExhaustedError`, so a
dead platform ends a run in bounded time instead of retrying each item to exhaustion.

Time comes from a :class:`Clock`, so tests drive the limiter with a fake one, without
sleeping.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio

from annopull._config import EngineConfig

__all__ = [
    "Clock",
    "FlowControl",
    "HostFlow",
    "HostLimiter",
    "HostStats",
    "HostUnavailable",
    "RateLimiter",
    "RetryBudget",
    "Slot",
    "SystemClock",
    "TransferStats",
    "origin_of",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class HostUnavailable(Exception):
    """The limiter of a given-up host refuses a slot; ``str()`` says why."""


class Clock(Protocol):
    """Where flow control reads the time and sleeps; tests pass a fake one."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds``."""


class SystemClock:
    """The monotonic clock of the event loop (``time.monotonic``, which asyncio uses too).

    ``now`` is readable from any thread, so a progress display drawn by another thread
    may show how long a pause still lasts.
    """

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def origin_of(url: str) -> str:
    """``https://Host:443/a?b`` -> ``https://host``: the key that hosts are limited by."""
    # Every request asks, with a signed URL that differs each time: parse only the part
    # before the path, and that once per host.
    start = url.find("//") + 2
    stop = len(url)
    for mark in "/?#":
        found = url.find(mark, start)
        if found != -1 and found < stop:
            stop = found
    return _origin(url[:stop])


@functools.lru_cache(maxsize=256)
def _origin(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


class RateLimiter:
    """Spaces requests evenly so that no more than ``rate`` start per second.

    Args:
        rate: requests per second, more than 0.
        clock: the time source (the system clock when omitted).
    """

    def __init__(self, rate: float, clock: Clock | None = None) -> None:
        self._interval = 1.0 / rate
        self._clock = clock or SystemClock()
        self._next = -math.inf

    async def wait(self) -> None:
        """Return when the next request may start."""
        # Reserving the moment before sleeping needs no lock: nothing awaits in between.
        now = self._clock.now()
        start = max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await self._clock.sleep(start - now)


@dataclass(frozen=True, slots=True)
class Slot:
    """A permission to send one request, from :meth:`HostLimiter.acquire`.

    Args:
        ticket: the number of the slot; overload signals of requests sent before the last
            decrease carry a lower one and do not decrease the limit again.
        started: when the request could go (after any pause and rate wait).
        saturated: the limit was reached when the slot was given, so the limit, not the
            caller, bounded the concurrency; only then may good answers raise it.
    """

    ticket: int
    started: float
    saturated: bool


class HostLimiter:
    """The adaptive concurrency limit and the shared pause of one host.

    Use ``async with limiter.slot() as slot:`` around each request (or
    :meth:`acquire` / :meth:`release`), then report how it went with :meth:`on_success`
    or :meth:`on_overload`; :meth:`pause` holds back every new request for a while.

    The limit starts as TCP's does, in *slow start*: every :attr:`PROBE_WINDOWS` windows
    of answers at a full limit (a *probe*) it doubles, for as long as each doubling paid
    (see below), so a latency-bound pull reaches a high limit in a few seconds rather than
    one step per window. The first doubling that did not pay, an overload, or the maximum
    ends slow start for good.

    After that the limit is AIMD: each good answer that came while the limit was reached
    adds ``1/limit`` (one per window of answers, as TCP's congestion avoidance), as long as
    recent latency is not above the long-run average by more than
    :attr:`LATENCY_TOLERANCE`; an overload halves it, once per window: answers to requests
    sent before the last decrease do not decrease it again. It stays within
    ``1..maximum``. Waiting requests get their slots first come, first served.

    Growth must pay: at the end of each probe the limiter compares the answer rate with the
    previous probe's, and when the limit rose but the rate did not rise by at least
    :attr:`GAIN_SHARE` of that (the client, or the server, is saturated and more requests
    in flight would only queue), the limit goes back to where that probe began and holds
    for :attr:`HOLD_PROBES` probes before growth is tried again.

    Args:
        initial: the limit to start at (the engine's ``concurrency``).
        maximum: the most it may grow to (at least ``initial``).
        clock: time source and sleeper.
        rate: at most this many requests start per second; 0 for no such limit.
    """

    #: Factor of a multiplicative decrease.
    DECREASE = 0.5
    #: Growth holds while recent latency exceeds the long-run average by this factor.
    LATENCY_TOLERANCE = 1.5
    #: Weights of the newest latency in the recent and the long-run averages.
    FAST_WEIGHT = 0.2
    SLOW_WEIGHT = 0.02
    #: Windows of answers per throughput probe.
    PROBE_WINDOWS = 4
    #: Growth holds when a probe's rate rose by less than this share of its limit's rise.
    GAIN_SHARE = 0.25
    #: Probes that growth then holds for.
    HOLD_PROBES = 8

    def __init__(
        self, *, initial: int, maximum: int, clock: Clock | None = None, rate: float = 0.0
    ) -> None:
        if initial < 1:
            raise ValueError(f"the initial limit must be at least 1, got {initial}")
        self._clock = clock or SystemClock()
        self._limit = float(initial)
        self.maximum = max(initial, maximum)
        self.lowest = self.highest = initial
        self._rate = RateLimiter(rate, self._clock) if rate > 0 else None
        self._in_flight = 0
        self._waiters: deque[anyio.Event] = deque()
        self._issued = 0
        self._cut_at = 0
        self._fast: float | None = None
        self._slow = 0.0
        self._probe_started = self._clock.now()
        self._probe_answers = 0
        self._probe_rate: float | None = None
        self._probe_limit = initial
        self._hold = 0
        # Slow start: doubling per probe until a doubling does not pay (or an overload).
        self._slow_start = True
        self._probe_saturated = 0
        self._paused_until = -math.inf
        self._sleepers: set[anyio.CancelScope] = set()
        self._closed: str | None = None
        #: Pauses begun (a pause extended while it lasts is one pause).
        self.pauses = 0
        #: Seconds paused in all (overlapping pauses counted once).
        self.paused_total = 0.0

    def __repr__(self) -> str:
        return f"HostLimiter(limit={self.limit}, in_flight={self._in_flight})"

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        """Slots held now."""
        return self._in_flight

    @property
    def paused_for(self) -> float:
        """Seconds the current pause still lasts (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock.now())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Hold a slot for the body of the ``async with``.

        Raises:
            HostUnavailable: the host was given up (:meth:`close`).
        """
        slot = await self.acquire()
        try:
            yield slot
        finally:
            self.release(slot)

    async def acquire(self) -> Slot:
        """Wait out any pause, then for a free slot (and the rate limit), and take it.

        Raises:
            HostUnavailable: the host was given up, before or while waiting.
        """
        waited = False
        while True:
            self._check_open()
            delay = self._paused_until - self._clock.now()
            if delay > 0:
                await self._sleep(delay)
                continue
            if self._in_flight < self.limit and not self._waiters:
                self._in_flight += 1
            else:
                waited = True
                await self._queue()
                # The slot was handed over, but a pause (or the end) may have come since.
                if self._closed is not None or self._paused_until > self._clock.now():
                    self._give_back()
                    continue
            break
        saturated = waited or self._in_flight >= self.limit
        if self._rate is not None:
            try:
                await self._rate.wait()
            except BaseException:
                self._give_back()
                raise
        self._issued += 1
        return Slot(ticket=self._issued, started=self._clock.now(), saturated=saturated)

    def release(self, slot: Slot) -> None:
        """Give back the slot of a finished request."""
        self._give_back()

    def on_success(self, latency: float, *, saturated: bool = True) -> None:
        """A good answer, ``latency`` seconds after its request started: maybe grow.

        Args:
            latency: the request's duration.
            saturated: whether the limit bounded the concurrency (:attr:`Slot.saturated`);
                growth while callers use fewer slots than allowed would mean nothing.
        """
        if self._fast is None:
            self._fast = self._slow = latency
        else:
            self._fast += self.FAST_WEIGHT * (latency - self._fast)
            self._slow += self.SLOW_WEIGHT * (latency - self._slow)
        self._probe_answers += 1
        self._probe_saturated += saturated
        if self._probe_answers >= self.PROBE_WINDOWS * self._limit:
            self._end_probe()
        if (
            self._slow_start
            or not saturated
            or self._hold
            or self._fast > self._slow * self.LATENCY_TOLERANCE
        ):
            return
        self._limit = min(float(self.maximum), self._limit + 1.0 / self._limit)
        self.highest = max(self.highest, self.limit)
        self._grant()

    def on_overload(self, *, ticket: int | None = None) -> bool:
        """A sign of overload (429, 503, a timeout): halve the limit, once per window.

        Args:
            ticket: the :attr:`Slot.ticket` of the request that met it; a request sent
                before the last decrease does not decrease the limit again. ``None``
                always decreases.

        Returns:
            Whether the limit was decreased.
        """
        if ticket is not None and ticket <= self._cut_at:
            return False
        self._slow_start = False
        self._limit = max(1.0, self._limit * self.DECREASE)
        self._cut_at = self._issued
        self.lowest = min(self.lowest, self.limit)
        return True

    def pause(self, seconds: float) -> bool:
        """Hold back every new request to this host for ``seconds`` (or longer, if held).

        Requests in flight go on; a longer pause than the current one extends it.

        Returns:
            Whether a new pause began (rather than one going on or being extended).
        """
        now = self._clock.now()
        until = now + seconds
        if until <= self._paused_until:
            return False
        began = self._paused_until <= now
        self.pauses += began
        self.paused_total += until - max(now, self._paused_until)
        self._paused_until = until
        return began

    def close(self, reason: str) -> None:
        """Give the host up: every waiting and later :meth:`acquire` raises at once."""
        if self._closed is not None:
            return
        self._closed = reason
        for scope in list(self._sleepers):
            scope.cancel()
        # Hand every waiter a slot, so that each wakes, sees the end and gives it back.
        while self._waiters:
            self._in_flight += 1
            self._waiters.popleft().set()

    # -- internals --------------------------------------------------------------------
    def _end_probe(self) -> None:
        """Compare this probe's answer rate with the last one's: hold growth that did not pay."""
        now = self._clock.now()
        elapsed = now - self._probe_started
        # A clock that stands still (a test's) tells nothing about the rate.
        rate = self._probe_answers / elapsed if elapsed > 0 else None
        limit, last_rate, last_limit = self.limit, self._probe_rate, self._probe_limit
        # Most answers came at a full limit: the limit, not the caller, set the pace.
        saturated = 2 * self._probe_saturated >= self._probe_answers
        if self._hold:
            self._hold -= 1
        elif rate is not None and last_rate is not None and limit > last_limit:
            wanted = self.GAIN_SHARE * (limit / last_limit - 1)
            if rate / last_rate - 1 < wanted:
                # Back to where the probe began, or each probe would creep it up a step.
                self._limit = float(last_limit)
                limit = last_limit
                self._hold = self.HOLD_PROBES
                self._slow_start = False
        self._probe_started, self._probe_answers, self._probe_saturated = now, 0, 0
        self._probe_rate, self._probe_limit = rate, limit
        if self._slow_start and saturated:
            self._double()

    def _double(self) -> None:
        """Slow start's step: twice the limit, up to the maximum (which ends slow start)."""
        self._limit = min(float(self.maximum), 2 * self._limit)
        if self._limit >= self.maximum:
            self._slow_start = False
        self.highest = max(self.highest, self.limit)
        self._grant()

    def _check_open(self) -> None:
        if self._closed is not None:
            raise HostUnavailable(self._closed)

    async def _sleep(self, seconds: float) -> None:
        """Sleep out a pause; :meth:`close` cuts it short."""
        with anyio.CancelScope() as scope:
            self._sleepers.add(scope)
            try:
                await self._clock.sleep(seconds)
            finally:
                self._sleepers.discard(scope)

    async def _queue(self) -> None:
        """Wait in line until :meth:`_grant` hands this task a slot."""
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                # Cancelled just after being handed a slot: pass it on, or it leaks.
                self._give_back()
            else:
                self._waiters.remove(event)
            raise

    def _give_back(self) -> None:
        self._in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            self._in_flight += 1
            self._waiters.popleft().set()


class RetryBudget:
    """Retries to one host as a share of its requests: at most ``floor + ratio × requests``.

    Requests count every exchange that got an answer or failed (first tries and retries,
    not the repeats a server's ``Retry-After`` asks for). The floor lets a short run, or
    the start of a long one, retry before the share means anything.

    Args:
        ratio: the share, e.g. ``0.2``.
        floor: retries allowed on top of the share.
    """

    def __init__(self, *, ratio: float, floor: int) -> None:
        self.ratio = ratio
        self.floor = floor
        self.requests = 0
        self.retries = 0

    def __repr__(self) -> str:
        return f"RetryBudget(retries={self.retries}, requests={self.requests})"

    def on_request(self) -> None:
        """Count one request sent."""
        self.requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; ``False`` (and nothing taken) when it is spent."""
        if self.retries + 1 > self.floor + self.ratio * self.requests:
            return False
        self.retries += 1
        return True

    def describe(self) -> str:
        """Why the budget is spent, for the error message."""
        return (
            f"retry budget exhausted: {self.retries} retries for {self.requests} requests "
            f"(at most {self.ratio:.0%} of requests plus {self.floor})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStats:
    """What flow control did for one host, at one moment."""

    host: str
    #: The concurrency limit now, and the lowest and highest it has been.
    limit: int
    limit_min: int
    limit_max: int
    in_flight: int
    requests: int
    retries: int
    #: Answers that asked us to wait (429/503 with ``Retry-After``).
    paced: int
    #: Host-wide pauses begun, and the seconds they lasted in all.
    pauses: int
    paused_s: float
    #: Seconds the current pause still lasts.
    paused_for: float
    #: Why the host was given up, if it was.
    gave_up: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data (``host`` is the key it is filed under)."""
        return {
            "limit": self.limit,
            "limit_min": self.limit_min,
            "limit_max": self.limit_max,
            "requests": self.requests,
            "retries": self.retries,
            "paced": self.paced,
            "pauses": self.pauses,
            "paused_s": round(self.paused_s, 3),
            "gave_up": self.gave_up,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferStats:
    """What flow control did for every host of a transport, at one moment."""

    hosts: tuple[HostStats, ...] = ()

    @property
    def retries(self) -> int:
        """Retries of failed requests, all hosts together."""
        return sum(h.retries for h in self.hosts)

    @property
    def pauses(self) -> int:
        """Host-wide pauses, all hosts together."""
        return sum(h.pauses for h in self.hosts)

    @property
    def paused_for(self) -> float:
        """Seconds until the longest current pause ends."""
        return max((h.paused_for for h in self.hosts), default=0.0)

    @property
    def budget_exhausted(self) -> str | None:
        """``"<host>: <why>"`` for the first host given up, else ``None``."""
        return next((f"{h.host}: {h.gave_up}" for h in self.hosts if h.gave_up), None)

    def busiest(self) -> HostStats | None:
        """The host with the most requests (the one whose limit matters), if any."""
        return max(self.hosts, key=lambda h: h.requests, default=None)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data: totals, then each host under its origin."""
        return {
            "retries": self.retries,
            "pauses": self.pauses,
            "hosts": {h.host: h.to_dict() for h in self.hosts},
            "budget_exhausted": self.budget_exhausted,
        }


class HostFlow:
    """Everything the transport keeps about one host: limiter, budget, patience, counts.

    Args:
        origin: the host's scheme, name and port (:func:`origin_of`).
        limiter: its concurrency limit and pause.
        budget: its retry budget.
        wait_max: seconds of continuous trouble (failures, pauses, no good answer in
            between) after which it is given up.
        clock: the time source.
    """

    def __init__(
        self,
        origin: str,
        *,
        limiter: HostLimiter,
        budget: RetryBudget,
        wait_max: float,
        clock: Clock,
    ) -> None:
        self.origin = origin
        self.limiter = limiter
        self.budget = budget
        self.wait_max = wait_max
        self._clock = clock
        self.paced_answers = 0
        self._trouble_since: float | None = None
        #: Why the host was given up, once it was.
        self.gave_up: str | None = None

    def __repr__(self) -> str:
        return f"HostFlow({self.origin!r}, {self.limiter!r}, {self.budget!r})"

    async def acquire(self) -> Slot:
        """A slot for one request (see :meth:`HostLimiter.acquire`).

        Raises:
            HostUnavailable: the host was given up.
        """
        return await self.limiter.acquire()

    def release(self, slot: Slot) -> None:
        """Give back a slot."""
        self.limiter.release(slot)

    def answered(self, slot: Slot) -> None:
        """The host answered (a success, or a definite error such as 404): it is well."""
        self.budget.on_request()
        self._trouble_since = None
        latency = self._clock.now() - slot.started
        self.limiter.on_success(latency, saturated=slot.saturated)

    def failed(self, slot: Slot, *, overload: bool) -> None:
        """A request failed (5xx, timeout, reset, cut body); ``overload``: 429/503/timeout."""
        self.budget.on_request()
        self._troubled()
        if overload:
            self.limiter.on_overload(ticket=slot.ticket)

    def paced(self, slot: Slot, seconds: float) -> bool:
        """The host asked us to wait ``seconds`` (``Retry-After``): pause it for everyone.

        Returns:
            Whether a new pause began.
        """
        self.paced_answers += 1
        self._troubled()
        self.limiter.on_overload(ticket=slot.ticket)
        return self.limiter.pause(seconds)

    def may_wait(self, seconds: float) -> bool:
        """Whether waiting ``seconds`` more keeps the trouble within ``wait_max``."""
        since = self._trouble_since
        return since is None or self._clock.now() + seconds - since <= self.wait_max

    def impatience(self) -> str:
        """Why :meth:`may_wait` said no, for the error message."""
        return f"no good answer for {self.wait_max:g} s (host_wait_max)"

    def give_up(self, reason: str) -> None:
        """Give the host up for the rest of the run: every request to it now fails at once."""
        if self.gave_up is None:
            self.gave_up = reason
            self.limiter.close(reason)

    def stats(self) -> HostStats:
        """A snapshot of the counters."""
        limiter = self.limiter
        return HostStats(
            host=self.origin,
            limit=limiter.limit,
            limit_min=limiter.lowest,
            limit_max=limiter.highest,
            in_flight=limiter.in_flight,
            requests=self.budget.requests,
            retries=self.budget.retries,
            paced=self.paced_answers,
            pauses=limiter.pauses,
            paused_s=limiter.paused_total,
            paused_for=limiter.paused_for,
            gave_up=self.gave_up,
        )

    def _troubled(self) -> None:
        if self._trouble_since is None:
            self._trouble_since = self._clock.now()


class FlowControl:
    """The hosts of one transport, each made on first use with the engine's settings.

    Args:
        engine: ``concurrency`` (the first limit), ``max_concurrency``, ``rate_limit``
            (per host) and the retry policy's budget and ``host_wait_max``.
        clock: the time source (the system clock when omitted).
    """

    def __init__(self, *, engine: EngineConfig, clock: Clock | None = None) -> None:
        self._engine = engine
        self.clock = clock or SystemClock()
        self._hosts: dict[str, HostFlow] = {}

    def host(self, url: str) -> HostFlow:
        """The flow of the host ``url`` is on."""
        origin = origin_of(url)
        flow = self._hosts.get(origin)
        if flow is None:
            engine, policy = self._engine, self._engine.retry
            flow = HostFlow(
                origin,
                limiter=HostLimiter(
                    initial=engine.concurrency,
                    maximum=engine.max_concurrency,
                    clock=self.clock,
                    rate=engine.rate_limit,
                ),
                budget=RetryBudget(ratio=policy.retry_budget, floor=policy.retry_budget_floor),
                wait_max=policy.host_wait_max,
                clock=self.clock,
            )
            self._hosts[origin] = flow
        return flow

    def stats(self) -> TransferStats:
        """A snapshot of every host's counters, in the order they were first used."""
        # tuple() of the values runs without a thread switch, so a display thread may call it.
        return TransferStats(hosts=tuple(flow.stats() for flow in tuple(self._hosts.values())))

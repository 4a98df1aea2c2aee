"""Flow control per host: the AIMD limit, the shared pause, the retry budget, and a pull
through a rate-limited, faulty fake that loses nothing.

The limiter and budget are driven with :class:`VirtualClock` (no sleeping, no wall-clock
asserts); the pulls run against ``FakeKognic`` behind :class:`Chaos`, a small server-side
middleware in this file: a token-bucket rate limit answering 429 + ``Retry-After``, and
seeded random 5xx and cut bodies.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import random
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from annopull._client import Client
from annopull._config import Config, EngineConfig, KognicConfig, RetryPolicy, load_config
from annopull._errors import ConfigError, RetryBudgetExhaustedError
from annopull._progress import TerminalProgress, describe_transfer
from annopull._sinks import ZipSink
from annopull._transport.flow import (
    FlowControl,
    HostFlow,
    HostLimiter,
    HostStats,
    HostUnavailable,
    RateLimiter,
    RetryBudget,
    TransferStats,
    origin_of,
)
from annopull.testing import FakeKognic, Fault, KognicProject
from annopull.testing.faults import json_error

pytestmark = pytest.mark.anyio


class VirtualClock:
    """Virtual time for flow control: sleepers wake in deadline order when time moves on.

    :meth:`advance` moves it by hand. Inside ``async with clock.autojump():`` it jumps to
    the next deadline every couple of real milliseconds, so a test against a real server
    finishes at once while the code under test believes it waited. Also used by
    tests/test_transport.py.
    """

    def __init__(self) -> None:
        self._now = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking every sleeper whose deadline comes."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            self._wake_next()
        self._now = target

    def jump(self) -> bool:
        """Move time to the next deadline and wake who waits for it; False if none."""
        if not self._sleepers:
            return False
        deadline = self._sleepers[0][0]
        while self._sleepers and self._sleepers[0][0] <= deadline:
            self._wake_next()
        return True

    def _wake_next(self) -> None:
        deadline, _, event = heapq.heappop(self._sleepers)
        self._now = max(self._now, deadline)
        event.set()

    @asynccontextmanager
    async def autojump(self, interval: float = 0.002) -> AsyncIterator[VirtualClock]:
        async def drive() -> None:
            while True:
                await anyio.sleep(interval)
                self.jump()

        async with anyio.create_task_group() as tg:
            tg.start_soon(drive)
            yield self
            tg.cancel_scope.cancel()


def _limiter(initial: int = 4, maximum: int = 8, **kwargs: Any) -> HostLimiter:
    return HostLimiter(initial=initial, maximum=maximum, clock=VirtualClock(), **kwargs)


# -- origins ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        pytest.param("https://Store.Example/o/x?sig=1", "https://store.example", id="case"),
        pytest.param("https://store.example:443/o", "https://store.example", id="default-port"),
        pytest.param("http://127.0.0.1:8080/a", "http://127.0.0.1:8080", id="port"),
        pytest.param("http://[::1]:9/a", "http://[::1]:9", id="ipv6"),
        pytest.param("http://user:pw@h.example/a", "http://h.example", id="userinfo"),
    ],
)
def test_origin_is_scheme_host_and_port(url: str, origin: str) -> None:
    """Hosts are told apart by scheme, name and port only; no path, query or userinfo."""
    assert origin_of(url) == origin


def test_each_host_has_its_own_flow() -> None:
    """The API, the auth server and storage (other ports) get separate limiters."""
    flow = FlowControl(engine=EngineConfig(concurrency=3), clock=VirtualClock())
    api = flow.host("http://127.0.0.1:1000/v1/search?cursorId=2")
    assert flow.host("http://127.0.0.1:1000/v1/other") is api
    storage = flow.host("http://127.0.0.1:2000/o/x")
    assert storage is not api
    api.limiter.on_overload()
    assert (api.limiter.limit, storage.limiter.limit) == (1, 3)
    assert [h.host for h in flow.stats().hosts] == [
        "http://127.0.0.1:1000",
        "http://127.0.0.1:2000",
    ]


# -- the AIMD limit --------------------------------------------------------------------------


def test_slow_start_doubles_the_limit_once_per_probe_up_to_the_ceiling() -> None:
    """Good answers at a full limit double it every four windows of answers, to the maximum."""
    limiter = _limiter(initial=4, maximum=40)
    steps: list[tuple[int, int]] = []
    for answers in itertools.count(1):
        limiter.on_success(0.01)
        if not steps or limiter.limit != steps[-1][1]:
            steps.append((answers, limiter.limit))
        if limiter.limit == 40:
            break
    # Probes of 4 windows: 16 answers at 4, 32 at 8, 64 at 16, 128 at 32 (capped at 40).
    assert steps == [(1, 4), (16, 8), (48, 16), (112, 32), (240, 40)]
    for _ in range(500):
        limiter.on_success(0.01)
    assert (limiter.limit, limiter.highest) == (40, 40)


def _after_slow_start(limiter: HostLimiter) -> HostLimiter:
    """``limiter`` past slow start (an overload ends it), back at its initial limit."""
    initial = limiter.limit
    limiter.on_overload()
    while limiter.limit < initial:
        limiter.on_success(0.01)
    return limiter


def test_limit_grows_by_about_one_per_window_after_slow_start() -> None:
    """After an overload, good answers at a full limit add one per limit's worth of answers."""
    limiter = _after_slow_start(_limiter(initial=8, maximum=16))
    assert limiter.limit == 8
    counts = []
    for answers in itertools.count(1):
        limiter.on_success(0.01)
        if limiter.limit > 8 + len(counts):
            counts.append(answers)
        if limiter.limit == 16:
            break
    # From 8 to 16 takes about 8 + 9 + ... + 15 answers: one window per step.
    assert counts[0] in (8, 9)
    assert 85 <= counts[-1] <= 100
    for _ in range(500):
        limiter.on_success(0.01)
    assert (limiter.limit, limiter.highest) == (16, 16)


def test_limit_does_not_grow_while_callers_use_less_of_it() -> None:
    """Answers to requests sent below the limit say nothing about more: no growth."""
    limiter = _limiter(initial=4)
    for _ in range(100):
        limiter.on_success(0.01, saturated=False)
    assert limiter.limit == 4


def test_rising_latency_holds_growth() -> None:
    """While recent answers are much slower than the long-run average, the limit holds."""
    limiter = _after_slow_start(_limiter(initial=4, maximum=256))
    for _ in range(60):
        limiter.on_success(0.010)
    grown = limiter.limit
    assert grown > 4
    for _ in range(30):
        limiter.on_success(0.050)
    assert limiter.limit == grown


def _answer_at(limiter: HostLimiter, clock: VirtualClock, rate: Callable[[int], float]) -> None:
    """One good answer at a full limit, ``1 / rate(limit)`` seconds after the last one."""
    clock.advance(1.0 / rate(limiter.limit))
    limiter.on_success(0.01)


def test_limit_grows_while_the_rate_rises_and_holds_when_it_stops() -> None:
    """Latency-bound answers (rate ~ limit) let it grow; a flat rate holds it, then re-probes."""
    clock = VirtualClock()
    limiter = HostLimiter(initial=8, maximum=256, clock=clock)
    for _ in range(1000):
        _answer_at(limiter, clock, lambda limit: limit / 0.03)
    # Slow start all the way: 8, 16, ..., 256 in 32 + 64 + 128 + 256 + 512 answers.
    assert limiter.limit == 256
    # Saturated at 50 requests' worth of answers per RTT: more in flight only queues.
    flat = HostLimiter(initial=8, maximum=256, clock=clock)
    for _ in range(20_000):
        _answer_at(flat, clock, lambda limit: min(limit, 50) / 0.03)
    assert 50 < flat.limit < 80
    # Doubling to 64 paid, to 128 did not (tried once, then back to additive steps).
    assert flat.highest == 128


async def test_overload_halves_once_per_window_and_never_below_one() -> None:
    """A decrease halves the limit; answers to requests sent before it do not decrease again."""
    limiter = _limiter(initial=32, maximum=64)
    first, second = await limiter.acquire(), await limiter.acquire()
    assert limiter.on_overload(ticket=first.ticket) is True
    assert limiter.limit == 16
    # Sent before the cut, under the old limit: its 429 is the same news.
    assert limiter.on_overload(ticket=second.ticket) is False
    assert limiter.limit == 16
    later = await limiter.acquire()
    assert limiter.on_overload(ticket=later.ticket) is True
    assert limiter.limit == 8
    for slot in (first, second, later):
        limiter.release(slot)
    for _ in range(10):
        limiter.on_overload()
    assert (limiter.limit, limiter.lowest) == (1, 1)


async def test_slots_follow_the_limit_first_come_first_served() -> None:
    """At limit 2 a third request waits; freed slots go to waiters in arrival order."""
    limiter = _limiter(initial=2, maximum=2)
    held = [await limiter.acquire(), await limiter.acquire()]
    assert all(slot.saturated for slot in held[1:])
    order: list[int] = []

    async def wait(n: int) -> None:
        slot = await limiter.acquire()
        order.append(n)
        assert slot.saturated
        limiter.release(slot)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(wait, n)
            await anyio.wait_all_tasks_blocked()
        assert order == []
        assert limiter.in_flight == 2
        limiter.release(held.pop())
    assert order == [0, 1, 2]
    limiter.release(held.pop())
    assert limiter.in_flight == 0


async def test_growth_lets_a_waiter_in_at_once() -> None:
    """When the limit grows past what is in flight, a waiting request gets its slot."""
    limiter = _limiter(initial=1, maximum=4)
    first = await limiter.acquire()
    got: list[bool] = []

    async def second() -> None:
        limiter.release(await limiter.acquire())
        got.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        for _ in range(HostLimiter.PROBE_WINDOWS):
            limiter.on_success(0.01)  # a probe's answers: 1 -> 2
    assert got == [True]
    limiter.release(first)


async def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    """A waiter cancelled right after being handed a slot gives it to the next one."""
    limiter = _limiter(initial=1, maximum=1)
    first = await limiter.acquire()
    third_in: list[bool] = []

    async def third() -> None:
        limiter.release(await limiter.acquire())
        third_in.append(True)

    doomed = anyio.CancelScope()

    async def second() -> None:
        with doomed:
            limiter.release(await limiter.acquire())

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        limiter.release(first)  # hands the slot to `second`...
        doomed.cancel()  # ...which is cancelled before it runs
    assert third_in == [True]
    assert limiter.in_flight == 0


# -- the shared pause ------------------------------------------------------------------------


async def test_pause_holds_every_new_request_until_it_ends() -> None:
    """A pause keeps new requests back until the clock passes its end; it is counted once."""
    clock = VirtualClock()
    limiter = HostLimiter(initial=4, maximum=4, clock=clock)
    in_flight = await limiter.acquire()
    assert limiter.pause(5.0) is True
    started: list[float] = []

    async def request() -> None:
        async with limiter.slot() as slot:
            started.append(slot.started)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(request)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.9)
        await anyio.wait_all_tasks_blocked()
        assert started == []
        assert limiter.pause(0.05) is False  # ends sooner than the current one: no change
        assert limiter.paused_for == pytest.approx(0.1)
        clock.advance(0.2)
    assert started == [pytest.approx(5.1)] * 3
    limiter.release(in_flight)  # a request in flight went on through the pause
    assert (limiter.pauses, limiter.paused_total) == (1, pytest.approx(5.0))


async def test_pause_extended_counts_the_union_of_seconds() -> None:
    """A longer pause during one extends it: one pause, its seconds counted once."""
    clock = VirtualClock()
    limiter = HostLimiter(initial=1, maximum=1, clock=clock)
    limiter.pause(2.0)
    clock.advance(1.0)
    assert limiter.pause(4.0) is False  # extended, not begun
    assert limiter.paused_for == pytest.approx(4.0)
    clock.advance(10.0)
    assert limiter.pause(1.0) is True
    assert (limiter.pauses, limiter.paused_total) == (2, pytest.approx(6.0))


async def test_close_wakes_queued_and_pausing_requests() -> None:
    """Giving a host up ends every wait at once: queued and pausing requests both raise."""
    clock = VirtualClock()
    limiter = HostLimiter(initial=1, maximum=1, clock=clock)
    held = await limiter.acquire()
    errors: list[str] = []

    async def request() -> None:
        try:
            await limiter.acquire()
        except HostUnavailable as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(request)  # queued behind the held slot
        await anyio.wait_all_tasks_blocked()
        limiter.pause(100.0)
        tg.start_soon(request)  # asleep in the pause
        await anyio.wait_all_tasks_blocked()
        limiter.close("gone")
    assert errors == ["gone", "gone"]
    limiter.release(held)
    assert limiter.in_flight == 0
    with pytest.raises(HostUnavailable, match="gone"):
        await limiter.acquire()


async def test_rate_limiter_spaces_starts_on_the_clock() -> None:
    """At 20/s, consecutive starts are 50 ms apart on the (virtual) clock."""
    clock = VirtualClock()
    limiter = RateLimiter(20, clock)
    stamps: list[float] = []

    async def run() -> None:
        for _ in range(11):
            await limiter.wait()
            stamps.append(clock.now())

    async with clock.autojump():
        await run()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps == [pytest.approx(0.05)] * 10


# -- the retry budget and patience -----------------------------------------------------------


def test_retry_budget_is_a_floor_plus_a_share_of_requests() -> None:
    """Retries may reach floor + ratio x requests, and no more."""
    budget = RetryBudget(ratio=0.5, floor=2)
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    for _ in range(10):
        budget.on_request()
    assert [budget.try_spend() for _ in range(6)] == [True] * 5 + [False]
    assert budget.retries == 7
    assert "7 retries for 10 requests (at most 50% of requests plus 2)" in budget.describe()


async def test_patience_runs_from_the_first_trouble_and_resets_on_a_good_answer() -> None:
    """host_wait_max counts continuous trouble only: one good answer starts it over."""
    clock = VirtualClock()
    host = HostFlow(
        "http://h",
        limiter=HostLimiter(initial=2, maximum=2, clock=clock),
        budget=RetryBudget(ratio=0.2, floor=5),
        wait_max=10.0,
        clock=clock,
    )
    slot = await host.acquire()
    host.failed(slot, overload=False)
    clock.advance(6.0)
    assert host.may_wait(4.0)
    assert not host.may_wait(4.1)
    host.answered(slot)
    assert host.may_wait(100.0)
    host.release(slot)


# -- settings --------------------------------------------------------------------------------


def test_flow_settings_defaults_and_loading() -> None:
    """The new settings have their documented defaults and load from the environment."""
    engine = EngineConfig()
    assert (engine.max_concurrency, engine.max_answer_bytes) == (256, 64 << 20)
    assert (engine.retry.retry_budget, engine.retry.retry_budget_floor) == (0.2, 20)
    assert engine.retry.host_wait_max == 300.0
    env = {
        "ANNOPULL_ENGINE_MAX_CONCURRENCY": "64",
        "ANNOPULL_ENGINE_RETRY_BUDGET": "0.5",
        "ANNOPULL_ENGINE_HOST_WAIT_MAX": "30",
        "ANNOPULL_ENGINE_MAX_ANSWER_BYTES": "1048576",
    }
    loaded = load_config(env=env).engine
    assert (loaded.max_concurrency, loaded.max_answer_bytes) == (64, 1 << 20)
    assert (loaded.retry.retry_budget, loaded.retry.host_wait_max) == (0.5, 30.0)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        pytest.param("max_concurrency", "0", "max_concurrency must be at least 1", id="ceiling"),
        pytest.param("max_answer_bytes", "100", "max_answer_bytes must be at least", id="cap"),
        pytest.param("host_wait_max", "0", "host_wait_max must be more than 0", id="patience"),
        pytest.param("retry_budget_floor", "-1", "must not be negative", id="floor"),
    ],
)
def test_bad_flow_settings_are_config_errors(key: str, value: str, words: str) -> None:
    """Values flow control cannot work with are refused when the settings load."""
    with pytest.raises(ConfigError, match=words):
        load_config(env={f"ANNOPULL_ENGINE_{key.upper()}": value})


# -- the progress line and the report --------------------------------------------------------


def _stats(**host: Any) -> TransferStats:
    base: dict[str, Any] = {
        "host": "https://store.example",
        "limit": 48,
        "limit_min": 12,
        "limit_max": 64,
        "in_flight": 40,
        "requests": 900,
        "retries": 12,
        "paced": 30,
        "pauses": 3,
        "paused_s": 7.5,
        "paused_for": 2.2,
    }
    api = HostStats(
        host="https://api.example",
        limit=32,
        limit_min=32,
        limit_max=33,
        in_flight=1,
        requests=10,
        retries=0,
        paced=0,
        pauses=0,
        paused_s=0.0,
        paused_for=0.0,
    )
    return TransferStats(hosts=(api, HostStats(**{**base, **host})))


def test_progress_line_shows_limit_pause_and_retries() -> None:
    """The plain progress line carries the busiest host's limit, the pause left and retries."""
    stream = StringIO()
    with TerminalProgress("kognic P/T", stream=stream, interval=0.0) as progress:
        progress.watch(_stats)
        progress.status("listing")
    assert stream.getvalue().strip().endswith("listing | limit 48, paused 3 s, 12 retries")
    gave_up = _stats(paused_for=0.0, gave_up="retry budget exhausted")
    assert describe_transfer(gave_up) == "limit 48, 12 retries, gave up on https://store.example"


def test_report_summary_carries_the_transfer() -> None:
    """The pull report's summary holds retries, pauses, each host's limit, and a give-up."""
    from annopull._pipeline.pull import PullReport

    report = PullReport(
        output="o.zip",
        listed=1,
        downloaded=1,
        skipped=0,
        failures=(),
        bytes=1,
        elapsed=1.0,
        resumed=False,
        transfer=_stats(gave_up="no good answer for 300 s (host_wait_max)"),
    )
    summary = report.to_dict()
    assert (summary["retries"], summary["pauses"]) == (12, 3)
    assert summary["hosts"]["https://store.example"]["limit"] == 48
    assert summary["hosts"]["https://api.example"]["limit_max"] == 33
    assert summary["budget_exhausted"] == (
        "https://store.example: no good answer for 300 s (host_wait_max)"
    )
    plain = dataclasses.replace(report, transfer=TransferStats()).to_dict()
    assert (plain["retries"], plain["hosts"], plain["budget_exhausted"]) == (0, {}, None)


# -- pulls against a rate-limited, faulty fake -----------------------------------------------


@dataclass
class Chaos:
    """Server-side misbehaviour for a :class:`FakeKognic`, applied to each of its servers.

    Per server (auth, API, storage: a host each), a token bucket of ``rate`` requests per
    second (``burst`` deep) answers 429 with an integer ``Retry-After`` when empty; of the
    requests let through, ``error_rate`` get a random 5xx (500/502/503/504, no Retry-After)
    and ``cut_rate`` get their body cut short (a scripted ``truncate_after`` fault), drawn
    from ``random.Random(seed)``.
    """

    seed: int
    rate: float = 100.0
    burst: float = 100.0
    error_rate: float = 0.10
    cut_rate: float = 0.05
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._buckets: dict[str, list[float]] = {}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _admit(self, server: str) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        bucket = self._buckets.setdefault(server, [self.burst, now])
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return 0.0
        bucket[0] = tokens
        return (1 - tokens) / self.rate

    def wrap(
        self,
        fake: FakeKognic,
        server: str,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def chaotic(request: web.Request) -> web.StreamResponse:
            self._count("requests")
            wait = self._admit(server)
            if wait > 0:
                self._count("429")
                return json_error(429, "rate limited", retry_after=str(math.ceil(wait)))
            roll = self._rng.random()
            if roll < self.error_rate:
                code = self._rng.choice((500, 502, 503, 504))
                self._count(str(code))
                return json_error(code, "injected server error")
            if roll < self.error_rate + self.cut_rate:
                target, key = _fault_target(server, request)
                if target is not None:
                    self._count("cut")
                    cut = self._rng.randrange(0, 2000)
                    fake.faults.add(Fault(target=target, match=key, truncate_after=cut))
            return await handler(request)

        return chaotic


def _fault_target(server: str, request: web.Request) -> tuple[str | None, str | None]:
    info = request.match_info
    if server == "storage":
        return "content", info.get("scene")
    if server == "api" and "project" in info:
        return "search", info.get("project")
    return None, None


class ChaoticKognic(FakeKognic):
    """The fake Kognic with every handler of its three servers behind :class:`Chaos`."""

    def __init__(self, *, chaos: Chaos, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chaos = chaos

    async def _listen(self, name: str, routes: list[web.RouteDef]) -> None:
        wrapped = [
            web.route(r.method, r.path, self.chaos.wrap(self, name, r.handler), **r.kwargs)
            for r in routes
        ]
        await super()._listen(name, wrapped)


def _client(fake: FakeKognic, *, concurrency: int, retry: RetryPolicy) -> Client:
    config = Config(
        kognic=KognicConfig(api_url=fake.api_url, auth_url=fake.auth_url),
        engine=EngineConfig(concurrency=concurrency, retry=retry, read_timeout=10.0),
    )
    env = {"KOGNIC_CLIENT_ID": fake.client_id, "KOGNIC_CLIENT_SECRET": fake.client_secret}
    return Client(config=config, env=env)


async def _rate_limited_pull(tmp_path: Path, *, seed: int, count: int) -> None:
    project = KognicProject(
        project="P", annotation_types=("T",), count=count, content_size=2048, seed=seed
    )
    chaos = Chaos(seed=seed)
    out = tmp_path / f"seed-{seed}.zip"
    # The default policy (8 attempts, 0.5 s backoff base, a 20 % budget) but a short cap
    # on one backoff, so the test's time goes to the rate limit, not to sleeping.
    retry = RetryPolicy(backoff_max=2.0)
    async with ChaoticKognic(chaos=chaos, projects=[project]) as fake:
        async with _client(fake, concurrency=64, retry=retry) as client:
            report = await client.kognic.download("P", "T", sink=ZipSink(out))
            stats = client.transport.stats()
        expected = {f"{e.scene_uuid}.json": e.content for e in fake.expected("P", "T")}
        store = origin_of(fake.storage_url)
    assert report.failures == (), report.failures[:3]
    assert (report.ok, report.downloaded) == (True, count)
    with zipfile.ZipFile(out) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == expected
    # The run met every kind of trouble, and the rate limit was paced, not failed.
    assert {"429", "cut", "500", "503"} <= chaos.counts.keys(), chaos.counts
    storage = stats.busiest()
    assert storage is not None
    assert storage.host == store
    assert storage.paced > 0
    assert storage.pauses > 0
    assert stats.budget_exhausted is None


async def test_rate_limited_faulty_pull_loses_nothing(tmp_path: Path) -> None:
    """3,000 scenes at 100 req/s, 10 % 5xx, 5 % cut bodies, concurrency 64: none lost."""
    with anyio.fail_after(90):
        await _rate_limited_pull(tmp_path, seed=0, count=3000)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 11))
async def test_rate_limited_faulty_pull_loses_nothing_over_seeds(tmp_path: Path, seed: int) -> None:
    """The same pull loses nothing over ten more seeds."""
    with anyio.fail_after(120):
        await _rate_limited_pull(tmp_path, seed=seed, count=3000)


async def test_pull_from_a_dead_store_ends_in_bounded_time(tmp_path: Path) -> None:
    """A store answering 503 forever stops the pull soon, resumable, the budget named."""
    project = KognicProject(project="P", annotation_types=("T",), count=400, content_size=500)
    retry = RetryPolicy(max_attempts=8, backoff_base=0.01, backoff_max=0.05)
    async with FakeKognic(projects=[project]) as fake:
        fake.faults.add(Fault(target="content", status=503, times=10**9))
        with anyio.fail_after(20):
            async with _client(fake, concurrency=16, retry=retry) as client:
                with pytest.raises(RetryBudgetExhaustedError) as stopped:
                    await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
                stats = client.transport.stats()
        storage = origin_of(fake.storage_url)
        requests = sum(fake.stats.content_requests.values())
    assert f"giving up on {storage}: retry budget exhausted" in str(stopped.value)
    # The budget bounded the requests: without it, 400 items x 8 attempts.
    assert requests < 100
    assert stats.budget_exhausted is not None
    assert stats.budget_exhausted.startswith(f"{storage}: retry budget exhausted")
    assert stats.to_dict()["hosts"][storage]["gave_up"].startswith("retry budget exhausted")
    # Stopped, not finished with holes: the unfinished zip and its journal wait for a resume.
    assert _names(tmp_path) == ["o.zip.journal", "o.zip.part"]


async def test_pull_paced_forever_ends_after_host_wait_max(tmp_path: Path) -> None:
    """A store answering 429 + Retry-After forever is given up after host_wait_max."""
    project = KognicProject(project="P", annotation_types=("T",), count=50, content_size=500)
    retry = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.05, host_wait_max=2.5)
    async with FakeKognic(projects=[project]) as fake:
        fake.faults.add(Fault(target="content", status=429, retry_after="1", times=10**9))
        started = time.monotonic()
        with anyio.fail_after(20):
            async with _client(fake, concurrency=8, retry=retry) as client:
                with pytest.raises(RetryBudgetExhaustedError) as stopped:
                    await client.kognic.download("P", "T", sink=ZipSink(tmp_path / "o.zip"))
                stats = client.transport.stats()
        took = time.monotonic() - started
    assert "no good answer for 2.5 s (host_wait_max)" in str(stopped.value)
    # Paced, not failed: the item's own attempts were never used.
    assert stopped.value.attempts is None
    assert stats.budget_exhausted is not None
    assert stats.budget_exhausted.endswith("no good answer for 2.5 s (host_wait_max)")
    assert stats.retries == 0
    assert took < 10  # about host_wait_max, not 50 items x attempts x pauses


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())

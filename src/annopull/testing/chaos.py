"""Seeded chaos for the fake platforms: what a real network and real servers do now and then.

A :class:`~annopull.testing.Fault` scripts one misbehaviour for the next few requests;
:class:`Chaos` makes a *fraction* of all requests misbehave — slow answers, 5xx, 429 from
a rate limit, bodies cut or stalled, a wrong ``Content-Length``, malformed listing pages,
an auth server that is down for a while, export jobs that error or never finish::

    chaos = Chaos(seed=7, error_rate=0.1, cut_rate=0.05, latency=0.02, latency_spread=0.01)
    async with FakeKognic(chaos=chaos) as kognic:
        ...

Every decision is a pure function of ``(seed, target, key, n)``: the ``n``-th request for
one key (a scene's content, one listing page, one client id's token) is treated the same
way in every run with the same seed, however concurrent requests for *other* keys
interleave. :meth:`Chaos.decide` shows the decision without a server. Only the rate limit
and the time-based auth outage depend on the clock.

What chaos did is recorded, in order, in the fake's ``stats.chaos`` as
:class:`ChaosEvent` rows (latency is not recorded: it is every request's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from aiohttp import web

__all__ = [
    "MALFORMED_KINDS",
    "TARGETS",
    "Chaos",
    "ChaosDecision",
    "ChaosEvent",
    "ChaosState",
    "malformed_page",
]

#: Every endpoint chaos can apply to. Kognic: ``token``, ``search``, ``content`` (storage
#: and the single-annotation read), ``annotation`` (the v2 and by-id reads); AnnoLab:
#: ``export``, ``status``, ``download``.
TARGETS: Final = frozenset(
    {"token", "search", "content", "annotation", "export", "status", "download"}
)
#: The ways a listing page can be malformed.
MALFORMED_KINDS: Final = ("invalid-json", "missing-fields", "non-list-data")
_LATENCY_SHAPES: Final = ("uniform", "lognormal")


class ChaosEvent(NamedTuple):
    """One thing chaos did: to which endpoint, for which key, and what."""

    target: str
    key: str
    action: str


@dataclass(frozen=True, kw_only=True)
class ChaosDecision:
    """What chaos does to one request (see :meth:`Chaos.decide`).

    Fractions are of the body's length, so the same decision fits any body.
    """

    target: str
    key: str
    #: Seconds to wait before answering.
    latency: float = 0.0
    #: Answer this 5xx instead.
    status: int | None = None
    #: Cut the body after this fraction of it (then drop the connection).
    cut: float | None = None
    #: Pause ``stall_for`` seconds after this fraction of the body.
    stall: float | None = None
    stall_for: float = 0.0
    #: Declare a wrong Content-Length: below 0.5 shorter (the rest is never sent), from 0.5
    #: longer (the connection drops after the real body).
    wrong_length: float | None = None
    #: Malform the listing page this way (one of :data:`MALFORMED_KINDS`).
    malformed: str | None = None
    #: Picks the variant of the malformed kind.
    malformed_variant: float = 0.0
    events: list[ChaosEvent] | None = field(default=None, repr=False, compare=False)

    def note(self, action: str) -> None:
        """Record that ``action`` was applied (when the decision came from a server)."""
        if self.events is not None:
            self.events.append(ChaosEvent(self.target, self.key, action))

    def declared_length(self, size: int) -> int:
        """The Content-Length to declare for a body of ``size`` bytes."""
        if self.wrong_length is None:
            return size
        if self.wrong_length < 0.5 and size > 0:
            return int(self.wrong_length * 2 * size)  # in [0, size)
        return size + 1 + int((self.wrong_length - 0.5) * 2 * max(1, size))


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], not {value}")


@dataclass(frozen=True, kw_only=True)
class Chaos:
    """How often and how the fakes misbehave; deterministic for ``seed``.

    Rates are fractions of requests (0 = never, 1 = every one), drawn independently per
    request. All knobs are off by default.

    Args:
        seed: Seeds every decision.
        latency: Mean seconds every answer waits before it starts.
        latency_spread: ``uniform``: answers wait ``latency ± latency_spread`` (at least 0);
            ``lognormal``: the sigma of the log of the wait (a long tail of slow answers).
        latency_shape: ``"uniform"`` or ``"lognormal"``.
        error_rate: Fraction answered with one of ``error_statuses`` (JSON error body).
        error_statuses: The 5xx statuses to choose from.
        rate_limit: Requests per second each server accepts (a token bucket of
            ``rate_burst``); beyond it the answer is 429 with ``Retry-After``. 0 = no limit.
        rate_burst: Bucket size (default: ``max(1, rate_limit)``).
        cut_rate: Fraction of bodies cut at a random offset (full headers, then the
            connection drops).
        stall_rate: Fraction of bodies that stall mid-body for ``stall`` seconds.
        stall: Seconds a stalled body pauses.
        wrong_length_rate: Fraction of bodies sent with a wrong ``Content-Length`` (half
            shorter: the client gets a short body that looks complete; half longer: the
            connection drops after the real body).
        malformed_rate: Fraction of Kognic listing pages that come malformed (status 200)
            in one of ``malformed_kinds``: ``invalid-json`` (cut text), ``missing-fields``
            (no ``data``, or items without ``uri``/``inputUuid``/``created``),
            ``non-list-data`` (``data`` an object or a string).
        malformed_kinds: The kinds to choose from.
        auth_down_for: The Kognic auth server answers 503 for this many seconds after start.
        auth_down_requests: ...and to its first this many token requests.
        export_error_rate: Fraction of AnnoLab export jobs that end ``errored``.
        export_stuck_rate: Fraction of AnnoLab export jobs that never finish (``started``
            forever).
        targets: Endpoints the per-request knobs (latency, errors, rate limit, body faults,
            malformed pages) apply to; all of :data:`TARGETS` if None. The auth outage and
            export outcomes are not per request and ignore it.

    Expiring signed URLs are the fakes' own ``url_ttl`` (``FakeKognic(url_ttl=...)``,
    ``FakeAnnoLab(url_ttl=...)``).
    """

    seed: int = 0
    latency: float = 0.0
    latency_spread: float = 0.0
    latency_shape: Literal["uniform", "lognormal"] = "uniform"
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limit: float = 0.0
    rate_burst: int | None = None
    cut_rate: float = 0.0
    stall_rate: float = 0.0
    stall: float = 5.0
    wrong_length_rate: float = 0.0
    malformed_rate: float = 0.0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    auth_down_for: float = 0.0
    auth_down_requests: int = 0
    export_error_rate: float = 0.0
    export_stuck_rate: float = 0.0
    targets: frozenset[str] | None = None

    def __post_init__(self) -> None:
        for name in (
            "error_rate",
            "cut_rate",
            "stall_rate",
            "wrong_length_rate",
            "malformed_rate",
            "export_error_rate",
            "export_stuck_rate",
        ):
            _fraction(name, getattr(self, name))
        if self.export_error_rate + self.export_stuck_rate > 1.0:
            raise ValueError("export_error_rate + export_stuck_rate must not exceed 1")
        for name in ("latency", "latency_spread", "rate_limit", "stall", "auth_down_for"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.latency_shape not in _LATENCY_SHAPES:
            raise ValueError(f"latency_shape must be one of {_LATENCY_SHAPES}")
        if self.auth_down_requests < 0:
            raise ValueError("auth_down_requests must not be negative")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError("rate_burst must be at least 1")
        if not self.error_statuses or not all(500 <= s < 600 for s in self.error_statuses):
            raise ValueError("error_statuses must be 5xx statuses")
        if not self.malformed_kinds or set(self.malformed_kinds) - set(MALFORMED_KINDS):
            raise ValueError(f"malformed_kinds must be some of {MALFORMED_KINDS}")
        if self.targets is not None:
            # A set given by the caller becomes a frozenset, so the dataclass stays hashable.
            object.__setattr__(self, "targets", frozenset(self.targets))
            if unknown := set(self.targets) - TARGETS:
                raise ValueError(f"unknown chaos targets {sorted(unknown)}")

    def _unit(self, what: str, target: str, key: str, n: int) -> float:
        """A uniform draw in [0, 1) that depends only on its arguments and the seed."""
        text = f"{self.seed}\0{what}\0{target}\0{key}\0{n}".encode()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def applies(self, target: str) -> bool:
        """Whether the per-request knobs apply to ``target``."""
        return self.targets is None or target in self.targets

    def decide(self, target: str, key: str, n: int) -> ChaosDecision:
        """What chaos does to the ``n``-th request (from 0) for ``key`` at ``target``.

        Args:
            target: The endpoint (one of :data:`TARGETS`).
            key: What the request is for: a scene uuid (``content``), a listing page
                (``search``: ``project/batch/type?cursor``), a client id (``token``), an
                export id (``status``, ``download``) or a project (``export``).
            n: How many requests for this key came before.
        """
        if not self.applies(target):
            return ChaosDecision(target=target, key=key)

        def draw(what: str) -> float:
            return self._unit(what, target, key, n)

        status = None
        if draw("error") < self.error_rate:
            status = self.error_statuses[int(draw("error-status") * len(self.error_statuses))]
        malformed = None
        if target == "search" and draw("malformed") < self.malformed_rate:
            kinds = self.malformed_kinds
            malformed = kinds[int(draw("malformed-kind") * len(kinds))]
        return ChaosDecision(
            target=target,
            key=key,
            latency=self._latency(draw("latency")),
            status=status,
            cut=draw("cut-at") if draw("cut") < self.cut_rate else None,
            stall=draw("stall-at") if draw("stall") < self.stall_rate else None,
            stall_for=self.stall,
            wrong_length=draw("length") if draw("wrong-length") < self.wrong_length_rate else None,
            malformed=malformed,
            malformed_variant=draw("malformed-variant"),
        )

    def _latency(self, u: float) -> float:
        if self.latency <= 0:
            return 0.0
        if self.latency_shape == "uniform":
            return max(0.0, self.latency + self.latency_spread * (2 * u - 1))
        # Lognormal with the given mean: mu is chosen so that E[exp(mu + sigma Z)] = latency.
        sigma = self.latency_spread
        mu = math.log(self.latency) - sigma * sigma / 2
        z = statistics.NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
        return math.exp(mu + sigma * z)

    def export_outcome(self, job_id: int) -> Literal["errored", "stuck"] | None:
        """How AnnoLab export job ``job_id`` ends: ``errored``, ``stuck`` or normally (None)."""
        u = self._unit("export", "export", str(job_id), 0)
        if u < self.export_error_rate:
            return "errored"
        if u < self.export_error_rate + self.export_stuck_rate:
            return "stuck"
        return None


@dataclass
class _Bucket:
    tokens: float
    updated: float


class ChaosState:
    """A fake's running chaos: request counts per key, rate-limit buckets, the outage clock.

    Args:
        chaos: The settings (None: no chaos).
        events: Where applied chaos is recorded (the fake's ``stats.chaos``).
    """

    def __init__(self, chaos: Chaos | None, events: list[ChaosEvent]) -> None:
        self.chaos = chaos
        self.events = events
        self._counts: Counter[tuple[str, str]] = Counter()
        self._buckets: dict[str, _Bucket] = {}
        self._token_requests = 0
        self._started = time.monotonic()

    def reset(self) -> None:
        """Start over, as at server start: counts, buckets and the outage clock."""
        self._counts.clear()
        self._buckets.clear()
        self._token_requests = 0
        self._started = time.monotonic()

    def _record(self, target: str, key: str, action: str) -> None:
        self.events.append(ChaosEvent(target, key, action))

    async def gate(
        self, *, target: str, key: str, server: str
    ) -> tuple[web.Response | None, ChaosDecision | None]:
        """Apply the outage, rate limit, latency and 5xx knobs to one request.

        Returns the answer to send instead (or None), and the decision whose body knobs
        the real answer must apply (or None without chaos).
        """
        chaos = self.chaos
        if chaos is None:
            return None, None
        n = self._counts[target, key]
        self._counts[target, key] += 1
        if target == "token" and (down := self._auth_down()) is not None:
            self._record(target, key, "auth-down")
            return _error(503, "auth server unavailable (chaos)", retry_after=down), None
        if not chaos.applies(target):
            return None, None
        if chaos.rate_limit > 0 and (wait := self._take_token(server, chaos)) is not None:
            self._record(target, key, "rate-limited")
            return _error(429, "rate limit exceeded (chaos)", retry_after=wait), None
        decision = dataclasses.replace(chaos.decide(target, key, n), events=self.events)
        if decision.latency > 0:
            await asyncio.sleep(decision.latency)
        if decision.status is not None:
            decision.note(f"status {decision.status}")
            return _error(decision.status, f"injected by chaos: status {decision.status}"), None
        return None, decision

    def _auth_down(self) -> int | None:
        """Seconds to announce in Retry-After while the auth server is down, else None."""
        chaos = self.chaos
        assert chaos is not None
        self._token_requests += 1
        if self._token_requests <= chaos.auth_down_requests:
            return 1
        remaining = chaos.auth_down_for - (time.monotonic() - self._started)
        return max(1, math.ceil(remaining)) if remaining > 0 else None

    def _take_token(self, server: str, chaos: Chaos) -> int | None:
        """Take one request from ``server``'s bucket; the Retry-After seconds when empty."""
        burst = float(chaos.rate_burst or max(1.0, chaos.rate_limit))
        now = time.monotonic()
        bucket = self._buckets.setdefault(server, _Bucket(tokens=burst, updated=now))
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * chaos.rate_limit)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - bucket.tokens) / chaos.rate_limit))

    def export_outcome(self, job_id: int) -> Literal["errored", "stuck"] | None:
        """How export job ``job_id`` ends under chaos (recorded when it does not finish)."""
        if self.chaos is None:
            return None
        outcome = self.chaos.export_outcome(job_id)
        if outcome is not None:
            self._record("export", str(job_id), outcome)
        return outcome


def _error(status: int, message: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"message": message}, status=status, headers=headers)


def malformed_page(page: dict[str, Any], decision: ChaosDecision) -> bytes:
    """The listing ``page`` malformed as ``decision`` says, as the bytes to send."""
    kind, variant = decision.malformed, decision.malformed_variant
    text = json.dumps(page)
    if kind == "invalid-json":
        # Cut inside the text (never empty, never whole), or a stray character after it.
        if variant < 0.5:
            return text[: max(1, int(len(text) * variant * 2))].encode()
        return (text + "}").encode()
    if kind == "missing-fields":
        items = page.get("data") or []
        if variant < 0.25 or not items:
            return json.dumps({k: v for k, v in page.items() if k != "data"}).encode()
        dropped = ("uri", "inputUuid", "created")[int((variant - 0.25) / 0.75 * 3) % 3]
        stripped = [{k: v for k, v in item.items() if k != dropped} for item in items]
        return json.dumps({**page, "data": stripped}).encode()
    if kind == "non-list-data":
        data: Any = {"items": page.get("data")} if variant < 0.5 else "unavailable"
        return json.dumps({**page, "data": data}).encode()
    raise ValueError(f"unknown malformed kind {kind!r}")

"""HTTP transport: one aiohttp session, flow control per host, retries, error translation.

Every request annopull makes goes through :class:`Transport`. It owns the only
``aiohttp.ClientSession`` of a client and sends each request through the flow control of
its host (:mod:`annopull._transport.flow`: an adaptive concurrency limit, a host-wide pause
for ``Retry-After``, a retry budget). Each request is a readable loop::

    async for attempt in self._attempts(item=item):
        ...                                  # work outside the host's slot (a token, a URL)
        async with attempt.exchange(url), self.session.get(url) as resp:
            ...                              # one request; return, raise, or _Retry

:meth:`_Attempts.exchange` takes a slot of the host, and sorts what goes wrong: a 429 or
503 with ``Retry-After`` pauses the host and is repeated without using an attempt; a
failure worth another try (408, 5xx, timeouts, dropped connections, bodies cut short) uses
an attempt and the host's retry budget, and waits a backoff with full jitter; anything
else is final. :func:`_classify` names the :class:`~annopull._errors.TransferError`
subclass of each failed attempt in exactly one place, and the give-up raises it.

Storage downloads never carry an Authorization header: signed URLs are credentials of
their own, and some stores reject the request. API answers are read to at most
``max_answer_bytes``; API redirects are followed only within one origin, and not at all
where the caller says so (the token request, whose form holds the client secret).
"""

from __future__ import annotations

import email.utils
import enum
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
import anyio
import orjson
import yarl

from annopull._config import EngineConfig
from annopull._errors import (
    AnnopullError,
    ApiError,
    AuthError,
    InvalidResponseError,
    NetworkError,
    NotFoundError,
    RequestTimeoutError,
    RetryableStatusError,
    RetryBudgetExhaustedError,
    TransferError,
    TruncatedBodyError,
    redact_url,
)
from annopull._transport.flow import (
    Clock,
    FlowControl,
    HostFlow,
    HostUnavailable,
    Slot,
    TransferStats,
    origin_of,
)
from annopull._version import DISTRIBUTION, __version__

__all__ = ["AuthProvider", "ByteTarget", "Transport", "parse_retry_after"]

_log = logging.getLogger(__name__)

#: What the official Kognic client retries on, and what AnnoLab's 429/5xx need.
RETRY_STATUSES = frozenset({408, 429, *range(500, 512), 598, 599})
#: Answers that mean "too much": they shrink the host's concurrency limit, and with a
#: ``Retry-After`` they are the server pacing us rather than a failure.
OVERLOAD_STATUSES = frozenset({429, 503})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: A storage URL that answers these has expired (Kognic's contract); fetch a fresh one.
EXPIRED_URL_STATUSES = frozenset({400, 403})
#: Cap on fresh-URL fetches for one download, so a store that never accepts cannot loop.
MAX_URL_REFRESHES = 3
#: Same-origin redirects followed for one API call.
MAX_REDIRECTS = 5
#: Paced repeats of one request; past them a 429/503 counts as a failed attempt, so a
#: server that paces one request forever while answering others cannot loop it forever.
MAX_PACED = 100
#: Answers from this size on are decoded in a worker thread: parsing a document of tens of
#: MB (a single annotation with its content inline) would hold the event loop for long.
THREAD_DECODE_BYTES = 1 << 20
USER_AGENT = f"{DISTRIBUTION}/{__version__}"

_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


class AuthProvider(Protocol):
    """Supplies the Authorization header of API calls and drops a refused one."""

    async def authorization(self) -> str:
        """Return the value of the Authorization header to send."""

    async def invalidate(self, value: str) -> None:
        """Forget ``value`` after the server refused it, so the next call fetches anew."""


class ByteTarget(Protocol):
    """Where a download's bytes go; it can be cut back so a retry can resume or restart."""

    @property
    def size(self) -> int:
        """Bytes held now."""

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""

    async def truncate(self, size: int) -> None:
        """Drop everything after the first ``size`` bytes."""


class _Kind(enum.Enum):
    #: Uses an attempt and the host's retry budget; waits a backoff.
    FAILURE = "failure"
    #: The server asked us to wait (``Retry-After``): the host pauses, no attempt is used.
    PACING = "pacing"
    #: A repeat the protocol calls for (a fresh token after a 401, a fresh signed URL, a
    #: same-origin redirect), bounded by its own cap: no attempt, no wait.
    RENEWAL = "renewal"


class _Retry(Exception):
    """One exchange failed in a way that another may fix.

    ``cause`` is the error raised if this was the last attempt, decided where the failure is
    recognised so that the give-up need not guess it back from the reason text.
    """

    def __init__(
        self,
        cause: type[TransferError],
        reason: str,
        *,
        status: int | None = None,
        delay: float | None = None,
        kind: _Kind = _Kind.FAILURE,
        overload: bool = False,
    ):
        super().__init__(reason)
        self.cause = cause
        self.reason = reason
        self.status = status
        self.delay = delay
        self.kind = kind
        self.overload = overload

    def give_up(self, *, url: str, attempts: int, item: str | None) -> TransferError:
        """The error to raise when no attempt is left."""
        return self.cause(
            f"giving up: {self.reason}",
            url=url,
            status=self.status,
            attempts=attempts,
            item=item,
        )


def _renewal(reason: str, status: int) -> _Retry:
    return _Retry(RetryableStatusError, reason, status=status, kind=_Kind.RENEWAL)


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date).

    Delta-seconds with a fraction (``0.5``) are accepted too, as some rate limiters send.
    """
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class _Attempts:
    """The attempts of one request: ``async for attempt in transport._attempts(...)``.

    Each pass makes one exchange in ``async with attempt.exchange(url):``. A failure worth
    another try is swallowed there, and the next pass begins after the wait it decided; the
    loop ends with the body's ``return``, a final error, or the give-up error (attempts, the
    host's retry budget or its patience ran out). A body that ends without either ends the
    loop too.
    """

    def __init__(self, *, flow: FlowControl, engine: EngineConfig, item: str | None) -> None:
        self._flow = flow
        self._policy = engine.retry
        self._item = item
        #: Exchanges that counted: answered, or failed (not paced, not renewals).
        self.count = 0
        self._paced = 0
        self._wait: float | None = None
        self._done = False

    def __aiter__(self) -> _Attempts:
        return self

    async def __anext__(self) -> _Attempts:
        if self._done:
            raise StopAsyncIteration
        if self._wait:
            await self._flow.clock.sleep(self._wait)
        self._wait = None
        return self

    def exchange(self, url: str) -> _Exchange:
        """Hold a slot of ``url``'s host around one exchange, and sort out how it went.

        Raises:
            RetryBudgetExhaustedError: the host is given up (now, or before).
            TransferError: no attempt is left, as the subclass of the last failure's cause.
            AnnopullError: a final answer raised by the body, passed through.
        """
        return _Exchange(self, url)

    def _settle(self, host: HostFlow, slot: Slot, url: str, exc: BaseException | None) -> bool:
        """After one exchange: record it, and say whether to swallow ``exc`` (go on).

        Raises:
            TransferError: the give-up, when nothing is left to try.
        """
        if exc is None:
            host.answered(slot)
            self.count += 1
            self._done = True
            return False
        if isinstance(exc, AnnopullError):
            # A final answer (404, a refused redirect, ...): the host itself is fine.
            host.answered(slot)
            self.count += 1
            if exc.attempts is None:
                exc.attempts = self.count
            return False
        if not isinstance(exc, Exception):
            return False  # a cancellation, or the like: nothing to record
        retry = exc if isinstance(exc, _Retry) else _classify(exc)
        self._wait = self._after_failure(host, slot, retry, url=url, exc=exc)
        return True

    def _after_failure(
        self, host: HostFlow, slot: Slot, retry: _Retry, *, url: str, exc: Exception
    ) -> float:
        """Record a failed exchange; return the wait before the next, or raise to give up."""
        policy = self._policy
        if retry.kind is _Kind.RENEWAL:
            host.answered(slot)
            return 0.0
        paced = retry.kind is _Kind.PACING and retry.delay is not None and self._paced < MAX_PACED
        if paced:
            self._paced += 1
            delay = min(retry.delay or 0.0, policy.retry_after_max)
            if host.paced(slot, delay):
                _log.info("%s asks to wait %.1fs: pausing it", host.origin, delay)
        else:
            host.failed(slot, overload=retry.overload)
            self.count += 1
            if self.count >= policy.max_attempts:
                raise retry.give_up(url=url, attempts=self.count, item=self._item) from exc
            delay = self._backoff(retry.delay)
        if not host.may_wait(delay):
            raise self._give_up_host(host, host.impatience(), retry, url=url) from exc
        if not paced and not host.budget.try_spend():
            raise self._give_up_host(host, host.budget.describe(), retry, url=url) from exc
        if paced:
            # The host's pause holds the next exchange back, for this task and all others.
            return 0.0
        _log.info(
            "retrying in %.1fs (attempt %d of %d): %s: %s",
            delay,
            self.count + 1,
            policy.max_attempts,
            redact_url(url),
            retry.reason,
        )
        return delay

    def _give_up_host(
        self, host: HostFlow, why: str, retry: _Retry, *, url: str
    ) -> RetryBudgetExhaustedError:
        host.give_up(why)
        _log.warning("giving up on %s for this run: %s", host.origin, why)
        return RetryBudgetExhaustedError(
            f"giving up on {host.origin}: {why}; last: {retry.reason}",
            url=url,
            status=retry.status,
            attempts=self.count or None,
            item=self._item,
        )

    def _backoff(self, hinted: float | None) -> float:
        policy = self._policy
        if hinted is not None:
            return min(hinted, policy.retry_after_max)
        # Full jitter: spreads a burst of failed requests instead of retrying them in lockstep.
        ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** (self.count - 1))
        return random.uniform(0, ceiling)


class _Exchange:
    """``async with attempt.exchange(url):``: a slot of the host, and the verdict at the end.

    A class rather than a generator-made context manager: it runs for every request.
    """

    __slots__ = ("_attempts", "_host", "_slot", "_url")

    def __init__(self, attempts: _Attempts, url: str) -> None:
        self._attempts = attempts
        self._url = url

    async def __aenter__(self) -> None:
        attempts = self._attempts
        self._host = host = attempts._flow.host(self._url)
        try:
            self._slot = await host.acquire()
        except HostUnavailable as exc:
            raise RetryBudgetExhaustedError(
                f"giving up on {host.origin}: {exc}",
                url=self._url,
                attempts=attempts.count or None,
                item=attempts._item,
            ) from None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        try:
            return self._attempts._settle(self._host, self._slot, self._url, exc)
        finally:
            self._host.release(self._slot)


class Transport:
    """The HTTP layer of a client: use it as ``async with Transport(engine=...) as t``.

    Args:
        engine: timeouts, retry policy, flow control, rate limit, answer size cap.
        clock: the time source of flow control and backoff sleeps (the event loop's when
            omitted); tests pass one that does not sleep.
    """

    def __init__(self, *, engine: EngineConfig, clock: Clock | None = None) -> None:
        self._engine = engine
        self._flow = FlowControl(engine=engine, clock=clock)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(
            # Each host's limiter bounds its requests; the pool only needs room for the
            # largest limit, and a few beyond so that listing never queues behind content.
            limit=max(self._engine.concurrency, self._engine.max_concurrency) + 8,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=30,
        )
        # sock_read catches a stalled body; no total timeout, since a multi-GB body is fine.
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._engine.connect_timeout,
            sock_read=self._engine.read_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
            auto_decompress=True,
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def engine(self) -> EngineConfig:
        """The engine settings this transport was made with."""
        return self._engine

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Transport is not open: use `async with Transport(...)`")
        return self._session

    def stats(self) -> TransferStats:
        """What flow control did so far, per host: limits, retries, pauses, give-ups.

        Cheap, and safe to call from another thread (a progress display's).
        """
        return self._flow.stats()

    def _attempts(self, *, item: str | None) -> _Attempts:
        return _Attempts(flow=self._flow, engine=self._engine, item=item)

    async def request_json(
        self,
        method: str,
        url: str,
        *,
        auth: AuthProvider | None = None,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        item: str | None = None,
        follow_redirects: bool = True,
        decode: Callable[[bytes | bytearray], Any] = orjson.loads,
    ) -> Any:
        """Make an API call and return its parsed JSON body, retrying what is retryable.

        A 401 makes ``auth`` drop its header and the call is repeated once with a fresh one.
        A redirect is followed only to the same origin (scheme, host, port), with the same
        credentials; one to another origin is refused. The answer is read to at most the
        engine's ``max_answer_bytes``, counted after decompression.

        Args:
            method: the HTTP method.
            url: the API URL.
            auth: supplies the Authorization header.
            params: query parameters.
            json: a body to send as JSON.
            form: a body to send form-encoded.
            item: named in errors.
            follow_redirects: ``False`` refuses every redirect (a call whose body holds a
                secret, which a redirect would send on).
            decode: turns the (non-empty) answer into what is returned; it raises
                :class:`orjson.JSONDecodeError` for an answer that is not JSON. Answers of
                ``THREAD_DECODE_BYTES`` and more are decoded in a worker thread.

        Raises:
            AuthError: 401/403 (after one refetch).
            NotFoundError: 404.
            ApiError: any other non-retryable status, the platform's ``message`` shown; a
                redirect refused.
            InvalidResponseError: an answer larger than ``max_answer_bytes``; or, once
                retries are exhausted, one that is not JSON.
            RetryBudgetExhaustedError: the host is given up for this run.
            TransferError: retries exhausted, as the subclass naming the last attempt's cause:
                :class:`RequestTimeoutError`, :class:`NetworkError`,
                :class:`RetryableStatusError` or :class:`TruncatedBodyError`.
        """
        body = orjson.dumps(json) if json is not None else None
        data: bytes | Mapping[str, str] | None = body if body is not None else form
        refetched = False
        redirects = 0
        async for attempt in self._attempts(item=item):
            headers = {"Accept": "application/json"}
            # Asked outside the host's slot: a token fetch may need a slot of its own.
            sent_auth = await auth.authorization() if auth is not None else None
            if sent_auth is not None:
                headers["Authorization"] = sent_auth
            if body is not None:
                headers["Content-Type"] = "application/json"
            async with (
                attempt.exchange(url),
                self.session.request(
                    method, url, params=params, data=data, headers=headers, allow_redirects=False
                ) as resp,
            ):
                payload = await self._read_answer(resp, url=url, item=item)
                if resp.status in REDIRECT_STATUSES and "Location" in resp.headers:
                    url = _redirect_target(resp, url, follow=follow_redirects, item=item)
                    redirects += 1
                    if redirects > MAX_REDIRECTS:
                        raise ApiError("too many redirects", url=url, status=resp.status)
                    params = None  # the Location holds the query
                    if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                        method, data, body = "GET", None, None
                    raise _renewal("redirected", resp.status)
                if resp.status == 401 and auth is not None and sent_auth and not refetched:
                    refetched = True
                    await auth.invalidate(sent_auth)
                    raise _renewal("credentials refused", 401)
                if resp.status >= 400:
                    _raise_for_status(resp, payload, url=url, item=item)
                try:
                    return await _decoded(payload, decode)
                except orjson.JSONDecodeError:
                    raise _Retry(
                        InvalidResponseError, "answer is not valid JSON", status=resp.status
                    ) from None
        raise AssertionError("the attempts end in a return or an error")

    async def download(
        self,
        url: str,
        target: ByteTarget,
        *,
        resume: bool = False,
        parsed: yarl.URL | None = None,
        refresh_url: Callable[[], Awaitable[str]] | None = None,
        on_bytes: Callable[[int], None] | None = None,
        item: str | None = None,
    ) -> int:
        """Stream a signed storage URL into ``target`` and return the bytes it holds.

        Sends no Authorization header. A body cut short is retried; with ``resume`` the retry
        asks for the missing bytes with a Range request (and starts over when the server
        ignores it), else it starts over. A 403/400 means the signed URL expired: with
        ``refresh_url`` a fresh one is fetched and the download continues.

        Args:
            url: the signed URL.
            target: where the bytes go; bytes it already holds count as done when ``resume``.
            resume: continue from ``target.size`` with a Range request.
            parsed: ``url`` as ``yarl.URL(url)`` already parsed it (a listing's check did),
                sent as is rather than parsed again.
            refresh_url: returns a fresh signed URL when the current one has expired.
            on_bytes: called with each change in bytes held (negative when cut back).
            item: named in errors.

        Raises:
            AuthError: a 403 from the store (with ``refresh_url``: to every fresh URL too).
            ApiError: any other non-retryable status (:class:`NotFoundError` for 404).
            RetryBudgetExhaustedError: the store is given up for this run.
            TransferError: retries exhausted, as the subclass naming the last attempt's cause:
                :class:`RequestTimeoutError`, :class:`NetworkError`,
                :class:`TruncatedBodyError` or :class:`RetryableStatusError`.
        """
        current = url
        # What the request is sent to: the parsed URL until a refresh replaces it.
        request_url: str | yarl.URL = url if parsed is None else parsed
        refreshes = 0
        expired = False
        report = on_bytes or (lambda _n: None)

        async def cut_back(size: int) -> None:
            before = target.size
            await target.truncate(size)
            report(size - before)

        async for attempt in self._attempts(item=item):
            if expired and refresh_url is not None:
                # Outside the store's slot: the fresh URL comes from a listing call.
                expired = False
                current = request_url = await refresh_url()
            start = target.size if resume else 0
            if target.size != start:
                await cut_back(start)
            headers = {"Range": f"bytes={start}-"} if start else {}
            async with (
                attempt.exchange(current),
                self.session.get(request_url, headers=headers) as resp,
            ):
                if resp.status in EXPIRED_URL_STATUSES and refresh_url is not None:
                    if refreshes >= MAX_URL_REFRESHES:
                        _raise_for_status(resp, await resp.read(), url=current, item=item)
                    refreshes += 1
                    expired = True
                    raise _renewal("signed URL expired", resp.status)
                if resp.status == 416 and start:
                    # The bytes on disk do not fit what the server has: start over.
                    await cut_back(0)
                    raise _Retry(
                        RetryableStatusError, "range not satisfiable", status=416, delay=0.0
                    )
                if resp.status >= 400:
                    _raise_for_status(resp, await resp.read(), url=current, item=item)
                if start and not _continues_at(resp, start):
                    await cut_back(0)
                expected = _expected_total(resp, target.size)
                small = expected is not None and expected - target.size <= self._engine.chunk_size
                if small and not resume:
                    # A small body (most annotation files) is read whole: one await, not a
                    # chunk iterator; one cut short raises ClientPayloadError all the same.
                    # Not with resume: the bytes of a cut body are what a Range retry
                    # continues from.
                    body = await resp.read()
                    await target.write(body)
                    report(len(body))
                else:
                    async for chunk in resp.content.iter_chunked(self._engine.chunk_size):
                        await target.write(chunk)
                        report(len(chunk))
                if expected is not None and target.size != expected:
                    raise _Retry(
                        TruncatedBodyError, f"body ended at {target.size} of {expected} bytes"
                    )
                return target.size
        raise AssertionError("the attempts end in a return or an error")

    async def probe_size(self, url: str) -> int | None:
        """Return the size of the object behind a signed storage URL, or ``None``.

        Asks for its first byte (``Range: bytes=0-0``; signed URLs are often signed for GET
        only, so no HEAD) and reads the total from ``Content-Range``, or ``Content-Length``
        when the store ignores the range. Sends no Authorization header and does not retry:
        the size only feeds a progress estimate, so any failure or odd answer gives ``None``.
        It waits for a slot of the store like any request.

        Args:
            url: the signed URL.
        """
        host = self._flow.host(url)
        try:
            slot = await host.acquire()
        except HostUnavailable:
            return None
        try:
            async with self.session.get(url, headers={"Range": "bytes=0-0"}) as resp:
                if resp.status in RETRY_STATUSES:
                    host.failed(slot, overload=resp.status in OVERLOAD_STATUSES)
                    return None
                host.answered(slot)
                size = _probed_size(resp) if resp.status in (200, 206) else None
                if size is not None and resp.status == 206:
                    # Read the one byte, so the connection ends cleanly and can be reused.
                    await resp.read()
                return size
        except Exception as exc:
            # _classify re-raises what is not a transport failure (a bug), and for the rest
            # says why, for the log.
            retry = _classify(exc)
            host.failed(slot, overload=retry.overload)
            _log.debug("size probe failed: %s: %s", redact_url(url), retry.reason)
            return None
        finally:
            host.release(slot)

    async def _read_answer(
        self, resp: aiohttp.ClientResponse, *, url: str, item: str | None
    ) -> bytearray:
        """The body of an API answer, read in chunks and refused past ``max_answer_bytes``.

        Counted on the decompressed bytes as they arrive (aiohttp inflates a chunk at a
        time), so a small gzip that expands to gigabytes is stopped at the cap, with memory
        flat; the connection is then closed rather than drained.
        """
        limit = self._engine.max_answer_bytes
        length = resp.content_length
        body = bytearray()
        if length is None or resp.headers.get("Content-Encoding") or length <= limit:
            async for chunk in resp.content.iter_chunked(self._engine.chunk_size):
                body += chunk
                if len(body) > limit:
                    break
            else:
                return body
        raise InvalidResponseError(
            f"answer larger than {_size_text(limit)}", url=url, status=resp.status, item=item
        )


async def _decoded(payload: bytearray, decode: Callable[[bytes | bytearray], Any]) -> Any:
    if not payload:
        return None
    if len(payload) >= THREAD_DECODE_BYTES:
        return await anyio.to_thread.run_sync(decode, payload)
    return decode(payload)


def _raise_for_status(
    resp: aiohttp.ClientResponse, payload: bytes | bytearray, *, url: str, item: str | None
) -> NoReturn:
    status = resp.status
    if status in RETRY_STATUSES:
        hinted = parse_retry_after(resp.headers.get("Retry-After"))
        overload = status in OVERLOAD_STATUSES
        raise _Retry(
            RetryableStatusError,
            f"server answered {status}",
            status=status,
            delay=hinted,
            kind=_Kind.PACING if overload and hinted is not None else _Kind.FAILURE,
            overload=overload,
        )
    message = _error_message(payload) or resp.reason or "request failed"
    cls = {401: AuthError, 403: AuthError, 404: NotFoundError}.get(status, ApiError)
    raise cls(message, url=url, status=status, item=item)


def _redirect_target(
    resp: aiohttp.ClientResponse, url: str, *, follow: bool, item: str | None
) -> str:
    """Where a redirect leads, if it may be followed; else the :class:`ApiError` refusing it.

    Only the Location's host is named: its path and query may hold a secret.
    """
    target = urljoin(url, resp.headers["Location"])
    host = _host_of(target)
    if not follow:
        raise ApiError(
            f"answered a redirect to {host}, which is not followed for this request",
            url=url,
            status=resp.status,
            item=item,
        )
    if origin_of(target) != origin_of(url):
        raise ApiError(
            f"refused a redirect to another host ({host}): credentials stay with their origin",
            url=url,
            status=resp.status,
            item=item,
        )
    return target


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def _classify(exc: Exception) -> _Retry:
    """Translate a lower-layer failure into a retry, or re-raise it when it is a bug.

    The order matters: aiohttp's timeouts are also ``OSError`` and ``ClientError``, and its
    connector errors are ``OSError`` too, so the narrower causes are tested first.
    """
    if isinstance(exc, TimeoutError):
        return _Retry(RequestTimeoutError, "timed out", overload=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return _Retry(TruncatedBodyError, "body cut short")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _Retry(NetworkError, f"cannot connect: {exc.os_error.strerror or exc.os_error}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return _Retry(NetworkError, "server disconnected")
    if isinstance(exc, aiohttp.ClientResponseError):
        # Raised by aiohttp's parser for an answer that is not HTTP (a bad status line).
        return _Retry(InvalidResponseError, f"malformed answer: {_first_line(exc.message)}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return _Retry(NetworkError, _first_line(f"{type(exc).__name__}: {exc}"))
    raise exc


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0][:200]


def _size_text(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


def _error_message(payload: bytes | bytearray) -> str:
    """The platform's own words: JSON ``message`` (or ``error``), else the start of the text."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode("utf-8", "replace").strip().split("\n", 1)[0]
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return ""


def _probed_size(resp: aiohttp.ClientResponse) -> int | None:
    if resp.headers.get("Content-Encoding"):
        # Sizes of the encoded bytes would not match what a download writes.
        return None
    if resp.status == 200:
        # The whole object is on its way: leave it unread, and the connection is closed
        # rather than drained.
        return resp.content_length
    unit, _, spec = resp.headers.get("Content-Range", "").partition(" ")
    span, _, total = spec.partition("/")
    if unit != "bytes" or span != "0-0" or not total.isdigit():
        return None
    return int(total)


def _continues_at(resp: aiohttp.ClientResponse, start: int) -> bool:
    """True when a 206 answer's Content-Range begins exactly where our bytes end."""
    if resp.status != 206:
        return False
    unit, _, spec = resp.headers.get("Content-Range", "").partition(" ")
    first = spec.partition("-")[0]
    return unit == "bytes" and first.isdigit() and int(first) == start


def _expected_total(resp: aiohttp.ClientResponse, held: int) -> int | None:
    length = resp.content_length
    if length is None or resp.headers.get("Content-Encoding"):
        return None
    return held + length

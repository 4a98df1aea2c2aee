"""HTTP transport: one aiohttp session, retries with backoff, rate limit, error translation.

Every request annopull makes goes through :class:`Transport`. It owns the only
``aiohttp.ClientSession`` of a client, retries what is worth retrying (408, 429, 5xx,
timeouts, dropped connections, bodies cut short) with exponential backoff and full jitter,
honours ``Retry-After``, and turns everything that still fails into the annopull error tree
in exactly one place: :func:`_classify` names the :class:`~annopull._errors.TransferError`
subclass of each failed attempt, and the give-up in :meth:`Transport._retrying` raises it.
Storage downloads never carry an Authorization header: signed URLs are credentials of their
own, and some stores reject the request.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, Protocol, TypeVar

import aiohttp
import anyio
import orjson

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
    TransferError,
    TruncatedBodyError,
    redact_url,
)
from annopull._version import DISTRIBUTION, __version__

__all__ = ["AuthProvider", "ByteTarget", "RateLimiter", "Transport", "parse_retry_after"]

T = TypeVar("T")

_log = logging.getLogger(__name__)

#: What the official Kognic client retries on, and what AnnoLab's 429/5xx need.
RETRY_STATUSES = frozenset({408, 429, *range(500, 512), 598, 599})
#: A storage URL that answers these has expired (Kognic's contract); fetch a fresh one.
EXPIRED_URL_STATUSES = frozenset({400, 403})
#: Cap on fresh-URL fetches for one download, so a store that never accepts cannot loop.
MAX_URL_REFRESHES = 3
USER_AGENT = f"{DISTRIBUTION}/{__version__}"


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


class _Retry(Exception):
    """One attempt failed in a way that another attempt may fix.

    ``cause`` is the error raised if this was the last attempt, decided where the failure is
    recognised so that the give-up need not guess it back from the reason text.

    ``free`` marks a repeat the protocol calls for (a fresh token after a 401, a fresh
    signed URL after a 403), bounded by its own cap: it does not use up an attempt, so
    ``max_attempts=1`` disables retries without breaking token or URL renewal.
    """

    def __init__(
        self,
        cause: type[TransferError],
        reason: str,
        *,
        status: int | None = None,
        delay: float | None = None,
        free: bool = False,
    ):
        super().__init__(reason)
        self.cause = cause
        self.reason = reason
        self.status = status
        self.delay = delay
        self.free = free

    def give_up(self, *, url: str, attempts: int, item: str | None) -> TransferError:
        """The error to raise when no attempt is left."""
        return self.cause(
            f"giving up: {self.reason}",
            url=url,
            status=self.status,
            attempts=attempts,
            item=item,
        )


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class RateLimiter:
    """Spaces requests evenly so that no more than ``rate`` start per second."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = anyio.Lock()

    async def wait(self) -> None:
        """Return when the next request may start."""
        async with self._lock:
            now = anyio.current_time()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            await anyio.sleep(delay)


class Transport:
    """The HTTP layer of a client: use it as ``async with Transport(engine=...) as t``.

    Args:
        engine: timeouts, retry policy, rate limit, concurrency (sizes the connection pool).
    """

    def __init__(self, *, engine: EngineConfig) -> None:
        self._engine = engine
        self._limiter = RateLimiter(engine.rate_limit) if engine.rate_limit > 0 else None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(
            # A few beyond the download concurrency, so listing and polling never queue
            # behind content fetches.
            limit=self._engine.concurrency + 8,
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
    ) -> Any:
        """Make an API call and return its parsed JSON body, retrying what is retryable.

        A 401 makes ``auth`` drop its header and the call is repeated once with a fresh one.

        Raises:
            AuthError: 401/403 (after one refetch).
            NotFoundError: 404.
            ApiError: any other non-retryable status; the platform's ``message`` is shown.
            TransferError: retries exhausted, as the subclass naming the last attempt's cause:
                :class:`RequestTimeoutError`, :class:`NetworkError`,
                :class:`RetryableStatusError` or :class:`InvalidResponseError` (not JSON).
        """
        refetched = False

        async def once() -> Any:
            nonlocal refetched
            headers = {"Accept": "application/json"}
            sent_auth = await auth.authorization() if auth is not None else None
            if sent_auth is not None:
                headers["Authorization"] = sent_auth
            body = orjson.dumps(json) if json is not None else None
            if body is not None:
                headers["Content-Type"] = "application/json"
            async with self.session.request(
                method, url, params=params, data=body if body is not None else form, headers=headers
            ) as resp:
                payload = await resp.read()
                if resp.status == 401 and auth is not None and sent_auth and not refetched:
                    refetched = True
                    await auth.invalidate(sent_auth)
                    raise _Retry(
                        RetryableStatusError,
                        "credentials refused",
                        status=401,
                        delay=0.0,
                        free=True,
                    )
                if resp.status >= 400:
                    self._raise_for_status(resp, payload, url=url, item=item)
                try:
                    return orjson.loads(payload) if payload else None
                except orjson.JSONDecodeError:
                    raise _Retry(
                        InvalidResponseError, "answer is not valid JSON", status=resp.status
                    ) from None

        return await self._retrying(once, url=lambda: url, item=item)

    async def download(
        self,
        url: str,
        target: ByteTarget,
        *,
        resume: bool = False,
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
            refresh_url: returns a fresh signed URL when the current one has expired.
            on_bytes: called with each change in bytes held (negative when cut back).
            item: named in errors.

        Raises:
            AuthError: a 403 from the store (with ``refresh_url``: to every fresh URL too).
            ApiError: any other non-retryable status (:class:`NotFoundError` for 404).
            TransferError: retries exhausted, as the subclass naming the last attempt's cause:
                :class:`RequestTimeoutError`, :class:`NetworkError`,
                :class:`TruncatedBodyError` or :class:`RetryableStatusError`.
        """
        current = url
        refreshes = 0
        report = on_bytes or (lambda _n: None)

        async def cut_back(size: int) -> None:
            before = target.size
            await target.truncate(size)
            report(size - before)

        async def once() -> int:
            nonlocal current, refreshes
            start = target.size if resume else 0
            if target.size != start:
                await cut_back(start)
            headers = {"Range": f"bytes={start}-"} if start else {}
            async with self.session.get(current, headers=headers) as resp:
                if resp.status in EXPIRED_URL_STATUSES and refresh_url is not None:
                    if refreshes >= MAX_URL_REFRESHES:
                        self._raise_for_status(resp, await resp.read(), url=current, item=item)
                    refreshes += 1
                    current = await refresh_url()
                    raise _Retry(
                        RetryableStatusError,
                        "signed URL expired",
                        status=resp.status,
                        delay=0.0,
                        free=True,
                    )
                if resp.status == 416 and start:
                    # The bytes on disk do not fit what the server has: start over.
                    await cut_back(0)
                    raise _Retry(
                        RetryableStatusError, "range not satisfiable", status=416, delay=0.0
                    )
                if resp.status >= 400:
                    self._raise_for_status(resp, await resp.read(), url=current, item=item)
                if start and not _continues_at(resp, start):
                    await cut_back(0)
                expected = _expected_total(resp, target.size)
                async for chunk in resp.content.iter_chunked(self._engine.chunk_size):
                    await target.write(chunk)
                    report(len(chunk))
            if expected is not None and target.size != expected:
                raise _Retry(TruncatedBodyError, f"body ended at {target.size} of {expected} bytes")
            return target.size

        return await self._retrying(once, url=lambda: current, item=item)

    async def probe_size(self, url: str) -> int | None:
        """Return the size of the object behind a signed storage URL, or ``None``.

        Asks for its first byte (``Range: bytes=0-0``; signed URLs are often signed for GET
        only, so no HEAD) and reads the total from ``Content-Range``, or ``Content-Length``
        when the store ignores the range. Sends no Authorization header and does not retry:
        the size only feeds a progress estimate, so any failure or odd answer gives ``None``.

        Args:
            url: the signed URL.
        """
        if self._limiter is not None:
            await self._limiter.wait()
        try:
            async with self.session.get(url, headers={"Range": "bytes=0-0"}) as resp:
                if resp.headers.get("Content-Encoding"):
                    # Sizes of the encoded bytes would not match what a download writes.
                    return None
                if resp.status == 206:
                    unit, _, spec = resp.headers.get("Content-Range", "").partition(" ")
                    span, _, total = spec.partition("/")
                    if unit != "bytes" or span != "0-0" or not total.isdigit():
                        return None
                    # Read the one byte, so the connection ends cleanly and can be reused.
                    await resp.read()
                    return int(total)
                if resp.status == 200:
                    # The whole object is on its way: leave it unread, and the connection
                    # is closed rather than drained.
                    return resp.content_length
                return None
        except Exception as exc:
            # _classify re-raises what is not a transport failure (a bug), and for the rest
            # says why, for the log.
            _log.debug("size probe failed: %s: %s", redact_url(url), _classify(exc).reason)
            return None

    async def _retrying(
        self, once: Callable[[], Awaitable[T]], *, url: Callable[[], str], item: str | None
    ) -> T:
        policy = self._engine.retry
        attempt = 0
        while True:
            attempt += 1
            if self._limiter is not None:
                await self._limiter.wait()
            try:
                return await once()
            except AnnopullError as exc:
                if exc.attempts is None:
                    exc.attempts = attempt
                raise
            except Exception as exc:
                retry = exc if isinstance(exc, _Retry) else _classify(exc)
                if retry.free:
                    attempt -= 1
                elif attempt >= policy.max_attempts:
                    raise retry.give_up(url=url(), attempts=attempt, item=item) from exc
            delay = self._backoff(attempt, retry.delay)
            _log.info(
                "retrying in %.1fs (attempt %d of %d): %s: %s",
                delay,
                attempt + 1,
                policy.max_attempts,
                redact_url(url()),
                retry.reason,
            )
            await anyio.sleep(delay)

    def _backoff(self, attempt: int, hinted: float | None) -> float:
        policy = self._engine.retry
        if hinted is not None:
            return min(hinted, policy.retry_after_max)
        # Full jitter: spreads a burst of failed requests instead of retrying them in lockstep.
        return random.uniform(0, min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1)))

    @staticmethod
    def _raise_for_status(
        resp: aiohttp.ClientResponse, payload: bytes, *, url: str, item: str | None
    ) -> NoReturn:
        status = resp.status
        if status in RETRY_STATUSES:
            raise _Retry(
                RetryableStatusError,
                f"server answered {status}",
                status=status,
                delay=parse_retry_after(resp.headers.get("Retry-After")),
            )
        message = _error_message(payload) or resp.reason or "request failed"
        cls = {401: AuthError, 403: AuthError, 404: NotFoundError}.get(status, ApiError)
        raise cls(message, url=url, status=status, item=item)


def _classify(exc: Exception) -> _Retry:
    """Translate a lower-layer failure into a retry, or re-raise it when it is a bug.

    The order matters: aiohttp's timeouts are also ``OSError`` and ``ClientError``, and its
    connector errors are ``OSError`` too, so the narrower causes are tested first.
    """
    if isinstance(exc, TimeoutError):
        return _Retry(RequestTimeoutError, "timed out")
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


def _error_message(payload: bytes) -> str:
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

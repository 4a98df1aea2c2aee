"""Scripted fault injection, and the HTTP plumbing both fake platforms share.

A test scripts faults with :class:`FaultPlan` (``fake.faults.add(Fault(...))``); each
fake asks the plan for a fault on every request to a *target* endpoint and applies it
with the helpers below. The helpers live here, next to the faults, because they are
where faults take effect: every answer a fake sends goes through :func:`send_body`
(Content-Length, Range, truncation, and the body knobs of
:class:`~annopull.testing.chaos.Chaos`), every signed storage URL through
:class:`UrlSigner`, and every server through :func:`start_app` (loopback only).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from aiohttp import web

from annopull.testing.chaos import ChaosDecision, ChaosState

__all__ = [
    "FakeServer",
    "Fault",
    "FaultPlan",
    "UrlSigner",
    "check_loopback",
    "fault_answer",
    "json_error",
    "reject_auth_header",
    "send_body",
    "send_json",
    "start_app",
]

#: Size of the pieces a body is written (and read from disk) in.
CHUNK_SIZE: Final = 1 << 20


@dataclass(kw_only=True)
class Fault:
    """One scripted misbehaviour of a fake endpoint.

    Args:
        target: The endpoint it applies to. Kognic: ``"token"``, ``"search"``,
            ``"content"``, ``"annotation"`` (the v2 and by-id reads); AnnoLab:
            ``"export"``, ``"status"``, ``"download"``.
        status: Answer this status with a JSON ``{"message": ...}`` body instead of
            the real answer.
        retry_after: ``Retry-After`` header value (seconds or an HTTP date) sent with
            ``status``.
        truncate_after: Send the real headers (full ``Content-Length``), then drop
            the connection after this many body bytes.
        stall: Sleep this many seconds before answering (to trigger read timeouts).
        times: How many matching requests it applies to.
        match: Only requests for this key: a scene uuid (Kognic ``content``), the uuid
            or id asked for (Kognic ``annotation``), an
            export id (AnnoLab ``status``/``download``), a project name (Kognic
            ``search``, AnnoLab ``export``) or a client id (Kognic ``token``).
        message: The error message sent with ``status`` (instead of "injected fault").
        echo: With ``status``, make the error body quote the request back, as careless
            servers do: storage answers XML (like S3/GCS ``SignatureDoesNotMatch``)
            quoting the signed URL, its query and signature; the APIs answer JSON whose
            ``message`` quotes the URL, the ``Authorization`` header and the request body
            (a token request's ``client_secret``). For tests that secrets stay out of
            messages.
        redirect: Answer a redirect (``status`` if it is a 3xx, else 302) back to the
            request's own URL, signed query included; with ``times`` above the client's
            redirect limit, that is a redirect loop.
    """

    target: str
    status: int | None = None
    retry_after: str | None = None
    truncate_after: int | None = None
    stall: float | None = None
    times: int = 1
    match: str | None = None
    message: str | None = None
    echo: bool = False
    redirect: bool = False


class FaultPlan:
    """The faults still to be applied, in the order they were added.

    A lock guards the list because tests add faults from their own thread while a
    fake started with ``run_in_thread`` serves on another.
    """

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, *faults: Fault, first: bool = False) -> None:
        """Script ``faults``; each applies to its next ``times`` matching requests.

        With ``first``, they apply before the faults already scripted (which wait until
        these are used up or removed).
        """
        with self._lock:
            if first:
                self._faults[:0] = faults
            else:
                self._faults.extend(faults)

    def remove(self, fault: Fault) -> None:
        """Drop ``fault`` (this very object) if it is not used up yet."""
        with self._lock:
            self._faults = [f for f in self._faults if f is not fault]

    def clear(self) -> None:
        """Drop every fault not yet used up."""
        with self._lock:
            self._faults.clear()

    def take(self, target: str, key: str | None = None) -> Fault | None:
        """Use up one application of the first fault for ``target`` and ``key``."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.target != target or fault.match not in (None, key):
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[index]
                return fault
        return None


def check_loopback(host: str) -> str:
    """Return ``host`` if it is a loopback address, else raise ``ValueError``.

    The fakes must never listen where another machine could reach them.
    """
    if host == "localhost":
        return host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"fake platforms listen on loopback addresses only, not {host!r}")
    return host


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_app(routes: list[web.RouteDef], *, host: str) -> tuple[web.AppRunner, str]:
    """Serve ``routes`` on ``host`` at a free port; return the runner and base URL."""
    app = web.Application()
    app.add_routes(routes)
    # Handler cancellation ends stalled handlers when the client gives up, and the
    # short shutdown timeout keeps a test's teardown from waiting out a stall.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, check_loopback(host), 0)
    await site.start()
    port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{port}"


class FakeServer:
    """Base of the fakes: starts their loopback servers, and stops them all on close.

    Subclasses implement :meth:`_serve`, which calls :meth:`_listen` once per named
    server (each on its own port); :meth:`_url` gives a server's base URL back. They set
    ``faults`` and ``_chaos``, which :meth:`_admit` applies to each request.
    """

    faults: FaultPlan
    _chaos: ChaosState

    def __init__(self, *, host: str) -> None:
        self.host = check_loopback(host)
        self._runners: list[web.AppRunner] = []
        self._urls: dict[str, str] = {}

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _listen(self, name: str, routes: list[web.RouteDef]) -> None:
        runner, url = await start_app(routes, host=self.host)
        self._runners.append(runner)
        self._urls[name] = url

    async def _admit(
        self,
        request: web.Request,
        *,
        target: str,
        key: str | None,
        server: str,
        chaos_key: str | None = None,
        storage: bool = False,
    ) -> tuple[Fault | None, web.StreamResponse | None, ChaosDecision | None]:
        """Apply a scripted fault, or else chaos, to one request.

        Returns the fault taken (for :func:`send_body`'s truncation), the answer to send
        instead of the real one (or None), and the chaos decision for the real body. A
        request a scripted fault applies to gets no chaos: the script is what a test asked.

        Args:
            request: The request.
            target: The endpoint (a :class:`Fault` target).
            key: What faults match on.
            server: The server it came to (each has its own rate-limit bucket).
            chaos_key: What chaos decisions are keyed by (default: ``key``).
            storage: Whether echoed errors are a cloud store's XML.
        """
        fault = self.faults.take(target, key)
        if (answer := await fault_answer(fault, request, storage=storage)) is not None:
            return fault, answer, None
        if fault is not None:
            return fault, None, None
        chaos_answer, decision = await self._chaos.gate(
            target=target, key=chaos_key if chaos_key is not None else key or "", server=server
        )
        return None, chaos_answer, decision

    def _url(self, name: str) -> str:
        try:
            return self._urls[name]
        except KeyError:
            raise RuntimeError(f"{type(self).__name__} is not started") from None

    @property
    def started(self) -> bool:
        """Whether the servers are listening."""
        return bool(self._runners)

    async def start(self) -> None:
        """Start listening; on failure, stop whatever had started."""
        if self._runners:
            raise RuntimeError(f"{type(self).__name__} is already started")
        try:
            await self._serve()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop every server (idempotent)."""
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def json_error(status: int, message: str, *, retry_after: str | None = None) -> web.Response:
    """Build the platforms' error answer: JSON ``{"message": ...}``."""
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return web.json_response({"message": message}, status=status, headers=headers)


async def fault_answer(
    fault: Fault | None, request: web.Request | None = None, *, storage: bool = False
) -> web.Response | None:
    """Apply the stall, redirect and status parts of ``fault``; return the answer to send.

    ``None`` means "send the real answer" (possibly truncated by :func:`send_body`).
    ``request`` is needed for ``echo`` and ``redirect``; ``storage`` makes an echo the XML
    of a cloud store rather than the platform's JSON.
    """
    if fault is None:
        return None
    if fault.stall is not None:
        await asyncio.sleep(fault.stall)
    if fault.redirect and request is not None:
        status = fault.status if fault.status is not None and 300 <= fault.status < 400 else 302
        return web.Response(status=status, headers={"Location": str(request.url)})
    if fault.status is not None:
        message = fault.message or f"injected fault: status {fault.status}"
        if fault.echo and request is not None:
            return await _echo(fault.status, message, request, storage=storage)
        return json_error(fault.status, message, retry_after=fault.retry_after)
    return None


_STORAGE_CODES: Final = {403: "SignatureDoesNotMatch", 404: "NoSuchKey", 400: "InvalidArgument"}


async def _echo(status: int, message: str, request: web.Request, *, storage: bool) -> web.Response:
    """An error answer that quotes ``request`` back: its URL, credentials and body."""
    if storage:
        # One line, as GCS sends it: a client that shows the start of the body shows the query.
        code = _STORAGE_CODES.get(status, "InternalError")
        query = request.query_string
        xml = (
            "<?xml version='1.0' encoding='UTF-8'?><Error>"
            f"<Code>{code}</Code><Message>{escape(message)}: {escape(str(request.url))}</Message>"
            f"<Details>{request.method} {escape(request.path)}?{escape(query)}</Details>"
            f"<StringToSign>GET\n{escape(request.path)}\n"
            f"{escape(request.query.get('expires', ''))}</StringToSign>"
            f"<SignatureProvided>{escape(request.query.get('signature', ''))}</SignatureProvided>"
            "</Error>"
        )
        return web.Response(status=status, text=xml, content_type="application/xml")
    body = (await request.read()).decode("utf-8", "replace")
    parts = [f"{message}: {request.method} {request.url}"]
    if (authorization := request.headers.get("Authorization")) is not None:
        parts.append(f"Authorization: {authorization}")
    if body:
        parts.append(f"body: {body}")
    echoed = {
        "message": "; ".join(parts),
        "request": {"url": str(request.url), "headers": dict(request.headers), "body": body},
    }
    return web.json_response(echoed, status=status)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into ``(start, end_exclusive)``.

    Returns ``None`` for a header to ignore (bad syntax, several ranges), as RFC
    9110 allows; raises ``LookupError`` for an unsatisfiable range.
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:
            suffix = int(last)
            if suffix <= 0:
                raise LookupError(header)
            return max(0, size - suffix), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size:
        raise LookupError(header)
    if end <= start:
        return None
    return start, min(end, size)


async def _file_chunks(path: Path, start: int, stop: int) -> Any:
    """Yield ``path[start:stop]`` in chunks, reading in a worker thread."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        await asyncio.to_thread(handle.seek, start)
        remaining = stop - start
        while remaining > 0:
            chunk = await asyncio.to_thread(handle.read, min(CHUNK_SIZE, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        # Closing a local file is instant: done inline, it cannot be cancelled half-way and
        # leak the handle when the client hangs up mid-download.
        handle.close()


async def _memory_chunks(body: bytes, start: int, stop: int) -> Any:
    view = memoryview(body)
    for offset in range(start, stop, CHUNK_SIZE):
        yield view[offset : min(stop, offset + CHUNK_SIZE)]


async def send_body(
    request: web.Request,
    body: bytes | Path,
    *,
    content_type: str,
    status: int = 200,
    fault: Fault | None = None,
    ranges: bool = False,
    chaos: ChaosDecision | None = None,
) -> tuple[web.StreamResponse, int]:
    """Stream ``body`` (bytes, or a file read in chunks) and return the bytes sent.

    Always sends ``Content-Length``. With ``ranges`` a single ``Range`` is honoured
    (206 with ``Content-Range``, or 416). A ``truncate_after`` fault sends the full
    headers, then only that many body bytes, then drops the connection. ``chaos`` may
    cut the body, stall it mid-way or declare a wrong ``Content-Length``.
    """
    size = await asyncio.to_thread(os.path.getsize, body) if isinstance(body, Path) else len(body)
    start, stop = 0, size
    headers = {"Content-Type": content_type}
    if ranges:
        headers["Accept-Ranges"] = "bytes"
        range_header = request.headers.get("Range")
        if range_header is not None:
            try:
                parsed = _parse_range(range_header, size)
            except LookupError:
                answer = json_error(416, f"range {range_header!r} not satisfiable")
                answer.headers["Content-Range"] = f"bytes */{size}"
                return answer, 0
            if parsed is not None:
                start, stop = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    length = stop - start
    limit, stall_at, declared = length, None, length
    if fault is not None and fault.truncate_after is not None:
        limit = min(limit, fault.truncate_after)
    if chaos is not None:
        if chaos.cut is not None:
            limit = min(limit, int(chaos.cut * length))
            chaos.note(f"cut at {limit} of {length}")
        if chaos.stall is not None:
            stall_at = int(chaos.stall * length)
            chaos.note(f"stall {chaos.stall_for:g}s at {stall_at} of {length}")
        if chaos.wrong_length is not None:
            declared = chaos.declared_length(length)
            chaos.note(f"Content-Length {declared} for {length}")
            # aiohttp would drop the bytes past a short Content-Length anyway; say so here.
            limit = min(limit, declared)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = declared
    await response.prepare(request)
    chunks = (
        _file_chunks(body, start, stop)
        if isinstance(body, Path)
        else _memory_chunks(body, start, stop)
    )
    sent = 0
    try:
        async for chunk in chunks:
            piece = chunk[: limit - sent]
            if stall_at is not None and sent + len(piece) > stall_at:
                # Send up to the stall point, wait with the body half-sent, then go on.
                head, piece = piece[: stall_at - sent], piece[stall_at - sent :]
                await response.write(bytes(head))
                sent += len(head)
                await asyncio.sleep(chaos.stall_for if chaos is not None else 0.0)
                stall_at = None
            await response.write(bytes(piece))
            sent += len(piece)
            if sent >= limit:
                break
    finally:
        await chunks.aclose()
    if sent < declared:
        # Closing the transport flushes what was written, then ends the connection
        # short of Content-Length: the client sees a payload error, as in the wild.
        request.protocol.force_close()
    return response, sent


async def send_json(
    request: web.Request,
    payload: object,
    *,
    status: int = 200,
    fault: Fault | None = None,
    chaos: ChaosDecision | None = None,
) -> web.StreamResponse:
    """Send ``payload`` (or bytes already encoded) as JSON through :func:`send_body`."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response, _ = await send_body(
        request, body, content_type="application/json", status=status, fault=fault, chaos=chaos
    )
    return response


def reject_auth_header(request: web.Request) -> web.Response | None:
    """Return the 400 that storage sends a request carrying ``Authorization``.

    Signed URLs must be fetched without credentials; a client that leaks its token
    or API key to storage gets this answer (and the fake counts it).
    """
    if "Authorization" in request.headers:
        return json_error(400, "storage requests must not carry an Authorization header")
    return None


class UrlSigner:
    """Signs storage URLs with an expiry and checks them, as cloud storage does.

    ``expires`` is in milliseconds since the epoch, so a URL is valid for ``ttl``
    seconds to the millisecond; a ``ttl`` of 0 yields URLs that are already expired,
    which is what tests of re-listing want.
    """

    def __init__(self, *, ttl: float) -> None:
        self.ttl = ttl
        self._key = secrets.token_bytes(32)

    def _signature(self, path: str, expires: str) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, base_url: str, path: str) -> str:
        """Return ``base_url + path`` with ``expires`` and ``signature`` query parameters."""
        expires = str(int((time.time() + self.ttl) * 1000))
        query = urlencode({"expires": expires, "signature": self._signature(path, expires)})
        return f"{base_url}{path}?{query}"

    def check(self, request: web.Request) -> web.Response | None:
        """Return the 403 answer for a bad or expired signature, else ``None``."""
        expires = request.query.get("expires", "")
        signature = request.query.get("signature", "")
        expected = self._signature(request.rel_url.raw_path, expires)
        if not hmac.compare_digest(signature, expected) or not expires.isdigit():
            return json_error(403, "signature does not match")
        if time.time() * 1000 >= int(expires):
            return json_error(403, "request has expired")
        return None

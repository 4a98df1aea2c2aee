"""The HTTP transport against real loopback servers.

Small aiohttp apps (``annopull.testing.faults.start_app``) script exact answers; the fake
Kognic provides signed storage with Range support. Tests of waiting (Retry-After, pauses,
the rate limit) run the transport on a :class:`VirtualClock` (from tests/test_flow.py) and
read the server's request times off the same clock: no sleeping, no wall-clock asserts.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import importlib.metadata
import itertools
import socket
import struct
import time
import tracemalloc
import types
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

import annopull
from annopull._config import EngineConfig, RetryPolicy
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
)
from annopull._pipeline.buffers import Spool
from annopull._transport.http import Transport, parse_retry_after
from annopull._version import installed_version
from annopull.testing import FakeKognic, Fault, KognicProject
from annopull.testing.faults import start_app
from test_flow import VirtualClock

pytestmark = pytest.mark.anyio


def _engine(*, read_timeout: float = 2.0, engine: Any = None, **retry: Any) -> EngineConfig:
    policy = {"max_attempts": 4, "backoff_base": 0.01, "backoff_max": 0.05, **retry}
    return EngineConfig(
        retry=RetryPolicy(**policy),
        read_timeout=read_timeout,
        connect_timeout=2.0,
        **(engine or {}),
    )


def _free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Scripted:
    """A loopback server answering each request with the next scripted handler.

    It notes each request's time on ``clock`` (the transport's virtual clock) if given.
    """

    def __init__(
        self,
        *answers: Callable[[web.Request], Awaitable[web.StreamResponse]],
        clock: VirtualClock | None = None,
    ):
        self.answers = list(answers)
        self.requests: list[web.Request] = []
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        self.url = ""
        self.clock = clock

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.bodies.append(await request.read())
        self.times.append(self.clock.now() if self.clock is not None else time.monotonic())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return await answer(request)


def status(code: int, body: Any = None, **headers: str) -> Any:
    async def answer(_request: web.Request) -> web.StreamResponse:
        if isinstance(body, str):
            return web.Response(status=code, text=body, headers=headers)
        return web.json_response(body if body is not None else {}, status=code, headers=headers)

    return answer


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Scripted]]]:
    runners: list[web.AppRunner] = []

    async def start(*answers: Any, clock: VirtualClock | None = None) -> Scripted:
        scripted = Scripted(*answers, clock=clock)
        runner, url = await start_app(
            [web.route("*", "/{tail:.*}", scripted.handle)], host="127.0.0.1"
        )
        runners.append(runner)
        scripted.url = url
        return scripted

    yield start
    for runner in runners:
        await runner.cleanup()


class Bytes:
    """A ByteTarget in memory."""

    def __init__(self, initial: bytes = b"") -> None:
        self.data = bytearray(initial)

    @property
    def size(self) -> int:
        return len(self.data)

    async def write(self, chunk: bytes) -> None:
        self.data += chunk

    async def truncate(self, size: int) -> None:
        del self.data[size:]


class StaticAuth:
    """An AuthProvider handing out numbered tokens and counting invalidations."""

    def __init__(self) -> None:
        self.issued = 0
        self.invalidated: list[str] = []
        self._current: str | None = None

    async def authorization(self) -> str:
        if self._current is None:
            self.issued += 1
            self._current = f"Bearer t{self.issued}"
        return self._current

    async def invalidate(self, value: str) -> None:
        self.invalidated.append(value)
        self._current = None


# -- Retry-After and rate limit ----------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        pytest.param(lambda: "7", 7.0, 7.0, id="seconds"),
        pytest.param(lambda: " 0 ", 0.0, 0.0, id="zero-padded"),
        pytest.param(lambda: "0.25", 0.25, 0.25, id="fraction"),
        pytest.param(
            lambda: email.utils.formatdate(time.time() + 30, usegmt=True), 28.0, 30.0, id="date"
        ),
        pytest.param(lambda: "Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 0.0, id="date-in-past"),
    ],
)
def test_parse_retry_after(header: Callable[[], str], low: float, high: float) -> None:
    """Both Retry-After forms give the seconds to wait; a past date means now."""
    value = parse_retry_after(header())
    assert value is not None
    assert low <= value <= high


@pytest.mark.parametrize("header", [None, "", "soon", "-3", "1.5e3", "1.", ".5"])
def test_parse_retry_after_rejects_garbage(header: str | None) -> None:
    """A missing or unparseable Retry-After yields None (fall back to backoff)."""
    assert parse_retry_after(header) is None


async def test_rate_limit_spaces_requests_per_host(serve: Any) -> None:
    """At 25/s per host, the k-th request reaches each server no sooner than k/25 s in."""
    clock = VirtualClock()
    servers = [
        await serve(status(200, {"ok": True}), clock=clock),
        await serve(status(200, {"ok": True}), clock=clock),
    ]
    engine = _engine(engine={"rate_limit": 25, "concurrency": 8})
    async with (
        clock.autojump(),
        Transport(engine=engine, clock=clock) as transport,
        anyio.create_task_group() as tg,
    ):
        for server in servers:
            for _ in range(8):
                tg.start_soon(transport.request_json, "GET", server.url + "/x")
    for server in servers:
        times = sorted(server.times)
        assert len(times) == 8
        # Each request arrives after its start, so the k-th arrival is after the k-th start.
        assert all(t >= k / 25 - 1e-9 for k, t in enumerate(times))
    # The hosts were limited apart: eight each, not sixteen in one line.
    assert clock.now() < 15 / 25


# -- request_json ------------------------------------------------------------------------


async def test_retry_after_honoured_and_capped(serve: Any) -> None:
    """Retry-After is waited out, but never longer than retry_after_max."""
    clock = VirtualClock()
    server = await serve(
        status(429, {}, **{"Retry-After": "1"}), status(200, {"n": 1}), clock=clock
    )
    async with clock.autojump(), Transport(engine=_engine(), clock=clock) as transport:
        assert await transport.request_json("GET", server.url + "/a") == {"n": 1}
    assert server.times[1] - server.times[0] == pytest.approx(1.0)

    clock = VirtualClock()
    server = await serve(
        status(503, {}, **{"Retry-After": "3600"}), status(200, {"n": 2}), clock=clock
    )
    engine = _engine(retry_after_max=0.1)
    async with clock.autojump(), Transport(engine=engine, clock=clock) as transport:
        assert await transport.request_json("GET", server.url + "/b") == {"n": 2}
    assert server.times[1] - server.times[0] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("code", "error", "words"),
    [
        pytest.param(404, NotFoundError, "no such project", id="404"),
        pytest.param(403, AuthError, "no such project", id="403"),
        pytest.param(400, ApiError, "no such project", id="400"),
    ],
)
async def test_non_retryable_status_maps_to_error(
    serve: Any, code: int, error: type[AnnopullError], words: str
) -> None:
    """A non-retryable answer is raised at once as the mapped error with the platform's words."""
    server = await serve(status(code, {"message": "no such project"}))
    async with Transport(engine=_engine()) as transport:
        with pytest.raises(error) as info:
            await transport.request_json("GET", server.url + "/p?token=s3cret")
    assert type(info.value) is error
    assert (info.value.status, info.value.attempts) == (code, 1)
    assert words in str(info.value)
    assert "s3cret" not in str(info.value)
    assert len(server.requests) == 1


async def test_plain_text_error_body_is_shown(serve: Any) -> None:
    """An error answered as plain text shows its first line."""
    server = await serve(status(422, "the batch is archived\nsecond line"))
    async with Transport(engine=_engine()) as transport:
        with pytest.raises(ApiError, match="the batch is archived") as info:
            await transport.request_json("GET", server.url + "/q")
    assert "second line" not in str(info.value)


@pytest.mark.parametrize("code", [pytest.param(502, id="502"), pytest.param(503, id="503")])
async def test_retries_exhausted_names_status_attempts_and_redacted_url(
    serve: Any, code: int
) -> None:
    """Persistent 5xx ends in RetryableStatusError naming status, attempts and the bare URL."""
    server = await serve(status(code, {"message": "bad gateway"}))
    async with Transport(engine=_engine(max_attempts=3)) as transport:
        with pytest.raises(TransferError) as info:
            await transport.request_json("GET", server.url + "/r?signature=abc&expires=9")
    err = info.value
    assert type(err) is RetryableStatusError
    assert (err.status, err.attempts, err.url) == (code, 3, server.url + "/r")
    assert str(err) == (
        f"giving up: server answered {code} (HTTP {code}, {server.url}/r, after 3 attempts)"
    )
    assert len(server.requests) == 3


async def test_invalid_json_after_retries_is_invalid_response_error(serve: Any) -> None:
    """An API that never answers valid JSON ends in InvalidResponseError with the 200 status."""
    server = await serve(status(200, "{not json"))
    async with Transport(engine=_engine(max_attempts=2)) as transport:
        with pytest.raises(InvalidResponseError, match="not valid JSON") as info:
            await transport.request_json("GET", server.url + "/j", item="project P")
    assert (info.value.status, info.value.attempts, info.value.item) == (200, 2, "project P")
    assert len(server.requests) == 2


async def test_invalid_json_is_retried(serve: Any) -> None:
    """An answer that is not JSON counts as a failed attempt and is tried again."""
    server = await serve(status(200, "{not json"), status(200, {"ok": 1}))
    async with Transport(engine=_engine()) as transport:
        assert await transport.request_json("GET", server.url + "/j") == {"ok": 1}
    assert len(server.requests) == 2


async def test_connection_refused_is_retried_then_network_error() -> None:
    """A port nobody listens on is retried, then raised as NetworkError saying 'cannot connect'."""
    port = _free_port()
    async with Transport(engine=_engine(max_attempts=2)) as transport:
        with pytest.raises(NetworkError, match="cannot connect") as info:
            await transport.request_json("GET", f"http://127.0.0.1:{port}/x")
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)
    assert (info.value.attempts, info.value.status) == (2, None)
    assert info.value.url == f"http://127.0.0.1:{port}/x"


async def test_401_refetches_token_once(serve: Any) -> None:
    """One 401 drops the token and repeats the call with a new one; a second 401 is final."""
    server = await serve(status(401, {"message": "expired"}), status(200, {"ok": True}))
    auth = StaticAuth()
    async with Transport(engine=_engine()) as transport:
        assert await transport.request_json("GET", server.url + "/a", auth=auth) == {"ok": True}
    assert [r.headers["Authorization"] for r in server.requests] == ["Bearer t1", "Bearer t2"]
    assert auth.invalidated == ["Bearer t1"]

    server = await serve(status(401, {"message": "who are you"}))
    async with Transport(engine=_engine()) as transport:
        with pytest.raises(AuthError, match="who are you"):
            await transport.request_json("GET", server.url + "/b", auth=auth)
    assert len(server.requests) == 2


async def test_401_refetch_works_with_retries_disabled(serve: Any) -> None:
    """max_attempts=1 disables retries, not the one token refetch a 401 calls for."""
    server = await serve(status(401, {"message": "expired"}), status(200, {"ok": True}))
    auth = StaticAuth()
    async with Transport(engine=_engine(max_attempts=1)) as transport:
        assert await transport.request_json("GET", server.url + "/a", auth=auth) == {"ok": True}
    assert auth.issued == 2


async def test_url_refresh_works_with_retries_disabled(storage: Any) -> None:
    """max_attempts=1 still lets an expired signed URL be swapped for a fresh one."""
    _fake, uri, content = storage
    target = Bytes()

    async def refresh() -> str:
        return uri

    async with Transport(engine=_engine(max_attempts=1)) as transport:
        broken = uri.replace("signature=", "signature=00")
        await transport.download(broken, target, refresh_url=refresh)
    assert bytes(target.data) == content


# -- downloads -----------------------------------------------------------------------------


@pytest.fixture
async def storage() -> AsyncIterator[tuple[FakeKognic, str, bytes]]:
    project = KognicProject(project="P", annotation_types=("T",), count=2, content_size=40_000)
    async with FakeKognic(projects=[project]) as fake, Transport(engine=_engine()) as transport:
        # The listing's signed URL, obtained the way a client gets it.
        token = await transport.request_json(
            "POST",
            fake.auth_url + "/v1/auth/oauth/token",
            form={
                "grant_type": "client_credentials",
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
            },
        )
        page = await transport.request_json(
            "GET",
            fake.api_url + "/v1/annotations/projects/P/annotation-type/T/search",
            auth=_Bearer(token["access_token"]),
        )
        item = page["data"][0]
        yield fake, item["uri"], fake.content("P", item["inputUuid"], "T")


class _Bearer:
    def __init__(self, token: str) -> None:
        self.token = token

    async def authorization(self) -> str:
        return f"Bearer {self.token}"

    async def invalidate(self, value: str) -> None:
        pass


async def test_download_resumes_cut_body_with_range(storage: Any) -> None:
    """With resume, a body cut at 1000 bytes continues by Range: storage sends it once in all."""
    fake, uri, content = storage
    fake.faults.add(Fault(target="content", truncate_after=1000))
    target = Bytes()
    async with Transport(engine=_engine()) as transport:
        assert await transport.download(uri, target, resume=True) == len(content)
    assert bytes(target.data) == content
    assert fake.stats.content_bytes == len(content)
    assert fake.stats.storage_requests_with_auth_header == 0


async def test_download_without_resume_restarts(storage: Any) -> None:
    """Without resume, a cut body is fetched again from the start and the target holds it once."""
    fake, uri, content = storage
    fake.faults.add(Fault(target="content", truncate_after=5000, times=2))
    target = Bytes()
    seen: list[int] = []
    # Chunks smaller than the body, so it streams (a body within one chunk is read whole,
    # and a cut one then leaves nothing to discard).
    async with Transport(engine=_engine(engine={"chunk_size": 4096})) as transport:
        await transport.download(uri, target, on_bytes=seen.append)
    assert bytes(target.data) == content
    assert fake.stats.content_bytes == len(content) + 2 * 5000
    assert sum(seen) == len(content)
    assert min(seen) < 0  # a discarded partial body is reported as negative bytes


@pytest.mark.parametrize(
    "held",
    [
        pytest.param(None, id="prefix-held"),
        pytest.param(b"x" * 99_999, id="416-start-over"),
    ],
)
async def test_download_resume_from_held_bytes(storage: Any, held: bytes | None) -> None:
    """Resuming asks only for the missing bytes; when they cannot fit, it starts over."""
    fake, uri, content = storage
    target = Bytes(content[:12_345] if held is None else held)
    async with Transport(engine=_engine()) as transport:
        await transport.download(uri, target, resume=True)
    assert bytes(target.data) == content
    sent = len(content) - 12_345 if held is None else len(content)
    assert fake.stats.content_bytes == sent


async def test_download_refreshes_expired_url(storage: Any) -> None:
    """A 403 from storage fetches a fresh URL (once per 403) and continues with it."""
    _fake, uri, content = storage
    broken = uri.replace("signature=", "signature=00")
    calls: list[str] = []

    async def refresh() -> str:
        calls.append("x")
        return uri

    target = Spool(memory_limit=1 << 20)
    async with Transport(engine=_engine(max_attempts=2)) as transport:
        await transport.download(broken, target, refresh_url=refresh)
    assert target.getvalue() == content
    assert calls == ["x"]


async def test_download_gives_up_when_fresh_urls_keep_failing(storage: Any) -> None:
    """A store that refuses every fresh URL ends in an error, not an endless loop."""
    _fake, uri, _content = storage
    broken = uri.replace("signature=", "signature=00")
    calls = 0

    async def refresh() -> str:
        nonlocal calls
        calls += 1
        return broken

    async with Transport(engine=_engine(max_attempts=8)) as transport:
        with anyio.fail_after(5), pytest.raises(AuthError) as info:
            await transport.download(broken, Bytes(), refresh_url=refresh, item="scene-1")
    assert calls == 3
    assert info.value.status == 403
    assert info.value.item == "scene-1"
    assert "signature=" not in str(info.value)
    assert "?" not in str(info.value)


async def test_download_never_sends_authorization(serve: Any) -> None:
    """Storage downloads carry no Authorization header, whatever the API calls used."""
    server = await serve(status(200, {"content": 1}))
    async with Transport(engine=_engine()) as transport:
        await transport.request_json("GET", server.url + "/api", auth=StaticAuth())
        await transport.download(server.url + "/o/x?sig=1", Bytes())
    assert "Authorization" in server.requests[0].headers
    assert "Authorization" not in server.requests[1].headers


# -- size probe ------------------------------------------------------------------------------


async def test_probe_size_reads_the_total_from_a_one_byte_range(storage: Any) -> None:
    """Against Range-capable storage the probe gives the full size, costing one byte, no auth."""
    fake, uri, content = storage
    async with Transport(engine=_engine()) as transport:
        assert await transport.probe_size(uri) == len(content)
    assert fake.stats.content_bytes == 1
    assert fake.stats.storage_requests_with_auth_header == 0


async def test_probe_size_of_a_store_that_ignores_range(serve: Any) -> None:
    """A 200 answer to the range request gives its Content-Length; Range was asked for."""
    server = await serve(status(200, "x" * 4321))
    async with Transport(engine=_engine()) as transport:
        assert await transport.probe_size(server.url + "/o/x?sig=1") == 4321
    assert server.requests[0].headers["Range"] == "bytes=0-0"
    assert "Authorization" not in server.requests[0].headers


def _answer(code: int, body: bytes, **headers: str) -> Any:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, body=body, headers=headers)

    return answer


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(status(404, {"message": "no such object"}), id="404"),
        pytest.param(status(503, {"message": "busy"}), id="503-not-retried"),
        pytest.param(_answer(206, b"x", **{"Content-Range": "bytes 0-0/*"}), id="unknown-total"),
        pytest.param(_answer(206, b"xy", **{"Content-Range": "bytes 0-1/9"}), id="other-range"),
        pytest.param(_answer(206, b"x"), id="no-content-range"),
        pytest.param(
            _answer(206, b"x", **{"Content-Range": "bytes 0-0/9", "Content-Encoding": "gzip"}),
            id="encoded",
        ),
    ],
)
async def test_probe_size_of_an_odd_answer_is_none(serve: Any, answer: Any) -> None:
    """An answer that does not state the object's size gives None after one request."""
    server = await serve(answer)
    async with Transport(engine=_engine()) as transport:
        assert await transport.probe_size(server.url + "/o/x") is None
    assert len(server.requests) == 1


async def test_probe_size_is_none_when_the_transfer_fails(storage: Any) -> None:
    """A refused port or a stalled store gives None at once: no retries for an estimate."""
    fake, uri, _content = storage
    fake.faults.add(Fault(target="content", stall=3.0))
    async with Transport(engine=_engine(read_timeout=0.2)) as transport:
        with anyio.fail_after(2):
            assert await transport.probe_size(f"http://127.0.0.1:{_free_port()}/o/x") is None
            assert await transport.probe_size(uri) is None
    assert sum(fake.stats.content_requests.values()) == 1


async def test_probe_size_does_not_swallow_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only transport failures mean "size unknown"; anything else escapes the probe."""
    async with Transport(engine=_engine()) as transport:

        def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise KeyError("a bug")

        monkeypatch.setattr(transport.session, "get", broken)
        with pytest.raises(KeyError, match="a bug"):
            await transport.probe_size("http://127.0.0.1:9/o/x")


# -- version ---------------------------------------------------------------------------------


async def test_user_agent_carries_the_installed_version(serve: Any) -> None:
    """The User-Agent and annopull.__version__ are both the version in the package metadata."""
    server = await serve(status(200, {"ok": True}))
    async with Transport(engine=_engine()) as transport:
        await transport.request_json("GET", server.url + "/v")
        await transport.download(server.url + "/o/x", Bytes())
    installed = importlib.metadata.version("annopull")
    assert annopull.__version__ == installed
    assert [r.headers["User-Agent"] for r in server.requests] == [f"annopull/{installed}"] * 2


def test_version_of_an_uninstalled_tree_is_unknown() -> None:
    """Without package metadata the version is the PEP 440 placeholder, not an error."""
    assert installed_version("annopull-not-installed-anywhere") == "0+unknown"


# -- errors by cause -----------------------------------------------------------------------


def _connection_key() -> Any:
    # ClientConnectorError reads only these, to render itself.
    return types.SimpleNamespace(host="127.0.0.1", port=9, ssl=True)


def _request_info() -> aiohttp.RequestInfo:
    return aiohttp.RequestInfo(URL("http://127.0.0.1:9/x"), "GET", CIMultiDictProxy(CIMultiDict()))


@pytest.mark.parametrize(
    ("make", "cause", "words"),
    [
        pytest.param(TimeoutError, RequestTimeoutError, "timed out", id="builtin-timeout"),
        pytest.param(asyncio.TimeoutError, RequestTimeoutError, "timed out", id="asyncio-timeout"),
        pytest.param(
            lambda: aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
            RequestTimeoutError,
            "timed out",
            id="server-timeout",
        ),
        pytest.param(
            lambda: aiohttp.ConnectionTimeoutError("Connection timeout to host"),
            RequestTimeoutError,
            "timed out",
            id="connect-timeout",
        ),
        pytest.param(
            lambda: aiohttp.ClientPayloadError("Response payload is not completed"),
            TruncatedBodyError,
            "body cut short",
            id="payload-cut",
        ),
        pytest.param(
            lambda: aiohttp.ClientConnectorError(
                _connection_key(), ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            ),
            NetworkError,
            "cannot connect: Connection refused",
            id="connector-refused",
        ),
        pytest.param(
            lambda: aiohttp.ClientConnectorDNSError(
                _connection_key(), socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            ),
            NetworkError,
            "cannot connect: Name or service not known",
            id="dns",
        ),
        pytest.param(
            aiohttp.ServerDisconnectedError, NetworkError, "server disconnected", id="disconnected"
        ),
        pytest.param(
            lambda: aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
            NetworkError,
            "ClientOSError: [Errno",
            id="client-os-error",
        ),
        pytest.param(
            lambda: aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
            NetworkError,
            "ClientConnectionResetError: Cannot write to closing transport",
            id="client-reset",
        ),
        pytest.param(
            lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            NetworkError,
            "ConnectionResetError: [Errno",
            id="builtin-reset",
        ),
        pytest.param(
            lambda: OSError(errno.EHOSTUNREACH, "No route to host"),
            NetworkError,
            "OSError: [Errno",
            id="plain-oserror",
        ),
        pytest.param(
            lambda: aiohttp.ClientResponseError(
                _request_info(), (), status=400, message="Bad status line:\n  b'NOT HTTP'"
            ),
            InvalidResponseError,
            "malformed answer: Bad status line:",
            id="not-http",
        ),
    ],
)
async def test_every_lower_error_maps_to_its_cause(
    make: Callable[[], Exception], cause: type[TransferError], words: str
) -> None:
    """Each aiohttp/OS failure, retried until attempts run out, is raised as its cause class."""
    raised: list[Exception] = []

    async def request() -> None:
        url = "http://127.0.0.1:9/o/x?sig=s3cret"
        async for attempt in transport._attempts(item="scene-1"):
            async with attempt.exchange(url):
                raised.append(make())
                raise raised[-1]

    # The attempts loop needs no open session: the failure is scripted, nothing is sent.
    transport = Transport(engine=_engine(max_attempts=2))
    with pytest.raises(TransferError) as info:
        await request()
    err = info.value
    assert type(err) is cause
    assert err.__cause__ is raised[-1]
    assert len(raised) == 2
    assert (err.url, err.status, err.attempts, err.item) == (
        "http://127.0.0.1:9/o/x",
        None,
        2,
        "scene-1",
    )
    assert str(err).startswith(f"giving up: {words}")
    assert "\n" not in str(err)
    assert "s3cret" not in str(err)


async def test_a_bug_is_not_translated_or_retried() -> None:
    """An exception that is no transport failure (a bug) escapes as itself on the first try."""
    calls = 0

    async def request() -> None:
        nonlocal calls
        async for attempt in transport._attempts(item=None):
            async with attempt.exchange("http://127.0.0.1:9/x"):
                calls += 1
                raise KeyError("a bug")

    transport = Transport(engine=_engine(max_attempts=3))
    with pytest.raises(KeyError, match="a bug"):
        await request()
    assert calls == 1
    assert transport.stats().hosts[0].in_flight == 0


async def test_stall_before_answer_is_request_timeout_error(storage: Any) -> None:
    """A store silent for longer than read_timeout ends in RequestTimeoutError (a TimeoutError)."""
    fake, uri, _content = storage
    fake.faults.add(Fault(target="content", stall=3.0, times=2))
    async with Transport(engine=_engine(read_timeout=0.2, max_attempts=2)) as transport:
        with anyio.fail_after(5), pytest.raises(RequestTimeoutError) as info:
            await transport.download(uri, Bytes(), item="scene-1")
    err = info.value
    assert isinstance(err, TimeoutError)
    assert (err.attempts, err.item, err.status) == (2, "scene-1", None)
    assert err.url == uri.partition("?")[0]
    assert "timed out" in str(err)


async def test_body_stalled_mid_stream_is_request_timeout_error(serve: Any) -> None:
    """A body that stops flowing after some bytes ends in RequestTimeoutError, not a hang."""

    async def stall_after_100(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 100)
        await anyio.sleep(3)
        return response

    server = await serve(stall_after_100)
    async with Transport(engine=_engine(read_timeout=0.2, max_attempts=2)) as transport:
        with anyio.fail_after(5), pytest.raises(RequestTimeoutError) as info:
            await transport.download(server.url + "/o/x", Bytes())
    assert info.value.attempts == 2
    assert len(server.requests) == 2


async def test_refused_port_download_is_network_error() -> None:
    """A download from a port nobody listens on ends in NetworkError with its attempts."""
    port = _free_port()
    async with Transport(engine=_engine(max_attempts=2)) as transport:
        with pytest.raises(NetworkError) as info:
            await transport.download(f"http://127.0.0.1:{port}/o/x?sig=1", Bytes(), item="s")
    assert (info.value.attempts, info.value.item) == (2, "s")
    assert info.value.url == f"http://127.0.0.1:{port}/o/x"


async def test_cut_body_every_time_is_truncated_body_error(storage: Any) -> None:
    """A body cut on every attempt ends in TruncatedBodyError; only the last prefix is kept."""
    fake, uri, content = storage
    fake.faults.add(Fault(target="content", truncate_after=1000, times=3))
    target = Bytes()
    # Streamed in chunks smaller than the body (one within a chunk is read whole, and a cut
    # one keeps no prefix).
    engine = _engine(max_attempts=3, engine={"chunk_size": 512})
    async with Transport(engine=engine) as transport:
        with pytest.raises(TruncatedBodyError) as info:
            await transport.download(uri, target, item="scene-1")
    assert (info.value.attempts, info.value.item) == (3, "scene-1")
    assert "signature" not in str(info.value)
    assert bytes(target.data) == content[:1000]
    assert fake.stats.content_bytes == 3 * 1000


async def test_persistent_503_from_storage_is_retryable_status_error(storage: Any) -> None:
    """Storage answering 503 on every attempt ends in RetryableStatusError with status 503."""
    fake, uri, _content = storage
    fake.faults.add(Fault(target="content", status=503, times=3))
    async with Transport(engine=_engine(max_attempts=3)) as transport:
        with pytest.raises(RetryableStatusError) as info:
            await transport.download(uri, Bytes(), item="scene-1")
    assert (info.value.status, info.value.attempts) == (503, 3)
    assert str(info.value).startswith("giving up: server answered 503 (item scene-1, HTTP 503")


# -- flow control: pacing, the shared pause, the budget, the limit ---------------------------


@pytest.mark.parametrize("code", [pytest.param(429, id="429"), pytest.param(503, id="503")])
async def test_pacing_uses_no_attempts(serve: Any, code: int) -> None:
    """Five answers asking to wait 50 ms, with max_attempts=2: waited out, then success."""
    clock = VirtualClock()
    paced = [status(code, {}, **{"Retry-After": "0.05"})] * 5
    server = await serve(*paced, status(200, {"ok": True}), clock=clock)
    engine = _engine(max_attempts=2)
    async with clock.autojump(), Transport(engine=engine, clock=clock) as transport:
        assert await transport.request_json("GET", server.url + "/p") == {"ok": True}
        host = transport.stats().hosts[0]
    gaps = [b - a for a, b in itertools.pairwise(server.times)]
    assert gaps == [pytest.approx(0.05)] * 5
    assert (host.paced, host.pauses, host.retries) == (5, 5, 0)
    assert host.paused_s == pytest.approx(0.25)


async def test_overload_without_retry_after_uses_attempts_and_shrinks_the_limit(
    serve: Any,
) -> None:
    """A 429 with no Retry-After is a failed attempt; it halves the host's limit."""
    server = await serve(status(429, {"message": "slow down"}))
    async with Transport(engine=_engine(max_attempts=2, engine={"concurrency": 8})) as transport:
        with pytest.raises(RetryableStatusError) as info:
            await transport.request_json("GET", server.url + "/q")
        host = transport.stats().hosts[0]
    assert (info.value.status, info.value.attempts) == (429, 2)
    # Two 429s, but the second was sent after the first cut: 8 -> 4 -> 2.
    assert (host.limit, host.limit_min, host.retries) == (2, 2, 1)


async def test_a_pause_holds_back_every_task_talking_to_the_host(serve: Any) -> None:
    """One task's 429 + Retry-After: 2 keeps the other tasks' requests back until it ends."""
    clock = VirtualClock()
    paced = anyio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/first" and not paced.is_set():
            paced.set()
            return web.json_response({}, status=429, headers={"Retry-After": "2"})
        return web.json_response({"path": request.path})

    server = await serve(answer, clock=clock)
    async with Transport(engine=_engine(), clock=clock) as transport:
        async with anyio.create_task_group() as tg:
            tg.start_soon(transport.request_json, "GET", server.url + "/first")
            await paced.wait()
            await anyio.wait_all_tasks_blocked()
            assert transport.stats().paused_for == 2.0
            for n in range(3):
                tg.start_soon(transport.request_json, "GET", f"{server.url}/other{n}")
            await anyio.wait_all_tasks_blocked()
            # Nothing moves while the clock stands still: they all wait for the pause.
            assert [r.path for r in server.requests] == ["/first"]
            clock.advance(2.0)
        host = transport.stats().hosts[0]
    later = dict(zip((r.path for r in server.requests[1:]), server.times[1:], strict=True))
    assert sorted(later) == ["/first", "/other0", "/other1", "/other2"]
    assert all(t >= 2.0 for t in later.values())
    assert (host.pauses, host.paced, host.retries) == (1, 1, 0)


async def test_retry_budget_gives_the_host_up_and_then_fails_fast(serve: Any) -> None:
    """Past the budget the host is given up: the error names it, later calls send nothing."""
    dead = await serve(status(503, {"message": "down"}))
    alive = await serve(status(200, {"ok": True}))
    engine = _engine(max_attempts=10, retry_budget=0.0, retry_budget_floor=3)
    async with Transport(engine=engine) as transport:
        with pytest.raises(RetryBudgetExhaustedError) as info:
            await transport.request_json("GET", dead.url + "/a?token=s3cret", item="page 1")
        assert len(dead.requests) == 4
        err = info.value
        assert isinstance(err, TransferError)
        assert (err.status, err.attempts, err.item) == (503, 4, "page 1")
        assert str(err).startswith(
            f"giving up on {dead.url}: retry budget exhausted: 3 retries for 4 requests "
            "(at most 0% of requests plus 3); last: server answered 503"
        )
        assert "s3cret" not in str(err)
        with anyio.fail_after(1), pytest.raises(RetryBudgetExhaustedError, match="giving up on"):
            await transport.download(dead.url + "/o/x", Bytes(), item="scene-1")
        assert len(dead.requests) == 4
        # Other hosts are limited apart and go on.
        assert await transport.request_json("GET", alive.url + "/b") == {"ok": True}
        stats = transport.stats()
    assert stats.budget_exhausted == f"{dead.url}: {err.reason.split(': ', 1)[1].split('; ')[0]}"
    assert [h.gave_up is not None for h in stats.hosts] == [True, False]


async def test_limit_grows_above_concurrency_while_answers_are_good(serve: Any) -> None:
    """With more callers than the limit and good answers, it grows to max_concurrency."""
    busy = [0, 0]  # now, most

    async def answer(_request: web.Request) -> web.StreamResponse:
        busy[0] += 1
        busy[1] = max(busy)
        await asyncio.sleep(0.002)
        busy[0] -= 1
        return web.json_response({})

    server = await serve(answer)
    engine = _engine(engine={"concurrency": 2, "max_concurrency": 6})
    # A clock that stands still: every latency is 0, so none rises.
    async with Transport(engine=engine, clock=VirtualClock()) as transport:

        async def caller() -> None:
            for _ in range(30):
                await transport.request_json("GET", server.url + "/g")

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(caller)
        host = transport.stats().hosts[0]
    assert (host.limit, host.limit_max, host.limit_min) == (6, 6, 2)
    assert busy[1] == 6


# -- bounded API answers ---------------------------------------------------------------------


def _gzip_bomb() -> bytes:
    """About 1 MB of gzip that inflates to 1 GiB of zeros: a valid stream, built cheaply.

    After a full flush the deflate state restarts, so every further MiB of zeros compresses
    to the same block: the block is repeated instead of compressing a GiB.
    """
    mib = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    end = packer.flush(zlib.Z_FINISH)[:-8]
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(mib, crc)
    return head + block * 1023 + end + struct.pack("<II", crc, (1 << 30) & 0xFFFFFFFF)


def test_gzip_bomb_is_what_it_claims() -> None:
    """The test's bomb is a gzip stream (its first 8 MiB inflated), about 1 MB long."""
    bomb = _gzip_bomb()
    assert len(bomb) < 1_100_000
    start = zlib.decompressobj(31).decompress(bomb[:20_000], 8 << 20)
    assert start == bytes(8 << 20)


async def test_gzip_bomb_answer_is_refused_with_flat_memory(serve: Any) -> None:
    """A 1 MB gzip answer inflating to 1 GiB stops at 64 MiB with a clear error, memory flat."""
    bomb = _gzip_bomb()

    async def answer(_request: web.Request) -> web.StreamResponse:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=bomb, headers=headers)

    server = await serve(answer)
    async with Transport(engine=_engine()) as transport:
        tracemalloc.start()
        try:
            with pytest.raises(InvalidResponseError) as info:
                await transport.request_json("GET", server.url + "/status", item="export 7")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert str(info.value).startswith("answer larger than 64 MiB (item export 7, HTTP 200")
    assert (info.value.attempts, len(server.requests)) == (1, 1)
    # The cap and a few chunks, not the gigabyte.
    assert peak < 96 << 20, peak


async def test_answer_declared_too_large_is_refused_before_reading(serve: Any) -> None:
    """A Content-Length past the cap is refused at the headers, without waiting for a body."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = (1 << 20) + 1
        await response.prepare(request)
        await response.write(b"[")
        await asyncio.sleep(30)
        return response

    server = await serve(answer)
    engine = _engine(engine={"max_answer_bytes": 1 << 20})
    async with Transport(engine=engine) as transport:
        with anyio.fail_after(5), pytest.raises(InvalidResponseError, match="larger than 1 MiB"):
            await transport.request_json("GET", server.url + "/page")


async def test_downloads_are_not_capped_by_max_answer_bytes(storage: Any) -> None:
    """Storage downloads stream to their target whatever max_answer_bytes says."""
    _fake, uri, content = storage
    target = Bytes()
    async with Transport(engine=_engine(engine={"max_answer_bytes": 1024})) as transport:
        assert await transport.download(uri, target) == len(content) > 1024
    assert bytes(target.data) == content


# -- redirects of API calls ------------------------------------------------------------------


def _redirect(code: int, location: str) -> Any:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": location})

    return answer


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirect_to_another_origin_is_refused(serve: Any, code: int) -> None:
    """A redirect to another host:port is an ApiError naming only that host; it gets nothing."""
    elsewhere = await serve(status(200, {"stolen": True}))
    host = elsewhere.url.removeprefix("http://")
    server = await serve(_redirect(code, elsewhere.url + "/steal?token=t0p"))
    async with Transport(engine=_engine()) as transport:
        with pytest.raises(ApiError) as info:
            await transport.request_json("GET", server.url + "/a", auth=StaticAuth())
    assert type(info.value) is ApiError
    assert info.value.status == code
    assert f"redirect to another host ({host})" in str(info.value)
    assert "steal" not in str(info.value)
    assert "t0p" not in str(info.value)
    assert elsewhere.requests == []
    assert len(server.requests) == 1


async def test_same_origin_redirect_is_followed_with_its_credentials(serve: Any) -> None:
    """A redirect within the origin is followed, keeping the Authorization header."""
    server = await serve(_redirect(302, "/b?cursorId=2"), status(200, {"ok": True}))
    async with Transport(engine=_engine(max_attempts=1)) as transport:
        got = await transport.request_json(
            "GET", server.url + "/a", auth=StaticAuth(), params={"x": "1"}
        )
    assert got == {"ok": True}
    assert [r.path_qs for r in server.requests] == ["/a?x=1", "/b?cursorId=2"]
    assert [r.headers["Authorization"] for r in server.requests] == ["Bearer t1"] * 2


async def test_see_other_after_post_is_a_get_without_the_body(serve: Any) -> None:
    """A 303 after a POST is followed with a GET, and the body is not sent again."""
    server = await serve(_redirect(303, "/result"), status(200, {"done": 1}))
    async with Transport(engine=_engine()) as transport:
        assert await transport.request_json("POST", server.url + "/job", json={"a": 1}) == {
            "done": 1
        }
    assert [(r.method, r.path) for r in server.requests] == [("POST", "/job"), ("GET", "/result")]
    assert server.bodies == [b'{"a":1}', b""]


async def test_redirects_refused_when_not_to_be_followed(serve: Any) -> None:
    """follow_redirects=False refuses even a same-origin redirect, naming only its host."""
    server = await serve(_redirect(307, "/elsewhere?secret=1"), status(200, {}))
    host = server.url.removeprefix("http://")
    async with Transport(engine=_engine()) as transport:
        with pytest.raises(ApiError, match=f"answered a redirect to {host}, which is not"):
            await transport.request_json(
                "POST", server.url + "/t", form={"s": "x"}, follow_redirects=False
            )
    assert len(server.requests) == 1

"""The HTTP transport and token manager against real loopback servers.

Small aiohttp apps (``annopull.testing.faults.start_app``) script exact answers; the fake
Kognic provides signed storage with Range support.
"""

from __future__ import annotations

import email.utils
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
import pytest
from aiohttp import web

from annopull._config import EngineConfig, KognicCredentials, RetryPolicy, Secret
from annopull._errors import AnnopullError, ApiError, AuthError, NotFoundError, TransferError
from annopull._pipeline.buffers import Spool
from annopull._transport.auth import KognicTokenManager
from annopull._transport.http import RateLimiter, Transport, parse_retry_after
from annopull.testing import FakeKognic, Fault, KognicProject
from annopull.testing.faults import start_app

pytestmark = pytest.mark.anyio


def _engine(**retry: Any) -> EngineConfig:
    policy = {"max_attempts": 4, "backoff_base": 0.01, "backoff_max": 0.05, **retry}
    return EngineConfig(retry=RetryPolicy(**policy), read_timeout=2.0, connect_timeout=2.0)


class Scripted:
    """A loopback server answering each request with the next scripted handler."""

    def __init__(self, *answers: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        self.answers = list(answers)
        self.requests: list[web.Request] = []
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.bodies.append(await request.read())
        self.times.append(time.monotonic())
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

    async def start(*answers: Any) -> Scripted:
        scripted = Scripted(*answers)
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


@pytest.mark.parametrize("header", [None, "", "soon", "-3", "1.5e3"])
def test_parse_retry_after_rejects_garbage(header: str | None) -> None:
    """A missing or unparseable Retry-After yields None (fall back to backoff)."""
    assert parse_retry_after(header) is None


async def test_rate_limiter_spaces_calls() -> None:
    """At 20/s, eleven calls span at least half a second with no two closer than ~50 ms."""
    limiter = RateLimiter(20)
    stamps = []
    for _ in range(11):
        await limiter.wait()
        stamps.append(anyio.current_time())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert stamps[-1] - stamps[0] >= 0.49
    assert min(gaps) >= 0.045


async def test_rate_limit_spaces_concurrent_requests(serve: Any) -> None:
    """Concurrent requests through a rate-limited transport reach the server spaced out."""
    server = await serve(status(200, {"ok": True}))
    engine = EngineConfig(rate_limit=25, concurrency=8)
    async with Transport(engine=engine) as transport, anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(transport.request_json, "GET", server.url + "/x")
    times = sorted(server.times)
    assert len(times) == 8
    assert times[-1] - times[0] >= 7 / 25 - 0.02
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.03


# -- request_json ------------------------------------------------------------------------


async def test_retry_after_honoured_and_capped(serve: Any) -> None:
    """Retry-After is waited out, but never longer than retry_after_max."""
    server = await serve(status(429, {}, **{"Retry-After": "1"}), status(200, {"n": 1}))
    async with Transport(engine=_engine()) as transport:
        start = time.monotonic()
        assert await transport.request_json("GET", server.url + "/a") == {"n": 1}
        waited = time.monotonic() - start
    assert waited >= 0.95

    server = await serve(status(503, {}, **{"Retry-After": "3600"}), status(200, {"n": 2}))
    async with Transport(engine=_engine(retry_after_max=0.1)) as transport:
        start = time.monotonic()
        assert await transport.request_json("GET", server.url + "/b") == {"n": 2}
        assert time.monotonic() - start < 1.0


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


async def test_retries_exhausted_names_status_attempts_and_redacted_url(serve: Any) -> None:
    """After max_attempts 502s the TransferError names status, attempts and the bare URL."""
    server = await serve(status(502, {"message": "bad gateway"}))
    async with Transport(engine=_engine(max_attempts=3)) as transport:
        with pytest.raises(TransferError) as info:
            await transport.request_json("GET", server.url + "/r?signature=abc&expires=9")
    err = info.value
    assert (err.status, err.attempts, err.url) == (502, 3, server.url + "/r")
    assert (
        str(err) == f"giving up: server answered 502 (HTTP 502, {server.url}/r, after 3 attempts)"
    )
    assert len(server.requests) == 3


async def test_invalid_json_is_retried(serve: Any) -> None:
    """An answer that is not JSON counts as a failed attempt and is tried again."""
    server = await serve(status(200, "{not json"), status(200, {"ok": 1}))
    async with Transport(engine=_engine()) as transport:
        assert await transport.request_json("GET", server.url + "/j") == {"ok": 1}
    assert len(server.requests) == 2


async def test_connection_refused_is_retried_then_transfer_error() -> None:
    """A port nobody listens on is retried and then reported as 'cannot connect'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with Transport(engine=_engine(max_attempts=2)) as transport:
        with pytest.raises(TransferError, match="cannot connect") as info:
            await transport.request_json("GET", f"http://127.0.0.1:{port}/x")
    assert info.value.attempts == 2
    assert info.value.status is None


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
    async with Transport(engine=_engine()) as transport:
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


# -- token manager -------------------------------------------------------------------------


def _tokens(fake: FakeKognic, transport: Transport, secret: str | None = None) -> Any:
    credentials = KognicCredentials(
        client_id=fake.client_id, client_secret=Secret(secret or fake.client_secret)
    )
    return KognicTokenManager(transport=transport, auth_url=fake.auth_url, credentials=credentials)


async def test_token_shared_by_concurrent_callers() -> None:
    """Fifty tasks asking at once cost one token request and all get the same header."""
    async with FakeKognic() as fake, Transport(engine=_engine()) as transport:
        tokens = _tokens(fake, transport)
        headers: list[str] = []

        async def ask() -> None:
            headers.append(await tokens.authorization())

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(ask)
        assert fake.stats.token_requests == 1
    assert len(set(headers)) == 1
    assert headers[0].startswith("Bearer ")
    assert tokens.fetches == 1


async def test_token_refreshed_before_expiry_and_after_invalidate() -> None:
    """A token is replaced once half its short life is gone, and when the API refused it."""
    async with FakeKognic(token_ttl=0.4) as fake, Transport(engine=_engine()) as transport:
        tokens = _tokens(fake, transport)
        first = await tokens.authorization()
        assert await tokens.authorization() == first
        await anyio.sleep(0.25)
        second = await tokens.authorization()
        await tokens.invalidate("Bearer not-the-current-one")
        assert await tokens.authorization() == second
        await tokens.invalidate(second)
        third = await tokens.authorization()
        assert fake.stats.token_requests == 3
    assert len({first, second, third}) == 3


async def test_token_fetch_retries_503_on_auth() -> None:
    """The token call is retried like any other (a 503 burst on the auth host)."""
    async with FakeKognic() as fake, Transport(engine=_engine()) as transport:
        fake.faults.add(Fault(target="token", status=503, times=2))
        assert (await _tokens(fake, transport).authorization()).startswith("Bearer ")
        assert fake.stats.token_requests == 3


async def test_refused_credentials_error_hides_secret() -> None:
    """A refused secret is an AuthError naming the client id; the secret shows nowhere."""
    async with FakeKognic() as fake, Transport(engine=_engine()) as transport:
        tokens = _tokens(fake, transport, secret="TOP-s3cret-42")
        with pytest.raises(AuthError) as info:
            await tokens.authorization()
        token_url = fake.auth_url + "/v1/auth/oauth/token"
    text = f"{info.value} {info.value!r} {tokens!r} {info.value.reason}"
    assert "TOP-s3cret-42" not in text
    assert repr(fake.client_id) in str(info.value)
    assert info.value.status == 401
    assert info.value.url == token_url


async def test_token_answer_without_access_token(serve: Any) -> None:
    """A token answer lacking access_token is a clear AnnopullError, not a KeyError."""
    server = await serve(status(200, {"token_type": "Bearer"}))
    credentials = KognicCredentials(client_id="id", client_secret=Secret("sec"))
    async with Transport(engine=_engine()) as transport:
        tokens = KognicTokenManager(
            transport=transport, auth_url=server.url, credentials=credentials
        )
        with pytest.raises(AnnopullError, match="no access_token"):
            await tokens.authorization()
    assert parse_qs(server.bodies[0].decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": ["id"],
        "client_secret": ["sec"],
    }

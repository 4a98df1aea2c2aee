"""Authorization providers: Kognic's shared, self-refreshing token and AnnoLab's API key.

The token manager runs against the fake Kognic's auth host; the API key against a small
loopback server that records what it was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import anyio
import pytest
from aiohttp import web

from annopull._config import EngineConfig, KognicCredentials, RetryPolicy, Secret
from annopull._errors import AnnopullError, AuthError
from annopull._transport.auth import ApiKeyAuth, KognicTokenManager
from annopull._transport.http import Transport
from annopull.testing import FakeKognic, Fault
from annopull.testing.faults import start_app

pytestmark = pytest.mark.anyio


def _engine() -> EngineConfig:
    retry = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05)
    return EngineConfig(retry=retry, read_timeout=2.0, connect_timeout=2.0)


class Answering:
    """A loopback server giving every request the same JSON answer, and keeping what came."""

    def __init__(self, code: int, body: Any) -> None:
        self.code = code
        self.body = body
        self.headers: dict[str, str] = {}
        self.requests: list[web.Request] = []
        self.bodies: list[bytes] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.bodies.append(await request.read())
        return web.json_response(self.body, status=self.code, headers=self.headers)


@pytest.fixture
async def answering() -> AsyncIterator[Callable[[int, Any], Awaitable[Answering]]]:
    runners: list[web.AppRunner] = []

    async def start(code: int, body: Any) -> Answering:
        server = Answering(code, body)
        runner, server.url = await start_app(
            [web.route("*", "/{tail:.*}", server.handle)], host="127.0.0.1"
        )
        runners.append(runner)
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


# -- Kognic token manager --------------------------------------------------------------------


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


async def test_token_answer_without_access_token(answering: Any) -> None:
    """A token answer lacking access_token is a clear AnnopullError, not a KeyError."""
    server = await answering(200, {"token_type": "Bearer"})
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


@pytest.mark.parametrize("expires_in", ["soon", -5, 0, "nan", [1]])
async def test_token_answer_with_an_unusable_lifetime_is_an_auth_error(
    answering: Any, expires_in: object
) -> None:
    """expires_in that is not a positive number is one AuthError (exit 2), not a ValueError."""
    server = await answering(200, {"access_token": "tok-123456789", "expires_in": expires_in})
    credentials = KognicCredentials(client_id="id", client_secret=Secret("sec"))
    async with Transport(engine=_engine()) as transport:
        tokens = KognicTokenManager(
            transport=transport, auth_url=server.url, credentials=credentials
        )
        with pytest.raises(AuthError, match="unusable expires_in"):
            await tokens.authorization()


# -- AnnoLab API key -----------------------------------------------------------------------


async def test_api_key_header_and_repr_hiding_the_key() -> None:
    """The header is `Api-Key <key>`; the repr shows no key; invalidate changes nothing."""
    auth = ApiKeyAuth(Secret("al-K3Y-77"))
    assert await auth.authorization() == "Api-Key al-K3Y-77"
    await auth.invalidate("Api-Key al-K3Y-77")
    assert await auth.authorization() == "Api-Key al-K3Y-77"
    assert "al-K3Y-77" not in repr(auth)
    assert repr(auth) == "ApiKeyAuth(key=Secret('***'))"


async def test_refused_api_key_is_final(answering: Any) -> None:
    """A refused key is tried once more (the transport's one refetch) and then is an AuthError."""
    server = await answering(401, {"message": "invalid api key"})
    async with Transport(engine=_engine()) as transport:
        with pytest.raises(AuthError, match="invalid api key") as info:
            await transport.request_json(
                "GET", server.url + "/projects", auth=ApiKeyAuth(Secret("al-K3Y-77"))
            )
    assert [r.headers["Authorization"] for r in server.requests] == ["Api-Key al-K3Y-77"] * 2
    assert info.value.status == 401
    assert "al-K3Y-77" not in str(info.value)


@pytest.mark.parametrize("code", [pytest.param(307, id="307"), pytest.param(308, id="308")])
async def test_token_redirect_does_not_send_the_secret_on(answering: Any, code: int) -> None:
    """A 307/308 from the token endpoint to another port is an AuthError; the secret stays."""
    elsewhere = await answering(200, {"access_token": "stolen", "expires_in": 60})
    host = elsewhere.url.removeprefix("http://")
    auth_server = await answering(code, {})
    auth_server.headers = {"Location": elsewhere.url + "/v1/auth/oauth/token?leak=1"}
    credentials = KognicCredentials(client_id="id", client_secret=Secret("TOP-s3cret"))
    async with Transport(engine=_engine()) as transport:
        tokens = KognicTokenManager(
            transport=transport, auth_url=auth_server.url, credentials=credentials
        )
        with pytest.raises(AuthError) as info:
            await tokens.authorization()
    assert elsewhere.requests == []
    assert len(auth_server.requests) == 1
    assert info.value.status == code
    assert f"redirect to {host}" in str(info.value)
    assert "leak" not in str(info.value)
    assert "TOP-s3cret" not in str(info.value)
    assert info.value.url == auth_server.url + "/v1/auth/oauth/token"

"""Authorization for API calls: Kognic's OAuth2 client credentials and AnnoLab's API key."""

from __future__ import annotations

import logging
import math

import anyio

from annopull._config import KognicCredentials, Secret
from annopull._errors import ApiError, AuthError
from annopull._redact import register_secret
from annopull._transport.http import Transport

__all__ = ["ApiKeyAuth", "KognicTokenManager"]

_log = logging.getLogger(__name__)

TOKEN_PATH = "/v1/auth/oauth/token"
#: Refresh this long before the token expires, so no request goes out with a dying token.
REFRESH_MARGIN = 60.0


class KognicTokenManager:
    """Fetches one OAuth2 token for all tasks and refreshes it before it expires.

    Concurrent callers share one in-flight fetch (a lock around the check), so a burst of
    hundreds of tasks costs one token request, not hundreds.

    Args:
        transport: the client's transport (the token call is retried like any other).
        auth_url: the Kognic auth host.
        credentials: the client id and secret.
    """

    def __init__(
        self, *, transport: Transport, auth_url: str, credentials: KognicCredentials
    ) -> None:
        self._transport = transport
        self._url = auth_url.rstrip("/") + TOKEN_PATH
        self._credentials = credentials
        self._lock = anyio.Lock()
        self._header: str | None = None
        self._refresh_at = 0.0
        self.fetches = 0

    def __repr__(self) -> str:
        return f"KognicTokenManager(client_id={self._credentials.client_id!r})"

    async def authorization(self) -> str:
        """Return ``Bearer <token>``, fetching or refreshing it when needed."""
        async with self._lock:
            if self._header is None or anyio.current_time() >= self._refresh_at:
                await self._fetch()
            assert self._header is not None
            return self._header

    async def invalidate(self, value: str) -> None:
        """Drop a token the API refused, unless another task has already replaced it."""
        async with self._lock:
            if self._header == value:
                self._header = None

    async def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._credentials.client_id,
            "client_secret": self._credentials.client_secret.reveal(),
        }
        try:
            # No redirects: aiohttp would replay the form, client secret and all, to the
            # redirect's target (307/308), wherever it is.
            body = await self._transport.request_json(
                "POST", self._url, form=form, follow_redirects=False
            )
        except ApiError as exc:
            if exc.status is None or not 300 <= exc.status < 400:
                raise
            raise AuthError(
                f"Kognic's token endpoint {exc.reason}: the client credentials are sent to "
                f"the auth host only (check [kognic] auth_url)",
                url=self._url,
                status=exc.status,
            ) from None
        except AuthError as exc:
            raise AuthError(
                f"Kognic refused the client credentials of client id "
                f"{self._credentials.client_id!r}: {exc.reason}",
                url=self._url,
                status=exc.status,
            ) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError("Kognic's token answer holds no access_token", url=self._url)
        lifetime = _lifetime(body.get("expires_in"), url=self._url)
        register_secret(token)
        register_secret(body.get("refresh_token"))
        self._header = f"Bearer {token}"
        self._refresh_at = anyio.current_time() + max(lifetime - REFRESH_MARGIN, lifetime / 2)
        self.fetches += 1
        _log.info("fetched a Kognic access token, valid for %.0fs", lifetime)


def _lifetime(expires_in: object, *, url: str) -> float:
    """Seconds a token lives: ``expires_in``, an hour when absent; anything else is refused."""
    if expires_in is None or expires_in == "":
        return 3600.0
    try:
        lifetime = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        lifetime = math.nan
    if not math.isfinite(lifetime) or lifetime <= 0:
        raise AuthError(
            f"Kognic's token answer has an unusable expires_in {str(expires_in)[:40]!r}", url=url
        )
    return lifetime


class ApiKeyAuth:
    """AnnoLab's ``Authorization: Api-Key <key>``; a refused key is final."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "ApiKeyAuth(key=Secret('***'))"

    async def authorization(self) -> str:
        """Return ``Api-Key <key>``."""
        return f"Api-Key {self._key.reveal()}"

    async def invalidate(self, value: str) -> None:
        """Nothing to refresh: a key either works or it does not."""

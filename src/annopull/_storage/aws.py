"""AWS credentials, region and Signature Version 4, without botocore for the common cases.

The S3 client (:mod:`annopull._storage.s3`) signs every request here. The credential chain
is botocore's order for what a pull usually has: the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), then the profile (``AWS_PROFILE``, else
``default``) of the shared credentials file and of the config file. Everything else (web
identity / IRSA, SSO, assumed roles, ``credential_process``, container and instance
metadata) is botocore's own chain, imported only then: its import and service models cost
~25 MiB, which a pull with keys in the environment or a profile never pays.

Signing is by hand (hashlib, hmac; ~40 lines) rather than with ``aws-request-signer``: that
library calls ``datetime.utcnow()``, deprecated from Python 3.12 (our tests turn warnings
into errors), and it is the only thing it would add.
"""

from __future__ import annotations

import asyncio
import configparser
import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from annopull._errors import ConfigError

__all__ = ["DEFAULT_REGION", "UNSIGNED_PAYLOAD", "CredentialSource", "Credentials", "sign"]

DEFAULT_REGION: Final = "us-east-1"
#: The payload hash a part is sent with: hashing 5 MiB again to sign it would be another
#: pass over every byte; Content-MD5 guards the body instead.
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
_ALGORITHM: Final = "AWS4-HMAC-SHA256"
#: Profile keys that only botocore's chain can turn into credentials.
_DELEGATED: Final = ("role_arn", "sso_session", "sso_start_url", "credential_process")


@dataclass(frozen=True, slots=True)
class Credentials:
    """One set of keys (the secret and token never shown by ``repr``)."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


class CredentialSource:
    """Where a client's credentials come from: resolved once, lazily; refreshed by botocore.

    Args:
        env: the environment to read (``os.environ``).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env
        self._static: Credentials | None = None
        self._botocore: Any = None

    async def current(self, where: str) -> Credentials:
        """The credentials to sign the next request with.

        Raises:
            ConfigError: none in the chain (``where`` names the object in the message).
        """
        if self._static is None and self._botocore is None:
            self._static = static_credentials(self._env)
            if self._static is None:
                # botocore reads files and may call metadata services: not on the loop.
                self._botocore = await asyncio.to_thread(_botocore_credentials, where)
        if self._static is not None:
            return self._static
        frozen = await asyncio.to_thread(self._botocore.get_frozen_credentials)
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)


def static_credentials(env: Mapping[str, str]) -> Credentials | None:
    """Keys from the environment or the profile's files; ``None`` when botocore must look."""
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or None)
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return None
    for values in _profile_sections(env):
        if any(values.get(name) for name in _DELEGATED):
            return None
        key, secret = values.get("aws_access_key_id"), values.get("aws_secret_access_key")
        if key and secret:
            return Credentials(key, secret, values.get("aws_session_token") or None)
    return None


def region_of(env: Mapping[str, str]) -> str:
    """``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's ``region``, else us-east-1."""
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        return region
    for values in _profile_sections(env):
        if values.get("region"):
            return values["region"]
    return DEFAULT_REGION


def sign(
    *,
    method: str,
    host: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    payload_hash: str,
    credentials: Credentials,
    region: str,
    now: datetime,
) -> dict[str, str]:
    """The request's headers with ``Host``, ``x-amz-*`` and ``Authorization`` added.

    Args:
        method: the HTTP method.
        host: the ``Host`` header sent (with the port when not the default).
        path: the URI path exactly as sent (already percent-encoded).
        query: the query's names and values, not encoded (:func:`encode_query` sends them).
        headers: what else is sent and signed (``x-amz-meta-*``, ``Content-MD5``…).
        payload_hash: the body's SHA-256 in hex, or :data:`UNSIGNED_PAYLOAD`.
        credentials: the keys.
        region: the bucket's region.
        now: the time to sign at (UTC).
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    signed = {**headers, "host": host, "x-amz-date": stamp, "x-amz-content-sha256": payload_hash}
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    canonical = {name.lower(): " ".join(value.split()) for name, value in signed.items()}
    names = sorted(canonical)
    request = "\n".join(
        (
            method,
            path,
            encode_query(query),
            *(f"{name}:{canonical[name]}" for name in names),
            "",
            ";".join(names),
            payload_hash,
        )
    )
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    digest = hashlib.sha256(request.encode()).hexdigest()
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    to_sign = f"{_ALGORITHM}\n{stamp}\n{scope}\n{digest}"
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["Authorization"] = (
        f"{_ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


def encode_query(query: Sequence[tuple[str, str]]) -> str:
    """The query string, encoded as SigV4 canonicalises it (so it is sent exactly so)."""
    pairs = sorted((quote(name, safe="~"), quote(value, safe="~")) for name, value in query)
    return "&".join(f"{name}={value}" for name, value in pairs)


def _profile_sections(env: Mapping[str, str]) -> list[dict[str, str]]:
    """The profile's section of the credentials file, then of the config file."""
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path("~/.aws").expanduser()
    files = (
        (env.get("AWS_SHARED_CREDENTIALS_FILE") or str(home / "credentials"), profile),
        (
            env.get("AWS_CONFIG_FILE") or str(home / "config"),
            profile if profile == "default" else f"profile {profile}",
        ),
    )
    sections = []
    for path, section in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(Path(path).expanduser(), encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"unreadable AWS profile file {path}: {type(exc).__name__}") from None
        if parser.has_section(section):
            sections.append(dict(parser.items(section)))
    return sections


def _botocore_credentials(where: str) -> Any:
    """botocore's full chain (web identity, SSO, roles, metadata), when it is installed.

    Raises:
        ConfigError: botocore is not installed, or its chain found nothing.
    """
    hint = (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile (AWS_PROFILE)"
        " with aws_access_key_id and aws_secret_access_key"
    )
    try:
        import botocore.session
    except ImportError:
        raise ConfigError(
            f"no usable AWS credentials for {where}: {hint} (web identity, SSO, roles and "
            "instance credentials need botocore: pip install botocore)"
        ) from None
    try:
        found = botocore.session.get_session().get_credentials()
    except Exception as exc:  # botocore's own errors: a bad profile, an unreachable service
        raise ConfigError(
            f"no usable AWS credentials for {where}: {type(exc).__name__}: {exc}"
        ) from None
    if found is None:
        raise ConfigError(f"no usable AWS credentials for {where}: {hint}")
    return found

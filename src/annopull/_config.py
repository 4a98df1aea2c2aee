"""Settings: small frozen dataclasses, loaded from a TOML file, the environment and flags.

Precedence is file < environment < explicit overrides (the CLI's flags). Every key of the
file can also be set as ``ANNOPULL_<SECTION>_<KEY>`` (e.g. ``ANNOPULL_ENGINE_CONCURRENCY=64``).
Credentials come only from the environment or files they name, as the platforms' official
clients find them, and are held in :class:`Secret` so that no repr or log shows them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from annopull._errors import ConfigError
from annopull._redact import register_secret

__all__ = [
    "AnnoLabConfig",
    "Config",
    "EngineConfig",
    "KognicConfig",
    "KognicCredentials",
    "RetryPolicy",
    "Secret",
    "StorageConfig",
    "load_annolab_key",
    "load_config",
    "load_kognic_credentials",
]

ENV_PREFIX = "ANNOPULL_"


class Secret:
    """A string that never shows itself in a repr, str, log line or error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        # Masked wherever it might be echoed back: an error body quoting the form it got.
        register_secret(value)

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how often a failed request is tried again.

    Args:
        max_attempts: tries in all, the first included. ``1`` disables retries.
        backoff_base: seconds of the first backoff; doubled each attempt, with full jitter.
        backoff_max: cap of one backoff sleep, in seconds.
        retry_after_max: cap on a server's ``Retry-After``, in seconds, so one bad header
            cannot park a nightly job for a day.
        retry_budget: retries to one host may be at most this share of its requests (plus
            ``retry_budget_floor``); past it the host is given up for the run, so a failing
            platform ends the run instead of being retried ever harder. A 429 or 503 with
            ``Retry-After`` is the server pacing us: it uses neither the budget nor an attempt.
        retry_budget_floor: retries allowed to each host on top of the share.
        host_wait_max: seconds a host may go without a good answer (failing, or pausing us
            with ``Retry-After``) before it is given up for the run.
    """

    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    retry_after_max: float = 300.0
    retry_budget: float = 0.2
    retry_budget_floor: int = 20
    host_wait_max: float = 300.0


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How hard annopull pushes: concurrency, timeouts, retries, rate limit, buffers.

    Args:
        concurrency: content downloads in flight at once; also where each host's adaptive
            concurrency limit starts.
        max_concurrency: the most each host's limit may grow to while its answers are good
            and their latency does not rise (it shrinks on 429, 503 and timeouts, never
            below 1). A ``max_concurrency`` below ``concurrency`` counts as ``concurrency``.
        connect_timeout: seconds to open a connection.
        read_timeout: seconds without a single byte before a read is abandoned; catches a
            stalled body, not only a slow start.
        retry: the retry policy for every request.
        rate_limit: requests per second to each host; ``0`` for no limit.
        chunk_size: bytes read from the network per chunk.
        max_answer_bytes: the largest API answer (listing page, job status, token) read,
            counted after decompression; storage downloads are not capped by it.
        spool_memory: bytes of one downloaded item kept in memory before it spills to a
            temporary file; a pull holds at most 32 times this in memory across all its
            downloads (more in flight spill to disk), which bounds its memory.
        compress_level: deflate level 1-9 for zip entries (0 stores them uncompressed);
            with the speed extra ISA-L deflates, 1-3 as its level 1, 4-6 as 2, 7-9 as 3.
        progress: the CLI's progress display: ``"auto"`` (a bar on a terminal, a plain
            line every few seconds elsewhere), ``"bar"`` (the bar even off a terminal),
            ``"json"`` (one JSON object a line on stderr, for log pipelines) or ``"none"``.
    """

    concurrency: int = 32
    max_concurrency: int = 256
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: float = 0.0
    chunk_size: int = 256 * 1024
    max_answer_bytes: int = 64 * 1024 * 1024
    spool_memory: int = 4 * 1024 * 1024
    compress_level: int = 1
    progress: str = "auto"


@dataclass(frozen=True, kw_only=True)
class KognicConfig:
    """Where Kognic lives; credentials come from :func:`load_kognic_credentials`.

    Args:
        api_url: the input API (annotation listings and reads).
        auth_url: the OAuth2 token host.
        annotation_integration_url: the annotation-integration API (annotations by id);
            the same token is sent to it.
        credentials: a credentials JSON file, as ``KOGNIC_CREDENTIALS``.
    """

    api_url: str = "https://input.app.kognic.com"
    auth_url: str = "https://auth.app.kognic.com"
    annotation_integration_url: str = "https://annotation-integration.app.kognic.com"
    credentials: Path | None = None


@dataclass(frozen=True, kw_only=True)
class AnnoLabConfig:
    """Where AnnoLab lives and how its export jobs are polled.

    Args:
        api_url: the API host.
        poll_interval: seconds before the first status poll.
        poll_backoff: factor by which the interval grows after each poll.
        poll_max_interval: cap of the interval, in seconds.
        poll_timeout: seconds after which a job still not finished is given up.
    """

    api_url: str = "https://api.annolab.ai"
    poll_interval: float = 1.0
    poll_backoff: float = 1.5
    poll_max_interval: float = 15.0
    poll_timeout: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """Where ``s3://`` outputs go; credentials come from the standard AWS chain.

    Args:
        endpoint_url: an S3-compatible store (MinIO, R2, GCS interop); empty for
            ``AWS_ENDPOINT_URL`` or, without it, AWS itself.
        region: the region; empty for the AWS chain's (``AWS_REGION``, the profile).
        addressing_style: ``path``, ``virtual`` or empty (``auto``); many self-hosted stores
            need ``path``.
    """

    endpoint_url: str = ""
    region: str = ""
    addressing_style: str = ""


@dataclass(frozen=True, kw_only=True)
class Config:
    """All settings of a client."""

    kognic: KognicConfig = field(default_factory=KognicConfig)
    annolab: AnnoLabConfig = field(default_factory=AnnoLabConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


@dataclass(frozen=True, kw_only=True)
class KognicCredentials:
    """OAuth2 client credentials for Kognic."""

    client_id: str
    client_secret: Secret


_SECTIONS: dict[str, type[Any]] = {
    "kognic": KognicConfig,
    "annolab": AnnoLabConfig,
    "engine": EngineConfig,
    "storage": StorageConfig,
}
_RETRY_KEYS = {f.name for f in dataclasses.fields(RetryPolicy)}


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build a :class:`Config` from a TOML file, then the environment, then ``overrides``.

    Args:
        path: a TOML file; ``None`` for defaults only.
        env: the environment to read ``ANNOPULL_<SECTION>_<KEY>`` from (``os.environ``).
        overrides: ``{section: {key: value}}`` with the highest precedence (CLI flags);
            ``None`` values are ignored.

    Raises:
        ConfigError: unreadable file, unknown key, or a value of the wrong type.
    """
    layers: list[tuple[str, Mapping[str, Mapping[str, Any]]]] = []
    if path is not None:
        layers.append((str(path), _read_toml(path)))
    layers.append(("environment", _from_env(os.environ if env is None else env)))
    if overrides:
        layers.append(("options", overrides))
    merged: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for origin, layer in layers:
        for section, values in layer.items():
            if section not in _SECTIONS:
                raise ConfigError(f"unknown section [{section}] in {origin}")
            if not isinstance(values, Mapping):
                raise ConfigError(
                    f"{section} in {origin} must be a [{section}] table of settings, got {values!r}"
                )
            for key, value in values.items():
                if value is not None:
                    merged[section][key] = (origin, value)
    return Config(**{name: _build(name, values) for name, values in merged.items()})


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only a run with --config reads TOML; every run imports this module

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (TOML must be)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section in _SECTIONS and key:
            found.setdefault(section, {})[key] = value
    return found


def _build(section: str, values: Mapping[str, tuple[str, Any]]) -> Any:
    cls = _SECTIONS[section]
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    retry: dict[str, Any] = {}
    for key, (origin, raw) in values.items():
        if section == "engine" and key in _RETRY_KEYS:
            retry[key] = _coerce(_RETRY_FIELDS[key], raw, f"[engine] {key} in {origin}")
        elif key in known and key != "retry":
            kwargs[key] = _coerce(known[key], raw, f"[{section}] {key} in {origin}")
        else:
            raise ConfigError(f"unknown setting [{section}] {key} in {origin}")
    if retry:
        kwargs["retry"] = RetryPolicy(**retry)
    return _validated(cls(**kwargs))


_RETRY_FIELDS = {f.name: f for f in dataclasses.fields(RetryPolicy)}


def _coerce(spec: dataclasses.Field[Any], raw: Any, where: str) -> Any:
    kind = str(spec.type)
    try:
        if kind.startswith("Path"):
            return Path(os.path.expanduser(str(raw)))
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if kind == "str":
            if not isinstance(raw, str):
                raise ValueError(raw)
            return raw
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind}, got {raw!r}") from None
    raise AssertionError(f"unhandled setting type {kind}")  # pragma: no cover


#: Settings where 0 passes "not negative" but breaks things: a 0 s read timeout turns
#: stall detection off, a 0 s poll interval polls hundreds of times a second.
_MORE_THAN_ZERO = frozenset(
    {
        "connect_timeout",
        "read_timeout",
        "poll_interval",
        "poll_max_interval",
        "poll_timeout",
        "spool_memory",
    }
)
#: What ``[engine] progress`` (and ``--progress``) accept.
PROGRESS_MODES = ("auto", "bar", "json", "none")
_STYLES = frozenset({"", "auto", "path", "virtual"})
#: The most downloads in flight a run may ask for; more only queue in the kernel.
MAX_CONCURRENCY = 1024


def _validated(section: Any) -> Any:
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{spec.name} must be a finite number, got {value}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{spec.name} must not be negative, got {value}")
        if spec.name in _MORE_THAN_ZERO and not value > 0:
            raise ConfigError(f"{spec.name} must be more than 0, got {value}")
        # An empty endpoint_url means "the AWS chain's"; every other URL must be set.
        optional = isinstance(section, StorageConfig) and value == ""
        if (
            spec.name.endswith("_url")
            and not optional
            and not str(value).startswith(("http://", "https://"))
        ):
            raise ConfigError(f"{spec.name} must be an http(s) URL, got {value!r}")
    if isinstance(section, StorageConfig) and section.addressing_style not in _STYLES:
        raise ConfigError(
            f"addressing_style must be path, virtual or empty, got {section.addressing_style!r}"
        )
    if isinstance(section, AnnoLabConfig) and section.poll_backoff < 1:
        raise ConfigError(f"poll_backoff must be at least 1, got {section.poll_backoff}")
    if isinstance(section, EngineConfig):
        _validated(section.retry)
        if not 1 <= section.concurrency <= MAX_CONCURRENCY:
            raise ConfigError(
                f"concurrency must be 1..{MAX_CONCURRENCY}, got {section.concurrency}"
            )
        if section.retry.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if section.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1, got {section.max_concurrency}")
        if section.max_answer_bytes < 1024:
            raise ConfigError(
                f"max_answer_bytes must be at least 1024, got {section.max_answer_bytes}"
            )
        if section.retry.retry_budget < 0 or section.retry.retry_budget_floor < 0:
            raise ConfigError("retry_budget and retry_budget_floor must not be negative")
        if not section.retry.host_wait_max > 0:
            raise ConfigError(
                f"host_wait_max must be more than 0, got {section.retry.host_wait_max}"
            )
        if not 0 <= section.compress_level <= 9:
            raise ConfigError(f"compress_level must be 0..9, got {section.compress_level}")
        if section.chunk_size < 1024:
            raise ConfigError(f"chunk_size must be at least 1024, got {section.chunk_size}")
        if section.progress not in PROGRESS_MODES:
            raise ConfigError(
                f"progress must be one of {', '.join(PROGRESS_MODES)}, got {section.progress!r}"
            )
    return section


def load_kognic_credentials(
    config: KognicConfig, *, env: Mapping[str, str] | None = None
) -> KognicCredentials:
    """Find Kognic client credentials the way the official client does.

    ``KOGNIC_CREDENTIALS`` (or ``[kognic] credentials``) names a JSON file with ``clientId``
    and ``clientSecret`` (and an optional ``expires``); else ``KOGNIC_CLIENT_ID`` and
    ``KOGNIC_CLIENT_SECRET``.

    Raises:
        ConfigError: no credentials, an unreadable or incomplete file, or expired ones.
    """
    env = os.environ if env is None else env
    path = env.get("KOGNIC_CREDENTIALS") or (str(config.credentials) if config.credentials else "")
    if path:
        return _credentials_from_file(Path(path).expanduser())
    client_id, secret = env.get("KOGNIC_CLIENT_ID"), env.get("KOGNIC_CLIENT_SECRET")
    if client_id and secret:
        return KognicCredentials(client_id=client_id, client_secret=Secret(secret))
    raise ConfigError(
        "no Kognic credentials: set KOGNIC_CREDENTIALS to a credentials JSON file, "
        "or KOGNIC_CLIENT_ID and KOGNIC_CLIENT_SECRET"
    )


def _credentials_from_file(path: Path) -> KognicCredentials:
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read Kognic credentials file {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise ConfigError(f"Kognic credentials file {path} is not valid JSON") from None
    if not isinstance(data, dict) or not data.get("clientId") or not data.get("clientSecret"):
        raise ConfigError(f"Kognic credentials file {path} lacks clientId or clientSecret")
    if _expired(data.get("expires")):
        raise ConfigError(f"Kognic credentials in {path} have expired; create new ones")
    return KognicCredentials(
        client_id=str(data["clientId"]), client_secret=Secret(str(data["clientSecret"]))
    )


def _expired(expires: object) -> bool:
    if isinstance(expires, str):
        try:
            moment = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError:
            return False
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp() < time.time()
    return isinstance(expires, int | float) and expires < time.time()


def load_annolab_key(*, env: Mapping[str, str] | None = None) -> Secret:
    """Read the AnnoLab API key from ``ANNOLAB_API_KEY``.

    Raises:
        ConfigError: the variable is not set.
    """
    env = os.environ if env is None else env
    key = env.get("ANNOLAB_API_KEY")
    if not key:
        raise ConfigError("no AnnoLab API key: set ANNOLAB_API_KEY")
    return Secret(key)

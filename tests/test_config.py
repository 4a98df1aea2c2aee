"""Settings: file < environment < flags, strict keys and types, credentials that never show."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from annopull._client import Client
from annopull._config import (
    Config,
    EngineConfig,
    KognicConfig,
    RetryPolicy,
    Secret,
    load_annolab_key,
    load_config,
    load_kognic_credentials,
)
from annopull._errors import AnnopullError, ConfigError

SECRET = "sup3r-s3cret-value"


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "annopull.toml"
    path.write_text(text)
    return path


def test_defaults_without_anything() -> None:
    """No file, no environment, no flags: the documented defaults."""
    config = load_config(env={})
    assert config == Config()
    assert config.kognic.api_url == "https://input.app.kognic.com"
    assert config.kognic.auth_url == "https://auth.app.kognic.com"
    assert config.engine.retry == RetryPolicy()


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    """A key set in all three layers takes the flag's value; env beats the file."""
    path = _toml(
        tmp_path,
        """
[kognic]
api_url = "http://file.invalid"
auth_url = "http://file-auth.invalid"

[engine]
concurrency = 3
read_timeout = 7.5
max_attempts = 2
rate_limit = 1
""",
    )
    env = {
        "ANNOPULL_ENGINE_CONCURRENCY": "5",
        "ANNOPULL_ENGINE_MAX_ATTEMPTS": "9",
        "ANNOPULL_KOGNIC_API_URL": "http://env.invalid",
        "UNRELATED": "x",
    }
    config = load_config(
        path, env=env, overrides={"engine": {"concurrency": 11, "read_timeout": None}}
    )
    assert config.engine.concurrency == 11  # flag > env > file
    assert config.engine.retry.max_attempts == 9  # env > file
    assert config.engine.read_timeout == 7.5  # file; a None flag does not override
    assert config.engine.rate_limit == 1.0
    assert isinstance(config.engine.rate_limit, float)
    assert config.kognic.api_url == "http://env.invalid"
    assert config.kognic.auth_url == "http://file-auth.invalid"
    # Retry keys not set anywhere keep their defaults next to the ones that were.
    assert config.engine.retry.backoff_max == RetryPolicy().backoff_max


def test_config_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    """A config file in another encoding is a ConfigError saying so, not a traceback."""
    path = tmp_path / "latin1.toml"
    path.write_bytes("[kognic]\napi_url = 'https://k\u00e4.example'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        pytest.param(
            "[engine]\nconcurency = 3\n", {}, "unknown setting [engine] concurency", id="typo"
        ),
        pytest.param(
            "[kognik]\napi_url = 'http://x'\n", {}, "unknown section [kognik]", id="section"
        ),
        pytest.param(
            "", {"ANNOPULL_ENGINE_SPEED": "1"}, "unknown setting [engine] speed", id="env-key"
        ),
        pytest.param(
            "[engine]\nconcurrency = 'many'\n", {}, "expected int, got 'many'", id="str-for-int"
        ),
        pytest.param(
            "[engine]\nconcurrency = 2.5\n", {}, "expected int, got 2.5", id="float-for-int"
        ),
        pytest.param(
            "[engine]\nconcurrency = true\n", {}, "expected int, got True", id="bool-for-int"
        ),
        pytest.param("[engine]\nread_timeout = false\n", {}, "expected float", id="bool-for-float"),
        pytest.param("[kognic]\napi_url = 3\n", {}, "expected str, got 3", id="int-for-str"),
        pytest.param("", {"ANNOPULL_ENGINE_READ_TIMEOUT": "soon"}, "expected float", id="env-type"),
        pytest.param("[engine]\nconcurrency = 0\n", {}, "concurrency must be 1..1024", id="zero"),
        pytest.param(
            "[engine]\nconcurrency = 100000\n", {}, "concurrency must be 1..1024", id="too-many"
        ),
        pytest.param("[engine]\nread_timeout = 0\n", {}, "more than 0", id="no-stall-check"),
        pytest.param("[annolab]\npoll_interval = 0\n", {}, "more than 0", id="poll-zero"),
        pytest.param("[annolab]\npoll_backoff = 0.5\n", {}, "at least 1", id="shrinking-poll"),
        pytest.param("[engine]\nconnect_timeout = nan\n", {}, "finite", id="nan"),
        pytest.param("[engine]\nbackoff_max = inf\n", {}, "finite", id="inf-in-retry"),
        pytest.param("", {"ANNOPULL_ENGINE_READ_TIMEOUT": "nan"}, "finite", id="env-nan"),
        pytest.param("engine = 5\n", {}, "must be a [engine] table", id="section-not-table"),
        pytest.param("[engine]\nread_timeout = -1\n", {}, "must not be negative", id="negative"),
        pytest.param(
            "[engine]\nmax_attempts = 0\n", {}, "max_attempts must be at least 1", id="attempts"
        ),
        pytest.param("[kognic]\napi_url = 'ftp://x'\n", {}, "must be an http(s) URL", id="scheme"),
        pytest.param(
            "[engine]\ncompress_level = 10\n", {}, "compress_level must be 0..9", id="level"
        ),
        pytest.param("[engine\n", {}, "cannot read config file", id="bad-toml"),
        pytest.param(
            "[engine]\nretry = 3\n", {}, "unknown setting [engine] retry", id="retry-table"
        ),
    ],
)
def test_bad_settings_are_config_errors(
    tmp_path: Path, text: str, env: dict[str, str], words: str
) -> None:
    """Unknown keys, wrong types and out-of-range values raise ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        load_config(_toml(tmp_path, text), env=env)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AnnopullError)


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_bad_flag_override_is_config_error() -> None:
    """Overrides (the CLI's flags) are checked like the other layers."""
    with pytest.raises(ConfigError, match=r"\[engine\] concurrency in options"):
        load_config(env={}, overrides={"engine": {"concurrency": "lots"}})


def test_settings_are_frozen() -> None:
    """Config sections are frozen dataclasses: no one mutates a shared config."""
    config = Config()
    with pytest.raises(AttributeError):
        config.engine.concurrency = 5  # type: ignore[misc]


# -- credentials ---------------------------------------------------------------------------


def _creds_file(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "credentials.json"
    data = {"clientId": "cid", "clientSecret": SECRET, "email": "e@x", "userId": "1", **fields}
    path.write_text(json.dumps(data))
    return path


def test_credentials_from_id_and_secret() -> None:
    """KOGNIC_CLIENT_ID and KOGNIC_CLIENT_SECRET give credentials whose repr hides the secret."""
    creds = load_kognic_credentials(
        KognicConfig(), env={"KOGNIC_CLIENT_ID": "cid", "KOGNIC_CLIENT_SECRET": SECRET}
    )
    assert creds.client_id == "cid"
    assert creds.client_secret.reveal() == SECRET
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds.client_secret)


def test_credentials_file_beats_id_and_secret(tmp_path: Path) -> None:
    """KOGNIC_CREDENTIALS is used first, as the official client does."""
    path = _creds_file(tmp_path, expires=time.time() + 3600)
    env = {
        "KOGNIC_CREDENTIALS": str(path),
        "KOGNIC_CLIENT_ID": "other",
        "KOGNIC_CLIENT_SECRET": "x",
    }
    creds = load_kognic_credentials(KognicConfig(), env=env)
    assert (creds.client_id, creds.client_secret) == ("cid", Secret(SECRET))


def test_credentials_file_from_config(tmp_path: Path) -> None:
    """[kognic] credentials names the file when the environment does not."""
    path = _creds_file(tmp_path)
    config = load_config(_toml(tmp_path, f"[kognic]\ncredentials = '{path}'\n"), env={})
    assert load_kognic_credentials(config.kognic, env={}).client_id == "cid"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(None, "cannot read Kognic credentials file", id="missing"),
        pytest.param("{oops", "is not valid JSON", id="not-json"),
        pytest.param(
            json.dumps({"clientId": "cid"}), "lacks clientId or clientSecret", id="no-secret"
        ),
        pytest.param(
            json.dumps(
                {"clientId": "cid", "clientSecret": SECRET, "expires": "2001-01-01T00:00:00Z"}
            ),
            "have expired",
            id="expired-iso",
        ),
        pytest.param(
            json.dumps({"clientId": "cid", "clientSecret": SECRET, "expires": 1_000_000}),
            "have expired",
            id="expired-epoch",
        ),
    ],
)
def test_bad_credentials_file(tmp_path: Path, content: str | None, words: str) -> None:
    """An unusable credentials file is a ConfigError that never quotes the secret."""
    path = tmp_path / "creds.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_kognic_credentials(KognicConfig(), env={"KOGNIC_CREDENTIALS": str(path)})
    assert words in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"KOGNIC_CLIENT_ID": "cid"}, id="id-only"),
        pytest.param({"KOGNIC_CLIENT_SECRET": SECRET}, id="secret-only"),
        pytest.param({"KOGNIC_CLIENT_ID": "", "KOGNIC_CLIENT_SECRET": ""}, id="empty"),
    ],
)
def test_missing_credentials(env: dict[str, str]) -> None:
    """Without a full pair or a file, the error says what to set."""
    with pytest.raises(ConfigError, match="KOGNIC_CLIENT_ID and KOGNIC_CLIENT_SECRET") as info:
        load_kognic_credentials(KognicConfig(), env=env)
    assert SECRET not in str(info.value)


def test_annolab_key_is_secret() -> None:
    """ANNOLAB_API_KEY is read into a Secret; missing, it is a ConfigError."""
    key = load_annolab_key(env={"ANNOLAB_API_KEY": SECRET})
    assert key.reveal() == SECRET
    assert SECRET not in f"{key!r} {key}"
    with pytest.raises(ConfigError, match="ANNOLAB_API_KEY"):
        load_annolab_key(env={})


def test_client_from_config_reads_file_env_and_overrides(tmp_path: Path) -> None:
    """Client.from_config applies the same precedence and keeps credentials out of its repr."""
    path = _toml(tmp_path, "[engine]\nconcurrency = 2\nrate_limit = 4\n")
    env = {
        "ANNOPULL_ENGINE_CONCURRENCY": "3",
        "KOGNIC_CLIENT_ID": "cid",
        "KOGNIC_CLIENT_SECRET": SECRET,
    }
    client = Client.from_config(path, env=env, overrides={"engine": {"rate_limit": 9}})
    assert client.config.engine == EngineConfig(concurrency=3, rate_limit=9.0)
    assert SECRET not in repr(client)
    assert SECRET not in repr(client.kognic)
    assert SECRET not in repr(client.config)

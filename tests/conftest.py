from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- Kognic helpers (tests/test_kognic.py, test_transport.py, test_cli_kognic.py) ---------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop every ANNOPULL_/KOGNIC_/ANNOLAB_ variable of the developer's shell."""
    import os

    for name in list(os.environ):
        if name.startswith(("ANNOPULL_", "ANNOLAB_", "KOGNIC_")):
            monkeypatch.delenv(name)


@pytest.fixture
def kognic_client() -> Any:
    """A factory of :class:`annopull.Client` pointed at a started ``FakeKognic``, fast retries."""
    from annopull._client import Client
    from annopull._config import Config, EngineConfig, KognicConfig, RetryPolicy

    def make(
        fake: Any,
        *,
        max_attempts: int = 4,
        read_timeout: float = 5.0,
        concurrency: int = 8,
        max_concurrency: int | None = None,
        rate_limit: float = 0.0,
        secret: str | None = None,
    ) -> Client:
        config = Config(
            kognic=KognicConfig(
                api_url=fake.api_url,
                auth_url=fake.auth_url,
                annotation_integration_url=fake.annotation_integration_url,
            ),
            engine=EngineConfig(
                retry=RetryPolicy(max_attempts=max_attempts, backoff_base=0.01, backoff_max=0.05),
                read_timeout=read_timeout,
                concurrency=concurrency,
                # The limit grows from concurrency up to this; fixed when they are equal.
                max_concurrency=max_concurrency or EngineConfig().max_concurrency,
                rate_limit=rate_limit,
            ),
        )
        env = {
            "KOGNIC_CLIENT_ID": fake.client_id,
            "KOGNIC_CLIENT_SECRET": fake.client_secret if secret is None else secret,
        }
        return Client(config=config, env=env)

    return make

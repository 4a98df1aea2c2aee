"""The entry point of the library: one :class:`Client` holds the transport and both sources."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annopull._config import Config, load_annolab_key, load_config, load_kognic_credentials
from annopull._transport.auth import ApiKeyAuth, KognicTokenManager
from annopull._transport.http import Transport

if TYPE_CHECKING:
    # Each source is imported when it is first used: a Kognic pull never loads the AnnoLab
    # source and the S3 client under it (about half a second of imports), nor the other way.
    from annopull._sources.annolab import AnnoLabSource
    from annopull._sources.kognic import KognicSource

__all__ = ["Client"]


class Client:
    """Pulls annotation exports; use as ``async with Client(...) as client``.

    Credentials are read when a source is first used, so a Kognic-only job needs no
    AnnoLab key and the other way round.

    Args:
        config: settings; defaults when omitted.
        env: where credentials (``KOGNIC_*``, ``ANNOLAB_API_KEY``) are read from;
            ``os.environ`` when omitted.
    """

    def __init__(self, *, config: Config | None = None, env: Mapping[str, str] | None = None):
        self.config = config or Config()
        self._env = dict(os.environ if env is None else env)
        self._transport = Transport(engine=self.config.engine)
        self._kognic: KognicSource | None = None
        self._annolab: AnnoLabSource | None = None

    @classmethod
    def from_config(
        cls,
        path: Path | str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Client:
        """Make a client from a TOML file, the environment and ``overrides`` (in that order).

        Args:
            path: the config file, or ``None`` for defaults.
            env: the environment for ``ANNOPULL_*`` settings and credentials.
            overrides: ``{section: {key: value}}`` applied last.
        """
        config = load_config(Path(path) if path is not None else None, env=env, overrides=overrides)
        return cls(config=config, env=env)

    def __repr__(self) -> str:
        kognic, annolab = self.config.kognic.api_url, self.config.annolab.api_url
        return f"Client(kognic={kognic!r}, annolab={annolab!r})"

    async def __aenter__(self) -> Client:
        await self._transport.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._transport.aclose()

    @property
    def transport(self) -> Transport:
        """The HTTP transport every request of this client goes through."""
        return self._transport

    @property
    def kognic(self) -> KognicSource:
        """The Kognic source (credentials are loaded on first use).

        Raises:
            ConfigError: no usable Kognic credentials.
        """
        if self._kognic is None:
            from annopull._sources.kognic import KognicSource

            credentials = load_kognic_credentials(self.config.kognic, env=self._env)
            tokens = KognicTokenManager(
                transport=self._transport,
                auth_url=self.config.kognic.auth_url,
                credentials=credentials,
            )
            self._kognic = KognicSource(
                transport=self._transport, config=self.config.kognic, auth=tokens
            )
        return self._kognic

    @property
    def annolab(self) -> AnnoLabSource:
        """The AnnoLab source (the API key is read on first use).

        Raises:
            ConfigError: ``ANNOLAB_API_KEY`` is not set.
        """
        if self._annolab is None:
            from annopull._sources.annolab import AnnoLabSource

            auth = ApiKeyAuth(load_annolab_key(env=self._env))
            self._annolab = AnnoLabSource(
                transport=self._transport, config=self.config.annolab, auth=auth
            )
        return self._annolab

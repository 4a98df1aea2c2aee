"""Both fake platforms together, on the caller's event loop or on a thread of their own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Self, TypeVar

from annopull.testing.annolab import FakeAnnoLab
from annopull.testing.kognic import FakeKognic

__all__ = ["FakePlatforms", "run_in_thread"]


class FakePlatforms:
    """Starts and stops a :class:`FakeKognic` and a :class:`FakeAnnoLab` together.

    Args:
        kognic: The fake Kognic to run (a default one if None).
        annolab: The fake AnnoLab to run (a default one if None).
    """

    def __init__(
        self, *, kognic: FakeKognic | None = None, annolab: FakeAnnoLab | None = None
    ) -> None:
        self.kognic = kognic if kognic is not None else FakeKognic()
        self.annolab = annolab if annolab is not None else FakeAnnoLab()

    async def start(self) -> None:
        """Start both fakes; if the second fails, stop the first."""
        await self.kognic.start()
        try:
            await self.annolab.start()
        except BaseException:
            await self.kognic.close()
            raise

    async def close(self) -> None:
        """Stop both fakes."""
        try:
            await self.annolab.close()
        finally:
            await self.kognic.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def describe(self) -> dict[str, dict[str, str]]:
        """Where the fakes listen and what to ask them for (the ``fake serve`` line)."""
        kognic = self.kognic
        first = kognic.projects[0]
        annolab = self.annolab.projects[0]
        return {
            "kognic": {
                "api_url": kognic.api_url,
                "auth_url": kognic.auth_url,
                "storage_url": kognic.storage_url,
                "annotation_integration_url": kognic.annotation_integration_url,
                "client_id": kognic.client_id,
                "client_secret": kognic.client_secret,
                "project": first.project,
                "batch": first.batches[0],
                "annotation_type": first.annotation_types[0],
            },
            "annolab": {
                "api_url": self.annolab.api_url,
                "api_key": self.annolab.api_key,
                "owner": annolab.owner,
                "project": annolab.name,
            },
        }


_Served = TypeVar("_Served", bound=AbstractAsyncContextManager[Any])


@contextlib.contextmanager
def run_in_thread(platforms: _Served, *, timeout: float = 30.0) -> Iterator[_Served]:
    """Serve ``platforms`` (or any fake server) on a background thread's own event loop.

    For synchronous tests, e.g. ones that run the CLI as a subprocess. The block
    starts once the servers listen, and exiting it stops them and joins the thread.

    Args:
        platforms: The fakes to run (not yet started).
        timeout: Seconds to wait for them to start.
    """
    ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]]
    ready = concurrent.futures.Future()

    async def serve() -> None:
        stop = asyncio.Event()
        try:
            async with platforms:
                ready.set_result((asyncio.get_running_loop(), stop))
                await stop.wait()
        except BaseException as exc:
            # A failure to start must reach the caller, not die with the thread.
            if not ready.done():
                ready.set_exception(exc)
                return
            raise

    thread = threading.Thread(
        target=asyncio.run, args=(serve(),), name="annopull-fake-platforms", daemon=True
    )
    thread.start()
    try:
        loop, stop = ready.result(timeout=timeout)
    except BaseException:
        thread.join(timeout)
        raise
    try:
        yield platforms
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()

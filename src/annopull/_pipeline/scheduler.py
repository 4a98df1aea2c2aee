"""Bounded fan-out: many fetches at once, results handed to one writer, memory bounded.

::

    items ──> [producer] ──(buffer: concurrency)──> N × [fetch] ──(buffer)──> [consume]

The producer pulls from the item source (e.g. listing pages) only as fast as the workers
take items, so the next page is fetched while the current page's contents download, and
no more than ``concurrency`` items wait, whatever the size of the job. Workers are started
as items arrive, never more than there are items: a huge ``concurrency`` on a short job
costs nothing. Results go to a
single consumer (sinks write one entry at a time). Every task belongs to one task group:
an error in any of them, or a cancellation, stops them all and the results still queued
are discarded through ``discard``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Fetched", "fan_out", "sole_error"]

T = TypeVar("T")
R = TypeVar("R")


class Fetched(Generic[T, R]):
    """An item with what fetching it produced."""

    __slots__ = ("item", "result")

    def __init__(self, item: T, result: R) -> None:
        self.item = item
        self.result = result


async def fan_out(
    items: AsyncIterable[T],
    fetch: Callable[[T], Awaitable[R | None]],
    consume: Callable[[list[Fetched[T, R]]], Awaitable[None]],
    *,
    concurrency: int,
    discard: Callable[[R], Awaitable[None]] | None = None,
    batch: int = 64,
) -> None:
    """Fetch ``items`` ``concurrency`` at a time and pass the results to ``consume``.

    Args:
        items: the work, produced lazily (it is not read ahead more than ``concurrency``).
        fetch: fetches one item; returns ``None`` to drop it (e.g. a failure it recorded).
            Any exception it raises stops the whole fan-out.
        consume: handles the results, in completion order, a list at a time: whatever has
            arrived while it was busy, up to ``batch``, so that a consumer with a per-call
            cost (a worker-thread hop) pays it once for many small results. It releases
            the results it was given, even when it fails.
        concurrency: fetches in flight at once.
        discard: releases a result that will never be consumed (on error or cancel).
        batch: the most results handed to ``consume`` at once.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    todo_send, todo_recv = anyio.create_memory_object_stream[T](concurrency)
    done_send, done_recv = anyio.create_memory_object_stream[Fetched[T, R]](concurrency)

    async def produce(tg: TaskGroup) -> None:
        started = 0
        # The producer owns the originals: workers get clones, and the streams end when the
        # producer and every worker have closed theirs.
        async with todo_send, todo_recv, done_send:
            async for item in items:
                # Start a worker only when every started one is busy.
                if started < concurrency and todo_send.statistics().tasks_waiting_receive == 0:
                    tg.start_soon(_work, fetch, todo_recv.clone(), done_send.clone())
                    started += 1
                await _send(todo_send, item)

    try:
        with sole_error():
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce, tg)
                while (fetched := await _receive(done_recv)) is not None:
                    await consume(_take_ready(done_recv, [fetched], batch))
    finally:
        if discard is not None:
            await _drain(done_recv, discard)
        done_recv.close()


def _take_ready(
    stream: MemoryObjectReceiveStream[Fetched[T, R]], taken: list[Fetched[T, R]], limit: int
) -> list[Fetched[T, R]]:
    """Add to ``taken`` what ``stream`` holds right now, without waiting, up to ``limit``."""
    while len(taken) < limit:
        try:
            taken.append(stream.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return taken


@contextmanager
def sole_error() -> Iterator[None]:
    """Raise the one error inside a task group's exception group as itself.

    anyio wraps even a single failure in a ``BaseExceptionGroup``; callers (and the CLI)
    catch :class:`~annopull._errors.AnnopullError`, so a group holding exactly one error is
    unwrapped. Several distinct errors stay grouped.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        # Tasks failing alike before the first failure has cancelled them (every fetch
        # hitting the same given-up host, say) are one error, not many.
        if len({type(leaf) for leaf in leaves}) != 1:
            raise
        raise leaves[0] from leaves[0].__cause__


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def _work(
    fetch: Callable[[T], Awaitable[R | None]],
    todo: MemoryObjectReceiveStream[T],
    done: MemoryObjectSendStream[Fetched[T, R]],
) -> None:
    async with todo, done:
        while (item := await _receive(todo)) is not None:
            result = await fetch(item)
            if result is not None:
                await _send(done, Fetched(item, result))


# The streams' own send() and receive() pass through the event loop once each even when
# they need not wait: four loop turns per item. Every fetch awaits the network anyway, so
# waiting only when the buffer says so costs no responsiveness to cancellation.
async def _send(stream: MemoryObjectSendStream[T], value: T) -> None:
    try:
        stream.send_nowait(value)
    except anyio.WouldBlock:
        await stream.send(value)


async def _receive(stream: MemoryObjectReceiveStream[T]) -> T | None:
    """The next value, or ``None`` at the end of the stream.

    Raises:
        the cancellation, when the stream ended because its senders were cancelled: a
        cancel that landed while the receiver was shielded (a sink writing in a worker
        thread) ends the streams too, and is a stop, not the end of the items.
    """
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        try:
            return await stream.receive()
        except anyio.EndOfStream:
            return None
    except anyio.EndOfStream:
        await anyio.lowlevel.checkpoint_if_cancelled()
        return None


async def _drain(
    stream: MemoryObjectReceiveStream[Fetched[T, R]], discard: Callable[[R], Awaitable[None]]
) -> None:
    """Release results left in a closed stream's buffer (memory or temp files)."""
    with anyio.CancelScope(shield=True):
        while True:
            try:
                fetched = stream.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            await discard(fetched.result)

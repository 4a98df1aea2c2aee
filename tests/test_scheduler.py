"""The bounded fan-out and the unwrapping of a task group's single error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from annopull._errors import NetworkError
from annopull._pipeline.scheduler import Fetched, fan_out, sole_error

pytestmark = pytest.mark.anyio


def _collect(into: list[int]) -> Callable[[int], Any]:
    async def discard(result: int) -> None:
        into.append(result)

    return discard


async def _numbers(count: int) -> AsyncIterator[int]:
    for i in range(count):
        yield i


# -- fan_out -------------------------------------------------------------------------------


async def test_fan_out_bounds_concurrency_and_read_ahead() -> None:
    """No more than `concurrency` fetches run at once and the source is not read far ahead."""
    produced = 0
    in_flight = peak = 0
    consumed: list[int] = []

    async def items() -> Any:
        nonlocal produced
        for i in range(50):
            produced += 1
            yield i

    async def fetch(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.002)
        in_flight -= 1
        return i * 2

    async def consume(batch: list[Fetched[int, int]]) -> None:
        # Read-ahead: produced items never exceed consumed + the two buffers + workers.
        assert produced <= len(consumed) + 4 * 3 + 1
        consumed.extend(done.result for done in batch)

    await fan_out(items(), fetch, consume, concurrency=4)
    assert peak == 4
    assert sorted(consumed) == [i * 2 for i in range(50)]


async def test_fan_out_error_stops_all_and_discards() -> None:
    """A fetch raising stops the fan-out with that very error; queued results are discarded."""
    discarded: list[int] = []
    consumed: list[int] = []

    async def items() -> Any:
        for i in range(100):
            yield i

    async def fetch(i: int) -> int | None:
        if i == 20:
            raise KeyError("boom")
        if i % 2:
            return None  # dropped: never consumed, never discarded
        return i

    async def consume(batch: list[Fetched[int, int]]) -> None:
        consumed.extend(done.result for done in batch)
        await anyio.sleep(0.01)

    with pytest.raises(KeyError, match="boom"):
        await fan_out(items(), fetch, consume, concurrency=3, discard=_collect(discarded))
    assert not set(consumed) & set(discarded)
    assert all(i % 2 == 0 for i in consumed + discarded)
    assert len(consumed) < 50


async def test_fan_out_cancelled_while_consuming_never_returns_as_finished() -> None:
    """A cancel that lands while the consumer is shielded stops the fan-out as cancelled.

    The workers stop and end their streams; the consumer must not take that end for the end
    of the items, or a stopped pull would publish its partial output as complete.
    """
    consumed: list[int] = []
    finished = False

    async def fetch(i: int) -> int:
        await anyio.sleep(0.001)
        return i

    with anyio.CancelScope() as scope:

        async def consume(batch: list[Fetched[int, int]]) -> None:
            consumed.extend(done.result for done in batch)
            if len(consumed) >= 20:
                scope.cancel()
                with anyio.CancelScope(shield=True):  # a sink writing in a worker thread
                    await anyio.sleep(0.05)

        await fan_out(_numbers(10_000), fetch, consume, concurrency=4)
        finished = True
    assert scope.cancelled_caught
    assert not finished
    assert 20 <= len(consumed) < 10_000


async def test_fan_out_pairs_each_item_with_its_result_in_batches() -> None:
    """Each result arrives once beside its own item, at most `batch` per consume call."""
    batches: list[list[tuple[int, str]]] = []

    async def fetch(i: int) -> str:
        await anyio.lowlevel.checkpoint()
        return f"r{i}"

    async def consume(batch: list[Fetched[int, str]]) -> None:
        batches.append([(done.item, done.result) for done in batch])
        await anyio.sleep(0.005)  # busy, so results pile up for the next call

    await fan_out(_numbers(40), fetch, consume, concurrency=8, batch=5)
    pairs = [pair for batch in batches for pair in batch]
    assert sorted(pairs) == [(i, f"r{i}") for i in range(40)]
    assert max(len(batch) for batch in batches) == 5


async def test_fan_out_refuses_zero_concurrency() -> None:
    """A concurrency below one is a ValueError naming the value, before any item is read."""
    read: list[int] = []

    async def items() -> AsyncIterator[int]:
        read.append(0)
        yield 0

    async def fetch(i: int) -> int:
        return i

    async def consume(batch: list[Fetched[int, int]]) -> None:
        pass

    with pytest.raises(ValueError, match="concurrency must be at least 1, got 0"):
        await fan_out(items(), fetch, consume, concurrency=0)
    assert read == []


# -- sole_error ----------------------------------------------------------------------------


async def test_sole_error_unwraps_the_one_failure_of_a_task_group() -> None:
    """One failing task surfaces as its own exception, not an ExceptionGroup, cause kept."""
    cause = OSError("refused")

    async def fail() -> None:
        raise NetworkError("giving up: cannot connect", attempts=3) from cause

    with pytest.raises(NetworkError) as info, sole_error():
        async with anyio.create_task_group() as tg:
            tg.start_soon(fail)
    assert info.value.attempts == 3
    assert info.value.__cause__ is cause


def test_sole_error_unwraps_a_single_leaf_of_nested_groups() -> None:
    """A lone error inside groups within groups is raised as itself."""
    inner = KeyError("deep")
    with pytest.raises(KeyError) as info, sole_error():
        raise ExceptionGroup("outer", [ExceptionGroup("inner", [inner])])
    assert info.value is inner


def test_sole_error_keeps_several_errors_grouped() -> None:
    """Two distinct errors stay one group holding both, so neither is lost."""
    first, second = KeyError("a"), ValueError("b")
    with pytest.raises(ExceptionGroup) as info, sole_error():
        raise ExceptionGroup("two", [first, ExceptionGroup("nested", [second])])
    assert info.value.exceptions[0] is first
    assert info.value.exceptions[1].exceptions[0] is second


def test_sole_error_leaves_plain_errors_alone() -> None:
    """An error raised outside any group passes through as the same object."""
    error = RuntimeError("plain")
    with pytest.raises(RuntimeError) as info, sole_error():
        raise error
    assert info.value is error


async def test_workers_start_as_items_arrive_not_up_front() -> None:
    """A huge concurrency on a short job starts no more workers than there are items."""
    import asyncio

    async def items() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    peak_tasks = 0

    async def fetch(item: int) -> int:
        nonlocal peak_tasks
        peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
        await anyio.sleep(0.01)
        return item

    got: list[int] = []

    async def consume(batch: list[Any]) -> None:
        got.extend(f.result for f in batch)

    await fan_out(items(), fetch, consume, concurrency=100_000)
    assert sorted(got) == [0, 1, 2, 3, 4]
    # The test's own task, the producer and at most one worker per item.
    assert peak_tasks <= 2 + 5 + 1


def test_sole_error_unwraps_several_errors_of_one_kind_to_the_first() -> None:
    """Tasks failing alike before the cancel reaches them surface as one error, the first."""
    first, second = NetworkError("a"), NetworkError("b")
    with pytest.raises(NetworkError) as raised, sole_error():
        raise BaseExceptionGroup("two", [first, BaseExceptionGroup("inner", [second])])
    assert raised.value is first

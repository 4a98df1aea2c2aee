"""A pool of workers for CPU-heavy work on items, off the event loop: processes or threads.

::

    fetch tasks ── pool.run(function, job) ──(at most 2 × workers in flight)──> workers
         ▲                                                                        │
         └─────────────────────────────── result ◄────────────────────────────────┘

Each fetch task awaits the work on its own item, so the other fetch tasks go on downloading
meanwhile; the bound on what is in flight keeps a worker from holding more than a couple
of documents (one it works on, one queued so it never waits between two). Processes are
the default, for functions that hold the GIL (a conversion in pure Python); threads suit
cheap functions and those that release it.

Processes start with ``forkserver`` (``spawn`` where there is none), never ``fork``: the
event loop's process has threads (the resolver, file I/O), and a fork copies their locks
in whatever state they are in. A worker process that dies (killed, out of memory, a crash
in native code) fails the items that were in the pool with it, and the pool is started
again; when that happens :data:`MAX_RESTARTS` times in a row with nothing done between,
:class:`~annopull._errors.WorkerPoolError` stops the run.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import anyio

from annopull._errors import ConfigError, TransformError, WorkerPoolError

__all__ = [
    "MAX_RESTARTS",
    "MAX_WORKERS",
    "WorkerMode",
    "WorkerPool",
    "default_workers",
    "describe_exception",
    "load_function",
]

A = TypeVar("A")
R = TypeVar("R")

#: ``"process"`` (the default) or ``"thread"``.
WorkerMode = Literal["process", "thread"]
#: More workers than this only add memory and start-up time on any machine annopull runs on.
MAX_WORKERS = 256
#: Times in a row the pool's processes may die before the run stops.
MAX_RESTARTS = 3
#: Jobs in flight per worker process: the one it works on and the next, so it never waits.
_PER_PROCESS = 2


def default_workers() -> int:
    """The CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


class WorkerPool:
    """Runs functions on items in worker processes (or threads), a bounded number at a time.

    Use as ``async with WorkerPool(workers=4) as pool: result = await pool.run(f, arg)``;
    leaving the block stops the workers (at once when it is left by an error or a
    cancellation, after their current job otherwise). In process mode ``function`` and
    ``arg`` are pickled: the function must be importable by name (a module-level function).

    Args:
        workers: processes (or threads) working at once; the CPU count by default.
        mode: ``"process"`` or ``"thread"``.
        preload: modules every worker process imports when it starts (a transform's
            module), so that one failing to import is found before any item is sent.

    Raises:
        ConfigError: ``workers`` or ``mode`` out of range.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        mode: WorkerMode = "process",
        preload: Sequence[str] = (),
    ) -> None:
        count = default_workers() if workers is None else workers
        if not 1 <= count <= MAX_WORKERS:
            raise ConfigError(f"workers must be 1 to {MAX_WORKERS}, got {count}")
        if mode not in ("process", "thread"):
            raise ConfigError(f"workers mode is 'process' or 'thread', got {mode!r}")
        self.workers = count
        self.mode: WorkerMode = mode
        self._preload = tuple(name for name in preload if name != "__main__")
        in_flight = count * _PER_PROCESS if mode == "process" else count
        self._slots = anyio.Semaphore(in_flight)
        # Threads that wait for a process's result: our own, so they never take the tokens
        # of anyio's default limiter, which the sinks' file writes need.
        self._limiter = anyio.CapacityLimiter(in_flight)
        self._executor: ProcessPoolExecutor | None = None
        self._restart_lock = anyio.Lock()
        self._deaths_in_a_row = 0
        self._given_up: WorkerPoolError | None = None

    def __repr__(self) -> str:
        return f"WorkerPool(workers={self.workers}, mode={self.mode!r})"

    async def __aenter__(self) -> Self:
        if self.mode == "process":
            self._executor = await anyio.to_thread.run_sync(self._start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Shielded: a cancelled run must still not leave worker processes behind.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_stop, executor, exc_type is not None)

    async def run(self, function: Callable[[A], R], arg: A) -> R:
        """``function(arg)`` in a worker, once one is free.

        Raises:
            TransformError: the worker process died while it held this job.
            WorkerPoolError: the worker processes keep dying; the pool has given up.
            Exception: what ``function`` raised.
        """
        if self.mode == "thread":
            # Not abandoned on cancel: a cancelled run waits for the calls in flight, so no
            # user code is left running after the pool is gone.
            return await anyio.to_thread.run_sync(function, arg, limiter=self._limiter)
        async with self._slots:
            executor = self._running()
            try:
                future = executor.submit(function, arg)
            except BrokenProcessPool:
                raise await self._died(executor) from None
            try:
                result = await self._result(future)
            except BrokenProcessPool:
                raise await self._died(executor) from None
            finally:
                # Never started when this task was cancelled first; a no-op once it ran.
                future.cancel()
        self._deaths_in_a_row = 0
        return result

    async def _result(self, future: Future[R]) -> R:
        """The future's result, without blocking the event loop."""
        if _on_asyncio():
            import asyncio  # loaded by now: _on_asyncio saw its running loop

            # The executor's own thread wakes the loop: no thread of ours per job, which
            # costs about as much again as the round trip to the process.
            return await asyncio.wrap_future(future)
        return await anyio.to_thread.run_sync(
            future.result, abandon_on_cancel=True, limiter=self._limiter
        )

    def _running(self) -> ProcessPoolExecutor:
        if self._given_up is not None:
            raise self._given_up
        if self._executor is None:
            raise RuntimeError("WorkerPool is not open: use it with async with")
        return self._executor

    async def _died(self, executor: ProcessPoolExecutor) -> TransformError:
        """The error for a job whose process died; the first task to see it restarts the pool."""
        async with self._restart_lock:
            if self._executor is executor:
                self._deaths_in_a_row += 1
                if self._deaths_in_a_row > MAX_RESTARTS:
                    self._given_up = WorkerPoolError(
                        f"the worker processes died {self._deaths_in_a_row} times in a row "
                        "(killed, out of memory, or a crash in native code); stopping"
                    )
                    self._executor = None
                else:
                    self._executor = await anyio.to_thread.run_sync(self._start)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_stop, executor, True)
        if self._given_up is not None:
            return self._given_up
        return TransformError(
            "its worker process died (killed, out of memory, or a crash in native code); "
            "the pool was restarted"
        )

    def _start(self) -> ProcessPoolExecutor:
        """Start every worker process now, and learn here whether they can (blocking)."""
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(list(sys.path), dict(os.environ), self._preload),
        )
        try:
            # Submitted together, before any returns: each starts its own process.
            ready = [executor.submit(_startup_problem) for _ in range(self.workers)]
            problems = {problem for problem in (f.result() for f in ready) if problem}
        except BrokenProcessPool:
            _stop(executor, True)
            raise WorkerPoolError(
                "the worker processes could not start (each imports the main module again: "
                "a script must start the pull under `if __name__ == '__main__':`)"
            ) from None
        if problems:
            _stop(executor, True)
            raise ConfigError(f"the worker processes cannot start: {sorted(problems)[0]}")
        return executor


def _on_asyncio() -> bool:
    # Not imported at the top: the CLI's parser imports this module for MAX_WORKERS, and
    # asyncio is a sizeable part of the start-up of --help. A run has imported it already.
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


#: What went wrong when this worker process started, for :func:`_startup_problem`.
_STARTUP_PROBLEM = ""


def _init_worker(path: list[str], env: dict[str, str], preload: tuple[str, ...]) -> None:
    """Set up one worker process: the parent's import path and environment, no SIGINT.

    The fork server forks workers with the path and environment it had when it started
    (the first pool of the process); a function reads them as they are now. Ctrl-C reaches
    the whole process group; the parent stops the workers itself, and a KeyboardInterrupt
    here would only print a traceback from every worker.
    """
    global _STARTUP_PROBLEM
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(env)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:
            # Kept for the parent to report in one line: an initializer that raises only
            # logs a traceback and breaks the pool.
            _STARTUP_PROBLEM = f"importing {name}: {describe_exception(exc)}"
            return


def _startup_problem() -> str:
    return _STARTUP_PROBLEM


def _stop(executor: ProcessPoolExecutor, abort: bool) -> None:
    """Shut ``executor`` down; on ``abort`` without waiting for the jobs in flight (blocking)."""
    if abort:
        # ProcessPoolExecutor has no public way to stop a job that is running (3.14 adds
        # terminate_workers); a run that stops must not wait for a long conversion.
        processes = getattr(executor, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(OSError, AttributeError):
                process.terminate()
    executor.shutdown(wait=True, cancel_futures=True)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` in one line of at most 300 characters (its first line only)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load_function(spec: str) -> Callable[..., Any]:
    """The function ``MODULE:FUNCTION`` names, imported with the current folder on the path.

    The folder stays on ``sys.path``, so worker processes (which get the parent's path)
    import the module from the same place.

    Raises:
        ConfigError: ``spec`` is malformed, the module cannot be imported (or raised while
            importing), it has no such attribute, or that is not callable.
    """
    module_name, colon, qualname = spec.partition(":")
    if not colon or not module_name or not qualname:
        raise ConfigError(
            f"a function is named MODULE:FUNCTION (e.g. mypkg.convert:to_csv), got {spec!r}"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"cannot import {module_name} for {spec}: {describe_exception(exc)}"
        ) from None
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"{module_name} has no {qualname!r} (for {spec})") from None
    if not callable(found):
        raise ConfigError(f"{spec} is a {type(found).__name__}, not a function")
    function: Callable[..., Any] = found
    return function

"""Helpers shared by the benchmarks: the fakes in their own process, measured child processes.

Standard library only, on purpose: ``run.py`` also runs its baseline children (kognic-io,
requests, parfive) from a separate virtual environment that has no annopull, and they import
this module there.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MiB = 1 << 20


class ChildFailed(RuntimeError):
    """A measured child process exited non-zero (or ran past its timeout)."""


@dataclass(frozen=True, kw_only=True)
class Measured:
    """What one child process cost, as the kernel counted it.

    ``wall`` runs from spawn to exit, so interpreter start-up and imports are in it;
    ``cpu`` is user + system time and ``rss`` the peak resident set (bytes), both from
    the rusage of that process alone (``wait4``, by a launcher: see :func:`measure`).
    """

    wall: float
    cpu: float
    rss: int
    stdout: str

    def json(self) -> dict[str, Any]:
        """The child's last stdout line, parsed (children report one JSON line)."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            raise ChildFailed("the child printed nothing on stdout")
        parsed: dict[str, Any] = json.loads(lines[-1])
        return parsed


# Linux starts a child's peak RSS at its parent's: the pages of the fork (or the vfork) count
# as the child's until it execs, and ``ru_maxrss`` keeps that high-water mark across the exec.
# So a child spawned straight from a benchmark that has imported aiohttp can never show less
# than the benchmark's own ~45 MiB. The measured program is therefore started by a small
# launcher and it is the launcher's child whose rusage we read: GNU time (~1 MiB) if there
# is one, else this few-line Python (~10 MiB, which then is the floor).
GNU_TIME = "/usr/bin/time"
_LAUNCHER = """\
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([usage.ru_utime, usage.ru_stime, usage.ru_maxrss], f)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def _launcher(rusage: Path) -> list[str]:
    if _is_gnu_time(GNU_TIME):
        return [GNU_TIME, "-f", "%U %S %M", "-o", str(rusage)]
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(rusage)]


def _is_gnu_time(path: str) -> bool:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return False
    return "GNU" in done.stdout + done.stderr


def _read_rusage(rusage: Path) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) as the launcher wrote them."""
    text = rusage.read_text().strip()
    if text.startswith("["):
        user, system, max_kib = json.loads(text)
    else:
        # GNU time: "%U %S %M", possibly after a "Command exited with non-zero status" line.
        user, system, max_kib = text.splitlines()[-1].split()
    # Linux reports ru_maxrss in KiB.
    return float(user) + float(system), int(max_kib) * 1024


def measure(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 3600.0,
) -> Measured:
    """Run ``command`` to its end and return its wall time, CPU time and peak RSS.

    stdout and stderr go to temporary files, not pipes, so a chatty child can never block
    on a full pipe while we wait for it.

    Args:
        command: the program and its arguments.
        env: the child's whole environment (``os.environ`` if None).
        cwd: the child's working directory.
        timeout: seconds after which the child is killed and :class:`ChildFailed` raised.
    """
    with (
        tempfile.TemporaryDirectory(prefix="bench-measure-") as scratch,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        rusage = Path(scratch) / "rusage"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*_launcher(rusage), *command],
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            # Its own process group, so that a timeout kills the launcher and the program.
            start_new_session=True,
        )
        watchdog = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        watchdog.start()
        try:
            code = proc.wait()
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - started
        out.seek(0)
        stdout = out.read().decode(errors="replace")
        if code != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-3000:]
            what = "was killed after its timeout" if code == -signal.SIGKILL else f"exit {code}"
            raise ChildFailed(f"{command[0]} ... {what}:\n{tail}")
        cpu, rss = _read_rusage(rusage)
    return Measured(wall=wall, cpu=cpu, rss=rss, stdout=stdout)


@contextmanager
def fake_serve(*options: str) -> Iterator[dict[str, Any]]:
    """``annopull fake serve OPTIONS`` in its own process; yields the JSON line it prints.

    The fakes never share a process (or, with two cores, much of a core) with the code
    measured, so their serving cost does not land on annopull's CPU time.
    """
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "annopull", "fake", "serve", *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=30)
                err.seek(0)
                tail = err.read().decode(errors="replace").strip()[-2000:]
                raise ChildFailed(
                    f"annopull fake serve did not start (exit {proc.poll()}):\n{tail}"
                )
            yield json.loads(line)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values (a tool that did not run)."""
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    """What the numbers were measured on: cores, CPU model, Python, kernel, load, date."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }

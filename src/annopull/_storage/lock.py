"""An exclusive lock on an output while one run writes it.

Two runs writing one output (a script passing ``--resume`` twice, say) would interleave
their bytes and journals; the second one is refused instead, naming the first one's pid.
The lock is an ``flock`` on a small file beside the output: the kernel drops it when the
holder dies, even by SIGKILL, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from annopull._errors import ResumeError

__all__ = ["OutputBusyError", "OutputLock"]


class OutputBusyError(ResumeError):
    """Another run is writing the same output right now."""


class OutputLock:
    """Holds ``path`` locked from :meth:`acquire` to :meth:`release` (blocking calls).

    Args:
        path: the lock file (created when missing; removed on release).
        output: the output it guards, as shown to a person.
    """

    def __init__(self, path: Path, *, output: str) -> None:
        self.path = path
        self._output = output
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or refuse at once when another run holds it.

        Raises:
            OutputBusyError: another process holds it (its pid in the message).
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise OutputBusyError(
                    f"another run (pid {holder or 'unknown'}) is writing {self._output}",
                    item=str(self.path),
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # The holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a name nobody else sees, and must try the new file.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let go (removed first, so nobody locks a dying name)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(fd)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

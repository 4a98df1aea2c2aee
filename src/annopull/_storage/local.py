"""Local storage: a file built as ``<name>.part`` and renamed, and a folder of atomic files.

Durability rules, the same for both: data is flushed and fsynced before anything that claims
it exists (a journal commit, a rename), and a rename is durable only once its folder is
fsynced too.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final

from annopull._errors import ResumeError, UnsafeEntryError
from annopull._storage.durability import fsync_path

__all__ = ["TEMP_NAME", "LocalFile", "LocalTree"]

_FILE_BUFFER: Final = 1 << 16
#: ``.annopull-<16 hex>.tmp``: a file being written. Short whatever the final name, so a
#: name near the file system's 255-byte limit still gets a temporary name.
TEMP_NAME: Final = re.compile(r"\.annopull-[0-9a-f]{16}\.tmp")


class _FileBlob:
    """A local file written front to back, patched in place; blocking."""

    def __init__(self, stream: BinaryIO, position: int) -> None:
        self._stream = stream
        self._position = position

    @property
    def seekable(self) -> bool:
        return True

    @property
    def position(self) -> int:
        return self._position

    def write(self, data: bytes) -> None:
        self._stream.write(data)
        self._position += len(data)

    def patch(self, offset: int, data: bytes) -> None:
        self._stream.seek(offset)
        self._stream.write(data)
        self._stream.seek(self._position)

    def read_at(self, offset: int, size: int) -> bytes:
        self._stream.flush()
        self._stream.seek(offset)
        data = self._stream.read(size)
        self._stream.seek(self._position)
        return data

    def truncate(self, size: int) -> None:
        self._stream.seek(size)
        self._stream.truncate()
        self._position = size

    def sync(self) -> None:
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def mark_boundary(self) -> None:
        """Nothing to do: a file is durable by sync alone."""

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.close()


class LocalFile:
    """A local file output: written as ``<path>.part`` beside ``<path>.journal``, then renamed.

    Args:
        path: the final file.
        partial: where the unfinished file lives instead of ``<path>.part``.
        resumable: whether a journal beside it may make the output resumable.
    """

    def __init__(self, path: Path, *, partial: Path | None = None, resumable: bool = True):
        self.path = Path(path)
        self._part = partial or self.path.with_name(self.path.name + ".part")
        self._resumable = resumable

    def __repr__(self) -> str:
        return f"LocalFile({str(self.path)!r})"

    @property
    def description(self) -> str:
        return str(self.path)

    @property
    def state_path(self) -> Path | None:
        return self.path.with_name(self.path.name + ".journal") if self._resumable else None

    @property
    def partial_path(self) -> Path:
        return self._part

    def has_partial(self) -> bool:
        return self._part.is_file()

    def open(self, *, resume: bool) -> _FileBlob:
        if not resume:
            return _FileBlob(open(self._part, "w+b", buffering=_FILE_BUFFER), 0)
        try:
            stream = open(self._part, "r+b", buffering=_FILE_BUFFER)  # noqa: SIM115 - kept open
        except FileNotFoundError:
            if self._resumable:
                # The journal says an unfinished file is here: making an empty one would hide
                # that it is gone.
                raise ResumeError("the unfinished file is missing", item=str(self._part)) from None
            # A plain download resumes from whatever is there, which may be nothing yet.
            stream = open(self._part, "w+b", buffering=_FILE_BUFFER)  # noqa: SIM115 - kept open
        return _FileBlob(stream, stream.seek(0, io.SEEK_END))

    def publish(self, blob: object) -> None:
        assert isinstance(blob, _FileBlob)
        blob.sync()
        blob.close()
        os.replace(self._part, self.path)
        fsync_path(self.path.parent)

    def discard_partial(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._part.unlink()

    @property
    def remote_state(self) -> None:
        """Local: the journal lives beside the output, not in a store."""
        return None


class _LocalAtomicFile:
    """A file written under a temporary name in its final folder, renamed on commit."""

    def __init__(self, tree: LocalTree, final: Path) -> None:
        self._tree = tree
        self._final = final
        self._temp = final.with_name(f".annopull-{secrets.token_hex(8)}.tmp")
        # O_EXCL: never write through a name someone else made (a planted symlink); 0o666
        # less the umask gives the mode a plain file would get, not mkstemp's 0600.
        fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._stream: BinaryIO = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    def commit(self, *, mtime: datetime | None = None, mode: int | None = None) -> None:
        try:
            if mode is not None:
                os.fchmod(self._stream.fileno(), mode)
            self._stream.close()
            if mtime is not None:
                stamp = mtime.timestamp()
                os.utime(self._temp, (stamp, stamp))
            os.replace(self._temp, self._final)
        except BaseException:
            self.discard()
            raise
        self._tree.committed(self._final)

    def discard(self) -> None:
        self._stream.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


class LocalTree:
    """A local folder of files, each written atomically (temporary name, then rename).

    A reader never sees a half-written file, and a killed run leaves only temporary files,
    which :meth:`prepare` removes.

    Args:
        path: the folder; created when missing.
        state_name: the journal's file name inside the folder.
    """

    def __init__(self, path: Path, *, state_name: str = ".annopull.journal") -> None:
        self.path = Path(path)
        self._state_name = state_name
        self._root: Path | None = None
        self._unsynced: list[Path] = []

    def __repr__(self) -> str:
        return f"LocalTree({str(self.path)!r})"

    @property
    def description(self) -> str:
        return f"{self.path}/"

    @property
    def state_path(self) -> Path:
        return self.path / self._state_name

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._root = self.path.resolve()
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                if TEMP_NAME.fullmatch(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(root, name))

    def create(self, name: str) -> _LocalAtomicFile:
        if self._root is None:
            self.prepare()
        assert self._root is not None
        final = self._root.joinpath(*name.split("/"))
        final.parent.mkdir(parents=True, exist_ok=True)
        # A folder that already existed in the tree may be a symlink pointing elsewhere.
        if not final.parent.resolve().is_relative_to(self._root):
            raise UnsafeEntryError("refusing to write behind a symlinked folder", item=name)
        return _LocalAtomicFile(self, final)

    def put(self, name: str, data: Iterable[bytes], *, mtime: datetime | None = None) -> int:
        file = self.create(name)
        size = 0
        try:
            for chunk in data:
                file.write(chunk)
                size += len(chunk)
        except BaseException:
            file.discard()
            raise
        file.commit(mtime=mtime)
        return size

    @property
    def remote_state(self) -> None:
        """Local: the journal lives beside the output, not in a store."""
        return None

    def committed(self, path: Path) -> None:
        """Note a renamed file, to fsync at the next :meth:`sync`."""
        self._unsynced.append(path)

    def sync(self) -> None:
        # The files' data and their names in the folders must be on disk before the journal
        # says they are done.
        folders = set()
        for path in self._unsynced:
            with contextlib.suppress(FileNotFoundError):
                fsync_path(path)
            folders.add(path.parent)
        for folder in folders:
            fsync_path(folder)
        self._unsynced.clear()

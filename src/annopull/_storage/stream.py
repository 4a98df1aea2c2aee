"""Stream storage: an object written to an unseekable stream such as stdout."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from annopull._errors import ResumeError

__all__ = ["StreamStorage"]


class _StreamBlob:
    """Appends to a stream it does not own; never seeks or asks the position."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._position = 0

    @property
    def seekable(self) -> bool:
        return False

    @property
    def position(self) -> int:
        return self._position

    def write(self, data: bytes) -> None:
        self._stream.write(data)
        self._position += len(data)

    def patch(self, offset: int, data: bytes) -> None:
        raise io.UnsupportedOperation("a stream cannot be patched")

    def read_at(self, offset: int, size: int) -> bytes:
        raise io.UnsupportedOperation("a stream cannot be read back")

    def truncate(self, size: int) -> None:
        raise io.UnsupportedOperation("a stream cannot be cut back")

    def sync(self) -> None:
        self._stream.flush()

    def mark_boundary(self) -> None:
        """Nothing to do: a file is durable by sync alone."""

    def close(self) -> None:
        """The stream belongs to the caller: it is flushed, never closed."""
        self._stream.flush()


class StreamStorage:
    """An output streamed to ``stream`` (e.g. ``sys.stdout.buffer``); it cannot be resumed.

    Args:
        stream: a binary stream, written front to back and left open.
        description: how the output is shown to a person.
    """

    def __init__(self, stream: BinaryIO, *, description: str = "stdout") -> None:
        self._stream = stream
        self._description = description

    def __repr__(self) -> str:
        return f"StreamStorage({self._description!r})"

    @property
    def description(self) -> str:
        return self._description

    @property
    def state_path(self) -> Path | None:
        return None

    @property
    def partial_path(self) -> Path | None:
        return None

    def has_partial(self) -> bool:
        return False

    def open(self, *, resume: bool) -> _StreamBlob:
        if resume:
            raise ResumeError("an output streamed to a pipe cannot be resumed")
        return _StreamBlob(self._stream)

    def publish(self, blob: object) -> None:
        assert isinstance(blob, _StreamBlob)
        blob.sync()

    @property
    def remote_state(self) -> None:
        """Local: the journal lives beside the output, not in a store."""
        return None

    def discard_partial(self) -> None:
        """Nothing is kept anywhere but in the stream."""

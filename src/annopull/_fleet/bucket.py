"""The parts of a sharded run under an object-store prefix (``s3://BUCKET/PREFIX/``).

Reads are ranged: a part's central directory is read from its tail through a buffered
seekable view, a megabyte a request, never the whole object. An unfinished multipart upload
of a part, or any object named ``<part>.<suffix>`` (or under ``<part>.<suffix>/``: a run's
resume state beside it), makes that part unfinished.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

from annopull._config import StorageConfig
from annopull._storage.s3 import S3Client, S3Url, open_client

__all__ = ["BucketParts"]

#: Bytes of one ranged read: few requests for a central directory, little memory.
_READ_SIZE: Final = 1 << 20


class BucketParts:
    """The parts under ``s3://BUCKET/PREFIX/``; picklable (each process opens its client).

    Args:
        prefix: the prefix (a key ending in ``/``, or the bucket root).
        storage: the ``[storage]`` settings (endpoint, region).
    """

    def __init__(self, prefix: S3Url, *, storage: StorageConfig) -> None:
        self.prefix = prefix
        self._storage = storage

    @property
    def _client(self) -> S3Client:
        return open_client(self._storage)

    @property
    def description(self) -> str:
        return str(self.prefix)

    def prepare(self) -> None:
        self._client.check_bucket(self.prefix)

    def output(self, name: str) -> str:
        return str(self.prefix.child(name))

    def names(self) -> Iterator[str]:
        start = len(self.prefix.key)
        for info in self._client.list_objects(self.prefix):
            yield info.url.key[start:].partition("/")[0]
        for url, _upload in self._client.uploads(self.prefix):
            # A multipart upload not completed: the part is not there yet.
            yield f"{url.key[start:].partition('/')[0]}.upload"

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        url = self.prefix.child(name)
        info = self._client.head(url)
        size = info.size if info is not None else 0
        return io.BufferedReader(_RangedObject(self._client, url, size), _READ_SIZE)

    def read(self, name: str) -> bytes | None:
        return self._client.get(self.prefix.child(name))

    def write(self, name: str, path: Path) -> None:
        self._client.put(self.prefix.child(name), path.read_bytes())

    def size(self, name: str) -> int:
        info = self._client.head(self.prefix.child(name))
        return info.size if info is not None else 0


class _RangedObject(io.RawIOBase):
    """An object read as a seekable file, each read a ranged GET."""

    def __init__(self, client: S3Client, url: S3Url, size: int) -> None:
        super().__init__()
        self._client = client
        self._url = url
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self._size - self._position)
        if size <= 0:
            return 0
        data = self._client.get_range(self._url, self._position, size)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

"""The parts of a sharded run under an object-store prefix (``s3://BUCKET/PREFIX/``).

Reads are ranged: a part's central directory is read from its tail through a buffered
seekable view, a megabyte a request, never the whole object. An unfinished multipart upload
of a part, or any object named ``<part>.<suffix>`` (or under ``<part>.<suffix>/``: a run's
resume state beside it), makes that part unfinished.
"""

from __future__ import annotations

import contextlib
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
        return self._client.open_reader(self.prefix.child(name), buffer_size=_READ_SIZE)

    def read(self, name: str) -> bytes | None:
        return self._client.get(self.prefix.child(name))

    def write(self, name: str, path: Path) -> None:
        self._client.put(self.prefix.child(name), path.read_bytes())

    def size(self, name: str) -> int:
        info = self._client.head(self.prefix.child(name))
        return info.size if info is not None else 0

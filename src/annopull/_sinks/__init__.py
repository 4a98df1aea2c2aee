"""Sinks: where pulled entries go (zip, folder, JSON Lines), over a storage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from annopull._errors import ConfigError
from annopull._sinks.base import EntryInfo, Records, Sink, SinkResult
from annopull._sinks.directory import DirectorySink
from annopull._sinks.jsonl import JsonlSink
from annopull._sinks.zip import ZipSink
from annopull._storage.s3url import S3Url, is_s3_url

if TYPE_CHECKING:
    from annopull._config import StorageConfig

__all__ = [
    "DirectorySink",
    "EntryInfo",
    "JsonlSink",
    "Records",
    "Sink",
    "SinkResult",
    "ZipSink",
    "sink_for",
]


def sink_for(output: str, *, compress_level: int = 1, storage: StorageConfig | None = None) -> Sink:
    """Pick the sink an output name names.

    ``*.zip`` a zip file, ``-`` a zip on stdout, a path ending in ``/`` or an existing
    folder a folder of files, ``*.jsonl`` JSON Lines; the same in a bucket as
    ``s3://BUCKET/KEY.zip``, ``s3://BUCKET/KEY.jsonl`` and ``s3://BUCKET/PREFIX/``.

    Args:
        output: the output's name.
        compress_level: zlib level of zip entries.
        storage: the ``[storage]`` settings for ``s3://`` outputs.

    Raises:
        ConfigError: the kind cannot be told from ``output``, or ``s3://`` needs the
            ``s3`` extra.
    """
    if not output:
        raise ConfigError("the output is empty: name a .zip or .jsonl file, a folder/, or -")
    if is_s3_url(output):
        return _bucket_sink(S3Url.parse(output), compress_level=compress_level, storage=storage)
    if output == "-":
        return ZipSink("-", compress_level=compress_level)
    if output.endswith(("/", "\\")) or Path(output).is_dir():
        return DirectorySink(output)
    suffix = Path(output).suffix.lower()
    if suffix == ".zip":
        return ZipSink(Path(output), compress_level=compress_level)
    if suffix == ".jsonl":
        return JsonlSink(output)
    raise ConfigError(
        f"cannot tell the output kind of {output!r}: use a .zip or .jsonl file, "
        "a folder ending in '/', or '-' for a zip on stdout"
    )


def _bucket_sink(url: S3Url, *, compress_level: int, storage: StorageConfig | None) -> Sink:
    # The S3 client (aiohttp, XML parsing) is imported only for an s3:// output.
    from annopull._storage.bucket import S3Object, S3Tree
    from annopull._storage.s3 import open_client

    client = open_client(storage)
    if url.is_prefix:
        return DirectorySink(S3Tree(url, client=client))
    suffix = Path(url.key).suffix.lower()
    if suffix == ".zip":
        return ZipSink(S3Object(url, client=client), compress_level=compress_level)
    if suffix == ".jsonl":
        return JsonlSink(S3Object(url, client=client))
    raise ConfigError(
        f"cannot tell the output kind of {str(url)!r}: use s3://BUCKET/KEY.zip, "
        "s3://BUCKET/KEY.jsonl, or s3://BUCKET/PREFIX/ (ending in '/') for one object per entry"
    )

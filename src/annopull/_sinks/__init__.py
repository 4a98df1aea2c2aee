"""Sinks: where pulled entries go (zip, folder, JSON Lines), over a storage."""

from __future__ import annotations

from pathlib import Path

from annopull._errors import ConfigError
from annopull._sinks.base import EntryInfo, Records, Sink, SinkResult
from annopull._sinks.directory import DirectorySink
from annopull._sinks.jsonl import JsonlSink
from annopull._sinks.zip import ZipSink

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


def sink_for(output: str, *, compress_level: int = 1) -> Sink:
    """Pick the sink an output name names.

    ``*.zip`` a zip file, ``-`` a zip on stdout, a path ending in ``/`` or an existing
    folder a folder of files, ``*.jsonl`` JSON Lines.

    Raises:
        ConfigError: the kind cannot be told from ``output``.
    """
    if not output:
        raise ConfigError("the output is empty: name a .zip or .jsonl file, a folder/, or -")
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

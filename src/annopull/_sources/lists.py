"""Lists a user gives on the command line (URLs, scene uuids): one entry a line.

Shared by :mod:`annopull._sources.urls` and :mod:`annopull._sources.kognic_reads`: lines are
UTF-8 (a byte order mark on the first one is dropped); blank lines and lines whose first
non-blank character is ``#`` are ignored; a malformed line is a :class:`ConfigError` naming
``origin:LINE``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from annopull._errors import ConfigError

__all__ = ["LineError", "list_lines", "open_list"]


class LineError(Exception):
    """What is wrong with one line of a list (its place is added by the caller)."""


def list_lines(lines: Iterable[str | bytes], *, origin: str) -> Iterator[tuple[int, str]]:
    """The list's meaningful lines, numbered from 1, without their line ends.

    Args:
        lines: the list's lines, with or without their line ends; ``bytes`` are UTF-8.
        origin: the list's name in messages.

    Raises:
        ConfigError: a line is not UTF-8.
    """
    for number, raw in enumerate(lines, start=1):
        try:
            line = _decode(raw, first=number == 1)
        except LineError as exc:
            raise ConfigError(f"{origin}:{number}: {exc}") from None
        if line.strip() and not line.lstrip().startswith("#"):
            yield number, line


@contextmanager
def open_list(
    path: str | os.PathLike[str], *, what: str, stdin: BinaryIO | None = None
) -> Iterator[tuple[Iterable[bytes], str]]:
    """Open a list file, or standard input for ``"-"``; yields its lines and its origin.

    Args:
        path: the list file, or ``"-"``.
        what: what the list is, for messages ("URL list").
        stdin: what ``"-"`` reads (``sys.stdin``'s bytes when omitted).

    Raises:
        ConfigError: the file cannot be opened or read.
    """
    if os.fspath(path) == "-":
        yield stdin or sys.stdin.buffer, "<stdin>"
        return
    origin = os.fspath(path)
    try:
        with Path(path).open("rb") as stream:
            yield stream, origin
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {origin}: {exc.strerror or exc}") from None


def _decode(raw: str | bytes, *, first: bool) -> str:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LineError(f"not UTF-8 (byte {exc.start + 1})") from None
    if first:
        raw = raw.removeprefix("\ufeff")
    return raw.removesuffix("\n").removesuffix("\r")

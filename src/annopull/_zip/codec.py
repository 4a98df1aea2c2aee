"""The deflate and CRC-32 of annopull's zips: ISA-L's when the speed extra installed it.

``isal`` (``annopull[speed]``) deflates JSON about 2x as fast as zlib on 4 KiB documents and
4-5x on 5 MiB ones, at a ratio as good as zlib's level 1, and releases the GIL while it
works as zlib does; its CRC-32 is about 3x zlib's, with the same values. Its deflate has
four levels (0-3) rather than nine: zlib's 1-3 map to its 1, 4-6 to 2 and 7-9 to 3 (its 0
is a fast mode, not stored entries). Without the extra, zlib does all of it.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Final, Protocol, cast

__all__ = ["Z_FINISH", "Z_SYNC_FLUSH", "Deflater", "crc32", "raw_deflater"]

Z_FINISH: Final = zlib.Z_FINISH
Z_SYNC_FLUSH: Final = zlib.Z_SYNC_FLUSH


class Deflater(Protocol):
    """A raw deflate stream (``zlib.compressobj(..., wbits=-15)``)."""

    def compress(self, data: bytes | memoryview, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


def _isal() -> ModuleType | None:
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:
        return None


_ISAL: Final = _isal()

#: CRC-32 of ``data`` continuing from ``value`` (zlib's signature and values).
crc32: Final = cast(
    Callable[[bytes | memoryview, int], int], zlib.crc32 if _ISAL is None else _ISAL.crc32
)


def raw_deflater(level: int, zdict: bytes | memoryview | None = None) -> Deflater:
    """A raw deflate stream at zlib ``level`` 1-9, primed with ``zdict`` when given."""
    if _ISAL is None:
        module, level_there = zlib, level
    else:
        module, level_there = _ISAL, (level + 2) // 3
    if zdict:
        return cast(Deflater, module.compressobj(level_there, module.DEFLATED, -15, zdict=zdict))
    return cast(Deflater, module.compressobj(level_there, module.DEFLATED, -15))

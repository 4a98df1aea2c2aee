"""Entry-name rules shared by every writer and reader of annopull's outputs.

One set of rules for the zip writer, the folder output and zip extraction, so a name that a
writer produces is always one that extraction accepts, and the two can never drift apart.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import Final

from annopull._errors import ZipFormatError

__all__ = ["MAX_NAME_BYTES", "name_candidates", "sanitize_entry_name", "unsafe_name_reason"]

#: A zip name field is 16 bits wide.
MAX_NAME_BYTES: Final = 0xFFFF
_DRIVE: Final = re.compile(r"^[A-Za-z]:")
#: ASCII segments that start with no dot (so none is empty, ``.`` or ``..``), joined by ``/``.
_PLAIN: Final = re.compile(r"[\w-][\w.-]*(?:/[\w-][\w.-]*)*", re.ASCII)


def sanitize_entry_name(name: str) -> str:
    """Return ``name`` as a safe relative entry name.

    Backslashes become ``/``; a drive letter, leading slashes, empty, ``.`` and ``..`` segments
    are dropped, so the name can never point outside the extraction folder.

    Raises:
        ZipFormatError: nothing is left of the name, it contains a NUL character or a lone
            surrogate, or it is longer than a zip name field holds.
    """
    if _PLAIN.fullmatch(name) and len(name) <= MAX_NAME_BYTES:
        # Already what the rules below make of it (every entry's name is checked, twice).
        return name
    if "\x00" in name:
        raise ZipFormatError("entry name contains a NUL character", item=repr(name))
    path = _DRIVE.sub("", name.replace("\\", "/"))
    segments = [s for s in path.split("/") if s not in ("", ".", "..")]
    if not segments:
        raise ZipFormatError("entry name is empty after sanitising", item=repr(name))
    clean = "/".join(segments)
    try:
        encoded = clean.encode()
    except UnicodeEncodeError:
        # A lone surrogate (from a file system name, say) has no UTF-8 form to store.
        raise ZipFormatError("entry name is not valid Unicode", item=repr(name[:80])) from None
    if len(encoded) > MAX_NAME_BYTES:
        raise ZipFormatError("entry name is longer than 65535 bytes", item=repr(name[:80]))
    return clean


def unsafe_name_reason(name: str) -> str | None:
    """Why a stored name could write outside an extraction folder, or ``None`` if it is safe.

    This judges names as they come from someone else's archive; :func:`sanitize_entry_name`
    never produces a name this refuses.
    """
    reasons = (
        ("\x00" in name, "NUL in name"),
        ("\\" in name, "backslash in name"),
        (name.startswith("/"), "absolute path"),
        (bool(_DRIVE.match(name)), "drive letter"),
        (".." in name.split("/"), "'..' segment"),
        (not name.strip("/"), "empty name"),
    )
    return next((reason for unsafe, reason in reasons if unsafe), None)


def name_candidates(name: str) -> Iterator[str]:
    """Yield ``name``, then ``"a (2).json"``, ``"a (3).json"``, … for dedupe."""
    yield name
    stem, ext = posixpath.splitext(name)
    n = 2
    while True:
        yield f"{stem} ({n}){ext}"
        n += 1

"""Versions held by an earlier output, for skip-existing.

A finished zip carries each annotation's ``created`` as its entry comment, a folder as each
file's modification time, a JSON Lines file in each line, and a journal in its rows. They
are loaded into a temporary journal so that lookups are indexed on disk, not held in RAM.
"""

from __future__ import annotations

import itertools
import os
import posixpath
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

from annopull._errors import ConfigError, ResumeError
from annopull._pipeline.ledger import Ledger, LedgerRow
from annopull._zip.reader import read_entry_comments

__all__ = ["load_previous_versions"]

_BATCH = 5000


def load_previous_versions(path: Path) -> Ledger:
    """Index the ``key -> version`` pairs an earlier output holds (blocking: use a thread).

    Args:
        path: a finished ``.zip``, a folder, a ``.jsonl`` file, or a ``.journal``.

    Returns:
        A temporary journal; close it when done.

    Raises:
        ConfigError: the path does not exist or is of no kind annopull writes.
    """
    pairs = _pairs(path)
    index = Ledger.temporary(kind="index")
    try:
        while batch := list(itertools.islice(pairs, _BATCH)):
            index.record(LedgerRow(key=key, version=version, name=key) for key, version in batch)
            index.commit()
    except BaseException:
        index.close()
        raise
    return index


def _pairs(path: Path) -> Iterator[tuple[str, str]]:
    if path.is_dir():
        return _from_folder(path)
    if not path.is_file():
        raise ConfigError(f"the earlier output to compare with does not exist: {path}")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return ((_stem(name), comment) for name, comment in read_entry_comments(path) if comment)
    if suffix == ".jsonl":
        return _from_jsonl(path)
    if suffix == ".journal":
        return _from_journal(path)
    raise ConfigError(
        f"an earlier output to compare with is a .zip, a folder, a .jsonl or a .journal: {path}"
    )


def _stem(name: str) -> str:
    return posixpath.splitext(posixpath.basename(name))[0]


def _from_folder(folder: Path) -> Iterator[tuple[str, str]]:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(".json") and not name.startswith("."):
                mtime = os.stat(os.path.join(root, name)).st_mtime
                yield name[:-5], datetime.fromtimestamp(mtime, UTC).isoformat()


def _from_jsonl(path: Path) -> Iterator[tuple[str, str]]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                yield _key_and_version(record)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{path}:{number} is not an annopull JSON Lines record") from None


def _from_journal(path: Path) -> Iterator[tuple[str, str]]:
    try:
        yield from Ledger.read_versions(path)
    except ResumeError as exc:
        raise ConfigError(f"cannot compare with {path}: {exc}") from None


def _key_and_version(record: dict[str, object]) -> tuple[str, str]:
    """A Kognic record's scene and ``created``; any other source's ``key`` and ``version``."""
    if "scene_uuid" in record:
        return str(record["scene_uuid"]), str(record["created"])
    return str(record["key"]), str(record["version"])

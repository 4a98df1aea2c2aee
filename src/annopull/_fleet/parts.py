"""The parts of a sharded run under one prefix: their names, their state, where they live.

Shard ``k`` of ``n`` writes ``PREFIX/part-0000k-of-0000n.zip`` (five digits each), and may
leave ``PREFIX/part-0000k-of-0000n.summary.json`` (its ``--summary``) beside it. A part is
*complete* when its zip exists and nothing of a run is left beside it: no ``<part>.journal``,
``<part>.part`` or ``<part>.lock`` (every state a run keeps is named ``<part>.<suffix>``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Final, Protocol

from annopull._config import StorageConfig
from annopull._errors import ConfigError, StorageError
from annopull._storage.durability import fsync_path
from annopull._storage.s3url import S3Url, is_s3_url

__all__ = [
    "MANIFEST_NAME",
    "MAX_SHARDS",
    "LocalParts",
    "PartSet",
    "PartState",
    "PartStore",
    "part_name",
    "scan_parts",
    "store_for",
    "summary_name",
]

#: Five digits in a part's name.
MAX_SHARDS: Final = 99999
MANIFEST_NAME: Final = "manifest.json"
_PART: Final = re.compile(r"part-(\d{5})-of-(\d{5})\.zip")


def part_name(k: int, n: int) -> str:
    """``(3, 16)`` -> ``'part-00003-of-00016.zip'``."""
    return f"part-{k:05d}-of-{n:05d}.zip"


def summary_name(k: int, n: int) -> str:
    """The summary a shard writes beside its part: ``part-00003-of-00016.summary.json``."""
    return f"part-{k:05d}-of-{n:05d}.summary.json"


class PartStore(Protocol):
    """Where the parts of a sharded run are: a local folder or an object-store prefix.

    Every method blocks: call them from a worker thread. A store is picklable, so the
    tasks of a run get the same one.
    """

    @property
    def description(self) -> str:
        """The prefix as the user gave it (``out/``, ``s3://bucket/prefix/``)."""

    def prepare(self) -> None:
        """Make the prefix ready for a run's parts (create the folder).

        Raises:
            ConfigError: it cannot be created.
        """

    def output(self, name: str) -> str:
        """The ``-o`` of the object ``name`` under the prefix."""

    def names(self) -> Iterator[str]:
        """The names of the objects directly under the prefix."""

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """Open the object ``name`` for seekable reads."""

    def read(self, name: str) -> bytes | None:
        """A small object's bytes, or ``None`` when there is none."""

    def write(self, name: str, path: Path) -> None:
        """Publish the local file ``path`` as the object ``name`` (whole, or not at all)."""

    def size(self, name: str) -> int:
        """The object's size in bytes."""


class LocalParts:
    """The parts in a local folder.

    Args:
        folder: the prefix; created when a run writes into it.
    """

    def __init__(self, folder: Path) -> None:
        # Absolute: the tasks of a run need not share the driver's working folder.
        self.folder = folder.absolute()
        self._shown = f"{str(folder).rstrip(os.sep)}{os.sep}"

    @property
    def description(self) -> str:
        return self._shown

    def prepare(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {self._shown}: {exc.strerror}") from None

    def output(self, name: str) -> str:
        return str(self.folder / name)

    def names(self) -> Iterator[str]:
        try:
            with os.scandir(self.folder) as entries:
                yield from (entry.name for entry in entries if not entry.is_dir())
        except FileNotFoundError:
            return

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return (self.folder / name).open("rb", buffering=1 << 20)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, path: Path) -> None:
        final = self.folder / name
        # Copied beside the final name first: ``path`` may be on another file system.
        temp = self.folder / f".{name}.tmp"
        try:
            shutil.copyfile(path, temp)
            fsync_path(temp)
            os.replace(temp, final)
            fsync_path(self.folder)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {name}: {exc.strerror}", path=final) from exc

    def size(self, name: str) -> int:
        return (self.folder / name).stat().st_size


def store_for(prefix: str, *, storage: StorageConfig | None = None) -> PartStore:
    """The store a prefix names: a local folder, or ``s3://BUCKET/PREFIX/``.

    Args:
        prefix: the ``-o`` of a sharded run, or what ``annopull manifest`` is given.
        storage: the ``[storage]`` settings, for an object store.

    Raises:
        ConfigError: ``prefix`` is not a folder or a prefix (it must end in ``/`` or be an
            existing folder).
    """
    if is_s3_url(prefix):
        url = S3Url.parse(prefix)
        if not url.is_prefix:
            raise ConfigError(
                f"a sharded run writes its parts under a prefix: end it in '/', not {prefix!r}"
            )
        from annopull._fleet.bucket import BucketParts  # the object store only when named

        return BucketParts(url, storage=storage or StorageConfig())
    if prefix.endswith(("/", os.sep)) or Path(prefix).is_dir():
        return LocalParts(Path(prefix))
    raise ConfigError(
        f"a sharded run writes its parts under a prefix: give a folder ending in '/', "
        f"not {prefix!r}"
    )


class PartState(Enum):
    """Where one shard's part stands."""

    COMPLETE = "complete"
    UNFINISHED = "unfinished"  # a run's state is beside it: running, or interrupted
    MISSING = "missing"


@dataclass(frozen=True, kw_only=True)
class PartSet:
    """The state of every shard of a run under a prefix."""

    shards: int
    states: tuple[PartState, ...]  # index k - 1 for shard k

    def with_state(self, state: PartState) -> tuple[int, ...]:
        """The shards (1-based) in ``state``."""
        return tuple(k for k, s in enumerate(self.states, 1) if s is state)

    @property
    def complete(self) -> bool:
        """Whether every part is there and finished."""
        return all(s is PartState.COMPLETE for s in self.states)

    def describe_gaps(self) -> str:
        """``'shard 2 missing, shard 3 unfinished'``, for a message."""
        return ", ".join(
            f"shard {k} {s.value}"
            for k, s in enumerate(self.states, 1)
            if s is not PartState.COMPLETE
        )


def scan_parts(store: PartStore, *, shards: int | None = None) -> PartSet:
    """Find which parts are complete, unfinished or missing under the store's prefix.

    Args:
        store: where the parts are.
        shards: the run's number of shards; ``None`` to read it from the parts' names.

    Raises:
        ConfigError: no part is there and ``shards`` is not given, or parts of runs with
            different numbers of shards are mixed under one prefix.
    """
    finished: set[str] = set()
    leftover: set[str] = set()  # parts with a run's state beside them
    counts: set[int] = set()
    for name in store.names():
        match = _PART.match(name)
        if match is None:
            continue
        counts.add(int(match[2]))
        (finished if match.end() == len(name) else leftover).add(match[0])
    if shards is None:
        if not counts:
            raise ConfigError(f"no parts (part-KKKKK-of-NNNNN.zip) under {store.description}")
        if len(counts) > 1:
            raise ConfigError(
                f"{store.description} mixes parts of runs with {sorted(counts)} shards: "
                "one prefix holds one run"
            )
        shards = counts.pop()
    elif counts - {shards}:
        raise ConfigError(
            f"{store.description} holds parts of a run with {min(counts - {shards})} "
            f"shards, not {shards}: one prefix holds one run"
        )
    states = []
    for k in range(1, shards + 1):
        part = part_name(k, shards)
        if part in leftover:
            states.append(PartState.UNFINISHED)
        else:
            states.append(PartState.COMPLETE if part in finished else PartState.MISSING)
    return PartSet(shards=shards, states=tuple(states))

"""A stage that runs a step on each item's bytes in a :class:`WorkerPool`, and what it returns.

A *step* is a picklable function ``step(fields, content) -> Output | None`` that runs in a
worker: it gets the item's fields (a Kognic annotation's scene uuid, type, created) and its
bytes, and returns the bytes to write, :data:`UNCHANGED` to write the item as it came, or
``None`` to leave it out. What it raises is that item's failure. Only bytes and short
strings cross between the processes: a user's exception or return value never has to be
picklable.

An item spilled to disk (bigger than ``spool_memory``) goes to the worker as the name of a
copy of it, and an output that big comes back the same way, so neither is ever whole in
the event loop's memory.
"""

from __future__ import annotations

import enum
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import orjson

from annopull._errors import TransformError
from annopull._pipeline.buffers import Spool
from annopull._pipeline.pull import Item, Stage, Staged
from annopull._pipeline.workers import WorkerPool, describe_exception

__all__ = ["UNCHANGED", "Output", "Renamed", "Step", "StepFailed", "encode_output", "pool_stage"]


@dataclass(frozen=True, slots=True)
class Renamed:
    """A transform's result written under a new entry name.

    ``return Renamed(csv_text, f"{annotation.scene_uuid}.csv")``; the name is made safe and
    unique like any entry name. ``content`` is anything a transform may return (``None``
    leaves the item out).
    """

    content: Any
    name: str


@dataclass(frozen=True, slots=True)
class Output:
    """What a step hands back: the bytes, the entry's new name, whether they are JSON."""

    content: bytes
    name: str | None = None
    json: bool = False


class _Unchanged(enum.Enum):
    # An enum member, because it stays itself through pickling (a worker process's answer).
    UNCHANGED = "unchanged"


#: A step's answer for "write the item's bytes as they came" (a validation that passed).
UNCHANGED: Final = _Unchanged.UNCHANGED

#: ``step(fields, content)``: runs in a worker; see the module's documentation.
Step = Callable[[Mapping[str, str], bytes], Output | _Unchanged | None]


class StepFailed(Exception):
    """Raised by a step for a failure it has described in full (the item's reason)."""


#: orjson's options for a transform's dicts and lists: numpy values and non-string keys
#: are what a conversion with some maths produces.
_JSON_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def encode_output(value: Any) -> Output | None:
    """A transform's return value as the bytes to write (``None``: leave the item out).

    ``bytes`` as they are, ``str`` as UTF-8, a dict or list as JSON (orjson), a pydantic
    model by its ``model_dump_json()``, any of them inside :class:`Renamed`.

    Raises:
        StepFailed: a value of another type, or one orjson cannot encode.
    """
    name = None
    if isinstance(value, Renamed):
        if not isinstance(value.name, str) or not value.name:
            raise StepFailed(f"transform returned Renamed with name {value.name!r}")
        name, value = value.name, value.content
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return Output(bytes(value), name)
    if isinstance(value, str):
        return Output(value.encode("utf-8", "surrogatepass"), name)
    if isinstance(value, dict | list):
        try:
            return Output(orjson.dumps(value, option=_JSON_OPTIONS), name, json=True)
        except orjson.JSONEncodeError as exc:
            raise StepFailed(f"transform returned what JSON cannot hold: {exc}") from None
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):
        return Output(str(dump()).encode(), name, json=True)
    if isinstance(value, tuple):
        raise StepFailed(
            "transform returned a tuple: to rename the entry, return "
            "annopull.Renamed(content, name)"
        )
    raise StepFailed(
        f"transform returned {type(value).__name__}: return bytes, str, a dict or list, "
        "a pydantic model, Renamed(content, name) or None"
    )


@dataclass(frozen=True, slots=True)
class _Job:
    step: Step
    fields: Mapping[str, str]
    #: The bytes, or the name of a file that holds them (an item spilled to disk).
    content: bytes | str
    #: Outputs bigger than this come back as a file in ``directory``.
    spill_over: int
    directory: str | None


@dataclass(frozen=True, slots=True)
class _Done:
    failure: str | None = None
    left_out: bool = False
    unchanged: bool = False
    content: bytes = b""
    path: str | None = None
    name: str | None = None
    json: bool = False


def _work(job: _Job) -> _Done:
    """Run ``job`` in a worker: everything it raises becomes a one-line failure."""
    try:
        content = job.content if isinstance(job.content, bytes) else Path(job.content).read_bytes()
        output = job.step(job.fields, content)
    except StepFailed as exc:
        return _Done(failure=str(exc))
    except (Exception, SystemExit) as exc:
        return _Done(failure=describe_exception(exc))
    if output is None:
        return _Done(left_out=True)
    if output is UNCHANGED:
        return _Done(unchanged=True)
    if len(output.content) <= job.spill_over:
        return _Done(content=output.content, name=output.name, json=output.json)
    fd, path = tempfile.mkstemp(prefix=".annopull-stage-", dir=job.directory)
    with os.fdopen(fd, "wb") as file:
        file.write(output.content)
    return _Done(path=path, name=output.name, json=output.json)


def pool_stage(pool: WorkerPool, step: Step, *, spool_memory: int) -> Stage[Item]:
    """A pipeline stage that runs ``step`` on every item in ``pool``.

    Args:
        pool: the open pool the steps run in.
        step: picklable when the pool runs processes (a module-level function, or a
            ``functools.partial`` of one).
        spool_memory: outputs bigger than this wait on disk, as downloads do.
    """

    async def stage(item: Item, spool: Spool) -> Spool | Staged | None:
        directory = None if spool.directory is None else str(spool.directory)
        async with _job_content(spool) as content:
            job = _Job(step, item.fields, content, spool_memory, directory)
            done = await pool.run(_work, job)
        if done.failure is not None:
            raise TransformError(done.failure)
        if done.left_out:
            return None
        if done.unchanged:
            return spool
        if done.path is not None:
            staged = await Spool.adopt(Path(done.path), memory_limit=spool_memory)
        else:
            staged = Spool(memory_limit=spool_memory, directory=spool.directory)
            await staged.write(done.content)
        return Staged(staged, name=done.name, json=done.json)

    return stage


@asynccontextmanager
async def _job_content(spool: Spool) -> AsyncIterator[bytes | str]:
    """The spool's bytes for a job: the bytes in memory, or a copy on disk, removed after."""
    if spool.in_memory:
        yield spool.getvalue()
        return
    fd, name = await anyio.to_thread.run_sync(
        lambda: tempfile.mkstemp(prefix=".annopull-stage-", dir=spool.directory)
    )
    os.close(fd)
    try:
        await spool.save_as(Path(name))
        yield name
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.Path(name).unlink(missing_ok=True)

"""Converting and validating Kognic annotations while they are pulled.

The step that runs in the worker pool for each annotation: parse the content, check it
against kognic-openlabel's ``OpenLabelAnnotation`` (``validate``), hand a
:class:`ParsedAnnotation` to the user's function (``transform``) and encode what it returns
(:func:`~annopull._pipeline.transform.encode_output`).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic

import orjson

from annopull._errors import ConfigError
from annopull._pipeline.pull import Item, ItemT, Source, Stage
from annopull._pipeline.transform import (
    UNCHANGED,
    Output,
    StepFailed,
    encode_output,
    pool_stage,
)
from annopull._pipeline.workers import WorkerMode, WorkerPool, describe_exception
from annopull._transport.http import ByteTarget

__all__ = ["ParsedAnnotation", "StagedSource", "Transform", "kognic_stage", "require_openlabel"]

_INSTALL = "pip install 'annopull[openlabel]'"


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedAnnotation:
    """What a transform gets: one annotation with its content parsed.

    Args:
        scene_uuid: the scene (input) the annotation is of.
        annotation_type: the annotation type.
        created: when it was created, ISO 8601 as Kognic lists it.
        content: the OpenLABEL document, parsed (``{"openlabel": {...}}``).
    """

    scene_uuid: str
    annotation_type: str
    created: str
    content: Any


#: A transform: gets a :class:`ParsedAnnotation`, returns bytes, str, a dict or list, a
#: pydantic model, :class:`~annopull.Renamed` or ``None`` (leave the item out).
Transform = Callable[[ParsedAnnotation], Any]


def require_openlabel() -> None:
    """Check that kognic-openlabel can be imported, before anything is downloaded.

    Raises:
        ConfigError: it is not installed; the message names the pip command.
    """
    try:
        import kognic.openlabel.models  # noqa: F401
    except ImportError:
        raise ConfigError(f"validating OpenLABEL needs kognic-openlabel: {_INSTALL}") from None


@asynccontextmanager
async def kognic_stage(
    *,
    transform: Transform | None,
    validate: bool,
    workers: int | None,
    workers_mode: WorkerMode,
    spool_memory: int,
) -> AsyncIterator[Stage[Item] | None]:
    """The stage converting and validating annotations in a worker pool it owns (``None``
    when there is nothing to do).

    Raises:
        ConfigError: kognic-openlabel is missing for ``validate``; a transform for process
            workers that cannot be pickled; ``workers`` or ``workers_mode`` out of range.
    """
    if transform is None and not validate:
        if workers is not None:
            raise ConfigError("workers are for a transform or validation; neither was asked")
        yield None
        return
    if validate:
        require_openlabel()
    step = functools.partial(_convert, transform=transform, validate=validate)
    if workers_mode == "process":
        _check_picklable(step, transform)
    preload = [getattr(transform, "__module__", None) or ""] if transform is not None else []
    if validate:
        preload.append("kognic.openlabel.models")
    async with WorkerPool(workers=workers, mode=workers_mode, preload=preload) as pool:
        yield pool_stage(pool, step, spool_memory=spool_memory)


class StagedSource(Generic[ItemT]):
    """``source`` with what its stage does in its fingerprint: a resume with another
    transform (or without ``validate``) would mix two kinds of entries in one output."""

    def __init__(self, source: Source[ItemT], *, transform: Transform | None, validate: bool):
        self._source = source
        self._stage = {
            "transform": "" if transform is None else _name_of(transform),
            "validate": "true" if validate else "",
        }

    @property
    def fingerprint(self) -> Mapping[str, str]:
        return {**self._source.fingerprint, **self._stage}

    def items(self) -> AsyncGenerator[ItemT, None]:
        return self._source.items()

    async def fetch(
        self, item: ItemT, target: ByteTarget, *, on_bytes: Callable[[int], None]
    ) -> ItemT | None:
        return await self._source.fetch(item, target, on_bytes=on_bytes)


def _name_of(function: Callable[..., Any]) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}:{getattr(function, '__qualname__', repr(function))}"


def _check_picklable(step: Callable[..., Any], transform: Transform | None) -> None:
    try:
        pickle.dumps(step)
    except Exception:
        raise ConfigError(
            f"the transform {transform!r} cannot be sent to worker processes: it must be a "
            "module-level function (they import it by name); use thread workers for others"
        ) from None


def _convert(
    fields: Mapping[str, str], content: bytes, *, transform: Transform | None, validate: bool
) -> Output | Any | None:
    """The step for one annotation (runs in a worker)."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise StepFailed(f"content is not valid JSON: {exc}") from None
    if validate:
        _validate(document)
    if transform is None:
        return UNCHANGED
    annotation = ParsedAnnotation(
        scene_uuid=fields.get("scene_uuid", ""),
        annotation_type=fields.get("annotation_type", ""),
        created=fields.get("created", ""),
        content=document,
    )
    try:
        value = transform(annotation)
    except (Exception, SystemExit) as exc:
        raise StepFailed(f"transform raised {describe_exception(exc)}") from None
    return encode_output(value)


def _validate(document: Any) -> None:
    from kognic.openlabel.models import OpenLabelAnnotation
    from pydantic import ValidationError

    try:
        OpenLabelAnnotation.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        more = exc.error_count() - 1
        also = f" (and {more} more)" if more else ""
        raise StepFailed(
            f"not valid OpenLABEL, left out of the output: {where}: {first['msg']}{also}"
        ) from None

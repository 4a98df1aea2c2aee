"""Transforms the transform tests run in worker processes (importable by name from tests/)."""

from __future__ import annotations

import os
from typing import Any

import orjson

from annopull import ParsedAnnotation, Renamed


def summarize(annotation: ParsedAnnotation) -> dict[str, Any]:
    """The scene, its type and the sorted object names: a real conversion, checkable."""
    return summary_of(annotation.scene_uuid, annotation.annotation_type, annotation.content)


def summary_of(scene_uuid: str, annotation_type: str, content: Any) -> dict[str, Any]:
    """What :func:`summarize` makes of one document (the tests compute the expected one)."""
    objects = content["openlabel"]["objects"]
    return {
        "scene": scene_uuid,
        "type": annotation_type,
        "objects": sorted(entry["name"] for entry in objects.values()),
    }


def fail_on_even_names(annotation: ParsedAnnotation) -> dict[str, Any]:
    """Raise for scenes whose uuid ends in an even hex digit, summarize the others."""
    if int(annotation.scene_uuid[-1], 16) % 2 == 0:
        raise ValueError(f"no conversion for {annotation.scene_uuid}\nsecond line")
    return summarize(annotation)


def drop_even_names(annotation: ParsedAnnotation) -> dict[str, Any] | None:
    """Leave out scenes whose uuid ends in an even hex digit."""
    if int(annotation.scene_uuid[-1], 16) % 2 == 0:
        return None
    return summarize(annotation)


def to_csv(annotation: ParsedAnnotation) -> Renamed:
    """One CSV line per object, under ``{scene}.csv``."""
    objects = annotation.content["openlabel"]["objects"]
    lines = [f"{key},{entry['name']}" for key, entry in sorted(objects.items())]
    return Renamed("\n".join(lines) + "\n", f"{annotation.scene_uuid}.csv")


def worker_pid(annotation: ParsedAnnotation) -> bytes:
    """The process the transform ran in (to tell process from thread workers)."""
    return orjson.dumps({"pid": os.getpid()})


def returns_int(annotation: ParsedAnnotation) -> int:
    """A return value no output can hold."""
    return 42


def crash_on(annotation: ParsedAnnotation) -> dict[str, Any]:
    """Kill the worker process for the scene named in ANNOPULL_TEST_CRASH_SCENE (* for all)."""
    if os.environ.get("ANNOPULL_TEST_CRASH_SCENE") in (annotation.scene_uuid, "*"):
        os._exit(3)
    return summarize(annotation)


NOT_CALLABLE = 3

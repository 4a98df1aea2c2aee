"""Kognic's other annotation reads: per input, per scene, by id, and a list of scenes in bulk.

What :class:`~annopull._sources.kognic.KognicSource` builds on beside its project listing:

- the answers of the v2 reads (``v2/inputs/{uuid}/annotation``, ``v2/scenes/{uuid}/annotations``)
  and of the annotation-integration API (``v1/annotations/{id}``) as :class:`SceneAnnotation`;
  their content is behind a signed URL, fetched like a bulk listing's;
- the v1 single read (``v1/annotations/inputs/{scene}/annotation-type/{type}``), whose answer
  holds the content inline: decoded by :func:`single_answer`, in a worker thread when large;
- a list of scene uuids as a pipeline source (:class:`SceneListing`), each scene's entry the
  v1 single read of one annotation type.

A scene list may be long (a million lines): it is read once to check every uuid and digest
it (the resume fingerprint) into a temporary copy, then listed lazily from that copy, so
neither pass holds it in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import anyio
import orjson

from annopull._errors import ConfigError, InvalidResponseError
from annopull._pipeline.pull import Item, parse_time
from annopull._sources.lists import list_lines, open_list
from annopull._transport.http import ByteTarget

if TYPE_CHECKING:
    from annopull._sources.kognic import KognicSource

__all__ = [
    "Partial",
    "SceneAnnotation",
    "SceneListing",
    "annotation_item",
    "parse_partial",
    "parse_partials",
    "read_scene_list",
    "scene_uuid_problem",
    "single_answer",
    "unwrap",
]

#: A scene uuid as Kognic writes it: 8-4-4-4-12 hex digits.
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
#: Lines of a scene list read or written per worker-thread hop.
_LINES_PER_HOP: Final = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class SceneAnnotation:
    """One annotation of a scene as the v2 and by-id reads describe it, content included.

    Args:
        input_uuid: the input (the scene in one annotation request).
        scene_uuid: the scene.
        request_uid: the annotation request.
        created: when the annotation was created (ISO 8601, as the platform wrote it).
        content: the OpenLABEL document, as the storage served it.
        is_preliminary: whether the annotation is preliminary.
        annotation_id: the annotation's id (by-id reads only).
    """

    input_uuid: str
    scene_uuid: str
    request_uid: str
    created: str
    content: bytes = field(repr=False)
    is_preliminary: bool = False
    annotation_id: str | None = None

    def json(self) -> Any:
        """The content parsed (``{"openlabel": {...}}``)."""
        return orjson.loads(self.content)


@dataclass(frozen=True, slots=True, kw_only=True)
class Partial:
    """A :class:`SceneAnnotation` without its content: where the content is."""

    input_uuid: str
    scene_uuid: str
    request_uid: str
    created: str
    uri: str = field(repr=False)
    is_preliminary: bool = False
    annotation_id: str | None = None

    def with_content(self, content: bytes) -> SceneAnnotation:
        """The annotation, its content fetched."""
        return SceneAnnotation(
            input_uuid=self.input_uuid,
            scene_uuid=self.scene_uuid,
            request_uid=self.request_uid,
            created=self.created,
            content=content,
            is_preliminary=self.is_preliminary,
            annotation_id=self.annotation_id,
        )


#: Wire names of a v2 partial annotation (camelCase) and of an annotation-integration one.
_V2_FIELDS: Final = {
    "input_uuid": "inputUuid",
    "scene_uuid": "sceneUuid",
    "request_uid": "requestUid",
    "created": "created",
    "uri": "uri",
}
_BY_ID_FIELDS: Final = {
    "input_uuid": "requestInputId",
    "scene_uuid": "sceneId",
    "request_uid": "requestUid",
    "created": "created",
    "uri": "signedUrl",
}


def unwrap(body: Any) -> Any:
    """The payload of an enveloped answer: ``data`` when there is no ``metadata``."""
    if isinstance(body, dict) and "data" in body and "metadata" not in body:
        return body["data"]
    return body


def parse_partial(body: Any, *, url: str, by_id: bool = False) -> Partial:
    """One partial annotation of a v2 read (``by_id``: of the annotation-integration API).

    Raises:
        InvalidResponseError: the answer is not such an object, or lacks a field.
    """
    body = unwrap(body)
    names = _BY_ID_FIELDS if by_id else _V2_FIELDS
    if not isinstance(body, dict):
        raise InvalidResponseError("annotation answer is not an object", url=url)
    missing = [wire for wire in names.values() if not isinstance(body.get(wire), str | int)]
    if missing:
        raise InvalidResponseError(f"annotation answer has no {missing[0]!r}", url=url)
    values = {name: str(body[wire]) for name, wire in names.items()}
    return Partial(
        **values,
        is_preliminary=body.get("isPreliminary") is True,
        annotation_id=str(body["id"]) if by_id and "id" in body else None,
    )


def parse_partials(body: Any, *, url: str) -> list[Partial]:
    """The list of partial annotations of a v2 scene read (possibly enveloped).

    Raises:
        InvalidResponseError: the answer is not a list of them.
    """
    body = unwrap(body)
    if not isinstance(body, list):
        raise InvalidResponseError("scene annotations answer is not a list", url=url)
    return [parse_partial(item, url=url) for item in body]


def single_answer(payload: bytes | bytearray) -> tuple[dict[str, Any], bytes] | None:
    """The v1 single read's answer: its fields, and its inline content re-serialised by orjson.

    The content arrives parsed inside the answer, so its bytes are orjson's rendering of it
    (compact, keys in the order served), not the storage's bytes. ``None`` when the answer
    holds no content. Runs in a worker thread for large answers (see ``Transport``).

    Raises:
        orjson.JSONDecodeError: the answer is not JSON.
    """
    body = unwrap(orjson.loads(payload))
    if not isinstance(body, dict) or not isinstance(body.get("content"), dict | list):
        return None
    content = orjson.dumps(body.pop("content"))
    return body, content


def scene_uuid_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a scene uuid, or ``None``."""
    if _UUID.fullmatch(text):
        return None
    return f"not a scene uuid: {text[:80]!r}"


def read_scene_list(
    path: str | os.PathLike[str], *, stdin: BinaryIO | None = None
) -> Iterator[str]:
    """The scene uuids of a list file (``"-"``: standard input), read lazily, one a line.

    Blank lines and lines starting with ``#`` are ignored; white space around a uuid is
    dropped. For :meth:`KognicSource.download_scenes`, which reads the list through once
    before fetching anything, so a malformed line stops the run before any output exists.

    Args:
        path: the list file, or ``"-"``.
        stdin: what ``"-"`` reads (``sys.stdin``'s bytes when omitted).

    Raises:
        ConfigError: the file cannot be read, or a line is not a scene uuid
            (``origin:LINE: ...``).
    """
    with open_list(path, what="scene list", stdin=stdin) as (lines, origin):
        for number, line in list_lines(lines, origin=origin):
            scene = line.strip()
            if (problem := scene_uuid_problem(scene)) is not None:
                raise ConfigError(f"{origin}:{number}: {problem}")
            yield scene


def annotation_item(scene_uuid: str, annotation_type: str, created: str) -> dict[str, Any]:
    """The :class:`Item` fields of one scene's annotation: its entry, version and time."""
    try:
        mtime: datetime | None = parse_time(created) if created else None
    except ConfigError:
        mtime = None
    return {
        "key": scene_uuid,
        "name": f"{scene_uuid}.json",
        "version": created,
        "mtime": mtime,
        "fields": {
            "scene_uuid": scene_uuid,
            "annotation_type": annotation_type,
            "created": created,
        },
        "json": True,
    }


class SceneListing:
    """A list of scene uuids, one annotation type, as a pipeline source.

    Each item's fetch is the v1 single read; its ``created`` becomes the item's version
    then. A scene without that annotation (404) is that item's failure.

    Args:
        kognic: the source whose reads fetch the items.
        scenes: the scene uuids (an iterable, or an async one), read once.
        annotation_type: the annotation type.
        cartesian: ask for ISO 8855 rotated cuboids.
        spool_dir: where the checked copy of the list waits (the system's temp folder when
            ``None``).
    """

    def __init__(
        self,
        kognic: KognicSource,
        scenes: Iterable[str] | AsyncIterable[str],
        annotation_type: str,
        *,
        cartesian: bool,
        spool_dir: Path | None,
    ) -> None:
        self._kognic = kognic
        self._scenes = scenes
        self._type = annotation_type
        self._cartesian = cartesian
        self._spool_dir = spool_dir
        self._digest: str | None = None

    @property
    def fingerprint(self) -> Mapping[str, str]:
        if self._digest is None:
            raise AssertionError("the fingerprint is read once the list has been checked")
        return {
            "source": "kognic-scenes",
            "scenes": self._digest,
            "annotation_type": self._type,
            "cartesian": str(self._cartesian).lower(),
        }

    async def items(self) -> AsyncGenerator[Item, None]:
        async with _checked_copy(self._scenes, directory=self._spool_dir) as (copy, digest):
            self._digest = digest
            while lines := await anyio.to_thread.run_sync(_read_lines, copy):
                for line in lines:
                    yield Item(**annotation_item(line.decode().rstrip("\n"), self._type, ""))

    async def fetch(
        self, item: Item, target: ByteTarget, *, on_bytes: Callable[[int], None]
    ) -> Item:
        annotation = await self._kognic.get_annotation(
            item.key, self._type, cartesian=self._cartesian
        )
        await target.write(annotation.content)
        on_bytes(len(annotation.content))
        return Item(**annotation_item(item.key, self._type, annotation.created))


@asynccontextmanager
async def _checked_copy(
    scenes: Iterable[str] | AsyncIterable[str], *, directory: Path | None
) -> AsyncGenerator[tuple[BinaryIO, str], None]:
    """Check every scene uuid into a temporary file; yield it (rewound) and its digest."""
    copy: BinaryIO = await anyio.to_thread.run_sync(
        lambda: tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed below
    )
    try:
        digest = hashlib.sha256()
        if isinstance(scenes, AsyncIterable):
            batch: list[str] = []
            position = 0
            async for scene in scenes:
                position += 1
                batch.append(_checked(scene, position))
                if len(batch) == _LINES_PER_HOP:
                    await anyio.to_thread.run_sync(_write_lines, copy, digest, batch)
                    batch = []
            await anyio.to_thread.run_sync(_write_lines, copy, digest, batch)
        else:
            await anyio.to_thread.run_sync(_copy_all, scenes, copy, digest)
        await anyio.to_thread.run_sync(copy.seek, 0)
        yield copy, digest.hexdigest()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(copy.close)


def _checked(scene: object, position: int) -> str:
    text = scene.strip() if isinstance(scene, str) else ""
    problem = scene_uuid_problem(text) if isinstance(scene, str) else "not a string"
    if problem is not None:
        raise ConfigError(f"scene list item {position}: {problem}")
    return text


def _copy_all(scenes: Iterable[str], copy: BinaryIO, digest: Any) -> None:
    numbered = enumerate(scenes, start=1)
    while batch := [_checked(s, n) for n, s in itertools.islice(numbered, _LINES_PER_HOP)]:
        _write_lines(copy, digest, batch)


def _write_lines(copy: BinaryIO, digest: Any, scenes: list[str]) -> None:
    data = "".join(f"{scene}\n" for scene in scenes).encode()
    copy.write(data)
    digest.update(data)


def _read_lines(copy: BinaryIO) -> list[bytes]:
    return list(itertools.islice(copy, _LINES_PER_HOP))

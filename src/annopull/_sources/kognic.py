"""Kognic: list a project's (or batch's) annotations and fetch each one's OpenLABEL content.

The listing is paginated search over the input API; each item carries a signed storage URL
that is fetched without the Authorization header. Fetches fan out under the engine's
concurrency (:func:`annopull._pipeline.scheduler.fan_out`) while the next listing page is read, each
into a :class:`~annopull._pipeline.buffers.Spool`, then go one by one into a sink.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import orjson
import yarl

from annopull._config import KognicConfig
from annopull._errors import ApiError, ConfigError, NotFoundError
from annopull._pipeline.buffers import Spool
from annopull._pipeline.pull import Item, PullReport, Selection, Selector, parse_time, pull_through
from annopull._pipeline.scheduler import Fetched, fan_out, sole_error
from annopull._progress import Progress
from annopull._sinks.base import Sink
from annopull._transport.http import AuthProvider, ByteTarget, Transport

__all__ = ["Annotation", "AnnotationRef", "KognicSource"]

#: Listing pages re-read for fresh signed URLs that are kept, and for how long.
_FRESH_PAGES = 8
_FRESH_TTL = 60.0


@dataclass(frozen=True, slots=True)
class PageKey:
    """One listing page: the search URL, its cursor and its other query parameters."""

    url: str
    cursor: str | None
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AnnotationRef:
    """One listed annotation: where its content is, not the content itself."""

    scene_uuid: str
    annotation_type: str
    created: str
    uri: str = field(repr=False)
    #: The page that listed it, to re-read for a fresh ``uri``.
    page: PageKey = field(repr=False, compare=False)
    #: Why this item cannot be fetched (a malformed listing entry), or ``None``.
    problem: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Annotation:
    """One annotation with its OpenLABEL content, as the storage served it."""

    scene_uuid: str
    annotation_type: str
    created: str
    content: bytes = field(repr=False)

    def json(self) -> Any:
        """The content parsed (``{"openlabel": {...}}``)."""
        return orjson.loads(self.content)


class KognicSource:
    """Kognic's annotations: listing, single fetches, streaming iteration, bulk download.

    Made by :attr:`annopull.Client.kognic`.
    """

    def __init__(self, *, transport: Transport, config: KognicConfig, auth: AuthProvider):
        self._transport = transport
        self._config = config
        self._auth = auth
        self._fresh: OrderedDict[PageKey, tuple[float, dict[str, str]]] = OrderedDict()
        self._fresh_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"KognicSource(api_url={self._config.api_url!r})"

    def search_url(self, project: str, annotation_type: str, *, batch: str | None = None) -> str:
        """The search URL of a project's (or one batch's) annotations of one type."""
        base = f"{self._config.api_url.rstrip('/')}/v1/annotations/projects/{_seg(project)}"
        if batch is not None:
            base += f"/batch/{_seg(batch)}"
        return f"{base}/annotation-type/{_seg(annotation_type)}/search"

    async def list_annotations(
        self,
        project: str,
        annotation_type: str,
        *,
        batch: str | None = None,
        cartesian: bool = False,
    ) -> AsyncGenerator[AnnotationRef, None]:
        """Yield every annotation of the project (or batch), page by page.

        Args:
            project: the project identifier.
            annotation_type: the annotation type.
            batch: only this batch of the project.
            cartesian: ask for ISO 8855 rotated cuboids (``useDefaultCartesian=true``).

        Raises:
            NotFoundError: the project, batch or annotation type does not exist.
        """
        url = self.search_url(project, annotation_type, batch=batch)
        extra = {"useDefaultCartesian": "true"} if cartesian else {}
        cursor: str | None = None
        # Every cursor seen: a server that hands back one it gave before (A -> B -> A) would
        # page forever. A cursor is short; a million scenes are a few thousand pages.
        seen: set[str | None] = {None}
        while True:
            refs, cursor_next = await self._page(url, cursor, extra)
            for ref in refs:
                yield ref
            if cursor_next is None:
                return
            if cursor_next in seen:
                raise ApiError(
                    f"listing went back to an earlier cursor {cursor_next[:80]!r}", url=url
                )
            seen.add(cursor_next)
            cursor = cursor_next

    async def get_annotation(
        self, scene_uuid: str, annotation_type: str, *, cartesian: bool = False
    ) -> Annotation:
        """Fetch one scene's annotation of one type, content included.

        Args:
            scene_uuid: the scene.
            annotation_type: the annotation type.
            cartesian: ask for ISO 8855 rotated cuboids (``useDefaultCartesian=true``).

        Raises:
            NotFoundError: the scene has no annotation of that type.
        """
        url = (
            f"{self._config.api_url.rstrip('/')}/v1/annotations/inputs/{_seg(scene_uuid)}"
            f"/annotation-type/{_seg(annotation_type)}"
        )
        params = {"useDefaultCartesian": "true"} if cartesian else {}
        answer = await self._transport.request_json("GET", url, auth=self._auth, params=params)
        body = _unwrap(answer)
        if not isinstance(body, dict) or "content" not in body:
            raise ApiError("annotation answer holds no content", url=url, item=scene_uuid)
        return Annotation(
            scene_uuid=str(body.get("inputUuid", scene_uuid)),
            annotation_type=str(body.get("annotationType", annotation_type)),
            created=str(body.get("created", "")),
            content=orjson.dumps(body["content"]),
        )

    @asynccontextmanager
    async def project_annotations(
        self,
        project: str,
        annotation_type: str,
        *,
        batch: str | None = None,
        selection: Selection | None = None,
        concurrency: int | None = None,
        cartesian: bool = False,
    ) -> AsyncIterator[AsyncIterator[Annotation]]:
        """Stream a project's annotations, contents fetched concurrently.

        A context manager, because the fetches run in tasks that must end with it::

            async with client.kognic.project_annotations("P", "T") as annotations:
                async for ann in annotations:
                    ...

        Annotations come in completion order. Leaving the block early cancels what is in
        flight. An item that fails for good raises :class:`TransferError` from the block.

        Args:
            project: the project identifier.
            annotation_type: the annotation type.
            batch: only this batch.
            selection: filters (since, skip-existing, shard).
            concurrency: fetches in flight; the engine's setting by default.
            cartesian: ask for ISO 8855 rotated cuboids.
        """
        limit = concurrency or self._transport.engine.concurrency
        listing = _Listing(self, project, annotation_type, batch=batch, cartesian=cartesian)
        send, receive = anyio.create_memory_object_stream[Annotation](limit)

        async def fetch(item: _KognicItem) -> Annotation:
            # The app asked for the content as bytes: it is held in memory whole.
            spool = Spool(memory_limit=sys.maxsize)
            await self._fetch(item.ref, spool, on_bytes=None)
            ref = item.ref
            return Annotation(
                scene_uuid=ref.scene_uuid,
                annotation_type=ref.annotation_type,
                created=ref.created,
                content=spool.getvalue(),
            )

        async def forward(batch: list[Fetched[_KognicItem, Annotation]]) -> None:
            for fetched in batch:
                await send.send(fetched.result)

        async def selected(selector: Selector) -> AsyncIterator[_KognicItem]:
            async with aclosing(listing.items()) as items:
                async for item in items:
                    if selector.wants(item):
                        yield item

        async def run() -> None:
            async with send, Selector(selection or Selection()) as selector:
                await fan_out(selected(selector), fetch, forward, concurrency=limit)

        with sole_error():
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(run)
                yield receive
                tg.cancel_scope.cancel()

    async def download(
        self,
        project: str,
        annotation_type: str,
        *,
        sink: Sink,
        batch: str | None = None,
        selection: Selection | None = None,
        resume: bool = False,
        cartesian: bool = False,
        progress: Progress | None = None,
        spool_dir: Path | None = None,
    ) -> PullReport:
        """Download every (selected) annotation into ``sink`` and report what happened.

        One entry ``{scene_uuid}.json`` per annotation, the content byte for byte. Items that
        fail for good are listed in the report and the rest goes on; anything else (the
        listing failing, the sink failing, a cancellation) stops the run, and what arrived
        stays in the output, journaled for ``resume``.

        Args:
            project: the project identifier.
            annotation_type: the annotation type.
            sink: where entries go (:class:`ZipSink`, :class:`DirectorySink`, :class:`JsonlSink`).
            batch: only this batch.
            selection: filters (since, skip-existing, shard).
            resume: continue the interrupted run whose journal is beside the output.
            cartesian: ask for ISO 8855 rotated cuboids.
            progress: where progress goes.
            spool_dir: where items larger than the engine's ``spool_memory`` wait on disk.
        """
        return await pull_through(
            self._transport,
            _Listing(self, project, annotation_type, batch=batch, cartesian=cartesian),
            sink,
            selection=selection,
            resume=resume,
            progress=progress,
            spool_dir=spool_dir,
        )

    # -- internals ---------------------------------------------------------------------
    async def _page(
        self, url: str, cursor: str | None, extra: Mapping[str, str]
    ) -> tuple[list[AnnotationRef], str | None]:
        params = dict(extra)
        if cursor is not None:
            params["cursorId"] = cursor
        body = await self._transport.request_json("GET", url, auth=self._auth, params=params)
        if not isinstance(body, dict) or not isinstance(body.get("data", []), list):
            raise ApiError("search answer is not a page of annotations", url=url)
        key = PageKey(url, cursor, tuple(sorted(extra.items())))
        refs = [_ref(item, key, index) for index, item in enumerate(body.get("data") or [])]
        next_cursor = (body.get("metadata") or {}).get("nextCursorId")
        return refs, None if next_cursor is None else str(next_cursor)

    async def _fetch(
        self, ref: AnnotationRef, target: ByteTarget, *, on_bytes: Callable[[int], None] | None
    ) -> None:
        if ref.problem is not None:
            raise ApiError(ref.problem, item=ref.scene_uuid)
        last = ref.uri

        async def refresh() -> str:
            nonlocal last
            last = await self._fresh_uri(ref, stale=last)
            return last

        await self._transport.download(
            ref.uri, target, refresh_url=refresh, on_bytes=on_bytes, item=ref.scene_uuid
        )

    async def _fresh_uri(self, ref: AnnotationRef, *, stale: str) -> str:
        """A fresh signed URL for ``ref``: its listing page, read again (and kept a minute).

        A kept page whose URL for ``ref`` is ``stale`` (the one storage just refused) is
        read again: handing the same expired URL back would only burn the refresh budget.
        """
        async with self._fresh_lock:
            cached = self._fresh.get(ref.page)
            if (
                cached is None
                or time.monotonic() - cached[0] > _FRESH_TTL
                or cached[1].get(ref.scene_uuid) == stale
            ):
                page = ref.page
                refs, _ = await self._page(page.url, page.cursor, dict(page.params))
                cached = (time.monotonic(), {r.scene_uuid: r.uri for r in refs})
                self._fresh[ref.page] = cached
                while len(self._fresh) > _FRESH_PAGES:
                    self._fresh.popitem(last=False)
        uri = cached[1].get(ref.scene_uuid)
        if uri is None:
            raise NotFoundError("scene no longer listed", item=ref.scene_uuid)
        return uri


def _seg(value: str) -> str:
    return quote(value, safe="")


def _unwrap(body: Any) -> Any:
    """The payload of an enveloped answer: ``data`` when there is no ``metadata``."""
    if isinstance(body, dict) and "data" in body and "metadata" not in body:
        return body["data"]
    return body


def _ref(item: Any, page: PageKey, index: int) -> AnnotationRef:
    """One listed item; what is wrong with it is its own failure, not the listing's."""
    if not isinstance(item, dict):
        return _malformed(page, index, "listed item is not an object")
    try:
        ref = AnnotationRef(
            scene_uuid=str(item["inputUuid"]),
            annotation_type=str(item["annotationType"]),
            created=str(item["created"]),
            uri=str(item["uri"]),
            page=page,
        )
    except KeyError as exc:
        scene = item.get("inputUuid")
        if isinstance(scene, str) and 0 < len(scene) <= _MAX_FIELD:
            return _malformed(page, index, f"listed item has no {exc.args[0]!r}", scene=scene)
        return _malformed(page, index, f"listed item has no {exc.args[0]!r}")
    problem = _problem(ref)
    return ref if problem is None else replace(ref, problem=problem)


#: Longest scene uuid or ``created`` taken from a listing; real ones are 36 and ~30 long.
_MAX_FIELD = 1024


def _problem(ref: AnnotationRef) -> str | None:
    if not ref.scene_uuid or len(ref.scene_uuid) > _MAX_FIELD:
        return f"scene uuid is {len(ref.scene_uuid)} characters long"
    if len(ref.created) > _MAX_FIELD:
        return f"created is {len(ref.created)} characters long"
    if any(ord(c) < 0x20 for c in ref.scene_uuid):
        return "scene uuid holds a control character"
    try:
        uri = yarl.URL(ref.uri)
        uri.port  # noqa: B018 - yarl checks the port range only when asked
    except ValueError as exc:
        return f"content uri is not usable: {exc}"
    if uri.scheme not in ("http", "https") or not uri.host:
        return "content uri is not an http(s) URL with a host"
    return None


def _malformed(
    page: PageKey, index: int, problem: str, *, scene: str | None = None
) -> AnnotationRef:
    where = f"page {page.cursor or 'first'}, item {index + 1}"
    return AnnotationRef(
        scene_uuid=scene or f"<{where}>",
        annotation_type="",
        created="",
        uri="",
        page=page,
        problem=f"{problem} ({where})",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _KognicItem(Item):
    """A listed annotation as the pipeline sees it."""

    ref: AnnotationRef = field(repr=False)


def _item(ref: AnnotationRef) -> _KognicItem:
    try:
        mtime: datetime | None = parse_time(ref.created)
    except ConfigError:
        mtime = None
    return _KognicItem(
        key=ref.scene_uuid,
        name=f"{ref.scene_uuid}.json",
        version=ref.created,
        mtime=mtime,
        fields={
            "scene_uuid": ref.scene_uuid,
            "annotation_type": ref.annotation_type,
            "created": ref.created,
        },
        json=True,
        ref=ref,
    )


class _Listing:
    """A project's (or batch's) annotations of one type, as a pipeline source."""

    def __init__(
        self,
        kognic: KognicSource,
        project: str,
        annotation_type: str,
        *,
        batch: str | None,
        cartesian: bool,
    ) -> None:
        self._kognic = kognic
        self._project = project
        self._type = annotation_type
        self._batch = batch
        self._cartesian = cartesian

    @property
    def fingerprint(self) -> Mapping[str, str]:
        return {
            "source": "kognic",
            "project": self._project,
            "batch": self._batch or "",
            "annotation_type": self._type,
            "cartesian": str(self._cartesian).lower(),
        }

    async def items(self) -> AsyncGenerator[_KognicItem, None]:
        listing = self._kognic.list_annotations(
            self._project, self._type, batch=self._batch, cartesian=self._cartesian
        )
        async with aclosing(listing):
            async for ref in listing:
                yield _item(ref)

    async def fetch(
        self, item: _KognicItem, target: ByteTarget, *, on_bytes: Callable[[int], None]
    ) -> None:
        await self._kognic._fetch(item.ref, target, on_bytes=on_bytes)

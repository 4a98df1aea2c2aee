"""Kognic: list a project's (or batch's) annotations and fetch each one's OpenLABEL content.

The listing is paginated search over the input API; each item carries a signed storage URL
that is fetched without the Authorization header. Fetches fan out under the engine's
concurrency (:func:`annopull._pipeline.scheduler.fan_out`) while the next listing page is read, each
into a :class:`~annopull._pipeline.buffers.Spool`, then go one by one into a sink.
"""

from __future__ import annotations

import re
import sys
import time
from collections import OrderedDict
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import anyio
import orjson
import yarl

from annopull._config import KognicConfig
from annopull._errors import ApiError, NotFoundError
from annopull._pipeline.buffers import Spool
from annopull._pipeline.pull import (
    Item,
    ItemT,
    PullReport,
    Selection,
    Selector,
    Source,
    pull_through,
)
from annopull._pipeline.scheduler import Fetched, fan_out, sole_error
from annopull._pipeline.workers import WorkerMode
from annopull._progress import Progress
from annopull._sinks.base import Sink
from annopull._sources.kognic_reads import (
    Partial,
    SceneAnnotation,
    SceneListing,
    annotation_item,
    parse_partial,
    parse_partials,
    single_answer,
)
from annopull._sources.kognic_transform import StagedSource, Transform, kognic_stage
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
    #: ``uri`` as the listing's check parsed it, handed to the request as is: parsing a
    #: long signed URL costs more than the rest of an item's bookkeeping, so it is done once.
    parsed_uri: yarl.URL | None = field(default=None, repr=False, compare=False)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class _StageOptions:
    """What runs on each annotation between fetch and write (nothing by default)."""

    transform: Transform | None = None
    validate: bool = False
    workers: int | None = None
    mode: WorkerMode = "process"


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
        extra = _cartesian(cartesian)
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
        """Fetch one scene's annotation of one type, content included (the v1 single read).

        The content comes inline in the answer, so its bytes are orjson's re-serialisation
        of it (compact), not the storage's bytes; parsed in a worker thread when large. The
        answer is read up to the engine's ``max_answer_bytes``.

        Args:
            scene_uuid: the scene.
            annotation_type: the annotation type.
            cartesian: ask for ISO 8855 rotated cuboids (``useDefaultCartesian=true``).

        Raises:
            NotFoundError: the scene has no such annotation (404).
            ApiError: the answer holds no content.
        """
        url = (
            f"{self._config.api_url.rstrip('/')}/v1/annotations/inputs/{_seg(scene_uuid)}"
            f"/annotation-type/{_seg(annotation_type)}"
        )
        answer = await self._transport.request_json(
            "GET",
            url,
            auth=self._auth,
            params=_cartesian(cartesian),
            item=scene_uuid,
            decode=single_answer,
        )
        if answer is None:
            raise ApiError("annotation answer holds no content", url=url, item=scene_uuid)
        body, content = answer
        return Annotation(
            scene_uuid=str(body.get("inputUuid", scene_uuid)),
            annotation_type=str(body.get("annotationType", annotation_type)),
            created=str(body.get("created", "")),
            content=content,
        )

    async def get_annotation_for_input(
        self, input_uuid: str, *, cartesian: bool = False
    ) -> SceneAnnotation:
        """Fetch the annotation of one input (``v2/inputs/{uuid}/annotation``), content included.

        Args:
            input_uuid: the input (a scene in one annotation request).
            cartesian: ask for ISO 8855 rotated cuboids (``useDefaultCartesian=true``).

        Raises:
            NotFoundError: the input has no annotation (404).
            InvalidResponseError: the answer is not a partial annotation.
        """
        url = f"{self._config.api_url.rstrip('/')}/v2/inputs/{_seg(input_uuid)}/annotation"

        async def describe() -> Partial:
            body = await self._get(url, cartesian=cartesian, item=input_uuid)
            return parse_partial(body, url=url)

        return await self._with_content(await describe(), describe)

    async def get_annotations_for_scene(
        self, scene_uuid: str, *, cartesian: bool = False
    ) -> list[SceneAnnotation]:
        """Fetch every annotation of one scene (``v2/scenes/{uuid}/annotations``).

        Contents are fetched concurrently, at most the engine's ``concurrency`` at once;
        the list keeps the answer's order.

        Args:
            scene_uuid: the scene.
            cartesian: ask for ISO 8855 rotated cuboids (``useDefaultCartesian=true``).

        Raises:
            NotFoundError: the scene does not exist (404).
            InvalidResponseError: the answer is not a list of partial annotations.
        """
        url = f"{self._config.api_url.rstrip('/')}/v2/scenes/{_seg(scene_uuid)}/annotations"

        async def describe_all() -> list[Partial]:
            body = await self._get(url, cartesian=cartesian, item=scene_uuid)
            return parse_partials(body, url=url)

        partials = await describe_all()
        results: list[SceneAnnotation | None] = [None] * len(partials)
        limiter = anyio.CapacityLimiter(self._transport.engine.concurrency)

        async def fetch(index: int, partial: Partial) -> None:
            async def describe() -> Partial:
                for fresh in await describe_all():
                    if fresh.input_uuid == partial.input_uuid:
                        return fresh
                raise NotFoundError("annotation no longer listed", url=url, item=partial.input_uuid)

            async with limiter:
                results[index] = await self._with_content(partial, describe)

        with sole_error():
            async with anyio.create_task_group() as tg:
                for index, partial in enumerate(partials):
                    tg.start_soon(fetch, index, partial)
        return [result for result in results if result is not None]

    async def get_annotation_by_id(
        self, annotation_id: str, *, iso_boxes: bool = False
    ) -> SceneAnnotation:
        """Fetch one annotation by its id, from the annotation-integration API.

        Args:
            annotation_id: the annotation's id.
            iso_boxes: ask for ISO 8855 rotated cuboids (``isoBoxes=true``).

        Raises:
            NotFoundError: no such annotation, or it was invalidated (404).
            InvalidResponseError: the answer is not an annotation.
        """
        base = self._config.annotation_integration_url.rstrip("/")
        url = f"{base}/v1/annotations/{_seg(annotation_id)}"
        params = {"isoBoxes": "true"} if iso_boxes else {}

        async def describe() -> Partial:
            body = await self._transport.request_json(
                "GET", url, auth=self._auth, params=params, item=annotation_id
            )
            return parse_partial(body, url=url, by_id=True)

        return await self._with_content(await describe(), describe)

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
        transform: Transform | None = None,
        validate: bool = False,
        workers: int | None = None,
        workers_mode: WorkerMode = "process",
    ) -> PullReport:
        """Download every (selected) annotation into ``sink`` and report what happened.

        One entry ``{scene_uuid}.json`` per annotation, the content byte for byte (or what
        ``transform`` made of it). Items that fail for good are listed in the report and the
        rest goes on; anything else (the listing failing, the sink failing, a cancellation)
        stops the run, and what arrived stays in the output, journaled for ``resume``.

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
            transform: converts each annotation while the others download: gets a
                :class:`ParsedAnnotation`, returns bytes, str, a dict or list (JSON), a
                pydantic model, :class:`~annopull.Renamed` (a new entry name too) or
                ``None`` (left out, counted in ``left_out``). What it raises is that item's
                failure. Runs in worker processes: a module-level function.
            validate: check each document against kognic-openlabel's
                ``OpenLabelAnnotation`` (before ``transform``); an invalid one is a failure
                and left out. Needs ``pip install 'annopull[openlabel]'``.
            workers: processes (or threads) for ``transform`` and ``validate``; the CPU count
                by default.
            workers_mode: ``"process"``, or ``"thread"`` for a cheap function (or one that
                cannot be pickled).

        Raises:
            ConfigError: ``validate`` without kognic-openlabel; a ``transform`` that cannot
                go to worker processes; ``workers`` out of range.
        """
        listing = _Listing(self, project, annotation_type, batch=batch, cartesian=cartesian)
        return await self._pull(
            listing,
            sink,
            selection=selection,
            resume=resume,
            progress=progress,
            spool_dir=spool_dir,
            stage=_StageOptions(
                transform=transform, validate=validate, workers=workers, mode=workers_mode
            ),
        )

    async def download_scenes(
        self,
        scene_uuids: Iterable[str] | AsyncIterable[str],
        annotation_type: str,
        *,
        sink: Sink,
        selection: Selection | None = None,
        resume: bool = False,
        cartesian: bool = False,
        progress: Progress | None = None,
        spool_dir: Path | None = None,
        transform: Transform | None = None,
        validate: bool = False,
        workers: int | None = None,
        workers_mode: WorkerMode = "process",
    ) -> PullReport:
        """Download one annotation type of every scene of a list into ``sink``.

        One entry ``{scene_uuid}.json`` per scene: the v1 single read's content, as
        re-serialised by orjson (see :meth:`get_annotation`), its ``created`` the entry's
        version. A scene without that annotation is that item's failure, and the rest goes
        on. The list is read through once (each uuid checked, the list digested for
        ``resume``, into a temporary copy) before anything is fetched, then lazily.

        Args:
            scene_uuids: the scene uuids, e.g. :func:`read_scene_list`'s.
            annotation_type: the annotation type.
            sink: where entries go (:class:`ZipSink`, :class:`DirectorySink`, :class:`JsonlSink`).
            selection: filters (since, skip-existing, shard); a scene's ``created`` is known
                only once fetched, so ``since`` and skip-existing save writes, not requests.
            resume: continue the interrupted run of the same list and type.
            cartesian: ask for ISO 8855 rotated cuboids.
            progress: where progress goes.
            spool_dir: where large items, and the list's checked copy, wait on disk.
            transform, validate, workers, workers_mode: as for :meth:`download`.

        Raises:
            ConfigError: an entry of the list is not a scene uuid (before anything is
                fetched or written); as for :meth:`download`.
        """
        listing = SceneListing(
            self, scene_uuids, annotation_type, cartesian=cartesian, spool_dir=spool_dir
        )
        return await self._pull(
            listing,
            sink,
            selection=selection,
            resume=resume,
            progress=progress,
            spool_dir=spool_dir,
            stage=_StageOptions(
                transform=transform, validate=validate, workers=workers, mode=workers_mode
            ),
        )

    async def _pull(
        self,
        listing: Source[ItemT],
        sink: Sink,
        *,
        selection: Selection | None,
        resume: bool,
        progress: Progress | None,
        spool_dir: Path | None,
        stage: _StageOptions,
    ) -> PullReport:
        """Pull ``listing`` into ``sink`` through the transform/validate workers, if any."""
        async with kognic_stage(
            transform=stage.transform,
            validate=stage.validate,
            workers=stage.workers,
            workers_mode=stage.mode,
            spool_memory=self._transport.engine.spool_memory,
        ) as run_stage:
            return await pull_through(
                self._transport,
                listing
                if run_stage is None
                else StagedSource(listing, transform=stage.transform, validate=stage.validate),
                sink,
                selection=selection,
                resume=resume,
                stage=run_stage,
                progress=progress,
                spool_dir=spool_dir,
            )

    # -- internals ---------------------------------------------------------------------
    async def _get(self, url: str, *, cartesian: bool, item: str) -> Any:
        return await self._transport.request_json(
            "GET", url, auth=self._auth, params=_cartesian(cartesian), item=item
        )

    async def _with_content(
        self, partial: Partial, describe: Callable[[], Awaitable[Partial]]
    ) -> SceneAnnotation:
        """``partial`` with its content, fetched from its signed URL like a listed item's:
        an expired URL is replaced by reading the annotation again (``describe``)."""

        async def refresh() -> str:
            return (await describe()).uri

        spool = Spool(memory_limit=sys.maxsize)  # asked for as bytes: held in memory whole
        await self._transport.download(
            partial.uri, spool, refresh_url=refresh, item=partial.input_uuid
        )
        return partial.with_content(spool.getvalue())

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
            ref.uri,
            target,
            parsed=ref.parsed_uri,
            refresh_url=refresh,
            on_bytes=on_bytes,
            item=ref.scene_uuid,
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


def _cartesian(cartesian: bool) -> dict[str, str]:
    return {"useDefaultCartesian": "true"} if cartesian else {}


def _ref(item: Any, page: PageKey, index: int) -> AnnotationRef:
    """One listed item; what is wrong with it is its own failure, not the listing's."""
    if not isinstance(item, dict):
        return _malformed(page, index, "listed item is not an object")
    try:
        scene_uuid = str(item["inputUuid"])
        annotation_type = str(item["annotationType"])
        created = str(item["created"])
        uri = str(item["uri"])
    except KeyError as exc:
        scene = item.get("inputUuid")
        if isinstance(scene, str) and 0 < len(scene) <= _MAX_FIELD:
            return _malformed(page, index, f"listed item has no {exc.args[0]!r}", scene=scene)
        return _malformed(page, index, f"listed item has no {exc.args[0]!r}")
    parsed, problem = _parse_uri(uri)
    return AnnotationRef(
        scene_uuid=scene_uuid,
        annotation_type=annotation_type,
        created=created,
        uri=uri,
        page=page,
        problem=_problem(scene_uuid, created) or problem,
        parsed_uri=parsed,
    )


#: Longest scene uuid or ``created`` taken from a listing; real ones are 36 and ~30 long.
_MAX_FIELD = 1024


def _problem(scene_uuid: str, created: str) -> str | None:
    if not scene_uuid or len(scene_uuid) > _MAX_FIELD:
        return f"scene uuid is {len(scene_uuid)} characters long"
    if len(created) > _MAX_FIELD:
        return f"created is {len(created)} characters long"
    if _CONTROL.search(scene_uuid):
        return "scene uuid holds a control character"
    return None


#: A C0 control character (NUL, newline, escape, ...): one regex search per listed item,
#: where a per-character test cost more than the rest of the item's check.
_CONTROL: Final = re.compile(r"[\x00-\x1f]")


def _parse_uri(uri: str) -> tuple[yarl.URL | None, str | None]:
    """``uri`` parsed as the request will send it, or why it cannot be requested."""
    try:
        parsed = yarl.URL(uri)
        parsed.port  # noqa: B018 - yarl checks the port range only when asked
    except ValueError as exc:
        return None, f"content uri is not usable: {exc}"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None, "content uri is not an http(s) URL with a host"
    return parsed, None


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
    return _KognicItem(**annotation_item(ref.scene_uuid, ref.annotation_type, ref.created), ref=ref)


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

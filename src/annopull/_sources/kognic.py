"""Kognic: list a project's (or batch's) annotations and fetch each one's OpenLABEL content.

The listing is paginated search over the input API; each item carries a signed storage URL
that is fetched without the Authorization header. Fetches fan out under the engine's
concurrency (:func:`annopull._pipeline.scheduler.fan_out`) while the next listing page is read, each
into a :class:`~annopull._pipeline.buffers.Spool`, then go one by one into a sink.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import orjson

from annopull._config import KognicConfig
from annopull._errors import AnnopullError, ApiError, ConfigError, NotFoundError, TransferError
from annopull._pipeline.buffers import Spool
from annopull._pipeline.scheduler import Fetched, fan_out, sole_error
from annopull._progress import NullProgress, Progress
from annopull._sinks.base import EntryInfo, Sink
from annopull._transport.http import AuthProvider, Transport

__all__ = [
    "Annotation",
    "AnnotationRef",
    "DownloadReport",
    "Failure",
    "KognicSource",
    "Selection",
    "parse_shard",
    "parse_time",
]

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
class Failure:
    """An item that did not arrive, and why."""

    item: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class DownloadReport:
    """What a bulk download did."""

    output: str
    listed: int
    downloaded: int
    skipped: int
    failures: tuple[Failure, ...]
    bytes: int
    elapsed: float
    resumed: bool

    @property
    def ok(self) -> bool:
        """True when every wanted item arrived."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the CLI's ``--summary``)."""
        return {
            "status": "complete" if self.ok else "partial",
            "output": self.output,
            "listed": self.listed,
            "downloaded": self.downloaded,
            "skipped": self.skipped,
            "failed": [{"item": f.item, "reason": f.reason} for f in self.failures],
            "bytes": self.bytes,
            "elapsed_s": round(self.elapsed, 3),
            "resumed": self.resumed,
        }


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which listed annotations to fetch.

    Args:
        since: only annotations created after this moment.
        skip: a lookup of versions already held elsewhere (``key -> created``); an
            annotation whose ``created`` equals its entry there is skipped.
        shard: ``(k, n)``: only scenes whose uuid hashes to shard ``k`` of ``n`` (1-based).
    """

    since: datetime | None = None
    skip: Callable[[str], str | None] | None = None
    shard: tuple[int, int] | None = None

    def wants(self, ref: AnnotationRef) -> bool:
        """Whether ``ref`` passes every filter."""
        if self.shard is not None and not in_shard(ref.scene_uuid, self.shard):
            return False
        if self.since is not None and parse_time(ref.created) <= self.since:
            return False
        return not (self.skip is not None and _same_time(self.skip(ref.scene_uuid), ref.created))


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as an aware datetime (UTC when it names no zone).

    Raises:
        ConfigError: ``text`` is not an ISO 8601 time.
    """
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ConfigError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _same_time(held: str | None, created: str) -> bool:
    if held is None:
        return False
    if held == created:
        return True
    try:
        return abs(parse_time(held).timestamp() - parse_time(created).timestamp()) < 0.001
    except ConfigError:
        return False


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``.

    Raises:
        ConfigError: not ``K/N`` with ``1 <= K <= N``.
    """
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ConfigError(f"--shard takes K/N with 1 <= K <= N, got {text!r}")
    return int(k), int(n)


def in_shard(scene_uuid: str, shard: tuple[int, int]) -> bool:
    """Stable across processes and machines: a hash of the uuid, not Python's ``hash``."""
    k, n = shard
    digest = hashlib.blake2b(scene_uuid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n == k - 1


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
        while True:
            refs, cursor_next = await self._page(url, cursor, extra)
            for ref in refs:
                yield ref
            if cursor_next is None:
                return
            if cursor_next == cursor:
                # A server that hands back the cursor it was given would loop forever.
                raise ApiError(f"listing did not advance past cursor {cursor!r}", url=url)
            cursor = cursor_next

    async def get_annotation(self, scene_uuid: str, annotation_type: str) -> Annotation:
        """Fetch one scene's annotation of one type, content included."""
        url = (
            f"{self._config.api_url.rstrip('/')}/v1/annotations/inputs/{_seg(scene_uuid)}"
            f"/annotation-type/{_seg(annotation_type)}"
        )
        body = _unwrap(await self._transport.request_json("GET", url, auth=self._auth))
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
            selection: filters (since, skip, shard).
            concurrency: fetches in flight; the engine's setting by default.
        """
        limit = concurrency or self._transport.engine.concurrency
        listing = self.list_annotations(project, annotation_type, batch=batch)
        refs = self._filtered(listing, selection or Selection(), None)
        send, receive = anyio.create_memory_object_stream[Annotation](limit)

        async def fetch(ref: AnnotationRef) -> Annotation:
            # The app asked for the content as bytes: it is held in memory whole.
            spool = Spool(memory_limit=sys.maxsize)
            await self._fetch(ref, spool, NullProgress())
            return Annotation(
                scene_uuid=ref.scene_uuid,
                annotation_type=ref.annotation_type,
                created=ref.created,
                content=spool.getvalue(),
            )

        async def forward(batch: list[Fetched[AnnotationRef, Annotation]]) -> None:
            for fetched in batch:
                await send.send(fetched.result)

        async def run() -> None:
            async with send:
                await fan_out(refs, fetch, forward, concurrency=limit)

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
    ) -> DownloadReport:
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
        run = _Run(progress or NullProgress())
        fingerprint = {
            "source": "kognic",
            "project": project,
            "batch": batch or "",
            "annotation_type": annotation_type,
            "cartesian": str(cartesian).lower(),
            "shard": "/".join(map(str, selection.shard)) if selection and selection.shard else "",
            # A resume with another --since would leave a mix of two selections in one output.
            "since": selection.since.isoformat() if selection and selection.since else "",
        }
        listing = self.list_annotations(project, annotation_type, batch=batch, cartesian=cartesian)
        # The first page is read before any output exists, so a wrong project or bad
        # credentials leave nothing behind.
        first = await anext(listing, None)
        resumed = await sink.open(fingerprint=fingerprint, resume=resume)
        engine = self._transport.engine
        refs = self._filtered(
            _prepend(first, listing), selection or Selection(), run, sink.version_of
        )

        async def fetch(ref: AnnotationRef) -> Spool | None:
            spool = Spool(memory_limit=engine.spool_memory, directory=spool_dir)
            try:
                await self._fetch(ref, spool, run.progress)
            except AnnopullError as exc:
                await spool.aclose()
                run.fail(ref.scene_uuid, exc)
                return None
            except BaseException:
                await spool.aclose()
                raise
            return spool

        async def write(batch: list[Fetched[AnnotationRef, Spool]]) -> None:
            try:
                await _write_batch(sink, batch, run)
            finally:
                for fetched in batch:
                    await fetched.result.aclose()

        async def discard(spool: Spool) -> None:
            await spool.aclose()

        try:
            await fan_out(refs, fetch, write, concurrency=engine.concurrency, discard=discard)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await sink.abort()
            raise
        # Shielded: a stop signal arriving while the output is being finished must not leave
        # a complete archive looking interrupted; the run then ends as a success.
        with anyio.CancelScope(shield=True):
            result = await sink.close()
        return run.report(result.output, resumed=resumed)

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
        refs = [_ref(item, key, url) for item in body.get("data") or []]
        next_cursor = (body.get("metadata") or {}).get("nextCursorId")
        return refs, None if next_cursor is None else str(next_cursor)

    async def _filtered(
        self,
        refs: AsyncGenerator[AnnotationRef, None],
        selection: Selection,
        run: _Run | None,
        held: Callable[[str], str | None] | None = None,
    ) -> AsyncGenerator[AnnotationRef, None]:
        async with aclosing(refs):
            async for ref in refs:
                if run is not None:
                    run.progress.listed()
                already = held is not None and held(ref.scene_uuid) is not None
                if not already and selection.wants(ref):
                    yield ref
                elif run is not None:
                    run.skip()
        if run is not None:
            run.progress.listing_done()

    async def _fetch(self, ref: AnnotationRef, spool: Spool, progress: Progress) -> None:
        last = ref.uri

        async def refresh() -> str:
            nonlocal last
            last = await self._fresh_uri(ref, stale=last)
            return last

        await self._transport.download(
            ref.uri,
            spool,
            refresh_url=refresh,
            on_bytes=progress.bytes,
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


class _Run:
    """Counters and failures of one download."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.started = time.monotonic()
        self.listed = 0
        self.downloaded = 0
        self.skipped = 0
        self.bytes = 0
        self.failures: list[Failure] = []

    def skip(self) -> None:
        self.listed += 1
        self.skipped += 1
        self.progress.item_done(skipped=True)

    def done(self, size: int) -> None:
        self.listed += 1
        self.downloaded += 1
        self.bytes += size
        self.progress.item_done()

    def settle(self, item: str, size: int, outcome: str | AnnopullError) -> None:
        """Count a written item, or a failed one when ``outcome`` is its error."""
        if isinstance(outcome, AnnopullError):
            self.fail(item, outcome)
        else:
            self.done(size)

    def fail(self, item: str, exc: AnnopullError) -> None:
        self.listed += 1
        self.failures.append(Failure(item=item, reason=str(exc)))
        self.progress.item_failed()

    def report(self, output: str, *, resumed: bool) -> DownloadReport:
        return DownloadReport(
            output=output,
            listed=self.listed,
            downloaded=self.downloaded,
            skipped=self.skipped,
            failures=tuple(self.failures),
            bytes=self.bytes,
            elapsed=time.monotonic() - self.started,
            resumed=resumed,
        )


async def _write_batch(sink: Sink, batch: list[Fetched[AnnotationRef, Spool]], run: _Run) -> None:
    """Write fetched items: those in memory together (one sink call), spilled ones streamed."""
    batch = _first_of_each_scene(sink, batch, run)
    small = [f for f in batch if f.result.in_memory]
    entries = [(_entry_info(f.item, f.result.size), f.result.getvalue()) for f in small]
    for fetched, outcome in zip(small, await sink.write_many(entries), strict=True):
        run.settle(fetched.item.scene_uuid, fetched.result.size, outcome)
    for fetched in batch:
        if fetched.result.in_memory:
            continue
        ref, spool = fetched.item, fetched.result
        written: str | TransferError
        try:
            written = await sink.write(_entry_info(ref, spool.size), spool.chunks())
        except TransferError as exc:
            written = exc
        run.settle(ref.scene_uuid, spool.size, written)


def _first_of_each_scene(
    sink: Sink, batch: list[Fetched[AnnotationRef, Spool]], run: _Run
) -> list[Fetched[AnnotationRef, Spool]]:
    """Drop scenes the output already holds: a listing that shifts while it is paged can
    name a scene twice, and the output must hold each scene once."""
    kept: dict[str, Fetched[AnnotationRef, Spool]] = {}
    for fetched in batch:
        scene = fetched.item.scene_uuid
        if scene in kept or sink.holds(scene):
            run.skip()
        else:
            kept[scene] = fetched
    return list(kept.values())


async def _prepend(
    first: AnnotationRef | None, rest: AsyncGenerator[AnnotationRef, None]
) -> AsyncGenerator[AnnotationRef, None]:
    async with aclosing(rest):
        if first is None:
            return
        yield first
        async for ref in rest:
            yield ref


def _seg(value: str) -> str:
    return quote(value, safe="")


def _unwrap(body: Any) -> Any:
    """The payload of an enveloped answer: ``data`` when there is no ``metadata``."""
    if isinstance(body, dict) and "data" in body and "metadata" not in body:
        return body["data"]
    return body


def _ref(item: Any, page: PageKey, url: str) -> AnnotationRef:
    try:
        return AnnotationRef(
            scene_uuid=str(item["inputUuid"]),
            annotation_type=str(item["annotationType"]),
            created=str(item["created"]),
            uri=str(item["uri"]),
            page=page,
        )
    except (KeyError, TypeError):
        raise ApiError("search answer holds a malformed item", url=url) from None


def _entry_info(ref: AnnotationRef, size: int) -> EntryInfo:
    try:
        mtime: datetime | None = parse_time(ref.created)
    except ConfigError:
        mtime = None
    return EntryInfo(
        name=f"{ref.scene_uuid}.json",
        key=ref.scene_uuid,
        version=ref.created,
        mtime=mtime,
        size=size,
        fields={
            "scene_uuid": ref.scene_uuid,
            "annotation_type": ref.annotation_type,
            "created": ref.created,
        },
    )

"""AnnoLab exports: ask for a job, poll it until it is built, stream its zip down verified.

The flow of one export, each step also callable on its own for apps that schedule their work::

    job = await source.start_instrument_export(owner="G", project="P")   # POST, 201
    job = await source.wait(job)                                          # polls exportStatusUrl
    result = await source.download(job, Path("export.zip"))               # .part, verify, rename

:meth:`AnnoLabSource.export_instruments` and :meth:`AnnoLabSource.export_project` do all three;
:meth:`AnnoLabSource.export_many` runs several exports at once under the engine's concurrency.

The zip is streamed through the shared local storage into ``<output>.part`` (never held in
memory); a cut connection resumes with a Range request from the bytes already on disk, also
across runs. The ``.part`` is published as the output (atomic rename, folder synced) only after
its central directory and every entry's CRC verified. The Api-Key goes to
the API host only: never to the signed download URL, nor to a status URL on another host.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Final
from urllib.parse import urljoin, urlsplit

import anyio
import anyio.to_thread
import orjson

from annopull._config import AnnoLabConfig
from annopull._errors import (
    AnnopullError,
    ApiError,
    AuthError,
    ConfigError,
    ExportFailedError,
    NotFoundError,
    TransferError,
    ZipFormatError,
    redact_url,
)
from annopull._progress import NullProgress, Progress
from annopull._storage.bucket import S3Download
from annopull._storage.local import LocalFile
from annopull._storage.target import BlobTarget
from annopull._transport.http import AuthProvider, Transport
from annopull._zip.reader import ZipCheck, extract_zip, iter_jsonl_member, verify_zip
from annopull._zip.streamcheck import StreamCheck

__all__ = [
    "AnnoLabSource",
    "ExportJob",
    "ExportOutcome",
    "ExportRequest",
    "ExportResult",
    "InstrumentsExport",
    "ProjectExport",
]

#: The wire's spelling of the first state (sic); "initialized" is accepted too, in case it is
#: ever fixed.
INITIALIZED: Final = "initalized"
STARTED: Final = "started"
FINISHED: Final = "finished"
ERRORED: Final = "errored"
PENDING: Final = frozenset({INITIALIZED, "initialized", STARTED})
#: Where ``instruments.json`` sits in an instrument export.
INSTRUMENTS_MEMBER: Final = "instruments.json"
#: Keys of a status answer that may hold the export's size (none is in the contract; used when
#: present, so progress can show an ETA without probing the download URL).
_SIZE_KEYS: Final = ("size", "fileSize", "contentLength", "downloadSize")


@dataclass(frozen=True, kw_only=True)
class InstrumentsExport:
    """An instrument export (``POST /v1/export/instruments``).

    Args:
        owner: the group that owns the project (``projectOwner``).
        project: the project name.
        tags: only instruments with these canonical tag types.
        source_filter: only instruments whose source file name equals this.
        include_files: also split each instrument into its own PDF under ``pdfs/``.
    """

    kind: ClassVar[str] = "instruments"
    path: ClassVar[str] = "/v1/export/instruments"

    owner: str
    project: str
    tags: tuple[str, ...] = ()
    source_filter: str | None = None
    include_files: bool = False

    @property
    def label(self) -> str:
        """``owner/project``, as errors and progress name the export."""
        return f"{self.owner}/{self.project}"

    def body(self) -> dict[str, Any]:
        """The JSON body of the request, as the contract spells it."""
        body: dict[str, Any] = {
            "projectOwner": self.owner,
            "projectName": self.project,
            "includeFiles": self.include_files,
        }
        if self.tags:
            body["tagFilter"] = {"canonicalTagTypes": list(self.tags)}
        if self.source_filter is not None:
            body["sourceFilter"] = self.source_filter
        return body


@dataclass(frozen=True, kw_only=True)
class ProjectExport:
    """A project export (``POST /v1/export/project``).

    Args:
        group: the group that owns the project (``groupName``).
        project: the project name or id (``projectIdentifier``).
        include_annotation_types: add the annotation types.
        include_sources: add the sources.
        include_text_bounds: add text bounds to annotations.
        source_ids: only these sources.
        layer_names: only these annotation layers.
    """

    kind: ClassVar[str] = "project"
    path: ClassVar[str] = "/v1/export/project"

    group: str
    project: str
    include_annotation_types: bool = False
    include_sources: bool = False
    include_text_bounds: bool = False
    source_ids: tuple[int, ...] | None = None
    layer_names: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        """``group/project``, as errors and progress name the export."""
        return f"{self.group}/{self.project}"

    def body(self) -> dict[str, Any]:
        """The JSON body of the request, as the contract spells it."""
        body: dict[str, Any] = {
            "projectIdentifier": self.project,
            "groupName": self.group,
            "includeAnnotationTypes": self.include_annotation_types,
            "includeSources": self.include_sources,
            "includeTextBounds": self.include_text_bounds,
        }
        if self.source_ids is not None:
            body["sourceIds"] = list(self.source_ids)
        if self.layer_names is not None:
            body["annotationLayerNames"] = list(self.layer_names)
        return body


#: Either kind of export, as :meth:`AnnoLabSource.export_many` takes them.
ExportRequest = InstrumentsExport | ProjectExport


@dataclass(frozen=True, kw_only=True)
class ExportJob:
    """An export job on the AnnoLab side, as last seen.

    Args:
        kind: ``"instruments"`` or ``"project"``.
        label: ``owner/project`` of the export.
        status_url: where its status is polled (shown without its query anywhere).
        status: the last status seen (``initalized``, ``started``, ``finished``, ``errored``).
        download_url: the signed zip URL, once ``finished`` (a secret: never shown).
        error: the platform's error text, once ``errored``.
        raw: the last status answer as it came (holds the signed URL: never shown).
    """

    kind: str
    label: str
    status_url: str
    status: str
    download_url: str | None = None
    error: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Hand-written because the signed download URL (in download_url and raw) is a
        # credential, and a status URL may carry a token in its query.
        return (
            f"ExportJob(kind={self.kind!r}, label={self.label!r}, status={self.status!r}, "
            f"status_url={redact_url(self.status_url)!r}, error={self.error!r})"
        )

    @property
    def finished(self) -> bool:
        """True when the zip is ready to download."""
        return self.status == FINISHED

    @property
    def errored(self) -> bool:
        """True when the platform gave up building the export."""
        return self.status == ERRORED


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What one finished export left on disk.

    Args:
        label: ``owner/project`` of the export.
        kind: ``"instruments"`` or ``"project"``.
        path: the verified zip, or the folder it was extracted into (an ``s3://`` URL
            for an object store).
        size: bytes of the zip.
        resumed_from: bytes an earlier, interrupted run had left in the ``.part``.
        entries: entries in the zip.
        extracted: True when ``path`` is a folder the zip was extracted into.
        files: the files written, when it was.
    """

    label: str
    kind: str
    path: Path | str
    size: int
    resumed_from: int
    entries: int
    extracted: bool = False
    files: tuple[Path, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ExportOutcome:
    """One export of :meth:`AnnoLabSource.export_many`: its result, or why it failed."""

    request: ExportRequest
    output: Path | str
    result: ExportResult | None = None
    error: AnnopullError | None = None

    @property
    def ok(self) -> bool:
        """True when the export arrived and verified."""
        return self.result is not None


class AnnoLabSource:
    """Requests, polls and downloads AnnoLab exports; get one from ``Client.annolab``.

    Args:
        transport: the client's transport (retries, timeouts, no auth to signed URLs).
        config: the API host and the polling schedule.
        auth: the ``Api-Key`` header provider.
    """

    def __init__(self, *, transport: Transport, config: AnnoLabConfig, auth: AuthProvider):
        self._transport = transport
        self._config = config
        self._auth = auth
        self._api = config.api_url.rstrip("/")

    def __repr__(self) -> str:
        return f"AnnoLabSource(api_url={self._api!r})"

    # -- starting a job -------------------------------------------------------------------
    async def start(self, request: ExportRequest) -> ExportJob:
        """Ask AnnoLab to build ``request`` and return the new job (not waited for).

        Raises:
            AuthError: the API key was refused.
            NotFoundError: AnnoLab knows no such project or group.
            ApiError: the request was refused otherwise (the platform's message is shown).
        """
        url = self._api + request.path
        try:
            answer = await self._transport.request_json(
                "POST", url, auth=self._auth, json=request.body(), item=request.label
            )
        except (AuthError, ApiError) as exc:
            raise _with_context(exc, request) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("exportStatusUrl"), str):
            raise ApiError(
                "AnnoLab's export answer holds no exportStatusUrl", url=url, item=request.label
            )
        status_url = self._own_url(answer["exportStatusUrl"], item=request.label)
        first = answer.get("exportJob")
        first = first if isinstance(first, dict) else {}
        return _job_from(
            kind=request.kind,
            label=request.label,
            status_url=status_url,
            answer={"status": INITIALIZED, **first},
        )

    async def start_instrument_export(
        self,
        *,
        owner: str,
        project: str,
        tags: Sequence[str] = (),
        source_filter: str | None = None,
        include_files: bool = False,
    ) -> ExportJob:
        """Start an instrument export; see :class:`InstrumentsExport` for the arguments."""
        return await self.start(
            InstrumentsExport(
                owner=owner,
                project=project,
                tags=tuple(tags),
                source_filter=source_filter,
                include_files=include_files,
            )
        )

    async def start_project_export(
        self,
        *,
        group: str,
        project: str,
        include_annotation_types: bool = False,
        include_sources: bool = False,
        include_text_bounds: bool = False,
        source_ids: Sequence[int] | None = None,
        layer_names: Sequence[str] | None = None,
    ) -> ExportJob:
        """Start a project export; see :class:`ProjectExport` for the arguments."""
        return await self.start(
            _project_request(
                group=group,
                project=project,
                include_annotation_types=include_annotation_types,
                include_sources=include_sources,
                include_text_bounds=include_text_bounds,
                source_ids=source_ids,
                layer_names=layer_names,
            )
        )

    # -- polling --------------------------------------------------------------------------
    async def poll(self, job: ExportJob) -> ExportJob:
        """Fetch the job's status once (the transport retries 429/5xx/timeouts).

        Raises:
            AuthError, NotFoundError, ApiError: the status call was refused.
            TransferError: the transport's retries ran out.
        """
        answer = await self._transport.request_json(
            "GET", job.status_url, auth=self._auth, item=job.label
        )
        if not isinstance(answer, dict):
            answer = {"status": None}
        return _job_from(kind=job.kind, label=job.label, status_url=job.status_url, answer=answer)

    async def wait(self, job: ExportJob, *, progress: Progress | None = None) -> ExportJob:
        """Poll ``job`` until it is ``finished``, and return it with its download URL.

        Polls after ``poll_interval`` seconds, then each interval ``poll_backoff`` times
        longer up to ``poll_max_interval``, for at most ``poll_timeout`` seconds. A status
        call whose retries ran out (a long run of 503s, timeouts) does not end the wait: the
        next poll comes on schedule. An unknown status is shown and polled on.

        Args:
            job: a job from :meth:`start` (or a later poll).
            progress: shows "label: status, elapsed, next poll in Ns".

        Raises:
            ExportFailedError: the job ended ``errored`` (with the platform's error text).
            TransferError: the job was not finished within ``poll_timeout``.
            AuthError, NotFoundError, ApiError: the status call was refused.
        """
        report = progress or NullProgress()
        config = self._config
        started = anyio.current_time()
        interval = config.poll_interval
        note = ""
        while True:
            _raise_if_errored(job)
            if job.finished:
                report.status(f"{job.label}: finished")
                return _require_download_url(job)
            elapsed = anyio.current_time() - started
            left = config.poll_timeout - elapsed
            if left <= 0:
                raise TransferError(
                    f"AnnoLab export was still {job.status!r} after {_secs(elapsed)}; raise "
                    "[annolab] poll_timeout to wait longer",
                    url=job.status_url,
                    item=job.label,
                )
            delay = min(interval, left)
            report.status(
                f"{job.label}: {_describe(job.status)}, {_secs(elapsed)} elapsed, "
                f"next poll in {_secs(delay)}{note}"
            )
            await anyio.sleep(delay)
            interval = min(interval * config.poll_backoff, config.poll_max_interval)
            try:
                job = await self.poll(job)
                note = ""
            except TransferError as exc:
                # The transport already retried (honouring Retry-After); the job itself is
                # most likely still building, so only the timeout may end the wait.
                note = f" (last status check failed: {exc.reason})"

    # -- downloading ----------------------------------------------------------------------
    async def download(
        self,
        job: ExportJob,
        output: str | os.PathLike[str] | S3Download,
        *,
        extract: bool | None = None,
        progress: Progress | None = None,
    ) -> ExportResult:
        """Stream the job's zip to ``output``, verified; or extract it when ``output`` is a folder.

        A file output is written as ``<output>.part`` (resumed with Range when an earlier run
        left one) and renamed only after the zip verified. A folder output (ending in ``/``,
        an existing folder, or ``extract=True``) gets a hidden ``.part`` zip that is verified,
        extracted safely into the folder, then removed. A job not yet finished is waited for.

        Args:
            job: the export job.
            output: the zip file to write, a folder to extract into, or an object of a
                bucket (:class:`~annopull._storage.bucket.S3Download`: staged, verified,
                then copied into place).
            extract: force (True) or forbid (False) extraction; ``None`` decides by ``output``.
            progress: shows the size, then bytes as they arrive.

        Raises:
            TransferError: the download failed for good (what arrived stays in ``.part``).
            ZipFormatError: the zip did not verify (the ``.part`` is kept for inspection).
            UnsafeEntryError: the zip holds a name that would escape the folder.
        """
        report = progress or NullProgress()
        if not job.finished:
            job = await self.wait(job, progress=report)
        # Only a display needs the size up front; without one, spare storage the probe.
        sized = progress is not None
        if isinstance(output, S3Download):
            return await self._download_to_bucket(job, output, report, sized=sized)
        into_folder = await _is_folder(output) if extract is None else extract
        path = Path(output)
        if not into_folder:
            await anyio.to_thread.run_sync(_refuse_to_replace_other_files, path)
        if into_folder:
            return await self._download_into(job, path, report, sized=sized)
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        # No journal: a download resumes from the bytes its .part holds (HTTP Range).
        storage = LocalFile(path, resumable=False)
        async with await BlobTarget.open(storage, resume=True, batch_size=_BATCH) as target:
            size, resumed, check = await self._fetch(
                job, target, str(storage.partial_path), report, sized=sized
            )
            entries = await self._verify(storage.partial_path, job, resumed, check)
            await target.publish(storage)
        return ExportResult(
            label=job.label,
            kind=job.kind,
            path=path,
            size=size,
            resumed_from=resumed,
            entries=entries,
        )

    async def _download_to_bucket(
        self, job: ExportJob, output: S3Download, report: Progress, *, sized: bool
    ) -> ExportResult:
        staging = output.staging
        async with await BlobTarget.open(staging, resume=True, batch_size=_BATCH) as target:
            size, resumed, check = await self._fetch(
                job, target, staging.description, report, sized=sized
            )
            await target.publish(staging)
        # Checked with ranged reads of the staged copy: no local file, no seekable disk.
        reader = await anyio.to_thread.run_sync(output.reader)
        try:
            entries = await self._verify(reader, job, resumed, check)
        finally:
            reader.close()
        await anyio.to_thread.run_sync(output.promote)
        return ExportResult(
            label=job.label,
            kind=job.kind,
            path=output.description,
            size=size,
            resumed_from=resumed,
            entries=entries,
        )

    async def _download_into(
        self, job: ExportJob, folder: Path, report: Progress, *, sized: bool
    ) -> ExportResult:
        await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
        # A fixed name, so a run cut short resumes it; hidden, so it is not taken for output.
        # Never published: it is extracted, then removed.
        zip_path = folder / f".annopull-{_slug(job.label)}.zip"
        storage = LocalFile(
            zip_path, partial=zip_path.with_name(zip_path.name + ".part"), resumable=False
        )
        async with await BlobTarget.open(storage, resume=True, batch_size=_BATCH) as target:
            size, resumed, check = await self._fetch(
                job, target, str(storage.partial_path), report, sized=sized
            )
        entries = await self._verify(storage.partial_path, job, resumed, check)
        report.status(f"{job.label}: extracting")
        extracted = await extract_zip(storage.partial_path, folder)
        await anyio.to_thread.run_sync(storage.discard_partial)
        return ExportResult(
            label=job.label,
            kind=job.kind,
            path=folder,
            size=size,
            resumed_from=resumed,
            entries=entries,
            extracted=True,
            files=tuple(extracted.files),
        )

    async def _fetch(
        self,
        job: ExportJob,
        target: BlobTarget,
        part: str,
        report: Progress,
        *,
        sized: bool,
    ) -> tuple[int, int, StreamCheck | None]:
        """Stream the zip into ``target`` (the file ``part``), durable when this returns.

        Returns its size, the bytes an earlier run had left there, and the check of the
        entries' CRCs made as the bytes arrived (``None`` for a resumed download, whose
        start this run did not see).

        Raises:
            ZipFormatError: an entry's CRC or size did not match as it arrived.
        """
        current = job

        async def fresh_url() -> str:
            # The signed URL expired: the status answer carries a newly signed one.
            nonlocal current
            current = await self.wait(await self.poll(current), progress=report)
            assert current.download_url is not None
            return current.download_url

        assert job.download_url is not None
        resumed = target.size
        if sized:
            report.expect_bytes(await self._size_of(job))
        if resumed:
            report.bytes(resumed)
        report.status(f"{job.label}: downloading" + (" (resuming)" if resumed else ""))
        checked = _CheckedTarget(target, None if resumed else StreamCheck())
        try:
            size = await self._transport.download(
                job.download_url,
                checked,
                resume=True,
                refresh_url=fresh_url,
                on_bytes=report.bytes,
                item=job.label,
            )
        except TransferError as exc:
            # Closed here, so the count below is what the next run will find.
            await target.aclose()
            raise TransferError(
                f"{exc.reason}; {target.size} bytes kept in {part}, run again to resume",
                url=exc.url,
                status=exc.status,
                attempts=exc.attempts,
                item=job.label,
            ) from exc
        except ZipFormatError as exc:
            raise _not_verified(exc, part=part, job=job, resumed=resumed) from exc
        try:
            check = await checked.settle()
        except ZipFormatError as exc:
            raise _not_verified(exc, part=part, job=job, resumed=resumed) from exc
        # On disk before the zip is verified there by path.
        await target.sync()
        return size, resumed, check

    async def _verify(
        self, source: Path | BinaryIO, job: ExportJob, resumed: int, streamed: StreamCheck | None
    ) -> int:
        """Check the central directory and every CRC of ``source`` (a file, or a seekable
        reader of a staged object); return its entry count.

        The CRCs checked as the bytes arrived (``streamed``) need only the central directory
        read back; without them (a resumed download, or a zip the walk could not follow)
        every entry is read again.
        """
        part = str(getattr(source, "name", source))
        try:
            check: ZipCheck | None = None
            if streamed is not None:
                check = await anyio.to_thread.run_sync(streamed.finish, source)
            if check is None:
                check = await verify_zip(source)
        except ZipFormatError as exc:
            raise _not_verified(exc, part=part, job=job, resumed=resumed) from exc
        return check.entries

    async def _size_of(self, job: ExportJob) -> int | None:
        """The zip's size, for the progress ETA: from the status answer, else a storage probe."""
        for key in _SIZE_KEYS:
            value = job.raw.get(key)
            if isinstance(value, int) and value >= 0:
                return value
        assert job.download_url is not None
        # Only the ETA depends on it: the transport gives None rather than an error.
        return await self._transport.probe_size(job.download_url)

    # -- all in one -----------------------------------------------------------------------
    async def export(
        self,
        request: ExportRequest,
        output: str | os.PathLike[str] | S3Download,
        *,
        extract: bool | None = None,
        progress: Progress | None = None,
    ) -> ExportResult:
        """Start ``request``, wait for it and download it to ``output`` (see :meth:`download`)."""
        job = await self.start(request)
        job = await self.wait(job, progress=progress)
        return await self.download(job, output, extract=extract, progress=progress)

    async def export_instruments(
        self,
        *,
        owner: str,
        project: str,
        output: str | os.PathLike[str] | S3Download,
        tags: Sequence[str] = (),
        source_filter: str | None = None,
        include_files: bool = False,
        progress: Progress | None = None,
    ) -> ExportResult:
        """Export a project's instruments to ``output`` (a zip, or a folder to extract into).

        Args:
            owner, project, tags, source_filter, include_files: see :class:`InstrumentsExport`.
            output: see :meth:`download`.
            progress: job state while built, then bytes.
        """
        request = InstrumentsExport(
            owner=owner,
            project=project,
            tags=tuple(tags),
            source_filter=source_filter,
            include_files=include_files,
        )
        return await self.export(request, output, progress=progress)

    async def export_project(
        self,
        *,
        group: str,
        project: str,
        output: str | os.PathLike[str] | S3Download,
        include_annotation_types: bool = False,
        include_sources: bool = False,
        include_text_bounds: bool = False,
        source_ids: Sequence[int] | None = None,
        layer_names: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> ExportResult:
        """Export a whole project to ``output`` (a zip, or a folder to extract into).

        Args:
            group, project, include_*, source_ids, layer_names: see :class:`ProjectExport`.
            output: see :meth:`download`.
            progress: job state while built, then bytes.
        """
        request = _project_request(
            group=group,
            project=project,
            include_annotation_types=include_annotation_types,
            include_sources=include_sources,
            include_text_bounds=include_text_bounds,
            source_ids=source_ids,
            layer_names=layer_names,
        )
        return await self.export(request, output, progress=progress)

    async def export_many(
        self,
        requests: Sequence[ExportRequest],
        *,
        output_dir: str | os.PathLike[str],
        extract: bool = False,
        progress: Progress | None = None,
    ) -> list[ExportOutcome]:
        """Run several exports at once; one failing does not stop the others.

        Each export goes to ``output_dir/<project>.zip`` (or the folder ``output_dir/<project>/``
        with ``extract``); names that clash get ``-2``, ``-3``... At most the engine's
        ``concurrency`` exports are in flight.

        Args:
            requests: the exports.
            output_dir: the folder the exports go into (created when missing).
            extract: extract each export into its own folder instead of keeping the zip.
            progress: one display for all: items are exports, bytes are summed.

        Returns:
            One :class:`ExportOutcome` per request, in the order given.
        """
        report = _Summed(progress or NullProgress())
        outputs = _outputs_for(requests, Path(output_dir), extract=extract)
        outcomes: list[ExportOutcome] = [
            ExportOutcome(request=request, output=output)
            for request, output in zip(requests, outputs, strict=True)
        ]
        report.listed(len(requests))
        report.listing_done()
        limiter = anyio.CapacityLimiter(self._transport.engine.concurrency)

        async def one(index: int) -> None:
            outcome = outcomes[index]
            async with limiter:
                try:
                    result = await self.export(
                        outcome.request, outcome.output, extract=extract, progress=report
                    )
                except AnnopullError as exc:
                    # Kept, not raised: raising would cancel the sibling exports.
                    outcomes[index] = ExportOutcome(
                        request=outcome.request, output=outcome.output, error=exc
                    )
                    report.item_failed()
                    return
            outcomes[index] = ExportOutcome(
                request=outcome.request, output=outcome.output, result=result
            )
            report.item_done()

        async with anyio.create_task_group() as tg:
            for index in range(len(requests)):
                tg.start_soon(one, index)
        return outcomes

    # -- reading --------------------------------------------------------------------------
    async def instruments(self, path: str | os.PathLike[str]) -> AsyncIterator[dict[str, Any]]:
        """Yield the instruments of an instrument export, one dict a line of instruments.json.

        Args:
            path: the export's zip, or the folder it was extracted into.
        """
        source = Path(path)
        if await anyio.Path(source).is_dir():
            async with await anyio.open_file(source / INSTRUMENTS_MEMBER, "rb") as fh:
                async for line in fh:
                    if line.strip():
                        yield orjson.loads(line)
            return
        async for record in iter_jsonl_member(source, INSTRUMENTS_MEMBER):
            yield record

    # -- helpers --------------------------------------------------------------------------
    def _own_url(self, url: str, *, item: str) -> str:
        """Resolve a status URL and make sure it is on the API host (it gets the Api-Key)."""
        absolute = urljoin(self._api + "/", url)
        try:
            elsewhere = _origin(absolute) != _origin(self._api)
        except ValueError as exc:  # a port out of range, a broken IPv6 host
            raise ApiError(
                f"AnnoLab gave a status URL that is not usable: {exc}", url=None, item=item
            ) from None
        if elsewhere:
            raise ApiError(
                "AnnoLab gave a status URL on another host; not sending the API key there",
                url=absolute,
                item=item,
            )
        return absolute


class _Summed:
    """Forwards progress, summing the sizes of several downloads into one total."""

    def __init__(self, inner: Progress) -> None:
        self._inner = inner
        self._total = 0
        self._unknown = False

    def listed(self, count: int = 1) -> None:
        self._inner.listed(count)

    def listing_done(self) -> None:
        self._inner.listing_done()

    def item_done(self, *, skipped: bool = False) -> None:
        self._inner.item_done(skipped=skipped)

    def item_failed(self) -> None:
        self._inner.item_failed()

    def bytes(self, count: int) -> None:
        self._inner.bytes(count)

    def expect_bytes(self, total: int | None) -> None:
        # One unknown size makes the sum meaningless for an ETA.
        self._unknown = self._unknown or total is None
        self._total += total or 0
        self._inner.expect_bytes(None if self._unknown else self._total)

    def status(self, text: str) -> None:
        self._inner.status(text)


def _project_request(
    *,
    group: str,
    project: str,
    include_annotation_types: bool,
    include_sources: bool,
    include_text_bounds: bool,
    source_ids: Sequence[int] | None,
    layer_names: Sequence[str] | None,
) -> ProjectExport:
    return ProjectExport(
        group=group,
        project=project,
        include_annotation_types=include_annotation_types,
        include_sources=include_sources,
        include_text_bounds=include_text_bounds,
        source_ids=tuple(source_ids) if source_ids is not None else None,
        layer_names=tuple(layer_names) if layer_names is not None else None,
    )


def _with_context(exc: AnnopullError, request: ExportRequest) -> AnnopullError:
    """The same error, its message saying which export and what AnnoLab said."""
    if isinstance(exc, AuthError):
        reason = f"AnnoLab refused the API key (check ANNOLAB_API_KEY): {exc.reason}"
    elif isinstance(exc, NotFoundError):
        reason = f"AnnoLab has no project {request.label!r}: {exc.reason}"
    else:
        reason = f"AnnoLab refused the {request.kind} export of {request.label!r}: {exc.reason}"
    return type(exc)(reason, url=exc.url, status=exc.status, attempts=exc.attempts)


def _job_from(*, kind: str, label: str, status_url: str, answer: Mapping[str, Any]) -> ExportJob:
    status = answer.get("status")
    url = answer.get("downloadUrl")
    error = answer.get("error")
    return ExportJob(
        kind=kind,
        label=label,
        status_url=status_url,
        status=str(status) if status is not None else "(none)",
        download_url=url if isinstance(url, str) and url else None,
        error=str(error) if error is not None else None,
        raw=dict(answer),
    )


def _not_verified(
    exc: ZipFormatError, *, part: str, job: ExportJob, resumed: int
) -> ZipFormatError:
    hint = (
        f"; {resumed} bytes came from an earlier run: if the export was rebuilt since, "
        f"delete {part} and run again"
        if resumed
        else ""
    )
    return ZipFormatError(
        f"downloaded export does not verify, kept as {part}: {exc.reason}{hint}",
        item=job.label,
    )


#: Bytes written to the ``.part`` per worker-thread hop, and walked by the CRC check in the same
#: hop (one batch is written while the next arrives).
_BATCH: Final = 4 << 20


class _CheckedTarget:
    """A download target whose bytes also go through a :class:`StreamCheck`.

    The check sees each chunk in the target's worker thread, right after it is written. A
    retry that cuts the bytes back to the start begins a new check; one that resumes
    mid-file leaves the check undecided (the file is then verified the slow way).
    """

    def __init__(self, target: BlobTarget, check: StreamCheck | None) -> None:
        self._target = target
        self._check = check
        target.watch(self._feed)

    @property
    def size(self) -> int:
        return self._target.size

    async def write(self, chunk: bytes) -> None:
        await self._target.write(chunk)

    async def truncate(self, size: int) -> None:
        cut = size < self._target.size
        # Waits for the batch in flight first: the check is never swapped under a write.
        await self._target.truncate(size)
        if not cut:
            return
        if size == 0:
            self._check = StreamCheck()
        elif self._check is not None:
            self._check.give_up("the download was cut back mid-file")

    async def settle(self) -> StreamCheck | None:
        """Write and check what is left; the check, to :meth:`StreamCheck.finish` on the file.

        Raises:
            ZipFormatError: an entry's CRC or size did not match.
        """
        await self._target.flush()
        self._target.watch(None)
        return self._check

    def _feed(self, chunk: bytes) -> None:
        # In the target's worker thread.
        if self._check is not None:
            self._check.feed(chunk)


def _raise_if_errored(job: ExportJob) -> None:
    if job.errored:
        raise ExportFailedError(
            f"AnnoLab could not build the export: {job.error or 'no reason given'}",
            item=job.label,
        )


def _require_download_url(job: ExportJob) -> ExportJob:
    if job.download_url is None:
        raise ApiError(
            "AnnoLab reports the export finished but gives no downloadUrl",
            url=job.status_url,
            item=job.label,
        )
    return job


def _describe(status: str) -> str:
    return status if status in PENDING else f"unknown status {status!r}, still polling"


def _secs(seconds: float) -> str:
    """Seconds for a status line: tenths below ten (tests poll fast), whole ones above."""
    return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _refuse_to_replace_other_files(path: Path) -> None:
    """An existing file is replaced only when it is a zip (an earlier export): a typo'd
    ``-o notes.txt`` must not destroy someone's notes."""
    try:
        with path.open("rb") as existing:
            head = existing.read(4)
    except (FileNotFoundError, IsADirectoryError):
        return
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ConfigError(f"{path} exists and is not a zip; not replacing it with the export")


async def _is_folder(output: str | os.PathLike[str]) -> bool:
    text = os.fspath(output)
    return text.endswith(("/", os.sep)) or await anyio.Path(text).is_dir()


_UNSAFE = re.compile(r"[^\w.-]+")


def _slug(text: str) -> str:
    """A file-name-safe form of a project name."""
    return _UNSAFE.sub("_", text).strip("._") or "export"


def _outputs_for(requests: Sequence[ExportRequest], folder: Path, *, extract: bool) -> list[Path]:
    """One output per request in ``folder``, named for its project, unique."""
    taken: set[str] = set()
    outputs = []
    for request in requests:
        stem = _slug(request.project)
        name, number = stem, 1
        while name in taken:
            number += 1
            name = f"{stem}-{number}"
        taken.add(name)
        outputs.append(folder / (name if extract else f"{name}.zip"))
    return outputs

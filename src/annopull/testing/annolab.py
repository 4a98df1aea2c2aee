"""A fake AnnoLab: export jobs, status polling and signed zip downloads.

Two loopback servers (API, storage), answering as ``API-CONTRACT.md`` says. Each
export request starts a job that builds its zip on disk in a worker thread,
streaming stored entries of cheap deterministic bytes in 1 MiB chunks, so even a
multi-GiB export takes seconds and never sits in memory. The same request always
yields a byte-identical zip.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import random
import secrets
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from annopull.testing.chaos import Chaos, ChaosEvent, ChaosState
from annopull.testing.faults import (
    CHUNK_SIZE,
    FakeServer,
    FaultPlan,
    UrlSigner,
    json_error,
    reject_auth_header,
    send_body,
    send_json,
)

__all__ = ["AnnoLabProject", "AnnoLabStats", "FakeAnnoLab"]

_LAYERS: Final = ("Default", "Review")
#: Fixed entry timestamp (the zip epoch) so the same request builds the same bytes.
_ZIP_EPOCH: Final = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, kw_only=True)
class AnnoLabProject:
    """One project of the fake AnnoLab.

    Instrument ``i`` has type ``tags[i % len(tags)]`` and comes from source file
    ``source_files[(i // len(tags)) % len(source_files)]``, so every combination of
    tag and source occurs.

    Args:
        owner: Group name (``projectOwner`` / ``groupName``).
        name: Project name.
        instruments: Number of instruments.
        pdf_size: Approximate size in bytes of each instrument's PDF.
        seed: Seeds instrument details and PDF bytes.
        source_files: Source file names.
        tags: Canonical tag types (instrument types).
    """

    owner: str = "demo-group"
    name: str = "demo-project"
    instruments: int = 200
    pdf_size: int = 20_000
    seed: int = 0
    source_files: tuple[str, ...] = ("Test_PDF.pdf", "Other.pdf")
    tags: tuple[str, ...] = ("Airframe Inventory", "Engine")

    def __post_init__(self) -> None:
        if not self.source_files or not self.tags:
            raise ValueError("a project needs at least one source file and one tag")
        if self.instruments < 0 or self.pdf_size < 0:
            raise ValueError("instruments and pdf_size must not be negative")


@dataclass
class AnnoLabStats:
    """What the fake AnnoLab was asked; tests assert on it."""

    export_requests: int = 0
    status_requests: int = 0
    download_requests: int = 0
    #: The Range header of every download request that had one, in order.
    download_ranges: list[str] = field(default_factory=list)
    #: Body bytes the downloads actually sent.
    bytes_served: int = 0
    #: Downloads that carried an Authorization header (0 for a correct client).
    downloads_with_auth_header: int = 0
    #: What :class:`~annopull.testing.Chaos` did, in order.
    chaos: list[ChaosEvent] = field(default_factory=list)


class _BadBody(ValueError):
    """A request body the API answers 400 to."""


@dataclass(frozen=True)
class _Entry:
    """One zip entry: its name, exact size and a factory of its chunks."""

    name: str
    size: int
    chunks: Callable[[], Iterable[bytes]]


def _bytes_entry(name: str, data: bytes) -> _Entry:
    return _Entry(name, len(data), lambda: (data,))


def _text_bounds(project: AnnoLabProject, annotation: dict[str, Any]) -> dict[str, Any]:
    """Where one annotation's text is in its source: the page and character span."""
    index = annotation["id"] - 1  # annotations are the instruments, ids from 1
    return {
        "annotationId": annotation["id"],
        "sourceId": annotation["sourceId"],
        "page": _instrument(project, index)["pageStart"],
        "start": index,
        "end": index + len(annotation["value"]),
    }


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


@dataclass
class _Job:
    """One export job and how far its status has been walked."""

    id: int
    path: Path
    error: str | None = None
    #: Never finishes: the polls answer ``started`` forever.
    stuck: bool = False
    polls: int = 0
    build: asyncio.Task[None] | None = None


@functools.lru_cache(maxsize=8)
def _noise(seed: int) -> bytes:
    """1 MiB of deterministic bytes that PDF bodies are cut from."""
    return random.Random(seed).randbytes(CHUNK_SIZE)


def _pdf_entry(name: str, seed: int, instrument: dict[str, Any], size: int) -> _Entry:
    """A PDF-shaped entry of about ``size`` bytes for ``instrument``, in 1 MiB chunks.

    Only the framing is PDF; the stream is filler, which is all a bulk download needs.
    """
    head = (
        f"%PDF-1.4\n% annopull fake instrument {instrument['id']}"
        f" ({instrument['instrumentType']}, pages"
        f" {instrument['pageStart']}-{instrument['pageEnd']})\n"
    ).encode()
    trailer = b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    filler = max(0, size - len(head) - len(trailer) - 40)
    head += f"1 0 obj\n<< /Length {filler} >>\nstream\n".encode()

    def chunks() -> Iterator[bytes]:
        yield head
        # Rotating the noise per instrument makes every PDF's bytes different.
        noise = _noise(seed)
        shift = (instrument["id"] * 7919) % len(noise)
        block = noise[shift:] + noise[:shift]
        for offset in range(0, filler, len(block)):
            yield block[: min(len(block), filler - offset)]
        yield trailer

    return _Entry(name, len(head) + filler + len(trailer), chunks)


def _write_zip(path: Path, entries: Sequence[_Entry], cancel: threading.Event) -> None:
    """Write ``entries`` as stored members of a zip at ``path`` (runs in a thread)."""
    partial = path.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=_ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            # A known size lets zipfile choose ZIP64 headers up front for huge entries.
            info.file_size = entry.size
            with archive.open(info, "w") as member:
                for chunk in entry.chunks():
                    if cancel.is_set():
                        raise asyncio.CancelledError
                    member.write(chunk)
    partial.replace(path)


def _instrument(project: AnnoLabProject, index: int) -> dict[str, Any]:
    rng = random.Random(f"{project.seed}:{project.owner}/{project.name}:{index}")
    kind = project.tags[index % len(project.tags)]
    source = (index // len(project.tags)) % len(project.source_files)
    start = rng.randint(1, 400)
    return {
        "id": index + 1,
        "instrumentType": kind,
        "canonicalTagType": kind,
        "sourceFile": project.source_files[source],
        "sourceId": source + 1,
        "pageStart": start,
        "pageEnd": start + rng.randint(0, 3),
        "fields": {
            "partNumber": f"PN-{rng.randrange(10**6):06d}",
            "serialNumber": f"SN-{rng.randrange(10**8):08d}",
            "quantity": rng.randint(1, 20),
        },
    }


def _get(body: dict[str, Any], key: str, kind: type, *, required: bool = False) -> Any:
    """``body[key]`` checked against ``kind``; raises :class:`_BadBody`."""
    if key not in body or body[key] is None:
        if required:
            raise _BadBody(f"{key} is required")
        return None
    value = body[key]
    # bool is an int subclass; a JSON true is no id.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _BadBody(f"{key} must be of type {kind.__name__}")
    return value


def _get_list(body: dict[str, Any], key: str, kind: type) -> list[Any] | None:
    values: list[Any] | None = _get(body, key, list)
    if values is not None and not all(
        isinstance(value, kind) and not isinstance(value, bool) for value in values
    ):
        raise _BadBody(f"{key} must be a list of {kind.__name__}")
    return values


class FakeAnnoLab(FakeServer):
    """The fake AnnoLab platform; use as ``async with FakeAnnoLab() as annolab: ...``.

    Args:
        projects: The projects it serves (project ``i`` has id ``i + 1``).
        api_key: The API key it accepts (``Authorization: Api-Key <key>``).
        workdir: Where export zips are built and kept; a temporary directory,
            removed on close, if None.
        status_sequence: Statuses the polls walk, one step per poll, before the
            terminal ``finished`` (or ``errored``) answer.
        host: Loopback address to listen on.
        export_size: Size the PDFs of an instrument export with ``includeFiles`` so the
            zip is about this many bytes (e.g. 2 GiB for a benchmark); overrides the
            projects' ``pdf_size``.
        url_ttl: Lifetime of signed download URLs, seconds.
        chaos: Seeded misbehaviour of a fraction of all requests and export jobs (see
            :class:`Chaos`); none if None. Scripted :attr:`faults` take precedence over it.
    """

    def __init__(
        self,
        *,
        projects: Sequence[AnnoLabProject] = (AnnoLabProject(),),
        api_key: str = "fake-annolab-key",
        workdir: Path | None = None,
        status_sequence: Sequence[str] = ("initalized", "started", "finished"),
        host: str = "127.0.0.1",
        export_size: int | None = None,
        url_ttl: float = 3600.0,
        chaos: Chaos | None = None,
    ) -> None:
        super().__init__(host=host)
        if not status_sequence:
            raise ValueError("status_sequence must not be empty")
        #: The projects served, in the order given.
        self.projects = tuple(projects)
        self.api_key = api_key
        self.chaos = chaos
        self.faults = FaultPlan()
        self.stats = AnnoLabStats()
        self._chaos = ChaosState(chaos, self.stats.chaos)
        self._workdir_arg = workdir
        self._workdir: Path | None = None
        self._status_sequence = tuple(status_sequence)
        self._export_size = export_size
        self._signer = UrlSigner(ttl=url_ttl)
        self._jobs: dict[int, _Job] = {}
        self._next_error: str | None = None
        self._cancel = threading.Event()

    @property
    def api_url(self) -> str:
        """Base URL of the API."""
        return self._url("api")

    @property
    def storage_url(self) -> str:
        """Base URL of the signed-URL download storage."""
        return self._url("storage")

    def fail_next_export(self, error: str = "Export failed: injected error") -> None:
        """Make the next export job end ``errored`` with ``error``."""
        self._next_error = error

    def export_path(self, export_id: str | int) -> Path:
        """The zip of an export as built, for byte-identical checks."""
        job = self._jobs.get(int(export_id))
        if job is None:
            raise KeyError(f"no export {export_id}")
        return job.path

    # -- lifecycle --------------------------------------------------------------------

    async def _serve(self) -> None:
        if self._workdir_arg is None:
            self._workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="fake-annolab-"))
        else:
            self._workdir = self._workdir_arg
            await asyncio.to_thread(self._workdir.mkdir, parents=True, exist_ok=True)
        self._cancel.clear()
        self._chaos.reset()
        await self._listen(
            "api",
            [
                web.post("/v1/export/instruments", self._export_instruments),
                web.post("/v1/export/project", self._export_project),
                web.get("/v1/export/status/{id}", self._status),
            ],
        )
        await self._listen("storage", [web.get("/exports/{id}.zip", self._download)])

    async def close(self) -> None:
        """Stop the servers, end running builds and remove a temporary workdir."""
        await super().close()
        self._urls.clear()
        self._cancel.set()
        builds = [job.build for job in self._jobs.values() if job.build is not None]
        await asyncio.gather(*builds, return_exceptions=True)
        if self._workdir is not None and self._workdir_arg is None:
            await asyncio.to_thread(shutil.rmtree, self._workdir, ignore_errors=True)
        self._workdir = None

    # -- request plumbing ---------------------------------------------------------------

    def _check_key(self, request: web.Request) -> web.Response | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Api-Key" or not secrets.compare_digest(key, self.api_key):
            return json_error(401, "missing or invalid API key")
        return None

    async def _export(
        self, request: web.Request, build: Callable[[dict[str, Any]], list[_Entry]], key: str
    ) -> web.StreamResponse:
        """Shared handling of both export kinds: faults, auth, body, job start."""
        self.stats.export_requests += 1
        try:
            body = await request.json()
        except ValueError:
            body = None
        project_key = str(body.get(key)) if isinstance(body, dict) else None
        fault, answer, chaos = await self._admit(
            request, target="export", key=project_key, server="api"
        )
        if answer is not None:
            return answer
        if (denied := self._check_key(request)) is not None:
            return denied
        if not isinstance(body, dict):
            return json_error(400, "the body must be a JSON object")
        try:
            # Listing thousands of instruments is real work: keep it off the loop.
            entries = await asyncio.to_thread(build, body)
        except _BadBody as exc:
            return json_error(400, str(exc))
        except LookupError as exc:
            return json_error(404, str(exc.args[0]))
        job = self._start_job(entries)
        status_url = f"{self.api_url}/v1/export/status/{job.id}"
        answer_body = {
            "exportStatusUrl": status_url,
            "exportJob": {"status": self._status_sequence[0], "id": job.id},
        }
        return await send_json(request, answer_body, status=201, fault=fault, chaos=chaos)

    def _start_job(self, entries: list[_Entry]) -> _Job:
        assert self._workdir is not None
        job_id = len(self._jobs) + 1
        job = _Job(id=job_id, path=self._workdir / f"export-{job_id}.zip")
        job.error, self._next_error = self._next_error, None
        if job.error is None:
            outcome = self._chaos.export_outcome(job_id)
            job.error = "Export failed: injected by chaos" if outcome == "errored" else None
            job.stuck = outcome == "stuck"
        if job.error is None and not job.stuck:
            # The build outlives the request that started it, as a real export job does; the
            # fake owns it: close() sets the cancel event and awaits every build.
            job.build = asyncio.create_task(
                asyncio.to_thread(_write_zip, job.path, entries, self._cancel)
            )
        self._jobs[job_id] = job
        return job

    def _find_project(self, owner: str, identifier: str | int) -> AnnoLabProject:
        for number, project in enumerate(self.projects, start=1):
            if project.owner == owner and identifier in (project.name, number, str(number)):
                return project
        raise LookupError(f"no project {identifier!r} in group {owner!r}")

    # -- instrument export ----------------------------------------------------------------

    async def _export_instruments(self, request: web.Request) -> web.StreamResponse:
        return await self._export(request, self._instrument_entries, "projectName")

    def _instrument_entries(self, body: dict[str, Any]) -> list[_Entry]:
        owner = _get(body, "projectOwner", str, required=True)
        name = _get(body, "projectName", str, required=True)
        tag_filter = _get(body, "tagFilter", dict) or {}
        tags = _get_list(tag_filter, "canonicalTagTypes", str)
        source = _get(body, "sourceFilter", str)
        include_files = bool(_get(body, "includeFiles", bool))
        project = self._find_project(owner, name)
        instruments = [
            instrument
            for instrument in map(
                functools.partial(_instrument, project), range(project.instruments)
            )
            if (not tags or instrument["canonicalTagType"] in tags)
            and (source is None or instrument["sourceFile"] == source)
        ]
        listing = _jsonl(instruments)
        entries = [_bytes_entry("instruments.json", listing)]
        if include_files:
            pdf_size = self._pdf_size(project, len(instruments), len(listing))
            for instrument in instruments:
                name = self._pdf_name(instrument)
                entries.append(_pdf_entry(name, project.seed, instrument, pdf_size))
        return entries

    def _pdf_size(self, project: AnnoLabProject, count: int, listing_size: int) -> int:
        """Each PDF's size: the project's, or what makes the zip about ``export_size``.

        ``export_size`` wins over ``pdf_size`` both ways, so a benchmark gets the zip
        size it asked for.
        """
        if self._export_size is None or count == 0:
            return project.pdf_size
        # Headers of a stored entry cost about 100 bytes plus twice its name.
        overhead = listing_size + count * 200
        return max(0, (self._export_size - overhead) // count)

    @staticmethod
    def _pdf_name(instrument: dict[str, Any]) -> str:
        return (
            f"pdfs/{instrument['instrumentType']}_{instrument['pageStart']}"
            f"-{instrument['pageEnd']}_{instrument['id']}.pdf"
        )

    # -- project export ---------------------------------------------------------------------

    async def _export_project(self, request: web.Request) -> web.StreamResponse:
        return await self._export(request, self._project_entries, "projectIdentifier")

    def _project_entries(self, body: dict[str, Any]) -> list[_Entry]:
        identifier = body.get("projectIdentifier")
        if not isinstance(identifier, str | int) or isinstance(identifier, bool):
            raise _BadBody("projectIdentifier (a name or an id) is required")
        group = _get(body, "groupName", str, required=True)
        include_types = bool(_get(body, "includeAnnotationTypes", bool))
        include_sources = bool(_get(body, "includeSources", bool))
        include_bounds = bool(_get(body, "includeTextBounds", bool))
        source_ids = _get_list(body, "sourceIds", int)
        layer_names = _get_list(body, "annotationLayerNames", str)
        project = self._find_project(group, identifier)

        sources = [
            {"id": number, "name": name, "type": "pdf"}
            for number, name in enumerate(project.source_files, start=1)
            if source_ids is None or number in source_ids
        ]
        layers = [
            {"id": number, "name": name}
            for number, name in enumerate(_LAYERS, start=1)
            if layer_names is None or name in layer_names
        ]
        annotations = self._annotations(project, sources, layers)
        pairs = [
            (first["id"], second["id"])
            for first, second in itertools.pairwise(annotations)
            if first["sourceId"] == second["sourceId"]
        ]
        relations = [
            {"id": number, "fromAnnotationId": a, "toAnnotationId": b, "relationType": "next"}
            for number, (a, b) in enumerate(pairs, start=1)
        ]
        # Named as the SDK's importer looks for them: <project>.<part>.jsonl.
        files: list[tuple[str, list[dict[str, Any]]]] = []
        if include_sources:
            files.append(("sources", sources))
        if include_types:
            types = [{"id": n, "name": tag} for n, tag in enumerate(project.tags, start=1)]
            files.append(("atntypes", types))
        files += [("layers", layers), ("annotations", annotations), ("relations", relations)]
        if include_bounds:
            files.append(("text-bounds", [_text_bounds(project, a) for a in annotations]))
        return [_bytes_entry(f"{project.name}.{part}.jsonl", _jsonl(rows)) for part, rows in files]

    @staticmethod
    def _annotations(
        project: AnnoLabProject, sources: list[dict[str, Any]], layers: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """One annotation per instrument, in the kept sources and layers."""
        source_ids = {source["id"] for source in sources}
        layer_names = {layer["name"] for layer in layers}
        annotations = []
        for index in range(project.instruments):
            instrument = _instrument(project, index)
            layer = _LAYERS[index % len(_LAYERS)]
            if instrument["sourceId"] not in source_ids or layer not in layer_names:
                continue
            annotations.append(
                {
                    "id": instrument["id"],
                    "sourceId": instrument["sourceId"],
                    "layerName": layer,
                    "annotationType": instrument["instrumentType"],
                    "value": instrument["fields"]["partNumber"],
                }
            )
        return annotations

    # -- status and download ----------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.StreamResponse:
        self.stats.status_requests += 1
        job_key = request.match_info["id"]
        fault, answer, chaos = await self._admit(
            request, target="status", key=job_key, server="api"
        )
        if answer is not None:
            return answer
        if (denied := self._check_key(request)) is not None:
            return denied
        job = self._jobs.get(int(job_key)) if job_key.isdigit() else None
        if job is None:
            return json_error(404, f"no export {job_key}")
        return await send_json(request, self._poll(job), fault=fault, chaos=chaos)

    def _poll(self, job: _Job) -> dict[str, Any]:
        """Advance ``job`` one step along the status sequence and describe it."""
        job.polls += 1
        if job.polls < len(self._status_sequence) - 1:
            return {"id": job.id, "status": self._status_sequence[job.polls]}
        if job.error is not None:
            return {"id": job.id, "status": "errored", "error": job.error}
        if job.stuck:
            return {"id": job.id, "status": "started"}
        assert job.build is not None
        if not job.build.done():
            # The zip is still being written: keep the client polling.
            return {"id": job.id, "status": "started"}
        if job.build.cancelled() or job.build.exception() is not None:
            return {"id": job.id, "status": "errored", "error": "export build failed"}
        path = f"/exports/{job.id}.zip"
        return {
            "id": job.id,
            "status": "finished",
            "downloadUrl": self._signer.sign(self.storage_url, path),
        }

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self.stats.download_requests += 1
        if (range_header := request.headers.get("Range")) is not None:
            self.stats.download_ranges.append(range_header)
        if (rejected := reject_auth_header(request)) is not None:
            self.stats.downloads_with_auth_header += 1
            return rejected
        job_key = request.match_info["id"]
        fault, answer, chaos = await self._admit(
            request, target="download", key=job_key, server="storage", storage=True
        )
        if answer is not None:
            return answer
        if (denied := self._signer.check(request)) is not None:
            return denied
        job = self._jobs.get(int(job_key)) if job_key.isdigit() else None
        if job is None or job.build is None or not job.build.done():
            return json_error(404, "no such export")
        response, sent = await send_body(
            request, job.path, content_type="application/zip", fault=fault, ranges=True, chaos=chaos
        )
        self.stats.bytes_served += sent
        return response

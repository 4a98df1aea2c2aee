"""The AnnoLab source against the fake AnnoLab over loopback: real HTTP, real files, real zips."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from annopull._config import AnnoLabConfig, EngineConfig, RetryPolicy, Secret
from annopull._errors import (
    ApiError,
    AuthError,
    ConfigError,
    ExportFailedError,
    NotFoundError,
    TransferError,
    UnsafeEntryError,
    ZipFormatError,
)
from annopull._sources import annolab as annolab_module
from annopull._sources.annolab import (
    AnnoLabSource,
    ExportJob,
    InstrumentsExport,
    ProjectExport,
)
from annopull._transport.auth import ApiKeyAuth
from annopull._transport.http import Transport
from annopull.testing import AnnoLabProject, FakeAnnoLab, Fault
from annopull.testing.faults import start_app

pytestmark = pytest.mark.anyio

PROJECTS = (
    AnnoLabProject(owner="Group", name="Alpha", instruments=60, pdf_size=30_000),
    AnnoLabProject(owner="Group", name="Beta", instruments=20, seed=1),
    AnnoLabProject(owner="Group", name="Gamma", instruments=10, seed=2),
)
FAST = EngineConfig(retry=RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05))


class Recorder:
    """A Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.byte_count = 0
        self.expected: list[int | None] = []
        self.done = 0
        self.failed = 0

    def listed(self, count: int = 1) -> None:
        pass

    def listing_done(self) -> None:
        pass

    def item_done(self, *, skipped: bool = False) -> None:
        self.done += 1

    def item_failed(self) -> None:
        self.failed += 1

    def bytes(self, count: int) -> None:
        self.byte_count += count

    def expect_bytes(self, total: int | None) -> None:
        self.expected.append(total)

    def status(self, text: str) -> None:
        self.statuses.append(text)


@pytest.fixture
async def fake(tmp_path: Path, anyio_backend: str) -> AsyncIterator[FakeAnnoLab]:
    async with FakeAnnoLab(projects=PROJECTS, workdir=tmp_path / "fake") as server:
        yield server


def _source(
    transport: Transport, fake: FakeAnnoLab, *, key: str | None = None, **polling: float
) -> AnnoLabSource:
    config = AnnoLabConfig(
        api_url=fake.api_url,
        poll_interval=polling.get("poll_interval", 0.01),
        poll_backoff=polling.get("poll_backoff", 1.5),
        poll_max_interval=polling.get("poll_max_interval", 0.05),
        poll_timeout=polling.get("poll_timeout", 20.0),
    )
    auth = ApiKeyAuth(Secret(key if key is not None else fake.api_key))
    return AnnoLabSource(transport=transport, config=config, auth=auth)


@pytest.fixture
async def transport(anyio_backend: str) -> AsyncIterator[Transport]:
    async with Transport(engine=FAST) as opened:
        yield opened


@pytest.fixture
def source(transport: Transport, fake: FakeAnnoLab) -> AnnoLabSource:
    return _source(transport, fake)


async def _serve_bytes(body: bytes, *, honour_range: bool) -> tuple[web.AppRunner, str]:
    """A storage server of our own, for archives the fake cannot serve (corrupt, malicious)."""

    async def handler(request: web.Request) -> web.Response:
        start = 0
        if honour_range and request.headers.get("Range"):
            start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
            return web.Response(
                body=body[start:],
                status=206,
                headers={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"},
            )
        return web.Response(body=body, content_type="application/zip")

    return await start_app([web.get("/export.zip", handler)], host="127.0.0.1")


def _finished_job(url: str) -> ExportJob:
    return ExportJob(
        kind="instruments",
        label="Group/Alpha",
        status_url="http://127.0.0.1:1/v1/export/status/1",
        status="finished",
        download_url=url,
    )


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


async def test_instrument_export_end_to_end(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """An instrument export arrives byte-identical, and its records honour tag and source."""
    out = tmp_path / "out" / "export.zip"
    result = await source.export_instruments(
        owner="Group",
        project="Alpha",
        tags=["Engine"],
        source_filter="Test_PDF.pdf",
        include_files=True,
        output=out,
    )
    assert out.read_bytes() == fake.export_path(1).read_bytes()
    assert not out.with_name("export.zip.part").exists()
    records = [record async for record in source.instruments(out)]
    assert records, "the filters should leave some instruments"
    assert {r["canonicalTagType"] for r in records} == {"Engine"}
    assert {r["sourceFile"] for r in records} == {"Test_PDF.pdf"}
    with zipfile.ZipFile(out) as archive:
        pdfs = [n for n in archive.namelist() if n.startswith("pdfs/")]
    assert len(pdfs) == len(records) == result.entries - 1
    assert result.size == out.stat().st_size
    assert result.resumed_from == 0


async def test_project_export_end_to_end(source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path):
    """A project export arrives byte-identical with the asked-for files and filters."""
    out = tmp_path / "project.zip"
    await source.export_project(
        group="Group",
        project="Beta",
        include_sources=True,
        include_annotation_types=True,
        source_ids=[1],
        layer_names=["Default"],
        output=out,
    )
    assert out.read_bytes() == fake.export_path(1).read_bytes()
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        annotations = archive.read("Beta.annotations.jsonl").decode().splitlines()
    assert {"Beta.sources.jsonl", "Beta.atntypes.jsonl", "Beta.annotations.jsonl"} <= names
    assert annotations
    assert all('"sourceId": 1' in a and '"Default"' in a for a in annotations)


async def test_extract_into_folder(source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path):
    """-o folder/ extracts the verified export, reports its files and leaves no zip behind."""
    folder = tmp_path / "extracted"
    result = await source.export_instruments(
        owner="Group", project="Beta", include_files=True, output=f"{folder}/"
    )
    with zipfile.ZipFile(fake.export_path(1)) as archive:
        expected = {n: archive.read(n) for n in archive.namelist()}
    written = {p.relative_to(folder.resolve()).as_posix(): p.read_bytes() for p in result.files}
    assert written == expected
    assert result.extracted
    assert not list(folder.glob(".*.part"))
    records = [r async for r in source.instruments(folder)]
    assert len(records) == 20


async def test_cut_download_resumes_with_range(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """A download cut half-way resumes with a Range request and ends byte-identical."""
    job = await source.wait(
        await source.start(InstrumentsExport(owner="Group", project="Alpha", include_files=True))
    )
    whole = fake.export_path(1).read_bytes()
    half = len(whole) // 2
    fake.faults.add(Fault(target="download", truncate_after=half))
    result = await source.download(job, tmp_path / "a.zip")
    assert (tmp_path / "a.zip").read_bytes() == whole
    # One resume, from wherever the cut left the file (at most what the server sent).
    [resumed_at] = fake.stats.download_ranges
    start = int(resumed_at.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= half
    # Nothing was fetched twice beyond the cut: the resume asked only for the rest.
    assert fake.stats.bytes_served == half + len(whole) - start
    assert result.resumed_from == 0


async def test_part_from_earlier_run_is_resumed(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """An output.part left by an interrupted run is continued, not downloaded again."""
    job = await source.wait(
        await source.start(InstrumentsExport(owner="Group", project="Alpha", include_files=True))
    )
    whole = fake.export_path(1).read_bytes()
    third = len(whole) // 3
    (tmp_path / "a.zip.part").write_bytes(whole[:third])
    progress = Recorder()
    result = await source.download(job, tmp_path / "a.zip", progress=progress)
    assert (tmp_path / "a.zip").read_bytes() == whole
    assert result.resumed_from == third
    assert f"bytes={third}-" in fake.stats.download_ranges
    assert progress.byte_count == len(whole)
    assert progress.expected == [len(whole)]


async def test_server_ignoring_range_restarts(
    transport: Transport, fake: FakeAnnoLab, tmp_path: Path
):
    """A storage that ignores Range sends the whole body; the download starts over, correct."""
    body = _zip_bytes({"instruments.json": b'{"id": 1}\n' * 5000})
    runner, base = await _serve_bytes(body, honour_range=False)
    try:
        (tmp_path / "r.zip.part").write_bytes(b"garbage from some other run" * 10)
        result = await _source(transport, fake).download(
            _finished_job(f"{base}/export.zip"), tmp_path / "r.zip"
        )
    finally:
        await runner.cleanup()
    assert (tmp_path / "r.zip").read_bytes() == body
    assert result.entries == 1


async def test_expired_signed_url_is_refreshed(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """A 403 from storage re-polls the status for a fresh URL and the download completes."""
    job = await source.wait(await source.start(InstrumentsExport(owner="Group", project="Beta")))
    polls = fake.stats.status_requests
    fake.faults.add(Fault(target="download", status=403))
    await source.download(job, tmp_path / "b.zip")
    assert (tmp_path / "b.zip").read_bytes() == fake.export_path(1).read_bytes()
    assert fake.stats.status_requests == polls + 1


async def _refused(
    transport: Transport, fake: FakeAnnoLab, body: bytes, output: Path
) -> ZipFormatError:
    """The error of downloading ``body`` (a zip that does not verify) to ``output``."""
    runner, base = await _serve_bytes(body, honour_range=True)
    try:
        with pytest.raises(ZipFormatError, match="does not verify") as caught:
            await _source(transport, fake).download(_finished_job(f"{base}/export.zip"), output)
    finally:
        await runner.cleanup()
    return caught.value


async def test_corrupt_zip_keeps_part_and_raises(
    transport: Transport, fake: FakeAnnoLab, tmp_path: Path
):
    """A zip whose CRC does not match is not renamed: the .part stays and the error says so."""
    body = bytearray(_zip_bytes({"instruments.json": b'{"id": 1}\n' * 100}))
    body[40] ^= 0xFF  # inside the stored data of the only entry
    caught = await _refused(transport, fake, bytes(body), tmp_path / "c.zip")
    assert not (tmp_path / "c.zip").exists()
    assert (tmp_path / "c.zip.part").read_bytes() == bytes(body)
    assert "c.zip.part" in str(caught)


async def test_corrupt_entry_in_a_background_batch_keeps_part_and_raises(
    transport: Transport, fake: FakeAnnoLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A bad CRC found while a batch is written in the background fails the download."""
    monkeypatch.setattr(annolab_module, "_BATCH", 16 << 10)
    entries = {f"pdfs/{n}.pdf": bytes([n]) * (40 << 10) for n in range(8)}
    body = bytearray(_zip_bytes(entries))
    body[body.index(bytes([6]) * 1024) + 100] ^= 0xFF  # in the data of the 7th entry
    caught = await _refused(transport, fake, bytes(body), tmp_path / "c.zip")
    assert "bad CRC-32" in str(caught)
    assert not (tmp_path / "c.zip").exists()
    kept = (tmp_path / "c.zip.part").read_bytes()
    assert kept
    assert bytes(body).startswith(kept)


async def test_cut_download_with_batches_in_flight_resumes_and_verifies(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A cut while batches are written in the background resumes byte-identical, verified."""
    monkeypatch.setattr(annolab_module, "_BATCH", 16 << 10)
    job = await source.wait(
        await source.start(InstrumentsExport(owner="Group", project="Alpha", include_files=True))
    )
    whole = fake.export_path(1).read_bytes()
    assert len(whole) > 4 * (16 << 10)
    fake.faults.add(Fault(target="download", truncate_after=len(whole) // 2 + 7))
    result = await source.download(job, tmp_path / "a.zip")
    assert (tmp_path / "a.zip").read_bytes() == whole
    assert result.entries == len(zipfile.ZipFile(io.BytesIO(whole)).infolist())
    assert len(fake.stats.download_ranges) == 1


async def test_zip_slip_refused_on_extraction(
    transport: Transport, fake: FakeAnnoLab, tmp_path: Path
):
    """An export with a '..' entry is refused and writes nothing outside (or inside) the folder."""
    body = _zip_bytes({"instruments.json": b"{}\n", "../escaped.txt": b"pwned"})
    runner, base = await _serve_bytes(body, honour_range=True)
    folder = tmp_path / "dest"
    try:
        with pytest.raises(UnsafeEntryError):
            await _source(transport, fake).download(
                _finished_job(f"{base}/export.zip"), f"{folder}/"
            )
    finally:
        await runner.cleanup()
    assert not (tmp_path / "escaped.txt").exists()
    assert not (folder / "instruments.json").exists()


async def test_errored_job_raises_with_platform_text(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """An export that ends errored raises ExportFailedError carrying AnnoLab's error text."""
    fake.fail_next_export("Export failed: source PDF unreadable")
    with pytest.raises(ExportFailedError, match="source PDF unreadable") as caught:
        await source.export_instruments(owner="Group", project="Alpha", output=tmp_path / "x.zip")
    assert caught.value.item == "Group/Alpha"
    assert not await anyio.Path(tmp_path / "x.zip.part").exists()


async def test_wrong_key_is_auth_error_without_the_key(
    transport: Transport, fake: FakeAnnoLab, tmp_path: Path
):
    """A refused key is an AuthError naming ANNOLAB_API_KEY, and neither key is in it."""
    source = _source(transport, fake, key="wrong-secret-key")
    with pytest.raises(AuthError, match="ANNOLAB_API_KEY") as caught:
        await source.export_instruments(owner="Group", project="Alpha", output=tmp_path / "x.zip")
    assert caught.value.status == 401
    assert "wrong-secret-key" not in str(caught.value)
    assert fake.api_key not in str(caught.value)


async def test_unknown_project_is_not_found(source: AnnoLabSource, tmp_path: Path):
    """An unknown project is a NotFoundError naming owner/project and AnnoLab's message."""
    with pytest.raises(NotFoundError, match="Group/Nope") as caught:
        await source.start_instrument_export(owner="Group", project="Nope")
    assert "no project" in str(caught.value)
    assert caught.value.status == 404


async def test_polling_rides_out_503s_and_honours_retry_after(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """Status polls answered 503 (one with Retry-After: 1) are waited out; the export arrives."""
    job = await source.start(InstrumentsExport(owner="Group", project="Beta"))
    fake.faults.add(
        Fault(target="status", status=503, retry_after="1"),
        Fault(target="status", status=503, times=2),
    )
    started = anyio.current_time()
    job = await source.wait(job)
    assert anyio.current_time() - started >= 1.0
    assert job.finished
    assert job.download_url is not None
    await source.download(job, tmp_path / "b.zip")
    assert (tmp_path / "b.zip").read_bytes() == fake.export_path(1).read_bytes()


async def test_run_of_failed_polls_does_not_end_the_wait(transport: Transport, fake: FakeAnnoLab):
    """More 503s in a row than the transport retries: the wait goes on and reports them."""
    source = _source(transport, fake)
    job = await source.start(InstrumentsExport(owner="Group", project="Beta"))
    fake.faults.add(Fault(target="status", status=503, times=FAST.retry.max_attempts * 2))
    progress = Recorder()
    job = await source.wait(job, progress=progress)
    assert job.finished
    assert any("last status check failed" in s for s in progress.statuses)


async def test_unknown_status_is_reported_and_polled_on(tmp_path: Path, transport: Transport):
    """A status outside the contract is shown on the progress line; polling continues."""
    sequence = ("initalized", "compressing", "started", "finished")
    async with FakeAnnoLab(projects=PROJECTS, status_sequence=sequence, workdir=tmp_path) as fake:
        source = _source(transport, fake)
        progress = Recorder()
        job = await source.wait(
            await source.start(InstrumentsExport(owner="Group", project="Beta")),
            progress=progress,
        )
    assert job.finished
    assert any("unknown status 'compressing'" in s for s in progress.statuses)
    assert any(
        s.startswith("Group/Beta: initalized") and "next poll in" in s for s in progress.statuses
    )


async def test_poll_timeout_gives_up_clearly(tmp_path: Path, transport: Transport):
    """A job that never finishes ends in a TransferError that names poll_timeout."""
    sequence = ("initalized",) + ("started",) * 10_000 + ("finished",)
    async with FakeAnnoLab(projects=PROJECTS, status_sequence=sequence, workdir=tmp_path) as fake:
        source = _source(transport, fake, poll_timeout=0.3)
        job = await source.start(InstrumentsExport(owner="Group", project="Beta"))
        with pytest.raises(TransferError, match="poll_timeout"):
            await source.wait(job)


async def test_api_key_never_reaches_download_nor_repr(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """Downloads carry no Authorization; reprs show neither the key nor URL signatures."""
    job = await source.wait(await source.start(InstrumentsExport(owner="Group", project="Gamma")))
    await source.download(job, tmp_path / "g.zip")
    assert fake.stats.download_requests >= 1
    assert fake.stats.downloads_with_auth_header == 0
    assert job.download_url is not None
    assert "signature=" in job.download_url
    shown = repr(job) + repr(source)
    assert "signature" not in shown
    assert fake.api_key not in shown


async def test_export_many_runs_concurrently_and_isolates_failures(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """Several projects export at once; an unknown one fails alone, the rest arrive intact."""
    requests = [
        InstrumentsExport(owner="Group", project="Alpha"),
        InstrumentsExport(owner="Group", project="Missing"),
        ProjectExport(group="Group", project="Beta"),
        InstrumentsExport(owner="Group", project="Gamma"),
    ]
    progress = Recorder()
    outcomes = await source.export_many(requests, output_dir=tmp_path / "many", progress=progress)
    assert [o.ok for o in outcomes] == [True, False, True, True]
    assert isinstance(outcomes[1].error, NotFoundError)
    assert progress.done == 3
    assert progress.failed == 1
    first_finish = next(i for i, s in enumerate(progress.statuses) if s.endswith("finished"))
    polled_before = {s.split(":")[0] for s in progress.statuses[:first_finish] if "next poll" in s}
    assert polled_before == {"Group/Alpha", "Group/Beta", "Group/Gamma"}
    built = sorted(fake.export_path(i).read_bytes() for i in (1, 2, 3))
    arrived = sorted(o.output.read_bytes() for o in outcomes if o.result is not None)
    assert arrived == built
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == [
        "Alpha.zip",
        "Beta.zip",
        "Gamma.zip",
    ]


async def test_size_probe_goes_through_the_transport(
    source: AnnoLabSource, transport: Transport, fake: FakeAnnoLab, tmp_path: Path, monkeypatch
):
    """The progress size comes from Transport.probe_size, and a None from it loses only the ETA."""
    job = await source.wait(await source.start(InstrumentsExport(owner="Group", project="Beta")))
    asked: list[str] = []

    async def probe_size(url: str) -> int | None:
        asked.append(url)
        return None

    monkeypatch.setattr(transport, "probe_size", probe_size)
    progress = Recorder()
    await source.download(job, tmp_path / "b.zip", progress=progress)
    assert asked == [job.download_url]
    assert progress.expected == [None]
    assert (tmp_path / "b.zip").read_bytes() == fake.export_path(1).read_bytes()


async def test_failed_download_keeps_part_with_a_resume_hint(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """Retries run out: the error names the .part and its byte count, and no CLI flag."""
    job = await source.wait(
        await source.start(InstrumentsExport(owner="Group", project="Alpha", include_files=True))
    )
    fake.faults.add(Fault(target="download", truncate_after=50_000, times=100))
    with pytest.raises(TransferError, match="run again to resume") as caught:
        await source.download(job, tmp_path / "a.zip")
    part = tmp_path / "a.zip.part"
    kept = part.stat().st_size
    assert 0 < kept < fake.export_path(1).stat().st_size
    assert f"{kept} bytes kept in {part}" in str(caught.value)
    assert "--" not in str(caught.value)
    assert not (tmp_path / "a.zip").exists()


async def test_folder_output_resumes_its_hidden_part(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """An extraction cut short resumes its hidden zip by Range; afterwards only the files stay."""
    job = await source.wait(await source.start(InstrumentsExport(owner="Group", project="Beta")))
    whole = fake.export_path(1).read_bytes()
    folder = tmp_path / "dest"
    folder.mkdir()
    third = len(whole) // 3
    (folder / ".annopull-Group_Beta.zip.part").write_bytes(whole[:third])
    result = await source.download(job, folder)
    assert result.resumed_from == third
    assert f"bytes={third}-" in fake.stats.download_ranges
    assert sorted(p.name for p in folder.iterdir()) == ["instruments.json"]
    with zipfile.ZipFile(fake.export_path(1)) as archive:
        assert (folder / "instruments.json").read_bytes() == archive.read("instruments.json")


async def test_modes_follow_the_umask(transport: Transport, fake: FakeAnnoLab, tmp_path: Path):
    """The zip output gets 0o666 less the umask; extracted files their entry's bits less it."""
    import os
    import stat

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("instruments.json", b"{}\n")  # zipfile gives it 0o600
        tool = zipfile.ZipInfo("bin/tool.sh")
        tool.create_system = 3
        tool.external_attr = (stat.S_IFREG | 0o755) << 16
        archive.writestr(tool, b"#!/bin/sh\n")
    runner, base = await _serve_bytes(buffer.getvalue(), honour_range=True)
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        source = _source(transport, fake)
        await source.download(_finished_job(f"{base}/export.zip"), tmp_path / "m.zip")
        await source.download(_finished_job(f"{base}/export.zip"), f"{tmp_path / 'm'}/")
    finally:
        await runner.cleanup()
    assert stat.S_IMODE((tmp_path / "m.zip").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "m" / "bin" / "tool.sh").stat().st_mode) == 0o755 & ~umask
    assert stat.S_IMODE((tmp_path / "m" / "instruments.json").stat().st_mode) == 0o600 & ~umask


async def test_an_existing_file_that_is_not_a_zip_is_not_replaced(
    source: AnnoLabSource, fake: FakeAnnoLab, tmp_path: Path
):
    """-o notes.txt over someone's notes is refused and the notes stay; an old zip is replaced."""
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes\n")
    with pytest.raises(ConfigError, match="is not a zip"):
        await source.export_instruments(owner="Group", project="Alpha", output=notes)
    assert notes.read_bytes() == b"my notes\n"
    old = tmp_path / "old.zip"
    old.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: an earlier export
    await source.export_instruments(owner="Group", project="Alpha", output=old)
    with zipfile.ZipFile(old) as archive:
        assert archive.testzip() is None


async def test_status_url_with_a_bad_port_is_one_clear_error(transport: Transport, tmp_path: Path):
    """An exportStatusUrl with port 99999 is an ApiError naming the problem, not a crash."""

    async def start(request: web.Request) -> web.Response:
        return web.json_response({"exportStatusUrl": "http://127.0.0.1:99999/status/1"})

    runner, base = await start_app([web.post("/{tail:.*}", start)], host="127.0.0.1")
    try:
        source = AnnoLabSource(
            transport=transport,
            config=AnnoLabConfig(api_url=base),
            auth=ApiKeyAuth(Secret("k")),
        )
        with pytest.raises(ApiError, match="status URL that is not usable"):
            await source.export_instruments(
                owner="Group", project="Alpha", output=tmp_path / "e.zip"
            )
    finally:
        await runner.cleanup()
    assert not (tmp_path / "e.zip").exists()

"""The fake AnnoLab answers as the API contract says: exports, polling, downloads, faults."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import shutil
import subprocess
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from annopull.testing import AnnoLabProject, Chaos, ChaosEvent, FakeAnnoLab, Fault

pytestmark = pytest.mark.anyio

INSTRUMENTS = "/v1/export/instruments"
PROJECT = "/v1/export/project"
DEMO = {"projectOwner": "demo-group", "projectName": "demo-project"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def annolab() -> AsyncIterator[FakeAnnoLab]:
    project = AnnoLabProject(instruments=40, pdf_size=3000)
    async with FakeAnnoLab(projects=[project]) as fake:
        yield fake


def key(annolab: FakeAnnoLab) -> dict[str, str]:
    return {"Authorization": f"Api-Key {annolab.api_key}"}


async def start_export(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with session.post(annolab.api_url + path, json=body, headers=key(annolab)) as response:
        assert response.status == 201
        answer: dict[str, Any] = await response.json()
    return answer


async def poll(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab, status_url: str
) -> list[dict[str, Any]]:
    """Poll until a terminal status; return every status body seen."""
    seen: list[dict[str, Any]] = []
    for _ in range(200):
        async with session.get(status_url, headers=key(annolab)) as response:
            assert response.status == 200
            seen.append(await response.json())
        if seen[-1]["status"] in ("finished", "errored"):
            return seen
        await asyncio.sleep(0.01)
    raise AssertionError(f"export never finished: {seen[-3:]}")


async def export_zip(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab, path: str, body: dict[str, Any]
) -> tuple[zipfile.ZipFile, bytes, dict[str, Any]]:
    """Run an export to the end and download it; return the zip, its bytes and the job."""
    job = await start_export(session, annolab, path, body)
    final = (await poll(session, annolab, job["exportStatusUrl"]))[-1]
    assert final["status"] == "finished"
    async with session.get(final["downloadUrl"]) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/zip"
        data = await response.read()
    return zipfile.ZipFile(io.BytesIO(data)), data, job


def statuses(seen: list[dict[str, Any]]) -> list[str]:
    """The statuses polled, repeats collapsed (a job still writing its zip stays "started")."""
    return [status for status, _ in itertools.groupby(s["status"] for s in seen)]


def jsonl(archive: zipfile.ZipFile, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in archive.read(name).splitlines()]


async def test_instrument_export_roundtrip(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab
) -> None:
    """An instrument export walks the statuses and downloads the zip as built on disk."""
    job = await start_export(session, annolab, INSTRUMENTS, DEMO | {"includeFiles": True})
    assert job["exportJob"]["status"] == "initalized"
    seen = await poll(session, annolab, job["exportStatusUrl"])
    assert statuses(seen) == ["started", "finished"]
    async with session.get(seen[-1]["downloadUrl"]) as response:
        data = await response.read()
    path = annolab.export_path(job["exportJob"]["id"])
    assert data == path.read_bytes()
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    instruments = jsonl(archive, "instruments.json")
    assert len(instruments) == 40
    assert sorted(archive.namelist()) == sorted(
        ["instruments.json"]
        + [
            f"pdfs/{i['instrumentType']}_{i['pageStart']}-{i['pageEnd']}_{i['id']}.pdf"
            for i in instruments
        ]
    )
    pdf = archive.read(archive.namelist()[1])
    assert pdf.startswith(b"%PDF-")
    assert pdf.endswith(b"%%EOF\n")
    assert abs(len(pdf) - 3000) < 100
    assert annolab.stats.export_requests == 1
    assert annolab.stats.status_requests == len(seen)
    assert annolab.stats.bytes_served == len(data)


@pytest.mark.skipif(shutil.which("unzip") is None, reason="needs unzip")
async def test_zip_passes_unzip(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """An independent reader (Info-ZIP unzip) finds the export intact."""
    _, _, job = await export_zip(session, annolab, INSTRUMENTS, DEMO | {"includeFiles": True})
    path = annolab.export_path(job["exportJob"]["id"])
    result = await asyncio.to_thread(
        subprocess.run, ["unzip", "-tq", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("body", "count"),
    [
        pytest.param({}, 40, id="no-filter"),
        pytest.param({"tagFilter": {"canonicalTagTypes": ["Engine"]}}, 20, id="tag"),
        pytest.param({"sourceFilter": "Other.pdf"}, 20, id="source"),
        pytest.param(
            {"tagFilter": {"canonicalTagTypes": ["Engine"]}, "sourceFilter": "Other.pdf"},
            10,
            id="tag-and-source",
        ),
        pytest.param({"sourceFilter": "Missing.pdf"}, 0, id="no-match"),
    ],
)
async def test_instrument_filters(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab, body: dict[str, Any], count: int
) -> None:
    """tagFilter and sourceFilter select instruments; without includeFiles no PDFs."""
    archive, _, _ = await export_zip(session, annolab, INSTRUMENTS, DEMO | body)
    assert archive.namelist() == ["instruments.json"]
    instruments = jsonl(archive, "instruments.json")
    assert len(instruments) == count
    tags = body.get("tagFilter", {}).get("canonicalTagTypes")
    assert all(tags is None or i["canonicalTagType"] in tags for i in instruments)
    assert all(body.get("sourceFilter", i["sourceFile"]) == i["sourceFile"] for i in instruments)


async def test_project_export_all(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """A project export with every include flag holds all six JSON Lines files, named as the
    SDK's importer looks for them (<project>.<part>.jsonl)."""
    body = {
        "projectIdentifier": "demo-project",
        "groupName": "demo-group",
        "includeAnnotationTypes": True,
        "includeSources": True,
        "includeTextBounds": True,
    }
    archive, _, _ = await export_zip(session, annolab, PROJECT, body)
    assert sorted(archive.namelist()) == [
        "demo-project.annotations.jsonl",
        "demo-project.atntypes.jsonl",
        "demo-project.layers.jsonl",
        "demo-project.relations.jsonl",
        "demo-project.sources.jsonl",
        "demo-project.text-bounds.jsonl",
    ]
    sources = jsonl(archive, "demo-project.sources.jsonl")
    assert [s["name"] for s in sources] == ["Test_PDF.pdf", "Other.pdf"]
    assert [t["name"] for t in jsonl(archive, "demo-project.atntypes.jsonl")] == [
        "Airframe Inventory",
        "Engine",
    ]
    annotations = jsonl(archive, "demo-project.annotations.jsonl")
    assert len(annotations) == 40
    ids = {a["id"] for a in annotations}
    bounds = jsonl(archive, "demo-project.text-bounds.jsonl")
    assert [b["annotationId"] for b in bounds] == [a["id"] for a in annotations]
    assert all(b["end"] > b["start"] for b in bounds)
    relations = jsonl(archive, "demo-project.relations.jsonl")
    assert relations
    assert all({r["fromAnnotationId"], r["toAnnotationId"]} <= ids for r in relations)


async def test_project_export_filters(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """sourceIds and annotationLayerNames narrow a project export; flags off drop files."""
    body = {
        "projectIdentifier": 1,
        "groupName": "demo-group",
        "sourceIds": [2],
        "annotationLayerNames": ["Review"],
    }
    archive, _, _ = await export_zip(session, annolab, PROJECT, body)
    assert sorted(archive.namelist()) == [
        "demo-project.annotations.jsonl",
        "demo-project.layers.jsonl",
        "demo-project.relations.jsonl",
    ]
    assert [layer["name"] for layer in jsonl(archive, "demo-project.layers.jsonl")] == ["Review"]
    annotations = jsonl(archive, "demo-project.annotations.jsonl")
    assert annotations
    assert {(a["sourceId"], a["layerName"]) for a in annotations} == {(2, "Review")}


async def test_exports_are_deterministic(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab
) -> None:
    """The same export request builds byte-identical zips."""
    body = DEMO | {"includeFiles": True}
    _, first, _ = await export_zip(session, annolab, INSTRUMENTS, body)
    _, second, _ = await export_zip(session, annolab, INSTRUMENTS, body)
    assert first == second


async def test_export_size(session: aiohttp.ClientSession) -> None:
    """export_size pads the PDFs so the zip is about that large."""
    async with FakeAnnoLab(export_size=3_000_000) as annolab:
        _, data, _ = await export_zip(session, annolab, INSTRUMENTS, DEMO | {"includeFiles": True})
    assert abs(len(data) - 3_000_000) < 30_000


async def test_errored_job(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """fail_next_export makes exactly the next job end errored with that error."""
    annolab.fail_next_export("disk on fire")
    job = await start_export(session, annolab, INSTRUMENTS, DEMO)
    seen = await poll(session, annolab, job["exportStatusUrl"])
    assert seen[-1] == {"id": job["exportJob"]["id"], "status": "errored", "error": "disk on fire"}
    archive, _, _ = await export_zip(session, annolab, INSTRUMENTS, DEMO)
    assert archive.namelist() == ["instruments.json"]


async def test_status_sequence(session: aiohttp.ClientSession) -> None:
    """Polls walk status_sequence one step each before the terminal status."""
    sequence = ("initalized", "initalized", "started", "started", "finished")
    async with FakeAnnoLab(status_sequence=sequence) as annolab:
        job = await start_export(session, annolab, INSTRUMENTS, DEMO)
        seen = await poll(session, annolab, job["exportStatusUrl"])
    assert [s["status"] for s in seen][:3] == ["initalized", "started", "started"]
    assert statuses(seen) == ["initalized", "started", "finished"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Api-Key wrong"}, id="wrong"),
        pytest.param({"Authorization": "Bearer fake-annolab-key"}, id="scheme"),
    ],
)
async def test_api_key_required(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab, headers: dict[str, str]
) -> None:
    """Export and status calls without the right Api-Key are 401 with a message."""
    async with session.post(annolab.api_url + INSTRUMENTS, json=DEMO, headers=headers) as r:
        assert r.status == 401
        assert "message" in await r.json()
    job = await start_export(session, annolab, INSTRUMENTS, DEMO)
    async with session.get(job["exportStatusUrl"], headers=headers) as response:
        assert response.status == 401


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(INSTRUMENTS, "not json", id="not-json"),
        pytest.param(INSTRUMENTS, [1, 2], id="not-object"),
        pytest.param(INSTRUMENTS, {"projectOwner": "demo-group"}, id="no-name"),
        pytest.param(INSTRUMENTS, DEMO | {"includeFiles": "yes"}, id="bad-flag"),
        pytest.param(INSTRUMENTS, DEMO | {"tagFilter": {"canonicalTagTypes": "x"}}, id="tags"),
        pytest.param(PROJECT, {"groupName": "demo-group"}, id="no-identifier"),
        pytest.param(
            PROJECT,
            {"projectIdentifier": 1, "groupName": "demo-group", "sourceIds": ["1"]},
            id="source-ids",
        ),
    ],
)
async def test_bad_body(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab, path: str, body: object
) -> None:
    """A malformed export body is a 400 with a message."""
    data = body if isinstance(body, str) else json.dumps(body)
    async with session.post(annolab.api_url + path, data=data, headers=key(annolab)) as r:
        assert r.status == 400
        assert "message" in await r.json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(INSTRUMENTS, DEMO | {"projectName": "nope"}, id="instruments"),
        pytest.param(PROJECT, {"projectIdentifier": 9, "groupName": "demo-group"}, id="project"),
    ],
)
async def test_unknown_project(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab, path: str, body: dict[str, Any]
) -> None:
    """An unknown project is a 404 with a message."""
    async with session.post(annolab.api_url + path, json=body, headers=key(annolab)) as r:
        assert r.status == 404
        assert "message" in await r.json()


async def test_range_download(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """Ranged downloads put together are byte-identical to export_path; 416 past the end."""
    body = DEMO | {"includeFiles": True}
    job = await start_export(session, annolab, INSTRUMENTS, body)
    url = (await poll(session, annolab, job["exportStatusUrl"]))[-1]["downloadUrl"]
    expected = annolab.export_path(job["exportJob"]["id"]).read_bytes()
    middle = len(expected) // 2
    parts = []
    for range_header in (f"bytes=0-{middle - 1}", f"bytes={middle}-"):
        async with session.get(url, headers={"Range": range_header}) as response:
            assert response.status == 206
            parts.append(await response.read())
    assert b"".join(parts) == expected
    async with session.get(url, headers={"Range": f"bytes={len(expected)}-"}) as response:
        assert response.status == 416
    assert annolab.stats.download_ranges == [
        f"bytes=0-{middle - 1}",
        f"bytes={middle}-",
        f"bytes={len(expected)}-",
    ]


async def test_download_rejects_auth_header(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab
) -> None:
    """A download carrying the API key is a 400, and counted."""
    job = await start_export(session, annolab, INSTRUMENTS, DEMO)
    url = (await poll(session, annolab, job["exportStatusUrl"]))[-1]["downloadUrl"]
    async with session.get(url, headers=key(annolab)) as response:
        assert response.status == 400
    assert annolab.stats.downloads_with_auth_header == 1


async def test_download_url_expiry(session: aiohttp.ClientSession) -> None:
    """An expired or tampered download URL is a 403."""
    async with FakeAnnoLab(url_ttl=0) as annolab:
        job = await start_export(session, annolab, INSTRUMENTS, DEMO)
        url = (await poll(session, annolab, job["exportStatusUrl"]))[-1]["downloadUrl"]
        async with session.get(url) as response:
            assert response.status == 403
        async with session.get(url.replace("signature=", "signature=f")) as response:
            assert response.status == 403


async def test_status_fault(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """Status faults answer their status twice without advancing the job."""
    job = await start_export(session, annolab, INSTRUMENTS, DEMO)
    annolab.faults.add(Fault(target="status", status=503, retry_after="1", times=2))
    for _ in range(2):
        async with session.get(job["exportStatusUrl"], headers=key(annolab)) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
    seen = await poll(session, annolab, job["exportStatusUrl"])
    assert statuses(seen) == ["started", "finished"]


async def test_export_fault(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """An export fault answers 429 with Retry-After and starts no job."""
    annolab.faults.add(Fault(target="export", status=429, retry_after="7"))
    async with session.post(annolab.api_url + INSTRUMENTS, json=DEMO, headers=key(annolab)) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "7"
    job = await start_export(session, annolab, INSTRUMENTS, DEMO)
    assert job["exportJob"]["id"] == 1


async def read_into(response: aiohttp.ClientResponse, received: bytearray) -> None:
    async for chunk in response.content.iter_any():
        received += chunk


async def test_download_truncate(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """truncate_after cuts a download mid-body; resuming with Range completes it."""
    job = await start_export(session, annolab, INSTRUMENTS, DEMO | {"includeFiles": True})
    url = (await poll(session, annolab, job["exportStatusUrl"]))[-1]["downloadUrl"]
    expected = annolab.export_path(job["exportJob"]["id"]).read_bytes()
    annolab.faults.add(Fault(target="download", truncate_after=10_000, match="1"))
    received = bytearray()
    async with session.get(url) as response:
        assert response.content_length == len(expected)
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_into(response, received)
    assert len(received) == 10_000
    async with session.get(url, headers={"Range": f"bytes={len(received)}-"}) as response:
        received += await response.read()
    assert received == expected


async def test_download_stall(session: aiohttp.ClientSession, annolab: FakeAnnoLab) -> None:
    """A stalled download trips the client's read timeout."""
    job = await start_export(session, annolab, INSTRUMENTS, DEMO)
    url = (await poll(session, annolab, job["exportStatusUrl"]))[-1]["downloadUrl"]
    annolab.faults.add(Fault(target="download", stall=2.0))
    with pytest.raises(asyncio.TimeoutError):
        async with session.get(url, timeout=aiohttp.ClientTimeout(sock_read=0.2)) as response:
            await response.read()


async def test_workdir(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Zips stay in a given workdir; a temporary one is removed on close."""
    async with FakeAnnoLab(workdir=tmp_path / "exports") as kept:
        job = await start_export(session, kept, INSTRUMENTS, DEMO)
        await poll(session, kept, job["exportStatusUrl"])
    assert (tmp_path / "exports" / "export-1.zip").is_file()
    async with FakeAnnoLab() as temporary:
        job = await start_export(session, temporary, INSTRUMENTS, DEMO)
        await poll(session, temporary, job["exportStatusUrl"])
        path = temporary.export_path(1)
        assert path.is_file()
    assert not path.parent.exists()


def test_loopback_only() -> None:
    """The fake refuses to listen on a non-loopback address."""
    with pytest.raises(ValueError, match="loopback"):
        FakeAnnoLab(host="192.168.1.1")


# -- echoed errors and chaos ----------------------------------------------------------------


async def test_export_fault_echoes_key(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab
) -> None:
    """An echoing export fault quotes the Api-Key header and the JSON body in its message."""
    annolab.faults.add(Fault(target="export", status=403, echo=True))
    async with session.post(annolab.api_url + INSTRUMENTS, json=DEMO, headers=key(annolab)) as r:
        assert r.status == 403
        message = (await r.json())["message"]
    assert f"Authorization: Api-Key {annolab.api_key}" in message
    assert '"projectName": "demo-project"' in message


async def test_download_fault_echoes_signed_query(
    session: aiohttp.ClientSession, annolab: FakeAnnoLab
) -> None:
    """An echoing download fault answers storage XML quoting the signature."""
    job = await start_export(session, annolab, INSTRUMENTS, DEMO)
    final = (await poll(session, annolab, job["exportStatusUrl"]))[-1]
    annolab.faults.add(Fault(target="download", status=403, echo=True))
    async with session.get(final["downloadUrl"]) as response:
        assert response.status == 403
        text = await response.text()
    signature = final["downloadUrl"].rpartition("signature=")[2]
    assert f"<SignatureProvided>{signature}</SignatureProvided>" in text


@pytest.mark.parametrize(
    ("chaos", "expected"),
    [
        pytest.param(Chaos(export_error_rate=1.0), "errored", id="errored"),
        pytest.param(Chaos(export_stuck_rate=1.0), "stuck", id="stuck"),
    ],
)
async def test_chaos_export_outcomes(
    session: aiohttp.ClientSession, chaos: Chaos, expected: str
) -> None:
    """Chaos makes export jobs end errored, or never finish however often they are polled."""
    async with FakeAnnoLab(chaos=chaos) as annolab:
        job = await start_export(session, annolab, INSTRUMENTS, DEMO)
        if expected == "errored":
            seen = await poll(session, annolab, job["exportStatusUrl"])
            assert seen[-1]["status"] == "errored"
            assert "chaos" in seen[-1]["error"]
        else:
            with pytest.raises(AssertionError, match="never finished"):
                await poll(session, annolab, job["exportStatusUrl"])
        assert annolab.stats.chaos == [ChaosEvent("export", str(job["exportJob"]["id"]), expected)]


def test_chaos_export_outcomes_are_seeded() -> None:
    """Which jobs error or stick is a function of the seed and the job id, at the given rates."""
    chaos = Chaos(seed=9, export_error_rate=0.2, export_stuck_rate=0.1)
    outcomes = [chaos.export_outcome(job) for job in range(1, 3001)]
    assert outcomes == [
        Chaos(seed=9, export_error_rate=0.2, export_stuck_rate=0.1).export_outcome(job)
        for job in range(1, 3001)
    ]
    assert outcomes != [
        Chaos(seed=10, export_error_rate=0.2, export_stuck_rate=0.1).export_outcome(job)
        for job in range(1, 3001)
    ]
    assert 500 < outcomes.count("errored") < 700
    assert 220 < outcomes.count("stuck") < 380


async def test_chaos_5xx_on_status(session: aiohttp.ClientSession) -> None:
    """Per-request chaos reaches AnnoLab's status polls."""
    chaos = Chaos(seed=2, error_rate=1.0, targets=frozenset({"status"}))
    async with FakeAnnoLab(chaos=chaos) as annolab:
        job = await start_export(session, annolab, INSTRUMENTS, DEMO)
        async with session.get(job["exportStatusUrl"], headers=key(annolab)) as response:
            status = response.status
        events = list(annolab.stats.chaos)
    assert status == chaos.decide("status", str(job["exportJob"]["id"]), 0).status
    assert events == [ChaosEvent("status", str(job["exportJob"]["id"]), f"status {status}")]


async def test_chaos_cut_download(session: aiohttp.ClientSession) -> None:
    """A chaos-cut download sends the decided fraction of the zip, then drops the connection."""
    chaos = Chaos(seed=3, cut_rate=1.0, targets=frozenset({"download"}))
    async with FakeAnnoLab(chaos=chaos) as annolab:
        job = await start_export(session, annolab, INSTRUMENTS, {**DEMO, "includeFiles": True})
        final = (await poll(session, annolab, job["exportStatusUrl"]))[-1]
        data = annolab.export_path(job["exportJob"]["id"]).read_bytes()
        received = bytearray()
        async with session.get(final["downloadUrl"]) as response:
            assert response.content_length == len(data)
            with pytest.raises(aiohttp.ClientPayloadError):
                await read_into(response, received)
    cut = chaos.decide("download", str(job["exportJob"]["id"]), 0).cut
    assert cut is not None
    assert received == data[: int(cut * len(data))]

"""Kognic's other reads against the fake over loopback: single, per input, per scene, by id,
and a list of scenes pulled through the pipeline.

Contents are compared with what the fake serves: the storage's bytes for the v2 and by-id
reads, orjson's re-serialisation of them for the v1 single read (its content comes inline).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import orjson
import pytest

from annopull import (
    Client,
    ConfigError,
    InvalidResponseError,
    NotFoundError,
    ResumeError,
    SceneAnnotation,
    Selection,
)
from annopull._sinks import JsonlSink, ZipSink
from annopull.testing import FakeKognic, Fault, KognicProject

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., Client]

PROJECT = KognicProject(
    project="P", batches=("a", "b"), annotation_types=("T", "U"), count=12, content_size=2500
)
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def _inline(content: bytes) -> bytes:
    """What the v1 single read's content becomes: orjson's rendering of the parsed document."""
    return orjson.dumps(orjson.loads(content))


def _scenes(fake: FakeKognic, count: int) -> list[str]:
    return [e.scene_uuid for e in fake.expected("P", "T")][:count]


def _zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


async def test_single_read_content_and_fields(kognic_client: MakeClient) -> None:
    """The v1 single read returns the scene's fields and its content as orjson renders it."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        served = list(fake.expected("P", "U"))[3]
        annotation = await client.kognic.get_annotation(served.scene_uuid, "U")
        cartesian_reads = fake.stats.cartesian_reads
    assert (annotation.scene_uuid, annotation.annotation_type, annotation.created) == (
        served.scene_uuid,
        "U",
        served.created,
    )
    assert annotation.content == _inline(served.content)
    assert cartesian_reads == 0


async def test_single_read_of_a_large_document(kognic_client: MakeClient) -> None:
    """A 3 MB inline content (decoded in a worker thread) arrives whole and exact."""
    project = KognicProject(project="P", annotation_types=("T",), count=2, content_size=3 << 20)
    async with FakeKognic(projects=[project]) as fake, kognic_client(fake) as client:
        served = next(fake.expected("P", "T"))
        annotation = await client.kognic.get_annotation(served.scene_uuid, "T")
    assert len(served.content) > 1 << 21
    assert annotation.content == _inline(served.content)


async def test_single_read_cartesian_reaches_the_fake(kognic_client: MakeClient) -> None:
    """cartesian=True asks the single read for useDefaultCartesian=true."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        scene = _scenes(fake, 1)[0]
        await client.kognic.get_annotation(scene, "T", cartesian=True)
        assert fake.stats.cartesian_reads == 1


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda k: k.get_annotation(UNKNOWN, "T"), id="single"),
        pytest.param(lambda k: k.get_annotation_for_input(UNKNOWN), id="input"),
        pytest.param(lambda k: k.get_annotations_for_scene(UNKNOWN), id="scene"),
        pytest.param(lambda k: k.get_annotation_by_id(UNKNOWN), id="by-id"),
    ],
)
async def test_every_read_of_an_unknown_is_not_found(
    kognic_client: MakeClient, read: Callable[..., object]
) -> None:
    """Each read of something that does not exist raises NotFoundError with 404 and its URL."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        with pytest.raises(NotFoundError) as info:
            await read(client.kognic)  # type: ignore[misc]
    assert info.value.status == 404
    assert info.value.url is not None
    assert UNKNOWN in info.value.url
    assert "?" not in info.value.url


async def test_input_read(kognic_client: MakeClient) -> None:
    """The v2 input read gives the annotation's fields and the storage's exact bytes."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        scene = _scenes(fake, 5)[4]
        expected = fake.scene_annotation("P", scene, "U")
        got = await client.kognic.get_annotation_for_input(expected.input_uuid)
        storage = fake.stats.content_requests[scene]
    assert got == SceneAnnotation(
        input_uuid=expected.input_uuid,
        scene_uuid=scene,
        request_uid=expected.request_uid,
        created=expected.created,
        content=expected.content,
    )
    assert storage == 1


async def test_scene_read_lists_every_type(kognic_client: MakeClient) -> None:
    """The v2 scene read gives one annotation per type, in order, contents exact."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        scene = _scenes(fake, 2)[1]
        expected = [fake.scene_annotation("P", scene, t) for t in ("T", "U")]
        got = await client.kognic.get_annotations_for_scene(scene, cartesian=True)
        cartesian_reads = fake.stats.cartesian_reads
    assert [(a.input_uuid, a.request_uid, a.created, a.content) for a in got] == [
        (e.input_uuid, e.request_uid, e.created, e.content) for e in expected
    ]
    assert {a.scene_uuid for a in got} == {scene}
    assert cartesian_reads == 1


async def test_by_id_on_the_integration_host(kognic_client: MakeClient) -> None:
    """By id, the annotation-integration host answers with the token; its fields are mapped."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        scene = _scenes(fake, 3)[2]
        expected = fake.scene_annotation("P", scene, "T")
        got = await client.kognic.get_annotation_by_id(expected.annotation_id, iso_boxes=True)
        stats = fake.stats
    assert got == SceneAnnotation(
        input_uuid=expected.input_uuid,
        scene_uuid=scene,
        request_uid=expected.request_uid,
        created=expected.created,
        content=expected.content,
        is_preliminary=False,
        annotation_id=expected.annotation_id,
    )
    assert got.json() == json.loads(expected.content)
    assert stats.cartesian_reads == 1
    assert stats.unauthorized == 0
    assert stats.storage_requests_with_auth_header == 0


async def test_expired_content_url_is_renewed_by_reading_again(kognic_client: MakeClient) -> None:
    """A 403 from storage makes the v2 read ask again for a fresh URL, then the content comes."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        scene = _scenes(fake, 1)[0]
        expected = fake.scene_annotation("P", scene, "T")
        fake.faults.add(Fault(target="content", status=403, match=scene))
        got = await client.kognic.get_annotation_by_id(expected.annotation_id)
        stats = fake.stats
    assert got.content == expected.content
    assert stats.annotation_requests == 2
    assert stats.content_requests[scene] == 2


async def test_malformed_answer_is_one_line() -> None:
    """An answer lacking a field is an InvalidResponseError naming the field, in one line."""
    from aiohttp import web

    from annopull._config import Config, KognicConfig
    from annopull.testing.faults import start_app

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"inputUuid": "x", "sceneUuid": "y", "created": "z"})

    runner, url = await start_app([web.get("/v2/inputs/{id}/annotation", answer)], host="127.0.0.1")
    try:
        async with FakeKognic(projects=[PROJECT]) as fake:
            config = Config(kognic=KognicConfig(api_url=url, auth_url=fake.auth_url))
            env = {"KOGNIC_CLIENT_ID": fake.client_id, "KOGNIC_CLIENT_SECRET": fake.client_secret}
            async with Client(config=config, env=env) as client:
                with pytest.raises(InvalidResponseError) as info:
                    await client.kognic.get_annotation_for_input(UNKNOWN)
    finally:
        await runner.cleanup()
    assert "'requestUid'" in str(info.value)
    assert "\n" not in str(info.value)


# -- a list of scenes through the pipeline ---------------------------------------------------


async def test_scenes_into_a_zip_with_one_unknown(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """Every listed scene's annotation arrives; an unknown scene is a failure naming it."""
    out = tmp_path / "o.zip"
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        served = list(fake.expected("P", "U"))[:5]
        scenes = [e.scene_uuid for e in served]
        report = await client.kognic.download_scenes(
            [*scenes[:2], UNKNOWN, *scenes[2:]], "U", sink=ZipSink(out)
        )
    assert [(f.item, f.status) for f in report.failures] == [(UNKNOWN, 404)]
    assert (report.listed, report.downloaded) == (6, 5)
    assert _zip(out) == {f"{e.scene_uuid}.json": _inline(e.content) for e in served}
    with zipfile.ZipFile(out) as archive:
        info = archive.getinfo(f"{served[0].scene_uuid}.json")
    assert info.date_time[:3] == (2024, 1, 1)  # the entry's time is the annotation's created


async def test_scenes_from_an_async_iterable_into_jsonl(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """An async iterable of uuids works too; JSON Lines carry each scene's created."""
    out = tmp_path / "o.jsonl"

    async def listed(scenes: list[str]) -> AsyncIterator[str]:
        for scene in scenes:
            yield scene

    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        served = list(fake.expected("P", "T"))[:4]
        report = await client.kognic.download_scenes(
            listed([e.scene_uuid for e in served]), "T", sink=JsonlSink(out), cartesian=True
        )
        cartesian_reads = fake.stats.cartesian_reads
    assert report.ok, report.failures
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["scene_uuid"]: line["created"] for line in lines} == {
        e.scene_uuid: e.created for e in served
    }
    assert {line["scene_uuid"]: line["content"] for line in lines} == {
        e.scene_uuid: json.loads(e.content) for e in served
    }
    assert cartesian_reads == 4


async def test_since_applies_to_the_fetched_created(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """since drops scenes whose fetched created is not later, and keeps the others."""
    from annopull._pipeline.pull import parse_time

    out = tmp_path / "o.zip"
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        served = list(fake.expected("P", "T"))[:6]
        since = parse_time(served[2].created)
        report = await client.kognic.download_scenes(
            [e.scene_uuid for e in served], "T", sink=ZipSink(out), selection=Selection(since=since)
        )
    assert (report.downloaded, report.skipped) == (3, 3)
    assert set(_zip(out)) == {f"{e.scene_uuid}.json" for e in served[3:]}


async def test_malformed_scene_stops_before_any_fetch(
    kognic_client: MakeClient, tmp_path: Path
) -> None:
    """A list entry that is not a uuid is a ConfigError naming it; nothing is fetched or left."""
    async with FakeKognic(projects=[PROJECT]) as fake, kognic_client(fake) as client:
        scenes = _scenes(fake, 3)
        with pytest.raises(ConfigError, match=r"scene list item 3: not a scene uuid: 'nope'"):
            await client.kognic.download_scenes(
                [*scenes[:2], "nope"], "T", sink=ZipSink(tmp_path / "o.zip")
            )
        singles = sum(fake.stats.single_requests.values())
    assert singles == 0
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 - test inspection


async def test_resume_refuses_another_list(kognic_client: MakeClient, tmp_path: Path) -> None:
    """An interrupted run resumes with the same list only, fetching just what is missing."""
    out = tmp_path / "o.zip"
    fixed = {"concurrency": 1, "max_concurrency": 1}  # one fetch at a time: the stall holds
    async with (
        FakeKognic(projects=[PROJECT]) as fake,
        kognic_client(fake, **fixed) as client,
    ):
        served = list(fake.expected("P", "T"))[:6]
        scenes = [e.scene_uuid for e in served]
        fake.faults.add(Fault(target="content", stall=30, match=scenes[3]))
        with anyio.move_on_after(2):
            await client.kognic.download_scenes(scenes, "T", sink=ZipSink(out))
        fake.faults.clear()
        for other, atype in ((scenes[:5], "T"), (scenes, "U")):
            with pytest.raises(ResumeError):
                await client.kognic.download_scenes(other, atype, sink=ZipSink(out), resume=True)
        report = await client.kognic.download_scenes(scenes, "T", sink=ZipSink(out), resume=True)
        singles = dict(fake.stats.single_requests)
    assert report.ok
    assert report.resumed
    assert (report.skipped, report.downloaded) == (3, 3)
    assert singles == {s: 2 if s == scenes[3] else 1 for s in scenes}
    assert _zip(out) == {f"{e.scene_uuid}.json": _inline(e.content) for e in served}


def test_read_scene_list_numbers_lines(tmp_path: Path) -> None:
    """read_scene_list skips blanks and comments and names a bad line by its number."""
    from annopull import read_scene_list

    path = tmp_path / "scenes.txt"
    path.write_text(f"# scenes\n\n  {UNKNOWN}  \nnot-a-uuid\n")
    lines: Iterator[str] = read_scene_list(path)
    assert next(lines) == UNKNOWN
    with pytest.raises(ConfigError, match=rf"{path}:4: not a scene uuid: 'not-a-uuid'"):
        next(lines)

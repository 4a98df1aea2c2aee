"""The sinks on their own: entries in, files out, read back by independent readers."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from annopull._errors import ConfigError, TransferError
from annopull._sinks import DirectorySink, EntryInfo, JsonlSink, Sink, ZipSink, sink_for

pytestmark = pytest.mark.anyio

FINGERPRINT = {"source": "test"}
WHEN = datetime(2024, 3, 4, 5, 6, 8, tzinfo=UTC)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def broken(error: BaseException, *parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise error


def info(key: str, name: str | None = None) -> EntryInfo:
    return EntryInfo(
        name=name or f"{key}.json",
        key=key,
        version="2024-03-04T05:06:08Z",
        mtime=WHEN,
        fields={"scene_uuid": key, "annotation_type": "T", "created": "2024-03-04T05:06:08Z"},
    )


def _doc(n: int) -> bytes:
    return json.dumps({"openlabel": {"n": n, "pad": "x" * (n * 1000)}}).encode()


def _zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def _files(folder: Path) -> list[str]:
    # SQLite's -wal/-shm companions of a journal come and go with its connections.
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm")))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.suffix in {".tmp", ".part", ".journal"}]


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        pytest.param("-", ZipSink, id="stdout"),
        pytest.param("out.zip", ZipSink, id="zip"),
        pytest.param("OUT.ZIP", ZipSink, id="zip-upper"),
        pytest.param("folder/", DirectorySink, id="slash"),
        pytest.param("existing", DirectorySink, id="existing-folder"),
        pytest.param("existing.zip", DirectorySink, id="existing-folder-named-zip"),
        pytest.param("out.jsonl", JsonlSink, id="jsonl"),
    ],
)
def test_sink_for_picks_the_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, kind: type[Sink]
) -> None:
    """-o names the sink: .zip, -, a folder (trailing slash or existing), .jsonl."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing.zip").mkdir()
    sink = sink_for(output)
    assert type(sink) is kind
    assert sink.description == ("stdout" if output == "-" else sink.description)


@pytest.mark.parametrize("output", ["out.txt", "out", "out.json"])
def test_sink_for_refuses_unknown_kinds(tmp_path: Path, output: str) -> None:
    """An -o whose kind cannot be told is a ConfigError that says what to use."""
    with pytest.raises(ConfigError, match=r"use a \.zip or \.jsonl file"):
        sink_for(str(tmp_path / output))


@pytest.mark.parametrize(
    ("level", "method"),
    [
        pytest.param(6, zipfile.ZIP_DEFLATED, id="deflate"),
        pytest.param(0, zipfile.ZIP_STORED, id="stored"),
    ],
)
async def test_zip_sink_round_trip(tmp_path: Path, level: int, method: int) -> None:
    """Entries written in chunks read back byte for byte; .part until closed, then renamed."""
    out = tmp_path / "out.zip"
    sink = ZipSink(out, compress_level=level)
    assert await sink.open(fingerprint=FINGERPRINT) is False
    docs = {f"s{n}": _doc(n) for n in range(5)}
    for key, doc in docs.items():
        assert await sink.write(info(key), chunks(doc[:7], doc[7:100], doc[100:])) == f"{key}.json"
    assert _files(tmp_path) == ["out.zip.journal", "out.zip.part"]
    result = await sink.close()
    assert _files(tmp_path) == ["out.zip"]
    assert (result.entries, result.output) == (5, str(out))
    assert _zip_entries(out) == {f"{k}.json": v for k, v in docs.items()}
    with zipfile.ZipFile(out) as archive:
        infos = archive.infolist()
    assert {i.compress_type for i in infos} == {method}
    assert infos[0].date_time == (2024, 3, 4, 5, 6, 8)


def _zip_sink(tmp_path: Path) -> Sink:
    return ZipSink(tmp_path / "out.zip")


def _dir_sink(tmp_path: Path) -> Sink:
    return DirectorySink(tmp_path / "folder")


def _jsonl_sink(tmp_path: Path) -> Sink:
    return JsonlSink(tmp_path / "out.jsonl")


def _read_back(tmp_path: Path, sink: Sink) -> dict[str, bytes]:
    if isinstance(sink, ZipSink):
        return _zip_entries(tmp_path / "out.zip")
    if isinstance(sink, DirectorySink):
        return {p.name: p.read_bytes() for p in (tmp_path / "folder").iterdir()}
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    return {f"{d['scene_uuid']}.json": json.dumps(d["content"]).encode() for d in lines}


SINKS = [
    pytest.param(_zip_sink, id="zip"),
    pytest.param(_dir_sink, id="folder"),
    pytest.param(_jsonl_sink, id="jsonl"),
]


@pytest.mark.parametrize("make", SINKS)
async def test_caller_error_passes_through_and_leaves_no_half_entry(
    tmp_path: Path, make: Callable[[Path], Sink]
) -> None:
    """What the chunk iterator raises comes out unchanged; the output holds only whole entries."""
    sink = make(tmp_path)
    await sink.open(fingerprint=FINGERPRINT)
    good = json.dumps({"openlabel": {"ok": 1}}).encode()
    await sink.write(info("good"), chunks(good))
    boom = RuntimeError("network gone")
    with pytest.raises(RuntimeError) as raised:
        await sink.write(info("bad"), broken(boom, b'{"openlabel": {"half'))
    assert raised.value is boom
    later = json.dumps({"openlabel": {"ok": 2}}).encode()
    await sink.write(info("later"), chunks(later))
    result = await sink.close()
    assert result.entries == 2
    assert _read_back(tmp_path, sink) == {"good.json": good, "later.json": later}
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("make", [SINKS[0], SINKS[1]])
async def test_unsafe_and_duplicate_names_are_made_safe(
    tmp_path: Path, make: Callable[[Path], Sink]
) -> None:
    """Names with '..', absolute paths or repeats land inside the output under distinct names."""
    sink = make(tmp_path)
    await sink.open(fingerprint=FINGERPRINT)
    names = [
        await sink.write(info("a", "../../escape.json"), chunks(b"{}")),
        await sink.write(info("b", "/abs/x.json"), chunks(b"[]")),
        await sink.write(info("c", "dup.json"), chunks(b"1")),
        await sink.write(info("d", "dup.json"), chunks(b"2")),
    ]
    await sink.close()
    assert names == ["escape.json", "abs/x.json", "dup.json", "dup (2).json"]
    assert not (tmp_path.parent / "escape.json").exists()
    if isinstance(sink, ZipSink):
        assert _zip_entries(tmp_path / "out.zip") == {
            "escape.json": b"{}",
            "abs/x.json": b"[]",
            "dup.json": b"1",
            "dup (2).json": b"2",
        }
    else:
        folder = tmp_path / "folder"
        assert (folder / "abs" / "x.json").read_bytes() == b"[]"
        assert (folder / "dup (2).json").read_bytes() == b"2"


async def test_directory_sink_sets_mtime_and_writes_atomically(tmp_path: Path) -> None:
    """Each file takes the entry's time and appears only under its final name."""
    sink = DirectorySink(tmp_path / "folder")
    await sink.open(fingerprint=FINGERPRINT)
    await sink.write(info("s1"), chunks(b'{"a":', b"1}"))
    assert sorted(_files(tmp_path / "folder")) == [".annopull.journal", "s1.json"]
    await sink.close()
    path = tmp_path / "folder" / "s1.json"
    assert _files(tmp_path / "folder") == ["s1.json"]
    assert os.stat(path).st_mtime == WHEN.timestamp()
    assert path.read_bytes() == b'{"a":1}'


async def test_jsonl_sink_lines(tmp_path: Path) -> None:
    """Compact content is embedded as is; pretty-printed content is folded into one line."""
    sink = JsonlSink(tmp_path / "out.jsonl")
    await sink.open(fingerprint=FINGERPRINT)
    await sink.write(info("compact"), chunks(b'{"openlabel":{"z":1,"a":[1,2]}}'))
    await sink.write(info("pretty"), chunks(b'{\n  "openlabel": {\n    "b": 2\n  }\n}\n'))
    await sink.close()
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        b'{"scene_uuid":"compact","annotation_type":"T","created":"2024-03-04T05:06:08Z",'
        b'"content":{"openlabel":{"z":1,"a":[1,2]}}}'
    )
    assert json.loads(lines[1]) == {
        "scene_uuid": "pretty",
        "annotation_type": "T",
        "created": "2024-03-04T05:06:08Z",
        "content": {"openlabel": {"b": 2}},
    }


async def test_jsonl_sink_refuses_content_that_is_not_json(tmp_path: Path) -> None:
    """Content that is not JSON is a TransferError for that item; the file stays valid."""
    sink = JsonlSink(tmp_path / "out.jsonl")
    await sink.open(fingerprint=FINGERPRINT)
    with pytest.raises(TransferError, match="not valid JSON") as raised:
        await sink.write(info("junk"), chunks(b"<html>oops</html>"))
    assert raised.value.item == "junk"
    await sink.write(info("fine"), chunks(b"{}"))
    await sink.close()
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["scene_uuid"] for line in lines] == ["fine"]

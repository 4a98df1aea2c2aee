"""``annopull kognic get`` and ``annopull kognic scenes`` end to end against the fake Kognic.

The CLI runs in-process through :func:`annopull._cli.main` (the fake on its own thread), and
as a subprocess where a signal is the point. Written files are compared byte for byte with
what the fake serves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from annopull._cli import main
from annopull.testing import FakeKognic, FakePlatforms, Fault, KognicProject, run_in_thread
from test_cli_kognic import _env as bulk_env

PROJECT = KognicProject(
    project="P", batches=("a", "b"), annotation_types=("T", "U"), count=10, content_size=1500
)
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def _env(fake: FakeKognic) -> dict[str, str]:
    """The bulk command's environment, and the annotation-integration host (reads by id)."""
    url = fake.annotation_integration_url
    return {**bulk_env(fake), "ANNOPULL_KOGNIC_ANNOTATION_INTEGRATION_URL": url}


@pytest.fixture
def fake(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKognic]:
    kognic = FakeKognic(projects=[PROJECT])
    monkeypatch.chdir(tmp_path)
    with run_in_thread(FakePlatforms(kognic=kognic)):
        for name, value in _env(kognic).items():
            monkeypatch.setenv(name, value)
        yield kognic


def _inline(content: bytes) -> bytes:
    """The v1 single read's content as written: orjson's rendering of the document."""
    return orjson.dumps(orjson.loads(content))


def _scenes(fake: FakeKognic, atype: str = "T") -> list[str]:
    return [e.scene_uuid for e in fake.expected("P", atype)]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


# -- kognic get ------------------------------------------------------------------------------


def test_get_scene_and_type_writes_the_document(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--scene with --annotation-type writes that annotation's document, and says so."""
    scene = _scenes(fake)[2]
    code = main(["kognic", "get", "--scene", scene, "--annotation-type", "U", "-o", "scene.json"])
    assert code == 0
    assert (tmp_path / "scene.json").read_bytes() == _inline(fake.content("P", scene, "U"))
    assert _files(tmp_path) == ["scene.json"]
    err = capsys.readouterr().err
    assert "scene.json (1." in err
    assert f"'U' annotation of scene {scene}" in err


def test_get_missing_annotation_is_one_line_exit_1_no_file(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scene without the annotation: one stderr line naming it, exit 1, nothing written."""
    code = main(["kognic", "get", "--scene", UNKNOWN, "--annotation-type", "T", "-o", "s.json"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("annopull: error: the 'T' annotation of scene " + UNKNOWN)
    assert "was not found (HTTP 404" in err[0]
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    ("flag", "what"),
    [
        pytest.param("--id", "annotation", id="by-id"),
        pytest.param("--input", "the annotation of input", id="input"),
        pytest.param("--scene", "the annotations of scene", id="scene"),
    ],
)
def test_get_other_reads_missing(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, what: str
) -> None:
    """Every other read of something unknown is exit 1 with one line naming it, no file."""
    assert main(["kognic", "get", flag, UNKNOWN, "-o", "out.json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]]
    assert f"{what} {UNKNOWN} was not found" in err[0]
    assert _files(tmp_path) == []


def test_get_by_id_to_stdout(fake: FakeKognic, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """--id with -o - prints the storage's document to stdout; --cartesian sends isoBoxes."""
    scene = _scenes(fake)[1]
    annotation_id = fake.annotation_id("P", scene, "T")
    assert main(["kognic", "get", "--id", annotation_id, "--cartesian", "-q", "-o", "-"]) == 0
    captured = capsysbinary.readouterr()
    assert captured.out == fake.content("P", scene, "T") + b"\n"
    assert captured.err == b""
    assert fake.stats.cartesian_reads == 1


def test_get_input_into_a_folder(fake: FakeKognic, tmp_path: Path) -> None:
    """--input with -o folder/ writes {input_uuid}.json with the storage's bytes."""
    scene = _scenes(fake)[4]
    expected = fake.scene_annotation("P", scene, "T")
    assert main(["kognic", "get", "--input", expected.input_uuid, "-q", "-o", "got/"]) == 0
    assert _files(tmp_path / "got") == [f"{expected.input_uuid}.json"]
    assert (tmp_path / "got" / f"{expected.input_uuid}.json").read_bytes() == expected.content


def test_get_scene_without_type(fake: FakeKognic, tmp_path: Path) -> None:
    """--scene alone writes a JSON array of every annotation, or one file each into a folder."""
    scene = _scenes(fake)[3]
    expected = [fake.scene_annotation("P", scene, t) for t in ("T", "U")]
    assert main(["kognic", "get", "--scene", scene, "-q", "-o", "all.json"]) == 0
    assert main(["kognic", "get", "--scene", scene, "-q", "-o", "each/"]) == 0
    assert json.loads((tmp_path / "all.json").read_bytes()) == [
        json.loads(e.content) for e in expected
    ]
    assert {p.name: p.read_bytes() for p in (tmp_path / "each").iterdir()} == {
        f"{e.input_uuid}.json": e.content for e in expected
    }


def test_get_type_without_scene_is_a_usage_error(
    fake: FakeKognic, capsys: pytest.CaptureFixture[str]
) -> None:
    """--annotation-type with --id is exit 2 before anything is read."""
    assert main(["kognic", "get", "--id", UNKNOWN, "--annotation-type", "T", "-o", "x.json"]) == 2
    assert "--annotation-type goes with --scene" in capsys.readouterr().err
    assert fake.stats.annotation_requests == 0


# -- kognic scenes ---------------------------------------------------------------------------


def _scene_list(path: Path, scenes: list[str]) -> Path:
    path.write_text("# scenes to pull\n\n" + "".join(f"{s}\n" for s in scenes))
    return path


@pytest.mark.parametrize("output", ["out.zip", "out.jsonl"])
def test_scenes_with_one_unknown(fake: FakeKognic, tmp_path: Path, output: str) -> None:
    """A list with an unknown scene: exit 1, that scene named in the summary, the rest exact."""
    served = list(fake.expected("P", "T"))[:6]
    listed = [e.scene_uuid for e in served]
    _scene_list(tmp_path / "scenes.txt", [*listed[:3], UNKNOWN, *listed[3:]])
    argv = ["kognic", "scenes", "--scene-list", "scenes.txt", "--annotation-type", "T"]
    assert main([*argv, "-o", output, "-q", "--summary", "run.json"]) == 1
    summary = json.loads((tmp_path / "run.json").read_bytes())
    assert [f["item"] for f in summary["failed"]] == [UNKNOWN]
    assert summary["failed"][0]["status"] == 404
    assert (summary["listed"], summary["downloaded"]) == (7, 6)
    if output == "out.zip":
        assert _zip(tmp_path / output) == {
            f"{e.scene_uuid}.json": _inline(e.content) for e in served
        }
    else:
        lines = [json.loads(line) for line in (tmp_path / output).read_text().splitlines()]
        assert {line["scene_uuid"]: line["content"] for line in lines} == {
            e.scene_uuid: json.loads(e.content) for e in served
        }
        assert {line["created"] for line in lines} == {e.created for e in served}


def test_scenes_from_stdin(
    fake: FakeKognic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--scene-list - reads the uuids from standard input."""
    import io

    served = list(fake.expected("P", "U"))[:3]
    lines = "".join(f"{e.scene_uuid}\n" for e in served).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines)))
    argv = ["kognic", "scenes", "--scene-list", "-", "--annotation-type", "U", "-q", "-o", "d/"]
    assert main(argv) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == {
        f"{e.scene_uuid}.json": _inline(e.content) for e in served
    }


def test_scenes_malformed_line_exit_2_before_any_fetch(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line that is not a uuid: exit 2 naming its line number, nothing fetched or written."""
    scenes = _scenes(fake)[:3]
    (tmp_path / "scenes.txt").write_text(f"# list\n{scenes[0]}\n\n{scenes[1]}x\n{scenes[2]}\n")
    argv = ["kognic", "scenes", "--scene-list", "scenes.txt", "--annotation-type", "T", "-q"]
    assert main([*argv, "-o", "out.zip"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"annopull: error: scenes.txt:4: not a scene uuid: '{scenes[1]}x'"]
    assert sum(fake.stats.single_requests.values()) == 0
    assert fake.stats.token_requests == 0
    assert _files(tmp_path) == ["scenes.txt"]


def test_scenes_resume_fetches_only_the_missing(fake: FakeKognic, tmp_path: Path) -> None:
    """After SIGINT, --resume fetches only the scenes the interrupted run did not write."""
    served = list(fake.expected("P", "T"))
    scenes = [e.scene_uuid for e in served]
    _scene_list(tmp_path / "scenes.txt", scenes)
    fake.faults.add(Fault(target="content", stall=30, match=scenes[4]))
    argv = ["kognic", "scenes", "--scene-list", "scenes.txt", "--annotation-type", "T", "-q"]
    argv += ["-o", "out.zip", "--concurrency", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "annopull", *argv],
        env={**os.environ, **_env(fake)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while fake.stats.single_requests[scenes[4]] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the four written ones reach the journal at the stop
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    fake.faults.clear()
    assert main([*argv, "--resume"]) == 0
    assert dict(fake.stats.single_requests) == {s: 2 if s == scenes[4] else 1 for s in scenes}
    assert _zip(tmp_path / "out.zip") == {
        f"{e.scene_uuid}.json": _inline(e.content) for e in served
    }
    assert _files(tmp_path) == ["out.zip", "scenes.txt"]


def test_kognic_help_lists_the_three_forms(capsys: pytest.CaptureFixture[str]) -> None:
    """annopull kognic --help shows the bulk, scenes and get forms, with examples of each."""
    with pytest.raises(SystemExit) as exited:
        main(["kognic", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for form in ("annopull kognic --project", "annopull kognic scenes", "annopull kognic get"):
        assert form in out.split("three forms:")[0]  # in the usage
        assert form in out.split("examples:")[1]  # and among the examples

"""``annopull manifest PREFIX``: parts written by any runner, checked and described."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from annopull._cli import main
from annopull._fleet.parts import LocalParts, PartState, scan_parts
from annopull.testing import FakeKognic, FakePlatforms, KognicProject, run_in_thread

PROJECT = KognicProject(
    project="P", batches=("a",), annotation_types=("T",), count=30, page_size=7, content_size=500
)


@pytest.fixture
def fake(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKognic]:
    kognic = FakeKognic(projects=[PROJECT])
    monkeypatch.chdir(tmp_path)
    with run_in_thread(FakePlatforms(kognic=kognic)):
        monkeypatch.setenv("ANNOPULL_KOGNIC_API_URL", kognic.api_url)
        monkeypatch.setenv("ANNOPULL_KOGNIC_AUTH_URL", kognic.auth_url)
        monkeypatch.setenv("KOGNIC_CLIENT_ID", kognic.client_id)
        monkeypatch.setenv("KOGNIC_CLIENT_SECRET", kognic.client_secret)
        yield kognic


def _shard(k: int, n: int, *extra: str) -> int:
    """One runner of an Indexed Job: ``--shard K/N`` into its part, with its summary."""
    Path("out").mkdir(exist_ok=True)
    part = f"out/part-{k:05d}-of-{n:05d}"
    argv = ["kognic", "--project", "P", "--annotation-type", "T", "-q", "--shard", f"{k}/{n}"]
    return main([*argv, "-o", f"{part}.zip", "--summary", f"{part}.summary.json", *extra])


def test_manifest_of_a_complete_set(fake: FakeKognic, tmp_path: Path) -> None:
    """Four runners' parts: the manifest names every scene once with its part and version."""
    for k in range(1, 5):
        assert _shard(k, 4) == 0
    assert main(["manifest", "out/"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_bytes())
    expected = {e.scene_uuid: e.created for e in fake.expected("P", "T")}
    assert manifest["format"] == "annopull-manifest/1"
    assert manifest["shards"] == 4
    assert {key: e["version"] for key, e in manifest["entries"].items()} == expected
    assert manifest["counts"] == {"entries": 30, "duplicates": 0, "failed": 0}
    assert manifest["duplicates"] == []
    assert manifest["failures"] == []
    for part in manifest["parts"]:
        with zipfile.ZipFile(tmp_path / "out" / part["part"]) as archive:
            names = archive.namelist()
        assert part["entries"] == len(names)
        assert part["bytes"] == (tmp_path / "out" / part["part"]).stat().st_size
        held = {key for key, e in manifest["entries"].items() if e["part"] == part["part"]}
        assert {f"{key}.json" for key in held} == set(names)


def test_missing_and_unfinished_shards_exit_1(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard never run and one with a journal left: exit 1 naming both, no manifest."""
    assert _shard(1, 4) == 0
    assert _shard(3, 4) == 0
    assert _shard(4, 4) == 0
    (tmp_path / "out" / "part-00003-of-00004.zip.journal").write_bytes(b"")
    capsys.readouterr()
    assert main(["manifest", "out/"]) == 1
    err = capsys.readouterr().err
    assert "shard 2 missing, shard 3 unfinished" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
    states = scan_parts(LocalParts(tmp_path / "out")).states
    assert states == (
        PartState.COMPLETE,
        PartState.MISSING,
        PartState.UNFINISHED,
        PartState.COMPLETE,
    )


def test_duplicates_across_parts_are_reported(
    fake: FakeKognic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A part holding another shard's scenes: exit 1, each duplicate key with its parts."""
    assert _shard(1, 2) == 0
    assert _shard(2, 2) == 0
    out = tmp_path / "out"
    first = out / "part-00001-of-00002.zip"
    with zipfile.ZipFile(first) as archive:
        stolen = archive.namelist()[0]
        data = archive.read(stolen)
    with zipfile.ZipFile(out / "part-00002-of-00002.zip", "a") as archive:
        archive.writestr(stolen, data)
    assert main(["manifest", "out/"]) == 1
    manifest = json.loads((out / "manifest.json").read_bytes())
    key = stolen[:-5]
    parts = ["part-00001-of-00002.zip", "part-00002-of-00002.zip"]
    assert manifest["duplicates"] == [{"key": key, "parts": parts}]
    assert manifest["entries"][key]["part"] == parts[0]
    assert manifest["counts"]["entries"] == 30
    assert f"1 in several parts, 0 failed (first: {key})" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No parts, mixed runs, or a file as the prefix: exit 2 with one line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["manifest", "empty/"]) == 2
    (tmp_path / "mixed").mkdir()
    for name in ("part-00001-of-00002.zip", "part-00001-of-00003.zip"):
        (tmp_path / "mixed" / name).write_bytes(b"")
    assert main(["manifest", "mixed/"]) == 2
    assert main(["manifest", "mixed/", "--shards", "2"]) == 2
    assert main(["manifest", "file.zip"]) == 2

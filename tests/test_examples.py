"""examples/: every example runs as a script against the fake Kognic and says the right thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from annopull.testing import FakeKognic, KognicProject, run_in_thread

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROJECT = KognicProject(
    project="P", batches=("B1", "B2"), annotation_types=("T",), count=40, page_size=7
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKognic]:
    """One fake Kognic for the module: the examples only read from it."""
    with run_in_thread(FakeKognic(projects=[PROJECT])) as served:
        yield served


def run(fake: FakeKognic, script: str, *args: str) -> str:
    """Run one example as a script, pointed at the fake; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANNOPULL_", "KOGNIC_"))}
    env.update(
        KOGNIC_CLIENT_ID=fake.client_id,
        KOGNIC_CLIENT_SECRET=fake.client_secret,
        KOGNIC_HOST=fake.api_url,
        KOGNIC_AUTH_HOST=fake.auth_url,
        KOGNIC_ANNOTATION_INTEGRATION_HOST=fake.annotation_integration_url,
        ANNOPULL_KOGNIC_API_URL=fake.api_url,
        ANNOPULL_KOGNIC_AUTH_URL=fake.auth_url,
    )
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def batch(fake: FakeKognic, name: str = "B2") -> dict[str, dict[str, object]]:
    return {e.scene_uuid: json.loads(e.content) for e in fake.expected("P", "T", name)}


def object_types(content: dict[str, object]) -> dict[str, int]:
    objects = content["openlabel"]["objects"]  # type: ignore[index]
    return dict(Counter(obj["type"] for obj in objects.values()))


def test_convert_one_annotation(fake: FakeKognic) -> None:
    """The docs' "download and convert" prints the scene's object counts by type."""
    scene, content = next(iter(batch(fake).items()))
    printed = json.loads(run(fake, "convert_one_annotation.py", scene, "T"))
    assert printed == {"scene_uuid": scene, "objects": object_types(content)}
    assert sum(printed["objects"].values()) > 0


def test_save_batch_to_zip(fake: FakeKognic, tmp_path: Path) -> None:
    """The docs' "save to a zip" writes one entry per scene of the batch, the content as served."""
    out = tmp_path / "annotations.zip"
    assert run(fake, "save_batch_to_zip.py", "P", "B2", "T", str(out)).strip() == f"saved {out}"
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        got = {name: json.loads(archive.read(name)) for name in archive.namelist()}
    assert got == {f"{scene}.json": content for scene, content in batch(fake).items()}


def test_async_client(fake: FakeKognic) -> None:
    """The async example counts every scene's objects and reads the first one alone."""
    printed = json.loads(run(fake, "async_client.py", "P", "B1", "T"))
    expected = batch(fake, "B1")
    assert printed["objects"] == {
        scene: len(content["openlabel"]["objects"])  # type: ignore[index]
        for scene, content in expected.items()
    }
    first = min(expected)
    assert printed["first"]["scene_uuid"] == first
    created = {e.scene_uuid: e.created for e in fake.expected("P", "T", "B1")}[first]
    assert printed["first"]["created"] == created.replace("Z", "+00:00")


def test_bulk_download(fake: FakeKognic, tmp_path: Path) -> None:
    """annopull's one-call download writes the batch into a zip and reports no failure."""
    out = tmp_path / "out.zip"
    printed = json.loads(run(fake, "bulk_download.py", "P", "B1", "T", str(out)))
    assert printed == {"downloaded": PROJECT.count // 2, "failed": 0}
    with zipfile.ZipFile(out) as archive:
        got = {name: json.loads(archive.read(name)) for name in archive.namelist()}
    assert got == {f"{scene}.json": content for scene, content in batch(fake, "B1").items()}

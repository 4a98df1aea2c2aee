"""``annopull manifest s3://BUCKET/PREFIX/``: parts in a bucket, read with ranged requests."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from annopull._cli import main
from annopull.testing import FakeKognic, FakePlatforms, KognicProject, run_in_thread
from s3_server import (
    S3Server,
    s3_server_fixture,  # noqa: F401 - registers the fixture
)

PROJECT = KognicProject(
    project="P", batches=("a",), annotation_types=("T",), count=30, page_size=7, content_size=500
)
N = 3


@pytest.fixture
def s3(s3_server: S3Server) -> Any:
    """A boto3 client of the loopback S3, with an empty bucket ``fleet``."""
    s3_server.client.create_bucket(Bucket="fleet")
    for key in s3_server.keys("fleet"):
        s3_server.client.delete_object(Bucket="fleet", Key=key)
    return s3_server.client


@pytest.fixture
def parts(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The N parts of a run, written locally by ``--shard K/N`` runs (to upload)."""
    kognic = FakeKognic(projects=[PROJECT])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with run_in_thread(FakePlatforms(kognic=kognic)):
        monkeypatch.setenv("ANNOPULL_KOGNIC_API_URL", kognic.api_url)
        monkeypatch.setenv("ANNOPULL_KOGNIC_AUTH_URL", kognic.auth_url)
        monkeypatch.setenv("KOGNIC_CLIENT_ID", kognic.client_id)
        monkeypatch.setenv("KOGNIC_CLIENT_SECRET", kognic.client_secret)
        for k in range(1, N + 1):
            argv = ["kognic", "--project", "P", "--annotation-type", "T", "-q"]
            argv += ["--shard", f"{k}/{N}", "-o", f"out/part-{k:05d}-of-{N:05d}.zip"]
            assert main(argv) == 0
    return tmp_path / "out"


def _upload(s3: Any, folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        s3.put_object(Bucket="fleet", Key=f"bf/{path.name}", Body=path.read_bytes())


def test_manifest_of_parts_in_a_bucket(
    s3: Any, parts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parts uploaded by any runner: the manifest object in the bucket lists every entry."""
    _upload(s3, parts)
    assert main(["manifest", "s3://fleet/bf/"]) == 0
    manifest = json.loads(s3.get_object(Bucket="fleet", Key="bf/manifest.json")["Body"].read())
    expected: dict[str, str] = {}
    for path in sorted(parts.glob("part-*.zip")):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                expected[info.filename[:-5]] = path.name
    assert {key: e["part"] for key, e in manifest["entries"].items()} == expected
    assert len(expected) == PROJECT.count
    assert manifest["prefix"] == "s3://fleet/bf/"
    assert [p["bytes"] for p in manifest["parts"]] == [
        (parts / f"part-{k:05d}-of-{N:05d}.zip").stat().st_size for k in range(1, N + 1)
    ]
    assert "s3://fleet/bf/manifest.json: 3 parts, 30 entries" in capsys.readouterr().err


def test_missing_part_and_open_upload_in_a_bucket_exit_1(
    s3: Any, parts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Part 2 absent, part 3 still a multipart upload: exit 1 naming both, no manifest."""
    (parts / f"part-00002-of-{N:05d}.zip").unlink()
    third = parts / f"part-00003-of-{N:05d}.zip"
    upload = s3.create_multipart_upload(Bucket="fleet", Key=f"bf/{third.name}")
    third.unlink()
    _upload(s3, parts)
    assert main(["manifest", "s3://fleet/bf/", "--shards", str(N)]) == 1
    assert "shard 2 missing, shard 3 unfinished" in capsys.readouterr().err
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fleet", Prefix="bf/")["Contents"]]
    assert "bf/manifest.json" not in keys
    s3.abort_multipart_upload(Bucket="fleet", Key=f"bf/{third.name}", UploadId=upload["UploadId"])
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")

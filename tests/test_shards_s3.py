"""``--shards N --ray local -o s3://BUCKET/PREFIX/``: parts and manifest in a bucket.

moto serves S3 on loopback in this process; the CLI runs Ray as a subprocess, whose tasks
write their parts as multipart uploads. Every process a run starts is ended by pid.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from annopull._pipeline.pull import in_shard
from annopull._storage.bucket import S3Object
from annopull._storage.s3 import S3Url, open_client
from annopull.testing import FakeKognic
from s3_server import (
    S3Server,
    s3_server_fixture,  # noqa: F401 - registers the fixture
)
from test_shards import (  # noqa: F401 - the fixtures are registered by importing them
    PROJECT,
    N,
    _run,
    fake_fixture,
    marker_fixture,
    ray_test,
    run_killing_shard_2,
)


def _check_bucket(s3_server: S3Server, fake: FakeKognic, bucket: str) -> None:
    """The parts in the bucket are exactly the batch; the manifest agrees; nothing is left."""
    expected = {f"{e.scene_uuid}.json": e.content for e in fake.expected("P", "T")}
    union: dict[str, bytes] = {}
    for k in range(1, N + 1):
        data = s3_server.get(bucket, f"bf/part-{k:05d}-of-{N:05d}.zip")
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None
            entries = {name: archive.read(name) for name in archive.namelist()}
        assert all(in_shard(name[:-5], (k, N)) for name in entries)
        assert not union.keys() & entries.keys()
        union.update(entries)
    assert union == expected
    manifest = json.loads(s3_server.get(bucket, "bf/manifest.json"))
    assert manifest["prefix"] == f"s3://{bucket}/bf/"
    assert manifest["counts"] == {"entries": PROJECT.count, "duplicates": 0, "failed": 0}
    assert {f"{key}.json" for key in manifest["entries"]} == set(expected)
    assert s3_server.uploads(bucket) == []
    assert not [key for key in s3_server.keys(bucket) if ".annopull/" in key]


@ray_test
def test_four_shards_into_a_bucket(
    fake: FakeKognic, s3_server: S3Server, tmp_path: Path, marker: str
) -> None:
    """4 Ray tasks write 4 parts to S3: exact union, manifest object, no upload left behind."""
    bucket = s3_server.bucket("fleet-ray")
    done = _run(fake, marker, "-q", output="s3://fleet-ray/bf/")
    assert done.returncode == 0, done.stderr
    _check_bucket(s3_server, fake, bucket)


@ray_test
def test_a_killed_shard_task_resumes_its_upload(
    fake: FakeKognic, s3_server: S3Server, tmp_path: Path, marker: str
) -> None:
    """SIGKILL of shard 2's worker mid-upload: Ray reruns it, the rerun continues the same
    upload from the bucket's state, and the bucket ends exact with no upload left."""
    bucket = s3_server.bucket("fleet-ray-kill")
    url = S3Url.parse(f"s3://{bucket}/bf/part-00002-of-{N:05d}.zip")
    # The worker's lock is beside the part's local ledger cache, and holds its pid.
    lock = S3Object(url, client=open_client()).state_path.with_suffix(".lock")
    done, killed = run_killing_shard_2(fake, marker, lock, "-q", output=f"s3://{bucket}/bf/")
    assert killed, "shard 2 was never seen running"
    assert done.returncode == 0, done.stderr
    _check_bucket(s3_server, fake, bucket)

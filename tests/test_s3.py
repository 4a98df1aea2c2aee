"""Object-storage outputs against a real S3 server on loopback (moto in server mode).

Every pull runs the CLI as a subprocess (``annopull kognic -o s3://…``) against a fake Kognic
served from this process; what it wrote is read back through boto3 and checked by zipfile
and ``unzip -t``. Skipped, with the reason, when moto is not installed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import orjson
import pytest

from annopull.testing import Fault, KognicProject, run_in_thread
from s3_server import (
    S3Server,
    s3_server_fixture,  # noqa: F401 - registers the fixture
)
from test_resume import Pull, read_output, serve, settled, wait_for

PROJECT = "resume"
TYPE = "openlabel"
#: Big enough, stored, for several 5 MiB parts: 400 x ~60 KB.
BIG = KognicProject(
    project=PROJECT, annotation_types=(TYPE,), count=400, content_size=60_000, page_size=50
)
#: A few hundred small scenes (moto takes ~100 small PUTs a second).
SMALL = KognicProject(project=PROJECT, annotation_types=(TYPE,), count=300, content_size=2000)


def run(
    pull: Pull, output: str, *extra: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """The CLI to its end, with extra environment (e.g. TMPDIR) and working folder."""
    return subprocess.run(
        pull.argv(output, *extra),
        env=pull.env() | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def tmp_of(machine: Path) -> str:
    """The TMPDIR of a simulated machine (where the ledger cache and spool go)."""
    return str(machine / "tmp")


def fetch(s3: S3Server, bucket: str, key: str, tmp: Path) -> Path:
    """Download an object to a local file of the same name, to read it as a file."""
    path = tmp / "got" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(s3.get(bucket, key))
    return path


def assert_exact(pull: Pull, entries: dict[str, bytes]) -> None:
    """Every scene once, byte-identical to what the fake serves."""
    expected = pull.expected()
    assert entries.keys() == expected.keys()
    assert [k for k in expected if entries[k] != expected[k]] == []


def assert_no_leftovers(s3: S3Server, bucket: str) -> None:
    """No unfinished upload, no resume state: nothing billed, nothing stale."""
    assert s3.uploads(bucket) == []
    assert [k for k in s3.keys(bucket) if ".annopull" in k] == []


def manifest_rows(s3: S3Server, bucket: str, prefix: str) -> dict[str, str]:
    """Scene -> version of every row the committed manifests hold."""
    rows: dict[str, str] = {}
    for key in s3.keys(bucket, prefix):
        if key.rsplit("/", 1)[-1].startswith("rows-"):
            for line in s3.get(bucket, key).splitlines()[1:]:
                scene, version, _name, _receipt = orjson.loads(line)
                rows[scene] = version
    return rows


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        pytest.param("out/all.zip", "zip", id="zip"),
        pytest.param("out/all.jsonl", "jsonl", id="jsonl"),
    ],
)
def test_object_output_is_exact(s3_server: S3Server, tmp_path: Path, key: str, kind: str) -> None:
    """A pull to s3://B/KEY.zip or .jsonl completes one object holding every scene exactly."""
    bucket = s3_server.bucket(f"exact-{kind}")
    with serve(tmp_path) as pull:
        done = run(pull, f"s3://{bucket}/{key}")
        assert done.returncode == 0, done.stderr
        assert f"s3://{bucket}/{key}" in done.stderr
        assert_exact(pull, read_output(fetch(s3_server, bucket, key, tmp_path)))
    assert_no_leftovers(s3_server, bucket)


def test_prefix_output_is_one_object_per_entry(s3_server: S3Server, tmp_path: Path) -> None:
    """A pull to s3://B/PREFIX/ puts each scene as its own object, and nothing else remains."""
    bucket = s3_server.bucket("exact-prefix")
    with serve(tmp_path, SMALL) as pull:
        done = run(pull, f"s3://{bucket}/scenes/")
        assert done.returncode == 0, done.stderr
        keys = s3_server.keys(bucket)
        entries = {
            k.removeprefix("scenes/").removesuffix(".json"): s3_server.get(bucket, k) for k in keys
        }
        assert all(k.startswith("scenes/") and k.endswith(".json") for k in keys), keys
        assert_exact(pull, entries)
    assert_no_leftovers(s3_server, bucket)


def test_multipart_zip_is_exact(s3_server: S3Server, tmp_path: Path) -> None:
    """A 24 MB stored zip goes up as several parts and reads back exactly (zipfile, unzip -t)."""
    bucket = s3_server.bucket("multipart")
    with serve(tmp_path, BIG) as pull:
        done = run(pull, f"s3://{bucket}/big.zip", ANNOPULL_ENGINE_COMPRESS_LEVEL="0")
        assert done.returncode == 0, done.stderr
        head = s3_server.client.head_object(Bucket=bucket, Key="big.zip")
        assert head["ContentLength"] > 20_000_000
        # A multipart object's ETag ends in "-<parts>".
        assert int(head["ETag"].strip('"').rsplit("-", 1)[1]) >= 3
        assert_exact(pull, read_output(fetch(s3_server, bucket, "big.zip", tmp_path)))
    assert_no_leftovers(s3_server, bucket)


@pytest.mark.parametrize(
    ("key", "seed"),
    [
        pytest.param("bf/out.zip", 1, id="zip-seed1"),
        pytest.param("bf/out.zip", 2, id="zip-seed2", marks=pytest.mark.slow),
        pytest.param("bf/out.jsonl", 3, id="jsonl", marks=pytest.mark.slow),
        pytest.param("bf/scenes/", 4, id="prefix", marks=pytest.mark.slow),
    ],
)
def test_kill_then_resume_from_another_machine(
    s3_server: S3Server, tmp_path: Path, key: str, seed: int
) -> None:
    """SIGKILL mid-upload, then --resume from another folder and TMPDIR: exact, only the
    scenes no manifest held fetched again, the upload completed and its state removed."""
    bucket = s3_server.bucket(f"kill-{seed}")
    output = f"s3://{bucket}/{key}"
    state = f"{key}.annopull/"
    machines = [tmp_path / "a", tmp_path / "b"]
    for machine in machines:
        (machine / "tmp").mkdir(parents=True)
    stored = {"ANNOPULL_ENGINE_COMPRESS_LEVEL": "0"}
    with serve(tmp_path, BIG) as pull:
        pull.slow_down(0.04)
        process = subprocess.Popen(
            pull.argv(output),
            env=pull.env() | stored | {"TMPDIR": tmp_of(machines[0])},
            cwd=machines[0],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: manifest_rows(s3_server, bucket, state), process, 60)
        time.sleep(random.Random(seed).uniform(0.1, 1.0))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
        before = settled(pull)
        held = manifest_rows(s3_server, bucket, state)
        assert 0 < len(held) < len(pull.expected())
        assert s3_server.uploads(bucket) == ([] if key.endswith("/") else [key])

        fresh = run(pull, output, cwd=machines[1], TMPDIR=tmp_of(machines[1]))
        assert fresh.returncode == 2
        assert "interrupted run" in fresh.stderr
        assert "Traceback" not in fresh.stderr

        pull.fake.faults.clear()
        done = run(pull, output, "--resume", cwd=machines[1], TMPDIR=tmp_of(machines[1]), **stored)
        assert done.returncode == 0, done.stderr
        second = pull.requests() - before
        assert set(second) == pull.expected().keys() - held.keys()
        assert all(n == 1 for n in second.values())
        assert_exact(pull, read_bucket(s3_server, bucket, key, tmp_path))
        assert list((machines[1]).iterdir()) == [machines[1] / "tmp"]
    assert_no_leftovers(s3_server, bucket)


def read_bucket(s3: S3Server, bucket: str, key: str, tmp: Path) -> dict[str, bytes]:
    """Scene -> bytes of a finished output: one object (zip, JSON Lines) or a prefix."""
    if not key.endswith("/"):
        return read_output(fetch(s3, bucket, key, tmp))
    keys = s3.keys(bucket, key)
    assert all(k.endswith(".json") for k in keys), keys
    return {k.removeprefix(key).removesuffix(".json"): s3.get(bucket, k) for k in keys}


def test_permanent_failure_leaves_no_upload(s3_server: S3Server, tmp_path: Path) -> None:
    """A run that stops for good before anything was durable aborts its multipart upload."""
    bucket = s3_server.bucket("fails")
    project = KognicProject(
        project=PROJECT, annotation_types=(TYPE,), count=400, content_size=1500, page_size=50
    )
    with serve(tmp_path, project) as pull:
        pull.slow_down(0.05)
        process = pull.start(f"s3://{bucket}/x.zip", concurrency=2)
        wait_for(lambda: sum(pull.requests().values()) >= 10, process)
        # The listing's next page is refused for good: the run stops with entries written.
        pull.fake.faults.add(Fault(target="search", status=404, times=10**9))
        _, err = process.communicate(timeout=60)
        assert process.returncode in (1, 2), err
        assert "Traceback" not in err
    assert s3_server.uploads(bucket) == []
    assert s3_server.keys(bucket) == []


def test_missing_bucket_is_one_line_exit_2(s3_server: S3Server, tmp_path: Path) -> None:
    """An output in a bucket that does not exist: exit 2, one line naming it, nothing fetched."""
    with serve(tmp_path) as pull:
        done = run(pull, "s3://no-such-bucket/out.zip")
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            "annopull: error: no such bucket: s3://no-such-bucket/"
        ]
        assert sum(pull.requests().values()) == 0


def test_pull_to_bucket_never_imports_botocore(s3_server: S3Server, tmp_path: Path) -> None:
    """With keys in the environment a pull to S3 needs no botocore: exact even if it is absent."""
    bucket = s3_server.bucket("light")
    with serve(tmp_path, SMALL) as pull:
        # botocore made unimportable: any import of it in the pull would fail the run.
        code = (
            "import sys; sys.modules['botocore'] = None; sys.modules['aiobotocore'] = None\n"
            f"sys.argv = {pull.argv(f's3://{bucket}/x.zip')[2:]!r}\n"
            "from annopull._cli import entry; entry()"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=pull.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert_exact(pull, read_output(fetch(s3_server, bucket, "x.zip", tmp_path)))
    assert_no_leftovers(s3_server, bucket)


def test_annolab_export_to_bucket_is_byte_identical_and_resumes(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AnnoLab export to s3://B/KEY.zip cut short resumes from its staged parts (HTTP
    Range from their end), then lands verified and byte-identical, nothing else left."""
    from annopull._cli import main
    from annopull.testing import AnnoLabProject, FakeAnnoLab, FakePlatforms

    bucket = s3_server.bucket("exports")
    project = AnnoLabProject(owner="Group", name="Alpha", instruments=100, pdf_size=300_000)
    fake = FakeAnnoLab(projects=(project,), workdir=tmp_path / "fake")
    for name in list(os.environ):
        if name.startswith(("ANNOPULL_", "ANNOLAB_", "KOGNIC_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    args = ["annolab", "instruments", "--owner", "Group", "--project", "Alpha", "-q"]
    args += ["--include-files", "-o", f"s3://{bucket}/exports/export.zip"]
    with run_in_thread(FakePlatforms(annolab=fake)):
        for name, value in {
            "ANNOLAB_API_KEY": fake.api_key,
            "ANNOPULL_ANNOLAB_API_URL": fake.api_url,
            "ANNOPULL_ANNOLAB_POLL_INTERVAL": "0.01",
            "ANNOPULL_ANNOLAB_POLL_MAX_INTERVAL": "0.05",
            "ANNOPULL_ENGINE_BACKOFF_BASE": "0.01",
            "ANNOPULL_ENGINE_BACKOFF_MAX": "0.05",
            "ANNOPULL_ENGINE_MAX_ATTEMPTS": "2",
        }.items():
            monkeypatch.setenv(name, value)
        fake.faults.add(Fault(target="download", truncate_after=10_000_000, times=10))
        assert main(args) == 1
        assert s3_server.uploads(bucket) == ["exports/export.zip.annopull/download.part"]
        assert "exports/export.zip" not in s3_server.keys(bucket)

        fake.faults.clear()
        assert main(args) == 0
        served = fake.export_path(2).read_bytes()
        assert len(served) > 25_000_000
        assert s3_server.get(bucket, "exports/export.zip") == served
        # The second run went on from the first run's durable parts (5 MiB and more each).
        starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in fake.stats.download_ranges]
        assert max(starts) >= 10 << 20
    assert s3_server.keys(bucket) == ["exports/export.zip"]
    assert s3_server.uploads(bucket) == []


def test_kognic_scenes_to_bucket(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kognic scenes -o s3://B/KEY.zip`` writes the listed scenes, exactly, to one object."""
    from annopull._cli import main
    from annopull.testing import FakeKognic, FakePlatforms
    from test_cli_kognic_get import PROJECT as SCENES_PROJECT
    from test_cli_kognic_get import _env as scenes_env
    from test_cli_kognic_get import _inline, _scene_list

    bucket = s3_server.bucket("scenes")
    fake = FakeKognic(projects=[SCENES_PROJECT])
    for name in list(os.environ):
        if name.startswith(("ANNOPULL_", "KOGNIC_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    with run_in_thread(FakePlatforms(kognic=fake)):
        for name, value in scenes_env(fake).items():
            monkeypatch.setenv(name, value)
        served = list(fake.expected("P", "T"))[:6]
        _scene_list(tmp_path / "scenes.txt", [e.scene_uuid for e in served])
        argv = ["kognic", "scenes", "--scene-list", "scenes.txt", "--annotation-type", "T", "-q"]
        assert main([*argv, "-o", f"s3://{bucket}/picked.zip"]) == 0
    path = fetch(s3_server, bucket, "picked.zip", tmp_path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        got = {name: archive.read(name) for name in archive.namelist()}
    assert got == {f"{e.scene_uuid}.json": _inline(e.content) for e in served}
    assert_no_leftovers(s3_server, bucket)

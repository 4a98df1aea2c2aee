"""The same Kognic pull to an S3 bucket and to a local zip, in the same run, alternating.

Starts ``annopull fake serve`` and a moto S3 server (``moto_server``, loopback only) each in
its own process, then runs ``annopull kognic -o s3://bench/out.zip`` and ``-o out.zip``
against the same fake, alternating, ``--runs`` times, and prints the medians (items/s, MB/s,
wall, peak RSS) with S3's ratio to local, and PASS/MISS against the targets: peak RSS within
30 % of the local pull's, throughput within 20 %. Every pull is a child process measured by
``os.wait4`` (see ``_common.measure``); the S3 object is read back and checked after each run.

moto is the limit here, not annopull: it is a Python server on the same two cores (every
part is received, MD5-hashed and kept in its memory), so the S3 figures are a floor.

Usage::

    python benchmarks/bench_s3.py [--runs 3] [--fraction 0.25] [--json FILE]

Needs the ``test-s3`` extra (moto[server]; boto3 with it reads the objects back).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ChildFailed, Measured, MiB, fake_serve, machine, measure, median

BUCKET = "bench"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class Workload:
    name: str
    count: int
    content_size: int


WORKLOADS = (Workload("small", 20_000, 10 * 1024), Workload("large", 200, 5 * MiB))


@dataclass
class Row:
    workload: str
    target: str
    runs: list[Measured] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def items_per_s(self, count: int) -> float:
        return median([count / m.wall for m in self.runs])

    def mb_per_s(self) -> float:
        return median([size / m.wall / 1e6 for size, m in zip(self.sizes, self.runs, strict=True)])

    def rss_mib(self) -> float:
        return median([m.rss / MiB for m in self.runs])

    def wall(self) -> float:
        return median([m.wall for m in self.runs])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 in its own process on 127.0.0.1; yields its endpoint URL."""
    port = _free_port()
    binary = shutil.which("moto_server") or "moto_server"
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | DUMMY_AWS,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise ChildFailed("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys())


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": DUMMY_AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
    }


def _env(fake: dict[str, Any], endpoint: str) -> dict[str, str]:
    prefixes = ("ANNOPULL_", "KOGNIC_", "ANNOLAB_", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return (
        env
        | DUMMY_AWS
        | {
            "AWS_ENDPOINT_URL": endpoint,
            "KOGNIC_CLIENT_ID": fake["client_id"],
            "KOGNIC_CLIENT_SECRET": fake["client_secret"],
            "ANNOPULL_KOGNIC_API_URL": fake["api_url"],
            "ANNOPULL_KOGNIC_AUTH_URL": fake["auth_url"],
        }
    )


def _command(fake: dict[str, Any], output: str, summary: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "annopull",
        "kognic",
        "--project",
        fake["project"],
        "--annotation-type",
        fake["annotation_type"],
        "-o",
        output,
        "-q",
        "--summary",
        str(summary),
    ]


def _checked(summary: Path, count: int) -> int:
    data: dict[str, Any] = json.loads(summary.read_text())
    if data.get("downloaded") != count or data.get("failed"):
        raise ChildFailed(f"pulled {data.get('downloaded')} of {count}: {data.get('failed')}")
    return int(data["bytes"])


def _zip_entries(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        if archive.testzip() is not None:
            raise ChildFailed(f"{path}: a CRC does not match")
        return len(archive.namelist())


def run(workload: Workload, runs: int, scratch: Path) -> tuple[Row, Row]:
    local, s3 = Row(workload.name, "local zip"), Row(workload.name, "s3 zip")
    serve = ["--count", str(workload.count), "--content-size", str(workload.content_size)]
    serve += ["--page-size", "500", "--url-ttl", "86400"]
    with fake_serve(*serve) as described, moto_server() as endpoint:
        fake = described["kognic"]
        env = _env(fake, endpoint)
        client = _s3(endpoint)
        client.create_bucket(Bucket=BUCKET)
        summary = scratch / "summary.json"
        out = scratch / "out.zip"

        def to_local() -> None:
            shutil.rmtree(scratch / "got", ignore_errors=True)
            out.unlink(missing_ok=True)
            local.runs.append(measure(_command(fake, str(out), summary), env=env, cwd=scratch))
            local.sizes.append(_checked(summary, workload.count))
            if _zip_entries(out) != workload.count:
                raise ChildFailed("the local zip is short")
            out.unlink()

        def to_s3() -> None:
            url = f"s3://{BUCKET}/{workload.name}.zip"
            s3.runs.append(measure(_command(fake, url, summary), env=env, cwd=scratch))
            s3.sizes.append(_checked(summary, workload.count))
            got = scratch / "got.zip"
            client.download_file(BUCKET, f"{workload.name}.zip", str(got))
            if _zip_entries(got) != workload.count:
                raise ChildFailed("the S3 zip is short")
            if client.list_multipart_uploads(Bucket=BUCKET).get("Uploads"):
                raise ChildFailed("an upload was left behind")
            got.unlink()
            client.delete_object(Bucket=BUCKET, Key=f"{workload.name}.zip")

        for index in range(runs):
            for step in (to_local, to_s3) if index % 2 == 0 else (to_s3, to_local):
                step()
                print(f"  {workload.name}: {step.__name__} run {index + 1} done", flush=True)
    return local, s3


def report(results: Sequence[tuple[Workload, Row, Row]]) -> tuple[str, bool]:
    lines = [
        "| workload | output | items/s | MB/s | wall s | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    verdicts: list[str] = []
    ok = True
    for workload, local, s3 in results:
        for row in (local, s3):
            lines.append(
                f"| {workload.count:,} x {workload.content_size // 1024:,} KiB | {row.target} | "
                f"{row.items_per_s(workload.count):,.0f} | {row.mb_per_s():.1f} | "
                f"{row.wall():.1f} | {row.rss_mib():.1f} |"
            )
        rss = s3.rss_mib() / local.rss_mib()
        speed = s3.items_per_s(workload.count) / local.items_per_s(workload.count)
        for what, ratio, passed, goal in (
            ("peak RSS", rss, rss <= 1.3, "≤ 1.30×"),
            ("throughput", speed, speed >= 0.8, "≥ 0.80×"),
        ):
            ok = ok and passed
            verdict = "PASS" if passed else "MISS"
            verdicts.append(f"- {workload.name}: {what} S3/local {ratio:.2f}× ({goal}): {verdict}")
    return "\n".join([*lines, "", *verdicts]), ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each output (default 3)")
    parser.add_argument(
        "--fraction", type=float, default=1.0, help="of each workload's items (e.g. 0.25)"
    )
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as scratch:
        for full in WORKLOADS:
            count = max(1, round(full.count * args.fraction))
            workload = Workload(full.name, count, full.content_size)
            print(
                f"== {workload.name}: {workload.count:,} x {workload.content_size:,} B", flush=True
            )
            folder = Path(scratch) / workload.name
            folder.mkdir()
            local, s3 = run(workload, args.runs, folder)
            results.append((workload, local, s3))
    text, ok = report(results)
    print(json.dumps(machine()))
    print(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "runs": [
                        {
                            "workload": w.name,
                            "target": row.target,
                            "wall": [m.wall for m in row.runs],
                            "rss": [m.rss for m in row.runs],
                            "bytes": row.sizes,
                        }
                        for w, local, s3 in results
                        for row in (local, s3)
                    ],
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

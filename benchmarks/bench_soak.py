"""Soak: one process pulling for a long time through mixed faults, watched for leaks.

The fakes run in their own process (``annopull fake serve``) with seeded chaos: a rate limit
answering 429 + Retry-After, a share of 5xx answers, cut and stalled bodies, expiring signed
URLs, latency spread. One annopull process (the library, so that its memory and file
descriptors are the ones measured) pulls the whole project into a zip again and again until
the time is up, and after every pull prints: items delivered and failed, retries and
pauses, the adaptive concurrency limit, peak and current RSS, and open file descriptors.

At the end it says whether anything was lost (every pull must deliver every scene exactly
once, byte for byte), and compares RSS and descriptors at the start and the end (they
must not grow with the number of pulls).

    python benchmarks/bench_soak.py                  # 30 minutes
    python benchmarks/bench_soak.py --minutes 2      # a short one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import annopull


@contextmanager
def chaotic_fake(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """``annopull fake serve`` with mixed faults, in its own process; yields its description."""
    command = [
        sys.executable,
        "-m",
        "annopull",
        "fake",
        "serve",
        "--count",
        str(args.count),
        "--content-size",
        str(args.content_size),
        "--page-size",
        "200",
        "--chaos-seed",
        str(args.seed),
        "--rate-limit",
        str(args.rate_limit),
        "--error-rate",
        str(args.error_rate),
        "--cut-rate",
        str(args.cut_rate),
        "--stall-rate",
        str(args.stall_rate),
        "--stall",
        "2",
        "--latency-mean",
        str(args.latency),
        "--latency-spread",
        str(args.latency / 2),
        "--url-ttl",
        str(args.url_ttl),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())["kognic"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def rss_mib() -> float:
    """Resident memory now (not the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def check(out: Path, expected_count: int) -> int:
    """The zip verifies and holds each scene once; returns how many entries it holds."""
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None, "a CRC does not match"
        names = archive.namelist()
    assert len(names) == len(set(names)), "an entry is in the zip twice"
    assert len(names) <= expected_count
    return len(names)


async def soak(args: argparse.Namespace, fake: dict[str, Any], work: Path) -> int:
    env = {"KOGNIC_CLIENT_ID": fake["client_id"], "KOGNIC_CLIENT_SECRET": fake["client_secret"]}
    overrides = {
        "kognic": {"api_url": fake["api_url"], "auth_url": fake["auth_url"]},
        "engine": {"concurrency": args.concurrency},
    }
    deadline = time.monotonic() + args.minutes * 60
    start_rss, start_fds = rss_mib(), open_fds()
    print(f"start: RSS {start_rss:.1f} MiB, {start_fds} open file descriptors", flush=True)
    header = (
        f"{'pull':>4} {'s':>6} {'items':>6} {'failed':>6} {'lost':>5} {'RSS MiB':>8} {'fds':>4}"
    )
    print(header + "  transport (per host, by port)", flush=True)
    pulls = lost_total = retries_before = 0
    async with annopull.Client.from_config(env=env, overrides=overrides) as client:
        while time.monotonic() < deadline:
            pulls += 1
            out = work / f"soak-{pulls % 2}.zip"
            out.unlink(missing_ok=True)
            began = time.monotonic()
            report = await client.kognic.download(
                fake["project"], fake["annotation_type"], sink=annopull.ZipSink(out)
            )
            held = check(out, args.count)
            lost = args.count - held - len(report.failures)
            lost_total += max(lost, 0)
            summary = report.to_dict()
            retries = summary.get("retries", 0)
            print(
                f"{pulls:>4} {time.monotonic() - began:>6.1f} {held:>6} "
                f"{len(report.failures):>6} {lost:>5} {rss_mib():>8.1f} {open_fds():>4}  "
                f"retries {retries - retries_before}, {_limits(summary.get('hosts', {}))}",
                flush=True,
            )
            retries_before = retries
    end_rss, end_fds = rss_mib(), open_fds()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"end after {pulls} pulls: RSS {end_rss:.1f} MiB (start {start_rss:.1f}, peak "
        f"{peak:.1f}), {end_fds} open file descriptors (start {start_fds}); "
        f"items lost without a failure to show for it: {lost_total}",
        flush=True,
    )
    return 1 if lost_total else 0


def _limits(hosts: dict[str, Any]) -> str:
    """Each host's adaptive limit now and its range so far, and its pauses (cumulative)."""
    return "; ".join(
        f"{host.rsplit(':', 1)[-1]}: limit {h['limit']} ({h['limit_min']}..{h['limit_max']}), "
        f"{h['pauses']} pauses"
        for host, h in hosts.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=3000, help="scenes in the project")
    parser.add_argument("--content-size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate-limit", type=float, default=200.0, help="requests/s per server")
    parser.add_argument("--error-rate", type=float, default=0.1, help="share of 5xx answers")
    parser.add_argument("--cut-rate", type=float, default=0.05, help="share of cut bodies")
    parser.add_argument("--stall-rate", type=float, default=0.005, help="share of stalled bodies")
    parser.add_argument("--latency", type=float, default=0.01, help="mean storage latency, s")
    parser.add_argument("--url-ttl", type=float, default=20.0, help="signed URL lifetime, s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, chaotic_fake(args) as fake:
        code = asyncio.run(soak(args, fake, Path(tmp)))
    raise SystemExit(code)


if __name__ == "__main__":
    main()

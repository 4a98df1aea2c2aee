"""Kognic bulk pull: throughput against the official client's way, and memory vs. size.

Runs the fake platforms in their own process (``annopull fake serve``) so that serving never
competes with the code measured inside one process, then measures, median of ``--runs``:

* baseline: what the official client does — content fetched one file after another, a new
  HTTP client per file — on a sample of the scenes;
* annopull: ``annopull kognic ... -o out.zip`` as a subprocess, its wall time and peak RSS;
* memory: peak RSS of a 2,000- vs a 20,000-annotation pull (the ratio should be ~1).

The fake storage waits ``--latency`` seconds per answer (default 20 ms), like the round
trip to a real cloud store; ``--latency 0`` measures raw CPU cost on loopback instead.

    python benchmarks/bench_kognic.py [--runs 3] [--count 20000] [--sample 300] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from _common import ChildFailed, fake_serve, measure


@contextmanager
def fake_server(count: int, content_size: int, latency: float) -> Iterator[dict[str, Any]]:
    """``annopull fake serve`` in its own process; yields its Kognic description."""
    options = ["--count", str(count), "--content-size", str(content_size)]
    options += ["--page-size", "500", "--latency", str(latency)]
    with fake_serve(*options) as described:
        yield described["kognic"]


def run_annopull(
    fake: dict[str, Any],
    out: Path,
    concurrency: int,
    src: Path | None = None,
    *,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one CLI pull (of the code in ``src``, if given),
    with ``extra`` options, run in ``cwd``."""
    env = dict(
        os.environ,
        **({"PYTHONPATH": str(src)} if src is not None else {}),
        KOGNIC_CLIENT_ID=fake["client_id"],
        KOGNIC_CLIENT_SECRET=fake["client_secret"],
        ANNOPULL_KOGNIC_API_URL=fake["api_url"],
        ANNOPULL_KOGNIC_AUTH_URL=fake["auth_url"],
    )
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "annopull", "kognic", "--project", fake["project"]]
    command += ["--annotation-type", fake["annotation_type"], "-o", str(out), "-q"]
    command += ["--concurrency", str(concurrency), *extra]
    try:
        # measure() reads the rusage through a small launcher: a child spawned straight
        # from this process would start its peak RSS at ours (see _common.measure).
        measured = measure(command, env=env, cwd=cwd)
    except ChildFailed as exc:
        raise SystemExit(f"annopull failed: {exc}") from exc
    return measured.wall, measured.rss


async def baseline(fake: dict[str, Any], sample: int) -> float:
    """Seconds per item, fetched one by one with a new HTTP client each (official client)."""
    async with aiohttp.ClientSession() as session:
        token_form = {
            "grant_type": "client_credentials",
            "client_id": fake["client_id"],
            "client_secret": fake["client_secret"],
        }
        async with session.post(f"{fake['auth_url']}/v1/auth/oauth/token", data=token_form) as r:
            token = (await r.json())["access_token"]
        url = (
            f"{fake['api_url']}/v1/annotations/projects/{fake['project']}"
            f"/annotation-type/{fake['annotation_type']}/search"
        )
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
            items = (await r.json())["data"][:sample]
    started = time.perf_counter()
    for item in items:
        async with aiohttp.ClientSession() as session, session.get(item["uri"]) as r:
            await r.read()
    return (time.perf_counter() - started) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--content-size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--latency",
        type=float,
        default=0.02,
        help="seconds the fake storage waits per answer, like a cloud store's round trip",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="SRC",
        help="also run the annopull in SRC (a src/ folder of another checkout, e.g. a git "
        "worktree of the commit before a refactor), alternating with this one, and print both",
    )
    args = parser.parse_args()
    if args.before is not None:
        compare(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.zip"
        with fake_server(args.count, args.content_size, args.latency) as fake:
            base = statistics.median(
                asyncio.run(baseline(fake, args.sample)) for _ in range(args.runs)
            )
            big = [run_annopull(fake, out, args.concurrency) for _ in range(args.runs)]
        with fake_server(args.small, args.content_size, args.latency) as fake:
            small = [run_annopull(fake, out, args.concurrency) for _ in range(args.runs)]

    big_time = statistics.median(t for t, _ in big)
    big_rss = statistics.median(r for _, r in big)
    small_rss = statistics.median(r for _, r in small)
    ours = big_time / args.count
    print(
        f"annotations: {args.count} x ~{args.content_size} B, concurrency {args.concurrency}, "
        f"median of {args.runs}"
    )
    print(f"baseline (one by one, new client each): {1 / base:8.0f} items/s")
    print(
        f"annopull -> zip:                        {1 / ours:8.0f} items/s  "
        f"({big_time:.1f} s; {base / ours:.1f}x the baseline)"
    )
    print(f"peak RSS {args.small:>6} annotations: {small_rss / 2**20:7.1f} MiB")
    print(
        f"peak RSS {args.count:>6} annotations: {big_rss / 2**20:7.1f} MiB  "
        f"(ratio {big_rss / small_rss:.2f} for {args.count / args.small:.0f}x the items)"
    )


def compare(args: argparse.Namespace) -> None:
    """Before vs after on the same fake, runs alternating so that noise hits both alike."""
    runs: dict[str, list[tuple[float, int]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.zip"
        with fake_server(args.count, args.content_size, args.latency) as fake:
            for _ in range(args.runs):
                runs["before"].append(run_annopull(fake, out, args.concurrency, args.before))
                runs["after"].append(run_annopull(fake, out, args.concurrency))
    print(
        f"annotations: {args.count} x ~{args.content_size} B, "
        f"latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, "
        f"median of {args.runs}, runs alternating"
    )
    medians = {}
    for name, results in runs.items():
        seconds = statistics.median(t for t, _ in results)
        rss = statistics.median(r for _, r in results)
        medians[name] = (seconds, rss)
        print(
            f"{name:>6}: {args.count / seconds:8.0f} items/s ({seconds:.1f} s), "
            f"peak RSS {rss / 2**20:6.1f} MiB"
        )
    (b_time, b_rss), (a_time, a_rss) = medians["before"], medians["after"]
    print(f"after/before: throughput {b_time / a_time:.2f}x, peak RSS {a_rss / b_rss:.2f}x")


if __name__ == "__main__":
    main()

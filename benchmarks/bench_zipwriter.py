"""Throughput and memory flatness of ZipWriter against stdlib zipfile.

Usage: ``python benchmarks/bench_zipwriter.py [--runs 3] [--sizes 10000 100000]``

Each measurement runs in a fresh child process so its peak RSS (``ru_maxrss``) belongs to that
run alone. Both writers get the same ~1 KiB JSON entries, deflated at level 6. The figure that
matters for flat memory is the peak-RSS ratio between the large and the small run: ZipWriter
keeps no per-entry state in RAM, stdlib zipfile keeps a ZipInfo per entry.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from annopull._pipeline.journal import Journal

from annopull._zip.writer import WholeEntry, ZipWriter


def entry_data(i: int) -> bytes:
    body = {"scene": f"{i:08x}-uuid", "created": "2024-05-17T13:45:31Z", "boxes": list(range(60))}
    return json.dumps(body).encode() * 3


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def write_annopull(count: int, directory: Path) -> int:
    journal = Journal.create(directory / "bench.journal", kind="zip", fingerprint={})
    writer = await ZipWriter.open(directory / "bench.zip", journal=journal)
    total = 0
    for i in range(count):
        data = entry_data(i)
        total += len(data)
        await writer.add_entry(f"scenes/{i:07d}.json", _one(data), size_hint=len(data))
    await writer.close()
    return total


async def write_annopull_batched(count: int, directory: Path, batch: int = 64) -> int:
    """The Kognic pull's path for small documents: many whole entries per worker-thread hop."""
    journal = Journal.create(directory / "bench.journal", kind="zip", fingerprint={})
    writer = await ZipWriter.open(directory / "bench.zip", journal=journal)
    total = 0
    for start in range(0, count, batch):
        entries = [
            WholeEntry(name=f"scenes/{i:07d}.json", data=entry_data(i))
            for i in range(start, min(start + batch, count))
        ]
        total += sum(len(e.data) for e in entries)
        await writer.add_whole_entries(entries)
    await writer.close()
    return total


def write_stdlib(count: int, directory: Path) -> int:
    total = 0
    with zipfile.ZipFile(directory / "bench.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for i in range(count):
            data = entry_data(i)
            total += len(data)
            z.writestr(f"scenes/{i:07d}.json", data)
    return total


def child(kind: str, count: int) -> None:
    """Run one measurement and print it as JSON."""
    directory = Path(tempfile.mkdtemp(prefix="bench-zip-"))
    try:
        start = time.perf_counter()
        if kind == "annopull":
            total = anyio.run(write_annopull, count, directory)
        elif kind == "batched":
            total = anyio.run(write_annopull_batched, count, directory)
        else:
            total = write_stdlib(count, directory)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(directory)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "bytes": total, "peak_mib": peak_mib}))


def measure(kind: str, count: int, runs: int) -> dict[str, float]:
    """Median seconds and peak RSS over ``runs`` fresh child processes."""
    results = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(count)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.append(json.loads(out))
    seconds = statistics.median(r["seconds"] for r in results)
    return {
        "seconds": seconds,
        "entries_per_s": count / seconds,
        "mb_per_s": results[0]["bytes"] / seconds / 1e6,
        "peak_mib": statistics.median(r["peak_mib"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    small, large = args.sizes
    table: dict[tuple[str, int], dict[str, float]] = {}
    print(f"{'writer':<9} {'entries':>8} {'entries/s':>10} {'MB/s':>7} {'peak RSS MiB':>13}")
    kinds = ("annopull", "batched", "stdlib")
    for kind in kinds:
        for count in (small, large):
            row = measure(kind, count, args.runs)
            table[kind, count] = row
            print(
                f"{kind:<9} {count:>8} {row['entries_per_s']:>10.0f} {row['mb_per_s']:>7.1f}"
                f" {row['peak_mib']:>13.1f}"
            )
    for kind in kinds:
        ratio = table[kind, large]["peak_mib"] / table[kind, small]["peak_mib"]
        print(f"{kind}: peak RSS {large} / {small} entries = {ratio:.2f}x")
    for kind in ("annopull", "batched"):
        speed = table[kind, large]["seconds"] / table["stdlib", large]["seconds"]
        print(f"{kind} takes {speed:.2f}x the time of stdlib zipfile at {large} entries (median)")


if __name__ == "__main__":
    main()

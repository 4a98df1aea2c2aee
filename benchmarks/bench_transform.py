"""Convert while pulling: a CPU-heavy transform with 1 and 2 worker processes.

The fake platforms run in their own process (``annopull fake serve``); each pull is
``annopull kognic ... --transform transform_for_bench:convert --workers N`` as a measured
subprocess (wall time from spawn to exit, peak RSS), median of ``--runs``.
``transform_for_bench.convert`` turns each OpenLABEL document's cuboids into box corners in
pure Python, about 10 ms a document. A plain pull of the same project (no transform) shows
what the download costs.

    python benchmarks/bench_transform.py [--runs 3] [--count 3000]

Prints a table and, last, one JSON line with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from _common import fake_serve, machine
from bench_kognic import run_annopull

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--content-size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    cases = {
        "no transform": [],
        "1 worker": ["--transform", "transform_for_bench:convert", "--workers", "1"],
        "2 workers": ["--transform", "transform_for_bench:convert", "--workers", "2"],
    }
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in cases}
    options = ["--count", str(args.count), "--content-size", str(args.content_size)]
    with tempfile.TemporaryDirectory() as tmp, fake_serve(*options, "--page-size", "500") as f:
        fake = f["kognic"]
        out = Path(tmp) / "out.zip"
        # Runs alternate between the cases, so that the machine's other load hits all alike.
        for _ in range(args.runs):
            for name, extra in cases.items():
                # cwd: the transform's module is imported from the current folder.
                run = run_annopull(fake, out, args.concurrency, extra=extra, cwd=HERE)
                results[name].append(run)

    medians = {}
    print(
        f"{args.count} annotations x ~{args.content_size} B, median of {args.runs}, "
        f"{machine()['nproc']} CPUs"
    )
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rss = statistics.median(r for _, r in runs)
        medians[name] = {"seconds": round(wall, 2), "items_per_s": round(args.count / wall, 1)}
        medians[name]["peak_rss_mib"] = round(rss / 2**20, 1)
        print(
            f"{name:>13}: {args.count / wall:7.1f} items/s ({wall:6.1f} s), "
            f"peak RSS {rss / 2**20:6.1f} MiB"
        )
    ratio = medians["1 worker"]["seconds"] / medians["2 workers"]["seconds"]
    print(f"2 workers / 1 worker: {ratio:.2f}x the throughput")
    print(json.dumps({"machine": machine(), "medians": medians, "ratio_2_to_1": round(ratio, 2)}))


if __name__ == "__main__":
    main()

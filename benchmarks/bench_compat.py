"""The drop-in synchronous client against the official client's way, on the same fake.

Both are run.py's ``official`` child: kognic-io's ``get_project_annotations`` loop writing a
BytesIO zip as Kognic's documentation shows. Once with kognic-io itself (in the baselines'
venv, which run.py makes, on a ``--sample`` of the scenes: it fetches one file after another)
and once with ``annopull.compat.kognic_io`` (annopull's environment, every scene), the import
being the only difference. Against one ``annopull fake serve`` whose storage answers
``--latency`` seconds late, one after another, alternating, ``--runs`` times. Prints the
medians as run.py does (items/s over the child's own timing, from client construction to
the zip's end, so interpreter start-up is out; wall includes it) and the ratio.

    python benchmarks/bench_compat.py [--runs 3] [--count 3000] [--sample 200] [--latency 0.03]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import run as bench
from _common import fake_serve, machine, measure

SCENARIO = "K-compat"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per client (median taken)")
    parser.add_argument("--count", type=int, default=3000, help="scenes the drop-in pulls")
    parser.add_argument("--sample", type=int, default=200, help="scenes kognic-io pulls")
    parser.add_argument("--content-size", type=int, default=10 * 1024, help="bytes per scene")
    parser.add_argument("--latency", type=float, default=0.03, help="storage latency, seconds")
    parser.add_argument("--venv", type=Path, default=bench.DEFAULT_VENV, help="kognic-io's venv")
    parser.add_argument("--json", type=Path, help="also write the runs here as JSON")
    args = parser.parse_args(argv)

    info = machine()
    print(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, Python {info['python']}, "
        f"load {info['load_average']}; {info['date']}",
        flush=True,
    )
    venv_python, problem = bench._venv(args.venv)
    rows = {
        "annopull": bench.Row(
            scenario=SCENARIO,
            tool="annopull",
            label=f"drop-in KognicIOClient (all {args.count:,})",
        ),
        "official": bench.Row(
            scenario=SCENARIO,
            tool="official",
            label=f"kognic-io KognicIOClient (sample {args.sample:,})",
        ),
    }
    serve = ["--count", str(args.count), "--content-size", str(args.content_size)]
    serve += ["--page-size", str(bench.PAGE_SIZE), "--latency", str(args.latency)]
    serve += ["--url-ttl", str(bench.URL_TTL)]
    with fake_serve(*serve) as described:
        fake = described["kognic"]
        env = bench._clean_env(
            KOGNIC_CLIENT_ID=fake["client_id"], KOGNIC_CLIENT_SECRET=fake["client_secret"]
        )

        def one(tool: str, python: Path | str, params: dict[str, object], items: int) -> None:
            measured = measure(bench._child(python, "official", {"fake": fake, **params}), env=env)
            got = measured.json()
            bench._check_count(tool, got["items"], items)
            rows[tool].add(measured, items=got["items"], size=got["bytes"], seconds=got["seconds"])

        def drop_in() -> None:
            one(
                "annopull", sys.executable, {"sample": args.count, "client": "annopull"}, args.count
            )

        def official() -> None:
            assert venv_python is not None
            one("official", venv_python, {"sample": args.sample}, args.sample)

        tools = [drop_in] if venv_python is None else [drop_in, official]
        print(
            f"{SCENARIO}: {args.count:,} x {args.content_size:,} B, storage "
            f"{args.latency * 1000:.0f} ms away; {args.runs} run(s) per client",
            flush=True,
        )
        bench._alternating(args.runs, tools)

    print()
    print(bench.table(list(rows.values())))
    if problem:
        print(f"NOTE: kognic-io did not run: {problem}")
    else:
        ratio = rows["annopull"].items_s / rows["official"].items_s
        print(f"\ndrop-in / kognic-io: {ratio:.1f}x items/s (medians of {args.runs})")
    if args.json is not None:
        result = {
            "machine": info,
            "params": vars(args) | {"venv": str(args.venv), "json": str(args.json)},
            "tools": {tool: row.summary() for tool, row in rows.items()},
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

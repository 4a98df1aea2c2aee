"""Benchmark: an AnnoLab export of 2 GiB downloads at full speed with flat memory.

Not a test. Starts ``annopull fake serve`` in separate processes (one with a 256 MiB
export, one with a 2 GiB export), builds one export job on each, then runs every measured
download in a fresh child process that does nothing else, so its peak RSS
(``ru_maxrss``) is the download's alone:

* ``annopull``: :meth:`AnnoLabSource.download` (streamed to .part, CRC-verified, renamed);
* ``baseline``: the same signed URL read with plain aiohttp ``await resp.read()``.

Prints the median MB/s and peak RSS of each, and the ratios. Usage::

    python benchmarks/bench_annolab.py [--runs 3] [--sizes 256M,2G] [--no-baseline-2g]
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
from pathlib import Path
from typing import Any

import anyio

from annopull._config import AnnoLabConfig, EngineConfig, Secret
from annopull._sources.annolab import AnnoLabSource, ExportJob, InstrumentsExport
from annopull._transport.auth import ApiKeyAuth
from annopull._transport.http import Transport

MiB = 1 << 20
TARGET_RSS_MIB = 100


# -- child side: one measured download per process ------------------------------------------


def _source(transport: Transport, info: dict[str, Any]) -> AnnoLabSource:
    config = AnnoLabConfig(api_url=info["api_url"], poll_interval=0.1, poll_max_interval=0.5)
    return AnnoLabSource(transport=transport, config=config, auth=ApiKeyAuth(Secret(info["key"])))


async def _fresh_job(source: AnnoLabSource, info: dict[str, Any]) -> ExportJob:
    """Re-poll the job built by the parent, for a freshly signed download URL."""
    job = ExportJob(
        kind="instruments", label=info["label"], status_url=info["status_url"], status="started"
    )
    return await source.wait(await source.poll(job))


async def _child(mode: str, info: dict[str, Any], output: Path) -> dict[str, Any]:
    async with Transport(engine=EngineConfig()) as transport:
        source = _source(transport, info)
        job = await _fresh_job(source, info)
        started = time.perf_counter()
        if mode == "annopull":
            result = await source.download(job, output)
            size = result.size
        else:
            assert job.download_url is not None
            async with transport.session.get(job.download_url) as resp:
                size = len(await resp.read())
        seconds = time.perf_counter() - started
    # Linux reports ru_maxrss in KiB.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"bytes": size, "seconds": seconds, "peak_rss": rss}


# -- parent side -----------------------------------------------------------------------------


def _parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def _start_fake(size: int, workdir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    command = [sys.executable, "-m", "annopull", "fake", "serve"]
    args = ["--annolab-export-size", str(size), "--workdir", str(workdir)]
    process = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError("annopull fake serve did not start")
    return process, json.loads(line)["annolab"]


async def _build_job(described: dict[str, Any]) -> dict[str, Any]:
    info = {"api_url": described["api_url"], "key": described["api_key"]}
    async with Transport(engine=EngineConfig()) as transport:
        source = _source(transport, {**info, "label": ""})
        request = InstrumentsExport(
            owner=described["owner"], project=described["project"], include_files=True
        )
        job = await source.wait(await source.start(request))
    return {**info, "status_url": job.status_url, "label": job.label}


def _run_child(mode: str, info: dict[str, Any], output: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, json.dumps(info), str(output)]
    for _attempt in range(3):
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode == 0:
            break
        # The baseline has no retries: a dropped connection fails the run; say so, try again.
        last = done.stderr.strip().splitlines()[-1:] or ["?"]
        print(f"  ({mode} run failed, repeating: {last[0][:200]})", flush=True)
    else:
        raise RuntimeError(f"{mode} child failed 3 times:\n{done.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(done.stdout)
    output.unlink(missing_ok=True)
    return measured


def _measure(
    label: str, mode: str, info: dict[str, Any], runs: int, scratch: Path
) -> dict[str, float]:
    samples = [_run_child(mode, info, scratch / "export.zip") for _ in range(runs)]
    mbps = statistics.median(s["bytes"] / s["seconds"] / 1e6 for s in samples)
    rss = statistics.median(s["peak_rss"] for s in samples) / MiB
    size = samples[0]["bytes"] / MiB
    print(f"{label:<26} {size:9.0f} MiB  {mbps:8.1f} MB/s  peak RSS {rss:7.1f} MiB", flush=True)
    return {"mbps": mbps, "rss_mib": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--sizes", default="256M,2G", help="export sizes, comma-separated")
    parser.add_argument(
        "--no-baseline-2g",
        action="store_true",
        help="skip the resp.read() baseline above 1 GiB (it needs that much RAM)",
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-annolab-"))
    results: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for size in map(_parse_size, args.sizes.split(",")):
            process, described = _start_fake(size, scratch / f"fake-{size}")
            try:
                info = anyio.run(_build_job, described)
                name = f"{size / MiB:.0f} MiB"
                results["annopull", size] = _measure(
                    f"annopull download {name}", "annopull", info, args.runs, scratch
                )
                if not (args.no_baseline_2g and size > 1 << 30):
                    results["baseline", size] = _measure(
                        f"aiohttp resp.read() {name}", "baseline", info, args.runs, scratch
                    )
            except RuntimeError:
                print(f"  (fake server exit status: {process.poll()})", flush=True)
                raise
            finally:
                process.terminate()
                process.wait(timeout=30)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _print_ratios(results)
    return 0


def _print_ratios(results: dict[tuple[str, int], dict[str, float]]) -> None:
    sizes = sorted({size for _, size in results})
    for size in sizes:
        ours, base = results.get(("annopull", size)), results.get(("baseline", size))
        if ours and base:
            speed = ours["mbps"] / base["mbps"]
            rss = ours["rss_mib"] / base["rss_mib"]
            print(f"{size / MiB:.0f} MiB: annopull/baseline speed {speed:.2f}x, RSS {rss:.2f}x")
    if len(sizes) > 1:
        small, big = results["annopull", sizes[0]], results["annopull", sizes[-1]]
        print(
            f"annopull RSS {sizes[-1] / MiB:.0f} MiB vs {sizes[0] / MiB:.0f} MiB export: "
            f"{big['rss_mib'] / small['rss_mib']:.2f}x"
        )
    biggest = results["annopull", sizes[-1]]["rss_mib"]
    verdict = "OK" if biggest < TARGET_RSS_MIB else "OVER TARGET"
    print(f"peak RSS at the largest size: {biggest:.1f} MiB (target < {TARGET_RSS_MIB}): {verdict}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        measured = anyio.run(_child, sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4]))
        print(json.dumps(measured))
        sys.exit(0)
    sys.exit(main())

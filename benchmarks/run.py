"""One benchmark command: every scenario, annopull and its baselines, in the same run.

Starts ``annopull fake serve`` in its own process per scenario, then runs annopull (as
``python -m annopull ...``) and each baseline against the same fake, alternating, ``--runs``
times, and prints the medians (items/s, MB/s, wall, CPU s, peak RSS) with annopull's ratio
to each baseline and a PASS/MISS line per target. Every tool is a child process measured
by ``os.wait4``: wall from spawn to exit, CPU = user + sys, peak RSS = ``ru_maxrss``.

Scenarios (``--only`` takes a comma-separated list of these names):

* K-small   20,000 x 10 KiB, storage 30 ms away, annopull's default settings;
* K-cpu     30,000 x 4 KiB on bare loopback, concurrency 64 (CPU-bound);
* K-large   200 x 5 MiB documents;
* K-scale   1,000,000 x 2 KiB, for peak RSS (only with ``--scale``);
* A-export  a 1 GiB AnnoLab instrument export (start, poll, download, verify);
* U-list    ``annopull urls LIST -o out.zip`` on 20,000 signed storage URLs of 4 KiB.

Baselines, on the same fake in the same run:

* the official client's way: ``kognic-io``'s ``get_project_annotations`` generator into
  a BytesIO zip, on a sample of the scenes (it fetches one file after another, a new HTTP
  client each); falls back to the same one-by-one loop in plain aiohttp, and says so, if
  kognic-io cannot be installed or cannot talk to the fake;
* the AnnoLab SDK's download: ``shutil.copyfileobj(r.raw, f)`` with ``requests``;
* a bare aiohttp loop at the same concurrency that discards the bodies: the ceiling;
* parfive and aria2c on the URL list, at the same concurrency.

kognic-io, requests, parfive and py-spy live in a virtual environment under /tmp
(``--venv``, made on first use), never in annopull's. Usage::

    python benchmarks/run.py [--runs 3] [--only K-cpu,U-list] [--quick] [--scale]
                             [--json FILE] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ChildFailed, Measured, MiB, fake_serve, machine, measure, median

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = Path("/tmp/bench-kognic-io")
VENV_PACKAGES = ("kognic-io", "requests", "parfive", "py-spy")
PAGE_SIZE = 500
# Long enough that no signed URL expires during a run, K-scale included.
URL_TTL = 86_400.0
# How often every AnnoLab client polls the export job, annopull as well as the baselines.
POLL_SECONDS = 0.1
KiB = 1 << 10
GiB = 1 << 30
# annopull's CLI runs on uvloop when it is installed (the speed extra).
_HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


# -- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One workload; ``concurrency`` None means annopull's default (no flag)."""

    name: str
    kind: str  # "kognic", "annolab" or "urls"
    count: int = 0
    content_size: int = 0
    latency: float = 0.0
    concurrency: int | None = None
    sample: int = 0  # scenes the one-by-one official client fetches (all would take hours)
    export_size: int = 0
    annopull_only: bool = False
    stored_row: bool = False  # also annopull with compress_level 0, to show deflate's share
    # also annopull on plain asyncio (ANNOPULL_LOOP=asyncio), when uvloop is installed
    asyncio_row: bool = False

    def describe(self, concurrency: int) -> str:
        if self.kind == "annolab":
            return f"{_size(self.export_size)} AnnoLab export, poll every {POLL_SECONDS} s"
        flag = "default" if self.concurrency is None else "--concurrency"
        latency = f"storage {self.latency * 1000:.0f} ms away" if self.latency else "no latency"
        return (
            f"{self.count:,} x {_size(self.content_size)}, {latency}, "
            f"concurrency {concurrency} ({flag})"
        )


def scenarios(quick: bool) -> list[Scenario]:
    """Every scenario, shrunk to a smoke run's size with ``quick``."""

    def q(full: int, small: int) -> int:
        return small if quick else full

    return [
        Scenario(
            name="K-small",
            kind="kognic",
            count=q(20_000, 2_000),
            content_size=10 * KiB,
            latency=0.03,
            sample=q(300, 40),
        ),
        Scenario(
            name="K-cpu",
            kind="kognic",
            count=q(30_000, 3_000),
            content_size=4 * KiB,
            concurrency=64,
            sample=q(500, 100),
            asyncio_row=_HAS_UVLOOP,
        ),
        Scenario(
            name="K-large",
            kind="kognic",
            count=q(200, 20),
            content_size=5 * MiB,
            sample=q(20, 4),
            stored_row=True,
        ),
        Scenario(
            name="K-scale",
            kind="kognic",
            count=q(1_000_000, 50_000),
            content_size=2 * KiB,
            annopull_only=True,
        ),
        Scenario(name="A-export", kind="annolab", export_size=q(GiB, 128 * MiB)),
        Scenario(name="U-list", kind="urls", count=q(20_000, 2_000), content_size=4 * KiB),
    ]


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


# -- results ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Row:
    """One tool on one scenario: its runs and their medians."""

    scenario: str
    tool: str  # annopull, ceiling, official, sdk, parfive, aria2c
    label: str
    runs: list[dict[str, float]] = field(default_factory=list)
    note: str = ""

    def add(
        self, measured: Measured, *, items: int, size: int, seconds: float | None = None
    ) -> None:
        """Record one run; ``seconds`` is what rates divide by (the wall time if None)."""
        self.runs.append(
            {
                "wall": measured.wall,
                "cpu": measured.cpu,
                "rss": measured.rss,
                "items": items,
                "bytes": size,
                "seconds": measured.wall if seconds is None else seconds,
            }
        )

    def med(self, key: str) -> float:
        return median([run[key] for run in self.runs])

    @property
    def items_s(self) -> float:
        return median([run["items"] / run["seconds"] for run in self.runs])

    @property
    def mb_s(self) -> float:
        return median([run["bytes"] / run["seconds"] / 1e6 for run in self.runs])

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "note": self.note,
            "runs": self.runs,
            "median": {
                "items": self.med("items"),
                "items_per_s": self.items_s,
                "mb_per_s": self.mb_s,
                "wall_s": self.med("wall"),
                "cpu_s": self.med("cpu"),
                "peak_rss_mib": self.med("rss") / MiB,
            },
        }


@dataclass(kw_only=True)
class Context:
    """What every scenario needs: options, scratch space, the baselines' programs."""

    runs: int
    scratch: Path
    default_concurrency: int
    venv_python: Path | None
    venv_problem: str | None
    aria2c: str | None
    py_spy: str | None
    profile_dir: Path | None
    official_problem: str | None = None
    official_worked: bool = False
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            print(f"  NOTE: {text}", flush=True)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without any annopull, Kognic or AnnoLab settings, plus ``extra``."""
    prefixes = ("ANNOPULL_", "KOGNIC_", "ANNOLAB_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def _child(python: Path | str, mode: str, params: dict[str, Any]) -> list[str]:
    return [str(python), str(Path(__file__).resolve()), "--child", mode, json.dumps(params)]


def _alternating(runs: int, tools: Sequence[Callable[[], None]]) -> None:
    """Each run calls every tool; odd runs in reverse order, so that drift hits all alike."""
    for run in range(runs):
        for tool in tools if run % 2 == 0 else tools[::-1]:
            tool()


def _rm(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _outputs(out: Path) -> list[Path]:
    return [out, *out.parent.glob(out.name + ".*")]


# -- Kognic scenarios ------------------------------------------------------------------------


def _kognic_env(fake: dict[str, Any]) -> dict[str, str]:
    return _clean_env(
        KOGNIC_CLIENT_ID=fake["client_id"],
        KOGNIC_CLIENT_SECRET=fake["client_secret"],
        ANNOPULL_KOGNIC_API_URL=fake["api_url"],
        ANNOPULL_KOGNIC_AUTH_URL=fake["auth_url"],
    )


def _annopull_kognic_command(s: Scenario, fake: dict[str, Any], out: Path) -> list[str]:
    command = [sys.executable, "-m", "annopull", "kognic", "--project", fake["project"]]
    command += ["--annotation-type", fake["annotation_type"], "-o", str(out), "-q"]
    command += ["--summary", str(out.with_name("summary.json"))]
    if s.concurrency is not None:
        command += ["--concurrency", str(s.concurrency)]
    return command


def _annopull_summary(out: Path, expected: int) -> dict[str, Any]:
    """The run's --summary, checked: every item arrived (else the numbers mean nothing)."""
    summary: dict[str, Any] = json.loads(out.with_name("summary.json").read_text())
    if summary.get("downloaded") != expected or summary.get("failed"):
        raise ChildFailed(
            f"annopull pulled {summary.get('downloaded')} of {expected}, "
            f"failed: {summary.get('failed', [])[:3]}"
        )
    return summary


def run_kognic(s: Scenario, ctx: Context) -> list[Row]:
    concurrency = s.concurrency or ctx.default_concurrency
    out = ctx.scratch / s.name / "out.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    loop = " (uvloop)" if _HAS_UVLOOP else ""
    rows = {"annopull": Row(scenario=s.name, tool="annopull", label=f"annopull -> zip{loop}")}
    if not s.annopull_only:
        rows["ceiling"] = Row(
            scenario=s.name, tool="ceiling", label=f"bare aiohttp, {concurrency} workers, discard"
        )
        rows["official"] = Row(
            scenario=s.name,
            tool="official",
            label=f"kognic-io get_project_annotations (sample {s.sample:,})",
        )
    # annopull again with one setting changed: tool -> (label, note, environment).
    variants: dict[str, tuple[str, str, dict[str, str]]] = {}
    if s.asyncio_row:
        variants["asyncio"] = (
            "annopull -> zip, plain asyncio loop (ANNOPULL_LOOP=asyncio)",
            "the same event loop as the bare aiohttp loop's",
            {"ANNOPULL_LOOP": "asyncio"},
        )
    if s.stored_row:
        variants["stored"] = (
            "annopull -> zip, entries stored (compress_level 0)",
            "for comparison only: the zip's entries stored, not deflated",
            {"ANNOPULL_ENGINE_COMPRESS_LEVEL": "0"},
        )
    for tool, (label, note, _) in variants.items():
        rows[tool] = Row(scenario=s.name, tool=tool, label=label, note=note)
    serve = ["--count", str(s.count), "--content-size", str(s.content_size)]
    serve += ["--page-size", str(PAGE_SIZE), "--latency", str(s.latency), "--url-ttl", str(URL_TTL)]
    with fake_serve(*serve) as described:
        fake = described["kognic"]
        env = _kognic_env(fake)

        def ceiling() -> None:
            params = {"fake": fake, "concurrency": concurrency}
            measured = measure(_child(sys.executable, "ceiling-kognic", params))
            got = measured.json()
            _check_count("ceiling", got["items"], s.count)
            rows["ceiling"].add(measured, items=got["items"], size=got["bytes"])

        def official() -> None:
            measured, got = _official(s, fake, ctx, rows["official"])
            _check_count("official client", got["items"], s.sample)
            rows["official"].add(
                measured, items=got["items"], size=got["bytes"], seconds=got["seconds"]
            )

        def variant(tool: str) -> Callable[[], None]:
            """annopull itself ("annopull"), or one of its variants."""
            extra = variants[tool][2] if tool in variants else {}

            def run() -> None:
                _rm(*_outputs(out))
                command = _annopull_kognic_command(s, fake, out)
                measured = measure(command, env={**env, **extra}, timeout=4 * 3600)
                summary = _annopull_summary(out, s.count)
                rows[tool].add(measured, items=s.count, size=summary["bytes"])
                _rm(*_outputs(out))

            return run

        tools = [variant("annopull")]
        tools += [] if s.annopull_only else [ceiling, official]
        tools += [variant(tool) for tool in variants]
        _alternating(ctx.runs, tools)
        if ctx.profile_dir is not None:
            _profile(s.name, _annopull_kognic_command(s, fake, out), env, ctx)
            _rm(*_outputs(out))
    return list(rows.values())


def _check_count(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise ChildFailed(f"{what} fetched {got} items, expected {expected}")


def _official(
    s: Scenario, fake: dict[str, Any], ctx: Context, row: Row
) -> tuple[Measured, dict[str, Any]]:
    """kognic-io in its venv; the one-by-one aiohttp loop once it is known not to work."""
    params = {"fake": fake, "sample": s.sample}
    if ctx.official_problem is None and ctx.venv_python is None:
        ctx.official_problem = f"kognic-io is not installed ({ctx.venv_problem})"
    if ctx.official_problem is None:
        env = _clean_env(
            KOGNIC_CLIENT_ID=fake["client_id"], KOGNIC_CLIENT_SECRET=fake["client_secret"]
        )
        assert ctx.venv_python is not None
        try:
            measured = measure(_child(ctx.venv_python, "official", params), env=env)
            ctx.official_worked = True
            return measured, measured.json()
        except ChildFailed as exc:
            if ctx.official_worked:
                raise
            lines = str(exc).strip().splitlines()
            ctx.official_problem = f"kognic-io failed against the fake: {lines[-1][:200]}"
    ctx.note(
        f"FALLBACK: {ctx.official_problem}; the official client's way is measured with the "
        "one-by-one loop of bench_kognic.py instead (a new aiohttp client per file)"
    )
    row.label = f"FALLBACK one by one, new aiohttp client each (sample {s.sample:,})"
    measured = measure(_child(sys.executable, "one-by-one", params))
    return measured, measured.json()


# -- AnnoLab export --------------------------------------------------------------------------


def _newest_export(workdir: Path) -> Path:
    exports = sorted(workdir.glob("export-*.zip"), key=lambda p: p.stat().st_mtime)
    if not exports:
        raise ChildFailed(f"no export zip in {workdir}")
    return exports[-1]


def run_annolab(s: Scenario, ctx: Context) -> list[Row]:
    """Start, poll, download (and, for annopull, verify) one export per tool per run.

    Each run builds a fresh export on the fake, so the build is in every tool's wall time
    alike. MB/s counts the download alone: from the moment the fake finished writing the
    export (its file's mtime) to the moment the tool had written the last byte (its
    output's mtime; the ceiling, which writes nothing, reports the time). annopull's CRC
    check of the finished zip comes after that moment, so it is in wall, not in MB/s.
    """
    workdir = ctx.scratch / s.name / "fake"
    out = ctx.scratch / s.name / "export.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = {
        "annopull": Row(scenario=s.name, tool="annopull", label="annopull annolab instruments"),
        "ceiling": Row(scenario=s.name, tool="ceiling", label="bare aiohttp, discard"),
        "sdk": Row(scenario=s.name, tool="sdk", label="SDK way: requests, copyfileobj(r.raw, f)"),
    }
    serve = ["--count", "1", "--annolab-export-size", str(s.export_size)]
    serve += ["--workdir", str(workdir), "--annolab-url-ttl", str(URL_TTL)]
    with fake_serve(*serve) as described:
        info = described["annolab"]
        env = _clean_env(
            ANNOLAB_API_KEY=info["api_key"],
            ANNOPULL_ANNOLAB_API_URL=info["api_url"],
            ANNOPULL_ANNOLAB_POLL_INTERVAL=str(POLL_SECONDS),
            ANNOPULL_ANNOLAB_POLL_BACKOFF="1.0",
            ANNOPULL_ANNOLAB_POLL_MAX_INTERVAL=str(POLL_SECONDS),
        )
        command = [sys.executable, "-m", "annopull", "annolab", "instruments"]
        command += ["--owner", info["owner"], "--project", info["project"], "--include-files"]
        command += ["-o", str(out), "-q", "--summary", str(out.with_name("summary.json"))]
        params = {"annolab": info, "poll": POLL_SECONDS, "output": str(out)}

        def record(row: Row, measured: Measured, size: int, finished: float) -> None:
            export = _newest_export(workdir)
            built = export.stat().st_mtime
            if size != export.stat().st_size:
                raise ChildFailed(f"{row.tool} got {size} bytes of {export.stat().st_size}")
            row.add(measured, items=1, size=size, seconds=finished - built)
            _rm(export, *_outputs(out))

        def annopull() -> None:
            _rm(*_outputs(out))
            measured = measure(command, env=env)
            summary = json.loads(out.with_name("summary.json").read_text())
            if summary.get("ok") != 1:
                raise ChildFailed(f"annopull export failed: {summary}")
            record(rows["annopull"], measured, out.stat().st_size, out.stat().st_mtime)

        def ceiling() -> None:
            measured = measure(_child(sys.executable, "ceiling-annolab", params))
            got = measured.json()
            record(rows["ceiling"], measured, got["bytes"], got["finished"])

        def sdk() -> None:
            if ctx.venv_python is None:
                ctx.note(f"SDK baseline skipped: {ctx.venv_problem}")
                return
            _rm(*_outputs(out))
            measured = measure(_child(ctx.venv_python, "sdk", params), env=_clean_env())
            got = measured.json()
            record(rows["sdk"], measured, got["bytes"], out.stat().st_mtime)

        _alternating(ctx.runs, [annopull, ceiling, sdk])
        if ctx.profile_dir is not None:
            _profile(s.name, command, env, ctx)
            _rm(_newest_export(workdir), *_outputs(out))
    return list(rows.values())


# -- URL list --------------------------------------------------------------------------------


def _signed_urls(fake: dict[str, Any]) -> list[tuple[str, str]]:
    """(signed storage URL, NAME) of every listed scene, read from the fake's Kognic API."""
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": fake["client_id"],
            "client_secret": fake["client_secret"],
        }
    ).encode()
    with urllib.request.urlopen(f"{fake['auth_url']}/v1/auth/oauth/token", data=form) as r:
        token = json.load(r)["access_token"]
    search = (
        f"{fake['api_url']}/v1/annotations/projects/{fake['project']}"
        f"/annotation-type/{fake['annotation_type']}/search"
    )
    found: list[tuple[str, str]] = []
    cursor: str | None = None
    while True:
        url = search if cursor is None else f"{search}?cursorId={cursor}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request) as r:
            page = json.load(r)
        found += [(item["uri"], f"{item['inputUuid']}.json") for item in page["data"]]
        cursor = page["metadata"].get("nextCursorId")
        if cursor is None:
            return found


def run_urls(s: Scenario, ctx: Context) -> list[Row]:
    concurrency = s.concurrency or ctx.default_concurrency
    base = ctx.scratch / s.name
    out, folder = base / "out.zip", base / "files"
    base.mkdir(parents=True, exist_ok=True)
    rows = {
        "annopull": Row(scenario=s.name, tool="annopull", label="annopull urls -> zip"),
        "ceiling": Row(
            scenario=s.name, tool="ceiling", label=f"bare aiohttp, {concurrency} workers, discard"
        ),
        "parfive": Row(
            scenario=s.name,
            tool="parfive",
            label=f"parfive max_conn={concurrency} max_splits=1 -> files",
        ),
        "aria2c": Row(scenario=s.name, tool="aria2c", label=f"aria2c -j {concurrency} -> files"),
    }
    serve = ["--count", str(s.count), "--content-size", str(s.content_size)]
    serve += ["--page-size", str(PAGE_SIZE), "--latency", str(s.latency), "--url-ttl", str(URL_TTL)]
    with fake_serve(*serve) as described:
        urls = _signed_urls(described["kognic"])
        _check_count("listing", len(urls), s.count)
        listing = base / "urls.txt"
        listing.write_text("".join(f"{url}\t{name}\n" for url, name in urls))
        aria2_input = base / "aria2.txt"
        aria2_input.write_text("".join(f"{url}\n  out={name}\n" for url, name in urls))
        command = [sys.executable, "-m", "annopull", "urls", str(listing), "-o", str(out)]
        command += ["-q", "--summary", str(out.with_name("summary.json"))]
        params = {"list": str(listing), "concurrency": concurrency, "folder": str(folder)}

        def annopull() -> None:
            _rm(*_outputs(out))
            measured = measure(command, env=_clean_env())
            summary = _annopull_summary(out, s.count)
            rows["annopull"].add(measured, items=s.count, size=summary["bytes"])
            _rm(*_outputs(out))

        def ceiling() -> None:
            measured = measure(_child(sys.executable, "ceiling-urls", params))
            got = measured.json()
            _check_count("ceiling", got["items"], s.count)
            rows["ceiling"].add(measured, items=got["items"], size=got["bytes"])

        def parfive() -> None:
            if ctx.venv_python is None:
                ctx.note(f"parfive baseline skipped: {ctx.venv_problem}")
                return
            _rm(folder)
            measured = measure(_child(ctx.venv_python, "parfive", params), env=_clean_env())
            rows["parfive"].add(measured, items=s.count, size=_folder_bytes(folder, s.count))
            _rm(folder)

        def aria2c() -> None:
            if ctx.aria2c is None:
                ctx.note("aria2c baseline skipped: no aria2c (apt-get install -y aria2)")
                return
            _rm(folder)
            folder.mkdir()
            aria = [ctx.aria2c, "-i", str(aria2_input), "-d", str(folder), "-j", str(concurrency)]
            aria += ["-x", "1", "--file-allocation=none", "--allow-overwrite=true"]
            aria += ["--auto-file-renaming=false", "--summary-interval=0", "--quiet=true"]
            measured = measure(aria, env=_clean_env())
            rows["aria2c"].add(measured, items=s.count, size=_folder_bytes(folder, s.count))
            _rm(folder)

        _alternating(ctx.runs, [annopull, ceiling, parfive, aria2c])
        if ctx.profile_dir is not None:
            _profile(s.name, command, _clean_env(), ctx)
            _rm(*_outputs(out))
    return list(rows.values())


def _folder_bytes(folder: Path, expected: int) -> int:
    files = [p for p in folder.iterdir() if p.suffix == ".json"]
    _check_count(f"download into {folder.name}/", len(files), expected)
    return sum(p.stat().st_size for p in files)


# -- profiling -------------------------------------------------------------------------------


def _profile(name: str, command: list[str], env: dict[str, str], ctx: Context) -> None:
    """One more annopull run under ``py-spy record --format raw``, summarised (not timed)."""
    assert ctx.profile_dir is not None
    if ctx.py_spy is None:
        ctx.note("no profile: py-spy not found (pip install py-spy into the venv)")
        return
    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    raw = ctx.profile_dir / f"{name}.txt"
    spy = [ctx.py_spy, "record", "--format", "raw", "-r", "200", "-o", str(raw), "--"]
    done = subprocess.run([*spy, *command], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not raw.exists():
        ctx.note(f"py-spy on {name} failed: {done.stderr.strip()[-300:]}")
        return
    summary = summarise_profile(raw)
    (ctx.profile_dir / f"{name}-top.txt").write_text(summary)
    print(f"  profile of annopull on {name} ({raw}):\n{summary}", flush=True)


def summarise_profile(raw: Path, top: int = 12) -> str:
    """Where a py-spy raw profile's samples went: leaf functions, then annopull's own frames.

    Samples under an import are counted apart (start-up), so that a short run's import
    time does not crowd out the work.
    """
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = starting = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        if "_find_and_load" in stack:
            starting += count
            continue
        frames = [_frame(frame) for frame in stack.split(";")]
        leaf[frames[-1]] += count
        for frame in set(frames):
            if "annopull/" in frame:
                inclusive[frame] += count
    if not total:
        return "    no samples\n"
    lines = [f"    {total} samples, {starting / total:.0%} of them in imports; self (leaf) time:"]
    lines += [f"    {n / total:6.1%}  {frame}" for frame, n in leaf.most_common(top)]
    lines += ["    annopull's frames, inclusive (the frame and all it calls):"]
    lines += [f"    {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> str:
    """``func (/x/src/annopull/_zip/writer.py:123)`` -> ``func (annopull/_zip/writer.py)``."""
    function, _, where = frame.partition(" (")
    parts = Path(where.rstrip(")").rsplit(":", 1)[0]).parts
    if "annopull" in parts:
        short = "/".join(parts[len(parts) - parts[::-1].index("annopull") - 1 :])
    else:
        short = parts[-1] if parts else "?"
    return f"{function} ({short})"


# -- targets and the table -------------------------------------------------------------------


def targets(rows: dict[tuple[str, str], Row]) -> list[dict[str, Any]]:
    """Every target whose scenario ran: the value, the bound, PASS or MISS."""
    found: list[dict[str, Any]] = []

    def ratio(
        scenario: str,
        other: str,
        metric: str,
        bound: float,
        what: str,
        extra: str = "",
        mine: str = "annopull",
    ) -> None:
        ours, theirs = rows.get((scenario, mine)), rows.get((scenario, other))
        if not ours or not theirs or not ours.runs or not theirs.runs:
            return
        value = getattr(ours, metric) / getattr(theirs, metric)
        found.append(
            {
                "scenario": scenario,
                "target": f"{what} >= {bound:g}x ({'MB/s' if metric == 'mb_s' else 'items/s'})",
                "value": value,
                "bound": bound,
                "pass": value >= bound,
                "shown": f"{value:.2f}x{extra}",
            }
        )

    def rss(scenario: str, bound_mib: float) -> None:
        ours = rows.get((scenario, "annopull"))
        if not ours or not ours.runs:
            return
        value = ours.med("rss") / MiB
        found.append(
            {
                "scenario": scenario,
                "target": f"annopull peak RSS <= {bound_mib:g} MiB",
                "value": value,
                "bound": bound_mib,
                "pass": value <= bound_mib,
                "shown": f"{value:.1f} MiB",
            }
        )

    if ("K-cpu", "asyncio") in rows:
        # The ceiling runs on plain asyncio: the same loop as that row; the speed extra's
        # target is annopull on uvloop against that same ceiling.
        what = "annopull on plain asyncio / bare aiohttp ceiling"
        ratio("K-cpu", "ceiling", "items_s", 0.8, what, mine="asyncio")
        ratio("K-cpu", "ceiling", "items_s", 1.0, "annopull with uvloop / bare aiohttp ceiling")
    else:
        ratio("K-cpu", "ceiling", "items_s", 0.8, "annopull / bare aiohttp ceiling")
    ratio("K-small", "official", "items_s", 100, "annopull / official client's way")
    ratio("K-large", "ceiling", "mb_s", 0.9, "annopull / bare aiohttp ceiling")
    if (a := rows.get(("A-export", "annopull"))) and (c := rows.get(("A-export", "ceiling"))):
        wall = f"; end to end {c.med('wall') / a.med('wall'):.2f}x" if a.runs and c.runs else ""
        ratio("A-export", "ceiling", "mb_s", 0.9, "annopull / bare aiohttp ceiling", wall)
    if (a := rows.get(("A-export", "annopull"))) and (d := rows.get(("A-export", "sdk"))):
        wall = f"; end to end {d.med('wall') / a.med('wall'):.2f}x" if a.runs and d.runs else ""
        ratio("A-export", "sdk", "mb_s", 1.0, "annopull / the SDK's download", wall)
    rss("A-export", 100)
    rss("K-scale", 100)
    scale, small = rows.get(("K-scale", "annopull")), rows.get(("K-small", "annopull"))
    if scale and small and scale.runs and small.runs:
        value = scale.med("rss") / small.med("rss")
        found.append(
            {
                "scenario": "K-scale",
                "target": "annopull peak RSS within 20 % of K-small's",
                "value": value,
                "bound": 1.2,
                "pass": abs(value - 1) <= 0.2,
                "shown": f"{value:.2f}x ({scale.med('rss') / MiB:.1f} vs "
                f"{small.med('rss') / MiB:.1f} MiB)",
            }
        )
    ratio("U-list", "parfive", "items_s", 1.5, "annopull / parfive")
    ratio("U-list", "aria2c", "items_s", 0.9, "annopull / aria2c")
    return found


def table(rows: Sequence[Row]) -> str:
    """The medians as a Markdown table, annopull's throughput ratio to each baseline."""
    head = (
        "| scenario | tool | items | items/s | MB/s | wall s | CPU s | peak RSS MiB "
        "| annopull / this |"
    )
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    ours: dict[str, Row] = {row.scenario: row for row in rows if row.tool == "annopull"}
    for row in rows:
        if not row.runs:
            continue
        mine = ours.get(row.scenario)
        vs = ""
        if row.tool != "annopull" and mine is not None and mine.runs:
            vs = (
                f"{mine.mb_s / row.mb_s:.2f}x"
                if row.scenario == "A-export" or row.scenario == "K-large"
                else f"{mine.items_s / row.items_s:.2f}x"
            )
        items = row.med("items")
        lines.append(
            f"| {row.scenario} | {row.label} | {items:,.0f} | "
            f"{'' if items <= 1 else f'{row.items_s:,.0f}'} | {row.mb_s:,.1f} | "
            f"{row.med('wall'):.2f} | {row.med('cpu'):.2f} | {row.med('rss') / MiB:.1f} | {vs} |"
        )
    return "\n".join(lines)


def target_lines(found: Sequence[dict[str, Any]]) -> str:
    return "\n".join(
        f"{'PASS' if t['pass'] else 'MISS'}  {t['scenario']:<9} {t['target']}: {t['shown']}"
        for t in found
    )


# -- the parent ------------------------------------------------------------------------------


def _venv(path: Path) -> tuple[Path | None, str | None]:
    """The baselines' venv python, made (``python -m venv`` + pip) if it is missing."""
    python = path / "bin" / "python"
    probe = [str(python), "-c", "import kognic.io, parfive, requests"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python, None
    print(f"  setting up {path}: pip install {' '.join(VENV_PACKAGES)} ...", flush=True)
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", *VENV_PACKAGES]
        subprocess.run(pip, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        return None, f"could not set up {path}: {(exc.stderr or str(exc)).strip()[-300:]}"
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        return None, f"{path} lacks kognic-io, parfive or requests after pip install"
    return python, None


def _default_concurrency() -> int:
    from annopull._config import EngineConfig

    return EngineConfig().concurrency


RUNNERS: dict[str, Callable[[Scenario, Context], list[Row]]] = {
    "kognic": run_kognic,
    "annolab": run_annolab,
    "urls": run_urls,
}


def _compile_annopull() -> None:
    """Compile annopull's modules to bytecode, as ``pip install`` does for every package.

    An editable install under ``PYTHONDONTWRITEBYTECODE`` (as on this machine) never writes
    ``.pyc`` files, so each annopull run would compile its own source (about 0.3 s of CPU)
    while the baselines, installed by pip, load compiled modules.
    """
    import annopull

    package = Path(annopull.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="scenarios: K-small, K-cpu, K-large, K-scale (--scale), A-export, U-list",
    )
    parser.add_argument(
        "--runs", type=int, help="runs per tool, median taken (default 3; 1 with --quick)"
    )
    parser.add_argument("--only", help="comma-separated scenario names, e.g. K-cpu,U-list")
    parser.add_argument("--quick", action="store_true", help="shrink every scenario (a smoke run)")
    parser.add_argument("--scale", action="store_true", help="also run K-scale (1,000,000 items)")
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results.json",
        help="where the results go (default benchmarks/results.json)",
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the baselines' venv")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after each scenario, one more annopull run under py-spy; raw stacks and a "
        "summary of the top frames in DIR",
    )
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    every = scenarios(args.quick)
    names = [s.name for s in every]
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in names]
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(names)}")
        selected = [s for s in every if s.name in wanted]
    else:
        selected = [s for s in every if s.name != "K-scale" or args.scale]
    chosen = {s.name for s in selected}
    if "K-scale" in chosen and "K-small" not in chosen:
        # K-scale's target is a ratio to K-small's peak RSS: measure that in this run too.
        small = next(s for s in every if s.name == "K-small")
        selected.insert(0, Scenario(**{**small.__dict__, "annopull_only": True}))

    info = machine()
    print(
        f"machine: {info['nproc']} cores, {info['cpu_model']}, Python {info['python']}, "
        f"load {info['load_average']}; {info['date']}",
        flush=True,
    )
    venv_python, venv_problem = _venv(args.venv)
    _compile_annopull()
    py_spy = shutil.which("py-spy") or (
        str(args.venv / "bin" / "py-spy") if (args.venv / "bin" / "py-spy").exists() else None
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-run-"))
    ctx = Context(
        runs=runs,
        scratch=scratch,
        default_concurrency=_default_concurrency(),
        venv_python=venv_python,
        venv_problem=venv_problem,
        aria2c=shutil.which("aria2c"),
        py_spy=py_spy,
        profile_dir=args.profile,
    )
    if venv_problem:
        ctx.note(venv_problem)
    all_rows: list[Row] = []
    started = time.monotonic()
    try:
        for s in selected:
            concurrency = s.concurrency or ctx.default_concurrency
            print(f"{s.name}: {s.describe(concurrency)}; {runs} run(s) per tool", flush=True)
            t0 = time.monotonic()
            rows = RUNNERS[s.kind](s, ctx)
            all_rows += rows
            for row in rows:
                if row.runs:
                    print(
                        f"  {row.label:<52} {row.items_s:9,.0f} items/s {row.mb_s:8.1f} MB/s "
                        f"wall {row.med('wall'):7.2f} s  CPU {row.med('cpu'):7.2f} s  "
                        f"RSS {row.med('rss') / MiB:7.1f} MiB",
                        flush=True,
                    )
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    by_key = {(row.scenario, row.tool): row for row in all_rows}
    found = targets(by_key)
    print()
    print(f"medians of {runs} run(s); annopull / this = annopull's items/s (MB/s for")
    print("K-large and A-export) divided by the row's; A-export MB/s is the download alone")
    print()
    print(table(all_rows))
    print()
    print(target_lines(found))
    for text in ctx.notes:
        print(f"NOTE: {text}")
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": info,
        "runs": runs,
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "default_concurrency": ctx.default_concurrency,
        "notes": ctx.notes,
        "scenarios": {
            s.name: {
                "params": {**s.__dict__, "concurrency": s.concurrency or ctx.default_concurrency},
                "description": s.describe(s.concurrency or ctx.default_concurrency),
                "tools": {r.tool: r.summary() for r in all_rows if r.scenario == s.name},
            }
            for s in selected
        },
        "targets": found,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults written to {args.json}")
    return 0


# -- children: each prints one JSON line ----------------------------------------------------
#
# Run as ``python run.py --child MODE PARAMS`` with annopull's python (the aiohttp loops)
# or the venv's (kognic-io, requests, parfive); they import only what their mode needs.


def _token_form(fake: dict[str, Any]) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": fake["client_id"],
        "client_secret": fake["client_secret"],
    }


def _search_url(fake: dict[str, Any]) -> str:
    return (
        f"{fake['api_url']}/v1/annotations/projects/{fake['project']}"
        f"/annotation-type/{fake['annotation_type']}/search"
    )


async def _drain(
    session: Any, urls: asyncio.Queue[str | None], concurrency: int
) -> tuple[int, int]:
    """Fetch every URL from the queue ``urls`` with ``concurrency`` workers; count, discard."""
    counts = [0, 0]

    async def worker() -> None:
        while (url := await urls.get()) is not None:
            async with session.get(url) as response:
                response.raise_for_status()
                async for chunk in response.content.iter_any():
                    counts[1] += len(chunk)
            counts[0] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts[0], counts[1]


async def child_ceiling_kognic(p: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: list page after page while ``concurrency`` workers fetch and discard."""
    import aiohttp

    fake, concurrency = p["fake"], p["concurrency"]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(
            f"{fake['auth_url']}/v1/auth/oauth/token", data=_token_form(fake)
        ) as r:
            token = (await r.json())["access_token"]
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=2 * PAGE_SIZE)

        async def lister() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            cursor = None
            while True:
                url = _search_url(fake) + ("" if cursor is None else f"?cursorId={cursor}")
                async with session.get(url, headers=headers) as r:
                    r.raise_for_status()
                    page = await r.json()
                for item in page["data"]:
                    await queue.put(item["uri"])
                if (cursor := page["metadata"].get("nextCursorId")) is None:
                    break
            for _ in range(concurrency):
                await queue.put(None)

        listing = asyncio.create_task(lister())
        items, size = await _drain(session, queue, concurrency)
        await listing
    return {"items": items, "bytes": size}


async def child_ceiling_urls(p: dict[str, Any]) -> dict[str, Any]:
    """The ceiling on the URL list: ``concurrency`` workers fetch and discard."""
    import aiohttp

    queue: asyncio.Queue[str | None] = asyncio.Queue()
    listing = Path(p["list"]).read_text()  # noqa: ASYNC240 - before any request, nothing to block
    for line in listing.splitlines():
        queue.put_nowait(line.split("\t")[0])
    for _ in range(p["concurrency"]):
        queue.put_nowait(None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        items, size = await _drain(session, queue, p["concurrency"])
    return {"items": items, "bytes": size}


def _export_body(info: dict[str, Any]) -> dict[str, Any]:
    return {"projectOwner": info["owner"], "projectName": info["project"], "includeFiles": True}


async def child_ceiling_annolab(p: dict[str, Any]) -> dict[str, Any]:
    """Start the export, poll it, stream the download and discard it."""
    import aiohttp

    info = p["annolab"]
    headers = {"Authorization": f"Api-Key {info['api_key']}"}
    async with aiohttp.ClientSession() as session:
        url = f"{info['api_url']}/v1/export/instruments"
        async with session.post(url, json=_export_body(info), headers=headers) as r:
            r.raise_for_status()
            status_url = (await r.json())["exportStatusUrl"]
        while True:
            async with session.get(status_url, headers=headers) as r:
                r.raise_for_status()
                status = await r.json()
            if status["status"] == "finished":
                break
            if status["status"] == "errored":
                raise RuntimeError(status)
            await asyncio.sleep(p["poll"])
        size = 0
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        async with session.get(status["downloadUrl"], timeout=timeout) as r:
            r.raise_for_status()
            async for chunk in r.content.iter_chunked(MiB):
                size += len(chunk)
    return {"bytes": size, "finished": time.time()}


def child_sdk(p: dict[str, Any]) -> dict[str, Any]:
    """The AnnoLab SDK's way: requests for the job, ``copyfileobj(r.raw, f)`` to disk."""
    import requests

    info = p["annolab"]
    headers = {"Authorization": f"Api-Key {info['api_key']}"}
    with requests.Session() as session:
        url = f"{info['api_url']}/v1/export/instruments"
        r = session.post(url, json=_export_body(info), headers=headers)
        r.raise_for_status()
        status_url = r.json()["exportStatusUrl"]
        while True:
            status = session.get(status_url, headers=headers).json()
            if status["status"] == "finished":
                break
            if status["status"] == "errored":
                raise RuntimeError(status)
            time.sleep(p["poll"])
        with session.get(status["downloadUrl"], stream=True) as r:
            r.raise_for_status()
            with open(p["output"], "wb") as f:
                shutil.copyfileobj(r.raw, f)
    return {"bytes": Path(p["output"]).stat().st_size}


def child_official(p: dict[str, Any]) -> dict[str, Any]:
    """kognic-io as its docs show, into a BytesIO zip, for the first ``sample`` scenes.

    Credentials come from KOGNIC_CLIENT_ID / KOGNIC_CLIENT_SECRET in the environment, the
    hosts from the constructor; ``write_workspace_id`` spares the workspace lookup (the fake
    has no workspace API, and pulling annotations does not use it). With ``"client":
    "annopull"`` the same code runs on annopull's drop-in client, only the import changed
    (``bench_compat.py``).
    """
    if p.get("client") == "annopull":
        from annopull.compat.kognic_io import KognicIOClient
    else:
        from kognic.io.client import KognicIOClient

    fake = p["fake"]
    started = time.perf_counter()
    client = KognicIOClient(
        host=fake["api_url"], auth_host=fake["auth_url"], write_workspace_id="bench"
    )
    annotations = client.annotation.get_project_annotations(
        project=fake["project"], annotation_type=fake["annotation_type"]
    )
    buffer = io.BytesIO()
    items = size = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for annotation in annotations:
            data = json.dumps(annotation.content).encode()
            archive.writestr(f"{annotation.scene_uuid}.json", data)
            items += 1
            size += len(data)
            if items >= p["sample"]:
                break
    return {"items": items, "bytes": size, "seconds": time.perf_counter() - started}


async def child_one_by_one(p: dict[str, Any]) -> dict[str, Any]:
    """The fallback: bench_kognic.py's loop, one file after another, a new client each."""
    import aiohttp

    fake = p["fake"]
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake['auth_url']}/v1/auth/oauth/token", data=_token_form(fake)
        ) as r:
            token = (await r.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(_search_url(fake), headers=headers) as r:
            listed = (await r.json())["data"][: p["sample"]]
    buffer = io.BytesIO()
    size = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for item in listed:
            async with aiohttp.ClientSession() as session, session.get(item["uri"]) as r:
                data = await r.read()
            archive.writestr(f"{item['inputUuid']}.json", data)
            size += len(data)
    return {"items": len(listed), "bytes": size, "seconds": time.perf_counter() - started}


def child_parfive(p: dict[str, Any]) -> dict[str, Any]:
    """parfive: every URL to a file in one folder; one connection per file (small files)."""
    from contextlib import asynccontextmanager

    import parfive.downloader
    from parfive import Downloader

    # parfive sends a HEAD before each GET. The fake storage answers HEAD with a body (a
    # protocol error) that aiohttp then misreads as the next response; so that probe is
    # made as a GET whose body is read and dropped: the same round trip, the same headers
    # for parfive to look at, a kept-alive connection, a few KiB more to read.
    @asynccontextmanager
    async def probe_by_get(session: Any, url: str, **kwargs: Any) -> Any:
        async with session.get(url, **kwargs) as response:
            await response.read()
            yield response

    parfive.downloader.session_head_or_get = probe_by_get
    downloader = Downloader(max_conn=p["concurrency"], max_splits=1, progress=False, overwrite=True)
    for line in Path(p["list"]).read_text().splitlines():
        url, name = line.split("\t")
        downloader.enqueue_file(url, path=p["folder"], filename=name)
    results = downloader.download()
    if results.errors:
        raise RuntimeError(f"{len(results.errors)} errors, first: {results.errors[0]}")
    return {"items": len(results)}


CHILDREN: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ceiling-kognic": child_ceiling_kognic,
    "ceiling-urls": child_ceiling_urls,
    "ceiling-annolab": child_ceiling_annolab,
    "sdk": child_sdk,
    "official": child_official,
    "one-by-one": child_one_by_one,
    "parfive": child_parfive,
}


def child(mode: str, params: dict[str, Any]) -> None:
    result = CHILDREN[mode](params)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], json.loads(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())

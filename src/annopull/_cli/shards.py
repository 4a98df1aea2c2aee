"""``--shards N --ray MODE``: a pulling command's run split into N Ray tasks, one part each."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING, Any

import anyio

from annopull._cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Context,
    exit_code_for,
    fail,
    positive_int,
    write_summary,
)
from annopull._cli.manifest import describe_manifest
from annopull._errors import ConfigError
from annopull._fleet.parts import MAX_SHARDS, store_for

# The parser needs only MAX_SHARDS; a sharded run imports the runner when it starts.
if TYPE_CHECKING:
    from annopull._fleet.runner import FleetProgress, FleetReport, ShardPull
    from annopull._pipeline.pull import Selection
    from annopull._progress import TerminalProgress

__all__ = ["SHARDS_EPILOG", "add_shard_options", "run_sharded"]

SHARDS_EPILOG = """\
sharded runs (pip install 'annopull[ray]'):
  --shards N runs shard K/N for every K as one Ray task each, writing OUT/part-0000K-of-0000N.zip
  (-o a folder ending in /); Ray reruns a task whose worker dies, and the rerun resumes its
  part. At the end OUT/manifest.json lists every entry's part (see annopull manifest).
  --resume reruns only the shards whose part is not complete. The [engine] rate_limit is
  the whole run's: it is split between the tasks running at once.
"""


def add_shard_options(parser: argparse.ArgumentParser) -> None:
    """``--shards``, ``--ray`` and ``--ray-cpus``."""
    group = parser.add_argument_group("sharded runs on Ray")
    group.add_argument(
        "--shards",
        type=positive_int(MAX_SHARDS),
        metavar="N",
        help="run all N shards as Ray tasks, each into OUT/part-0000K-of-0000N.zip, then "
        "write OUT/manifest.json (-o must be a folder/)",
    )
    group.add_argument(
        "--ray",
        metavar="MODE",
        help="where the tasks run: local (Ray on this machine, loopback only), auto "
        "(RAY_ADDRESS when set, else local; the default) or a cluster's ADDRESS",
    )
    group.add_argument(
        "--ray-cpus",
        type=positive_int(4096),
        metavar="N",
        help="tasks at once of a local Ray (default: this machine's CPUs)",
    )


def sharded(args: argparse.Namespace) -> bool:
    """Whether the command asks for a sharded run; refuses mixed flags.

    Raises:
        ConfigError: ``--ray``/``--ray-cpus`` without ``--shards``, or with ``--shard``.
    """
    if args.shards is None:
        if args.ray is not None or args.ray_cpus is not None:
            raise ConfigError("--ray and --ray-cpus go with --shards N")
        return False
    if args.shard is not None:
        raise ConfigError("use --shard K/N to run one shard, or --shards N to run them all")
    return True


async def run_sharded(
    args: argparse.Namespace,
    ctx: Context,
    *,
    pull: ShardPull,
    label: str,
    noun: str,
    selection: Selection,
) -> int:
    """Run every shard on Ray, show the totals, write the manifest; return the exit code."""
    from annopull._fleet.runner import RayOptions, ShardJob, run_fleet, task_env

    job = ShardJob(
        label=label,
        pull=pull,
        store=store_for(args.output, storage=ctx.config.storage),
        shards=args.shards,
        config=ctx.config,
        env=task_env(ctx.env, ctx.config),
        selection=selection,
    )
    options = RayOptions(address=args.ray or "auto", cpus=args.ray_cpus)
    display = _Display(ctx, label)
    try:
        with display:
            report = await run_fleet(
                job, ray_options=options, resume=args.resume, on_progress=display.show
            )
    except anyio.get_cancelled_exc_class():
        command = shlex.join(sys.argv[1:])
        resume = "" if "--resume" in sys.argv else " --resume"
        print(
            f"annopull: finished parts are kept in {job.store.description}; continue with: "
            f"annopull {command}{resume}",
            file=sys.stderr,
            flush=True,
        )
        raise
    write_summary(args.summary, report.to_dict())
    return _conclude(report, prefix=job.store.description, noun=noun)


def _conclude(report: FleetReport, *, prefix: str, noun: str) -> int:
    """One line for the run, one per shard that failed, the manifest's; the exit code."""
    from annopull._progress import format_bytes

    print(
        f"annopull: {prefix}: {report.shards} shards ({len(report.already)} complete before), "
        f"{report.total('downloaded')} {noun} ({format_bytes(report.total('bytes'))}) in "
        f"{report.elapsed:.1f} s; {report.total('skipped')} skipped, {report.failed} failed",
        file=sys.stderr,
        flush=True,
    )
    codes = [EXIT_OK]
    for outcome in report.errors:
        assert outcome.error is not None
        fail(f"shard {outcome.shard}: {outcome.error}")
        codes.append(exit_code_for(outcome.error))
    if report.manifest is not None:
        codes.append(describe_manifest(report.manifest, prefix=prefix))
    if report.failed:
        codes.append(EXIT_FAILED)
    return max(codes)


class _Display:
    """The run's totals, as ``--progress`` asks: JSON lines, the bar, or nothing."""

    def __init__(self, ctx: Context, label: str) -> None:
        mode = "none" if ctx.quiet else ctx.config.engine.progress
        self._label = label
        self._json = mode == "json"
        self._last: FleetProgress | None = None
        from annopull._progress import TerminalProgress

        self._bar: TerminalProgress | None = (
            TerminalProgress(label, live=True if mode == "bar" else None)
            if mode in ("auto", "bar")
            else None
        )

    def __enter__(self) -> _Display:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)
        if self._json and self._last is not None:
            from annopull._progress import json_line

            print(json_line(self._last.event(label=self._label, final=True)), file=sys.stderr)

    def show(self, totals: FleetProgress) -> None:
        self._last = totals
        if self._json:
            from annopull._progress import json_line

            print(json_line(totals.event(label=self._label)), file=sys.stderr, flush=True)
        elif self._bar is not None:
            status = f"{totals.finished}/{totals.shards} shards done, {totals.running} running"
            if totals.retries:
                status += f", {totals.retries} retries"
            self._bar.show(totals.counts, status=status)

"""``annopull kognic``: pull a project's (or batch's) annotations into a zip, folder or JSONL."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annopull._cli.common import Context, add_engine_options, output_sink, run_pull, shard_arg
from annopull._cli.shards import SHARDS_EPILOG, add_shard_options, run_sharded, sharded
from annopull._client import Client
from annopull._errors import ConfigError
from annopull._pipeline.pull import PullReport, Selection, parse_time
from annopull._progress import Progress
from annopull._sinks import Sink

__all__ = ["register"]

EPILOG = (
    """\
output kinds (-o):
  out.zip       a zip, one entry {scene_uuid}.json per annotation (written as out.zip.part,
                renamed when complete; out.zip.journal beside it while running)
  -             a zip streamed to stdout
  folder/       one {scene_uuid}.json file per annotation
  out.jsonl     one JSON line per annotation: scene_uuid, annotation_type, created, content

examples:
  annopull --fake kognic --project demo --batch demo --annotation-type demo -o out.zip
  annopull kognic --project P --annotation-type T -o backfill.zip --resume
  annopull kognic --project P --annotation-type T -o nightly/ --since 2026-11-01T00:00:00Z
  annopull kognic --project P --annotation-type T -o day.zip --skip-existing previous.zip
  annopull kognic --project P --annotation-type T -o part3.zip --shard 3/8
  annopull kognic --project P --annotation-type T -o backfill/ --shards 16 --ray auto
  annopull kognic --project P --annotation-type T -o backfill/ --shards 16 --ray auto --resume

"""
    + SHARDS_EPILOG
    + """
credentials: KOGNIC_CREDENTIALS (a credentials JSON file) or KOGNIC_CLIENT_ID and
KOGNIC_CLIENT_SECRET.
"""
)


def register(sub: Any) -> None:
    """Add the ``kognic`` command."""
    parser = sub.add_parser(
        "kognic",
        help="pull Kognic annotations (OpenLABEL, one document per scene)",
        description="Pull every annotation of one type from a Kognic project or batch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to pull")
    what.add_argument("--project", required=True, help="project identifier")
    what.add_argument("--annotation-type", required=True, help="annotation type")
    what.add_argument("--batch", help="only this batch of the project")
    what.add_argument(
        "--cartesian",
        action="store_true",
        help="ask for ISO 8855 rotated cuboids (useDefaultCartesian=true)",
    )
    where = parser.add_argument_group("output")
    where.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="out.zip, -, folder/ or out.jsonl"
    )
    where.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose journal is beside OUT (a fresh run if none)",
    )
    incremental = parser.add_argument_group("incremental pulls")
    incremental.add_argument(
        "--since",
        type=_time,
        metavar="TIME",
        help="only annotations created after TIME (ISO 8601, e.g. 2026-11-01T00:00:00Z)",
    )
    incremental.add_argument(
        "--skip-existing",
        type=Path,
        metavar="PATH",
        help="skip scenes whose annotation is unchanged in PATH (a zip, folder, .jsonl or "
        ".journal of an earlier pull); listing is still read, downloads are saved",
    )
    incremental.add_argument(
        "--shard",
        type=shard_arg,
        metavar="K/N",
        help="only shard K of N (1-based; stable hash of the scene uuid), to split one "
        "project across N processes or machines",
    )
    add_shard_options(parser)
    add_engine_options(parser)
    parser.set_defaults(run=run)


def _time(text: str) -> Any:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class KognicPull:
    """One type's annotations of a project (or batch): what a run, or each shard, pulls."""

    project: str
    annotation_type: str
    batch: str | None
    cartesian: bool

    async def __call__(
        self, client: Client, sink: Sink, *, selection: Selection, resume: bool, progress: Progress
    ) -> PullReport:
        kognic = client.kognic  # credentials are checked before any display starts
        return await kognic.download(
            self.project,
            self.annotation_type,
            batch=self.batch,
            sink=sink,
            selection=selection,
            resume=resume,
            cartesian=self.cartesian,
            progress=progress,
        )


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run the pull; exit 0 when every item arrived, 1 when some failed."""
    if args.skip_existing is not None:
        _check_not_replaced(args.skip_existing, args.output)
    what = KognicPull(
        project=args.project,
        annotation_type=args.annotation_type,
        batch=args.batch,
        cartesian=args.cartesian,
    )
    label = f"kognic {args.project}/{args.annotation_type}"
    selection = Selection(since=args.since, skip_existing=args.skip_existing, shard=args.shard)
    if sharded(args):
        return await run_sharded(
            args, ctx, pull=what, label=label, noun="annotations", selection=selection
        )
    sink = output_sink(args.output, ctx)

    async def pull(client: Client, progress: Progress) -> PullReport:
        return await what(client, sink, selection=selection, resume=args.resume, progress=progress)

    return await run_pull(
        ctx, sink, pull, label=label, noun="annotations", summary=args.summary, shard=args.shard
    )


def _check_not_replaced(previous: Path, output: str) -> None:
    """Refuse to compare against the very file this run will replace with only the changes."""
    if previous.is_file() and Path(output).resolve() == previous.resolve():
        raise ConfigError(
            f"--skip-existing {previous} is also the output: the new file would hold only the "
            "changed scenes and replace it; write to another file (a folder may be both)"
        )

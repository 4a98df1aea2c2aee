"""``annopull annolab``: AnnoLab instrument and project exports, verified and resumable."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from annopull._cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    Context,
    add_engine_options,
    exit_code_for,
    fail,
    make_progress,
    progress_or_null,
    write_summary,
)
from annopull._errors import AnnopullError
from annopull._storage.s3url import S3Url, is_s3_url

# The parser (every command's --help) needs none of these: the AnnoLab source and the S3
# client are imported by the run that uses them.
if TYPE_CHECKING:
    from annopull._progress import Progress
    from annopull._sources.annolab import AnnoLabSource, ExportOutcome, ExportRequest
    from annopull._storage.bucket import S3Download

__all__ = ["register"]

EPILOG = """\
The API key comes from ANNOLAB_API_KEY; it is sent to the AnnoLab API only, never to the
signed download URL. The export is streamed to OUTPUT.part and renamed only after its zip
verified (central directory and every CRC); run the same command again after a failure or
Ctrl-C and the download resumes where it stopped.

-o ending in / (or an existing folder) extracts the export into that folder instead,
refusing entries that would land outside it. With several --project, -o must be a folder:
one zip per project (NAME.zip), or one subfolder per project with --extract.

Polling: [annolab] poll_interval, poll_backoff, poll_max_interval, poll_timeout in the
config file, or ANNOPULL_ANNOLAB_POLL_INTERVAL=5 etc. in the environment.

exit codes: 0 every export arrived and verified; 1 an export errored on AnnoLab or a
download failed (what arrived is kept as .part); 2 bad API key, unknown project or usage;
130 interrupted.
"""

INSTRUMENTS_EPILOG = (
    """\
examples:
  annopull annolab instruments --owner "Group" --project "Project" -o export.zip
  annopull annolab instruments --owner "Group" --project "Project" \\
      --tag "Airframe Inventory" --source-filter Test_PDF.pdf --include-files -o export.zip
  annopull annolab instruments --owner "Group" --project A --project B -o exports/
  annopull annolab instruments --owner "Group" --project "Project" -o extracted/

"""
    + EPILOG
)

PROJECT_EPILOG = (
    """\
examples:
  annopull annolab project --group "Group" --project "Project" -o project.zip
  annopull annolab project --group "Group" --project "Project" \\
      --include-sources --include-annotation-types --layer Default -o project.zip
  annopull annolab project --group "Group" --project 42 --source-id 1 --source-id 7 -o out/

"""
    + EPILOG
)


def register(sub: Any) -> None:
    """Add the ``annolab`` command with its ``instruments`` and ``project`` exports."""
    parser = sub.add_parser(
        "annolab",
        help="download AnnoLab exports (instruments or a whole project)",
        description="Ask AnnoLab for an export, wait while it is built, and stream the zip "
        "down: resumable, verified, memory flat whatever its size.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = parser.add_subparsers(dest="annolab_command", metavar="EXPORT", required=True)
    _register_instruments(kinds)
    _register_project(kinds)


def _register_instruments(kinds: Any) -> None:
    parser = kinds.add_parser(
        "instruments",
        help="export the instruments of one or more projects (instruments.json, pdfs/)",
        description="Export instruments: instruments.json (one instrument a line) and, with "
        "--include-files, one PDF per instrument under pdfs/.",
        epilog=INSTRUMENTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--owner", required=True, metavar="GROUP", help="the group that owns the project(s)"
    )
    _add_projects(parser)
    parser.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="TYPE",
        help="only instruments of this canonical tag type (repeat for several)",
    )
    parser.add_argument(
        "--source-filter",
        metavar="FILENAME",
        help="only instruments from the source file of exactly this name",
    )
    parser.add_argument(
        "--include-files", action="store_true", help="also one PDF per instrument, in pdfs/"
    )
    _add_output(parser)
    parser.set_defaults(run=_run_instruments)


def _register_project(kinds: Any) -> None:
    parser = kinds.add_parser(
        "project",
        help="export whole projects (annotations, layers, relations, sources)",
        description="Export a project: JSON Lines files of annotations, layers and relations, "
        "and optionally sources and annotation types.",
        epilog=PROJECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--group",
        "--owner",
        dest="group",
        required=True,
        metavar="GROUP",
        help="the group that owns the project(s)",
    )
    _add_projects(parser, allow_id=True)
    parser.add_argument(
        "--include-sources", action="store_true", help="add <project>.sources.jsonl"
    )
    parser.add_argument(
        "--include-annotation-types", action="store_true", help="add <project>.atntypes.jsonl"
    )
    parser.add_argument(
        "--include-text-bounds", action="store_true", help="add <project>.text-bounds.jsonl"
    )
    parser.add_argument(
        "--source-id",
        dest="source_ids",
        type=int,
        action="append",
        metavar="N",
        help="only this source (repeat for several)",
    )
    parser.add_argument(
        "--layer",
        dest="layers",
        action="append",
        metavar="NAME",
        help="only this annotation layer (repeat for several)",
    )
    _add_output(parser)
    parser.set_defaults(run=_run_project)


def _add_projects(parser: argparse.ArgumentParser, *, allow_id: bool = False) -> None:
    parser.add_argument(
        "--project",
        dest="projects",
        action="append",
        required=True,
        metavar="NAME" + ("|ID" if allow_id else ""),
        help="the project (repeat to export several at once; then -o must be a folder)",
    )


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="the zip to write, or a folder (ending in /) to extract into",
    )
    parser.add_argument(
        "--extract",
        action="store_true",
        help="extract into -o (a folder) instead of keeping the zip; implied by a trailing /",
    )
    add_engine_options(parser)


async def _run_instruments(args: argparse.Namespace, ctx: Context) -> int:
    from annopull._sources.annolab import InstrumentsExport

    requests: list[ExportRequest] = [
        InstrumentsExport(
            owner=args.owner,
            project=project,
            tags=tuple(args.tags),
            source_filter=args.source_filter,
            include_files=args.include_files,
        )
        for project in args.projects
    ]
    return await _run(args, ctx, requests)


async def _run_project(args: argparse.Namespace, ctx: Context) -> int:
    from annopull._sources.annolab import ProjectExport

    requests: list[ExportRequest] = [
        ProjectExport(
            group=args.group,
            project=project,
            include_annotation_types=args.include_annotation_types,
            include_sources=args.include_sources,
            include_text_bounds=args.include_text_bounds,
            source_ids=tuple(args.source_ids) if args.source_ids else None,
            layer_names=tuple(args.layers) if args.layers else None,
        )
        for project in args.projects
    ]
    return await _run(args, ctx, requests)


async def _run(args: argparse.Namespace, ctx: Context, requests: Sequence[ExportRequest]) -> int:
    """Run the exports, then report: one line on stderr, --summary JSON, the exit code."""
    output: str = args.output
    if is_s3_url(output):
        return await _run_to_bucket(args, ctx, requests)
    folder = output.endswith(("/", os.sep)) or await anyio.Path(output).is_dir()
    if len(requests) > 1 and not folder:
        fail(
            f"several --project need -o to be a folder (one zip or subfolder each): "
            f"write -o {output.rstrip('/')}/"
        )
        return EXIT_USAGE
    if args.extract and not folder and Path(output).suffix == ".zip":
        fail(f"--extract needs -o to be a folder, not {output!r}")
        return EXIT_USAGE
    started = time.monotonic()
    label = f"annolab {args.annolab_command}"
    display = make_progress(ctx, label)
    with display if display is not None else contextlib.nullcontext():
        async with ctx.client() as client:
            source = client.annolab
            progress = progress_or_null(display)
            if len(requests) > 1:
                outcomes = await source.export_many(
                    requests, output_dir=output, extract=args.extract, progress=progress
                )
            else:
                outcomes = [await _export_one(source, requests[0], output, args, progress)]
    return _report(args, ctx, outcomes, elapsed=time.monotonic() - started)


async def _run_to_bucket(
    args: argparse.Namespace, ctx: Context, requests: Sequence[ExportRequest]
) -> int:
    """One export to ``s3://BUCKET/KEY.zip``: staged in the bucket, verified, then copied."""
    from annopull._storage.bucket import S3Download
    from annopull._storage.s3 import open_client

    url = S3Url.parse(args.output)
    if len(requests) > 1 or args.extract or url.is_prefix or not url.key.endswith(".zip"):
        fail(
            "an export to object storage is one zip: -o s3://BUCKET/KEY.zip, one --project, "
            "no --extract"
        )
        return EXIT_USAGE
    output = S3Download(url, client=open_client(ctx.config.storage))
    started = time.monotonic()
    display = make_progress(ctx, f"annolab {args.annolab_command}")
    with display if display is not None else contextlib.nullcontext():
        async with ctx.client() as client:
            outcome = await _export_one(
                client.annolab, requests[0], output, args, progress_or_null(display)
            )
    return _report(args, ctx, [outcome], elapsed=time.monotonic() - started)


async def _export_one(
    source: AnnoLabSource,
    request: ExportRequest,
    output: str | S3Download,
    args: argparse.Namespace,
    progress: Progress,
) -> ExportOutcome:
    """One export, its failure captured like :meth:`export_many` does, for one report."""
    from annopull._sources.annolab import ExportOutcome

    extract = True if args.extract else None
    shown = Path(output) if isinstance(output, str) else output.description
    try:
        result = await source.export(request, output, extract=extract, progress=progress)
    except AnnopullError as exc:
        return ExportOutcome(request=request, output=shown, error=exc)
    return ExportOutcome(request=request, output=shown, result=result)


def _report(
    args: argparse.Namespace, ctx: Context, outcomes: Sequence[ExportOutcome], *, elapsed: float
) -> int:
    code = EXIT_OK
    for outcome in outcomes:
        if outcome.error is not None:
            fail(str(outcome.error))
            code = max(code, exit_code_for(outcome.error))
    if not ctx.quiet:
        print(_summary_line(outcomes, elapsed), file=sys.stderr, flush=True)
    write_summary(args.summary, _summary(args, outcomes, elapsed))
    return code


def _summary_line(outcomes: Sequence[ExportOutcome], elapsed: float) -> str:
    from annopull._progress import format_bytes

    done = [o.result for o in outcomes if o.result is not None]
    size = sum(result.size for result in done)
    failed = len(outcomes) - len(done)
    where = ", ".join(str(result.path) for result in done[:3]) + (", ..." if len(done) > 3 else "")
    line = f"annolab: {len(done)} of {len(outcomes)} export(s) done, {format_bytes(size)}"
    if failed:
        line += f", {failed} failed"
    return line + f" in {elapsed:.1f}s" + (f": {where}" if where else "")


def _summary(
    args: argparse.Namespace, outcomes: Sequence[ExportOutcome], elapsed: float
) -> dict[str, Any]:
    return {
        "command": f"annolab {args.annolab_command}",
        "ok": sum(outcome.ok for outcome in outcomes),
        "failed": sum(not outcome.ok for outcome in outcomes),
        "elapsed_seconds": round(elapsed, 3),
        "exports": [_outcome_entry(outcome) for outcome in outcomes],
    }


def _outcome_entry(outcome: ExportOutcome) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": outcome.request.kind,
        "project": outcome.request.label,
        "output": str(outcome.output),
        "status": "ok" if outcome.ok else "failed",
    }
    if outcome.result is not None:
        result = outcome.result
        entry.update(
            path=str(result.path),
            bytes=result.size,
            entries=result.entries,
            resumed_from=result.resumed_from,
            extracted=result.extracted,
            files=len(result.files),
        )
    if outcome.error is not None:
        entry.update(error=str(outcome.error), error_type=type(outcome.error).__name__)
    return entry

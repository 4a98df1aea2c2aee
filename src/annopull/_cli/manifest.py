"""``annopull manifest PREFIX``: check the parts of a sharded run and write its manifest."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import anyio

from annopull._cli.common import EXIT_FAILED, EXIT_OK, Context, fail, positive_int
from annopull._fleet.parts import MAX_SHARDS, store_for

if TYPE_CHECKING:
    from annopull._fleet.manifest import ManifestReport

__all__ = ["describe_manifest", "register"]

EPILOG = """\
PREFIX holds part-00001-of-0000N.zip ... part-0000N-of-0000N.zip, written by any runner
(annopull --shards N --ray, or N jobs each running --shard K/N -o PREFIX/part-...zip).
The set is complete when every part is there and finished (no .journal, .part or .lock
beside it). Then PREFIX/manifest.json is written: every scene -> its part, version and
entry name; counts per part; keys found in more than one part; the failed items of each
part's summary (PREFIX/part-0000K-of-0000N.summary.json, when the shard wrote one).

exit codes: 0 complete; 1 a shard missing or unfinished (no manifest written; each is
named), a key in several parts, or failed items; 2 usage errors

examples:
  annopull manifest backfill/
  annopull manifest backfill/ --shards 16
"""


def register(sub: Any) -> None:
    """Add the ``manifest`` command."""
    parser = sub.add_parser(
        "manifest",
        help="check the parts of a sharded run and write PREFIX/manifest.json",
        description="Check that the parts under PREFIX form a complete set and write the "
        "manifest of what they hold.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "prefix", metavar="PREFIX", help="the folder/ or s3://BUCKET/PREFIX/ the parts are in"
    )
    parser.add_argument(
        "--shards",
        type=positive_int(MAX_SHARDS),
        metavar="N",
        help="the run's number of shards (default: read from the parts' names)",
    )
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Build the manifest; exit 0 when the set is complete and clean, 1 otherwise."""
    # Imported here: the parser of every command reaches this module.
    from annopull._fleet.manifest import build_manifest

    store = store_for(args.prefix, storage=ctx.config.storage)
    report = await anyio.to_thread.run_sync(
        lambda: build_manifest(store, shards=args.shards), abandon_on_cancel=True
    )
    return describe_manifest(report, prefix=store.description)


def describe_manifest(report: ManifestReport, *, prefix: str) -> int:
    """Print what the manifest holds (or which shards are missing); return the exit code."""
    parts = report.parts
    if report.written is None:
        fail(f"{prefix}: the {parts.shards} parts are not complete: {parts.describe_gaps()}")
        return EXIT_FAILED
    line = (
        f"annopull: {report.written}: {parts.shards} parts, {report.entries} entries; "
        f"{report.duplicates} in several parts, {report.failed} failed"
    )
    if report.duplicate_keys:
        line += f" (first: {', '.join(report.duplicate_keys)})"
    print(line, file=sys.stderr, flush=True)
    return EXIT_OK if report.ok else EXIT_FAILED

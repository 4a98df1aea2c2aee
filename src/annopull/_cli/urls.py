"""``annopull urls``: fetch every URL of a list into a zip, folder or JSONL."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from annopull._cli.common import (
    Context,
    add_engine_options,
    add_output_options,
    add_shard_option,
    output_sink,
    run_pull,
)
from annopull._cli.shards import SHARDS_EPILOG, add_shard_options, run_sharded, sharded

# The parser needs none of these; the run imports what it uses.
if TYPE_CHECKING:
    from annopull._client import Client
    from annopull._pipeline.pull import PullReport, Selection
    from annopull._progress import Progress
    from annopull._sinks import Sink
    from annopull._sources.urls import UrlList

__all__ = ["register"]

EPILOG = (
    """\
LIST: one URL a line, or URL<TAB>NAME; blank lines and lines starting with # are ignored;
- reads the list from stdin. The whole list is checked before anything is fetched: a
malformed line (not http/https, no host, a bad port, an empty NAME, control characters)
stops with exit 2 and names the line.

names: an entry is called NAME, else the last segment of the URL's path, percent-decoded
(index for a path ending in /); a name used twice becomes "a (2).json". NAME, else the
URL, is the entry's identity for --resume and --shard. A URL's query (a signature) never
reaches the output, the journal or the summary. Give signed URLs NAMEs: a list regenerated
with fresh signatures and the same NAMEs resumes; without NAMEs it is another list.

output kinds (-o):
  out.zip       a zip, one entry per URL, the body byte for byte (written as out.zip.part,
                renamed when complete; out.zip.journal beside it while running)
  -             a zip streamed to stdout
  folder/       one file per URL
  out.jsonl     one JSON line per URL: url (without its query), name, and content (a JSON
                body, embedded) or content_base64 (any other body)

examples:
  annopull urls urls.txt -o files.zip
  make-signed-urls | annopull urls - -o files/ --concurrency 64
  annopull urls urls.txt -o files.zip --resume
  annopull urls urls.txt -o part2.zip --shard 2/4 --summary run.json
  annopull urls urls.txt -o parts/ --shards 4 --ray local

No credentials are needed, and no Authorization header is sent to the URLs.

"""
    + SHARDS_EPILOG
)


def register(sub: Any) -> None:
    """Add the ``urls`` command."""
    parser = sub.add_parser(
        "urls",
        help="fetch every URL of a list (signed storage URLs, say) into one output",
        description="Fetch every URL of LIST into a zip, a folder or JSON Lines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "list", metavar="LIST", help="file of URLs, one a line (URL or URL<TAB>NAME); - for stdin"
    )
    where = add_output_options(parser, resume_note="; LIST must hold the same entries")
    add_shard_option(where, hashed="NAME, else the URL", of="list")
    add_shard_options(parser)
    add_engine_options(parser)
    parser.set_defaults(run=run)


@dataclass(frozen=True, kw_only=True)
class UrlsPull:
    """Every URL of a list: what a run, or each shard, fetches."""

    urls: UrlList

    async def __call__(
        self, client: Client, sink: Sink, *, selection: Selection, resume: bool, progress: Progress
    ) -> PullReport:
        from annopull._sources.urls import UrlSource

        source = UrlSource(transport=client.transport, urls=self.urls)
        return await source.download(
            sink=sink, selection=selection, resume=resume, progress=progress
        )


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Fetch the list; exit 0 when every URL arrived, 1 when some failed."""
    from annopull._pipeline.pull import Selection
    from annopull._sources.urls import read_url_list

    sink = None if sharded(args) else output_sink(args.output, ctx)
    # Checked whole before any output exists or anything is fetched.
    urls = await anyio.to_thread.run_sync(read_url_list, args.list, abandon_on_cancel=True)
    what, label = UrlsPull(urls=urls), f"urls {urls.origin}"
    selection = Selection(shard=args.shard)
    if sink is None:
        return await run_sharded(
            args, ctx, pull=what, label=label, noun="files", selection=selection
        )

    async def pull(client: Client, progress: Progress) -> PullReport:
        return await what(client, sink, selection=selection, resume=args.resume, progress=progress)

    return await run_pull(
        ctx, sink, pull, label=label, noun="files", summary=args.summary, shard=args.shard
    )

"""``annopull kognic``: a project's (or batch's) annotations, a list of scenes, or one annotation.

Three forms, routed on the first argument (:class:`~annopull._cli.common.FormsParser`):
``kognic --project ...`` (the bulk pull), ``kognic scenes ...`` (a list of scene uuids
through the same engine) and ``kognic get ...`` (one read, written atomically).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from annopull._cli import transform
from annopull._cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Context,
    FormsParser,
    add_engine_options,
    add_output_options,
    add_shard_option,
    fail,
    output_sink,
    run_pull,
    time_arg,
)
from annopull._cli.shards import SHARDS_EPILOG, add_shard_options, run_sharded, sharded
from annopull._errors import ConfigError, NotFoundError
from annopull._redact import redact

# The parser (--help, usage errors) needs none of these; the run functions import what
# they use.
if TYPE_CHECKING:
    from annopull._client import Client
    from annopull._pipeline.pull import PullReport, Selection
    from annopull._progress import Progress
    from annopull._sinks import Sink
    from annopull._sources.kognic import KognicSource

__all__ = ["register"]

USAGE = """\
annopull kognic --project P --annotation-type T [--batch B] -o OUT [options]
       annopull kognic scenes --scene-list FILE --annotation-type T -o OUT [options]
       annopull kognic get (--scene UUID [--annotation-type T] | --input UUID | --id ID) -o OUT"""

OUTPUT_KINDS = """\
output kinds (-o):
  out.zip       a zip, one entry {scene_uuid}.json per annotation (written as out.zip.part,
                renamed when complete; out.zip.journal beside it while running)
  -             a zip streamed to stdout
  folder/       one {scene_uuid}.json file per annotation
  out.jsonl     one JSON line per annotation: scene_uuid, annotation_type, created, content
"""

CREDENTIALS = """\
credentials: KOGNIC_CREDENTIALS (a credentials JSON file) or KOGNIC_CLIENT_ID and
KOGNIC_CLIENT_SECRET.
"""

EPILOG = f"""\
three forms:
  kognic --project P ...   every annotation of one type in a project or batch (below)
  kognic scenes ...        one annotation type of every scene in a list (kognic scenes -h)
  kognic get ...           one annotation, or one scene's, into a file (kognic get -h)

{OUTPUT_KINDS}
examples:
  annopull --fake kognic --project demo --batch demo --annotation-type demo -o out.zip
  annopull kognic --project P --annotation-type T -o backfill.zip --resume
  annopull kognic --project P --annotation-type T -o nightly/ --since 2026-11-01T00:00:00Z
  annopull kognic --project P --annotation-type T -o day.zip --skip-existing previous.zip
  annopull kognic --project P --annotation-type T -o part3.zip --shard 3/8
  annopull kognic --project P --annotation-type T -o backfill/ --shards 16 --ray auto
  annopull kognic --project P --annotation-type T -o backfill/ --shards 16 --ray auto --resume
  annopull kognic scenes --scene-list scenes.txt --annotation-type T -o out.zip
  annopull kognic get --scene 3f0c2a4e-8f7b-4c1d-9e2a-5b6c7d8e9f01 --annotation-type T -o scene.json
  annopull kognic get --id 8d1e0f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6 -o annotation.json

{SHARDS_EPILOG}
{CREDENTIALS}"""

SCENES_EPILOG = f"""\
FILE: one scene uuid a line; blank lines and lines starting with # are ignored; - reads the
list from stdin. The whole list is checked before anything is fetched: a line that is not a
uuid stops with exit 2 and names the line. Each scene's entry is its annotation of TYPE
(the single-annotation read, its content inline and written as orjson re-serialises it:
compact JSON); a scene without one is a failed item (exit 1, named in --summary), the rest
arrive. --resume continues only with the same list, type and --cartesian.

{OUTPUT_KINDS}
examples:
  annopull kognic scenes --scene-list scenes.txt --annotation-type T -o out.zip
  grep -v done scenes.txt | annopull kognic scenes --scene-list - --annotation-type T -o out/
  annopull kognic scenes --scene-list scenes.txt --annotation-type T -o out.zip --resume
  annopull kognic scenes --scene-list scenes.txt --annotation-type T -o new.jsonl \\
      --since 2026-11-01T00:00:00Z --summary run.json
  annopull kognic scenes --scene-list scenes.txt --annotation-type T -o parts/ --shards 8

{SHARDS_EPILOG}
{CREDENTIALS}"""

GET_EPILOG = f"""\
what is read (one of):
  --scene UUID --annotation-type T   that scene's annotation of type T; the content comes
                                     inline and is written as orjson re-serialises it
  --input UUID                       the annotation of one input (a scene in one request)
  --id ID                            the annotation with that id (annotation-integration API)
  --scene UUID                       every annotation of the scene (one per request)

output (-o), written atomically (a temporary name, then renamed):
  file.json     the OpenLABEL document; for --scene without a type, a JSON array of them
  folder/       one file: {{scene_uuid}}.json, {{input_uuid}}.json or {{id}}.json; for --scene
                without a type, one {{input_uuid}}.json per annotation
  -             the JSON on stdout

An annotation (or scene) that does not exist is one line on stderr naming it, exit 1, and no
file is written. --cartesian asks for ISO 8855 rotated cuboids (useDefaultCartesian=true;
isoBoxes=true by id).

examples:
  annopull kognic get --scene 3f0c2a4e-8f7b-4c1d-9e2a-5b6c7d8e9f01 --annotation-type T -o scene.json
  annopull kognic get --id 8d1e0f3a-1b2c-4d5e-8f90-a1b2c3d4e5f6 -o annotation.json
  annopull kognic get --input 5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d --cartesian -o -
  annopull kognic get --scene 3f0c2a4e-8f7b-4c1d-9e2a-5b6c7d8e9f01 -o scene-annotations/

{CREDENTIALS}"""


def register(sub: Any) -> None:
    """Add the ``kognic`` command and its ``scenes`` and ``get`` forms."""
    parser = sub.add_parser(
        "kognic",
        help="pull Kognic annotations (OpenLABEL, one document per scene)",
        description="Pull every annotation of one type from a Kognic project or batch; "
        "or of a list of scenes (kognic scenes); or read one (kognic get).",
        usage=USAGE,
        epilog=EPILOG + "\n" + transform.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    assert isinstance(parser, FormsParser)
    what = parser.add_argument_group("what to pull")
    what.add_argument("--project", required=True, help="project identifier")
    what.add_argument("--annotation-type", required=True, help="annotation type")
    what.add_argument("--batch", help="only this batch of the project")
    _add_cartesian(what)
    add_output_options(parser)
    incremental = _add_incremental(parser, of="project")
    incremental.add_argument(
        "--skip-existing",
        type=Path,
        metavar="PATH",
        help="skip scenes whose annotation is unchanged in PATH (a zip, folder, .jsonl or "
        ".journal of an earlier pull); listing is still read, downloads are saved",
    )
    add_shard_options(parser)
    transform.add_transform_options(parser)
    add_engine_options(parser)
    parser.set_defaults(run=run)
    parser.forms["scenes"] = _scenes_parser()
    parser.forms["get"] = _get_parser()


def _scenes_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="annopull kognic scenes",
        description="Pull one annotation type of every scene of a list into a zip, a "
        "folder or JSON Lines.",
        epilog=SCENES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to pull")
    what.add_argument(
        "--scene-list",
        required=True,
        metavar="FILE",
        help="file of scene uuids, one a line; - for stdin",
    )
    what.add_argument("--annotation-type", required=True, help="annotation type")
    _add_cartesian(what)
    add_output_options(parser, resume_note="; FILE must hold the same scenes")
    _add_incremental(parser, of="list")
    add_shard_options(parser)
    transform.add_transform_options(parser)
    add_engine_options(parser)
    parser.set_defaults(run=run_scenes)
    return parser


def _get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="annopull kognic get",
        description="Read one Kognic annotation (or every annotation of one scene) into a file.",
        epilog=GET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to read (one of --scene, --input, --id)")
    which = what.add_mutually_exclusive_group(required=True)
    which.add_argument("--scene", metavar="UUID", help="a scene (with --annotation-type: one)")
    which.add_argument("--input", metavar="UUID", help="an input (a scene in one request)")
    which.add_argument("--id", metavar="ID", help="an annotation id")
    what.add_argument(
        "--annotation-type", metavar="T", help="with --scene: only its annotation of type T"
    )
    _add_cartesian(what)
    where = parser.add_argument_group("output")
    where.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="file.json, folder/ or -"
    )
    where.add_argument("-q", "--quiet", action="store_true", help="no line saying what was written")
    parser.set_defaults(run=run_get)
    return parser


def _add_cartesian(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--cartesian",
        action="store_true",
        help="ask for ISO 8855 rotated cuboids (useDefaultCartesian=true)",
    )


def _add_incremental(parser: argparse.ArgumentParser, *, of: str) -> argparse._ArgumentGroup:
    incremental = parser.add_argument_group("incremental pulls")
    incremental.add_argument(
        "--since",
        type=time_arg,
        metavar="TIME",
        help="only annotations created after TIME (ISO 8601, e.g. 2026-11-01T00:00:00Z)",
    )
    add_shard_option(incremental, hashed="the scene uuid", of=of)
    return incremental


@dataclass(frozen=True, kw_only=True)
class KognicPull:
    """One type's annotations of a project (or batch): what a run, or each shard, pulls.

    ``stages`` are the download's ``--transform``/``--validate`` keywords.
    """

    project: str
    annotation_type: str
    batch: str | None
    cartesian: bool
    stages: Mapping[str, Any] = field(default_factory=dict)

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
            **self.stages,
        )


@dataclass(frozen=True, kw_only=True)
class ScenesPull:
    """One type's annotation of every scene of a list: what a run, or each shard, pulls.

    ``scenes`` is read lazily by one run; a sharded run hands each task the list read whole.
    """

    scenes: Iterable[str]
    annotation_type: str
    cartesian: bool
    stages: Mapping[str, Any] = field(default_factory=dict)

    async def __call__(
        self, client: Client, sink: Sink, *, selection: Selection, resume: bool, progress: Progress
    ) -> PullReport:
        return await client.kognic.download_scenes(
            self.scenes,
            self.annotation_type,
            sink=sink,
            selection=selection,
            resume=resume,
            cartesian=self.cartesian,
            progress=progress,
            **self.stages,
        )


async def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run the pull; exit 0 when every item arrived, 1 when some failed."""
    from annopull._pipeline.pull import Selection

    if args.skip_existing is not None:
        _check_not_replaced(args.skip_existing, args.output)
    what = KognicPull(
        project=args.project,
        annotation_type=args.annotation_type,
        batch=args.batch,
        cartesian=args.cartesian,
        stages=transform.transform_options(args),
    )
    label = f"kognic {args.project}/{args.annotation_type}"
    selection = Selection(since=args.since, skip_existing=args.skip_existing, shard=args.shard)
    return await _run_either(args, ctx, what, label=label, selection=selection)


async def run_scenes(args: argparse.Namespace, ctx: Context) -> int:
    """Pull the list's scenes; exit 0 when every one arrived, 1 when some failed."""
    from annopull._pipeline.pull import Selection
    from annopull._sources.kognic_reads import read_scene_list

    label = f"kognic scenes {args.scene_list}/{args.annotation_type}"
    selection = Selection(since=args.since, shard=args.shard)
    if sharded(args):
        # Every task gets the list: read (and checked) whole here, once.
        scenes: Iterable[str] = await anyio.to_thread.run_sync(
            lambda: tuple(read_scene_list(args.scene_list)), abandon_on_cancel=True
        )
    else:
        # Read lazily: the pull checks the whole list before it fetches anything.
        scenes = read_scene_list(args.scene_list)
    what = ScenesPull(
        scenes=scenes,
        annotation_type=args.annotation_type,
        cartesian=args.cartesian,
        stages=transform.transform_options(args),
    )
    return await _run_either(args, ctx, what, label=label, selection=selection)


async def _run_either(
    args: argparse.Namespace,
    ctx: Context,
    what: KognicPull | ScenesPull,
    *,
    label: str,
    selection: Selection,
) -> int:
    """The pull as one run into ``-o``, or, with ``--shards``, as Ray tasks into parts."""
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


@dataclass(frozen=True, slots=True)
class _Document:
    """One document read, and its file name in a folder output."""

    name: str
    content: bytes


async def run_get(args: argparse.Namespace, ctx: Context) -> int:
    """Read and write one annotation (or a scene's); exit 1 when it does not exist."""
    if args.annotation_type is not None and args.scene is None:
        raise ConfigError("--annotation-type goes with --scene (an input or an id names one)")
    _check_get_output(args.output)
    what = _what(args)
    async with ctx.client() as client:
        try:
            documents, array = await _read(client.kognic, args)
        except NotFoundError as exc:
            fail(f"{what} was not found (HTTP {exc.status}, {exc.url})")
            return EXIT_FAILED
    written = await anyio.to_thread.run_sync(_write, args.output, documents, array)
    if not args.quiet:
        print(redact(f"annopull: {written}: {what}"), file=sys.stderr, flush=True)
    return EXIT_OK


def _what(args: argparse.Namespace) -> str:
    """What is asked for, for the line saying it was written or not found."""
    if args.id is not None:
        return f"annotation {args.id}"
    if args.input is not None:
        return f"the annotation of input {args.input}"
    if args.annotation_type is not None:
        return f"the {args.annotation_type!r} annotation of scene {args.scene}"
    return f"the annotations of scene {args.scene}"


async def _read(kognic: KognicSource, args: argparse.Namespace) -> tuple[list[_Document], bool]:
    """The documents read, and whether they are a list (a JSON array in one file)."""
    cartesian = args.cartesian
    if args.id is not None:
        by_id = await kognic.get_annotation_by_id(args.id, iso_boxes=cartesian)
        return [_Document(f"{args.id}.json", by_id.content)], False
    if args.input is not None:
        one = await kognic.get_annotation_for_input(args.input, cartesian=cartesian)
        return [_Document(f"{args.input}.json", one.content)], False
    if args.annotation_type is not None:
        single = await kognic.get_annotation(args.scene, args.annotation_type, cartesian=cartesian)
        return [_Document(f"{args.scene}.json", single.content)], False
    listed = await kognic.get_annotations_for_scene(args.scene, cartesian=cartesian)
    return [_Document(f"{a.input_uuid}.json", a.content) for a in listed], True


def _is_folder(output: str) -> bool:
    return output.endswith(("/", "\\")) or Path(output).is_dir()


def _check_get_output(output: str) -> None:
    """Refuse an output that cannot be written, before anything is read."""
    if not output:
        raise ConfigError("the output is empty: name a file, a folder/, or -")
    if output != "-" and not _is_folder(output) and not Path(output).parent.is_dir():
        raise ConfigError(f"the output's folder does not exist: {Path(output).parent}")


def _write(output: str, documents: list[_Document], array: bool) -> str:
    """Write the documents where ``output`` says; return a description of what was written.

    A file appears whole or not at all: written as ``<file>.part``, then renamed.
    """
    from annopull._progress import format_bytes
    from annopull._storage.local import LocalFile, LocalTree

    if array:
        body = b"[" + b",".join(d.content for d in documents) + b"]"
    else:
        (only,) = documents
        body = only.content
    if output == "-":
        sys.stdout.buffer.write(body + b"\n")
        sys.stdout.buffer.flush()
        return f"stdout ({format_bytes(len(body))})"
    if _is_folder(output):
        tree = LocalTree(Path(output))
        for document in documents:
            tree.put(document.name, [document.content])
        tree.sync()
        total = sum(len(d.content) for d in documents)
        plural = "s" if len(documents) != 1 else ""
        return f"{tree.description} ({len(documents)} file{plural}, {format_bytes(total)})"
    file = LocalFile(Path(output), resumable=False)
    blob = file.open(resume=False)
    try:
        blob.write(body)
        file.publish(blob)
    except BaseException:
        blob.close()
        file.discard_partial()
        raise
    return f"{file.description} ({format_bytes(len(body))})"


def _check_not_replaced(previous: Path, output: str) -> None:
    """Refuse to compare against the very file this run will replace with only the changes."""
    if previous.is_file() and Path(output).resolve() == previous.resolve():
        raise ConfigError(
            f"--skip-existing {previous} is also the output: the new file would hold only the "
            "changed scenes and replace it; write to another file (a folder may be both)"
        )

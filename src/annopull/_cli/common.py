"""What every subcommand shares: its context, common options, summaries and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import shlex
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from annopull._config import PROGRESS_MODES
from annopull._errors import (
    AnnopullError,
    AuthError,
    ConfigError,
    NotFoundError,
    ResumeError,
)
from annopull._redact import redact

# Building the parser (and so --help, or a usage error) needs none of these: the client,
# the pipeline, the sinks and the displays are imported by the functions that use them.
if TYPE_CHECKING:
    from annopull._client import Client
    from annopull._config import Config
    from annopull._pipeline.pull import PullReport
    from annopull._progress import JsonProgress, Progress, TerminalProgress
    from annopull._sinks import Sink

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Command",
    "Context",
    "FormsParser",
    "add_engine_options",
    "add_output_options",
    "add_shard_option",
    "exit_code_for",
    "fail",
    "hint_resume",
    "make_progress",
    "print_summary",
    "time_arg",
    "write_summary",
]

EXIT_OK = 0
#: Some items failed, an export errored, or the job could not finish; what arrived is kept.
EXIT_FAILED = 1
#: Usage, configuration or credentials: nothing was attempted that a retry would fix.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a subcommand runs with: settings and the environment credentials come from."""

    config: Config
    env: Mapping[str, str]
    quiet: bool

    def client(self) -> Client:
        """A client over this context's settings (open it with ``async with``)."""
        from annopull._client import Client

        return Client(config=self.config, env=self.env)


#: A subcommand's entry: parsed arguments and context in, exit code out.
Command = Callable[[argparse.Namespace, Context], Awaitable[int]]


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Options every pulling subcommand takes (they override the config file)."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--concurrency",
        type=_concurrency,
        metavar="N",
        help=(
            f"exactly N downloads in flight at most, 1 to {MAX_CONCURRENCY} (default: start "
            "at the config's concurrency, 32, and grow while the rate rises, up to its "
            "max_concurrency, 256)"
        ),
    )
    group.add_argument(
        "--summary",
        type=Path,
        metavar="FILE.json",
        help="write a JSON summary of the run (counts, each failed item with its reason)",
    )
    group.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        help="progress on stderr: auto (a bar on a terminal, a line every 10 s elsewhere), "
        "bar, json (one JSON object a line every second, for log pipelines) or none "
        "(default from config: auto)",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display; errors still print"
    )


def engine_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The ``[engine]`` settings given as flags."""
    # A number asked for on the command line is a fixed one: the limit may still halve on
    # overload, but grows back no further than that.
    concurrency = getattr(args, "concurrency", None)
    return {
        "engine": {
            "concurrency": concurrency,
            "max_concurrency": concurrency,
            "progress": getattr(args, "progress", None),
        }
    }


#: More would only queue in the kernel and the server; memory grows with it.
MAX_CONCURRENCY = 1024


def positive_int(most: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to ``most``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
        if value > most:
            raise argparse.ArgumentTypeError(f"at most {most}, got {value}")
        return value

    return parse


_concurrency = positive_int(MAX_CONCURRENCY)


if TYPE_CHECKING:
    #: A progress display the CLI shows around a job (a context manager that can watch the
    #: transport's flow control).
    Display = TerminalProgress | JsonProgress


def make_progress(
    ctx: Context, label: str, *, shard: tuple[int, int] | None = None
) -> Display | None:
    """The display ``--progress`` (or ``[engine] progress``) asks for; ``None`` when quiet.

    Args:
        ctx: the command's context.
        label: what the job is.
        shard: ``(k, n)`` when the job is one shard, for the JSON lines.
    """
    mode = "none" if ctx.quiet else ctx.config.engine.progress
    if mode == "none":
        return None
    from annopull._progress import JsonProgress, TerminalProgress

    if mode == "json":
        return JsonProgress(label, shard=shard)
    return TerminalProgress(label, live=True if mode == "bar" else None)


def progress_or_null(progress: Display | None) -> Progress:
    from annopull._progress import NullProgress

    return progress if progress is not None else NullProgress()


def exit_code_for(exc: AnnopullError) -> int:
    """Usage-type errors (settings, credentials, unknown project, bad resume, a full disk:
    nothing a plain retry fixes) are exit 2."""
    if isinstance(exc, ConfigError | AuthError | NotFoundError | ResumeError):
        return EXIT_USAGE
    if disk_full(exc):
        return EXIT_USAGE
    return EXIT_FAILED


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the disk or quota running out."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__
    return False


def fail(message: str) -> None:
    """Print one error line to stderr, as every failure of the CLI does (secrets masked)."""
    print(f"annopull: error: {redact(message)}", file=sys.stderr, flush=True)


def write_summary(path: Path | None, summary: Mapping[str, Any]) -> None:
    """Write ``summary`` as JSON, atomically, when the user asked for it.

    Every string in it (keys too) passes through :func:`~annopull._redact.redact` first: a
    failure's reason may quote an error body. Strings are masked before encoding, so a
    secret is found however JSON would escape it.
    """
    if path is None:
        return
    import orjson

    from annopull._redact import redact_data

    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(orjson.dumps(redact_data(summary), option=orjson.OPT_INDENT_2) + b"\n")
    temp.replace(path)


def print_summary(report: PullReport, *, noun: str) -> None:
    """Print the run's one-line summary to stderr.

    Args:
        report: what the pull did.
        noun: what the items are called ("annotations", "files").
    """
    from annopull._progress import describe_transfer, format_bytes

    rate = report.downloaded / report.elapsed if report.elapsed > 0 else 0.0
    line = (
        f"annopull: {report.output}: {report.downloaded} {noun} "
        f"({format_bytes(report.bytes)}) in {report.elapsed:.1f} s ({rate:.0f}/s); "
        f"{report.skipped} skipped, {len(report.failures)} failed"
    )
    if report.left_out:
        line += f", {report.left_out} left out by the transform"
    transfer = describe_transfer(report.transfer)
    if transfer:
        line += f"; {transfer}"
    if report.failures:
        line += f" (first: {report.failures[0].item}: {report.failures[0].reason})"
    print(redact(line), file=sys.stderr, flush=True)


def hint_resume(sink: Sink, argv: list[str]) -> None:
    """Tell an interrupted run how to continue (or why it cannot)."""
    journal = sink.state_path
    if journal is None:
        hint = "a zip streamed to stdout cannot be resumed"
    elif not journal.exists():
        hint = "nothing was written yet; run the same command again"
    else:
        command = shlex.join(argv[1:])
        resume = "" if "--resume" in argv else " --resume"
        hint = (
            f"what arrived is kept in {sink.description}; continue with: annopull {command}{resume}"
        )
    print(f"annopull: {hint}", file=sys.stderr, flush=True)


def output_sink(output: str, ctx: Context) -> Sink:
    """The sink ``-o`` names; a zip is never written to a terminal."""
    if output == "-" and sys.stdout.isatty():
        raise ConfigError("refusing to write a zip to a terminal: redirect stdout, or use -o FILE")
    from annopull._sinks import sink_for

    return sink_for(
        output, compress_level=ctx.config.engine.compress_level, storage=ctx.config.storage
    )


if TYPE_CHECKING:
    #: What a pulling command runs inside :func:`run_pull`: the pull itself.
    Pull = Callable[[Client, Progress], Awaitable[PullReport]]


async def run_pull(
    ctx: Context,
    sink: Sink,
    pull: Pull,
    *,
    label: str,
    noun: str,
    summary: Path | None,
    shard: tuple[int, int] | None = None,
) -> int:
    """Run ``pull`` with a client and a progress display; print and write its summary.

    A stop signal prints how to continue; exit 0 when every item arrived, 1 when some failed.
    """
    progress = make_progress(ctx, label, shard=shard)
    report: PullReport | None = None
    try:
        async with ctx.client() as client:
            if progress is not None:
                progress.watch(client.transport.stats)
            # The pull's first step makes the source, which checks its credentials before
            # any display starts.
            with progress if progress is not None else contextlib.nullcontext():
                report = await pull(client, progress_or_null(progress))
    except anyio.get_cancelled_exc_class():
        if report is None:
            hint_resume(sink, sys.argv)
            raise
        # The signal came while the client closed: the output is already published and
        # complete, so the run reports as finished. Nothing below awaits.
    assert report is not None
    write_summary(summary, report.to_dict())
    print_summary(report, noun=noun)
    return EXIT_OK if report.ok else EXIT_FAILED


def add_output_options(
    parser: argparse.ArgumentParser, *, resume_note: str = ""
) -> argparse._ArgumentGroup:
    """The ``output`` group of a pulling command: ``-o`` and ``--resume``; returned for more."""
    where = parser.add_argument_group("output")
    where.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="out.zip, -, folder/ or out.jsonl"
    )
    where.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose journal is beside OUT (a fresh run if none)"
        + resume_note,
    )
    return where


def add_shard_option(group: argparse._ArgumentGroup, *, hashed: str, of: str) -> None:
    """``--shard K/N``: ``hashed`` names what is hashed, ``of`` what is split."""
    group.add_argument(
        "--shard",
        type=shard_arg,
        metavar="K/N",
        help=f"only shard K of N (1-based; stable hash of {hashed}), to split one {of} "
        "across N processes or machines",
    )


def time_arg(text: str) -> Any:
    """``--since TIME`` for argparse: an ISO 8601 time, its error as a usage error."""
    from annopull._pipeline.pull import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class FormsParser(argparse.ArgumentParser):
    """A parser whose first argument may name another form of the command.

    ``annopull kognic`` is the bulk pull, and ``annopull kognic get ...`` /
    ``annopull kognic scenes ...`` are whole other commands with their own options: a
    sub-command would make the bulk pull's required options required for them too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Other forms by their first argument.
        self.forms: dict[str, argparse.ArgumentParser] = {}

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args and args[0] in self.forms:
            return self.forms[args[0]].parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)


def shard_arg(text: str) -> tuple[int, int]:
    """``--shard K/N`` for argparse: the library's parse, its error as a usage error."""
    from annopull._pipeline.pull import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

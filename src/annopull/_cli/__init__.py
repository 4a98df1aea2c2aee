"""The ``annopull`` command: global options, subcommand dispatch, signals and exit codes."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from annopull._cli import annolab, fake, kognic, manifest, urls
from annopull._cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Context,
    FormsParser,
    disk_full,
    engine_overrides,
    exit_code_for,
    fail,
)
from annopull._config import load_config
from annopull._errors import AnnopullError, RetryBudgetExhaustedError
from annopull._redact import RedactingFormatter, redact

__all__ = ["build_parser", "main"]

EPILOG = """\
exit codes: 0 all arrived, 1 some items failed (kept, listed in --summary),
            2 usage/config/credentials error, 130 interrupted (resume with --resume)

examples:
  annopull --fake kognic --project demo --batch demo --annotation-type demo -o out.zip
  annopull --config my.toml kognic --project P --annotation-type T -o out.zip
  annopull kognic get --scene UUID --annotation-type T -o scene.json
  annopull kognic scenes --scene-list scenes.txt --annotation-type T -o out.zip
  annopull annolab instruments --owner G --project P -o export.zip
  annopull urls urls.txt -o files.zip
  annopull kognic --project P --annotation-type T -o backfill/ --shards 16 --ray auto
  annopull manifest backfill/
  annopull fake serve            # the bundled fake platforms, for your own scripts
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help in the docs)."""
    parser = argparse.ArgumentParser(
        prog="annopull",
        description="Pull annotation exports in bulk from Kognic and AnnoLab: fast, "
        "streaming, resumable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML settings file (see config.example.toml); env ANNOPULL_<SECTION>_<KEY> "
        "and flags override it",
    )
    parser.add_argument(
        "--fake",
        action="store_true",
        help="start the bundled fake platforms in-process and pull from them "
        "(no account needed; try it with --project demo --batch demo --annotation-type demo)",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print annopull's version and exit"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log each retry and token refresh to stderr (URLs without their signatures)",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=FormsParser
    )
    kognic.register(sub)
    annolab.register(sub)
    urls.register(sub)
    manifest.register(sub)
    fake.register(sub)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: like argparse's ``version`` action, but the version is read from package
    metadata only when asked for (importlib.metadata is not free, and every run builds the
    parser)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from annopull._version import __version__

        print(f"annopull {__version__}", flush=True)
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    # The fake server parses its own options; everything else must be known here.
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "fake":
        args.fake_args = [*unknown, *args.fake_args]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # Every log line is masked as a whole (message, arguments, traceback): a logged exception
    # text or URL may carry a signature or a token. Without -v only warnings show, as with
    # Python's last-resort handler, which would print them unmasked.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("annopull: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    if getattr(args, "sync_command", None) is not None:
        code: int = args.sync_command(args)
        return code
    try:
        code = anyio.run(_run, args, backend_options={"use_uvloop": _use_uvloop()})
    except KeyboardInterrupt:
        fail("interrupted")
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        # What arrived is kept and the hint printed: a repeated Ctrl-C while the interpreter
        # shuts down must not turn exit 130 into death by signal.
        _ignore_stop_signals()
    return code


def _quiet_gc() -> None:
    """Keep the cyclic collector off the hot path of a long pull.

    Every item allocates request, response and entry objects, so the collector's young
    generation fills thousands of times a run, and each older pass walks every object the
    imports made (aiohttp, rich, ...). Those are frozen out of its sight, and the young
    generation is collected less often; cycles are still collected, so memory stays flat.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])


#: Allocations between young-generation collections (Python's default is 700).
_GC_YOUNG = 20_000


def _use_uvloop() -> bool:
    """uvloop when installed (``annopull[speed]``), unless ``ANNOPULL_LOOP=asyncio``."""
    if os.environ.get("ANNOPULL_LOOP", "").strip().lower() == "asyncio":
        return False
    return importlib.util.find_spec("uvloop") is not None


async def _run(args: argparse.Namespace) -> int:
    async with AsyncExitStack() as stack:
        try:
            ctx = await _context(args, stack)
        except AnnopullError as exc:
            fail(str(exc))
            return exit_code_for(exc)
        return await _with_signals(args, ctx)
    raise AssertionError("unreachable")  # pragma: no cover


async def _context(args: argparse.Namespace, stack: AsyncExitStack) -> Context:
    env = dict(os.environ)
    overrides: dict[str, dict[str, Any]] = engine_overrides(args)
    if args.fake:
        from annopull.testing import FakePlatforms  # the fakes are only loaded when asked for

        fakes = await stack.enter_async_context(FakePlatforms())
        overrides.update(_fake_overrides(fakes, env))
    config = load_config(args.config, env=env, overrides=overrides)
    return Context(config=config, env=env, quiet=bool(getattr(args, "quiet", False)))


def _fake_overrides(fakes: Any, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Point the settings and credentials at in-process fakes."""
    described = fakes.describe()
    env.pop("KOGNIC_CREDENTIALS", None)
    env["KOGNIC_CLIENT_ID"] = described["kognic"]["client_id"]
    env["KOGNIC_CLIENT_SECRET"] = described["kognic"]["client_secret"]
    env["ANNOLAB_API_KEY"] = described["annolab"]["api_key"]
    return {
        "kognic": {
            "api_url": described["kognic"]["api_url"],
            "auth_url": described["kognic"]["auth_url"],
            "annotation_integration_url": described["kognic"]["annotation_integration_url"],
        },
        "annolab": {"api_url": described["annolab"]["api_url"], "poll_interval": 0.2},
    }


async def _with_signals(args: argparse.Namespace, ctx: Context) -> int:
    """Run the command; SIGINT/SIGTERM cancel it so its cleanup keeps what arrived.

    The receiver stays open until the command's cleanup is over: a second Ctrl-C must not
    raise KeyboardInterrupt into the cleanup, which would lose the resume hint and exit 130.
    """
    from annopull._pipeline.scheduler import sole_error

    code = EXIT_INTERRUPTED
    finished = False
    command_scope = anyio.CancelScope()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, sole_error():
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                stopping = False
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if stopping:
                        if not finished:  # after the resume hint, it stays the last line
                            fail(f"{name}: already stopping, keeping what arrived")
                        continue
                    stopping = True
                    fail(f"{name}: stopping, keeping what arrived")
                    command_scope.cancel()

            async def command() -> None:
                nonlocal code, finished
                with command_scope:
                    try:
                        code = await args.run(args, ctx)
                    except AnnopullError as exc:
                        fail(_with_flag_hint(exc))
                        code = exit_code_for(exc)
                    except OSError as exc:
                        # Disk full, permission denied, a folder gone: the user's to fix.
                        fail(_describe_os_error(exc))
                        code = EXIT_USAGE if disk_full(exc) else EXIT_FAILED
                    finally:
                        finished = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            tg.start_soon(command)
    if code == EXIT_INTERRUPTED:
        # Leaving the receiver put the default handlers back: a repeated Ctrl-C from now on
        # would raise KeyboardInterrupt into the loop's shutdown and print "interrupted"
        # (or a traceback) after the resume hint. What arrived is kept; nothing is left to
        # stop.
        _ignore_stop_signals()
    return code


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _with_flag_hint(exc: AnnopullError) -> str:
    """The library's message, plus the flag that answers it (the library names no flags)."""
    from annopull._pipeline.pull import InterruptedRunError

    if isinstance(exc, InterruptedRunError):
        return f"{exc} (add --resume to continue it)"
    if disk_full(exc):
        return f"{exc}; free space, then run the same command again with --resume"
    if isinstance(exc, RetryBudgetExhaustedError):
        return f"{exc}; what arrived is kept: run the same command again with --resume later"
    return str(exc)


def _describe_os_error(exc: OSError) -> str:
    """The OS error in a line, masked (an object store's text may quote a signed URL)."""
    where = f": {exc.filename}" if exc.filename else ""
    return redact(f"{exc.strerror or exc}{where}")


def entry() -> None:  # pragma: no cover - console script shim
    # Here, not in main(): the process is the CLI's alone (tests call main() in theirs).
    _quiet_gc()
    sys.exit(main())

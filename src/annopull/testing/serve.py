"""``annopull fake serve``: run both fake platforms until SIGINT or SIGTERM.

Prints exactly one JSON line to stdout (see :meth:`FakePlatforms.describe`) once
the servers listen, so a script or test can read where they are; nothing else goes
to stdout. Also runnable as ``python -m annopull.testing.serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from annopull.testing.annolab import AnnoLabProject, FakeAnnoLab
from annopull.testing.faults import check_loopback
from annopull.testing.kognic import FakeKognic, KognicProject
from annopull.testing.platforms import FakePlatforms

__all__ = ["fake_serve"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="annopull fake serve",
        description=(
            "Serve a fake Kognic and a fake AnnoLab on loopback ports until SIGINT or "
            "SIGTERM. Prints one JSON line with their URLs and credentials to stdout."
        ),
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        type=_loopback,
        help="loopback address to listen on (default: %(default)s; others are refused)",
    )
    kognic = parser.add_argument_group("Kognic")
    kognic.add_argument("--count", type=int, default=5000, help="scenes (default: %(default)s)")
    kognic.add_argument(
        "--content-size",
        type=int,
        default=4096,
        help="approximate bytes per OpenLABEL document (default: %(default)s)",
    )
    kognic.add_argument(
        "--page-size", type=int, default=100, help="items per search page (default: %(default)s)"
    )
    kognic.add_argument(
        "--seed", type=int, default=0, help="seed of both fakes' data (default: %(default)s)"
    )
    kognic.add_argument(
        "--token-ttl",
        type=float,
        default=3600.0,
        help="access token lifetime, seconds (default: %(default)s)",
    )
    kognic.add_argument(
        "--url-ttl",
        type=float,
        default=3600.0,
        help="signed storage URL lifetime, seconds (default: %(default)s)",
    )
    kognic.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds each storage answer waits, like a real store's round trip "
        "(default: %(default)s)",
    )
    annolab = parser.add_argument_group("AnnoLab")
    annolab.add_argument(
        "--annolab-instruments",
        type=int,
        default=200,
        help="instruments in the project (default: %(default)s)",
    )
    annolab.add_argument(
        "--annolab-export-size",
        type=int,
        default=None,
        help="pad instrument exports with files to about this many bytes",
    )
    annolab.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where export zips are built and kept (default: a temporary directory)",
    )
    return parser


def _loopback(host: str) -> str:
    try:
        return check_loopback(host)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _platforms(args: argparse.Namespace) -> FakePlatforms:
    kognic = FakeKognic(
        projects=[
            KognicProject(
                count=args.count,
                content_size=args.content_size,
                page_size=args.page_size,
                seed=args.seed,
            )
        ],
        token_ttl=args.token_ttl,
        url_ttl=args.url_ttl,
        latency=args.latency,
        host=args.host,
    )
    annolab = FakeAnnoLab(
        projects=[AnnoLabProject(instruments=args.annolab_instruments, seed=args.seed)],
        workdir=args.workdir,
        export_size=args.annolab_export_size,
        host=args.host,
    )
    return FakePlatforms(kognic=kognic, annolab=annolab)


async def _serve(platforms: FakePlatforms) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with platforms:
        sys.stdout.write(json.dumps(platforms.describe()) + "\n")
        sys.stdout.flush()
        print("fake platforms are serving; stop with SIGINT or SIGTERM", file=sys.stderr)
        await stop.wait()


def fake_serve(argv: Sequence[str]) -> int:
    """Run ``annopull fake serve`` with ``argv`` (the arguments after ``serve``).

    Returns the exit status: 0 after a SIGINT/SIGTERM stop, 2 for bad arguments.
    """
    try:
        args = _parser().parse_args(list(argv))
        platforms = _platforms(args)
    except SystemExit as exc:
        # --help and usage errors: argparse already printed; hand back its status.
        return exc.code if isinstance(exc.code, int) else 2
    except ValueError as exc:
        print(f"annopull fake serve: error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(platforms))
    return 0


if __name__ == "__main__":
    raise SystemExit(fake_serve(sys.argv[1:]))

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
from annopull.testing.chaos import MALFORMED_KINDS, TARGETS, Chaos
from annopull.testing.faults import check_loopback
from annopull.testing.kognic import FakeKognic, KognicProject
from annopull.testing.platforms import FakePlatforms

__all__ = ["fake_serve"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="annopull fake serve",
        description=(
            "Serve a fake Kognic and a fake AnnoLab on loopback ports until SIGINT or "
            "SIGTERM. Prints one JSON line with their URLs and credentials to stdout. "
            "The chaos options make a seeded fraction of requests misbehave."
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
    annolab.add_argument(
        "--annolab-url-ttl",
        type=float,
        default=3600.0,
        help="signed download URL lifetime, seconds (default: %(default)s)",
    )
    _chaos_arguments(parser)
    return parser


def _chaos_arguments(parser: argparse.ArgumentParser) -> None:
    chaos = parser.add_argument_group(
        "chaos",
        "Misbehaviour of a fraction of all requests, the same for the same --chaos-seed: "
        "the n-th request for one scene, page, token client or export is treated alike in "
        "every run (only the rate limit and --auth-down-for follow the clock). Rates are "
        "fractions in [0, 1]; everything is off by default. Expiring signed URLs: "
        "--url-ttl, --annolab-url-ttl.",
    )
    chaos.add_argument(
        "--chaos-seed",
        type=int,
        default=None,
        help="seed of every chaos decision (default: --seed)",
    )
    chaos.add_argument(
        "--chaos-targets",
        type=_targets,
        default=None,
        metavar="LIST",
        help="comma-separated endpoints the per-request knobs apply to, of "
        f"{','.join(sorted(TARGETS))} (default: all)",
    )
    chaos.add_argument(
        "--latency-mean",
        type=float,
        default=0.0,
        metavar="S",
        help="mean seconds every answer waits (on top of --latency)",
    )
    chaos.add_argument(
        "--latency-spread",
        type=float,
        default=0.0,
        metavar="S",
        help="uniform: waits are mean ± S; lognormal: S is the sigma of the log",
    )
    chaos.add_argument(
        "--latency-shape",
        choices=("uniform", "lognormal"),
        default="uniform",
        help="distribution of the waits (default: %(default)s)",
    )
    chaos.add_argument(
        "--error-rate", type=float, default=0.0, metavar="F", help="fraction answered 500/502/503"
    )
    chaos.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        metavar="R",
        help="requests/s each server accepts (token bucket); beyond it 429 with Retry-After",
    )
    chaos.add_argument(
        "--rate-burst",
        type=int,
        default=None,
        metavar="N",
        help="token bucket size (default: the rate, at least 1)",
    )
    chaos.add_argument(
        "--cut-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of bodies cut at a random offset (the connection drops)",
    )
    chaos.add_argument(
        "--stall-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of bodies that pause mid-body for --stall seconds",
    )
    chaos.add_argument(
        "--stall",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds a stalled body pauses (default: %(default)s)",
    )
    chaos.add_argument(
        "--wrong-length-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of bodies sent with a wrong Content-Length (half shorter, half longer)",
    )
    chaos.add_argument(
        "--malformed-rate",
        type=float,
        default=0.0,
        metavar="F",
        help=f"fraction of Kognic listing pages malformed ({', '.join(MALFORMED_KINDS)})",
    )
    chaos.add_argument(
        "--auth-down-for",
        type=float,
        default=0.0,
        metavar="S",
        help="the Kognic auth server answers 503 for S seconds after start",
    )
    chaos.add_argument(
        "--auth-down-requests",
        type=int,
        default=0,
        metavar="N",
        help="...and to its first N token requests",
    )
    chaos.add_argument(
        "--export-error-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of AnnoLab export jobs that end errored",
    )
    chaos.add_argument(
        "--export-stuck-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of AnnoLab export jobs that never finish",
    )


def _targets(text: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    if unknown := names - TARGETS:
        raise argparse.ArgumentTypeError(
            f"unknown targets {', '.join(sorted(unknown))} (known: {', '.join(sorted(TARGETS))})"
        )
    return names


def _chaos(args: argparse.Namespace) -> Chaos | None:
    """The chaos the flags ask for, or None when every knob is off."""
    chaos = Chaos(
        seed=args.seed if args.chaos_seed is None else args.chaos_seed,
        latency=args.latency_mean,
        latency_spread=args.latency_spread,
        latency_shape=args.latency_shape,
        error_rate=args.error_rate,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        cut_rate=args.cut_rate,
        stall_rate=args.stall_rate,
        stall=args.stall,
        wrong_length_rate=args.wrong_length_rate,
        malformed_rate=args.malformed_rate,
        auth_down_for=args.auth_down_for,
        auth_down_requests=args.auth_down_requests,
        export_error_rate=args.export_error_rate,
        export_stuck_rate=args.export_stuck_rate,
        targets=args.chaos_targets,
    )
    quiet = Chaos(
        seed=chaos.seed, stall=chaos.stall, latency_shape=chaos.latency_shape, targets=chaos.targets
    )
    return None if chaos == quiet else chaos


def _loopback(host: str) -> str:
    try:
        return check_loopback(host)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _platforms(args: argparse.Namespace) -> FakePlatforms:
    chaos = _chaos(args)
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
        chaos=chaos,
    )
    annolab = FakeAnnoLab(
        projects=[AnnoLabProject(instruments=args.annolab_instruments, seed=args.seed)],
        workdir=args.workdir,
        export_size=args.annolab_export_size,
        host=args.host,
        url_ttl=args.annolab_url_ttl,
        chaos=chaos,
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

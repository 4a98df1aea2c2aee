"""``annopull fake serve``: the bundled fake platforms, standalone, for users' own scripts."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``fake`` command group."""
    parser = sub.add_parser(
        "fake",
        help="run the bundled fake Kognic and AnnoLab platforms",
        description="Fake platforms that speak the real wire protocol on 127.0.0.1.",
    )
    actions = parser.add_subparsers(dest="fake_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve until SIGINT/SIGTERM; prints one JSON line with URLs and credentials",
        add_help=False,
    )
    serve.add_argument("fake_args", nargs=argparse.REMAINDER)
    serve.set_defaults(sync_command=_serve)


def _serve(args: argparse.Namespace) -> int:
    from annopull.testing.serve import fake_serve

    return fake_serve(args.fake_args)

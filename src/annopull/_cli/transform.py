"""``--transform``, ``--validate``, ``--workers``: converting and checking while pulling."""

from __future__ import annotations

import argparse
from typing import Any

from annopull._cli.common import positive_int
from annopull._errors import ConfigError
from annopull._pipeline.workers import MAX_WORKERS, load_function

__all__ = ["EPILOG", "add_transform_options", "transform_options"]

EPILOG = """\
convert and validate (in worker processes, while the downloads go on):
  annopull kognic --project P --annotation-type T -o converted.zip \\
      --transform mypkg.convert:from_openlabel --workers 4
  annopull kognic --project P --annotation-type T -o checked.zip --validate
  the function gets an annopull.ParsedAnnotation (scene_uuid, annotation_type, created,
  content as a dict) and returns bytes, str, a dict or list (JSON), a pydantic model,
  annopull.Renamed(content, "new-name.ext"), or None to leave the scene out; MODULE is
  imported from the current folder or PYTHONPATH
"""


def add_transform_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that convert and validate each item while the pull goes on."""
    group = parser.add_argument_group("convert and validate while pulling")
    group.add_argument(
        "--transform",
        metavar="MODULE:FUNCTION",
        help="convert every annotation with this function (imported from the current folder "
        "or PYTHONPATH); what it raises is that scene's failure, None leaves it out",
    )
    group.add_argument(
        "--validate",
        action="store_true",
        help="check every document against kognic-openlabel's OpenLabelAnnotation (before "
        "--transform); invalid ones are failures, left out (pip install 'annopull[openlabel]')",
    )
    group.add_argument(
        "--workers",
        type=positive_int(MAX_WORKERS),
        metavar="N",
        help=f"processes for --transform and --validate, 1 to {MAX_WORKERS} (default: the "
        "CPU count)",
    )
    group.add_argument(
        "--workers-mode",
        choices=("process", "thread"),
        help="run them in processes (default: for CPU-heavy Python) or threads (for a cheap "
        "function, or one that releases the GIL)",
    )


def transform_options(args: argparse.Namespace) -> dict[str, Any]:
    """The download's keywords, with ``--transform``'s function imported now.

    Called before any request, so that a function that cannot be imported, or a missing
    kognic-openlabel, is exit 2 with nothing downloaded.

    Raises:
        ConfigError: a bad ``--transform``, ``--validate`` without kognic-openlabel, or
            ``--workers``/``--workers-mode`` without either of them.
    """
    if args.transform is None and not args.validate:
        if args.workers is not None or args.workers_mode is not None:
            raise ConfigError("--workers and --workers-mode need --transform or --validate")
        return {}
    if args.validate:
        # Here, not at the top: the Kognic source's transform stage imports the pipeline.
        from annopull._sources.kognic_transform import require_openlabel

        require_openlabel()
    return {
        "transform": None if args.transform is None else load_function(args.transform),
        "validate": args.validate,
        "workers": args.workers,
        "workers_mode": args.workers_mode or "process",
    }

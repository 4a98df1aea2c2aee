"""The live bar of :class:`~annopull._progress.TerminalProgress`, drawn with rich.

A module of its own so that rich (about 60 ms of imports) is loaded only when a bar is
drawn: a quiet, JSON-progress or piped run never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)
from rich.text import Text

__all__ = ["live_bar"]


class _TransferColumn(ProgressColumn):
    """Flow control, read at each redraw: a pause counts down while no bytes arrive."""

    def __init__(self, text: Callable[[], str]) -> None:
        super().__init__()
        self._text = text

    def render(self, task: Task) -> Text:
        return Text(self._text())


def live_bar(*, stream: IO[str], transfer_text: Callable[[], str]) -> RichProgress:
    """A rich progress bar on ``stream`` (not started yet).

    Args:
        stream: where to draw.
        transfer_text: the flow-control text, read at each redraw.
    """
    return RichProgress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[counts]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[extra]}"),
        _TransferColumn(transfer_text),
        console=Console(file=stream),
        transient=False,
        refresh_per_second=5,
    )

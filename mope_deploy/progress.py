"""One progress-bar style for every long loop (rich: bar, done/total, elapsed, ETA, an optional info field)."""

from __future__ import annotations

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_bar(enabled: bool = True, info: bool = False, console=None) -> Progress:
    """A rich Progress; with ``info`` tasks carry an ``info`` field shown after the ETA (e.g. the loss)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, console=console, disable=not enabled)

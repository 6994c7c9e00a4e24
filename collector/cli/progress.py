"""A progress bar on stderr for long commands, so stdout stays a clean summary.

rich draws it only on a terminal; piped or in CI nothing is drawn, and the summary the
command prints at the end is the record of what happened.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: (done, total) -> None; total 0 means "unknown so far"
Report = Callable[[int, int], None]


def enabled(requested: bool = True) -> bool:
    """Draw only when asked and stderr is a terminal."""
    return requested and sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, *, show: bool = True) -> Iterator[Report]:
    """Yield a ``report(done, total)`` callback that moves a bar (or does nothing)."""
    if not enabled(show):
        yield lambda _done, _total: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield report

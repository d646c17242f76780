"""A rich progress bar on stderr that switches itself off when stderr is not a terminal (or when asked to)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True,
                 unit: str | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; draw a bar of ``total`` steps on stderr only when ``enabled`` and stderr is a TTY.

    With ``unit`` (e.g. ``"videos"``) the bar also shows the rate, ``12.3 videos/s``.
    """
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if unit:
        columns.append(_rate_column(unit))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def _rate_column(unit: str) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:.1f} {unit}/s")

    return RateColumn()

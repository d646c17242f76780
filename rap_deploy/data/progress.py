"""Progress on stderr: a rich bar on a terminal, plain rate-limited lines otherwise (nohup, sbatch, a pipe).

The plain lines come at most once every :data:`LINE_INTERVAL_S` seconds, so a short run (and a test) prints none;
a run that printed one also ends with a line of its total time. Nothing is written to stdout.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

LINE_INTERVAL_S = 60.0  # seconds between two plain progress lines
_clock = time.monotonic  # patched by tests
_run_label: contextvars.ContextVar[str] = contextvars.ContextVar("progress_run_label", default="")


@contextlib.contextmanager
def progress_label(label: str) -> Iterator[None]:
    """Within the block, every progress bar and line names ``label`` first (``engine: encoding videos: 3/9 ...``), so
    a command that runs the same steps twice (verify: the PyTorch reference, then the engine) says whose they are."""
    token = _run_label.set(label)
    try:
        yield
    finally:
        _run_label.reset(token)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True,
                 unit: str | None = None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``; show the progress of ``total`` steps on stderr only when ``enabled``.

    On a terminal it is a rich bar; elsewhere a plain line every :data:`LINE_INTERVAL_S` seconds, e.g.
    ``decoding videos: 1200/9000 (13 %), 2.1 videos/s, ETA 1 h 02 min``. With ``unit`` (e.g. ``"videos"``)
    the rate names it.
    """
    from rich.console import Console

    if _run_label.get():
        description = f"{_run_label.get()}: {description}"
    console = Console(stderr=True)
    if not enabled:
        yield lambda n=1: None
        return
    if not console.is_terminal:
        lines = PlainProgress(total, description, unit)
        yield lines.advance
        lines.finish()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if unit:
        columns.append(_rate_column(unit))
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


class PlainProgress:
    """Plain progress lines on stderr, at most one every ``interval`` seconds (for a log, not a terminal)."""

    def __init__(self, total: int, description: str, unit: str | None = None,
                 interval: float = LINE_INTERVAL_S) -> None:
        self.total, self.description, self.unit, self.interval = total, description, unit or "steps", interval
        self.done, self.printed = 0, False
        self.start = self.last = _clock()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more steps done; write a line when ``interval`` seconds passed since the last one."""
        self.done += n
        now = _clock()
        if now - self.last >= self.interval:
            self.last = now
            self._write(now, final=False)

    def finish(self) -> None:
        """After a run that wrote a line, write its last one (steps done, total time)."""
        if self.printed:
            self._write(_clock(), final=True)

    def line(self, now: float, final: bool = False) -> str:
        """The progress line at clock time ``now``."""
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        pct = f" ({100 * self.done // self.total} %)" if self.total > 0 else ""
        speed = f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"
        if final:
            tail = f"done in {format_duration(elapsed)}"
        elif rate > 0:
            tail = f"ETA {format_duration(max(self.total - self.done, 0) / rate)}"
        else:
            tail = "ETA unknown"
        return f"{self.description}: {self.done}/{self.total}{pct}, {speed} {self.unit}/s, {tail}"

    def _write(self, now: float, final: bool) -> None:
        try:
            print(self.line(now, final), file=sys.stderr, flush=True)
            self.printed = True
        except (OSError, ValueError):  # stderr closed or gone: progress is not worth failing the run
            self.interval = float("inf")


def format_duration(seconds: float) -> str:
    """``3723`` -> ``"1 h 02 min"``, ``125`` -> ``"2 min 05 s"``, ``42`` -> ``"42 s"``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _rate_column(unit: str) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:.1f} {unit}/s")

    return RateColumn()

"""Console output of the training loop: the per-epoch line and rich progress bars (rank 0, when enabled)."""

from __future__ import annotations

import time
from typing import Any


def epoch_line(rec: dict[str, Any], epochs: int) -> str:
    """The console lines of a ``metrics.jsonl`` record: epoch, loss, learning rate and seconds, then, when the epoch
    was evaluated, one line per direction (t2v, v2t) with the same recalls (R@1, R@5, R@10, MnR), each under 80
    columns so a terminal or a log never wraps them."""
    head = f"epoch {rec['epoch']}/{epochs}"
    if rec.get("loss") is not None:
        head += f"  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  {rec['seconds']:.1f}s"
    return "\n".join([head, *(_recall_line(d, rec[d]) for d in ("t2v", "v2t") if d in rec)])


def _recall_line(direction: str, recall: dict[str, float]) -> str:
    """``  t2v  R@1  40.0  R@5  70.0  R@10  80.5  MnR   3.6``: fixed widths, so the two directions' columns align."""
    return (f"  {direction}  R@1 {recall['R1']:5.1f}  R@5 {recall['R5']:5.1f}  R@10 {recall['R10']:5.1f}  "
            f"MnR {recall['MnR']:6.1f}")


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``1 epoch``, ``5 steps``, ``1,024 captions``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def say(enabled: bool, message: str) -> None:
    """Print ``message`` (rich markup) on stderr when ``enabled``."""
    if enabled:
        from rich.console import Console

        Console(stderr=True).print(message)


class Bars:
    """Rich progress bars (epochs and steps, with loss and throughput), only on a terminal and when enabled."""

    def __init__(self, enabled: bool, epochs: int, done: int, steps: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.epochs, self.done, self.steps = epochs, done, steps
        self.progress = None

    def __enter__(self) -> Bars:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
            self.progress.__enter__()
            self.epoch_task = self.progress.add_task("epochs", total=self.epochs, completed=self.done, info="")
            self.step_task = self.progress.add_task("steps", total=self.steps, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        self.t0 = time.perf_counter()
        self.n = 0
        if self.progress is not None:
            self.progress.reset(self.step_task, total=self.steps, description=f"epoch {epoch}", info="")

    def advance(self, loss: float, pairs: int) -> None:
        self.n += pairs
        if self.progress is not None:
            rate = self.n / max(1e-9, time.perf_counter() - self.t0)
            self.progress.update(self.step_task, advance=1, info=f"loss {loss:.4f}  {rate:.1f} pairs/s")

    def end_epoch(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.epoch_task)

    def log(self, line: str) -> None:
        if self.enabled:
            self.console.print(line)

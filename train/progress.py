"""Console output of the training loop: the per-epoch line and rich progress bars (rank 0, when enabled)."""

from __future__ import annotations

import time
from typing import Any


def epoch_line(rec: dict[str, Any], epochs: int) -> str:
    """One line for a ``metrics.jsonl`` record: epoch, loss, learning rate, seconds and the main recalls."""
    parts = [f"epoch {rec['epoch']}/{epochs}"]
    if rec.get("loss") is not None:
        parts.append(f"loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  {rec['seconds']:.1f}s")
    if "t2v" in rec:
        t, v = rec["t2v"], rec["v2t"]
        parts.append(f"t2v R@1 {t['R1']:.1f} R@5 {t['R5']:.1f} R@10 {t['R10']:.1f} MnR {t['MnR']:.1f} | "
                     f"v2t R@1 {v['R1']:.1f} R@5 {v['R5']:.1f} MnR {v['MnR']:.1f}")
    return "  ".join(parts)


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

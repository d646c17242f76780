"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (a pure function of the step).

Being a function of the global step (not a stateful scheduler object), the schedule resumes exactly from the step
count stored in ``last.pt``.
"""

from __future__ import annotations

import math


def warmup_steps_for(warmup: float, total_steps: int) -> int:
    """Warm-up length in steps: ``warmup < 1`` is a fraction of ``total_steps``, ``warmup >= 1`` a step count.

    Raises ``ValueError`` for a negative value.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
    return min(steps, total_steps)


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_steps`` steps, then a half cosine from
    ``base_lr`` towards ``min_ratio * base_lr``, which it would reach at step ``total_steps``: the last step
    (``total_steps - 1``) is one decay step short of the floor (after 10 decay steps it is at
    ``floor + 0.024 * (base_lr - floor)``).
    """
    if total_steps <= 0:
        return base_lr
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = base_lr * min_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

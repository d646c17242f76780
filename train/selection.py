"""Which evaluated epoch becomes ``best.pt``: one documented rule, a pure function of the per-epoch records.

Rule: the epoch with the highest ``t2v RSum + v2t RSum`` (R@1 + R@5 + R@10 of text→video plus the same of
video→text, full ASA similarity, in percent; 600 = perfect); on a tie the later epoch wins.

Why not "strictly better t2v R@1": on a small test set R@1 moves in steps of one query, a run whose R@1 never rises
above its first evaluation keeps its epoch-1 weights however much R@5, R@10 and the other direction improve, and a
run whose metrics never change at all would be frozen at epoch 1. The sum over six recalls moves with every
rank that crosses 1, 5 or 10 in either direction, and ties going to the later epoch mean a plateau keeps training's
latest weights.
"""

from __future__ import annotations

import math
from typing import Any

SELECTION_RULE = "max t2v RSum + v2t RSum (R@1+R@5+R@10, full ASA similarity); ties -> later epoch"


def selection_score(record: dict[str, Any]) -> float | None:
    """The selection score of one ``metrics.jsonl`` record (``None`` when the epoch was not evaluated)."""
    if "t2v" not in record or "v2t" not in record:
        return None
    return float(sum(record[d][k] for d in ("t2v", "v2t") for k in ("R1", "R5", "R10")))


def improves(score: float | None, best_score: float) -> bool:
    """True when an epoch with ``score`` replaces the best so far (equal scores: the later epoch wins)."""
    return score is not None and score >= best_score


def best_of(history: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"epoch", "score", "rule"}`` of the epoch the rule picks from ``history`` (in epoch order); epoch ``None``
    and score ``-inf`` when nothing was evaluated."""
    best: dict[str, Any] = {"epoch": None, "score": -math.inf, "rule": SELECTION_RULE}
    for record in history:
        score = selection_score(record)
        if improves(score, best["score"]):
            best = {"epoch": record["epoch"], "score": score, "rule": SELECTION_RULE}
    return best

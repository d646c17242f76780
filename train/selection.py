"""Which evaluated epoch becomes ``best.pt``: one documented rule, a pure function of the per-epoch records.

Rule: the epoch with the highest ``t2v RSum + v2t RSum`` (R@1 + R@5 + R@10 of text→video plus the same of
video→text, full ASA similarity, in percent; 600 = perfect); on a tie the later epoch wins.

Why not "strictly better t2v R@1": on a small test set R@1 moves in steps of one query, a run whose R@1 never rises
above its first evaluation keeps its epoch-1 weights however much R@5, R@10 and the other direction improve, and a
run whose metrics never change at all would be frozen at epoch 1. The sum over six recalls moves with every
rank that crosses 1, 5 or 10 in either direction, and ties going to the later epoch mean a plateau keeps training's
latest weights.

Epoch 0, the starting model evaluated before any step (``--eval-initial``, or ``--epochs 0``), is a candidate like any
trained epoch: a run whose trained epochs all score below it keeps the starting weights in ``best.pt`` (a run that made
retrieval worse does not ship its worse weights), and ``last.pt`` holds the trained ones. That outcome is said, not
silent: ``summary.json``'s ``best_is_initial`` and ``best_trained``, and :func:`initial_kept_note`'s line.

The sum is taken exactly (each recall as the fraction of its queries it counts, when the record says how many
queries there were), then rounded once: summed as floats, two epochs whose recalls add up to the same value could
differ in the last bit (on 1,000 queries 36.4 + 43.7 + 88.2 + 42.0 + 56.1 + 80.7 = 347.1, but 36.3 + … + 42.1 + …
= 347.09999999999997), so a tie went to the earlier epoch.
"""

from __future__ import annotations

import math
import shlex
from fractions import Fraction
from pathlib import Path
from typing import Any

SELECTION_RULE = "max t2v RSum + v2t RSum (R@1+R@5+R@10, full ASA similarity); ties -> later epoch"


def selection_score(record: dict[str, Any]) -> float | None:
    """The selection score of one ``metrics.jsonl`` record (``None`` when the epoch was not evaluated)."""
    if "t2v" not in record or "v2t" not in record:
        return None
    return float(sum(_exact_recall(record[d], k) for d in ("t2v", "v2t") for k in ("R1", "R5", "R10")))


def _exact_recall(metrics: dict[str, Any], key: str) -> Fraction:
    """The recall ``metrics[key]`` (percent) as an exact fraction: ``100 · hits / queries`` when ``metrics`` holds
    its ``queries`` (as :func:`rap_deploy.metrics.metrics_from_ranks` writes them), else the decimal it is written
    as (``44.8`` is 224/5, not the binary float nearest to it)."""
    value, queries = metrics[key], metrics.get("queries")
    if isinstance(queries, int) and not isinstance(queries, bool) and queries > 0:
        hits = round(value * queries / 100)
        if abs(hits - value * queries / 100) < 1e-6:
            return Fraction(100 * hits, queries)
    return Fraction(repr(float(value)))


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


def best_trained(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``{"epoch", "selection_score"}`` of the epoch the rule picks among the trained ones (epoch > 0) of ``history``;
    ``None`` when no trained epoch was evaluated."""
    best = best_of([r for r in history if r.get("epoch", 0) > 0])
    if best["epoch"] is None:
        return None
    return {"epoch": best["epoch"], "selection_score": round(best["score"], 6)}


def initial_kept_note(summary: dict[str, Any]) -> str | None:
    """The one ``note:`` line of a run whose ``best.pt`` is the starting model (``summary.json``'s
    ``best_is_initial``) although trained epochs were evaluated (``best_trained``): their best score against the
    starting model's, which file holds which weights, and what to do; ``None`` for any other run."""
    trained = summary.get("best_trained")
    if not summary.get("best_is_initial") or not trained:
        return None
    initial = (summary.get("best") or {}).get("selection_score")
    last = (summary.get("last") or {}).get("epoch", summary.get("epochs_done"))
    return (f"note: no trained epoch scored as high as the starting model (selection score {_score(initial)}, "
            f"epoch 0); the best trained epoch, {trained['epoch']}, scored {_score(trained['selection_score'])}: "
            f"best.pt holds the starting model's weights, last.pt the trained ones (epoch {last}); train for more "
            "epochs or steps, evaluate on a larger test split (--max-test-videos, --test-split), or use the trained "
            f"weights: `rapdeploy export {shlex.quote(str(Path(summary.get('run_dir') or '.') / 'last.pt'))}`")


def _score(value: Any) -> str:
    """A selection score as printed (one decimal), or ``?`` when the record lacks it."""
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"

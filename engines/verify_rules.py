"""The parity rule of ``rapdeploy verify`` and the comparisons it rests on (numpy only, no engine, no I/O).

Ranks follow DESIGN.md §6 (1 + candidates strictly above the ground truth). A rank change counts against an fp32
engine only when candidates within ``tie_eps`` of the ground truth's score cannot explain it (nor, in the two-stage
search, videos within ``tie_eps`` of the top-M boundary of stage 1: :func:`two_stage_bounds`); fp16 / int8 engines are
held to |ΔR@K| within a tolerance, unless the change is one that flips of near-tied candidates explain (a sign test
on the queries that crossed K: :func:`within_flip_noise`). :func:`compare_evaluations` turns two
:func:`rap_deploy.retrieval.evaluate` results into deltas, rank changes, recall curves and similarity errors;
:func:`judge` applies the rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rap_deploy.errors import CheckFailedError

DEFAULT_TOLERANCE = 0.5
DEFAULT_TIE_EPS = 1e-5
# Two-sided sign test at about 5 %: a net recall change of |gained - lost| queries is flip noise while it is at most
# FLIP_NOISE_Z * sqrt(gained + lost) (the standard deviation of the net count when each crossing is a coin toss).
FLIP_NOISE_Z = 2.0
GATED_MODES = ("asa", "two_stage")  # the searches the pass/fail rule looks at (meanP stage 1 is reported only)
GATED_METRICS = ("R1", "R5", "R10")
MODES = ("asa", "two_stage", "meanp")
DELTA_KEYS = ("R1", "R5", "R10", "MdR", "MnR", "RSum", "ties")
STRICT_PRECISIONS = ("fp32", "float32")
MAX_EXAMPLES = 10
Bounds = tuple[np.ndarray, np.ndarray]  # the lowest and highest score each pair could take (two_stage_bounds)


def rank_intervals(scores: np.ndarray, targets: np.ndarray, eps: float,
                   bounds: Bounds | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(rank, lo, hi)`` per query (row of ``scores [Q,C]``, ground truth ``targets[q]``).

    ``rank`` = 1 + candidates strictly above the ground truth (DESIGN.md §6); ``[lo, hi]`` the ranks it could take if
    candidates within ``eps`` of the ground-truth score were ordered either way. ``bounds`` (``(low, high)``, shaped
    like ``scores``): the lowest and highest score each pair could take (:func:`two_stage_bounds`); the interval then
    also spans every order those allow.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    gt = scores[rows, targets][:, None]
    low, high = (scores, scores) if bounds is None else (np.asarray(b, dtype=np.float64) for b in bounds)
    rank = 1 + (scores > gt).sum(axis=1)
    lo = 1 + (low > high[rows, targets][:, None] + eps).sum(axis=1)
    hi = (high >= low[rows, targets][:, None] - eps).sum(axis=1)
    return rank.astype(np.int64), lo.astype(np.int64), hi.astype(np.int64)


def rank_changes(reference: np.ndarray, engine: np.ndarray, targets: np.ndarray, eps: float = DEFAULT_TIE_EPS,
                 labels: list[str] | None = None, bounds: tuple[Bounds | None, Bounds | None] = (None, None)
                 ) -> dict[str, Any]:
    """Compare the ground-truth ranks of two score matrices of the same queries.

    Returns ``{"changed", "beyond_ties", "within_ties", "examples"}``: queries whose rank differs at all, those whose
    change is not explained by a tie (the two ranks' ``eps`` intervals, see :func:`rank_intervals`, do not overlap),
    those that are, and up to :data:`MAX_EXAMPLES` changed queries (largest change first) with both ranks.
    ``bounds``: the reference's and the engine's score bounds for :func:`rank_intervals` (``None``: the scores).
    """
    r_ref, lo_ref, hi_ref = rank_intervals(reference, targets, eps, bounds[0])
    r_eng, lo_eng, hi_eng = rank_intervals(engine, targets, eps, bounds[1])
    changed = r_ref != r_eng
    explained = np.maximum(lo_ref, lo_eng) <= np.minimum(hi_ref, hi_eng)
    beyond = changed & ~explained
    order = np.argsort(-(np.abs(r_ref - r_eng) + beyond * (1 << 30)), kind="stable")
    examples = []
    for q in order[:MAX_EXAMPLES]:
        if not changed[q]:
            break
        ex = {"query": int(q), "reference_rank": int(r_ref[q]), "engine_rank": int(r_eng[q]),
              "within_ties": bool(explained[q])}
        if labels is not None:
            ex["id"] = labels[q]
        examples.append(ex)
    hits = {f"R{k}": {"lost": int(((r_ref <= k) & (r_eng > k)).sum()),
                      "gained": int(((r_ref > k) & (r_eng <= k)).sum())} for k in (1, 5, 10)}
    return {"changed": int(changed.sum()), "beyond_ties": int(beyond.sum()),
            "within_ties": int((changed & explained).sum()), "examples": examples, "hits": hits}


def within_flip_noise(lost: int, gained: int, z: float = FLIP_NOISE_Z) -> bool:
    """True when a net change of ``gained - lost`` queries at some R@K is what symmetric flips explain.

    A quantised engine reorders near-tied candidates; each query whose ground truth crosses rank K is then a loss or
    a gain with even odds when the engine is not worse, so the net change has standard deviation sqrt(gained +
    lost). McNemar's test for two rankers on the same queries, as a sign test: the change is noise while
    ``|gained - lost| <= z * sqrt(gained + lost)`` (z = 2: about 5 % two-sided; 3 lost and 0 gained is noise, p =
    0.25 exactly; 5 lost and 0 gained is not).
    """
    return abs(gained - lost) <= z * float(np.sqrt(gained + lost)) + 1e-9


def direction_scores(sim: np.ndarray, caption_video: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"t2v": (scores, targets), "v2t": (scores, targets)}`` as the metrics rank them (v2t: best caption per
    candidate video, CLIP4Clip convention for multi-caption data)."""
    from rap_deploy.metrics import video_to_text_scores

    v2t, _ = video_to_text_scores(sim, caption_video)
    return {"t2v": (np.asarray(sim), np.asarray(caption_video, dtype=np.int64)),
            "v2t": (v2t, np.arange(v2t.shape[0]))}


def two_stage_bounds(two_stage: np.ndarray, stage1: np.ndarray, asa: np.ndarray, eps: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``: the lowest and highest two-stage score each pair could take if stage-1 scores within ``eps``
    of the query's top-M boundary were ordered either way.

    A pair whose stage-1 score is within ``eps`` of the boundary (a candidate no more than ``eps`` above the best
    video left out, or a video left out no more than ``eps`` below the lowest candidate) could have been re-ranked
    (offset + its ASA score, from the full ASA matrix ``asa``) or left at stage 1 (``stage1``, the meanP matrix);
    every other pair keeps its score. So a candidate-set change that stage-1 near-ties explain is a tie too, as a
    near-tie in any other score is: an fp32 engine whose stage-1 cosine differs by 1e-7 at the M-th place re-ranks
    another video, which moves the ground truth by one place and failed the rule."""
    from rap_deploy.retrieval import RERANK_OFFSET

    two_stage = np.asarray(two_stage, dtype=np.float64)
    stage1 = np.asarray(stage1, dtype=np.float64)
    lifted = reranked(two_stage)
    lowest_candidate = np.where(lifted, stage1, np.inf).min(axis=1, keepdims=True)
    best_left_out = np.where(lifted, -np.inf, stage1).max(axis=1, keepdims=True)
    ambiguous = np.where(lifted, stage1 <= best_left_out + eps, stage1 >= lowest_candidate - eps)
    low = np.where(ambiguous, np.minimum(two_stage, stage1), two_stage)
    high = np.where(ambiguous, np.maximum(two_stage, RERANK_OFFSET + np.asarray(asa, dtype=np.float64)), two_stage)
    return low, high


def direction_bounds(low: np.ndarray, high: np.ndarray, caption_video: np.ndarray
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`direction_scores` of score bounds: ``{"t2v": (low, high), "v2t": (low, high)}`` (a best caption's
    score is a maximum, so the bounds carry over)."""
    low_dirs, high_dirs = direction_scores(low, caption_video), direction_scores(high, caption_video)
    return {d: (low_dirs[d][0], high_dirs[d][0]) for d in ("t2v", "v2t")}


def recall_curve(scores: np.ndarray, targets: np.ndarray, ks: list[int]) -> list[float]:
    """R@K in percent for every K of ``ks``."""
    rank, _, _ = rank_intervals(scores, targets, 0.0)
    return [float(100.0 * np.mean(rank <= k)) for k in ks]


def is_strict(precision: str) -> bool:
    """True for engines held to the zero-rank-change rule (fp32)."""
    return str(precision).lower() in STRICT_PRECISIONS


def applied_tolerance(precision: str, tolerance: float | None) -> float | None:
    """The |ΔR@K| limit in points that :func:`judge` applies: ``tolerance`` when given, else
    :data:`DEFAULT_TOLERANCE` for fp16/int8 engines and ``None`` for fp32 ones, held to rank equality beyond ties
    only (verify.json's ``tolerance``; its ``rule`` says which)."""
    if tolerance is not None:
        return float(tolerance)
    return None if is_strict(precision) else DEFAULT_TOLERANCE


def judge(precision: str, deltas: dict[str, dict[str, dict[str, float]]],
          changes: dict[str, dict[str, dict[str, Any]]], tolerance: float | None = None,
          tie_eps: float = DEFAULT_TIE_EPS) -> tuple[bool, list[dict[str, Any]], str]:
    """Apply the parity rule; returns ``(passed, checks, rule)``.

    ``deltas[mode][direction][metric]`` are engine − reference figures and ``changes[mode][direction]`` the output
    of :func:`rank_changes`, for the modes of :data:`GATED_MODES`. fp32 engines: zero rank changes beyond ties (and,
    when ``tolerance`` is given explicitly, |ΔR@K| within it too). Other precisions: |ΔR@K| ≤ ``tolerance`` (default
    :data:`DEFAULT_TOLERANCE`). Each check is ``{mode, direction, metric, value, limit, passed}``.
    """
    strict = is_strict(precision)
    tol = applied_tolerance(precision, tolerance)
    use_tolerance = tol is not None
    checks: list[dict[str, Any]] = []
    for mode in GATED_MODES:
        for direction in ("t2v", "v2t"):
            if use_tolerance:
                hits = changes[mode][direction].get("hits", {})
                for metric in GATED_METRICS:
                    value = float(deltas[mode][direction][metric])
                    check = {"mode": mode, "direction": direction, "metric": metric, "value": value, "limit": tol,
                             "passed": abs(value) <= tol + 1e-9}
                    if not strict and metric in hits:
                        lost, gained = hits[metric]["lost"], hits[metric]["gained"]
                        noise = within_flip_noise(lost, gained)
                        check.update(lost=lost, gained=gained, flip_noise=noise, passed=check["passed"] or noise)
                    checks.append(check)
            if strict:
                value = int(changes[mode][direction]["beyond_ties"])
                checks.append({"mode": mode, "direction": direction, "metric": "rank_changes", "value": value,
                               "limit": 0, "passed": value == 0})
    parts = []
    if strict:
        parts.append(f"{precision} engine: no ground-truth rank may change beyond ties (score gap <= {tie_eps:g}; "
                     "in the two-stage search, stage-1 gaps at the top-M boundary too)")
    if use_tolerance:
        parts.append(f"|ΔR@K| <= {tol:g} points for K = 1, 5, 10"
                     + ("" if strict else f", or a change the queries crossing K explain as flips of near-tied "
                        f"candidates (|gained - lost| <= {FLIP_NOISE_Z:g}·sqrt(gained + lost))"))
    rule = " and ".join(parts) + "; t2v and v2t, full ASA and two-stage"
    return all(c["passed"] for c in checks), checks, rule


def failure_lines(checks: list[dict[str, Any]]) -> list[str]:
    """One readable line per failed check."""
    from rap_deploy.engines.reports import MODE_TITLES

    out = []
    for c in checks:
        if c["passed"]:
            continue
        what = (f"{c['value']} ranks changed beyond ties" if c["metric"] == "rank_changes"
                else f"Δ{c['metric']} = {c['value']:+.2f} points")
        if "lost" in c:
            what += f", {c['lost']} lost / {c['gained']} gained: more than flip noise"
        out.append(f"{MODE_TITLES[c['mode']]} {c['direction']}: {what} (limit {c['limit']:g})")
    return out


# ---------------------------------------------------------------------------------------------------- numeric error
def tie_notes(sections: dict[str, Any], min_share: float = 0.01) -> list[str]:
    """One line per gated search and direction where the engine ties the ground truth with another candidate on
    clearly more queries than the reference (at least 2 and ``min_share`` of them more).

    A tie ranks in the ground truth's favour (DESIGN.md §6), so an engine whose scores are coarser than the
    reference's (scores rounded to fp16 on the way out, say) reads recall high: on an H200 the PyTorch fp16 engine
    gained 3 points of R@5 this way, with 186 of 200 queries more tied. ``sections`` is
    :func:`compare_evaluations`'s ``sections`` (each mode's ``reference`` / ``engine`` metrics per direction)."""
    from rap_deploy.engines.reports import MODE_TITLES

    out = []
    for mode in GATED_MODES:
        for d in ("t2v", "v2t"):
            ref, eng = sections[mode]["reference"][d], sections[mode]["engine"][d]
            extra = int(eng["ties"]) - int(ref["ties"])
            if extra >= max(2, min_share * ref["queries"]):
                out.append(f"{MODE_TITLES[mode]} {d}: the engine ties the ground truth with another candidate on "
                           f"{eng['ties']} of {ref['queries']} queries, the reference on {ref['ties']}. Its scores "
                           "are coarser (e.g. rounded to fp16 on the way out), and a tie ranks in the ground truth's "
                           "favour, so its recall reads high: compute the score's last reduction in fp32")
    return out


def vector_error(reference: np.ndarray, engine: np.ndarray, chunk: int = 64) -> dict[str, float]:
    """Largest absolute difference and smallest cosine between matching vectors (last axis) of two arrays.

    Rows that are zero in the reference (padded frames) are left out of the cosine. Works in chunks along axis 0 so
    fp16 patch-token indexes are converted to float32 a block at a time.
    """
    if reference.shape != engine.shape:
        raise CheckFailedError(f"engine output shape {list(engine.shape)} differs from the reference's "
                               f"{list(reference.shape)}")
    max_abs, min_cos, mean_abs, count = 0.0, 1.0, 0.0, 0
    for i in range(0, max(1, reference.shape[0]), chunk):
        a = np.asarray(reference[i:i + chunk], dtype=np.float32)
        b = np.asarray(engine[i:i + chunk], dtype=np.float32)
        if a.size == 0:
            continue
        if not (np.isfinite(a).all() and np.isfinite(b).all()):  # NaN would vanish in max() and min()
            return {"max_abs": float("inf"), "mean_abs": float("inf"), "min_cosine": float("-inf")}
        diff = np.abs(a - b)
        max_abs = max(max_abs, float(diff.max()))
        mean_abs += float(diff.sum(dtype=np.float64))
        count += diff.size
        a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        na, nb = np.linalg.norm(a2, axis=1), np.linalg.norm(b2, axis=1)
        valid = na > 1e-6
        if valid.any():
            cos = (a2[valid] * b2[valid]).sum(1) / np.maximum(na[valid] * nb[valid], 1e-12)
            min_cos = min(min_cos, float(cos.min()))
    return {"max_abs": max_abs, "mean_abs": mean_abs / max(count, 1), "min_cosine": min_cos}


def worst_graph(errors: dict[str, dict[str, Any]]) -> str:
    """The graph with the largest max-abs error on identical inputs."""
    return max(errors, key=lambda g: errors[g]["max_abs"])


def compare_evaluations(ref_eval: dict[str, Any], eng_eval: dict[str, Any], split: Any,
                        tie_eps: float) -> dict[str, Any]:
    """Per mode (full ASA, two-stage, meanP): metrics of both, deltas, rank changes, R@K curves and similarity
    error; and how many queries' two-stage candidate sets differ."""
    targets = split.caption_video
    # v2t queries are the videos that have a caption, in video order (video_to_text_scores): a video without one
    # (an MSVD entry with an empty caption list) is no query, and the labels must skip it as the rows do
    labels = {"t2v": list(split.captions),
              "v2t": [split.videos[int(i)].video_id for i in np.unique(np.asarray(targets, dtype=np.int64))]}
    ks = list(range(1, min(50, split.num_videos) + 1))
    out: dict[str, Any] = {"sections": {}, "changes": {}, "curves": {"ks": ks}, "sim_error": {}}
    for mode in MODES:
        ref_m, eng_m = ref_eval[mode], eng_eval[mode]
        delta = {d: {k: eng_m[d][k] - ref_m[d][k] for k in DELTA_KEYS} for d in ("t2v", "v2t")}
        out["sections"][mode] = {"reference": ref_m, "engine": eng_m, "delta": delta}
        s_ref, s_eng = ref_eval["scores"]["sims"][mode], eng_eval["scores"]["sims"][mode]
        by_dir = {"reference": direction_scores(s_ref, targets), "engine": direction_scores(s_eng, targets)}
        out["changes"][mode] = {d: rank_changes(by_dir["reference"][d][0], by_dir["engine"][d][0],
                                                by_dir["reference"][d][1], tie_eps, labels[d])
                                for d in ("t2v", "v2t")}
        if mode == "two_stage" and any(c["beyond_ties"] for c in out["changes"][mode].values()):
            # only then, as the bounds take four more score matrices: is a candidate-set change a stage-1 tie?
            limits = {who: direction_bounds(*two_stage_bounds(e["scores"]["sims"]["two_stage"],
                                                              e["scores"]["sims"]["meanp"],
                                                              e["scores"]["sims"]["asa"], tie_eps), targets)
                      for who, e in (("reference", ref_eval), ("engine", eng_eval))}
            out["changes"][mode] = {d: rank_changes(by_dir["reference"][d][0], by_dir["engine"][d][0],
                                                    by_dir["reference"][d][1], tie_eps, labels[d],
                                                    (limits["reference"][d], limits["engine"][d]))
                                    for d in ("t2v", "v2t")}
        out["curves"][mode] = {who: {d: recall_curve(*by_dir[who][d], ks) for d in ("t2v", "v2t")}
                               for who in ("reference", "engine")}
        out["sim_error"][mode] = similarity_error(s_ref, s_eng, mode)
    cand_ref, cand_eng = (reranked(e["scores"]["sims"]["two_stage"]) for e in (ref_eval, eng_eval))
    out["candidate_set_changes"] = int(np.any(cand_ref != cand_eng, axis=1).sum())
    return out


def reranked(two_stage: np.ndarray) -> np.ndarray:
    """Which pairs of a two-stage score matrix the ASA head re-ranked: those carry offset + ASA cosine (>= offset -
    1), the rest their stage-1 cosine (<= 1); the midpoint separates them."""
    from rap_deploy.retrieval import RERANK_OFFSET

    return np.asarray(two_stage) >= RERANK_OFFSET / 2


def similarity_error(s_ref: np.ndarray, s_eng: np.ndarray, mode: str) -> dict[str, Any]:
    """Largest and mean absolute difference of two score matrices. Two-stage scores are compared only on the pairs
    both re-ranked or both left at stage 1 (``pairs`` of them): a pair in one's candidate set only differs by the
    re-rank offset, not by the engine's error (``candidate_set_changes`` counts those queries)."""
    diff = np.abs(np.asarray(s_ref) - np.asarray(s_eng))
    if mode != "two_stage":
        return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
    same = diff[reranked(s_ref) == reranked(s_eng)]
    return {"max_abs": float(same.max()) if same.size else 0.0, "mean_abs": float(same.mean()) if same.size else 0.0,
            "pairs": int(same.size)}

"""Retrieval metrics (DESIGN.md §6): R@1/5/10, median and mean rank, RSum, and ties, for text→video and video→text.

The rank of a query is 1 + the number of candidates scoring strictly higher than its ground truth, so ties never
help or hurt silently: the number of queries whose ground truth ties with another candidate is reported as ``ties``.
Multi-caption data (MSVD): every caption is a text→video query; video→text scores each video against each candidate
video's best caption (the CLIP4Clip convention). MdR is numpy's median of the 1-based ranks of all queries (every
caption, pooled over galleries): for an even number of queries the mean of the two middle ranks, so it can end in .5;
MnR is their mean. CLIP4Clip's single-caption and video→text medians are numpy's too, but its multi-caption
text→video one is ``torch.median``, the lower of the two middle ranks: on MSVD an even query count whose two middle
ranks differ gives a MdR 0.5 or more above CLIP4Clip's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR", "RSum", "ties")



class NonFiniteScoresError(ValueError):
    """Similarities that hold NaN or infinite values: the model or engine computed something no ranking can use."""


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (bf16/fp16 included) without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype.itemsize < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def ground_truth_ranks(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ranks, tied)`` for queries (rows of ``scores [Q, C]``) whose ground truth is column ``targets[q]``.

    ``ranks`` int64 ``[Q]`` = 1 + number of candidates strictly higher; ``tied`` bool ``[Q]`` = another candidate
    has exactly the ground truth's score.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    gt = scores[np.arange(len(targets)), targets][:, None]
    ranks = 1 + (scores > gt).sum(axis=1)
    tied = (scores == gt).sum(axis=1) > 1
    return ranks.astype(np.int64), tied


def metrics_from_ranks(ranks: np.ndarray, tied: np.ndarray | None = None) -> dict[str, float | int]:
    """Return ``{R1, R5, R10 (percent), MdR, MnR, RSum, ties}`` (plus ``queries``) from 1-based ranks; ``MdR`` is
    ``np.median`` (an even count averages the two middle ranks), ``MnR`` the mean."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to compute metrics over")
    # 100·count/n is the correctly rounded percentage (29 of 200 gives 14.5); 100·mean gave 14.499999999999998.
    r = {f"R{k}": 100.0 * int(np.count_nonzero(ranks <= k)) / ranks.size for k in (1, 5, 10)}
    return {
        **r,
        "MdR": float(np.median(ranks)),
        "MnR": float(np.mean(ranks)),
        "RSum": r["R1"] + r["R5"] + r["R10"],
        "ties": int(np.sum(tied)) if tied is not None else 0,
        "queries": int(ranks.size),
    }


def video_to_text_scores(sim: Any, text_to_video: Any, num_videos: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores [V', V'], videos)``: ``scores[i, j]`` = best score of candidate video ``videos[j]``'s captions
    for query video ``videos[i]``, over the ``videos`` that have at least one caption.

    With one caption per video in video order this is ``sim.T``.
    """
    sim = _as_numpy(sim)
    t2v = np.asarray(_as_numpy(text_to_video), dtype=np.int64)
    num_videos = sim.shape[1] if num_videos is None else num_videos
    order = np.argsort(t2v, kind="stable")
    sorted_owner = t2v[order]
    videos, starts = np.unique(sorted_owner, return_index=True)
    # best[u, v] = max over captions c of video u of sim[c, v]  (rows: caption's video, columns: query video)
    best = np.maximum.reduceat(sim[order], starts, axis=0)
    return best[:, videos].T, videos


def retrieval_metrics(sim: Any, text_to_video: Any) -> dict[str, dict[str, float | int]]:
    """Compute text→video and video→text metrics from a similarity matrix.

    ``sim`` ``[num_texts, num_videos]`` (numpy or torch), ``text_to_video`` the ground-truth video index of each text.
    Returns ``{"t2v": {...}, "v2t": {...}}`` with ``R1 R5 R10`` (percent), ``MdR``, ``MnR``, ``RSum``, ``ties`` and
    ``queries``. Video→text queries are the videos that have a caption; the candidates are those videos, each scored
    by its best caption. Raises ``ValueError`` for NaN/inf in ``sim``, a wrong shape, or an out-of-range index.
    """
    return {d: metrics_from_ranks(*ranks) for d, ranks in query_ranks(sim, text_to_video).items()}


def query_ranks(sim: Any, text_to_video: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"t2v": (ranks, tied), "v2t": (ranks, tied)}``: every query's rank and tie flag
    (:func:`ground_truth_ranks`), text→video and video→text as :func:`retrieval_metrics` defines them. Ranks pooled
    over several galleries give pooled metrics (:func:`metrics_from_ranks`). Raises what :func:`retrieval_metrics`
    raises.
    """
    sim, t2v = _checked_similarity(sim, text_to_video)
    v2t_scores, _ = video_to_text_scores(sim, t2v)
    return {"t2v": ground_truth_ranks(sim, t2v),
            "v2t": ground_truth_ranks(v2t_scores, np.arange(v2t_scores.shape[0]))}


def _checked_similarity(sim: Any, text_to_video: Any) -> tuple[np.ndarray, np.ndarray]:
    """``sim`` as a finite float array ``[texts, videos]`` and ``text_to_video`` as integer indices of its columns;
    ``ValueError`` naming what is wrong otherwise."""
    sim = _as_numpy(sim)
    t2v = np.asarray(_as_numpy(text_to_video))
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D [texts, videos], got shape {sim.shape}")
    if t2v.ndim != 1 or len(t2v) != sim.shape[0]:
        raise ValueError(f"text_to_video must have one entry per text ({sim.shape[0]}), got shape {t2v.shape}")
    if t2v.dtype.kind not in "iuf":  # a bool mask or strings (video ids) are not indices
        raise ValueError(f"text_to_video must hold integer video indices, got {t2v.dtype} values")
    if not np.issubdtype(t2v.dtype, np.integer):
        if not np.all(np.mod(t2v, 1) == 0):
            raise ValueError("text_to_video must hold integer video indices")
        t2v = t2v.astype(np.int64)
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"similarity matrix is empty: {sim.shape}")
    if t2v.min() < 0 or t2v.max() >= sim.shape[1]:
        raise ValueError(f"text_to_video has indices outside [0, {sim.shape[1]})")
    if not np.issubdtype(sim.dtype, np.floating):
        sim = sim.astype(np.float64)
    bad = ~np.isfinite(sim)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise NonFiniteScoresError(f"similarity has {int(bad.sum())} NaN/inf values (first at text {r}, video {c})")
    return sim, t2v

"""Retrieval metrics of a test split scored as consecutive galleries of G videos, every query pooled.

The full ASA similarity of N videos as one gallery scores N x N text-video pairs; as galleries of G it scores N x G.
So the number of queries, which sets how precisely R@1 is known, grows linearly with the cost while the difficulty
stays that of a G-candidate gallery (MSR-VTT's 1k-A test is one gallery of 1000). Each query is ranked among the
videos of its own gallery only; the metrics are computed over the pooled ranks of all galleries
(:func:`rap_deploy.metrics.query_ranks`), so R@1 is the share of all queries ranked first in their gallery.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rap_deploy.errors import UsageError


def gallery_bounds(videos: int, gallery: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: consecutive galleries of ``gallery`` videos over ``videos`` videos; the last one
    holds the remainder. Raises :class:`UsageError` for a gallery of fewer than 2 videos, asked for or left over (a
    one-video gallery ranks its queries first whatever the scores)."""
    if gallery < 2:
        raise UsageError(f"a gallery needs at least 2 videos, got {gallery}")
    if videos % gallery == 1:
        raise UsageError(f"{videos} videos in galleries of {gallery} leave a last gallery of 1 video, whose queries "
                         "would rank first whatever their scores; use a gallery size that leaves 0 or at least 2")
    return [(start, min(start + gallery, videos)) for start in range(0, videos, gallery)]


def evaluate_in_galleries(encoder: Any, split: Any, cache: Any, gallery: int, top_m: int = 100, batch_size: int = 8,
                          progress: bool = True) -> dict[str, Any]:
    """Like :func:`rap_deploy.retrieval.evaluate` (``asa``, ``two_stage`` and ``meanp`` metrics, ``videos``,
    ``captions``, ``skipped``, ``seconds``, ``top_m``), with every query ranked within its own gallery of
    ``gallery`` consecutive videos of ``split`` (the usable ones, in split order); adds ``gallery`` and
    ``galleries`` (each gallery's video count).

    Every video and caption is encoded once, the videos one gallery at a time: only one gallery's index is held
    (the whole split's index of the 2,400 held-out videos is 3.1 GB with the demo's model). Raises
    :class:`UsageError` for a gallery of fewer than 2 videos, what :func:`rap_deploy.retrieval.usable_videos` raises
    (:class:`~rap_deploy.errors.CheckFailedError` for a split without a caption of a decodable video).
    """
    from rap_deploy.metrics import metrics_from_ranks, query_ranks
    from rap_deploy.retrieval import check_score_memory, encode_texts, encode_videos, usable_videos

    gallery_bounds(split.num_videos, gallery)  # a bad gallery size fails before any decoding
    t0 = time.perf_counter()
    split, skipped = usable_videos(split, cache, encoder.config, progress)
    text_emb = encode_texts(encoder, split.captions)
    owner = np.asarray(split.caption_video, dtype=np.int64)
    bounds = gallery_bounds(split.num_videos, gallery)
    pooled: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for start, stop in bounds:
        rows = np.flatnonzero((owner >= start) & (owner < stop))
        if not len(rows):
            continue
        check_score_memory(len(rows), stop - start)
        index = encode_videos(encoder, split.subset(range(start, stop)), cache, batch_size, progress)
        sims = _gallery_similarities(encoder, text_emb[rows], index, top_m, progress)
        del index  # the next gallery's index replaces this one
        for name, sim in sims.items():
            for direction, ranks in query_ranks(sim, owner[rows] - start).items():
                pooled.setdefault(name, {}).setdefault(direction, []).append(ranks)
    result: dict[str, Any] = {
        name: {d: metrics_from_ranks(np.concatenate([r for r, _ in parts]), np.concatenate([t for _, t in parts]))
               for d, parts in by_direction.items()}
        for name, by_direction in pooled.items()}
    result.update(videos=split.num_videos, captions=split.num_captions, skipped=skipped,
                  seconds=round(time.perf_counter() - t0, 3), top_m=top_m, gallery=gallery,
                  galleries=[stop - start for start, stop in bounds])
    return result


def _gallery_similarities(encoder: Any, text_emb: np.ndarray, index: Any, top_m: int,
                          progress: bool) -> dict[str, np.ndarray]:
    """The three similarity matrices of :func:`rap_deploy.retrieval.evaluate` for one gallery's texts and videos."""
    from rap_deploy.retrieval import full_similarity, meanp_similarity, two_stage_similarity

    return {"asa": full_similarity(encoder, text_emb, index, progress=progress),
            "two_stage": two_stage_similarity(encoder, text_emb, index, top_m, progress),
            "meanp": meanp_similarity(text_emb, index)}

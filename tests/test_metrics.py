"""Retrieval metrics against hand-computed examples: ranks, ties, square case, multi-caption, NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rap_deploy.metrics import (
    ground_truth_ranks,
    metrics_from_ranks,
    query_ranks,
    retrieval_metrics,
    video_to_text_scores,
)


def test_recalls_are_the_correctly_rounded_percentage():
    # 29 of 200 queries at rank 1 is 14.5 exactly (100 * mean gave 14.499999999999998), 14 of 200 is 7.0.
    for hits, expected in ((29, 14.5), (14, 7.0), (1, 0.5)):
        m = metrics_from_ranks(np.array([1] * hits + [20] * (200 - hits)))
        assert m["R1"] == expected and m["R5"] == expected and m["R10"] == expected and m["RSum"] == 3 * expected


def test_hand_computed_square():
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.0],  # text 0 -> video 0: rank 1
            [0.8, 0.5, 0.6, 0.7],  # text 1 -> video 1: 3 higher -> rank 4
            [0.1, 0.2, 0.3, 0.0],  # text 2 -> video 2: rank 1
            [0.5, 0.6, 0.9, 0.4],  # text 3 -> video 3: 3 higher -> rank 4
        ]
    )
    m = retrieval_metrics(sim, [0, 1, 2, 3])
    t2v = m["t2v"]
    assert (t2v["R1"], t2v["R5"], t2v["R10"]) == (50.0, 100.0, 100.0)
    assert (t2v["MdR"], t2v["MnR"], t2v["RSum"], t2v["ties"]) == (2.5, 2.5, 250.0, 0)
    # v2t: column j ranked among row j of sim.T
    # video 0: [0.9, 0.8, 0.1, 0.5] -> rank 1; video 1: [0.1, 0.5, 0.2, 0.6] -> rank 2
    # video 2: [0.2, 0.6, 0.3, 0.9] -> rank 3; video 3: [0.0, 0.7, 0.0, 0.4] -> rank 2
    v2t = m["v2t"]
    assert (v2t["R1"], v2t["R5"], v2t["MdR"], v2t["MnR"]) == (25.0, 100.0, 2.0, 2.0)
    # square case: v2t is t2v of the transpose
    assert retrieval_metrics(sim.T, [0, 1, 2, 3])["t2v"] == v2t


def test_ties_count_and_rank_strictly_higher():
    sim = np.array([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7], [0.3, 0.9, 0.3]])
    ranks, tied = ground_truth_ranks(sim, np.array([0, 1, 2]))
    assert ranks.tolist() == [1, 1, 2]  # a tie does not push the ground truth down
    assert tied.tolist() == [True, True, True]
    m = retrieval_metrics(sim, [0, 1, 2])
    assert m["t2v"]["R1"] == pytest.approx(200 / 3) and m["t2v"]["ties"] == 3
    # v2t on sim.T: video 0 [0.5, 0.2, 0.3] r1; video 1 [0.5, 0.7, 0.9] r2; video 2 [0.1, 0.7, 0.3] r2
    assert m["v2t"]["ties"] == 0 and m["v2t"]["MnR"] == pytest.approx(5 / 3)


def test_multi_caption_v2t_uses_best_caption():
    # 5 captions for 3 videos: video 0 has captions 0,1; video 1 has 2; video 2 has 3,4.
    sim = np.array(
        [
            [0.9, 0.2, 0.1],
            [0.1, 0.8, 0.3],  # caption 1 of video 0: 0.8 and 0.3 are higher, rank 3
            [0.3, 0.4, 0.5],  # video 1's only caption prefers video 2: rank 2
            [0.2, 0.1, 0.7],
            [0.6, 0.0, 0.4],  # video 2's caption 4: rank 2
        ]
    )
    t2v = [0, 0, 1, 2, 2]
    m = retrieval_metrics(sim, t2v)
    assert m["t2v"]["queries"] == 5
    assert m["t2v"]["R1"] == 40.0 and m["t2v"]["MnR"] == pytest.approx(9 / 5)  # ranks 1, 3, 2, 1, 2
    scores, videos = video_to_text_scores(sim, t2v)
    # best[v_query, u_candidate] = max over u's captions of sim[c, v_query]
    expected = np.array(
        [
            [0.9, 0.3, 0.6],
            [0.8, 0.4, 0.1],
            [0.3, 0.5, 0.7],
        ]
    )
    np.testing.assert_allclose(scores, expected)
    assert videos.tolist() == [0, 1, 2]
    # v2t ranks: video 0 -> 1, video 1 -> 2 (0.8 > 0.4), video 2 -> 1
    assert m["v2t"]["queries"] == 3 and m["v2t"]["R1"] == pytest.approx(200 / 3) and m["v2t"]["MnR"] == 4 / 3


def test_multi_caption_median_rank_of_an_even_number_of_queries_averages_the_two_middle_ranks():
    """MSVD-style: 6 captions of 3 videos are 6 t2v queries; MdR is numpy's median of their 1-based ranks, the mean
    of the two middle ones (1.5 here), not the lower one (1, torch.median, which CLIP4Clip's multi-sentence t2v
    takes); MnR is their mean. Ranks pooled over galleries give the median of all queries, not of the medians."""
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # caption 0 of video 0: rank 1
            [0.3, 0.5, 0.4],  # caption 1 of video 0: 0.5 and 0.4 higher, rank 3
            [0.2, 0.8, 0.1],  # caption 2 of video 1: rank 1
            [0.6, 0.5, 0.4],  # caption 3 of video 1: 0.6 higher, rank 2
            [0.1, 0.3, 0.4],  # caption 4 of video 2: rank 1
            [0.5, 0.6, 0.45],  # caption 5 of video 2: rank 3
        ]
    )
    owner = [0, 0, 1, 1, 2, 2]
    m = retrieval_metrics(sim, owner)
    t2v = m["t2v"]  # ranks 1, 3, 1, 2, 1, 3: sorted 1 1 1 | 2 3 3
    assert t2v["queries"] == 6 and t2v["MdR"] == 1.5 and t2v["MnR"] == pytest.approx(11 / 6)
    assert (t2v["R1"], t2v["R5"], t2v["ties"]) == (50.0, 100.0, 0)
    # v2t: each candidate video scored by its best caption; columns 0, 1, 2 of [[.9 .5 .4] [.6 .8 .4] [.5 .6 .45]]
    # rank every query video first
    v2t = m["v2t"]
    assert (v2t["queries"], v2t["MdR"], v2t["MnR"], v2t["ties"]) == (3, 1.0, 1.0, 0)
    # two galleries pooled: ranks [1, 3, 1, 2, 1, 3] and [2, 2] have medians 1.5 and 2; all eight queries' median is 2
    other = np.array([[0.1, 0.7], [0.9, 0.2]])  # text 0 -> video 0 (0.7 higher), text 1 -> video 1 (0.9 higher)
    parts = [query_ranks(sim, owner)["t2v"], query_ranks(other, [0, 1])["t2v"]]
    pooled = metrics_from_ranks(np.concatenate([r for r, _ in parts]), np.concatenate([t for _, t in parts]))
    assert pooled["queries"] == 8 and pooled["MdR"] == 2.0 and pooled["MnR"] == pytest.approx(15 / 8)


def test_videos_without_captions_are_t2v_distractors_only():
    sim = np.array([[0.2, 0.9, 0.1], [0.8, 0.3, 0.1]])
    m = retrieval_metrics(sim, [1, 0])  # video 2 has no caption
    assert m["t2v"]["R1"] == 100.0
    assert m["v2t"]["queries"] == 2 and m["v2t"]["R1"] == 100.0


def test_oracle_is_perfect():
    n = 50
    m = retrieval_metrics(np.eye(n), np.arange(n))
    for d in ("t2v", "v2t"):
        assert m[d]["R1"] == 100.0 and m[d]["MdR"] == 1.0 and m[d]["MnR"] == 1.0 and m[d]["ties"] == 0


def test_nan_and_bad_input_raise():
    sim = np.eye(3)
    sim[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(sim, [0, 1, 2])
    sim[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        retrieval_metrics(sim, [0, 1, 2])
    with pytest.raises(ValueError, match="one entry per text"):
        retrieval_metrics(np.eye(3), [0, 1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(np.eye(3), [0, 1, 3])
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.ones(3), [0, 1, 2])


def test_ground_truth_that_is_not_an_index_is_refused():
    """Video ids or None as ground truth were numpy's remainder TypeError, and a bool list was read as indices 1 and 0
    (t2v R@1 0 of an identity matrix, silently)."""
    for bad in (["v0", "v1"], [True, False], [None, 1]):
        with pytest.raises(ValueError, match="integer video indices"):
            retrieval_metrics(np.eye(2), bad)
    assert retrieval_metrics(np.eye(2), [0.0, 1.0])["t2v"]["R1"] == 100.0


def test_torch_input_matches_numpy_and_multi_caption_at_scale():
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((1000, 1000)).astype(np.float32)
    sim[np.arange(1000), np.arange(1000)] += 2.0
    expected = retrieval_metrics(sim, np.arange(1000))
    assert retrieval_metrics(torch.from_numpy(sim), torch.arange(1000)) == expected
    assert retrieval_metrics(torch.from_numpy(sim).half(), torch.arange(1000))["t2v"]["queries"] == 1000
    # multi-caption at scale: 5 captions per video (the speed is bench's business, not a test's)
    m = retrieval_metrics(rng.standard_normal((5000, 1000)).astype(np.float32), np.repeat(np.arange(1000), 5))
    assert m["v2t"]["queries"] == 1000 and m["t2v"]["queries"] == 5000

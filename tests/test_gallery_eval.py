"""A test split scored as galleries: each query ranked among its own gallery's videos, every query pooled."""

import numpy as np
import pytest

from rap_deploy.errors import UsageError
from rap_deploy.gallery_eval import evaluate_in_galleries, gallery_bounds
from rap_deploy.metrics import ground_truth_ranks, metrics_from_ranks, query_ranks, retrieval_metrics


def test_gallery_bounds_cover_every_video_once():
    assert gallery_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert gallery_bounds(8, 8) == [(0, 8)]
    with pytest.raises(UsageError, match="at least 2 videos, got 1"):
        gallery_bounds(8, 1)


def test_a_last_gallery_of_one_video_is_refused():
    """The remainder gallery was taken as it came: 9 videos in galleries of 4 (or 801 usable ones of a split of 800s)
    left one video alone, whose queries ranked first (t2v and v2t R@1 100) whatever the model scored, pooled into
    the metrics silently."""
    with pytest.raises(UsageError, match="leave a last gallery of 1 video"):
        gallery_bounds(9, 4)
    with pytest.raises(UsageError, match="leave a last gallery of 1 video"):
        gallery_bounds(1, 2)
    assert gallery_bounds(10, 4)[-1] == (8, 10) and gallery_bounds(0, 4) == []


def test_query_ranks_pool_to_the_same_metrics():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(9, 6))
    owner = np.array([0, 1, 2, 3, 4, 5, 0, 2, 2])
    ranks = query_ranks(sim, owner)
    assert {d: metrics_from_ranks(*r) for d, r in ranks.items()} == retrieval_metrics(sim, owner)
    assert ranks["v2t"][0].shape == (6,)
    with pytest.raises(ValueError, match="NaN/inf"):
        query_ranks(np.full((2, 2), np.nan), [0, 1])


@pytest.fixture(scope="module")
def scored(micro_checkpoint, synth_root, tmp_path_factory):
    """The micro checkpoint's encoder, the synthetic test split (12 videos), its frame cache and the one-gallery
    evaluation with its similarity matrices."""
    import torch

    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.data.datasets import load_split
    from rap_deploy.model_encoder import ModelEncoder
    from rap_deploy.retrieval import evaluate

    model = load_checkpoint(micro_checkpoint).build_model().eval()
    split = load_split("msrvtt", synth_root, "test", max_frames=model.config.frames)
    cache = FrameCache(tmp_path_factory.mktemp("gallery_frames"))
    encoder = ModelEncoder(model)
    with torch.no_grad():
        whole = evaluate(encoder, split, cache, top_m=4, progress=False, return_scores=True)
    return encoder, split, cache, whole


def test_one_gallery_of_the_whole_split_is_the_plain_evaluation(scored):
    import torch

    encoder, split, cache, whole = scored
    with torch.no_grad():
        one = evaluate_in_galleries(encoder, split, cache, split.num_videos, top_m=4, progress=False)
    for name in ("asa", "two_stage", "meanp"):
        assert one[name] == whole[name]
    assert one["galleries"] == [12] and one["gallery"] == 12 and one["videos"] == 12 and one["captions"] == 12


def test_each_query_is_ranked_within_its_own_gallery(scored):
    """Galleries of 5 over 12 videos (5, 5, 2): the pooled metrics are those of the diagonal blocks of the full
    similarity matrix, and no query ranks lower than it does among all 12 videos."""
    import torch

    encoder, split, cache, whole = scored
    with torch.no_grad():
        galleries = evaluate_in_galleries(encoder, split, cache, 5, top_m=4, progress=False)
    assert galleries["galleries"] == [5, 5, 2] and galleries["captions"] == 12
    sim, owner = whole["scores"]["sims"]["asa"], np.asarray(whole["scores"]["split"].caption_video)
    pooled: dict[str, list] = {"t2v": [], "v2t": []}
    for start, stop in [(0, 5), (5, 10), (10, 12)]:
        rows = np.flatnonzero((owner >= start) & (owner < stop))
        for d, ranks in query_ranks(sim[rows][:, start:stop], owner[rows] - start).items():
            pooled[d].append(ranks)
    for d, parts in pooled.items():
        expected = metrics_from_ranks(np.concatenate([r for r, _ in parts]), np.concatenate([t for _, t in parts]))
        assert galleries["asa"][d] == pytest.approx(expected)
    in_gallery = np.concatenate([r for r, _ in pooled["t2v"]])
    among_all, _ = ground_truth_ranks(sim, owner)
    order = np.concatenate([np.flatnonzero((owner >= a) & (owner < b)) for a, b in [(0, 5), (5, 10), (10, 12)]])
    assert np.all(in_gallery <= among_all[order])
    assert galleries["asa"]["t2v"]["R1"] >= whole["asa"]["t2v"]["R1"]


def test_videos_are_encoded_one_gallery_at_a_time(scored, monkeypatch):
    """Only one gallery's index is held: the encoder sees each gallery's videos in its own call, never the split."""
    import torch

    import rap_deploy.retrieval as retrieval

    encoder, split, cache, _ = scored
    calls: list[list[str]] = []
    encode_videos = retrieval.encode_videos

    def recording(encoder, gallery_split, *args, **kwargs):
        calls.append([v.video_id for v in gallery_split.videos])
        return encode_videos(encoder, gallery_split, *args, **kwargs)

    monkeypatch.setattr(retrieval, "encode_videos", recording)
    with torch.no_grad():
        evaluate_in_galleries(encoder, split, cache, 5, top_m=4, progress=False)
    ids = [v.video_id for v in split.videos]
    assert calls == [ids[0:5], ids[5:10], ids[10:12]]

"""The PyTorch reference re-ranks a query's candidates in place (issue 11): it reads the index's whole stores at the
candidate rows instead of copying the candidates' blocks out first, with the same scores and rankings."""

from __future__ import annotations

import numpy as np
import pytest

from rap_deploy.engines.bench_inputs import random_index, template_captions
from rap_deploy.engines.torch_backend import TorchEngine
from rap_deploy.errors import UsageError
from rap_deploy.retrieval import meanp_similarity, two_stage_similarity
from rap_deploy.tokenizer import tokenize


class _BlocksOnly:
    """An encoder with only the graph-shaped ``asa_similarity`` (how every non-PyTorch engine is driven)."""

    def __init__(self, engine: TorchEngine) -> None:
        self.engine, self.config, self.has_asa = engine, engine.config, engine.has_asa

    def asa_similarity(self, text_emb, *rerank):
        return self.engine.asa_similarity(text_emb, *rerank)


@pytest.fixture(scope="module")
def engine_and_index(micro_checkpoint):
    engine = TorchEngine(micro_checkpoint)
    model = engine.model
    index = random_index(13, model.config.frames, model.num_patches, model.embed_dim, seed=3, chunk=5, asa=model.asa)
    ids, eot = tokenize(template_captions(6, seed=4), engine.config.tokenizer)
    return engine, index, engine.encode_text(ids, eot)


def test_in_place_two_stage_equals_the_copied_candidate_blocks(engine_and_index, monkeypatch):
    engine, index, text_emb = engine_and_index
    copied = two_stage_similarity(_BlocksOnly(engine), text_emb, index, top_m=5, progress=False)

    def no_copy():
        raise AssertionError("the PyTorch engine must not copy candidate blocks out of the index")

    monkeypatch.setattr(index, "candidate_gather", no_copy)
    in_place = two_stage_similarity(engine, text_emb, index, top_m=5, progress=False)
    assert np.abs(in_place - copied).max() <= 1e-6
    assert (np.argsort(-in_place, axis=1, kind="stable") == np.argsort(-copied, axis=1, kind="stable")).all()
    # the re-rank did change the order: candidates carry their ASA score on top of the stage-1 scores
    assert not np.array_equal(np.argsort(-in_place, axis=1), np.argsort(-meanp_similarity(text_emb, index), axis=1))


def test_rows_equal_fancy_indexing_in_any_order(engine_and_index):
    engine, index, text_emb = engine_and_index
    rows = np.array([12, 0, 7, 7, 3])
    got = engine.asa_similarity_rows(text_emb, index.rerank(), rows)
    want = engine.asa_similarity(text_emb, *(x[rows] for x in index.rerank()))
    assert got.shape == (len(text_emb), 5) and np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("rows", [[0, 13], [-1, 2]])
def test_rows_outside_the_index_are_refused(engine_and_index, rows):
    engine, index, text_emb = engine_and_index
    with pytest.raises(UsageError, match=r"candidate rows must lie in \[0, 13\)"):
        engine.asa_similarity_rows(text_emb, index.rerank(), np.array(rows))


def test_the_video_block_changes_the_call_size_not_the_scores(micro_checkpoint):
    engine = TorchEngine(micro_checkpoint, video_block=16)
    model = engine.model
    index = random_index(13, model.config.frames, model.num_patches, model.embed_dim, seed=5, chunk=5, asa=model.asa)
    ids, eot = tokenize(template_captions(3, seed=6), engine.config.tokenizer)
    text_emb, rows = engine.encode_text(ids, eot), np.arange(13)
    whole = engine.asa_similarity_rows(text_emb, index.rerank(), rows)
    engine.video_block = 4
    assert engine.video_block == 4 == engine.encoder.video_chunk
    assert np.abs(engine.asa_similarity_rows(text_emb, index.rerank(), rows) - whole).max() <= 1e-6
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UsageError, match="video_block must be a positive int"):
            engine.video_block = bad
    assert engine.video_block == 4
    # The constructor refuses the same values, for both call sizes, before it loads anything.
    for name in ("video_block", "query_block"):
        with pytest.raises(UsageError, match=f"{name} must be a positive int, got 0"):
            TorchEngine(micro_checkpoint, **{name: 0})



class _FixedScores:
    """An ASA encoder whose score of video ``v`` is ``scores[v]`` for every text (the video's id rides in its
    ``frame_emb``), to pin down how two-stage search turns given ASA scores into ranks."""

    def __init__(self, scores: np.ndarray) -> None:
        from types import SimpleNamespace

        self.scores, self.config, self.has_asa = scores, SimpleNamespace(has_asa=True), True

    def asa_similarity(self, text_emb, frame_emb, *rest):
        return np.tile(self.scores[frame_emb[:, 0, 0].astype(np.int64)], (len(text_emb), 1))


def test_two_stage_keeps_distinct_asa_scores_distinct():
    """Two candidates whose ASA scores differ by one float32 step near 0.3 are not tied by the re-rank: the two-stage
    matrix ranks the ground truth where the full ASA similarity does (second, untied), not first by a tie."""
    from rap_deploy.metrics import retrieval_metrics
    from rap_deploy.retrieval import VideoIndex

    gt = np.float32(0.3)
    scores = np.array([gt, np.nextafter(gt, np.float32(1)), 0.1], dtype=np.float32)  # video 1 just above the truth
    frame_emb = np.zeros((3, 2, 4), dtype=np.float32)
    frame_emb[:, 0, 0] = np.arange(3)
    video_emb = np.eye(3, 4, dtype=np.float32)
    index = VideoIndex(["a", "b", "c"], video_emb, frame_emb, np.zeros((3, 2, 1, 4), np.float16),
                       np.zeros((3, 2, 1, 6), np.float32))
    text_emb = np.array([[1.0, 0.5, 0.2, 0.0]], dtype=np.float32)
    two_stage = two_stage_similarity(_FixedScores(scores), text_emb, index, top_m=3, progress=False)
    full = retrieval_metrics(scores[None, :], [0])["t2v"]
    staged = retrieval_metrics(two_stage, [0])["t2v"]
    assert (full["R1"], full["ties"]) == (0.0, 0)
    assert (staged["R1"], staged["ties"], staged["MnR"]) == (0.0, 0, 2.0)


@pytest.mark.parametrize("variant", ["rap", "rap_light"])
def test_no_texts_or_no_videos_give_an_empty_matrix(variant):
    """With an ASA head, scoring no videos (or no texts) raised ValueError from torch.cat (the blocks' list was
    empty), where rap_light and the ONNX Runtime engine return a [Q, 0] / [0, V] matrix."""
    from conftest import micro_config

    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.model_encoder import ModelEncoder

    _, model = new_checkpoint(micro_config(variant=variant), BackboneSpec.parse("rap-micro", "none"), seed=0)
    enc = ModelEncoder(model)
    rerank = enc.encode_video(np.random.default_rng(0).random((3, 4, 3, 32, 32), dtype=np.float32))[1:]
    text = np.eye(2, 32, dtype=np.float32)
    assert enc.asa_similarity(text, *(x[:0] for x in rerank)).shape == (2, 0)
    assert enc.asa_similarity(text[:0], *rerank).shape == (0, 3)
    assert enc.asa_similarity_rows(text, rerank, np.zeros(0, np.int64)).shape == (2, 0)


@pytest.mark.parametrize("cut", ["asa_width", "frames", "patches"])
def test_rerank_tensors_of_another_shape_are_refused(cut):
    """The ASA head takes T, P and the widths from its inputs, so asa_tokens cut short (read by row offsets: rows
    misaligned) or another model's tensors (other T or P) scored silently through the PyTorch engine; the Engine
    contract says UsageError when the re-rank tensors do not match the model."""
    from conftest import micro_config

    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.model_encoder import ModelEncoder

    _, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    enc = ModelEncoder(model)
    fe, pt, at = enc.encode_video(np.random.default_rng(0).random((2, 4, 3, 32, 32), dtype=np.float32))[1:]
    text = np.eye(1, 32, dtype=np.float32)
    bad = {"asa_width": (fe, pt, at[..., :-3]), "frames": (fe[:, :3], pt[:, :3], at[:, :3]),
           "patches": (fe, pt[:, :, :8], at[:, :, :8])}[cut]
    with pytest.raises(UsageError, match="for this model"):
        enc.asa_similarity(text, *bad)
    assert enc.asa_similarity(text, fe, pt, at).shape == (1, 2)

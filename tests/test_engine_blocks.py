"""Block loops and input checks shared by the backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import micro_config, randomize_adapters

from rap_deploy.engines.blocks import (
    batched,
    blocked_similarity,
    check_text_inputs,
    check_video_inputs,
    fit_tokens,
    meanp_similarity_from_frames,
    tokens_axis_is_dynamic,
    trim_tokens,
)
from rap_deploy.errors import UsageError


def _embeddings(model, videos=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = model.config.preprocess.image_size
    frames = torch.randn(videos, model.config.frames, 3, s, s, generator=gen)
    mask = torch.ones(videos, model.config.frames)
    mask[-1, 2:] = 0  # a padded video
    with torch.no_grad():
        return model.encode_video(frames, mask)


def test_blocked_similarity_equals_one_block(micro_model):
    from rap_deploy.engines.blocks import rerank_inputs

    randomize_adapters(micro_model, seed=3)
    rerank = rerank_inputs(True, tuple(x.numpy() for x in _embeddings(micro_model)[1:]))
    assert [x.dtype for x in rerank] == [np.float32, np.float16, np.float32]  # the index's dtypes
    text = torch.nn.functional.normalize(torch.randn(7, rerank[0].shape[-1], generator=torch.Generator()
                                                     .manual_seed(1)), dim=-1)
    with torch.no_grad():
        full = micro_model.asa(text, *(torch.from_numpy(x) for x in rerank)).numpy()
    calls = []

    def run(t, *arrays):
        calls.append((len(t), len(arrays[0])))
        assert [a.dtype for a in arrays] == [x.dtype for x in rerank]  # sliced, never converted
        with torch.no_grad():
            return micro_model.asa(torch.from_numpy(t), *(torch.from_numpy(a) for a in arrays)).numpy()

    out = blocked_similarity(run, text.numpy(), rerank, query_block=3, video_block=2)
    assert np.allclose(out, full, atol=1e-5)
    assert max(q for q, _ in calls) == 3 and max(v for _, v in calls) == 2 and len(calls) == 9


def test_rerank_inputs_check_the_contract():
    from rap_deploy.engines.blocks import rerank_inputs

    f, p, a = np.zeros((2, 4, 8), np.float32), np.zeros((2, 4, 16, 8), np.float16), np.zeros((2, 4, 16, 12), np.float32)
    assert all(x is y for x, y in zip(rerank_inputs(True, (f, p, a)), (f, p, a), strict=True))  # no copies
    assert rerank_inputs(True, (f, p.astype(np.float32), a))[1].dtype == np.float16
    with pytest.raises(UsageError, match="asa_tokens"):
        rerank_inputs(True, (f, p))
    with pytest.raises(UsageError, match="different numbers of videos"):
        rerank_inputs(True, (f, p, a[:1]))
    with pytest.raises(UsageError, match="no ASA head"):
        rerank_inputs(False, ())


def test_meanp_similarity_matches_the_model_without_asa():
    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec
    _, light = new_checkpoint(micro_config(variant="rap_light"), BackboneSpec.parse("rap-micro", "none"), seed=0)
    outputs = _embeddings(light.eval())
    assert len(outputs) == 3  # no asa_tokens without an ASA head
    frame_emb = outputs[1]
    gen = torch.Generator().manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(4, frame_emb.shape[-1], generator=gen), dim=-1)
    with torch.no_grad():
        ref = light.asa_similarity(text, frame_emb).numpy()
    assert np.allclose(meanp_similarity_from_frames(text.numpy(), frame_emb.numpy()), ref, atol=1e-6)


def test_batched_splits_and_concatenates():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    sizes = []

    def run(a):
        sizes.append(len(a))
        return (a * 2, a.sum(1))

    out = batched(run, (x,), max_batch=2)
    assert sizes == [2, 2, 1] and np.array_equal(out[0], x * 2) and np.array_equal(out[1], x.sum(1))
    sizes.clear()
    empty = batched(run, (x[:0],), max_batch=2)  # one row of zeros runs, none comes back
    assert sizes == [1] and [e.shape for e in empty] == [(0, 2), (0,)]


def test_input_checks_name_the_expected_shapes():
    cfg = micro_config()
    frames, mask = check_video_inputs(np.zeros((2, 4, 3, 32, 32), np.float64), None, cfg)
    assert frames.dtype == np.float32 and mask.shape == (2, 4) and mask.min() == 1
    with pytest.raises(UsageError, match=r"\[B,4,3,32,32\]"):
        check_video_inputs(np.zeros((2, 5, 3, 32, 32)), None, cfg)
    with pytest.raises(UsageError, match="frame_mask"):
        check_video_inputs(np.zeros((2, 4, 3, 32, 32)), np.ones((2, 3)), cfg)
    check_video_inputs(np.zeros((2, 4, 3, 32, 32)), np.array([[1, 1, 1, 0], [1, 0, 0, 0]]), cfg)  # prefixes
    for bad in ([[1, 0, 1, 1], [1, 1, 1, 1]], [[1, 1, 0.5, 0], [1, 1, 1, 1]]):  # a hole; a fractional weight
        with pytest.raises(UsageError, match=r"frame_mask row 0 .* \(real frames first"):
            check_video_inputs(np.zeros((2, 4, 3, 32, 32)), np.array(bad), cfg)
    ids, eot = check_text_inputs(np.zeros((3, 32), np.int64), np.array([1, 2, 3]), cfg)
    assert ids.dtype == np.int32 and eot.dtype == np.int32
    ids, _ = check_text_inputs(np.zeros((3, 16)), np.zeros(3), cfg)  # a query's own tokens: fewer than the context
    assert ids.shape == (3, 16)
    for bad_ids in (np.zeros((3, 33)), np.zeros((3, 0)), np.zeros(32)):
        with pytest.raises(UsageError, match=r"\[B,n\] with 1 <= n <= 32"):
            check_text_inputs(bad_ids, np.zeros(3), cfg)
    with pytest.raises(UsageError, match=r"eot positions must lie in \[0, 8\)"):
        check_text_inputs(np.zeros((3, 8)), np.array([1, 8, 2]), cfg)


def test_tokens_are_trimmed_for_dynamic_graphs_and_padded_for_static_ones():
    ids = np.arange(1, 33, dtype=np.int32)[None].repeat(2, 0)
    eot = np.array([4, 9], np.int32)
    assert trim_tokens(ids, eot).shape == (2, 10) and np.array_equal(trim_tokens(ids, eot), ids[:, :10])
    assert fit_tokens(ids, eot, 32, dynamic=True).shape == (2, 10)
    padded = fit_tokens(ids[:, :10], eot, 32, dynamic=False)
    assert padded.shape == (2, 32) and np.array_equal(padded[:, :10], ids[:, :10]) and not padded[:, 10:].any()
    assert fit_tokens(ids, eot, 32, dynamic=False) is ids
    # ONNX Runtime names free dims, TensorRT and KServe metadata write -1; a static graph has the context length
    for shape, dynamic in ((["batch", "tokens"], True), ((-1, -1), True), ([None, None], True), (["batch", 32], False),
                           ((-1, 32), False), ([-1], False)):
        assert tokens_axis_is_dynamic(shape) is dynamic, shape


def test_token_ids_outside_the_vocabulary_are_refused_not_wrapped():
    """ONNX Runtime's Gather reads a negative id from the end of the embedding table and the int32 cast wrapped 2**40
    to 0 and truncated 1.7 to 1: each gave a silent embedding of other tokens. They are refused, naming the ids."""
    cfg = micro_config()
    eot = np.array([3])
    for bad in (-1, 49408, 2 ** 40, 1.7):
        with pytest.raises(UsageError, match=r"input_ids must be token ids in \[0, 49408\)"):
            check_text_inputs(np.full((1, 8), bad), eot, cfg)
    for bad_eot in (2.5, np.inf, np.nan):
        with pytest.raises(UsageError, match="eot positions must be whole numbers"):
            check_text_inputs(np.zeros((1, 8)), np.array([bad_eot]), cfg)
    ids, _ = check_text_inputs(np.full((1, 8), 49407.0), eot, cfg)  # whole floats are ids
    assert ids.dtype == np.int32 and ids.max() == 49407
    from rap_deploy.tokenizer import vocab_size

    assert vocab_size(cfg.tokenizer) == 49408


def test_text_embeddings_of_another_width_are_refused_before_any_block(micro_model):
    """A text embedding of another width (or rank) than the videos' frame embeddings was a numpy ValueError (meanP),
    an IndexError inside the block loop, or PyTorch's 'mat1 and mat2 shapes cannot be multiplied': tracebacks."""
    from rap_deploy.engines.torch_backend import TorchEngine

    frame_emb = np.zeros((3, 4, 8), np.float32)
    for text in (np.zeros((2, 5), np.float32), np.zeros(8, np.float32)):
        with pytest.raises(UsageError, match=r"text_emb must be \[Q,8\] \(the width of frame_emb \[3, 4, 8\]\)"):
            meanp_similarity_from_frames(text, frame_emb)
        with pytest.raises(UsageError, match=r"text_emb must be \[Q,8\]"):
            blocked_similarity(lambda *a: None, text, (frame_emb,))
    engine = TorchEngine(micro_model)
    rerank = engine.encode_video(np.zeros((2, 4, 3, 32, 32), np.float32))[1:]
    width = rerank[0].shape[-1]
    with pytest.raises(UsageError, match=rf"text_emb must be \[Q,{width}\]"):
        engine.asa_similarity(np.zeros((1, width - 1), np.float32), *rerank)
    with pytest.raises(UsageError, match=rf"text_emb must be \[Q,{width}\]"):
        engine.asa_similarity_rows(np.zeros((1, width + 1), np.float32), rerank, np.array([0]))
    assert engine.asa_similarity(np.zeros((1, width), np.float32), *rerank).shape == (1, 2)


def test_a_similarity_larger_than_memory_is_refused_before_any_block():
    """The [Q, V] result was allocated unchecked: numpy's MemoryError (a traceback) for a size it cannot map, or, with
    overcommit, a process killed after hours of blocks. Its size is checked against the available memory first."""
    text = np.broadcast_to(np.zeros(8, np.float32), (2_000_000, 8))  # views: no memory of their own
    frames = np.broadcast_to(np.zeros((1, 4, 8), np.float32), (2_000_000, 4, 8))
    calls = []
    with pytest.raises(UsageError, match=r"the \[2000000, 2000000\] similarity needs 14901\.2 GiB"):
        blocked_similarity(lambda *a: calls.append(1), text, (frames,))
    assert not calls
    with pytest.raises(UsageError, match=r"the \[2000000, 2000000\] similarity"):
        meanp_similarity_from_frames(text, frames)


def test_the_pytorch_engine_checks_the_similarity_size_too(micro_model, monkeypatch):
    """TorchEngine.asa_similarity(_rows) allocate the [Q, V] result in the model: the same check comes first (here
    with 10 bytes of memory available, so a [2, 2] result of 16 bytes is too large)."""
    import types

    import psutil

    from rap_deploy.engines.torch_backend import TorchEngine

    engine = TorchEngine(micro_model)
    rerank = engine.encode_video(np.zeros((2, 4, 3, 32, 32), np.float32))[1:]
    text = np.zeros((2, rerank[0].shape[-1]), np.float32)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=10))
    with pytest.raises(UsageError, match=r"the \[2, 2\] similarity needs"):
        engine.asa_similarity(text, *rerank)
    with pytest.raises(UsageError, match=r"the \[2, 2\] similarity needs"):
        engine.asa_similarity_rows(text, rerank, np.array([0, 1]))


def _available(monkeypatch, nbytes):
    """Make psutil report ``nbytes`` of available memory (nothing is allocated)."""
    import types

    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=nbytes))


def test_the_per_pair_estimate_sizes_the_blocks_at_64_frames(monkeypatch):
    """Nothing read the export's per-pair estimate: at 64 frames (DiDeMo / ActivityNet) on ViT-B/32 one ONNX Runtime
    call of the default 32 x 64 block is estimated at about 20 GB, and was fed whole on a 16 GiB machine (killed).
    The blocks are now fitted to half the available memory, videos first, then queries, then refused."""
    from rap_deploy.engines.blocks import asa_call_bytes, fit_asa_blocks

    call = asa_call_bytes(64, 49, 768, 8, 4, 128)  # ViT-B/32, --frames 64, the default ASA sizes
    assert call == (9_449_728, 9_633_792)
    assert 32 * 64 * call[0] + 64 * call[1] > 19.9e9
    _available(monkeypatch, 16 << 30)
    assert fit_asa_blocks(32, 64, 1000, 1000, call) == (32, 27)  # 27 * (32 pairs + 1 video) <= 8 GiB
    assert fit_asa_blocks(32, 16, 1000, 1000, call) == (32, 16)  # the PyTorch engine's 32 x 16 (5 GB) fits
    assert fit_asa_blocks(32, 64, 1, 100, call) == (32, 64)  # one query's search block (1.2 GB) fits
    _available(monkeypatch, 100 << 20)
    assert fit_asa_blocks(32, 64, 1000, 1000, call) == (4, 1)
    _available(monkeypatch, 10 << 20)
    with pytest.raises(UsageError, match=r"single \(query, video\) pair needs about 0\.02 GiB .* more than 50% of "
                                         r"the 0\.0 GiB of memory available"):
        fit_asa_blocks(32, 64, 1000, 1000, call)


def test_small_blocks_never_read_the_memory(monkeypatch):
    """A call estimated under 256 MiB (every model at 12 frames searching) is fed as asked, without the psutil read."""
    import psutil

    from rap_deploy.engines.blocks import asa_call_bytes, fit_asa_blocks

    monkeypatch.setattr(psutil, "virtual_memory", lambda: pytest.fail("memory read for a small block"))
    assert fit_asa_blocks(32, 64, 1, 100, asa_call_bytes(12, 49, 768, 8, 4, 128)) == (32, 64)


def test_a_64_frame_model_is_scored_in_fitted_blocks_with_the_same_scores(monkeypatch):
    """The PyTorch re-rank (the engine and verify's reference, ModelEncoder) fed 32 x 16 blocks whatever the memory:
    a 64-frame rap-micro block of 32 queries x 13 videos is estimated at 0.47 GB. With 400 MiB available the calls
    hold 5 videos."""
    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.engines.blocks import rerank_inputs
    from rap_deploy.engines.torch_backend import TorchEngine
    from rap_deploy.model.clip_loader import BackboneSpec

    _, model = new_checkpoint(micro_config(frames=64), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=3)
    engine = TorchEngine(model)
    rerank = rerank_inputs(True, tuple(x.numpy() for x in _embeddings(model, videos=13)[1:]))
    text = np.linalg.qr(np.random.default_rng(2).normal(size=(32, 32)))[0].astype(np.float32)
    whole, rows = engine.asa_similarity(text, *rerank), engine.asa_similarity_rows(text, rerank, np.arange(13))
    chunks = []
    original = model.asa_similarity
    monkeypatch.setattr(model, "asa_similarity",
                        lambda *a, **kw: chunks.append(kw["video_chunk"]) or original(*a, **kw))
    _available(monkeypatch, 400 << 20)
    assert np.abs(engine.asa_similarity(text, *rerank) - whole).max() <= 1e-6  # measured: bit-identical
    assert np.abs(engine.asa_similarity_rows(text, rerank, np.arange(13)) - rows).max() <= 1e-6
    assert chunks == [5, 5] and engine.video_block == 16  # the setting is kept; one call is fitted
    _available(monkeypatch, 2 << 20)
    with pytest.raises(UsageError, match="single \\(query, video\\) pair"):
        engine.asa_similarity(text, *rerank)


def test_the_block_options_say_a_cpu_engine_may_feed_fewer():
    """build-engine's --query-block/--video-block said 'per ASA-head call': a CPU engine now fits its calls."""
    import inspect

    from rap_deploy.cli.engine_cmds import build_engine_cmd

    params = inspect.signature(build_engine_cmd).parameters
    for name in ("query_block", "video_block"):
        assert "feeds fewer when a call would not fit in half the memory" in params[name].default.help

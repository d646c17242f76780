"""The split ASA head (index-time ``asa_tokens`` + per-query gather) equals the all-tokens reference (issue 11), and
padded frames never leak into the warp (issue 14).

At ViT-B/32 dims without the backbone (d = 512, T = 12, P = 49 on a 7×7 grid, d_a = 128, 4 heads, k = 8 and k = P),
for PyTorch and for ONNX Runtime fp32 (the ASA pieces exported alone), on random unit-norm patch tokens stored in
fp16 as the index stores them, random non-zero weights, fractional and out-of-range offsets and padded frames. Then
on real models: a rap-micro checkpoint after a short training run, and any checkpoint named by
``RAPDEPLOY_ASA_CHECKPOINT`` (the demo's, or ViT-B/32 with random adapters; see :func:`test_checkpoint_from_env`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from asa_reference import reference_selection, reference_similarity

from rap_deploy.export.export_config import ExportConfig, GraphSpec, ModelDims, TensorSpec, graph_specs
from rap_deploy.graphs import INDEX_DTYPES
from rap_deploy.model.asa import AsynchronousSelfAttention
from rap_deploy.model.random_adapters import randomize_asa

T, GRID, D, HEADS, DA = 12, (7, 7), 512, 4, 128
P = GRID[0] * GRID[1]
VALID = (12, 9, 5, 1, 12, 2)  # valid frames per video: full, padded, and one video of a single frame
TOL = 1e-5
OFFSETS = {
    "fractional": ([[0.37, -0.81], [1.45, 0.62], [-1.28, -0.33], [0.55, 1.7]], [0.42, -1.33, 0.77, -0.58]),
    "out-of-range": ([[7.3, -9.6], [-8.25, 0.4], [0.3, 12.7], [-15.5, -6.2]], [13.2, -14.7, 6.6, -9.4]),
}


def _asa(topk: int, seed: int = 0, selection: str = "text", offsets: str = "fractional") -> AsynchronousSelfAttention:
    asa = AsynchronousSelfAttention(D, GRID, topk, HEADS, DA, selection).eval()
    randomize_asa(asa, torch.Generator().manual_seed(seed))
    gamma, delta = OFFSETS[offsets]
    with torch.no_grad():
        asa.patch_offset.copy_(torch.tensor(gamma))
        asa.time_offset.copy_(torch.tensor(delta))
    return asa


def _inputs(seed: int = 0, queries: int = 3, valid: tuple[int, ...] = VALID, frames: int = T):
    """Random unit-norm text, frame and patch tokens (patch tokens stored fp16, as an index holds them)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(valid), frames)
    for v, n in enumerate(valid):
        mask[v, :n] = 1.0
    patch = F.normalize(torch.randn(len(valid), frames, P, D, generator=gen), dim=-1) * mask.view(-1, frames, 1, 1)
    frame_emb = F.normalize(torch.randn(len(valid), frames, D, generator=gen), dim=-1) * mask.view(-1, frames, 1)
    text = F.normalize(torch.randn(queries, D, generator=gen), dim=-1)
    return text, frame_emb, patch.to(torch.float16), mask


def _valid_selection(sel: torch.Tensor, mask: torch.Tensor) -> list:
    """Top-k index sets of the valid frames only (padded frames have all-zero scores: any k of them tie)."""
    return [sorted(sel[q, v, t].tolist()) for q in range(sel.shape[0]) for v in range(sel.shape[1])
            for t in range(sel.shape[2]) if mask[v, t] > 0]


def _assert_same(new: np.ndarray, ref: np.ndarray) -> None:
    assert np.abs(new - ref).max() <= TOL, np.abs(new - ref).max()
    assert (np.argsort(-new, axis=1, kind="stable") == np.argsort(-ref, axis=1, kind="stable")).all()


# ------------------------------------------------------------------------------------------------ PyTorch
@pytest.mark.parametrize("topk", [8, P])
@pytest.mark.parametrize("offsets", sorted(OFFSETS))
def test_split_head_equals_all_tokens_reference_torch(topk, offsets):
    asa = _asa(topk, seed=1, offsets=offsets)
    text, frame_emb, patch16, mask = _inputs(seed=2)
    with torch.no_grad():
        asa_tokens = asa.video_tokens(patch16.float(), mask)
        new = asa(text, frame_emb, patch16, asa_tokens).numpy()
        sel_new = asa.select(text, patch16)
    ref = reference_similarity(asa, text, frame_emb, patch16).numpy()
    _assert_same(new, ref)
    assert _valid_selection(sel_new, mask) == _valid_selection(reference_selection(asa, text, patch16), mask)
    # The adapters matter: the conditioned similarity is far from meanP, so equality is not trivially reached.
    meanp = (text @ F.normalize(frame_emb.sum(1) / mask.sum(1, keepdim=True), dim=-1).T).numpy()
    assert np.abs(ref - meanp).max() > 0.02


def test_split_head_equals_reference_with_saliency_selection():
    asa = _asa(8, seed=3, selection="saliency")
    text, frame_emb, patch16, mask = _inputs(seed=4)
    with torch.no_grad():
        new = asa(text, frame_emb, patch16, asa.video_tokens(patch16.float(), mask)).numpy()
    _assert_same(new, reference_similarity(asa, text, frame_emb, patch16).numpy())


def test_asa_tokens_are_read_only_at_the_selected_rows():
    """Rows of asa_tokens that no query selects can hold anything: the head never reads them."""
    asa = _asa(8, seed=5)
    text, frame_emb, patch16, mask = _inputs(seed=6, queries=1)
    with torch.no_grad():
        tokens = asa.video_tokens(patch16.float(), mask)
        sel = asa.select(text, patch16)[0]  # [V, T, k]
        poisoned = torch.full_like(tokens, float("nan"))
        picked = torch.zeros(tokens.shape[:3], dtype=torch.bool)
        picked.scatter_(2, sel, True)
        poisoned[picked] = tokens[picked]
        assert torch.equal(asa(text, frame_emb, patch16, poisoned), asa(text, frame_emb, patch16, tokens))


@pytest.mark.parametrize("selection", ["text", "saliency"])
@pytest.mark.parametrize("topk", [8, P])
def test_reading_whole_stores_at_rows_equals_the_gathered_blocks(selection, topk):
    """The in-place re-rank (``video_rows`` into whole index stores, what the PyTorch search runs) scores the same
    videos as the candidate blocks copied out first, and both equal the all-tokens reference."""
    asa = _asa(topk, seed=11, selection=selection, offsets="out-of-range")
    text, frame_emb, patch16, mask = _inputs(seed=12)
    rows = torch.tensor([4, 1, 5, 1, 2], dtype=torch.int64)  # unsorted, one repeated, padded videos among them
    with torch.no_grad():
        tokens = asa.video_tokens(patch16.float(), mask)
        in_place = asa(text, frame_emb, patch16, tokens, video_rows=rows).numpy()
        gathered = asa(text, frame_emb[rows], patch16[rows], tokens[rows]).numpy()
    assert np.abs(in_place - gathered).max() <= 1e-6
    ref = reference_similarity(asa, text, frame_emb[rows], patch16[rows]).numpy()
    assert np.abs(in_place - ref).max() <= TOL


def test_reading_in_place_never_touches_other_videos():
    """Videos outside ``video_rows`` can hold anything (NaN) in every store: the in-place re-rank never reads them."""
    asa = _asa(8, seed=13)
    text, frame_emb, patch16, mask = _inputs(seed=14)
    rows = torch.tensor([0, 3], dtype=torch.int64)
    with torch.no_grad():
        tokens = asa.video_tokens(patch16.float(), mask)
        clean = asa(text, frame_emb[rows], patch16[rows], tokens[rows])
        others = torch.ones(len(VALID), dtype=torch.bool)
        others[rows] = False
        stores = [frame_emb.clone(), patch16.clone(), tokens.clone()]
        for x in stores:
            x[others] = float("nan")
        assert torch.equal(asa(text, *stores, video_rows=rows), clean)


def test_fused_attention_without_gradient_equals_the_written_out_one(monkeypatch):
    """Evaluation (no gradient) takes the fused scaled_dot_product_attention for a block of FUSED_MIN_PAIRS pairs or
    more; training (gradient recorded) and smaller blocks the written-out matmul/softmax/matmul: the same
    similarities and ranks, padded frames masked alike."""
    from rap_deploy.model import asa as asa_module
    from rap_deploy.model.asa import FUSED_MIN_PAIRS, attend

    fused_calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(asa_module.F, "scaled_dot_product_attention",
                        lambda *a, **kw: fused_calls.append(a[0].shape[0]) or sdpa(*a, **kw))
    asa = _asa(8, seed=3)
    text, frame_emb, patch16, mask = _inputs(seed=4, queries=FUSED_MIN_PAIRS // len(VALID) + 1)
    tokens = asa.video_tokens(patch16.float(), mask).detach()
    with torch.no_grad():
        fused = asa(text, frame_emb, patch16, tokens)
        assert fused_calls == [len(text) * len(VALID)]
        small = asa(text[:2], frame_emb, patch16, tokens)  # 12 pairs: written out
        assert len(fused_calls) == 1
    with torch.enable_grad():
        written = asa(text, frame_emb, patch16, tokens)
    assert len(fused_calls) == 1 and written.requires_grad
    _assert_same(fused.numpy(), written.detach().numpy())
    _assert_same(small.numpy(), written[:2].detach().numpy())
    q, k, v = torch.randn(3, 2, FUSED_MIN_PAIRS // 2, 4, 16, 8).unbind(0)
    bias = torch.zeros(FUSED_MIN_PAIRS // 2, 16)
    bias[:, 11:] = -1e4  # the masked keys take no weight in either branch
    with torch.no_grad():
        fused_out = attend(q, k, v, bias)
    assert torch.allclose(fused_out, attend(q.requires_grad_(), k, v, bias).detach(), atol=1e-6)
    kept = torch.softmax(q.detach() @ k[..., :11, :].transpose(-1, -2) / 8 ** 0.5, -1) @ v[..., :11, :]
    assert torch.allclose(fused_out, kept, atol=1e-6)


# ------------------------------------------------------------------------------------------------ issue 14
def test_appending_padded_frames_leaves_similarity_unchanged():
    asa = _asa(8, seed=7, offsets="fractional")
    valid = (10, 7, 10)
    text, frame_emb, patch16, mask = _inputs(seed=8, valid=valid, frames=10)
    pad = 2
    longer = (torch.cat([frame_emb, frame_emb.new_zeros(3, pad, D)], 1),
              torch.cat([patch16, patch16.new_zeros(3, pad, P, D)], 1), torch.cat([mask, mask.new_zeros(3, pad)], 1))
    with torch.no_grad():
        short = asa(text, frame_emb, patch16, asa.video_tokens(patch16.float(), mask))
        padded = asa(text, longer[0], longer[1], asa.video_tokens(longer[1].float(), longer[2]))
        assert (short - padded).abs().max() <= 1e-6
        # The old clamp to T - 1 (not to the video's own last frame) leaks the padded frames in: this test sees it.
        leaky = _leaky_tokens(asa, longer[1].float(), longer[2])
        assert (asa(text, longer[0], longer[1], leaky) - short).abs().max() > 1e-3


def _leaky_tokens(asa: AsynchronousSelfAttention, patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """asa_tokens with issue 14's bug: time clamped to the last frame of the tensor, padded or not."""
    from rap_deploy.model import asa as asa_module

    original = asa_module.last_valid_frame
    asa_module.last_valid_frame = lambda m: torch.full((m.shape[0],), m.shape[1] - 1, dtype=torch.int64)
    try:
        return asa.video_tokens(patch, mask)
    finally:
        asa_module.last_valid_frame = original


# ------------------------------------------------------------------------------------------------ ONNX Runtime
def _dims() -> ModelDims:
    return ModelDims(frames=T, image_size=224, grid=GRID, embed_dim=D, context_length=77, asa_token_width=3 * DA)


def _tokens_spec() -> GraphSpec:
    return GraphSpec("asa_tokens", (TensorSpec("patch_tokens", ("videos", T, P, D), "float32"),
                                    TensorSpec("frame_mask", ("videos", T), "float32")),
                     (TensorSpec("asa_tokens", ("videos", T, P, 3 * DA), "float32"),))


@pytest.fixture(scope="module")
def asa_pieces(tmp_path_factory):
    """The ASA pieces of a ViT-B/32-sized model exported alone (tokens graph, asa_head graph), checked as the export
    checks every graph (no GridSample, constant-k TopK, contract I/O); ``{topk: (module, tokens.onnx, head.onnx)}``."""
    from rap_deploy.export.checks import check_graph
    from rap_deploy.export.onnx_export import save_onnx, trace_graph
    from rap_deploy.export.wrappers import AsaHeadGraph, AsaTokensGraph

    cfg = ExportConfig()
    out = tmp_path_factory.mktemp("asa_pieces")
    pieces = {}
    for topk in (8, P):
        asa = _asa(topk, seed=11, offsets="out-of-range" if topk == P else "fractional")
        text, frame_emb, patch16, mask = _inputs(seed=12, queries=2, valid=(12, 5, 9))
        with torch.no_grad():
            tokens = asa.video_tokens(patch16.float(), mask)
        files = []
        for module, spec, args in (
                (AsaTokensGraph(asa), _tokens_spec(), (patch16.float(), mask)),
                (AsaHeadGraph(asa), graph_specs(_dims(), True)["asa_head"], (text, frame_emb, patch16, tokens))):
            path = save_onnx(trace_graph(module.eval(), spec, args, cfg), out / f"{spec.name}-{topk}.onnx",
                             cfg.external_data_threshold)
            assert check_graph(path, spec, cfg.opset)["problems"] == []
            files.append(path)
        pieces[topk] = (asa, *files)
    return pieces


@pytest.mark.parametrize("topk", [8, P])
def test_split_head_equals_all_tokens_reference_onnxruntime(asa_pieces, topk):
    from rap_deploy.export.parity import ort_session

    asa, tokens_file, head_file = asa_pieces[topk]
    text, frame_emb, patch16, mask = _inputs(seed=13, valid=VALID)
    asa_tokens = ort_session(tokens_file).run(None, {"patch_tokens": patch16.float().numpy(),
                                                     "frame_mask": mask.numpy()})[0]
    assert asa_tokens.dtype == np.dtype(INDEX_DTYPES["asa_tokens"])
    with torch.no_grad():
        torch_tokens = asa.video_tokens(patch16.float(), mask).numpy()
    assert np.abs(asa_tokens - torch_tokens).max() <= 1e-5
    feeds = {"text_emb": text.numpy(), "frame_emb": frame_emb.numpy(), "patch_tokens": patch16.numpy(),
             "asa_tokens": asa_tokens}
    new = ort_session(head_file).run(None, feeds)[0]
    _assert_same(new, reference_similarity(asa, text, frame_emb, patch16).numpy())


# ------------------------------------------------------------------------------------------------ real models
def _model_exactness(model, export_dir: Path, frames: np.ndarray, mask: np.ndarray, ids: np.ndarray,
                     eot: np.ndarray) -> dict:
    """PyTorch and ONNX Runtime (the exported fp32 graphs) each encode the videos into an index (stored dtypes);
    on each index, the split head equals the reference. Returns the max abs errors."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.model_encoder import ModelEncoder
    from rap_deploy.retrieval import as_index_dtypes as stored

    out = {}
    for name, engine in (("torch", ModelEncoder(model)), ("onnxruntime", load_engine(export_dir))):
        outputs = engine.encode_video(frames, mask)
        _, frame_emb, patch16, asa_tokens = stored(("video_emb", "frame_emb", "patch_tokens", "asa_tokens"), outputs)
        text = engine.encode_text(ids, eot)
        new = engine.asa_similarity(text, frame_emb, patch16, asa_tokens)
        ref = reference_similarity(model.asa, torch.from_numpy(text), torch.from_numpy(frame_emb),
                                   torch.from_numpy(patch16)).numpy()
        _assert_same(new, ref)
        sel_mask = torch.from_numpy((np.square(frame_emb).sum(-1) > 0.5).astype(np.float32))
        with torch.no_grad():
            sel_new = model.asa.select(torch.from_numpy(text), torch.from_numpy(patch16))
        sel_ref = reference_selection(model.asa, torch.from_numpy(text), torch.from_numpy(patch16))
        assert _valid_selection(sel_new, sel_mask) == _valid_selection(sel_ref, sel_mask)
        out[name] = float(np.abs(new - ref).max())
        if hasattr(engine, "close"):
            engine.close()
    return out


def test_trained_micro_checkpoint_split_equals_reference(micro_trained, synth_root):
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.export.inputs import dataset_inputs

    ckpt, export_dir = micro_trained
    model = load_checkpoint(ckpt).build_model()
    x = dataset_inputs(model.config, synth_root, count=8)
    errors = _model_exactness(model, export_dir, x.frames, x.frame_mask, x.input_ids, x.eot)
    assert max(errors.values()) <= TOL


@pytest.fixture(scope="module")
def micro_trained(tmp_path_factory, synth_root):
    """A rap-micro checkpoint after a short training run on the synthetic data, and its export."""
    from rap_deploy.export import export_checkpoint
    from rap_deploy.train.loop import TrainOptions, train_rap

    base = tmp_path_factory.mktemp("asa_trained")
    opts = TrainOptions(dataset="msrvtt", data_root=str(synth_root), out=str(base / "run"), clip="rap-micro",
                        pretrained="none", frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=2,
                        batch_size=8, lr=5e-3, warmup=1, seed=5, max_test_videos=4, cache_dir=str(base / "cache"),
                        top_m=4)
    train_rap(opts, progress=False)
    ckpt = base / "run" / "last.pt"
    export_checkpoint(ckpt, base / "export", data_root=synth_root, progress=False)
    return ckpt, base / "export"


@pytest.mark.skipif(not os.environ.get("RAPDEPLOY_ASA_CHECKPOINT"),
                    reason="set RAPDEPLOY_ASA_CHECKPOINT=ckpt.pt (and RAPDEPLOY_ASA_EXPORT=its export folder, else it "
                           "is exported here) to check the split ASA head of that model against the reference")
def test_checkpoint_from_env(tmp_path):
    """The issue's exactness check on any model: ``RAPDEPLOY_ASA_CHECKPOINT`` (e.g. the demo's trained checkpoint, or
    ViT-B/32 with ``python -m rap_deploy.model.random_adapters``), optional ``RAPDEPLOY_ASA_EXPORT`` (an export
    folder of it; exporting ViT-B/32 takes minutes) and ``RAPDEPLOY_ASA_DATA`` (an MSR-VTT-layout folder; default
    rendered synthetic videos, a third of them padded). Prints the max abs errors per backend."""
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.export import export_checkpoint
    from rap_deploy.export.inputs import parity_inputs

    ckpt = Path(os.environ["RAPDEPLOY_ASA_CHECKPOINT"])
    model = load_checkpoint(ckpt).build_model()
    if model.asa is None:
        pytest.skip(f"{ckpt} has no ASA head")
    export_dir = Path(os.environ.get("RAPDEPLOY_ASA_EXPORT") or tmp_path / "export")
    if not (export_dir / "manifest.json").is_file():
        export_checkpoint(ckpt, export_dir, progress=False)
    data = os.environ.get("RAPDEPLOY_ASA_DATA")
    x = parity_inputs(model.config, Path(data) if data else None, count=6)
    errors = _model_exactness(model, export_dir, x.frames, x.frame_mask, x.input_ids, x.eot)
    print(f"\nASA exactness of {ckpt}: max abs split vs reference {errors}")
    assert max(errors.values()) <= TOL


def test_random_adapters_module_cli(tmp_path, capsys):
    """``python -m rap_deploy.model.random_adapters SRC --out OUT``: every adapter non-zero, backbone untouched."""
    from conftest import micro_config

    from rap_deploy.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.model.random_adapters import main

    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    src = save_checkpoint(ckpt, tmp_path / "init.pt")
    assert main([str(src), "--out", str(tmp_path / "random.pt"), "--seed", "3"]) == 0
    out = load_checkpoint(tmp_path / "random.pt")
    state = out.adapter_state
    for name in ("lorm_attn.0.v_scale", "lorm_mlp.1.v_shift", "asa.out_proj.weight", "asa.out_proj.bias"):
        assert torch.count_nonzero(ckpt.adapter_state[name]) == 0
        assert torch.count_nonzero(state[name]) == state[name].numel()
    offsets = torch.cat([state["asa.patch_offset"].flatten(), state["asa.time_offset"]])
    assert (offsets.abs() <= 1.6 + 0.2).all() and ((offsets - offsets.round()).abs() >= 0.1 - 1e-6).all()
    assert all(torch.equal(out.backbone_state[k], v) for k, v in ckpt.backbone_state.items())
    assert out.extra["random_adapters_seed"] == 3
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_random_adapters_cli_keeps_an_existing_out_and_bounds_the_seed(tmp_path, capsys):
    """``--out`` naming an existing file (a trained checkpoint, or SRC itself) replaced it without a word (init asks
    for --force), and a seed past 64 bits ended in a ValueError traceback from torch's generator."""
    from conftest import micro_config

    from rap_deploy.checkpoint import new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.model.random_adapters import main

    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    src = save_checkpoint(ckpt, tmp_path / "trained.pt")
    before = src.read_bytes()
    assert main([str(src), "--out", str(src)]) == 2
    assert "--force" in capsys.readouterr().err and src.read_bytes() == before
    assert main([str(src), "--out", str(tmp_path / "r.pt"), "--seed", str(2**70)]) == 2
    assert "--seed" in capsys.readouterr().err and not (tmp_path / "r.pt").exists()
    assert main([str(src), "--out", str(src), "--force"]) == 0 and src.read_bytes() != before


def test_attention_cost_script_times_both_branches(capsys):
    """``python -m rap_deploy.model.asa_cost``: an evaluation's blocks take the fused kernel (scores within float
    rounding of the written-out ones), a search's one-query blocks the written-out one either way (the same scores)."""
    import json

    from rap_deploy.model.asa_cost import main

    main(["--dim", "16", "--grid", "3", "--frames", "3", "--attn-dim", "8", "--heads", "2", "--topk", "2",
          "--queries", "32", "--videos", "16", "--candidates", "5", "--repeats", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    evaluation, search = result["cases"]["evaluation"], result["cases"]["search"]
    assert evaluation["block"] == [32, 16] and search["block"] == [1, 16] and result["cpu"]
    assert evaluation["max_abs_diff"] <= TOL and search["max_abs_diff"] == 0.0
    assert all(c["fused_ms"] > 0 and c["written_out_ms"] > 0 and c["ratio"] > 0 for c in (evaluation, search))


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--heads", "x"], ["--attn-dim", "6", "--heads", "4"]])
def test_attention_cost_script_refuses_bad_sizes(argv, capsys):
    from rap_deploy.model.asa_cost import main

    with pytest.raises(SystemExit) as refused:
        main([*argv, "--queries", "1", "--videos", "1", "--candidates", "1"])
    assert refused.value.code == 2 and "error: " in capsys.readouterr().err

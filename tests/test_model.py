"""The RAP model: identity at init, frozen backbone, gradient flow, the sampler, top-k, checkpoints, init/info."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import micro_config, randomize_adapters
from typer.testing import CliRunner

from rap_deploy.atomic import sha256_file
from rap_deploy.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from rap_deploy.cli.app import app
from rap_deploy.config import PRESETS
from rap_deploy.errors import UsageError
from rap_deploy.model.asa import trilinear_warp
from rap_deploy.model.clip_loader import BackboneSpec
from rap_deploy.tokenizer import tokenize


def _frames(b=3, t=4, s=32, seed=0):
    return torch.randn(b, t, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _text(model, texts=("a red circle moves left", "a blue square", "green triangle appears")):
    ids, eot = tokenize(texts, model.config.tokenizer)
    return model.encode_text(torch.from_numpy(ids), torch.from_numpy(eot))


@pytest.mark.parametrize("preset", PRESETS)
def test_identity_at_init_equals_frozen_clip_meanp(preset):
    from rap_deploy.model_summary import preset_changes_for

    config = micro_config(**preset_changes_for(preset, "rap-micro"))
    _, micro_model = new_checkpoint(config, BackboneSpec.parse("rap-micro", "none"), seed=0)
    assert preset == "default" or (config.asa_dim, config.lorm_rank) == (32, 2)  # rap-micro's joint width is 32
    frames = _frames()
    with torch.no_grad():
        video_emb, *rerank = micro_model.encode_video(frames)
        per_frame = micro_model.clip.encode_image(frames.flatten(0, 1), normalize=True).view(3, 4, -1)
        meanp = F.normalize(per_frame.mean(1), dim=-1)
        assert (video_emb - meanp).abs().max() <= 1e-5
        text = _text(micro_model)
        sim = micro_model.asa_similarity(text, *rerank)
        assert (sim - text @ meanp.T).abs().max() <= 1e-5


def test_a_sequence_first_vision_transformer_runs_as_a_batch_first_one(micro_model):
    """open_clip's transformer may run sequence-first (``batch_first=False``, its blocks' attention then takes and
    gives ``[N, B, D]``); the MLP branch is batch-first either way. Only the attention output is transposed back:
    the MLP's was transposed too, and LoRM reshaped it as another layout (or the run failed)."""
    randomize_adapters(micro_model, seed=2)
    frames = _frames()
    with torch.no_grad():
        batch_first = micro_model.encode_video(frames)
        transformer = micro_model.clip.visual.transformer
        transformer.batch_first = False
        for block in transformer.resblocks:
            block.attn.batch_first = False
        seq_first = micro_model.encode_video(frames)
        # The adapters change the embeddings, so LoRM's reading of the layout shows.
        assert (micro_model.clip.encode_image(frames.flatten(0, 1), normalize=True).view(3, 4, -1)
                - batch_first[1]).abs().max() > 0  # the adapters are not the identity
    # Float rounding only (asa_tokens come from patch tokens rounded to fp16, where 1e-7 can flip a rounding).
    assert all((a - b).abs().max() <= 1e-4 for a, b in zip(batch_first, seq_first, strict=True))


def test_text_encoder_matches_open_clip(micro_model):
    texts = ["a red circle", "two blue squares move up"]
    ids, eot = tokenize(texts, micro_model.config.tokenizer)
    with torch.no_grad():
        ours = micro_model.encode_text(torch.from_numpy(ids), torch.from_numpy(eot))
        ref = micro_model.clip.encode_text(torch.from_numpy(ids).long(), normalize=True)
    assert (ours - ref).abs().max() <= 1e-6


def test_text_embedding_depends_only_on_the_tokens_up_to_eot(micro_model):
    """Under the causal mask a query's embedding is read at its EOT: what follows never matters, so engines may run
    ``trim_tokens`` (the text graph's dynamic ``tokens`` axis)."""
    from rap_deploy.engines.blocks import trim_tokens

    ids, eot = tokenize(["a red circle", "two blue squares move up and then shrink"], micro_model.config.tokenizer)
    short = trim_tokens(ids, eot)
    assert short.shape == (2, int(eot.max()) + 1) and short.shape[1] < ids.shape[1]
    noisy = ids.copy()
    gen = np.random.default_rng(0)
    for row, e in enumerate(eot):
        noisy[row, e + 1:] = gen.integers(1, 40000, ids.shape[1] - e - 1)
    with torch.no_grad():
        full, cut, changed = (micro_model.encode_text(torch.from_numpy(x), torch.from_numpy(eot))
                              for x in (ids, short, noisy))
    assert (full - cut).abs().max() <= 1e-6 and (full - changed).abs().max() <= 1e-6


def test_padded_frames_are_masked(micro_model):
    frames = _frames(b=1)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    with torch.no_grad():
        v_masked, f, p, a = micro_model.encode_video(frames, mask)
        assert f[0, 2:].abs().max() == 0 and p[0, 2:].abs().max() == 0 and a[0, 2:].abs().max() == 0
        assert a[0, :2].abs().min(-1).values.max() > 0
        per_frame = micro_model.clip.encode_image(frames[0, :2], normalize=True)
        assert (v_masked[0] - F.normalize(per_frame.mean(0), dim=-1)).abs().max() <= 1e-5


def _nonzero_model(**changes):
    from rap_deploy.model.random_adapters import randomize_adapters as nonzero_adapters

    _, model = new_checkpoint(micro_config(**changes), BackboneSpec.parse("rap-micro", "none"), seed=0)
    return nonzero_adapters(model, seed=1).eval()


def test_padding_a_video_leaves_its_similarities_unchanged_with_nonzero_adapters():
    """With non-zero LoRM factors, ASA weights and fractional offsets: what padded frames hold never matters, and a
    video of 2 frames padded to the model's 4 scores as it does in a 2-frame model with the same adapters (LoRM's
    per-frame factors U cut to 2 rows): the warp clamps time to the video's own frames, attention never reaches a
    padded key, pooling averages the real frames only."""
    model = _nonzero_model()
    short = _nonzero_model(frames=2)
    state = {k: v[:2] if k.endswith(("u_scale", "u_shift")) else v for k, v in model.adapter_state_dict().items()}
    short.load_state_dict(state, strict=False)
    frames = _frames(b=2)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    other = frames.clone()
    other[0, 2:] = _frames(b=1, t=2, seed=9)[0] * 4  # other content in the padded frames
    with torch.no_grad():
        text = _text(model)
        outs = model.encode_video(frames, mask), model.encode_video(other, mask)
        assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))
        sims = [model.asa_similarity(text, *out[1:]) for out in outs]
        assert torch.equal(sims[0], sims[1])
        own = short.encode_video(frames[:1, :2])
        assert (outs[0][0][:1] - own[0]).abs().max() <= 1e-6
        assert (sims[0][:, :1] - short.asa_similarity(text, *own[1:])).abs().max() <= 1e-6
        assert (sims[0] - text @ outs[0][0].T).abs().max() > 1e-3  # the ASA term is not the identity here


def test_embeddings_do_not_depend_on_the_batch_and_repeat_exactly():
    """A video's outputs and a text's embedding are the same alone as in any batch (texts up to float rounding: a
    batch runs to its longest query), and a second run gives the same bits (fp32, CPU)."""
    from rap_deploy.engines.blocks import trim_tokens

    model = _nonzero_model()
    texts = ["a red circle", "two blue squares move up and then shrink", "green"]
    frames = _frames(b=3)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])

    def embed(batch):
        ids, eot = tokenize(batch, model.config.tokenizer)
        return model.encode_text(torch.from_numpy(trim_tokens(ids, eot)), torch.from_numpy(eot))

    with torch.no_grad():
        together, text = model.encode_video(frames, mask), embed(texts)
        alone = [model.encode_video(frames[i:i + 1], mask[i:i + 1]) for i in range(3)]
        for j, out in enumerate(together):
            assert (torch.cat([a[j] for a in alone]) - out).abs().max() <= 1e-6
        assert (torch.cat([embed([t]) for t in texts]) - text).abs().max() <= 1e-6
        sim = model.asa_similarity(text, *together[1:])
        cols = torch.cat([model.asa_similarity(text, *a[1:]) for a in alone], dim=1)
        assert (sim - cols).abs().max() <= 1e-6
        again = model.encode_video(frames, mask)
        assert all(torch.equal(a, b) for a, b in zip(together, again, strict=True))
        assert torch.equal(model.asa_similarity(embed(texts), *again[1:]), sim)


@pytest.mark.parametrize("variant, selection", [("rap", "text"), ("rap", "saliency"), ("rap_light", "text")])
def test_an_all_padded_video_scores_zero_in_half_precision(variant, selection):
    """A video without a real frame has a zero embedding in fp32; in fp16 (the PyTorch fp16 engine) F.normalize's
    eps rounds to 0 and 0/0 made its video_emb and its ASA scores NaN. Both precisions give zeros, with trained
    (non-zero) adapters too: ASA's output projection has a bias, which gave such a video the score
    text · bias/|bias| (reproduced: -0.48 … 0.06 with random adapters) where stage 1 and meanP give 0."""
    from rap_deploy.model.random_adapters import randomize_adapters as nonzero_adapters

    config = micro_config(variant=variant, asa_selection=selection)
    _, model = new_checkpoint(config, BackboneSpec.parse("rap-micro", "none"), seed=0)
    nonzero_adapters(model, seed=1)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    for dtype in (torch.float32, torch.float16):
        half = model.to(dtype).eval()
        with torch.no_grad():
            out = half.encode_video(_frames(b=2).to(dtype), mask.to(dtype))
            sim = half.asa_similarity(_text(half), *out[1:])
        assert all(bool(torch.isfinite(o).all()) for o in out), dtype
        assert out[0][1].abs().max() == 0 and out[0][0].norm() > 0.99, dtype
        assert bool(torch.isfinite(sim).all()) and sim[:, 1].abs().max() == 0, dtype


def test_backbone_frozen_and_adapters_receive_gradients(micro_model):
    model = micro_model.train()
    assert not model.clip.training
    randomize_adapters(model, seed=3, std=0.1)
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(not p.requires_grad for p in model.clip.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    ids, eot = tokenize(["a red circle", "a blue square", "a green star"], model.config.tokenizer)
    sim = model.similarity(_frames(), None, torch.from_numpy(ids), torch.from_numpy(eot))
    labels = torch.arange(3)
    loss = (F.cross_entropy(sim * 10, labels) + F.cross_entropy(sim.T * 10, labels)) / 2
    loss.backward()
    named = dict(model.named_parameters())
    for name in ["lorm_attn.0.u_scale", "lorm_attn.0.v_scale", "lorm_mlp.1.u_shift", "lorm_mlp.1.v_shift",
                 "asa.patch_offset", "asa.time_offset", "asa.q_proj.weight", "asa.k_proj.weight",
                 "asa.v_proj.weight", "asa.out_proj.weight"]:
        grad = named[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.clip.parameters())
    opt.step()
    for k, v in model.clip.state_dict().items():
        assert torch.equal(v, before[k]), k


def _reference_trilinear(volume, gamma, delta):
    """Direct per-position trilinear interpolation with clamped coordinates (the definition, no tricks)."""
    v, h, t, hp, wp, c = volume.shape
    out = torch.zeros_like(volume)

    def lerp_idx(pos, n):
        pos = min(max(pos, 0.0), n - 1.0)
        i0 = int(math.floor(pos))
        i1 = min(i0 + 1, n - 1)
        return i0, i1, pos - i0

    for hh in range(h):
        for tt in range(t):
            t0, t1, wt = lerp_idx(tt + float(delta[hh]), t)
            for r in range(hp):
                r0, r1, wr = lerp_idx(r + float(gamma[hh, 0]), hp)
                for col in range(wp):
                    c0, c1, wc = lerp_idx(col + float(gamma[hh, 1]), wp)
                    acc = 0
                    for ti, wti in ((t0, 1 - wt), (t1, wt)):
                        for ri, wri in ((r0, 1 - wr), (r1, wr)):
                            for ci, wci in ((c0, 1 - wc), (c1, wc)):
                                acc = acc + wti * wri * wci * volume[:, hh, ti, ri, ci]
                    out[:, hh, tt, r, col] = acc
    return out


@pytest.mark.parametrize("gamma,delta", [
    ([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [0.0, 0.0, 0.0]),
    ([[0.3, -0.7], [1.5, 2.25], [-3.6, 0.5]], [0.4, -1.3, 2.8]),
    ([[7.0, -9.5], [-0.01, 0.99], [4.5, -4.5]], [-6.2, 9.9, 0.0]),  # far out of range
])
def test_trilinear_warp_matches_reference(gamma, delta):
    vol = torch.randn(2, 3, 4, 3, 5, 2, generator=torch.Generator().manual_seed(0))
    g, d = torch.tensor(gamma), torch.tensor(delta)
    got = trilinear_warp(vol, g, d)
    assert (got - _reference_trilinear(vol, g, d)).abs().max() < 1e-5


def test_trilinear_warp_matches_grid_sample_border():
    vol = torch.randn(1, 2, 5, 4, 6, 3, generator=torch.Generator().manual_seed(1))
    gamma, delta = torch.tensor([[0.25, -1.75], [2.5, 0.6]]), torch.tensor([1.2, -0.4])
    got = trilinear_warp(vol, gamma, delta)
    for h in range(2):
        x = vol[:, h].permute(0, 4, 1, 2, 3)  # N,C,D,H,W
        t, hp, wp = x.shape[2:]
        zz, yy, xx = torch.meshgrid(torch.arange(t) + delta[h], torch.arange(hp) + gamma[h, 0],
                                    torch.arange(wp) + gamma[h, 1], indexing="ij")
        grid = torch.stack([xx / (wp - 1) * 2 - 1, yy / (hp - 1) * 2 - 1, zz / (t - 1) * 2 - 1], -1)[None]
        ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
        assert (got[:, h] - ref.permute(0, 2, 3, 4, 1)).abs().max() < 1e-5


def test_topk_selects_highest_text_similarity(micro_model):
    asa = micro_model.asa
    gen = torch.Generator().manual_seed(0)
    patches = F.normalize(torch.randn(2, 4, 16, 32, generator=gen), dim=-1)
    query = F.normalize(torch.randn(3, 32, generator=gen), dim=-1)
    idx = asa.select(query, patches)
    assert idx.shape == (3, 2, 4, asa.topk)
    for q in range(3):
        for v in range(2):
            for t in range(4):
                scores = [float(query[q] @ patches[v, t, p]) for p in range(16)]
                best = sorted(range(16), key=lambda p: -scores[p])[: asa.topk]
                assert set(idx[q, v, t].tolist()) == set(best)


def test_saliency_selection_is_query_independent():
    from rap_deploy.model.clip_loader import load_clip
    from rap_deploy.model.rap import RAPModel

    model = RAPModel(load_clip(BackboneSpec.parse("rap-micro", "none")), micro_config(asa_selection="saliency"))
    randomize_adapters(model, seed=2)
    with torch.no_grad():
        _, f, p, a = model.encode_video(_frames(b=2))
        text = _text(model)
        sim = model.asa_similarity(text, f, p, a)
        cond = model.asa.conditioned_embedding(text, f, p, a)
    assert cond.shape[0] == 1 and sim.shape == (3, 2)


def test_asa_chunking_is_exact(micro_model):
    randomize_adapters(micro_model, seed=4)
    with torch.no_grad():
        _, *rerank = micro_model.encode_video(_frames(b=5))
        text = _text(micro_model)
        full = micro_model.asa_similarity(text, *rerank, query_chunk=64, video_chunk=64)
        chunked = micro_model.asa_similarity(text, *rerank, query_chunk=2, video_chunk=2)
    assert (full - chunked).abs().max() < 1e-6


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_asa", [True, False])
def test_a_half_precision_model_scores_in_fp32(half, use_asa):
    """The PyTorch fp16 engine (the whole model in half precision) still computes each score's last reduction in
    fp32: fp16 scores are coarse enough to tie the ground truth with other videos, and a tie ranks in its favour
    (DESIGN.md §6): on an H200 the fp16 engine's R@5 read 3 points above the fp32 reference's. The CPU runs both
    half types."""
    from rap_deploy.model_encoder import ModelEncoder

    _, model = new_checkpoint(micro_config(use_asa=use_asa), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=1)
    frames = _frames(b=40, seed=3).numpy()
    ids, eot = tokenize([f"a red circle moves left {i}" for i in range(40)], model.config.tokenizer)
    scores = {}
    for dtype in (torch.float32, half):
        enc = ModelEncoder(model, dtype=dtype)
        assert next(enc.model.parameters()).dtype == dtype
        rerank = enc.encode_video(frames, np.ones(frames.shape[:2], np.float32))[1:]
        with torch.no_grad():
            text = enc.model.encode_text(torch.from_numpy(ids), torch.from_numpy(eot))
            tensors = [torch.from_numpy(x).to(dtype) for x in rerank]
            scores[dtype] = enc.model.asa_similarity(text, *tensors)
        model = model.float()
    low = scores[half]
    assert low.dtype == torch.float32
    assert not torch.equal(low, low.to(half).float())  # not rounded to the half type on the way out
    assert all(len(row.unique()) == len(row) for row in low)  # no tied scores within a query's row
    assert (low - scores[torch.float32]).abs().max() < 0.05


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=5)
    from rap_deploy.checkpoint import checkpoint_from_model

    path = save_checkpoint(checkpoint_from_model(model, ckpt, extra={"epoch": 3}), tmp_path / f"c{suffix}")
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.extra["epoch"] == 3
    rebuilt = loaded.build_model()
    frames = _frames(b=2)
    with torch.no_grad():
        a, b = model.encode_video(frames), rebuilt.encode_video(frames)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    if suffix == ".pt":
        torch.load(path, weights_only=True)  # plain tensors and data only


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_equal_checkpoints_are_equal_files_whatever_their_names(tmp_path, suffix):
    """The demo's step records compare sha256: a remade checkpoint with the same tensors must not redo later steps."""
    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    first = save_checkpoint(ckpt, tmp_path / f"init{suffix}").read_bytes()
    again = save_checkpoint(ckpt, tmp_path / "sub" / f"other-name{suffix}").read_bytes()
    assert first == again


@pytest.mark.parametrize("written, named", [(".safetensors", ".pt"), (".pt", ".safetensors")])
def test_a_checkpoint_with_the_other_suffix_is_read_as_what_it_is(tmp_path, written, named):
    """A renamed checkpoint was refused as 'neither a PyTorch file nor safetensors' or as damaged (exit 1)."""
    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    path = save_checkpoint(ckpt, tmp_path / f"c{written}").rename(tmp_path / f"renamed{named}")
    loaded = load_checkpoint(path)
    assert loaded.config == ckpt.config and loaded.adapter_state.keys() == ckpt.adapter_state.keys()


def test_a_compressed_checkpoint_larger_than_memory_is_refused_before_loading(tmp_path, monkeypatch):
    """torch.load inflates deflated archive entries into buffers of their declared sizes (a small file could fill
    any amount of memory): the declared sizes are checked against the available memory first."""
    import zipfile

    import psutil

    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    plain = save_checkpoint(ckpt, tmp_path / "plain.pt")
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    expanded = sum(i.file_size for i in zipfile.ZipFile(packed).infolist())

    class Small:
        available = expanded  # 80 % of it holds neither the inflated entries nor the plain file (read whole)

    assert load_checkpoint(plain).config == ckpt.config
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Small)
    with pytest.raises(UsageError, match="plain.pt .read whole.*more than"):
        load_checkpoint(plain)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran on the compressed archive"))
    with pytest.raises(UsageError, match="packed.pt .a compressed archive.*more than"):
        load_checkpoint(packed)


def test_a_recorded_checkpoint_that_cannot_be_read_here_is_not_usable(tmp_path, monkeypatch):
    """An export manifest's checkpoint path (untrusted) whose name is too long, or that lies in a folder this user
    may not enter (an export copied from another user), raised OSError: build-engine failed instead of comparing with
    the export's graphs."""
    from rap_deploy import checkpoint as checkpoint_module
    from rap_deploy.checkpoint import recorded_checkpoint

    assert recorded_checkpoint(str(tmp_path / ("x" * 300 + ".pt")), None) is None
    readable = tmp_path / "c.pt"
    readable.write_bytes(b"weights")

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint_module, "sha256_file", unreadable)
    assert recorded_checkpoint(str(readable), "0" * 64) is None


def _archive_claiming_zip_version_14_2(good: bytes, break_pickle: bool) -> bytes:
    """``good`` (a torch.save archive) with its first directory entry claiming zip version 14.2 (zipfile raises
    NotImplementedError, torch ignores it) and, with ``break_pickle``, its data.pkl's opcodes overwritten."""
    import io
    import struct
    import zipfile

    data = bytearray(good)
    if break_pickle:
        info = next(i for i in zipfile.ZipFile(io.BytesIO(good)).infolist() if i.filename.endswith("data.pkl"))
        name_len, extra_len = struct.unpack("<HH", good[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        data[start + 2:start + 12] = b"\xff" * 10
    entry = data.find(b"PK\x01\x02")
    data[entry + 6:entry + 8] = (142).to_bytes(2, "little")
    return bytes(data)


def test_an_archive_whose_directory_claims_an_unknown_zip_version(tmp_path):
    """zipfile raises NotImplementedError for such a directory entry (a damaged byte): the compressed-size check let
    it through for a file torch.load reads, and explaining why torch.load failed let it through for a damaged one."""
    from rap_deploy.errors import CheckFailedError

    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    good = save_checkpoint(ckpt, tmp_path / "good.pt").read_bytes()
    readable = tmp_path / "readable.pt"
    readable.write_bytes(_archive_claiming_zip_version_14_2(good, break_pickle=False))
    assert load_checkpoint(readable).config == ckpt.config
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(_archive_claiming_zip_version_14_2(good, break_pickle=True))
    with pytest.raises(CheckFailedError, match="damaged.pt is a damaged or truncated PyTorch archive"):
        load_checkpoint(damaged)


class Sneaky:
    """An arbitrary Python object: loading it needs weights_only=False."""


def test_pickled_object_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "rapdeploy.checkpoint", "obj": Sneaky()}, path)
    with pytest.raises(UsageError, match="pickled Python objects"):
        load_checkpoint(path)
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2 and "pickled" in result.output


def test_info_refuses_the_options_a_checkpoint_ignores(micro_checkpoint):
    """``rapdeploy info CKPT --frames 64 --variant rap_light`` printed the checkpoint's 4 frames and variant rap,
    exit 0: the options only build the model described when no checkpoint is given. They are now refused (exit 2)."""
    runner = CliRunner()
    for extra, named in ((["--frames", "64", "--variant", "rap_light"], "--variant, --frames"),
                         (["--clip", "ViT-B-32"], "--clip"), (["--preset", "paper"], "--preset")):
        result = runner.invoke(app, ["info", str(micro_checkpoint), *extra])
        assert result.exit_code == 2, result.output
        assert named in result.output and "described as it was saved" in result.output
    plain = runner.invoke(app, ["info", str(micro_checkpoint), "--json"])
    assert plain.exit_code == 0 and json.loads(plain.output)["frames"] == 4, plain.output


def test_init_and_info_cli(tmp_path):
    out = tmp_path / "m.pt"
    runner = CliRunner()
    result = runner.invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--asa-dim", "16", "--heads", "2",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    both = runner.invoke(app, ["init", "--backbone", str(tmp_path / "b.safetensors"), "--pretrained", "openai",
                               "--out", str(tmp_path / "both.pt")])  # --pretrained was silently dropped
    assert both.exit_code == 2 and "either --backbone or --pretrained" in both.output, both.output
    result = runner.invoke(app, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["variant"] == "rap" and info["clip"] == "rap-micro" and info["frames"] == 4
    assert 0 < info["trainable_params"] < info["total_params"]
    assert len(info["asa_offsets"]["gamma"]) == len(info["asa_offsets"]["delta"]) == 2  # one per head
    assert min(abs(d) for d in info["asa_offsets"]["delta"]) > 0.1  # non-zero start, off the interpolation kink
    assert info["lorm_modulation"] == {"max_scale_change": 0.0, "max_shift": 0.0}  # identity at init
    table = runner.invoke(app, ["info", str(out)])
    assert "δ per head (frames)" in table.output and "γ per head" in table.output
    paper = runner.invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--preset", "paper", "--heads", "2",
                                "--out", str(tmp_path / "p.pt"), "--json"])
    assert paper.exit_code == 0, paper.output
    assert json.loads(paper.output)["config"]["asa_dim"] == 32 and json.loads(paper.output)["config"]["lorm_rank"] == 2
    light = tmp_path / "light.pt"
    made = runner.invoke(app, ["init", "--clip", "rap-micro", "--variant", "rap_light", "--out", str(light)])
    assert made.exit_code == 0, made.output
    light_info = json.loads(runner.invoke(app, ["info", str(light), "--json"]).output)
    assert light_info["asa_params"] == 0 and light_info["lorm_params"] > 0
    bad = runner.invoke(app, ["init", "--clip", "rap-micro", "--pretrained", "/nope/w.pt", "--out", str(out),
                              "--force"])
    assert bad.exit_code == 2 and "/nope/w.pt" in bad.output
    (tmp_path / "weights").mkdir()  # a folder was 'does not exist'
    folder = runner.invoke(app, ["info", "--clip", "rap-micro", "--pretrained", str(tmp_path / "weights")])
    assert folder.exit_code == 2 and "weights is not a regular file (a folder" in folder.output, folder.output
    before = out.read_bytes()  # an existing checkpoint (it may be trained) is never replaced unasked
    again = runner.invoke(app, ["init", "--clip", "rap-micro", "--variant", "rap_light", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output and out.read_bytes() == before
    forced = runner.invoke(app, ["init", "--clip", "rap-micro", "--variant", "rap_light", "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(runner.invoke(app, ["info", str(out), "--json"]).output)["asa_params"] == 0


def test_a_topk_over_the_patch_count_is_refused_when_the_model_is_made(tmp_path):
    """``init --topk 17`` on rap-micro (16 patches per frame) wrote a checkpoint (exit 0) that every later command
    refused as 'damaged or edited' (exit 1): the model now refuses it when it is made (exit 2, naming the limit)."""
    runner = CliRunner()
    out = tmp_path / "k.pt"
    over = runner.invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--topk", "17", "--out", str(out)])
    assert over.exit_code == 2 and "asa_topk 17 exceeds the 16 patches" in over.output, over.output
    assert not out.exists()
    light = runner.invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--topk", "17", "--variant",
                                "rap_light", "--out", str(out)])  # no ASA head: k is unused
    assert light.exit_code == 0, light.output
    full = runner.invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--topk", "16", "--out", str(out),
                               "--force"])
    assert full.exit_code == 0, full.output
    assert runner.invoke(app, ["info", str(out)]).exit_code == 0


def test_a_checkpoint_whose_topk_exceeds_the_patch_count_is_refused_as_edited():
    """The model's top-k check (model.rap.topk_excess) refuses a checkpoint that says k 17 on rap-micro's 16
    patches per frame as damaged or edited (exit 1), before the model is made (no advice to pass --topk)."""
    from rap_deploy.errors import CheckFailedError

    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    ckpt.config = ckpt.config.replace(asa_topk=17)
    with pytest.raises(CheckFailedError, match="asa_topk 17 exceeds the 16 patches per frame of rap-micro; the file is "
                                               "damaged or was edited$"):
        ckpt.build_model()


@pytest.mark.parametrize("tower, changes, said", [
    ("text_cfg", {"pool_type": "eos", "eos_id": 2}, "does not take CLIP's tokens (49,408 token ids, pooling 'eos'"),
    ("text_cfg", {"vocab_size": 1000}, "does not take CLIP's tokens (1,000 token ids"),
    ("text_cfg", {"no_causal_mask": True}, "no causal mask"),
    ("vision_cfg", {"pool_type": "avg"}, "pools its image embedding by 'avg'")])
def test_a_backbone_rap_would_read_otherwise_than_clip_is_refused(tmp_path, tower, changes, said):
    """open_clip's MetaCLIP 2 'worldwide' ViTs (another tokenizer, pooled at its EOS id) passed the backbone checks,
    so their text embeddings of rapdeploy's CLIP-BPE ids were silently meaningless; a smaller vocabulary failed on
    the first text with an IndexError traceback; a ViT pooling its patch tokens ('avg') got frame embeddings from
    its class token, not CLIP's image embedding. Such a backbone is refused when the model is made (exit 2)."""
    import open_clip

    from rap_deploy.model.clip_loader import PACKAGED_CONFIGS, register_packaged_configs

    register_packaged_configs()
    cfg = json.loads((PACKAGED_CONFIGS / "rap-micro.json").read_text())
    cfg[tower].update(changes)
    name = f"rap-test-{tower}-" + "-".join(sorted(changes))
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    result = CliRunner().invoke(app, ["info", "--clip", name, "--pretrained", "none"])
    assert result.exit_code == 2 and said in result.output, result.output


def test_init_from_local_weights_file(tmp_path, micro_model):
    """The real-user path: --pretrained FILE loads those weights through open_clip."""
    weights = tmp_path / "clip.pt"
    torch.save(micro_model.clip.state_dict(), weights)
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(app, ["init", "--clip", "rap-micro", "--pretrained", str(weights), "--frames", "4",
                                      "--asa-dim", "16", "--heads", "2", "--reference-backbone", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt.backbone.kind == "file" and ckpt.backbone_state is None and len(ckpt.backbone.sha256) == 64
    rebuilt = ckpt.build_model()
    for k, v in micro_model.clip.state_dict().items():
        assert torch.equal(rebuilt.clip.state_dict()[k], v), k


def test_a_moved_or_changed_referenced_backbone_names_the_checkpoint_and_keeps_the_adapters(tmp_path, micro_model):
    """A --reference-backbone checkpoint whose weights file was moved was told to 'pass an existing file, a tag or
    'none'' (options export and train do not have), and one whose file changed to 're-run `rapdeploy init`' (a new,
    untrained checkpoint: the trained adapters lost); neither named the checkpoint. Both are one line (exit 2) naming
    the checkpoint, the file and the recorded sha256 to put back."""
    weights = tmp_path / "clip.pt"
    torch.save(micro_model.clip.state_dict(), weights)
    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", str(weights)), embed_backbone=False)
    path = save_checkpoint(ckpt, tmp_path / "ref.pt")
    recorded = ckpt.backbone.sha256[:12]
    weights.rename(tmp_path / "moved.pt")
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{path} references the backbone weights file {weights}, which does not exist" in text, text
    assert recorded in text and "pass an existing file" not in text
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in micro_model.clip.state_dict().items()}
    torch.save(state, weights)
    with pytest.raises(UsageError, match=f"which is not the file it was made with .*{recorded}") as info:
        load_checkpoint(path).build_model()
    assert "rapdeploy init" not in str(info.value)
    assert sha256_file(weights)[:12] not in str(info.value)  # the file's own hash is not told
    (tmp_path / "moved.pt").replace(weights)
    assert load_checkpoint(path).build_model() is not None


@pytest.mark.parametrize("command", ["init", "info", "train"])
def test_a_pretrained_file_rewritten_while_the_command_reads_it_says_to_run_that_command_again(
        command, tmp_path, micro_model, synth_root, monkeypatch):
    """load_clip's sha256 check compares the file with the hash BackboneSpec.parse took moments before in the same
    command, so a difference means another process wrote the file meanwhile. Its advice was 'restore it or re-run
    `rapdeploy init`': nothing to restore (the file was given as it is), and init is not the command for info or a
    training run. It now says what happened and to run the command again."""
    from rap_deploy import bounds

    weights = tmp_path / "clip.pt"
    torch.save(micro_model.clip.state_dict(), weights)
    checked = BackboneSpec.parse("rap-micro", str(weights)).sha256
    original = bounds.check_memory

    def rewriting(*args, **kwargs):  # why: load_clip checks memory after parse hashed the file, before its own hash
        torch.save({k: v + 0.5 if v.is_floating_point() else v for k, v in micro_model.clip.state_dict().items()},
                   weights)
        return original(*args, **kwargs)

    monkeypatch.setattr(bounds, "check_memory", rewriting)
    args = {"init": ["init", "--clip", "rap-micro", "--pretrained", str(weights), "--out", str(tmp_path / "m.pt")],
            "info": ["info", "--clip", "rap-micro", "--pretrained", str(weights)],
            "train": ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--clip", "rap-micro",
                      "--pretrained", str(weights), "--frames", "4", "--max-train-videos", "8", "--max-test-videos",
                      "4", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]}[command]
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, (result.exception, text)
    assert f"backbone weights file {weights} changed while this command read it (sha256 {checked[:12]}…" in text, text
    assert "run the command again once nothing writes the file" in text and "rapdeploy init" not in text, text


def test_a_checkpoint_is_only_written_under_a_checkpoint_suffix(tmp_path, micro_checkpoint, monkeypatch):
    """init --out model.ckpt wrote a checkpoint that export reads (by its content) but verify, index and serve refuse
    ('not an engine folder, an export folder or a checkpoint') and build-engine ignored as its export's reference."""
    import rap_deploy.checkpoint as checkpoint_module
    from rap_deploy.engines.loader import load_engine

    def no_model(*args, **kwargs):  # why: init refuses the name before it builds (loads) the model
        raise AssertionError("init built the model before refusing --out")

    monkeypatch.setattr(checkpoint_module, "new_checkpoint", no_model)
    out = tmp_path / "model.ckpt"
    result = CliRunner().invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--out", str(out)])
    assert result.exit_code == 2 and "model.pt" in result.output and not out.exists(), result.output
    other = tmp_path / "copy.ckpt"  # why: a checkpoint under another name is what verify and index refuse
    other.write_bytes(micro_checkpoint.read_bytes())
    with pytest.raises(UsageError, match="not an engine folder, an export folder or a checkpoint"):
        load_engine(other)


def test_a_referenced_tag_that_cannot_be_loaded_names_the_checkpoint_not_init_options(tmp_path, monkeypatch):
    """A --reference-backbone checkpoint of an open_clip tag whose weights are not here got load_clip's init advice,
    'offline, pass a local weights file: --pretrained /path/to/weights' (export, train and info have no such option),
    without naming the checkpoint."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"))
    ckpt.backbone, ckpt.backbone_state = BackboneSpec("rap-micro", "tag", "openai"), None  # no such tag: unloadable
    path = save_checkpoint(ckpt, tmp_path / "tag.pt")
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{path} names its backbone, open_clip's rap-micro pretrained=openai" in text, text
    assert "--pretrained" not in text and "--embed-backbone" in text


def test_a_checkpoint_of_another_open_clip_config_of_its_clip_is_refused(tmp_path):
    """A checkpoint records open_clip's config of its CLIP (clip_model_cfg), which nothing read: the model was built
    from the config the installed open_clip (or rapdeploy's packaged configs) gives the name, so a name whose config
    changed where no weight shape does (QuickGELU here) built another network than the one trained, silently."""
    import open_clip

    from rap_deploy.model.clip_loader import PACKAGED_CONFIGS, register_packaged_configs

    register_packaged_configs()
    name = "rap-test-changed-config"
    cfg = json.loads((PACKAGED_CONFIGS / "rap-micro.json").read_text())
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    ckpt, _ = new_checkpoint(micro_config(clip=name), BackboneSpec.parse(name, "none"))
    path = save_checkpoint(ckpt, tmp_path / "gelu.pt")
    assert load_checkpoint(path).build_model() is not None  # the same config: loads
    (tmp_path / f"{name}.json").write_text(json.dumps({**cfg, "quick_gelu": True}))
    open_clip.add_model_config(tmp_path / f"{name}.json")  # another open_clip / rapdeploy: the name now QuickGELU
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{path} was made with an open_clip config of {name} that differs" in text and "(in quick_gelu)" in text


def test_weights_whose_position_embedding_open_clip_cannot_resize_do_not_fit(tmp_path, micro_model):
    """open_clip resizes a read state dict's visual position embedding to the model's grid; one it cannot resize
    failed in torch.cat, and the message blamed reading the file ('torch.load(weights_only=True) cannot read it; it
    is not a backbone weights file written by rapdeploy'). It is weights that do not fit --clip (exit 2)."""
    state = micro_model.clip.state_dict()
    state["visual.positional_embedding"] = torch.zeros(20, 32)  # 19 patch positions: no square grid
    weights = tmp_path / "other-grid.pt"
    torch.save(state, weights)
    result = CliRunner().invoke(app, ["info", "--clip", "rap-micro", "--pretrained", str(weights)])
    assert result.exit_code == 2 and "other-grid.pt does not fit open_clip model rap-micro" in result.output, \
        result.output


def test_weights_missing_many_keys_are_listed_by_whole_names(tmp_path, micro_model):
    """The message quoted torch's load_state_dict error cut at 240 characters, mid-name ('"visual.ln_pre.w)'); it
    now lists the first missing keys by whole names and says how many more there are."""
    state = micro_model.clip.state_dict()
    names = list(state)[:30]
    for name in names:
        del state[name]
    weights = tmp_path / "partial.pt"
    torch.save(state, weights)
    result = CliRunner().invoke(app, ["info", "--clip", "rap-micro", "--pretrained", str(weights)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    listed = f"the weights lack 30 of the model's keys: {', '.join(names[:5])} and 25 more)"
    assert f"partial.pt does not fit open_clip model rap-micro ({listed}; pass that model's weights" in text, text


def test_embedded_weights_that_do_not_fit_name_keys_and_shapes(micro_model):
    """A checkpoint's embedded backbone with a tensor of another shape raised torch's RuntimeError, whose first line
    (all the checkpoint's message kept) is 'Error(s) in loading state_dict for CLIP:'; the refusal now names the
    tensor and both shapes, and the keys the model does not have."""
    from rap_deploy.model.clip_loader import load_clip

    state = micro_model.clip.state_dict()
    state["text_projection"] = torch.zeros(3, 5)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UsageError) as info:
        load_clip(BackboneSpec.parse("rap-micro", "none"), state_dict=state)
    shape = tuple(micro_model.clip.text_projection.shape)
    assert str(info.value) == ("embedded backbone weights do not fit rap-micro: the weights hold 1 key the model does "
                               "not have: extra.weight; they hold 1 tensor of another shape: text_projection is "
                               f"[3, 5] in the file, [{shape[0]}, {shape[1]}] in the model")


def test_a_quickgelu_model_name_runs_a_weights_file_with_quickgelu(tmp_path, micro_model, monkeypatch):
    """A weights file cannot say its activation (a tag can: OpenAI's pick QuickGELU); the README sends OpenAI weights
    from a file to the '-quickgelu' model name, and that name must give the file's model QuickGELU."""
    import open_clip
    from open_clip import factory

    from rap_deploy.model.clip_loader import PACKAGED_CONFIGS, register_packaged_configs

    readme = (PACKAGED_CONFIGS.parents[1] / "README.md").read_text()
    assert "--clip ViT-B-32-quickgelu" in readme
    register_packaged_configs()
    assert open_clip.get_model_config("ViT-B-32-quickgelu").get("quick_gelu") is True
    # open_clip's model registry is process-wide: the test model registered below must leave with the test, or a
    # later test sees 'rap-micro-quickgelu' among open_clip's models (the TorchScript refusal then names it)
    monkeypatch.setattr(factory, "_MODEL_CONFIG_PATHS", [*factory._MODEL_CONFIG_PATHS])
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))
    cfg = {**json.loads((PACKAGED_CONFIGS / "rap-micro.json").read_text()), "quick_gelu": True}
    (tmp_path / "rap-micro-quickgelu.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "rap-micro-quickgelu.json")
    weights = tmp_path / "clip.pt"
    torch.save(micro_model.clip.state_dict(), weights)
    for name, act in (("rap-micro", "GELU"), ("rap-micro-quickgelu", "QuickGELU")):
        ckpt, model = new_checkpoint(micro_config(clip=name), BackboneSpec.parse(name, str(weights)))
        assert type(model.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == act
        rebuilt = load_checkpoint(save_checkpoint(ckpt, tmp_path / f"{name}.pt")).build_model()
        assert type(rebuilt.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == act


def test_a_compressed_weights_file_larger_than_memory_is_refused_before_open_clip_loads_it(tmp_path, micro_model,
                                                                                             monkeypatch):
    """``--pretrained FILE`` reaches torch.load inside open_clip, which inflates deflated entries to their declared
    sizes: the sizes are checked against the available memory first, as for checkpoints (exit 2)."""
    import zipfile

    import psutil

    plain = tmp_path / "clip.pt"
    torch.save({**micro_model.clip.state_dict(), "zeros": torch.zeros(5_000_000)}, plain)  # 20 MB, inflated
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))

    class Small:  # too little for the inflated archive (checks allow 80 %), enough for the model and the file
        available = int(sum(i.file_size for i in zipfile.ZipFile(packed).infolist()) / 0.8) - 1

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Small)
    result = CliRunner().invoke(app, ["info", "--clip", "rap-micro", "--pretrained", str(packed)])
    assert result.exit_code == 2 and "packed.pt (a compressed archive" in result.output, result.output


def test_backbone_weights_holding_nan_are_refused_naming_the_file(tmp_path, micro_model):
    """A --pretrained file (or a checkpoint's embedded backbone) holding NaN loaded: init and info succeeded, and
    every embedding was NaN later with nothing naming the file. It is refused at load (exit 1)."""
    from rap_deploy.checkpoint import checkpoint_from_model
    from rap_deploy.errors import CheckFailedError

    state = micro_model.clip.state_dict()
    state["visual.proj"] = state["visual.proj"].clone()
    state["visual.proj"][0, 0] = float("nan")
    weights = tmp_path / "nan-clip.pt"
    torch.save(state, weights)
    result = CliRunner().invoke(app, ["info", "--clip", "rap-micro", "--pretrained", str(weights)])
    assert result.exit_code == 1 and "nan-clip.pt" in result.output and "visual.proj" in result.output, result.output
    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    ckpt = checkpoint_from_model(micro_model, ckpt)
    ckpt.backbone_state["visual.proj"] = state["visual.proj"]
    save_checkpoint(ckpt, tmp_path / "nan-backbone.pt")
    with pytest.raises(CheckFailedError, match="nan-backbone.pt.*NaN or infinite values: visual.proj"):
        load_checkpoint(tmp_path / "nan-backbone.pt").build_model()


def test_backbone_tensors_holding_nan_are_counted_and_named_whole(tmp_path, micro_model):
    """The NaN refusal showed a list repr of the first 3 tensors (['visual.proj', ...]) and no count; it now says how
    many tensors hold NaN or inf and names 3 of them, then 'and N more'."""
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.model.clip_loader import load_clip

    state = micro_model.clip.state_dict()
    names = [n for n, p in micro_model.clip.named_parameters() if p.is_floating_point()][:5]
    for name in names:
        state[name] = torch.full_like(state[name], float("inf"))
    listed = f"5 tensors hold NaN or infinite values: {', '.join(names[:3])} and 2 more"
    with pytest.raises(UsageError) as embedded:
        load_clip(BackboneSpec.parse("rap-micro", "none"), state_dict=state)
    assert str(embedded.value) == f"embedded backbone weights: {listed}"
    torch.save(state, tmp_path / "inf-clip.pt")
    with pytest.raises(CheckFailedError) as file:
        load_clip(BackboneSpec.parse("rap-micro", str(tmp_path / "inf-clip.pt")))
    assert str(file.value) == (f"backbone weights file {tmp_path / 'inf-clip.pt'}: {listed}; it is damaged or was "
                               "saved from a diverged run: copy or download it again")


def test_a_long_load_error_is_cut_at_a_space_and_says_how_much_is_left_out(tmp_path):
    """A weights file's refusal quoted any other exception's text cut at 240 characters, mid-name; it is now cut at a
    space (no name shown in part) and says how many characters were left out."""
    from rap_deploy.model.weights_errors import weights_file_error

    names = [f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(10)]
    error = weights_file_error(tmp_path / "w.pt", "rap-micro", ValueError(f"shape of {', '.join(names)} differs"))
    said = str(error)
    quoted = said.split("(ValueError: ", 1)[1].split("); pass that model's weights", 1)[0]
    shown, left_out = quoted.split(" … (")
    assert len(shown) <= 240 and all(word.rstrip(",") in [*names, "shape", "of"] for word in shown.split()), said
    full = f"shape of {', '.join(names)} differs"
    assert left_out == f"{len(full) - len(shown)} more characters)" and full.startswith(shown + " "), said


def test_a_pretrained_tag_brings_the_normalisation_it_was_trained_with(monkeypatch, micro_model):
    """ViT-L-14's laion2b_s32b_b82k weights were trained on pixels normalised by 0.5, but init, train and info set
    CLIP's mean/std whatever the tag: every frame reached the backbone off its training distribution, silently. A
    tag's mean/std/interpolation now come from open_clip's pretrained config (the openai tags' are CLIP's own)."""
    import dataclasses

    import open_clip

    from rap_deploy import checkpoint as checkpoint_module
    from rap_deploy.config import PreprocessConfig
    from rap_deploy.model.clip_loader import pretrained_preprocess

    laion = pretrained_preprocess(BackboneSpec("ViT-L-14", "tag", "laion2b_s32b_b82k"))
    assert laion["mean"] == laion["std"] == (0.5, 0.5, 0.5)
    openai = pretrained_preprocess(BackboneSpec("ViT-B-32", "tag", "openai"))
    assert dataclasses.replace(PreprocessConfig(), **openai) == PreprocessConfig()  # the default recipe's, unchanged
    assert pretrained_preprocess(BackboneSpec("rap-micro", "none")) == {}
    monkeypatch.setattr(checkpoint_module, "load_clip", lambda spec, quick_gelu=None: micro_model.clip)
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda clip, tag: {"mean": (0.5,) * 3, "std": (0.5,) * 3})
    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec("rap-micro", "tag", "a-tag"))  # what init and train run
    assert ckpt.config.preprocess == PreprocessConfig(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_a_weights_file_that_cannot_fit_beside_the_model_is_refused_before_loading(tmp_path, micro_model,
                                                                                   monkeypatch):
    """open_clip reads a --pretrained file whole beside the model it creates, but only the model was checked against
    the available memory: a wrong, far larger file (another CLIP's weights) was read until the process was killed.
    The file's size counts too (exit 2, naming the file)."""
    import psutil

    from rap_deploy.bounds import clip_weight_bytes
    from rap_deploy.model.clip_loader import clip_model_config

    weights = tmp_path / "big.pt"
    torch.save({**micro_model.clip.state_dict(), "padding": torch.zeros(2_000_000)}, weights)
    model_bytes = clip_weight_bytes(clip_model_config("rap-micro"))

    class Small:  # room for the model and then some, not for the 8 MB file beside it (checks allow 80 %)
        available = int((model_bytes + 4_000_000) / 0.8)

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Small)
    result = CliRunner().invoke(app, ["info", "--clip", "rap-micro", "--pretrained", str(weights)])
    assert result.exit_code == 2 and "with its weights file" in result.output and "big.pt" in result.output, \
        result.output
    assert CliRunner().invoke(app, ["info", "--clip", "rap-micro", "--pretrained", "none"]).exit_code == 0


def test_info_vit_b32_parameter_budget():
    result = CliRunner().invoke(app, ["info", "--clip", "ViT-B-32", "--pretrained", "none", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["trainable_params"] == 412_684  # the ASA key bias (128) never trains
    assert abs(info["total_params"] - 151e6) < 2e6
    assert info["trainable_params"] / info["total_params"] < 0.015
    paper = CliRunner().invoke(app, ["info", "--clip", "ViT-B-32", "--pretrained", "none", "--preset", "paper",
                                     "--json"])
    assert paper.exit_code == 0, paper.output
    count = json.loads(paper.output)["trainable_params"]
    assert count == 1_125_004 and abs(count / 1.06e6 - 1) <= 0.10  # the paper's 1.06M within 10 %


def test_adapter_weights_naming_backbone_tensors_are_refused(tmp_path):
    """An adapter_state entry named 'clip.…' was loaded into the frozen backbone (model.load_state_dict takes every
    key of the model), replacing weights the checkpoint's backbone reference (a file's sha256) vouches for: reproduced,
    a zero 'clip.visual.proj' in adapter_state gave a model whose backbone projection was zero."""
    from rap_deploy.errors import CheckFailedError

    ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    ckpt.adapter_state["clip.visual.proj"] = torch.zeros_like(model.clip.visual.proj)
    save_checkpoint(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckFailedError, match=r"edited.pt: its adapter weights hold 1 backbone tensor "
                                               r"\(clip.visual.proj\), which would replace the frozen CLIP's"):
        load_checkpoint(tmp_path / "edited.pt").build_model()


def test_adapter_weights_that_do_not_fit_are_listed_by_whole_names(tmp_path):
    """Adapters of another shape were named by torch's error cut to its first two lines and 240 characters (measured:
    4 reshaped tensors showed the first and no count), missing or extra keys as list reprs of 5 without a count; the
    refusal now names tensors (both shapes) and keys whole, then 'and N more'."""
    from rap_deploy.errors import CheckFailedError

    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    names = [k for k, v in ckpt.adapter_state.items() if v.dim() == 2][:4]
    reshaped = dict(ckpt.adapter_state) | {k: torch.zeros(7, 3) for k in names}
    with pytest.raises(CheckFailedError) as info:
        dataclasses.replace(ckpt, adapter_state=reshaped, source="edited.pt").build_model()
    shown = ", ".join(f"{k} is [7, 3] in the file, {list(ckpt.adapter_state[k].shape)} in the model" for k in names[:3])
    assert str(info.value) == ("checkpoint edited.pt: adapter weights do not fit the config (the weights hold 4 "
                               f"tensors of another shape: {shown} and 1 more); the file is damaged or was edited")

    dropped = list(ckpt.adapter_state)[:8]
    partial = {k: v for k, v in ckpt.adapter_state.items() if k not in dropped} | {"extra.weight": torch.zeros(1)}
    with pytest.raises(CheckFailedError) as info:
        dataclasses.replace(ckpt, adapter_state=partial, source="edited.pt").build_model()
    assert str(info.value) == ("checkpoint edited.pt: adapter weights do not fit the config (the weights lack 8 of "
                               f"the model's keys: {', '.join(dropped[:5])} and 3 more; they hold 1 key the model "
                               "does not have: extra.weight); the file is damaged or was edited")


def test_a_checkpoint_with_nan_adapters_is_damaged(tmp_path):
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    name = next(k for k, v in ckpt.adapter_state.items() if v.is_floating_point())
    ckpt.adapter_state[name] = torch.full_like(ckpt.adapter_state[name], float("nan"))
    save_checkpoint(ckpt, tmp_path / "nan.pt")
    with pytest.raises(CheckFailedError, match="hold NaN or infinite values"):
        load_checkpoint(tmp_path / "nan.pt").build_model()


def test_adapter_tensors_holding_nan_are_counted_and_named_whole(tmp_path):
    """The refusal of adapters holding NaN showed a list repr of the first 3 tensors (['lorm_attn.0.u_scale', ...])
    and no count; it names 3 whole, then 'and N more', and says how many of the adapter tensors hold them."""
    from rap_deploy.errors import CheckFailedError

    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    names = [k for k, v in ckpt.adapter_state.items() if v.is_floating_point()][:5]
    for name in names:
        ckpt.adapter_state[name] = torch.full_like(ckpt.adapter_state[name], float("nan"))
    save_checkpoint(ckpt, tmp_path / "nan.pt")
    with pytest.raises(CheckFailedError) as info:
        load_checkpoint(tmp_path / "nan.pt").build_model()
    assert str(info.value) == (f"checkpoint {tmp_path / 'nan.pt'}: adapter weights {', '.join(names[:3])} and 2 more "
                               f"hold NaN or infinite values (5 of its {len(ckpt.adapter_state)} adapter tensors); "
                               "the file is damaged, or the run that wrote it diverged")


def test_a_moved_backbone_of_a_default_train_checkpoint_blames_no_flag_never_typed(tmp_path, micro_model):
    """train references a --backbone/--pretrained file by default (no flag), yet a checkpoint whose file moved said
    'the checkpoint holds only its adapters (--reference-backbone)', a flag the user never passed. The line now says
    which commands make one: train by default (unless --embed-backbone), init with --reference-backbone."""
    weights = tmp_path / "clip.pt"
    torch.save(micro_model.clip.state_dict(), weights)
    ckpt, _ = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", str(weights)), embed_backbone=False)
    path = save_checkpoint(ckpt, tmp_path / "best.pt")
    weights.rename(tmp_path / "moved.pt")
    result = CliRunner().invoke(app, ["info", str(path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "which does not exist" in text, text
    assert "(--reference-backbone)" not in text, text
    assert "train stores a backbone by reference unless given --embed-backbone" in text, text


def test_weights_of_another_width_name_the_tensors_and_the_clip_they_fit(tmp_path, micro_model):
    """rap-micro's weights given with --clip rap-tiny showed open_clip's assertion ('AssertionError: text pos_embed
    width changed!'): no tensor, no shape, no hint of the right --clip. The refusal now names the tensors of another
    shape (in the file, in the model; a few, then a count), read without the file's data, and the packaged --clip
    the file fits."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in micro_model.clip.state_dict().items()}
    weights = tmp_path / "micro.safetensors"
    save_file(state, str(weights))
    result = CliRunner().invoke(app, ["info", "--clip", "rap-tiny", "--pretrained", str(weights)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "micro.safetensors does not fit open_clip model rap-tiny" in text, text
    assert "pos_embed width changed" not in text and "AssertionError" not in text, text
    assert "positional_embedding is [32, 32] in the file, [32, 128] in the model" in text and " more)" in text, text
    assert text.endswith("pass --clip rap-micro, the model they fit, or rap-tiny's own weights"), text
    state["positional_embedding"] = torch.zeros(32, 48)  # one tensor of another width: no packaged model fits
    torch.save(state, tmp_path / "one.pt")
    result = CliRunner().invoke(app, ["info", "--clip", "rap-micro", "--pretrained", str(tmp_path / "one.pt")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "positional_embedding is [32, 48] in the file, [32, 32] in the model);" in text
    assert text.endswith("pass that model's weights, or the --clip they were trained for"), text

"""The training stage: loss, schedule, batching, the loop (resume, bad videos), torchrun data parallelism, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import held_folder_lock, micro_config, randomize_adapters
from typer.testing import CliRunner

from rap_deploy.checkpoint import load_checkpoint, save_checkpoint
from rap_deploy.cli.app import app
from rap_deploy.errors import UsageError
from rap_deploy.tokenizer import tokenize
from rap_deploy.train.batches import epoch_batches
from rap_deploy.train.losses import batch_loss, symmetric_info_nce
from rap_deploy.train.schedule import cosine_lr, warmup_steps_for

MICRO_CLI = ["--clip", "rap-micro", "--pretrained", "none", "--frames", "4", "--topk", "4", "--heads", "2",
             "--asa-dim", "16", "--rank", "2"]


def _micro_options(synth_root, out, cache, **kw):
    from rap_deploy.train.loop import TrainOptions

    base = dict(dataset="msrvtt", data_root=str(synth_root), out=str(out), clip="rap-micro", pretrained="none",
                frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=2, batch_size=8, lr=5e-3,
                warmup=1, seed=3, max_test_videos=8, cache_dir=str(cache), top_m=4, epoch_unit="video")
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory):
    """One decoded-frame cache for the whole module (each video is decoded once)."""
    return tmp_path_factory.mktemp("frames")


def _metrics_without_timing(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds"), r.pop("eval_seconds", None)
    return rows


def _adapters(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).adapter_state


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----------------------------------------------------------------------------------------------- pure pieces


def test_few_optimizer_steps_reduce_the_loss(micro_model):
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(6, 4, 3, 32, 32, generator=gen)
    texts = [f"a {c} {s} moves {d}" for c, s, d in zip("red blue green red blue green".split(),
                                                       "circle square circle diamond triangle square".split(),
                                                       "left right up down left up".split(), strict=True)]
    ids, eot = (torch.from_numpy(x) for x in tokenize(texts, micro_model.config.tokenizer))
    backbone_before = {k: v.clone() for k, v in micro_model.backbone_state_dict().items()}
    micro_model.train()
    assert not micro_model.clip.training
    params = [p for n, p in micro_model.named_parameters() if p.requires_grad]
    assert params and all(not n.startswith("clip.") for n, p in micro_model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = batch_loss(micro_model, frames, None, ids, eot, torch.arange(6))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.3, losses
    after = micro_model.backbone_state_dict()
    assert all(torch.equal(backbone_before[k], after[k]) for k in after)


def test_patch_alignment_is_the_mean_over_valid_frames_of_the_best_patch():
    from rap_deploy.train.losses import patch_alignment

    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    patches = torch.tensor([[[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.8, 0.6]]]])  # [V=1, T=2, P=2, d=2]
    frames = torch.ones(1, 2, 2)
    # text 0: best patches 1.0 (frame 0) and 0.8 (frame 1); text 1: 0.8 and 1.0
    assert torch.allclose(patch_alignment(text, frames, patches), torch.tensor([[0.9], [0.9]]))
    frames[0, 1] = 0.0  # a padded frame (zero row) does not count
    assert torch.allclose(patch_alignment(text, frames, patches), torch.tensor([[1.0], [0.8]]))


def test_selection_loss_reaches_lorm_through_the_patch_tokens(micro_model):
    """The ASA selection is discrete, so the contrastive loss gives its scores no gradient; the selection loss does,
    and only where there is a selection (a model without an ASA head trains as before)."""
    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    gen = torch.Generator().manual_seed(4)
    frames = torch.randn(4, 4, 3, 32, 32, generator=gen)
    ids, eot = (torch.from_numpy(x) for x in tokenize(["a red circle", "a blue square", "a green diamond",
                                                        "a red triangle"], micro_model.config.tokenizer))
    randomize_adapters(micro_model, seed=2)

    def lorm_grads(model, weight):
        model.zero_grad()
        loss = batch_loss(model, frames, None, ids, eot, torch.arange(4), selection_loss_weight=weight)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()
                             if "lorm" in n and p.grad is not None}

    plain_loss, plain = lorm_grads(micro_model, 0.0)
    aligned_loss, aligned = lorm_grads(micro_model, 1.0)
    assert plain and aligned_loss > plain_loss
    assert max(float((aligned[n] - plain[n]).abs().max()) for n in plain) > 1e-4
    _, light = new_checkpoint(micro_config(use_asa=False), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(light, seed=2)
    assert lorm_grads(light, 0.0)[0] == lorm_grads(light, 1.0)[0]


def test_info_nce_masks_duplicate_videos():
    gen = torch.Generator().manual_seed(1)
    sim = torch.randn(4, 4, generator=gen).clamp(-1, 1)
    ids = torch.tensor([0, 1, 0, 2])  # positions 0 and 2 hold the same video
    base = symmetric_info_nce(sim, 10.0, ids)
    changed = sim.clone()
    changed[0, 2] = changed[2, 0] = 1.0  # a duplicate positive scored high must not count as a negative
    assert torch.allclose(symmetric_info_nce(changed, 10.0, ids), base)
    assert not torch.allclose(symmetric_info_nce(changed, 10.0), symmetric_info_nce(sim, 10.0))
    # Without duplicates the loss is the textbook symmetric cross-entropy.
    ref = (torch.nn.functional.cross_entropy(sim * 10, torch.arange(4))
           + torch.nn.functional.cross_entropy(sim.T * 10, torch.arange(4))) / 2
    assert torch.allclose(symmetric_info_nce(sim, 10.0, torch.arange(4)), ref)


def test_param_groups_decay_and_offset_multiplier(micro_model):
    from rap_deploy.train.params import param_groups as _param_groups

    groups = _param_groups(micro_model, weight_decay=0.1, offset_lr_mult=20.0)
    names = {id(p): n for n, p in micro_model.named_parameters()}
    by_group = [sorted(names[id(p)] for p in g["params"]) for g in groups]
    assert by_group[2] == ["asa.patch_offset", "asa.time_offset"] and groups[2]["lr_mult"] == 20.0
    assert groups[0]["weight_decay"] == 0.1 and all(n.endswith("weight") or ".v_" in n or ".u_" in n
                                                     for n in by_group[0])
    assert groups[1]["weight_decay"] == 0.0 and all(n.endswith("bias") for n in by_group[1])
    assert "asa.k_proj.bias" not in {n for g in by_group for n in g}  # the key bias cannot change attention

    # LoRM's factors get their own group only at a multiplier other than 1 (an older run's optimizer state resumes)
    faster = _param_groups(micro_model, weight_decay=0.1, offset_lr_mult=20.0, lorm_lr_mult=5.0)
    lorm = sorted(names[id(p)] for p in faster[3]["params"])
    assert len(faster) == 4 and faster[3]["lr_mult"] == 5.0 and faster[3]["weight_decay"] == 0.1
    assert lorm == sorted(n for n, p in micro_model.named_parameters() if n.startswith("lorm_")) and lorm
    assert not set(lorm) & {names[id(p)] for g in faster[:3] for p in g["params"]}

    from rap_deploy.train.params import freeze_offsets_at_zero as _freeze_offsets_at_zero

    _freeze_offsets_at_zero(micro_model)
    frozen = _param_groups(micro_model, weight_decay=0.1, offset_lr_mult=20.0)
    assert len(frozen) == 2 and float(micro_model.asa.time_offset.abs().max()) == 0.0
    assert float(micro_model.asa.patch_offset.abs().max()) == 0.0


def test_recipe_check_ignores_options_that_change_nothing():
    """A run without LoRM trains the same at any LoRM learning rate, and a run of zero epochs at any optimizer
    setting, so their folders are not refused for one."""
    from rap_deploy.train.loop import TrainOptions
    from rap_deploy.train.run_state import option_mismatch

    stored = TrainOptions(dataset="msrvtt", data_root="d", out="o")
    assert option_mismatch(stored, micro_config(), {"lorm_lr_mult": 5.0}) == ("lorm_lr_mult", 1.0, 5.0)
    assert option_mismatch(stored, micro_config(use_lorm=False), {"lorm_lr_mult": 5.0}) is None
    assert option_mismatch(stored, micro_config(use_lorm=False), {"lr": 0.5}) == ("lr", 1e-3, 0.5)
    # the zero-shot row trains no epoch: optimizer numbers cannot change it, the evaluation's still can
    zero_shot = TrainOptions(dataset="msrvtt", data_root="d", out="o", epochs=0)
    assert option_mismatch(zero_shot, micro_config(), {"epochs": 0, "lorm_lr_mult": 5.0, "lr": 0.5}) is None
    assert option_mismatch(zero_shot, micro_config(), {"epochs": 0, "top_m": 7}) == ("top_m", 100, 7)
    assert option_mismatch(zero_shot, micro_config(), {"epochs": 1, "lr": 0.5}) == ("epochs", 0, 1)


def _rec(epoch, t2v, v2t):
    return {"epoch": epoch, "t2v": dict(zip(("R1", "R5", "R10"), t2v, strict=True)),
            "v2t": dict(zip(("R1", "R5", "R10"), v2t, strict=True))}


def test_selection_rule_sums_six_recalls_and_prefers_the_later_epoch():
    from rap_deploy.train.selection import best_of, improves, selection_score

    flat = [_rec(e, (10, 50, 70), (12, 40, 60)) for e in (1, 2, 3)]
    assert selection_score(flat[0]) == 242.0
    assert best_of(flat)["epoch"] == 3  # a plateau keeps the latest weights, never freezes at epoch 1
    # R@1 never rises, but R@5/R@10 and the other direction do: the later epoch wins.
    assert best_of([_rec(1, (20, 50, 70), (20, 50, 70)), _rec(2, (20, 60, 80), (20, 55, 75))])["epoch"] == 2
    # A higher R@1 alone does not win against a larger sum.
    assert best_of([_rec(1, (30, 50, 60), (20, 40, 50)), _rec(2, (25, 60, 80), (20, 45, 60))])["epoch"] == 2
    assert best_of([_rec(1, (30, 60, 80), (20, 45, 60)), _rec(2, (25, 60, 80), (20, 45, 60))])["epoch"] == 1
    # Epochs without evaluation are not candidates; an empty history has no best epoch.
    assert best_of([_rec(1, (5, 5, 5), (5, 5, 5)), {"epoch": 2, "loss": 0.1}])["epoch"] == 1
    assert best_of([])["epoch"] is None and not improves(None, 0.0) and improves(1.0, 1.0)


def test_selection_rule_ties_are_judged_on_the_recalls_not_on_their_float_sum():
    """Two epochs whose six recalls sum to the same value are a tie (the later epoch wins), though their float sums
    differ: on MSR-VTT's 1,000 queries 36.4+43.7+88.2+42.0+56.1+80.7 and 36.3+…+42.1+… summed to 347.1 and
    347.09999999999997, so the earlier epoch was kept."""
    from rap_deploy.metrics import metrics_from_ranks
    from rap_deploy.train.selection import best_of, selection_score

    def record(epoch, t2v, v2t, queries=(1000, 1000)):
        out = {"epoch": epoch}
        for direction, (r1, r5, r10), n in (("t2v", t2v, queries[0]), ("v2t", v2t, queries[1])):
            out[direction] = metrics_from_ranks([1] * r1 + [5] * (r5 - r1) + [10] * (r10 - r5) + [11] * (n - r10))
        return out

    def float_sum(r):
        return sum(r[d][k] for d in ("t2v", "v2t") for k in ("R1", "R5", "R10"))

    first, second = record(1, (364, 437, 882), (420, 561, 807)), record(2, (363, 437, 882), (421, 561, 807))
    assert float_sum(first) != float_sum(second)  # what the rule compared
    assert selection_score(first) == selection_score(second) == 347.1
    assert best_of([first, second])["epoch"] == 2 and best_of([second, first])["epoch"] == 1
    better = record(3, (364, 437, 882), (421, 561, 807))
    assert best_of([first, second, better])["epoch"] == 3
    # Other query counts per direction (MSVD: every caption is a t2v query): 3/9 of t2v R@1 is 1/3 of v2t R@1.
    mixed = [record(1, (3, 6, 9), (1, 2, 3), (9, 3)), record(2, (6, 6, 9), (0, 2, 3), (9, 3))]
    assert selection_score(mixed[0]) == selection_score(mixed[1]) == 400.0 and best_of(mixed)["epoch"] == 2
    assert selection_score(_rec(1, (10, 50, 70), (12, 40, 60))) == 242.0  # a record without query counts


def test_epoch_unit_auto_visits_every_caption_of_multi_caption_data():
    from rap_deploy.train.run_data import resolve_epoch_unit

    assert resolve_epoch_unit("auto", np.repeat(np.arange(4), 5)) == "caption"
    assert resolve_epoch_unit("auto", np.arange(4)) == "video"
    assert resolve_epoch_unit("video", np.repeat(np.arange(4), 5)) == "video"


def test_warmup_then_cosine():
    total, warm = 100, warmup_steps_for(0.1, 100)
    assert warm == 10 and warmup_steps_for(5, 100) == 5
    lrs = [cosine_lr(s, total, 1e-3, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] < 1e-6


def test_epoch_batches_are_deterministic_and_one_caption_per_video():
    item_video = np.repeat(np.arange(10), 3)  # 10 videos, 3 captions each
    a = epoch_batches(item_video, 4, seed=0, epoch=1)
    assert a == epoch_batches(item_video, 4, seed=0, epoch=1)
    assert a != epoch_batches(item_video, 4, seed=0, epoch=2)
    assert len(a) == 2 and all(len(b) == 4 for b in a)  # 10 videos // 4, last partial batch dropped
    flat = [i for b in a for i in b]
    assert len(set(item_video[flat].tolist())) == len(flat)  # no video twice in an epoch
    captions = epoch_batches(item_video, 5, seed=0, epoch=1, unit="caption")
    assert len(captions) == 6


# ----------------------------------------------------------------------------------------------- the loop


def test_kill_and_resume_equals_straight_run(synth_root, frame_cache, tmp_path, monkeypatch):
    from rap_deploy.train import loop, training_run

    opts = dict(max_train_videos=16, max_test_videos=6)
    straight = loop.train_rap(_micro_options(synth_root, tmp_path / "straight", frame_cache, **opts), progress=False)
    assert straight["complete"] and straight["steps"] == 4  # 16 videos // 8 per batch × 2 epochs

    # Kill: the process dies in the middle of epoch 2 (after epoch 1's files were written).
    real_step, calls = training_run._step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the second step of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training_run, "_step", dying_step)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        loop.train_rap(_micro_options(synth_root, killed, frame_cache, **opts), progress=False)
    assert [r["epoch"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())] == [1]
    monkeypatch.setattr(training_run, "_step", real_step)

    resumed = loop.train_rap(None, progress=False, resume=killed)
    assert resumed["resumed_after_epoch"] == 1 and resumed["complete"]
    assert _metrics_without_timing(killed) == _metrics_without_timing(tmp_path / "straight")
    assert _max_diff(_adapters(killed / "last.pt"), _adapters(tmp_path / "straight" / "last.pt")) <= 1e-6
    assert _max_diff(_adapters(killed / "best.pt"), _adapters(tmp_path / "straight" / "best.pt")) <= 1e-6
    # Training moved the adapters (so the comparison above is not trivially true).
    assert float(_adapters(killed / "last.pt")["lorm_attn.0.v_scale"].abs().max()) > 1e-4


def test_short_run_moves_the_offsets_and_both_lorm_factors(synth_root, frame_cache, tmp_path):
    """LoRM's U (unit-scale init) and V (zero init) and the ASA offsets γ, δ all learn within a few steps."""
    from rap_deploy.train.loop import train_rap
    from rap_deploy.train.model_setup import source_checkpoint

    options = _micro_options(synth_root, tmp_path / "run", frame_cache, max_train_videos=16, max_test_videos=4,
                             epochs=2, warmup=0)
    start = {k: v.clone() for k, v in source_checkpoint(options, 4, 32)[1].adapter_state_dict().items()}
    summary = train_rap(options, progress=False)
    assert summary["steps"] == 4
    end = _adapters(tmp_path / "run" / "last.pt")

    def moved(suffix: str) -> float:
        return max(float((end[k] - start[k]).abs().max()) for k in end if k.endswith(suffix))

    for factor in ("u_scale", "v_scale", "u_shift", "v_shift"):
        assert moved(factor) > 1e-3, factor
    assert moved("patch_offset") > 1e-2 and moved("time_offset") > 1e-2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["offsets"]["delta"] == pytest.approx(end["asa.time_offset"].tolist(), abs=1e-6)
    assert rows[-1]["lorm"]["max_scale_change"] > 0 and len(rows[-1]["offsets"]["gamma"]) == 2
    assert summary["offsets_initial"]["delta"] == pytest.approx(start["asa.time_offset"].tolist(), abs=1e-6)


def test_identity_asa_evaluates_as_meanp(micro_model, synth_root, frame_cache):
    """The epoch-0 shortcut: an ASA head with a zero output projection scores every pair as meanP does (within float
    rounding), so the loop scores it as meanP without running the head on every pair."""
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.data.datasets import load_split
    from rap_deploy.model_encoder import ModelEncoder
    from rap_deploy.retrieval import encode_texts, encode_videos, full_similarity, meanp_similarity
    from rap_deploy.train.distributed import DistContext
    from rap_deploy.train.loop import TrainOptions, _asa_is_identity, evaluate_model

    split = load_split("msrvtt", synth_root, "test", max_frames=4)
    cache = FrameCache(frame_cache)
    encoder = ModelEncoder(micro_model)
    index = encode_videos(encoder, split, cache, progress=False)
    text = encode_texts(encoder, split.captions)
    assert _asa_is_identity(micro_model)
    uneven = encode_videos(encoder, split, cache, batch_size=5, progress=False)  # 5 + 5 + 2, each filled in place
    for name in ("video_emb", "frame_emb", "patch_tokens", "asa_tokens"):
        np.testing.assert_allclose(getattr(uneven, name), getattr(index, name), atol=2e-3)
    with pytest.raises(UsageError, match="the test split has no video to encode"):
        encode_videos(encoder, split.subset([]), cache, progress=False)
    assert np.abs(full_similarity(encoder, text, index, progress=False) - meanp_similarity(text, index)).max() <= 1e-6
    fast = evaluate_model(micro_model, split, cache, TrainOptions("msrvtt", "", "", top_m=4), DistContext(), False)
    assert fast["asa"] == fast["two_stage"] == fast["meanp"] and fast["videos"] == 12
    randomize_adapters(micro_model)
    assert not _asa_is_identity(micro_model)


def test_frozen_offsets_stay_at_zero(synth_root, frame_cache, tmp_path):
    from rap_deploy.train.loop import train_rap

    summary = train_rap(_micro_options(synth_root, tmp_path / "run", frame_cache, max_train_videos=8,
                                       max_test_videos=4, epochs=1, freeze_offsets=True), progress=False)
    end = _adapters(tmp_path / "run" / "last.pt")
    assert float(end["asa.patch_offset"].abs().max()) == 0 and float(end["asa.time_offset"].abs().max()) == 0
    assert float(end["asa.out_proj.weight"].abs().max()) > 0 and summary["steps"] == 1  # the rest trained


def test_corrupt_training_video_is_skipped_and_counted(synth_root, frame_cache, tmp_path):
    from rap_deploy.train.loop import train_rap

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "videos" / "video3.mp4").write_bytes(b"\x00not a video" * 50)
    summary = train_rap(_micro_options(root, tmp_path / "run", frame_cache, epochs=1), progress=False)
    assert [s["video_id"] for s in summary["skipped_videos"]] == ["video3"]
    assert summary["complete"] and summary["steps"] == 2  # 23 usable videos // 8
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["skipped_videos"][0]["reason"].startswith("cannot decode")
    # every metrics.jsonl line counts it too (a killed run has no summary.json yet)
    assert [r["train_skipped"] for r in _metrics_without_timing(tmp_path / "run")] == [1]


def test_torchrun_two_processes_match_one_process(synth_root, frame_cache, tmp_path):
    from rap_deploy.train.loop import train_rap

    # With the selection loss on, both of the loss's terms go through the distributed path.
    opts = dict(epochs=1, max_test_videos=4, lr=1e-2, warmup=0, selection_loss_weight=1.0)
    train_rap(_micro_options(synth_root, tmp_path / "one", frame_cache, **opts), progress=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--standalone", "-m",
           "rap_deploy.cli", "train", "--dataset", "msrvtt", "--data-root", str(synth_root), *MICRO_CLI,
           "--epochs", "1", "--batch-size", "8", "--lr", "1e-2", "--warmup", "0", "--seed", "3",
           "--max-test-videos", "4", "--top-m", "4", "--cache-dir", str(frame_cache), "--out", str(tmp_path / "two"),
           "--epoch-unit", "video", "--selection-loss-weight", "1",
           "--quiet", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["world_size"] == 2 and summary["steps"] == 3
    one, two = _adapters(tmp_path / "one" / "last.pt"), _adapters(tmp_path / "two" / "last.pt")
    # Summation order differs (all-reduce of two halves against one batch). Adam divides each step by the gradient's
    # own scale, so a weight whose gradient starts at exactly zero (q_proj: the output projection starts at zero)
    # carries the rounding further: measured 1.1e-5 on q_proj (max |w| 0.18), under 1.4e-6 everywhere else.
    assert one.keys() == two.keys()
    for k in one:
        assert float((one[k] - two[k]).abs().max()) <= 1e-5 + 1e-4 * float(one[k].abs().max()), k
    moved = max(float(v.abs().max()) for k, v in one.items() if k.endswith("v_shift"))
    assert moved > 1e-3  # LoRM's V starts at zero: the weights moved far more than the tolerance
    assert _metrics_without_timing(tmp_path / "one")[0]["loss"] == pytest.approx(
        _metrics_without_timing(tmp_path / "two")[0]["loss"], abs=1e-5)


def test_process_group_outwaits_rank_zero_working_alone(monkeypatch):
    """Rank 0 decodes the training set into the cache and runs every evaluation alone while the other ranks wait at a
    barrier. torch's default process-group timeout (NCCL 10 min, gloo 30 min) aborted them whenever that took longer
    (a cold cache of MSR-VTT's 9k training videos does); the group is now created with a timeout of hours."""
    import datetime

    import torch.distributed as dist

    from rap_deploy.train import distributed as D

    seen: dict = {}
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kwargs: seen.update(kwargs))
    ctx = D.setup("cpu")
    assert (ctx.world_size, ctx.rank, ctx.backend) == (2, 1, "gloo")
    assert seen.get("timeout", datetime.timedelta(0)) >= datetime.timedelta(hours=6)


# ----------------------------------------------------------------------------------------------- the CLI


def test_train_cli_end_to_end_and_resume(synth_root, frame_cache, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), *MICRO_CLI, "--out", str(run),
            "--epochs", "3", "--batch-size", "8", "--max-test-videos", "8", "--top-m", "4",
            "--cache-dir", str(frame_cache), "--quiet", "--epoch-unit", "video", "--lorm-lr-mult", "3"]
    first = runner.invoke(app, [*args, "--max-epochs-this-run", "1"])
    assert first.exit_code == 0, first.output
    assert "stopped after epoch 1 of 3" in first.output
    assert {"best.pt", "last.pt", "metrics.jsonl", "summary.json"} <= {p.name for p in run.iterdir()}

    bad = runner.invoke(app, ["train", "--resume", str(run), "--lr", "0.5"])
    assert bad.exit_code == 2 and "differs from the resumed run" in bad.output
    tampered = tmp_path / "tampered"  # an edited training state: one line, exit 1, nothing trained
    tampered.mkdir()
    ckpt = load_checkpoint(run / "last.pt")
    ckpt.extra["train_state"]["epoch"] = -100
    save_checkpoint(ckpt, tampered / "last.pt")
    res = runner.invoke(app, ["train", "--resume", str(tampered)])
    assert res.exit_code == 1 and "train_state.epoch -100" in res.output, res.output

    # --max-epochs-this-run belongs to the invocation that gave it, and --epoch-unit auto accepts what it resolved to
    second = runner.invoke(app, ["train", "--resume", str(run), "--epoch-unit", "auto", "--json", "--quiet"])
    assert second.exit_code == 0, second.output
    summary = json.loads(second.output)
    assert summary["complete"] and summary["resumed_after_epoch"] == 1
    assert summary["lorm_lr_mult"] == 3.0  # resumed with its own LoRM group and that group's optimizer state
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"loss", "lr", "seconds"} <= r.keys() and {"R1", "R5", "R10", "MnR"} <= r["t2v"].keys()
        assert r["v2t"]["queries"] == 8

    best = load_checkpoint(run / "best.pt")
    assert best.config == micro_config(context_length=32).replace(pretrained="none")
    assert best.backbone_state is not None  # a random backbone is embedded, so export can rebuild it
    model = best.build_model()
    assert model.parameter_counts()["trainable_params"] == summary["trainable_params"]
    assert best.extra["epoch"] == summary["best_epoch"]
    assert "train_state" not in best.extra and "train_state" in load_checkpoint(run / "last.pt").extra


def test_a_run_started_with_relative_folders_resumes_from_another_directory(synth_root, frame_cache, tmp_path,
                                                                             monkeypatch):
    """--data-root and --cache-dir given relative were stored as given in last.pt, so `train --resume RUN` from
    another directory read another dataset folder (here: none, exit 2) and cache; they are stored absolute now."""
    import os

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    first = runner.invoke(app, ["train", "--dataset", "msrvtt", "--data-root", os.path.relpath(synth_root), *MICRO_CLI,
                                "--cache-dir", os.path.relpath(frame_cache), "--out", str(run), "--epochs", "2",
                                "--max-epochs-this-run", "1", "--batch-size", "8", "--max-train-videos", "8",
                                "--max-test-videos", "4", "--top-m", "4", "--quiet"])
    assert first.exit_code == 0, first.output
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    second = runner.invoke(app, ["train", "--resume", str(run), "--quiet", "--json"])
    assert second.exit_code == 0 and json.loads(second.stdout)["complete"], second.output
    assert not (tmp_path / "elsewhere" / os.path.relpath(frame_cache, tmp_path)).exists()


def test_train_cli_usage_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["train", "--clip", "rap-micro", "--data-root", str(tmp_path)])
    assert missing.exit_code == 2 and "--dataset is required" in missing.output
    no_data = runner.invoke(app, ["train", "--dataset", "msrvtt", "--clip", "rap-micro", "--data-root",
                                  str(tmp_path), "--out", str(tmp_path / "run")])
    assert no_data.exit_code == 2 and "MSRVTT_train.9k.csv" in no_data.output
    assert not (tmp_path / "run").exists()  # a run that failed before writing anything leaves no empty folder
    nothing = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope")])  # a missing folder, said so
    assert nothing.exit_code == 2 and "does not exist" in nothing.output
    (tmp_path / "empty").mkdir()  # a folder without last.pt: the run stopped before its first epoch
    empty = runner.invoke(app, ["train", "--resume", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "no last.pt" in empty.output
    for command in (["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--clip", "rap-micro",
                     "--frames", "0"],
                    ["init", "--clip", "rap-micro", "--seed", str(10 ** 20), "--out", str(tmp_path / "c.pt")],
                    ["pretrain-backbone", "--text-weight", "inf", "--out", str(tmp_path / "b.safetensors")],
                    ["ablate", "--threads", "100000", "--world", str(tmp_path / "w")],
                    ["ablate", "--seeds", "0,1,0", "--world", str(tmp_path / "w")]):
        res = runner.invoke(app, command)
        named = next(c for c in command if c.startswith("--") and c not in ("--dataset", "--data-root", "--clip",
                                                                             "--out", "--world"))
        assert res.exit_code == 2 and named in res.output and "Traceback" not in res.output, (command, res.output)
    from rap_deploy.train.batches import epoch_generator

    epoch_generator(10 ** 14, 3)  # seed * 1_000_003 + epoch overflowed 64 bits: now taken modulo 2**63


@pytest.mark.parametrize("device", ["tpu", "cuda:1", "CPU"])
def test_train_device_other_than_auto_cpu_cuda_is_refused(tmp_path, device):
    """--device tpu or cuda:1 trained on the CPU without a word (only 'cuda' asked for a GPU); exit 2 now, for a new
    run and a resumed one, before any folder is made."""
    runner = CliRunner()
    for args in (["--dataset", "msrvtt", "--clip", "rap-micro", "--data-root", str(tmp_path),
                  "--out", str(tmp_path / "run")], ["--resume", str(tmp_path)]):
        res = runner.invoke(app, ["train", *args, "--device", device])
        assert res.exit_code == 2 and "--device" in res.stderr and "Traceback" not in res.output, res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value", [("--rank", "0"), ("--topk", "0"), ("--heads", "-2"),
                                           ("--asa-dim", "100000"), ("--workers", "-1")])
def test_train_size_errors_name_the_option_typed(tmp_path, option, value):
    """--rank 0 was refused as "'lorm_rank' must be >= 1" (--topk as 'asa_topk', --heads as 'asa_heads', --asa-dim
    as 'asa_dim', --workers as '--num-workers', an option that does not exist); the message names the option now."""
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--clip", "rap-micro", "--data-root", str(tmp_path),
                                   "--out", str(tmp_path / "run"), option, value])
    assert res.exit_code == 2 and res.stderr.startswith(f"error: {option} must be"), res.output


def test_train_backbone_and_pretrained_together_are_refused(tmp_path):
    """--backbone FILE --pretrained TAG trained on the backbone file and dropped --pretrained without a word; the two
    name the same thing, so giving both is exit 2 now."""
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--backbone",
                                   str(tmp_path / "b.safetensors"), "--pretrained", "openai",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "--backbone or --pretrained" in res.stderr, res.output


def test_train_out_that_is_a_file_says_so(tmp_path):
    """train --out FILE said 'cannot access FILE: File exists; check the path and its permissions'; it says the
    path is a file now (exit 2) and leaves it alone."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--clip", "rap-micro", "--data-root", str(tmp_path),
                                   "--out", str(a_file)])
    assert res.exit_code == 2 and f"--out {a_file} is a file" in res.stderr and a_file.read_text() == "x", res.output


def test_ablate_out_or_world_that_is_a_file_is_refused_before_the_world_is_made(tmp_path):
    """ablate --out FILE failed only after the world's synth and backbone pre-training (minutes on the demo's
    recipe), and --world FILE after starting synth; both are exit 2 before any step now."""
    runner = CliRunner()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for extra, option in ((["--world", str(tmp_path / "w"), "--out", str(a_file)], "ablation folder"),
                          (["--world", str(a_file)], "--world")):
        res = runner.invoke(app, ["ablate", "--tiny", "--seeds", "0", "--rows", "zero_shot", "--quiet", *extra])
        assert res.exit_code == 2 and option in res.stderr and "[run ]" not in res.output, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w" / "data").exists() and a_file.read_text() == "x"


def test_ablate_cli_tiny_table_and_rerun(tmp_path):
    runner = CliRunner()
    world, out = tmp_path / "world", tmp_path / "ablation"
    args = ["ablate", "--tiny", "--world", str(world), "--out", str(out), "--seeds", "0,1",
            "--rows", "zero_shot,offsets_zero,rap", "--quiet"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads((out / "ablation.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["zero_shot", "offsets_zero", "rap"]
    zero_shot, frozen, rap = result["rows"]
    assert zero_shot["n"] == 1 and frozen["n"] == rap["n"] == 2
    assert zero_shot["std"]["t2v"]["R1"] is None  # one run: no sample std (was 0.0)
    for row in (frozen, rap):
        r1 = [run["t2v"]["R1"] for run in row["runs"]]
        assert row["mean"]["t2v"]["R1"] == pytest.approx(np.mean(r1))
        assert row["std"]["t2v"]["R1"] == pytest.approx(np.std(r1, ddof=1))
    assert all(run["max_abs_offset"] == 0 for run in frozen["runs"])
    assert all(run["offset_change"] > 0 for run in rap["runs"])
    table = (out / "ablation.md").read_text()
    assert "| `rap` (LoRM + ASA, learned offsets) |" in table and "rap >= zero-shot + 15 t2v R@1" in table
    assert " ± " in table and table in first.output
    frozen_check = next(c for c in result["targets"] if c["check"].startswith("rap above offsets_zero"))
    diffs = [a["t2v"]["R1"] - b["t2v"]["R1"] for a, b in zip(rap["runs"], frozen["runs"], strict=True)]
    assert frozen_check["paired"]["seeds"] == [0, 1]
    assert frozen_check["paired"]["mean"] == pytest.approx(np.mean(diffs), abs=1e-4)
    assert "| paired, seed by seed (mean ± std) |" in table
    # the same checks on the two-stage search (meanP shortlist, ASA re-rank), with its own table
    staged = next(c for c in result["targets"] if c["check"].startswith("rap above offsets_zero in the two-stage"))
    two_stage_r1 = [[run["two_stage"]["t2v"]["R1"] for run in row["runs"]] for row in (rap, frozen)]
    assert staged["value"] == pytest.approx(round(np.mean(two_stage_r1[0]) - np.mean(two_stage_r1[1]), 2))
    assert staged["paired"]["mean"] == pytest.approx(np.mean(np.subtract(*two_stage_r1)), abs=1e-4)
    assert "| model (two-stage search) | t2v R@1 | R@5 | R@10 | v2t R@1 |\n" in table
    stamp = (out / "rap" / "seed1" / "summary.json").stat().st_mtime_ns
    again = runner.invoke(app, args)  # complete runs are read back, not trained again
    assert again.exit_code == 0, again.output
    assert (out / "rap" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    _check_heldout_scores(runner, args, world, out, stamp)
    bad = runner.invoke(app, ["ablate", "--tiny", "--world", str(tmp_path / "unmade"), "--rows", "nope"])
    assert bad.exit_code == 2 and "unknown ablation rows" in bad.output
    for option, value, message in (("--rows", ",", "names no row"), ("--seeds", "1_0", "comma-separated integers"),
                                   ("--heldout-videos", "1", "--heldout-videos"), ("--epochs", "100001", "--epochs")):
        refused = runner.invoke(app, ["ablate", "--tiny", "--world", str(tmp_path / "unmade"), option, value])
        assert refused.exit_code == 2 and message in refused.output, (option, refused.output)
    assert not (tmp_path / "unmade").exists()  # refused before the world is made (that takes minutes)
    spaced = runner.invoke(app, [*args, "--rows", "zero_shot, rap"])  # read back: nothing trains
    assert spaced.exit_code == 0 and "unknown" not in spaced.output, spaced.output
    # the same folder with another epoch count would mix recipes in one table: refused, nothing trained
    other = runner.invoke(app, [*args, "--epochs", "2"])
    assert other.exit_code == 2 and "epochs = 1, not 2" in other.output and "--out" in other.output
    assert (out / "rap" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    # ... and so would runs on another backbone (pre-trained for another epoch count: its own cached file)
    other_backbone = runner.invoke(app, [*args, "--backbone-epochs", "3"])
    assert other_backbone.exit_code == 2 and "pretrained = " in other_backbone.output, other_backbone.output
    assert "-e3-" in other_backbone.output and (out / "rap" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    every_token = runner.invoke(app, [*args, "--backbone-patch-keep", "1"])  # no token dropping: its own file
    assert every_token.exit_code == 2 and "-psincos.safetensors" in every_token.output, every_token.output
    # a world holds one distractor rate: asking for another one is refused before anything is trained
    distracted = runner.invoke(app, [*args, "--distractors", "0.5"])
    assert distracted.exit_code == 2 and "distractors 0, but this run asks for 0.5" in distracted.output
    assert (out / "rap" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    # ... and another selection loss weight is another recipe too
    aligned = runner.invoke(app, [*args, "--selection-loss-weight", "0.5"])
    assert aligned.exit_code == 2 and "selection_loss_weight = " in aligned.output and "not 0.5" in aligned.output
    assert (out / "rap" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    slower = runner.invoke(app, [*args, "--lorm-lr-mult", "1"])  # and so is LoRM at another learning rate
    assert slower.exit_code == 2 and "lorm_lr_mult = 5.0, not 1.0" in slower.output, slower.output
    assert runner.invoke(app, [*args, "--lorm-lr-mult", "0"]).exit_code == 2
    _check_model_sizes_are_part_of_the_recipe(out / "rap" / "seed1")
    # every row at the default preset's sizes is another recipe: refused in this folder, nothing trained
    other_sizes = runner.invoke(app, [*args, "--preset", "default"])
    assert other_sizes.exit_code == 2 and "preset = 'paper', not 'default'" in other_sizes.output
    assert "--out" in other_sizes.output
    assert (out / "rap" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    unknown = runner.invoke(app, [*args, "--preset", "huge"])
    assert unknown.exit_code == 2 and "--preset 'huge' is unknown; use one of default, paper" in unknown.output


def _check_model_sizes_are_part_of_the_recipe(run_dir):
    """A run folder is compared on every option its ``last.pt`` stored, the adapter sizes as built: a run of the
    recipe before a size changed (or killed half-way) is refused, not read back or resumed into the new table."""
    import dataclasses

    from rap_deploy.train.ablate_runs import check_same_recipe as _check_same_recipe
    from rap_deploy.train.loop import TrainOptions

    stored = TrainOptions.from_dict(load_checkpoint(run_dir / "last.pt").extra["train_options"])
    assert stored.preset == "paper" and stored.asa_dim == 16 and stored.lorm_rank is None  # the tiny recipe
    _check_same_recipe(run_dir, None, dataclasses.replace(stored, out="/moved", data_root="/moved", cache_dir=None))
    with pytest.raises(UsageError, match=r"asa_dim = 16, not 8: pass --out with a new folder"):
        _check_same_recipe(run_dir, None, dataclasses.replace(stored, asa_dim=8))
    with pytest.raises(UsageError, match=r"lorm_rank = 2, not 4"):  # compared on the model as built (the preset's)
        _check_same_recipe(run_dir, None, dataclasses.replace(stored, lorm_rank=4))
    with pytest.raises(UsageError, match=r"preset = 'paper', not 'default'"):
        _check_same_recipe(run_dir, None, dataclasses.replace(stored, preset="default"))


def test_finished_run_without_last_pt_is_checked_on_its_best_pt_options(tmp_path):
    """A finished run whose ``last.pt`` was removed (only ``best.pt`` kept) is still compared on every option its
    ``best.pt`` stored: rerunning the folder at another preset is refused, not read back as that preset's run."""
    runner = CliRunner()
    args = ["ablate", "--tiny", "--world", str(tmp_path / "world"), "--out", str(tmp_path / "abl"), "--seeds", "0",
            "--rows", "rap", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    run_dir = tmp_path / "abl" / "rap" / "seed0"
    (run_dir / "last.pt").unlink()
    stamp = (run_dir / "summary.json").stat().st_mtime_ns
    again = runner.invoke(app, args)  # the same recipe: read back
    assert again.exit_code == 0, again.output
    other = runner.invoke(app, [*args, "--preset", "default"])
    assert other.exit_code == 2 and "preset = 'paper', not 'default'" in other.output, other.output
    assert "Traceback" not in other.output and (run_dir / "summary.json").stat().st_mtime_ns == stamp


def test_an_unreadable_checkpoint_of_an_ablation_run_names_the_ablations_fix(tmp_path):
    """A damaged ``last.pt`` (or, kept without it, ``best.pt``) of an ablation run ended `ablate` with the loader's
    fix, 're-create it with `rapdeploy init` or `rapdeploy train`' (reproduced: a tiny run's last.pt truncated); it
    now says to remove the run folder, which the next `rapdeploy ablate` trains again. Random bytes (a UsageError)
    keep their exit code; the held-out scorer's load of best.pt says the same."""
    from rap_deploy.data.synth_heldout import HeldoutSplit
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.train.ablate_runs import check_same_recipe
    from rap_deploy.train.heldout_eval import heldout_metrics
    from rap_deploy.train.loop import TrainOptions

    run_dir = tmp_path / "rap" / "seed0"
    run_dir.mkdir(parents=True)
    options = TrainOptions(dataset="msrvtt", data_root="d", out=str(run_dir))
    fix = r"the ablation run cannot be read back or resumed: remove .*rap/seed0 and the next `rapdeploy ablate`"
    (run_dir / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckFailedError, match=r"last.pt is a damaged or truncated PyTorch archive .*; " + fix):
        check_same_recipe(run_dir, None, options)
    (run_dir / "last.pt").write_bytes(b"random bytes, not a checkpoint")
    with pytest.raises(UsageError, match=fix) as caught:
        check_same_recipe(run_dir, None, options)
    assert "rapdeploy init" not in str(caught.value)
    from rap_deploy.train.ablate_runs import unreadable_run_file

    assert not unreadable_run_file(UsageError("last.pt has checkpoint format 9; upgrade rapdeploy"))  # its own fix
    (run_dir / "last.pt").rename(run_dir / "best.pt")  # a finished run kept without its last.pt
    with pytest.raises(UsageError, match=r"best.pt .*" + fix):
        check_same_recipe(run_dir, {"complete": True, "run_dir": str(run_dir)}, options)
    split = HeldoutSplit(tmp_path / "data", tmp_path / "cache", {"videos": 4, "seed": 1000})
    with pytest.raises(UsageError, match=r"best.pt .*" + fix):
        heldout_metrics(run_dir, split, top_m=4, progress=False)


def test_heldout_cache_without_its_counts_or_of_another_top_m_is_scored_again(tmp_path):
    """A cached held-out result that lacks the video count or seconds the table keeps (edited, or damaged) is
    scored again, never a KeyError traceback; so is one scored with another top_m."""
    runner = CliRunner()
    args = ["ablate", "--tiny", "--world", str(tmp_path / "world"), "--out", str(tmp_path / "abl"), "--seeds", "0",
            "--rows", "rap", "--quiet", "--heldout-videos", "4"]
    assert runner.invoke(app, args).exit_code == 0
    cached = tmp_path / "abl" / "rap" / "seed0" / "heldout4-s1000.json"
    good = json.loads(cached.read_text())
    for damaged in ({k: v for k, v in good.items() if k != "seconds"}, {**good, "videos": "4"}):
        cached.write_text(json.dumps(damaged))
        again = runner.invoke(app, args)
        assert again.exit_code == 0 and "Traceback" not in again.output, again.output
        rescored = json.loads(cached.read_text())
        assert rescored["videos"] == 4 and rescored["t2v"] == good["t2v"] and "seconds" in rescored
    _check_heldout_cache_is_of_its_top_m(tmp_path / "world", cached, good)


def _check_heldout_cache_is_of_its_top_m(world, cached, good):
    """The cache key had no top_m (the two-stage shortlist): a result read back for another top_m was the other's
    two-stage score. It records top_m now; one cached before it did is of the top_m its run trained with (the
    ablation scored every run with its recipe's), so it reads back for that top_m only."""
    from rap_deploy.train.heldout_eval import heldout_scorer

    run_dir = cached.parent
    scorer = heldout_scorer(world, world / "data", 4, 4, progress=False)
    assert good["top_m"] == 4 and scorer(run_dir, cached_only=True)["two_stage"] == good["two_stage"]
    assert scorer(run_dir, cached_only=True, top_m=2) is None
    cached.write_text(json.dumps({k: v for k, v in good.items() if k != "top_m"}))  # cached before top_m was
    assert scorer(run_dir, cached_only=True)["two_stage"] == good["two_stage"]
    assert scorer(run_dir, cached_only=True, top_m=2) is None
    other = scorer(run_dir, top_m=2)
    assert other["top_m"] == 2 and other["t2v"] == good["t2v"] and json.loads(cached.read_text())["top_m"] == 2


def test_heldout_split_with_a_missing_video_is_refused_not_scored_on_fewer(tmp_path):
    """Every run is scored on the whole held-out split: a split video that is missing (or undecodable) is an error
    naming it and the fix, never a score over fewer videos cached and averaged with the others; a cached score
    over fewer videos than the split holds is scored again."""
    runner = CliRunner()
    world = tmp_path / "world"
    args = ["ablate", "--tiny", "--world", str(world), "--out", str(tmp_path / "abl"), "--seeds", "0", "--rows",
            "rap", "--quiet", "--heldout-videos", "4"]
    assert runner.invoke(app, args).exit_code == 0
    cached = tmp_path / "abl" / "rap" / "seed0" / "heldout4-s1000.json"
    good = json.loads(cached.read_text())
    assert good["videos"] == 4 and good["skipped"] == []
    video = sorted((world / "heldout-4" / "data" / "videos").glob("*.mp4"))[-1]  # a test video (video0 trains)
    aside = tmp_path / video.name
    video.rename(aside)
    _record_split_as_it_is(world / "heldout-4")  # else the split whose files changed is written again, video and all
    try:
        fresh = runner.invoke(app, [*args[:5], str(tmp_path / "abl-b"), *args[6:]])
        assert fresh.exit_code == 1 and video.stem in fresh.output and "remove" in fresh.output, fresh.output
        assert "Traceback" not in fresh.output
        assert not (tmp_path / "abl-b" / "rap" / "seed0" / "heldout4-s1000.json").exists()
    finally:
        aside.rename(video)
    cached.write_text(json.dumps({**good, "videos": 3, "skipped": [{"video_id": video.stem, "reason": "missing"}]}))
    again = runner.invoke(app, args)  # a score over 3 of the split's 4 videos: scored again
    assert again.exit_code == 0, again.output
    assert json.loads(cached.read_text())["videos"] == 4


def _record_split_as_it_is(folder):
    """Record the held-out split in ``folder`` with the files it holds now (a video that went missing after the
    split was written, say), as if it had been written so."""
    from rap_deploy.data.synth_heldout import CONTENT, RECORD, split_digest

    record = json.loads((folder / RECORD).read_text())
    (folder / RECORD).write_text(json.dumps({**record, CONTENT: split_digest(folder / "data")}))


def test_summary_whose_offsets_do_not_match_their_start_is_named_not_a_traceback(tmp_path):
    """A finished run's summary whose learned offsets and initial offsets hold different heads (edited, or from
    another model) is a damaged run (exit 1, naming the file and the fix), not a numpy broadcasting traceback."""
    runner = CliRunner()
    args = ["ablate", "--tiny", "--world", str(tmp_path / "world"), "--out", str(tmp_path / "abl"), "--seeds", "0",
            "--rows", "rap", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    summary = tmp_path / "abl" / "rap" / "seed0" / "summary.json"
    data = json.loads(summary.read_text())
    start = data["offsets_initial"]
    summary.write_text(json.dumps({**data, "offsets_initial": {**start, "gamma": start["gamma"][:1]}}))
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "summary.json" in res.output and "remove" in res.output, res.output
    assert "Traceback" not in res.output


def test_rows_whose_options_match_share_runs():
    """On a recipe that is the paper preset, the ``paper`` row is the ``rap`` row's model: it reads ``rap``'s runs
    and its label says so. Where the recipe sets its own ASA width (the tiny one), ``paper`` trains its own."""
    from rap_deploy.train.ablate import ROWS, _label, same_options_row
    from rap_deploy.train.loop import TrainOptions

    rows = {r.name: r for r in ROWS}
    paper_recipe = TrainOptions(dataset="msrvtt", data_root="d", out="o", preset="paper")
    assert same_options_row(paper_recipe, rows["paper"]).name == "rap"
    assert "the runs of `rap`" in _label(rows["paper"], rows["rap"])
    assert all(same_options_row(paper_recipe, rows[n]).name == n for n in ("rap", "saliency", "no_lorm", "no_asa"))
    own_width = TrainOptions(dataset="msrvtt", data_root="d", out="o", preset="paper", asa_dim=16)
    assert same_options_row(own_width, rows["paper"]).name == "paper"
    assert _label(rows["paper"], rows["paper"]) == rows["paper"].label


def _check_heldout_scores(runner, args, world, out, stamp):
    """``--heldout-videos``: the finished runs are scored on a held-out split, not trained again; the scores are
    cached per run and a changed checkpoint digest is scored again."""
    held = runner.invoke(app, [*args, "--heldout-videos", "4"])
    assert held.exit_code == 0, held.output
    assert (out / "rap" / "seed1" / "summary.json").stat().st_mtime_ns == stamp
    assert (world / "heldout-4" / "heldout.json").is_file()
    result = json.loads((out / "ablation.json").read_text())
    rap = next(r for r in result["rows"] if r["name"] == "rap")
    scores = [run["heldout"]["t2v"]["R1"] for run in rap["runs"]]
    assert rap["heldout"]["n"] == 2 and rap["heldout"]["mean"]["t2v"]["R1"] == pytest.approx(np.mean(scores))
    assert all(run["heldout"]["videos"] == 4 and run["heldout"]["split"]["videos"] == 4 for run in rap["runs"])
    check = next(c for c in result["targets"] if c["check"].startswith("rap above offsets_zero on the held-out"))
    frozen = next(r for r in result["rows"] if r["name"] == "offsets_zero")
    margin = rap["heldout"]["mean"]["t2v"]["R1"] - frozen["heldout"]["mean"]["t2v"]["R1"]
    assert check["value"] == pytest.approx(round(margin, 2))
    table = (out / "ablation.md").read_text()
    assert "| model (held-out) |" in table and "4 test videos drawn with seed 1000" in table
    assert "| v2t R@1 | held-out t2v R@1 | R@5 | R@10 | v2t R@1 |" in table
    staged = next(c for c in result["targets"]
                  if c["check"].startswith("rap above offsets_zero on the held-out split in the two-stage search"))
    assert staged["value"] == pytest.approx(round(rap["heldout"]["two_stage"]["mean"]["t2v"]["R1"]
                                                  - frozen["heldout"]["two_stage"]["mean"]["t2v"]["R1"], 2))
    cached = out / "rap" / "seed1" / "heldout4-s1000.json"
    first_stamp = cached.stat().st_mtime_ns
    assert runner.invoke(app, [*args, "--heldout-videos", "4"]).exit_code == 0  # read back
    assert cached.stat().st_mtime_ns == first_stamp
    stale = json.loads(cached.read_text())
    cached.write_text(json.dumps({**stale, "checkpoint_sha256": "0" * 64}))  # as if best.pt had changed
    assert runner.invoke(app, [*args, "--heldout-videos", "4"]).exit_code == 0
    assert json.loads(cached.read_text())["checkpoint_sha256"] == stale["checkpoint_sha256"]
    cached.write_text(json.dumps({**stale, "t2v": {**stale["t2v"], "R1": float("nan")}}))  # a NaN is scored again
    assert runner.invoke(app, [*args, "--heldout-videos", "4"]).exit_code == 0
    assert json.loads(cached.read_text())["t2v"] == stale["t2v"]
    _check_heldout_galleries(runner, args, out, scores)
    _check_runs_in_processes(runner, world, out, args)
    _check_damaged_runs_are_named(runner, world, out, args)
    _check_a_moved_world_reads_back(runner, world, out, args)


def _check_damaged_runs_are_named(runner, world, out, args):
    """A run folder's files are read back only when they are its own and sane: a summary with a NaN, one copied
    from another run, a symlinked one, a finished run without best.pt are each one line, exit 1, naming the file
    and the fix; a run folder locked by another command is refused (exit 2); runs on a backbone file since replaced
    by other weights are another recipe's (refused); pre-trained again with the same settings it is the same file,
    so the world's step that makes it again leaves the runs readable."""
    import shutil

    for case in ("nan", "copied", "symlink", "no_best"):
        copy = out.parent / f"damaged-{case}"
        shutil.copytree(out, copy)
        summary = copy / "rap" / "seed0" / "summary.json"
        data = json.loads(summary.read_text())
        if case == "nan":
            summary.write_text(json.dumps({**data, "best": {**data["best"], "t2v": {**data["best"]["t2v"],
                                                                                     "R1": float("nan")}}}))
        elif case == "copied":
            shutil.copy(copy / "offsets_zero" / "seed0" / "summary.json", summary)
        elif case == "symlink":
            summary.unlink()
            summary.symlink_to(copy / "rap" / "seed1" / "summary.json")
        else:
            (copy / "rap" / "seed0" / "best.pt").unlink()
        extra = ["--heldout-videos", "4"] if case == "no_best" else []
        res = runner.invoke(app, [*args[:5], str(copy), *args[6:], *extra])
        assert res.exit_code == 1 and "Traceback" not in res.output, (case, res.output)
        named = "best.pt" if case == "no_best" else "summary.json"
        assert named in res.output and ("remove" in res.output or "symbolic link" in res.output), (case, res.output)
    with held_folder_lock(out / "rap" / "seed0", "test"):
        busy = runner.invoke(app, args)
        assert busy.exit_code == 2 and "rap/seed0" in busy.output, busy.output
    backbone = Path(json.loads((out / "rap" / "seed0" / "summary.json").read_text())["pretrained"])
    records = world / "demo-steps.json"  # the world's step records: the pre-training step runs again on a change
    original, original_records = backbone.read_bytes(), records.read_bytes()
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        from rap_deploy.train.ablate_runs import check_same_recipe
        from rap_deploy.train.loop import TrainOptions

        with safe_open(str(backbone), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(backbone))
        name = next(k for k, t in tensors.items() if t.is_floating_point())
        tensors[name].view(-1)[0] += 0.5  # another backbone at the runs' path (what its own message once suggested)
        save_file(tensors, str(backbone), metadata=metadata)
        run_dir = out / "rap" / "seed0"
        stored = TrainOptions.from_dict(load_checkpoint(run_dir / "best.pt").extra["train_options"])
        with pytest.raises(UsageError, match="pre-trained again"):  # the runs are not that backbone's
            check_same_recipe(run_dir, json.loads((run_dir / "summary.json").read_text()), stored)
        # ablate's world sees the file changed and pre-trains it again: the same settings write the same file, byte
        # for byte (no timings in it, its metadata in sorted order), so the runs are read back, not refused
        stamp = (run_dir / "summary.json").stat().st_mtime_ns
        again = runner.invoke(app, args)
        assert again.exit_code == 0 and "[redo] pretrain-backbone" in again.output, again.output
        assert backbone.read_bytes() == original and (run_dir / "summary.json").stat().st_mtime_ns == stamp
    finally:
        backbone.write_bytes(original)
        records.write_bytes(original_records)


def _check_a_moved_world_reads_back(runner, world, out, args):
    """World and runs moved to other folders (the backbone path the runs stored no longer exists): the runs are
    read back, not refused as another recipe's; the backbone is known by its sha256."""
    import shutil

    moved_world, moved_out = world.parent / "moved-world", out.parent / "moved-ablation"
    shutil.copytree(world, moved_world)
    shutil.copytree(out, moved_out)
    shutil.rmtree(world)
    summary = moved_out / "rap" / "seed1" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    try:
        res = runner.invoke(app, [*args[:3], str(moved_world), args[4], str(moved_out), *args[6:]])
        assert res.exit_code == 0, res.output
        assert summary.stat().st_mtime_ns == stamp
    finally:
        shutil.move(moved_world, world)


def _check_heldout_galleries(runner, args, out, one_gallery_scores):
    """``--heldout-gallery``: the same split scored as galleries of 2 (its own cache file); a query ranked among
    fewer videos never ranks lower, so no run's R@1 falls. A gallery without a split, or larger than it, is refused."""
    held = runner.invoke(app, [*args, "--heldout-videos", "4", "--heldout-gallery", "2"])
    assert held.exit_code == 0, held.output
    rap = next(r for r in json.loads((out / "ablation.json").read_text())["rows"] if r["name"] == "rap")
    assert rap["heldout"]["gallery"] == 2 and all(run["heldout"]["gallery"] == 2 for run in rap["runs"])
    scores = [run["heldout"]["t2v"]["R1"] for run in rap["runs"]]
    assert all(g >= one for g, one in zip(scores, one_gallery_scores, strict=True))
    cached = json.loads((out / "rap" / "seed1" / "heldout4-s1000-g2.json").read_text())
    assert cached["galleries"] == [2, 2] and cached["t2v"]["queries"] == 4
    assert "own gallery of 2 consecutive videos (`--heldout-gallery 2`)" in (out / "ablation.md").read_text()
    alone = runner.invoke(app, [*args, "--heldout-gallery", "2"])
    assert alone.exit_code == 2 and "pass --heldout-videos N too" in alone.output
    larger = runner.invoke(app, [*args, "--heldout-videos", "4", "--heldout-gallery", "5"])
    assert larger.exit_code == 2 and "2 to --heldout-videos (4), got 5" in larger.output
    remainder = runner.invoke(app, [*args, "--heldout-videos", "5", "--heldout-gallery", "2"])  # a gallery of 1 left
    assert remainder.exit_code == 2 and "does not divide" in remainder.output, remainder.output


def _check_runs_in_processes(runner, world, out, args):
    """``--jobs 2``: the same runs trained two at a time in worker processes (the held-out scorer sent along) give
    the same table; a folder of another recipe is refused before any process starts."""
    par = out.parent / "parallel"
    jobs_args = ["ablate", "--tiny", "--world", str(world), "--out", str(par), "--seeds", "0,1", "--rows",
                 "offsets_zero,rap", "--quiet", "--heldout-videos", "4", "--heldout-gallery", "2", "--jobs", "2"]
    result = runner.invoke(app, jobs_args)
    assert result.exit_code == 0, result.output
    assert "4 runs to train or score (0 read back), 2 at a time" in result.output and "4/4 " in result.output
    rows = json.loads((par / "ablation.json").read_text())["rows"]
    again = runner.invoke(app, jobs_args)  # finished, scores cached: read back without starting a worker
    assert again.exit_code == 0 and "at a time" not in again.output, again.output
    assert json.loads((par / "ablation.json").read_text())["rows"] == rows
    one_at_a_time = {r["name"]: r for r in json.loads((out / "ablation.json").read_text())["rows"]}
    for row in json.loads((par / "ablation.json").read_text())["rows"]:
        for run, alone in zip(row["runs"], one_at_a_time[row["name"]]["runs"], strict=True):
            assert run["run_dir"].startswith(str(par)) and run["seed"] == alone["seed"]
            assert (run["t2v"], run["v2t"], run["heldout"]["t2v"]) == (alone["t2v"], alone["v2t"],
                                                                        alone["heldout"]["t2v"])
    stamp = (par / "rap" / "seed1" / "summary.json").stat().st_mtime_ns
    other = runner.invoke(app, [*jobs_args, "--epochs", "2"])
    assert other.exit_code == 2 and "epochs = 1, not 2" in other.output and "runs, 2 at a time" not in other.output
    assert (par / "rap" / "seed1" / "summary.json").stat().st_mtime_ns == stamp


def test_paired_difference_matches_seeds():
    """Seed by seed, over the seeds both rows have, whatever order the runs are listed in."""
    from rap_deploy.train.ablate import paired_difference
    from rap_deploy.train.ablate_report import ablation_markdown

    def runs(pairs):
        return [{"seed": s, "t2v": {"R1": r1}} for s, r1 in pairs]

    rap, other = runs([(0, 31.5), (1, 31.0), (2, 35.5)]), runs([(2, 32.5), (0, 32.5), (1, 30.5), (7, 99.0)])
    paired = paired_difference(rap, other)
    assert paired["seeds"] == [0, 1, 2]
    assert paired["mean"] == pytest.approx(np.mean([-1.0, 0.5, 3.0]), abs=1e-4)
    assert paired["std"] == pytest.approx(np.std([-1.0, 0.5, 3.0], ddof=1), abs=1e-4)
    assert paired_difference(rap[:1], other)["std"] is None  # one seed: no sample std
    assert paired_difference(rap, runs([(5, 1.0)])) is None
    check = {"check": "rap above saliency by more than the seed std (2.47)", "value": 0.83, "passed": False,
             "paired": paired}
    table = ablation_markdown({"seeds": [0, 1, 2], "rows": [], "targets": [check]})
    assert "| rap above saliency by more than the seed std (2.47) | +0.83 | no | +0.83 ± 2.02 |" in table
    assert "selection loss" not in table  # the demo's recipe: the contrastive loss alone
    aligned = ablation_markdown({"seeds": [0], "rows": [], "recipe": {"selection_loss_weight": 0.5}})
    assert "Trained with the selection loss at weight 0.5." in aligned.splitlines()[0]
    assert "LoRM" not in aligned.splitlines()[0]
    faster = ablation_markdown({"seeds": [0], "rows": [], "recipe": {"lorm_lr_mult": 5.0}})
    assert "LoRM's factors trained at 5× the learning rate." in faster.splitlines()[0]


def test_a_rap_above_check_of_one_seed_is_not_decided():
    """With one seed a row has no measured spread (its std 0 by convention then, None now): `ablate --seeds 0`
    reported 'rap above saliency by more than the seed std (0.00) | +0.50 | yes' for any positive margin. Such a
    check is now not decided (passed None, '-' in the table); with two seeds or more it is decided as before."""
    from rap_deploy.train.ablate import aggregate, target_checks
    from rap_deploy.train.ablate_report import ablation_markdown

    def row(name, r1s):
        runs = [{"seed": seed, "offset_change": None, "trainable_params": 10, **{d: {"R1": r1, "R5": 50.0, "R10": 60.0,
                                                                                "MnR": 3.0} for d in ("t2v", "v2t")}}
                for seed, r1 in enumerate(r1s)]
        return {"name": name, "label": name, "runs": runs, **aggregate(runs)}

    one = {"seeds": [0], "rows": [row("saliency", [30.0]), row("rap", [30.5])]}
    check = next(c for c in target_checks(one) if c["check"].startswith("rap above saliency"))
    assert check["passed"] is None and check["check"].endswith("seed std (none: one seed)"), check
    assert "| rap above saliency by more than the seed std (none: one seed) | +0.50 | - |" in ablation_markdown(
        {**one, "targets": [check]})
    two = {"seeds": [0, 1], "rows": [row("saliency", [30.0, 31.0]), row("rap", [33.0, 34.0])]}
    check = next(c for c in target_checks(two) if c["check"].startswith("rap above saliency"))
    assert check["passed"] is True and check["check"].endswith("seed std (0.71)"), check


def test_an_ablation_of_one_seed_writes_no_std(tmp_path, monkeypatch):
    """`ablate --seeds 0` wrote each row's std as 0.0 beside n 1 in ablation.json (the paired differences' too),
    where a sample std (ddof 1) of one run is undefined; ablation.md showed no ± for them. ablation.json now holds
    null there (test, held-out and two-stage scores), the checks and the table read it: no ± anywhere in the rows,
    the "rap above" checks not decided."""
    from rap_deploy.train import ablate
    from rap_deploy.train.loop import TrainOptions

    def scores(r1):
        return {d: {"R1": r1, "R5": 50.0, "R10": 60.0, "MnR": 3.0} for d in ("t2v", "v2t")}

    def record(options, progress, heldout):
        r1 = 30.0 if options.asa_selection == "saliency" else 31.0
        split = {"videos": 8, "seed": 1, "world_scenes": 4}
        return {"seed": options.seed, "run_dir": options.out, "offset_change": None, "trainable_params": 10,
                **scores(r1), "two_stage": scores(r1),
                "heldout": {**scores(r1), "two_stage": scores(r1), "split": split, "gallery": 0}}

    monkeypatch.setattr(ablate, "_run_and_score", record)
    ablate.run_ablation(TrainOptions(dataset="msrvtt", data_root="d", out="o"), tmp_path, [0],
                        ["zero_shot", "saliency", "rap"], log=lambda msg: None)
    result = json.loads((tmp_path / "ablation.json").read_text())
    for row in result["rows"]:
        for stats in (row, row["two_stage"], row["heldout"], row["heldout"]["two_stage"]):
            assert stats["n"] == 1 and stats["std"] == {d: dict.fromkeys(("R1", "R5", "R10", "MnR")) for d in
                                                        ("t2v", "v2t")}, (row["name"], stats["std"])
    above = [c for c in result["targets"] if c["check"].startswith("rap above saliency")]
    assert len(above) == 4 and all(c["passed"] is None and c["paired"]["std"] is None for c in above), above
    table = (tmp_path / "ablation.md").read_text()
    assert not [line for line in table.splitlines() if line.startswith("| ") and " ± " in line.split("|", 2)[2]
                and "mean ± std" not in line], table
    assert "| rap above saliency by more than the seed std (none: one seed) | +1.00 | - | +1.00 |" in table


def test_a_stopped_ablation_leaves_its_rows_so_far_in_both_files(tmp_path, monkeypatch):
    """ablation.json was written after each row but ablation.md only at the end, so a command stopped half-way left
    this call's rows in the JSON beside an earlier call's complete-looking table (reproduced by stopping the second
    row's run with Ctrl-C after a full call). Both now hold the rows so far, marked incomplete until the end."""
    from rap_deploy.train import ablate
    from rap_deploy.train.loop import TrainOptions

    def record(options, progress, heldout):
        if options.asa_selection != "saliency" and stop:
            raise KeyboardInterrupt
        return {"seed": options.seed, "run_dir": options.out, "offset_change": None, "trainable_params": 10,
                **{d: {"R1": 30.0, "R5": 50.0, "R10": 60.0, "MnR": 3.0} for d in ("t2v", "v2t")}}

    monkeypatch.setattr(ablate, "_run_and_score", record)
    base = TrainOptions(dataset="msrvtt", data_root="d", out="o")
    stop = False
    done = ablate.run_ablation(base, tmp_path, [0, 1], ["saliency", "rap"], log=lambda msg: None)
    assert done["complete"] is True and (tmp_path / "ablation.md").read_text().startswith("Seeds 0, 1;")
    stop = True
    with pytest.raises(KeyboardInterrupt):
        ablate.run_ablation(base, tmp_path, [0, 1, 2], ["saliency", "rap"], log=lambda msg: None)
    partial = json.loads((tmp_path / "ablation.json").read_text())
    assert partial["complete"] is False and [r["name"] for r in partial["rows"]] == ["saliency"]
    table = (tmp_path / "ablation.md").read_text()
    assert table.startswith("Incomplete: ") and "Seeds 0, 1, 2;" in table and "`rap`" not in table, table


def test_rap_light_and_no_asa_are_the_same_model():
    """The ablation shares the runs of these two rows: same parameters from the same seed, same similarity."""
    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.train.ablate import ROWS

    assert next(r for r in ROWS if r.name == "rap_light").same_as == "no_asa"
    spec = BackboneSpec.parse("rap-micro", "none")
    _, light = new_checkpoint(micro_config(variant="rap_light"), spec, seed=5)
    _, no_asa = new_checkpoint(micro_config(use_asa=False), spec, seed=5)
    a, b = light.adapter_state_dict(), no_asa.adapter_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    frames = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids, eot = (torch.from_numpy(x) for x in tokenize(["a red circle grows", "a blue square"], light.config.tokenizer))
    with torch.no_grad():
        assert torch.equal(light.similarity(frames, None, ids, eot), no_asa.similarity(frames, None, ids, eot))


def test_worker_processes_report_results_errors_and_deaths():
    """`ablate --jobs`' process runner: records come back by key; a worker's error is raised with its class; a
    worker that dies without a word (killed, out of memory) is an error naming its run, never a wait without end."""
    import os

    from rap_deploy.errors import CheckFailedError
    from rap_deploy.train.ablate_jobs import run_in_processes

    seen = []
    assert run_in_processes(dict, {"a": (), "b": ((("x", 1),),)}, 2, lambda k, r: seen.append(k)) == \
        {"a": {}, "b": {"x": 1}}
    assert sorted(seen) == ["a", "b"]
    with pytest.raises(ValueError, match="invalid literal"):
        run_in_processes(int, {"bad": ("x",)}, 1)
    with pytest.raises(CheckFailedError, match=r"run died stopped without a result: .* exited with code 3"):
        run_in_processes(os._exit, {"died": (3,)}, 1)


def test_a_workers_error_names_its_run_and_carries_the_workers_traceback():
    """An error that is not the project's (a bug, PyTorch out of memory) is printed as a traceback; raised again in
    the parent it showed only the parent's frames, naming neither the run nor where the worker failed
    (reproduced: math.sqrt(-1) in a worker, 'ValueError: math domain error' under run_in_processes)."""
    import math

    from rap_deploy.train.ablate_jobs import run_in_processes

    with pytest.raises(ValueError, match="math domain error") as caught:
        run_in_processes(math.sqrt, {"runs/rap/seed3": (-1,)}, 2)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "the run runs/rap/seed3" in notes and "in the worker process: Traceback" in notes, notes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_workers_stop_when_their_parent_is_killed(tmp_path):
    """A parent killed with SIGKILL (kill -9) stops nothing itself: its `ablate --jobs` workers went on training,
    holding their run folders' locks (reproduced: two workers sleeping on after their parent was killed). The kernel
    now sends each worker SIGTERM when its parent dies."""
    import signal

    script = ("import time\nfrom rap_deploy.train.ablate_jobs import run_in_processes\n"
              "if __name__ == '__main__':\n    run_in_processes(time.sleep, {'a': (120,), 'b': (120,)}, 2)\n")
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")])
    workers: list[int] = []
    try:
        workers = _wait_for(lambda: _spawned_children(parent.pid) if len(_spawned_children(parent.pid)) == 2 else None)
        assert workers, "the parent started no two workers"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_for(lambda: not any(_running(pid) for pid in workers) or None), workers
    finally:
        parent.kill()
        parent.wait()
        for pid in workers:
            if _running(pid):  # a test that failed leaves no worker behind
                os.kill(pid, signal.SIGKILL)


def _wait_for(probe, attempts=600):
    """``probe()``'s first value that is not None, polled every 0.1 s (at most ``attempts`` times)."""
    import time

    for _ in range(attempts):
        found = probe()
        if found is not None:
            return found
        time.sleep(0.1)
    return None


def _spawned_children(pid):
    """The pids of the multiprocessing spawn workers whose parent is ``pid``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(proc.name))
    return found


def _running(pid):
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_worker_errors_that_do_not_unpickle_go_back_as_text():
    """An exception whose ``__init__`` takes other arguments than its ``args`` pickles but does not unpickle: a
    worker sends its text instead (the parent would otherwise die with a TypeError naming no run)."""
    import pickle

    from rap_deploy.data.video import VideoDecodeError
    from rap_deploy.train.ablate_jobs import _round_trips

    class TwoArguments(Exception):
        def __init__(self, path, reason):
            super().__init__(f"{path}: {reason}")

    assert not _round_trips(TwoArguments("/x", "broken")) and _round_trips(ValueError("x"))
    back = pickle.loads(pickle.dumps(VideoDecodeError("/x.mp4", "cannot decode")))  # the project's own: it does
    assert (str(back.path), back.reason) == ("/x.mp4", "cannot decode")


def test_paragraph_datasets_refuse_an_init_checkpoint_of_the_clip_defaults_unless_told():
    """DiDeMo and ActivityNet are 64 frames / 64 tokens; `rapdeploy init`'s defaults are 12 / 32, fixed by the
    checkpoint's weights: fine-tuning such a checkpoint there is refused unless --frames/--context-length say so.
    One refusal names every option that must change (it named --frames, then, once that was passed, refused again
    for --context-length)."""
    import dataclasses
    from types import SimpleNamespace

    from rap_deploy.train.loop import TrainOptions
    from rap_deploy.train.model_setup import check_paragraph_protocol

    config = SimpleNamespace(clip="ViT-B-32", frames=12, context_length=32)
    base = TrainOptions(dataset="didemo", data_root="d", out="o", checkpoint="b32.pt")
    with pytest.raises(UsageError) as both:
        check_paragraph_protocol(base, config)
    assert str(both.value) == ("checkpoint b32.pt has frames 12 and context-length 32, but didemo's protocol uses 64 "
                               "and 64: create it with `rapdeploy init --clip ViT-B-32 --frames 64 --context-length 64 "
                               "...`, or pass --frames 12 --context-length 32 to train at the checkpoint's")
    with pytest.raises(UsageError) as one:
        check_paragraph_protocol(dataclasses.replace(base, frames=12), config)
    assert "has context-length 32, but" in str(one.value) and "pass --context-length 32 to" in str(one.value)
    assert "frames 12" not in str(one.value)
    with pytest.raises(UsageError, match="has frames 12, but didemo's protocol uses 64: .* pass --frames 12 to"):
        check_paragraph_protocol(dataclasses.replace(base, context_length=32), config)
    check_paragraph_protocol(dataclasses.replace(base, frames=12, context_length=32), config)  # said so
    check_paragraph_protocol(dataclasses.replace(base, dataset="msrvtt"), config)
    check_paragraph_protocol(base, SimpleNamespace(clip="ViT-B-32", frames=64, context_length=64))


def test_training_data_none_of_which_decodes_is_a_damaged_dataset(synth_root, tmp_path):
    """Every training video undecodable was exit 2 (bad usage); it is damaged data: exit 1, as data-check says."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    train_ids = [line.strip() for line in (data / "MSRVTT_train.9k.csv").read_text().splitlines()[1:] if line.strip()]
    for vid in train_ids:
        (data / "videos" / f"{vid.split(',')[0]}.mp4").write_bytes(b"not a video")
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(data), *MICRO_CLI, "--out",
                                   str(tmp_path / "run"), "--epochs", "1", "--cache-dir", str(tmp_path / "frames"),
                                   "--quiet"])
    assert res.exit_code == 1 and "no usable training video" in res.output, res.output
    shutil.rmtree(data / "videos")  # was: "(24 undecodable); run `rapdeploy data-check --split train`" (--dataset?)
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(data), *MICRO_CLI, "--out",
                                   str(tmp_path / "run"), "--epochs", "1", "--quiet"])
    line = " ".join(res.stderr.split())
    assert res.exit_code == 1 and f"missing or undecodable: {train_ids[0].split(',')[0]}: missing;" in line, line
    assert f"{data / 'videos'} does not exist; put the videos there" in line, line
    assert line.endswith(f"run `rapdeploy data-check --dataset msrvtt --data-root {data} --split train`"), line


@pytest.mark.parametrize("workers", [0, 1])
def test_a_training_video_that_stops_decoding_mid_run_is_one_line_naming_it(synth_root, frame_cache, tmp_path,
                                                                            monkeypatch, workers):
    """A training video that decoded when the run started and then could not be read (the file rewritten or damaged
    meanwhile) raised VideoDecodeError out of the loop, a traceback (from a DataLoader worker, a RuntimeError holding
    the worker's traceback); it is now a damaged-data error naming the file, the epoch and what to do (exit 1),
    nothing of that epoch written."""
    from rap_deploy.data.datasets import VideoCaptionDataset
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.train.loop import train_rap

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    prepare = VideoCaptionDataset.prepare

    def prepare_then_damage(self, progress=False):
        done = prepare(self, progress)
        (root / "videos" / "video3.mp4").write_bytes(b"\x00not a video" * 50)
        return done

    monkeypatch.setattr(VideoCaptionDataset, "prepare", prepare_then_damage)
    with pytest.raises(CheckFailedError) as info:
        train_rap(_micro_options(root, tmp_path / "run", frame_cache, epochs=1, num_workers=workers), progress=False)
    message = str(info.value)
    assert "\n" not in message and "video3.mp4" in message and "epoch 1" in message, message
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_training_batch_that_cannot_fit_in_memory_is_refused_before_decoding(synth_root, tmp_path, monkeypatch):
    """A --batch-size / --frames whose batch of frames could not fit in memory was only found out when the run was
    killed part-way, after decoding the training set; it is refused before any video is decoded (exit 2, naming the
    options), the run folder it would have created not left behind. (The available memory is patched, 10 MB: the
    micro CLIP's 6.5 MB pass, a batch of its 120 captions' videos x 64 frames of 32 px, 94 MB, does not.)"""
    import dataclasses

    import psutil

    from rap_deploy.train.distributed import DistContext

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 10_000_000})())
    cli = list(MICRO_CLI)
    cli[cli.index("--frames") + 1] = "64"
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), *cli, "--out",
                                   str(tmp_path / "run"), "--epochs", "1", "--cache-dir", str(tmp_path / "frames"),
                                   "--quiet"])
    assert res.exit_code == 2, res.output
    assert "a training batch of 120 videos x 64 frames" in res.output and "--batch-size" in res.output, res.output
    assert not (tmp_path / "run").exists() and not list((tmp_path / "frames").rglob("*.npz"))
    from rap_deploy.train.run_data import check_batch_memory

    options = _micro_options(synth_root, tmp_path / "run", tmp_path / "frames", batch_size=24)
    check_batch_memory(options, micro_config(frames=4), np.arange(24), DistContext())  # 2.4 MB: fits
    with pytest.raises(UsageError, match="fewer --workers"):
        check_batch_memory(dataclasses.replace(options, num_workers=2), micro_config(frames=16), np.arange(24),
                           DistContext())  # 24 x 16 frames x 197 KB, 6 copies: 28 MB


def test_resume_of_a_folder_of_runs_or_of_data_names_what_it_is(micro_checkpoint, tmp_path):
    """--resume of the folder above the runs (the workspace's runs/) or of another folder (the dataset) said 'it has
    no last.pt (the run stopped before its first epoch ended; start it again without --resume)', which is not so."""
    runs = tmp_path / "runs"
    for name in ("msrvtt-1", "msrvtt-2"):
        (runs / name).mkdir(parents=True)
        (runs / name / "last.pt").write_bytes(micro_checkpoint.read_bytes())
    res = CliRunner().invoke(app, ["train", "--resume", str(runs)])
    assert res.exit_code == 2, res.output
    assert f"cannot resume {runs}: it holds training runs, not one; pass one of them: {runs / 'msrvtt-1'}, " \
           f"{runs / 'msrvtt-2'}" in " ".join(res.stderr.split()), res.output
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    (data / "MSRVTT_data.json").write_text("{}")
    res = CliRunner().invoke(app, ["train", "--resume", str(data)])
    assert res.exit_code == 2, res.output
    assert f"cannot resume {data}: it is not a training run folder (no last.pt; it holds MSRVTT_data.json, " \
           "videos); pass the --out folder of an earlier `rapdeploy train`" in " ".join(res.stderr.split())


def test_ablate_reads_back_runs_of_another_world_made_the_same_way(tmp_path):
    """Two worlds made by the same ablate (same settings, same machine) pre-train the same backbone file, byte for
    byte, so runs trained on one are read back with the other, not refused or trained again. Before the file left out
    its timings and sorted its metadata, each world's backbone had its own sha256 (four demo worlds: four sha256s, the
    same tensors), and merging seeds across worlds took an ad-hoc script."""
    runner = CliRunner()
    out = tmp_path / "abl"
    args = ["ablate", "--tiny", "--out", str(out), "--seeds", "0", "--rows", "zero_shot,rap", "--quiet"]
    first = runner.invoke(app, [*args, "--world", str(tmp_path / "A")])
    assert first.exit_code == 0, first.output
    summary = out / "rap" / "seed0" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    other = runner.invoke(app, [*args, "--world", str(tmp_path / "B")])
    assert other.exit_code == 0, other.output
    backbones = [next((tmp_path / w / "cache" / "backbones").glob("*.safetensors")) for w in ("A", "B")]
    assert backbones[0].read_bytes() == backbones[1].read_bytes()
    assert summary.stat().st_mtime_ns == stamp  # read back, not trained again

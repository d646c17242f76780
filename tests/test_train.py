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
from conftest import micro_config
from typer.testing import CliRunner

from rap_deploy.checkpoint import load_checkpoint
from rap_deploy.cli.app import app
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
                warmup=1, seed=3, max_test_videos=8, cache_dir=str(cache), top_m=4)
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
    from rap_deploy.train import loop

    opts = dict(max_train_videos=16, max_test_videos=6)
    straight = loop.train_rap(_micro_options(synth_root, tmp_path / "straight", frame_cache, **opts), progress=False)
    assert straight["complete"] and straight["steps"] == 4  # 16 videos // 8 per batch × 2 epochs

    # Kill: the process dies in the middle of epoch 2 (after epoch 1's files were written).
    real_step, calls = loop._step, {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the second step of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_step", dying_step)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        loop.train_rap(_micro_options(synth_root, killed, frame_cache, **opts), progress=False)
    assert [r["epoch"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())] == [1]
    monkeypatch.setattr(loop, "_step", real_step)

    resumed = loop.train_rap(None, progress=False, resume=killed)
    assert resumed["resumed_after_epoch"] == 1 and resumed["complete"]
    assert _metrics_without_timing(killed) == _metrics_without_timing(tmp_path / "straight")
    assert _max_diff(_adapters(killed / "last.pt"), _adapters(tmp_path / "straight" / "last.pt")) <= 1e-6
    assert _max_diff(_adapters(killed / "best.pt"), _adapters(tmp_path / "straight" / "best.pt")) <= 1e-6
    # Training moved the adapters (so the comparison above is not trivially true).
    assert float(_adapters(killed / "last.pt")["lorm_attn.0.v_scale"].abs().max()) > 1e-4


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


def test_torchrun_two_processes_match_one_process(synth_root, frame_cache, tmp_path):
    from rap_deploy.train.loop import train_rap

    opts = dict(epochs=1, max_test_videos=4, lr=1e-2, warmup=0)
    train_rap(_micro_options(synth_root, tmp_path / "one", frame_cache, **opts), progress=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "-m",
           "rap_deploy.cli", "train", "--dataset", "msrvtt", "--data-root", str(synth_root), *MICRO_CLI,
           "--epochs", "1", "--batch-size", "8", "--lr", "1e-2", "--warmup", "0", "--seed", "3",
           "--max-test-videos", "4", "--top-m", "4", "--cache-dir", str(frame_cache), "--out", str(tmp_path / "two"),
           "--quiet", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["world_size"] == 2 and summary["steps"] == 3
    one, two = _adapters(tmp_path / "one" / "last.pt"), _adapters(tmp_path / "two" / "last.pt")
    assert _max_diff(one, two) <= 1e-5
    moved = max(float(v.abs().max()) for k, v in one.items() if k.endswith("v_shift"))
    assert moved > 1e-3  # LoRM's V starts at zero: the weights moved far more than the tolerance
    assert _metrics_without_timing(tmp_path / "one")[0]["loss"] == pytest.approx(
        _metrics_without_timing(tmp_path / "two")[0]["loss"], abs=1e-5)


# ----------------------------------------------------------------------------------------------- the CLI


def test_train_cli_end_to_end_and_resume(synth_root, frame_cache, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), *MICRO_CLI, "--out", str(run),
            "--epochs", "2", "--batch-size", "8", "--max-test-videos", "8", "--top-m", "4",
            "--cache-dir", str(frame_cache), "--quiet"]
    first = runner.invoke(app, [*args, "--max-epochs-this-run", "1"])
    assert first.exit_code == 0, first.output
    assert "stopped after epoch 1 of 2" in first.output
    assert {"best.pt", "last.pt", "metrics.jsonl", "summary.json"} <= {p.name for p in run.iterdir()}

    bad = runner.invoke(app, ["train", "--resume", str(run), "--lr", "0.5"])
    assert bad.exit_code == 2 and "differs from the resumed run" in bad.output

    second = runner.invoke(app, ["train", "--resume", str(run), "--json", "--quiet"])
    assert second.exit_code == 0, second.output
    summary = json.loads(second.output)
    assert summary["complete"] and summary["resumed_after_epoch"] == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
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


def test_train_cli_usage_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["train", "--clip", "rap-micro", "--data-root", str(tmp_path)])
    assert missing.exit_code == 2 and "--dataset is required" in missing.output
    nothing = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope")])  # a missing folder, said so
    assert nothing.exit_code == 2 and "does not exist" in nothing.output
    (tmp_path / "empty").mkdir()  # a folder without last.pt: the run stopped before its first epoch
    empty = runner.invoke(app, ["train", "--resume", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "no last.pt" in empty.output

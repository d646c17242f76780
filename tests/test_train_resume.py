"""Resuming a training run killed at a given point: the files it leaves and what the resumed run makes of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rap_deploy.checkpoint import load_checkpoint


def _options(synth_root, out, cache, **kw):
    """A two-epoch rap-micro run on 16 training videos (two steps per epoch), evaluated on 6 test videos."""
    from rap_deploy.train.loop import TrainOptions

    base = dict(dataset="msrvtt", data_root=str(synth_root), out=str(out), clip="rap-micro", pretrained="none",
                frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=2, batch_size=8, lr=5e-3,
                warmup=1, seed=3, max_train_videos=16, max_test_videos=6, cache_dir=str(cache), top_m=4,
                epoch_unit="video")
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory):
    """One decoded-frame cache for the module (each video is decoded once)."""
    return tmp_path_factory.mktemp("frames")


def _adapters_equal(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a).adapter_state, load_checkpoint(b).adapter_state
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _killed_after_first_epoch_2_checkpoint(monkeypatch, options) -> None:
    """Train ``options`` and stop it (KeyboardInterrupt) right after the first checkpoint file of epoch 2 is written."""
    from rap_deploy import checkpoint
    from rap_deploy.train import loop

    real_save = checkpoint.save_checkpoint

    def dying_save(ckpt, path):
        real_save(ckpt, path)
        if ckpt.extra.get("epoch") == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        loop.train_rap(options, progress=False)
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)


def test_kill_between_the_checkpoints_of_a_best_epoch_keeps_best_pt_the_summary_best(synth_root, frame_cache,
                                                                                      tmp_path, monkeypatch):
    """Killed just after the first checkpoint file of epoch 2 (the best epoch) was written. best.pt used to be
    written first: it then held epoch 2 beside epoch 1's last.pt, the resumed run trained epoch 2 again, and where
    that replay was not bit-identical (CUDA kernels, another --device: simulated by a lower replayed score) best.pt
    kept the killed epoch's weights while summary.json named epoch 1. last.pt is now written first, and the resumed
    run writes best.pt from it."""
    from rap_deploy.train import loop, training_run

    straight = loop.train_rap(_options(synth_root, tmp_path / "straight", frame_cache), progress=False)
    assert straight["best_epoch"] == 2

    killed = tmp_path / "killed"
    _killed_after_first_epoch_2_checkpoint(monkeypatch, _options(synth_root, killed, frame_cache))

    real_evaluate = training_run.evaluate_model

    def other_replay(*args, **kwargs):  # the replayed epoch scores lower than the killed one did
        result = real_evaluate(*args, **kwargs)
        result["asa"]["t2v"] = {**result["asa"]["t2v"], "R1": 0.0, "R5": 0.0, "R10": 0.0}
        return result

    monkeypatch.setattr(training_run, "evaluate_model", other_replay)
    resumed = loop.train_rap(None, progress=False, resume=killed)
    best = load_checkpoint(killed / "best.pt")
    assert best.extra["epoch"] == resumed["best_epoch"]
    assert best.extra["metrics"]["selection_score"] == resumed["best"]["selection_score"]
    assert resumed["best_epoch"] == 2 and _adapters_equal(killed / "best.pt", tmp_path / "straight" / "best.pt")
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_resume_refuses_a_data_root_holding_other_data_and_accepts_a_moved_copy(synth_root, frame_cache, tmp_path):
    """--data-root may change on resume (the data moved), but a folder holding other data (here one training video
    damaged, so its captions drop out) used to be trained on silently: the remaining epochs drew other batches than
    the uninterrupted run. It is now refused, naming both; an identical copy resumes to the uninterrupted result."""
    import shutil

    from rap_deploy.errors import UsageError
    from rap_deploy.train import loop

    loop.train_rap(_options(synth_root, tmp_path / "straight", frame_cache), progress=False)
    run = tmp_path / "run"
    first = loop.train_rap(_options(synth_root, run, frame_cache, max_epochs_this_run=1), progress=False)
    assert first["epochs_done"] == 1
    other = tmp_path / "other"
    shutil.copytree(synth_root, other)
    (other / "videos" / "video3.mp4").write_bytes(b"\x00not a video" * 50)
    with pytest.raises(UsageError, match=r"does not hold the data .*\(80 training captions of 16 usable videos.*now "
                                         r"75 training captions of 15"):
        loop.train_rap(None, progress=False, resume=run, overrides={"data_root": str(other)})
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 1  # nothing trained
    # the same ids and captions, but a training video replaced by another (valid) one: trained on silently before
    replaced = tmp_path / "replaced"
    shutil.copytree(synth_root, replaced)
    shutil.copyfile(replaced / "videos" / "video4.mp4", replaced / "videos" / "video3.mp4")
    with pytest.raises(UsageError, match=r"now 80 training captions of 16 usable videos.*other video content"):
        loop.train_rap(None, progress=False, resume=run, overrides={"data_root": str(replaced)})
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 1

    moved = tmp_path / "moved"
    shutil.copytree(synth_root, moved)
    resumed = loop.train_rap(None, progress=False, resume=run, overrides={"data_root": str(moved)})
    assert resumed["complete"] and _adapters_equal(run / "last.pt", tmp_path / "straight" / "last.pt")


def test_resume_refuses_test_videos_that_decode_otherwise_than_at_the_last_evaluation(synth_root, frame_cache,
                                                                                       tmp_path):
    """The data fingerprint holds the test split's ids and captions, not which of its videos decode: a test video
    that was undecodable (a copy not finished) and decodes at resume, or the other way round, resumed silently and the
    remaining epochs were scored on other test videos than the earlier ones (6 instead of 5), best.pt chosen across
    both. last.pt now records the test videos the last evaluation skipped; a resume that finds others is refused
    (exit 2, naming them), nothing trained; the same set resumes."""
    import shutil

    from rap_deploy.checkpoint import save_checkpoint
    from rap_deploy.data.datasets import load_split
    from rap_deploy.errors import CheckFailedError, UsageError
    from rap_deploy.train import loop

    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(synth_root, data)
    entry = load_split("msrvtt", data, "test", max_frames=4).videos[0]
    good = entry.path.read_bytes()
    entry.path.write_bytes(b"\x00not a video" * 50)  # skipped by every evaluation of the first run
    first = loop.train_rap(_options(data, run, frame_cache, max_epochs_this_run=1), progress=False)
    assert (first["last"]["test_videos"], first["last"]["test_skipped"]) == (5, 1)
    entry.path.write_bytes(good)
    with pytest.raises(UsageError, match=rf"test videos .*when the run in {run} was last evaluated .*decodes now: "
                                         rf"{entry.video_id}\b.*start a new run") as info:
        loop.train_rap(None, progress=False, resume=run)
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 1  # nothing trained
    stored = load_checkpoint(run / "last.pt")
    assert stored.extra["train_state"]["test_skipped"] == [entry.video_id]
    edited = tmp_path / "edited"
    edited.mkdir()
    stored.extra["train_state"]["test_skipped"] = [3]
    save_checkpoint(stored, edited / "last.pt")
    with pytest.raises(CheckFailedError, match="train_state.test_skipped is not a list of test video ids"):
        loop.train_rap(None, progress=False, resume=edited)
    del stored.extra["train_state"]["test_skipped"]  # a last.pt saved before it was recorded: not compared
    save_checkpoint(stored, edited / "last.pt")
    assert loop.train_rap(None, progress=False, resume=edited)["last"]["test_videos"] == 6
    entry.path.write_bytes(b"\x00not a video" * 50)  # the test videos as they were: resumes
    resumed = loop.train_rap(None, progress=False, resume=run)
    assert resumed["complete"] and (resumed["last"]["test_videos"], resumed["last"]["test_skipped"]) == (5, 1)


def _cli_args(synth_root, frame_cache) -> list[str]:
    """``rapdeploy train`` of :func:`_options`' run, without ``--out``."""
    return ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--clip", "rap-micro", "--pretrained",
            "none", "--frames", "4", "--topk", "4", "--heads", "2", "--asa-dim", "16", "--rank", "2", "--epochs", "2",
            "--batch-size", "8", "--max-train-videos", "16", "--max-test-videos", "6", "--top-m", "4",
            "--cache-dir", str(frame_cache), "--quiet"]


def test_a_new_run_into_a_folder_holding_a_run_is_refused_not_started_over(synth_root, frame_cache, tmp_path):
    """The same `train` command given again after a stop or a kill, without --resume, started the run over in its
    folder: its first epoch replaced last.pt (and best.pt, metrics.jsonl), losing the training done. It is now
    refused (exit 2) with the --resume line, nothing touched."""
    from typer.testing import CliRunner

    from rap_deploy.cli.app import app

    run = tmp_path / "run"
    args = [*_cli_args(synth_root, frame_cache), "--out", str(run)]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--max-epochs-this-run", "1"])
    assert first.exit_code == 0, first.output
    last = (run / "last.pt").read_bytes()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "holds a training run already" in again.output, again.output
    assert f"--resume {run}" in " ".join(again.output.split()) and (run / "last.pt").read_bytes() == last
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--quiet", "--json"])
    assert resumed.exit_code == 0 and json.loads(resumed.output)["resumed_after_epoch"] == 1


def test_resume_under_a_process_count_that_does_not_split_the_stored_batch_is_a_usage_error(synth_root, frame_cache,
                                                                                          tmp_path, monkeypatch):
    """A run on 16 training videos with --batch-size 128 trains in global batches of 16 (one epoch's items) and keeps
    that batch on resume. Resumed under torchrun with 3 processes (simulated: rank 0 of 3), the check of the new
    --batch-size (15 there) passed, and the stored 16 then crashed the first step with a ValueError traceback from
    the sharding; it is now a usage error naming the batch, before anything is trained or written."""
    from rap_deploy.errors import UsageError
    from rap_deploy.train import distributed as D
    from rap_deploy.train import loop

    run = tmp_path / "run"
    first = loop.train_rap(_options(synth_root, run, frame_cache, batch_size=128, max_epochs_this_run=1),
                           progress=False)
    assert first["batch_size"] == 16
    metrics = (run / "metrics.jsonl").read_bytes()
    monkeypatch.setattr(D, "setup", lambda device="auto": D.DistContext(rank=0, world_size=3))
    for name in ("barrier", "broadcast_parameters", "cleanup"):
        monkeypatch.setattr(D, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(D, "gather_strings", lambda value, ctx: [value] * ctx.world_size)  # every node: same data
    with pytest.raises(UsageError, match="global batch of 16 must be a multiple of the 3 processes"):
        loop.train_rap(None, progress=False, resume=run)
    assert (run / "metrics.jsonl").read_bytes() == metrics


def test_rng_state_of_more_gpus_than_this_process_sees_restores_those_it_has(monkeypatch):
    """last.pt keeps one CUDA generator state per GPU the run saw (all of a node's under torchrun). Resumed where
    fewer are visible (another node, CUDA_VISIBLE_DEVICES), torch's set_rng_state_all raised IndexError (a
    traceback) for the missing ones; those this process has are restored now. (Simulated: one GPU, two states.)"""
    from rap_deploy.train.loop import restore_rng_state

    restored = []

    def set_rng_state(state, device="cuda"):
        if int(device) >= 1:
            raise IndexError("tuple index out of range")  # torch.cuda.default_generators[idx]
        restored.append(int(device))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    cuda_state = torch.zeros(16, dtype=torch.uint8)
    restore_rng_state({"torch": torch.get_rng_state(), "cuda": [cuda_state, cuda_state]})
    assert restored == [0]


def test_an_edited_epoch_history_is_named_not_a_traceback_or_trained_on(synth_root, frame_cache, tmp_path):
    """last.pt's epoch records were checked for being dicts only: a record without its epoch, or with a recall or
    seconds that is no number, resumed into a KeyError / TypeError traceback, and records of other epochs (or none)
    were resumed into a metrics.jsonl that skipped or repeated epochs. Each is now a damaged run (exit 1)."""
    import copy
    import re

    from rap_deploy.checkpoint import save_checkpoint
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.train import loop

    run = tmp_path / "run"
    loop.train_rap(_options(synth_root, run, frame_cache, max_epochs_this_run=1), progress=False)
    good = load_checkpoint(run / "last.pt")
    edits = {"holds epochs": lambda h: h[0].pop("epoch"), "not finite numbers": lambda h: h[0]["t2v"].update(R1="x"),
             "holds epochs [5]": lambda h: h[0].update(epoch=5), "holds epochs []": list.clear}
    for message, edit in edits.items():
        ckpt = copy.deepcopy(good)
        edit(ckpt.extra["train_state"]["history"])
        edited = tmp_path / "edited"
        edited.mkdir(exist_ok=True)
        save_checkpoint(ckpt, edited / "last.pt")
        with pytest.raises(CheckFailedError, match="train_state.history.*" + re.escape(message)):
            loop.train_rap(None, progress=False, resume=edited)


def test_a_diverged_epoch_that_is_not_evaluated_stops_the_run_before_it_is_written(synth_root, frame_cache, tmp_path,
                                                                                   monkeypatch):
    """Divergence was caught only by an evaluation: an epoch that is not evaluated (--eval-every 2 here, stopped by
    --max-epochs-this-run 1) wrote NaN adapters into last.pt and metrics.jsonl and the command succeeded (later
    epochs would have trained on NaN). The weights are now checked after every epoch: exit 1, nothing written.
    (Simulated: the loss is made NaN.)"""
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.train import loop, training_run

    real_loss = training_run.batch_loss
    monkeypatch.setattr(training_run, "batch_loss", lambda *args, **kwargs: real_loss(*args, **kwargs) * float("nan"))
    run = tmp_path / "run"
    with pytest.raises(CheckFailedError, match=r"training diverged in epoch 1: adapter weights are NaN.*--lr"):
        loop.train_rap(_options(synth_root, run, frame_cache, epochs=3, eval_every=2, max_epochs_this_run=1),
                       progress=False)
    assert not (run / "last.pt").exists() and not (run / "metrics.jsonl").exists()


def test_resume_with_the_run_options_and_another_out_is_refused(synth_root, frame_cache, tmp_path):
    """`train --resume A --dataset ... --out B` (the first command with --resume added, and another --out) locked
    folder B and trained in A, so a second `train --resume A` running at the same time wrote A unlocked too (without
    --dataset the two folders were already compared). It is now refused (exit 2) before anything is trained."""
    from typer.testing import CliRunner

    from rap_deploy.cli.app import app

    run, other = tmp_path / "run", tmp_path / "other"
    runner = CliRunner()
    first = runner.invoke(app, [*_cli_args(synth_root, frame_cache), "--out", str(run), "--max-epochs-this-run", "1"])
    assert first.exit_code == 0, first.output
    last = (run / "last.pt").read_bytes()
    res = runner.invoke(app, [*_cli_args(synth_root, frame_cache), "--resume", str(run), "--out", str(other)])
    assert res.exit_code == 2 and "differs from --resume" in res.output, res.output
    assert (run / "last.pt").read_bytes() == last and not other.exists()


def test_best_pt_left_by_another_run_is_replaced_when_resuming_after_the_best_epoch(synth_root, frame_cache, tmp_path,
                                                                                  monkeypatch):
    """A folder kept with only an earlier run's best.pt (its last.pt removed) takes a new run; killed between that
    run's last.pt and best.pt of its first evaluated epoch, the resume saw a best.pt of the same epoch number and kept
    it: the other run's weights under this run's summary. best.pt is now compared by its weights, and written
    again. (The earlier run's best.pt is made here from the new run's, its weights changed.)"""
    import dataclasses

    from rap_deploy import checkpoint
    from rap_deploy.train import loop

    run = tmp_path / "run"  # epoch 1 is not evaluated: epoch 2 is this run's first best.pt
    _killed_after_first_epoch_2_checkpoint(monkeypatch, _options(synth_root, run, frame_cache, eval_every=2))
    real_save = checkpoint.save_checkpoint
    last = load_checkpoint(run / "last.pt")
    other = {k: v + 1 for k, v in last.adapter_state.items()}
    real_save(dataclasses.replace(last, adapter_state=other, extra={"epoch": 2}), run / "best.pt")
    resumed = loop.train_rap(None, progress=False, resume=run)
    assert resumed["best_epoch"] == 2 and _adapters_equal(run / "best.pt", run / "last.pt")


def test_temporary_files_a_killed_write_left_are_removed_when_the_run_resumes(synth_root, frame_cache, tmp_path):
    """A SIGKILL (the OOM killer, a preempted job) during a write of last.pt, best.pt, metrics.jsonl or summary.json
    leaves the hidden temporary file (up to a checkpoint's size; a kill per write); the resumed run kept every one.
    They are deleted when the run starts, under the run folder's lock that train_rap now takes itself (gpu_check
    calls it without one: a run another process writes is refused, its files kept); other files in the folder,
    another file's temporary too (``.last.pt.bak.*.bak.tmp``, which the old ``.last.pt.*.tmp`` glob deleted), stay."""
    from conftest import held_folder_lock

    from rap_deploy.locks import FolderBusyError
    from rap_deploy.train import loop

    run = tmp_path / "run"
    loop.train_rap(_options(synth_root, run, frame_cache, max_epochs_this_run=1), progress=False)
    left = [run / ".last.pt.k2x9_a1.pt.tmp", run / ".best.pt.0q3z.pt.tmp", run / ".metrics.jsonl.abc.jsonl.tmp",
            run / ".summary.json.x.json.tmp"]
    for tmp in left:
        tmp.write_bytes(b"partial" * 100)
    others = [run / ".notes.tmp", run / ".last.pt.bak.k3b_c3hn.bak.tmp"]
    for path in others:
        path.write_text("mine")
    with held_folder_lock(run, "train", "run folder"), pytest.raises(FolderBusyError):
        loop.train_rap(None, progress=False, resume=run)  # a live writer's files: left alone
    assert all(tmp.exists() for tmp in left)
    loop.train_rap(None, progress=False, resume=run)
    assert not any(tmp.exists() for tmp in left) and all(path.read_text() == "mine" for path in others)


def test_a_data_fingerprint_saved_before_the_content_was_is_compared_without_it(tmp_path):
    """A last.pt written before the training videos' content was fingerprinted resumes on the same data as before;
    one that records it is refused on other content."""
    from rap_deploy.errors import UsageError
    from rap_deploy.train.run_state import check_same_data

    options = _options(tmp_path, tmp_path / "run", tmp_path / "frames")
    now = {"sha256": "a", "content_sha256": "c", "train_captions": 80, "train_videos": 16, "test_videos": 6,
           "test_captions": 6}
    check_same_data({k: v for k, v in now.items() if k != "content_sha256"}, now, options)
    check_same_data(dict(now), now, options)
    with pytest.raises(UsageError, match="other video content"):
        check_same_data({**now, "content_sha256": "d"}, now, options)


def test_resuming_a_finished_run_says_nothing_was_trained(capsys, monkeypatch):
    """`rapdeploy train --resume RUN` of a complete run trained nothing and printed the run's table and step count
    as if it had just trained (found walking the README's --resume); it now says so, and a run that trained (or a
    fresh --epochs 0 evaluation) does not."""
    from rap_deploy.cli.train_cmds import _print_train_summary

    monkeypatch.setenv("COLUMNS", "300")
    recall = {"R1": 1.0, "R5": 2.0, "R10": 3.0, "MnR": 4.0}
    base = {"run_dir": "/w/run", "best": {"epoch": 2, "t2v": recall, "v2t": recall}, "variant": "rap",
            "clip": "rap-micro", "trainable_params": 1, "total_params": 2, "steps": 10, "batch_size": 8,
            "train_seconds": 1.0, "wall_seconds": 2.0, "world_size": 1, "device": "cpu", "skipped_videos": [],
            "complete": True, "epochs_done": 2, "epochs": 2, "best_epoch": 2, "selection_rule": "rsum"}
    for resumed, epochs, said in ((2, 2, True), (1, 2, False), (None, 2, False), (None, 0, False)):
        _print_train_summary({**base, "resumed_after_epoch": resumed, "epochs": epochs})
        assert ("nothing trained" in capsys.readouterr().out) is said, (resumed, epochs)


def test_resume_with_dataset_and_no_data_root_continues_on_the_run_s_stored_data(synth_root, frame_cache, tmp_path,
                                                                                   monkeypatch):
    """`train --resume RUN --dataset msrvtt` without --data-root resolved the data folder as a new run does
    ($RAPDEPLOY_DATA, else "no dataset folder") instead of reading the one stored in RUN/last.pt: it failed with no
    RAPDEPLOY_DATA, and with one set trained on (or was refused over) another folder. It now continues on the stored
    folder, and a --dataset other than the run's is refused naming last.pt, both values and the fix (exit 2)."""
    from typer.testing import CliRunner

    from rap_deploy.cli.app import app

    run, elsewhere = tmp_path / "run", tmp_path / "other-data"
    elsewhere.mkdir()
    runner = CliRunner()
    first = runner.invoke(app, [*_cli_args(synth_root, frame_cache), "--out", str(run), "--max-epochs-this-run", "1"])
    assert first.exit_code == 0, first.output
    last = (run / "last.pt").read_bytes()
    other = runner.invoke(app, ["train", "--resume", str(run), "--dataset", "msvd", "--quiet"])
    said = " ".join(other.output.split())
    assert other.exit_code == 2 and "--dataset msvd differs from the resumed run's msrvtt" in said, other.output
    assert str(run / "last.pt") in said and "drop the option" in said and (run / "last.pt").read_bytes() == last
    monkeypatch.delenv("RAPDEPLOY_DATA", raising=False)
    for after_epoch, env in ((1, None), (2, str(elsewhere))):  # then RAPDEPLOY_DATA naming an empty folder
        if env is not None:
            monkeypatch.setenv("RAPDEPLOY_DATA", env)
        res = runner.invoke(app, ["train", "--resume", str(run), "--dataset", "msrvtt", "--quiet", "--json"])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output)
        assert summary["complete"] and summary["resumed_after_epoch"] == after_epoch
        assert summary["last"]["test_videos"] == 6  # evaluated on the stored folder's test split


def test_resume_with_pretrained_accepts_the_moved_backbone_and_refuses_other_weights(micro_checkpoint, synth_root,
                                                                                      frame_cache, tmp_path,
                                                                                      monkeypatch):
    """`train --resume RUN --pretrained FILE` after the run's backbone file moved: FILE with the sha256 the run's
    last.pt recorded is the same backbone (the run resumes on it, and last.pt names it where it is now). FILE with
    other weights is refused before anything is trained (exit 2), naming both files; its fix was "drop the option",
    which after the move was refused again (the recorded file does not exist). It now names the recorded sha256 and
    the fix that works: drop --pretrained while the run's file is at its recorded path, else pass it where it is.
    Without --pretrained, the refusal of the moved file names that fix too (it said only: put the file back).
    A run started with a relative --pretrained and resumed with the same file's absolute path (the path last.pt's
    backbone records) was refused as another backbone; it resumes."""
    import shutil

    from typer.testing import CliRunner

    from rap_deploy.backbone_file import save_backbone
    from rap_deploy.cli.app import app

    weights = {k: v.contiguous() for k, v in load_checkpoint(micro_checkpoint).backbone_state.items()}
    backbone = save_backbone(weights, "rap-micro", tmp_path / "world" / "rap-micro.safetensors")
    other = save_backbone({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, "rap-micro",
                          tmp_path / "other.safetensors")
    run, runner = tmp_path / "run", CliRunner()
    args = [*_cli_args(synth_root, frame_cache), "--out", str(run), "--max-epochs-this-run", "1"]
    args[args.index("--pretrained") + 1] = "world/rap-micro.safetensors"  # relative: stored as given
    args[args.index("--epochs") + 1] = "3"
    monkeypatch.chdir(tmp_path)
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    absolute = runner.invoke(app, ["train", "--resume", str(run), "--pretrained", str(backbone.resolve()),
                                   "--max-epochs-this-run", "1", "--quiet", "--json"])
    assert absolute.exit_code == 0 and json.loads(absolute.stdout)["resumed_after_epoch"] == 1, absolute.output
    last = (run / "last.pt").read_bytes()
    sha = load_checkpoint(run / "last.pt").backbone.sha256

    def refused_with(fix: str) -> None:
        res = runner.invoke(app, ["train", "--resume", str(run), "--pretrained", str(other), "--quiet"])
        said = " ".join(res.output.split())
        assert res.exit_code == 2 and f"--pretrained {other} (sha256 " in said, res.output
        assert f"trained on: {backbone} (sha256 {sha[:12]}…, stored in {run / 'last.pt'}" in said, said
        assert fix in said and "Traceback" not in res.output, said
        assert (run / "last.pt").read_bytes() == last  # nothing trained

    refused_with(f"drop --pretrained (the run reads {backbone})")
    moved = tmp_path / "world-moved" / backbone.name
    moved.parent.mkdir()
    shutil.move(backbone, moved)
    refused_with("pass the run's weights file where it is now")
    gone = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])  # said only: put it back at that path
    said = " ".join(gone.output.split())
    assert gone.exit_code == 2 and f"backbone weights file {backbone}, which does not exist" in said, gone.output
    assert f"`rapdeploy train --resume {run} --pretrained FILE` (the file of sha256 {sha[:12]}…)" in said, said
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--pretrained", str(moved), "--quiet", "--json"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["complete"] and summary["resumed_after_epoch"] == 2
    stored = load_checkpoint(run / "last.pt")
    assert stored.backbone.value == str(moved) and stored.extra["train_options"]["pretrained"] == str(moved)


def test_a_resume_refusal_names_the_option_as_it_is_typed(synth_root, frame_cache, tmp_path):
    """`train --resume RUN --rank 3` was refused as '--lorm-rank 3 differs ...', `--no-asa` as '--use-asa False',
    `--selection` as '--asa-selection': options that do not exist (the fields' names). The refusal now names the
    option as typed (the stored side of a switch too; a run started without the option says so, not 'None'),
    exit 2, last.pt untouched."""
    from typer.testing import CliRunner

    from rap_deploy.cli.app import app

    run = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, [*_cli_args(synth_root, frame_cache), "--out", str(run), "--max-epochs-this-run", "1"])
    assert first.exit_code == 0, first.output
    last = (run / "last.pt").read_bytes()
    for given, named in ((["--rank", "3"], "--rank 3 differs from the resumed run's 2"),
                         (["--topk", "2"], "--topk 2 differs from the resumed run's 4"),
                         (["--heads", "4"], "--heads 4 differs from the resumed run's 2"),
                         (["--selection", "saliency"], "--selection saliency differs from the resumed run's text"),
                         (["--no-asa"], "--no-asa differs from the resumed run's --asa"),
                         (["--no-lorm"], "--no-lorm differs from the resumed run's --lorm"),
                         (["--freeze-offsets"], "--freeze-offsets differs from the resumed run's --learn-offsets"),
                         (["--preset", "paper"], "--preset paper differs from the resumed run, started without "
                                                 "--preset"),
                         (["--lr", "0.5"], "--lr 0.5 differs from the resumed run's")):
        res = runner.invoke(app, ["train", "--resume", str(run), "--quiet", *given])
        said = " ".join(res.output.split())
        assert res.exit_code == 2 and named in said, (given, said)
        assert "--lorm-rank" not in said and "--use-" not in said and "--asa-" not in said, said
        assert "True" not in said and "False" not in said and "None" not in said and "drop the option" in said, said
    assert (run / "last.pt").read_bytes() == last


def test_resume_with_the_run_s_relative_pretrained_finds_the_moved_file_it_names_now(micro_checkpoint, synth_root,
                                                                                    frame_cache, tmp_path,
                                                                                    monkeypatch):
    """A run started with a relative ``--pretrained world/rap-micro.safetensors`` (stored as typed), whose world folder
    then moved, resumed from the new parent folder with the same ``--pretrained`` text: that text names the moved
    file of the recorded sha256 now, so the run resumes on it. It was refused (exit 2) with 'pass it where it is now
    ... --pretrained FILE', the option just given: a value equal to the stored one skipped the sha256 check."""
    from typer.testing import CliRunner

    from rap_deploy.backbone_file import save_backbone
    from rap_deploy.cli.app import app

    weights = {k: v.contiguous() for k, v in load_checkpoint(micro_checkpoint).backbone_state.items()}
    save_backbone(weights, "rap-micro", tmp_path / "a" / "world" / "rap-micro.safetensors")
    run, runner = tmp_path / "run", CliRunner()
    args = [*_cli_args(synth_root, frame_cache), "--out", str(run), "--max-epochs-this-run", "1"]
    args[args.index("--pretrained") + 1] = "world/rap-micro.safetensors"
    monkeypatch.chdir(tmp_path / "a")
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "world").rename(tmp_path / "b" / "world")
    monkeypatch.chdir(tmp_path / "b")
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--pretrained", "world/rap-micro.safetensors",
                                  "--quiet", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["resumed_after_epoch"] == 1
    moved = (tmp_path / "b" / "world" / "rap-micro.safetensors").resolve()
    assert load_checkpoint(run / "last.pt").backbone.value == str(moved)


def test_the_moved_backbone_refusal_names_a_resume_command_that_runs_from_a_folder_with_a_space(tmp_path):
    """The refusal of a run whose referenced backbone file is gone names `rapdeploy train --resume RUN --pretrained
    FILE`; RUN was pasted unquoted, so for 'my runs/rap' the shell split it into two arguments. It is shell-quoted."""
    import shlex
    from types import SimpleNamespace

    from rap_deploy.errors import UsageError
    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.train.run_state import _check_backbone_there

    run = tmp_path / "my runs" / "rap"
    spec = BackboneSpec("rap-micro", "file", str(tmp_path / "gone.safetensors"), "ab" * 32)
    with pytest.raises(UsageError) as err:
        _check_backbone_there(run, SimpleNamespace(backbone=spec, backbone_state=None))
    command = str(err.value).split("`")[1]
    assert shlex.split(command) == ["rapdeploy", "train", "--resume", str(run), "--pretrained", "FILE"], command


@pytest.mark.parametrize(("clip", "pretrained"), [("rap-micro", "none"), ("ViT-B-32", "openai")])
def test_resume_with_the_run_s_own_tag_or_none_keeps_its_backbone(clip, pretrained):
    """`train --resume RUN --pretrained none` (or the run's tag) repeats the stored option: nothing moved. A run
    without a weights file records no path (``none``: value None), which the moved-file check (642f603) passed to
    Path(): a TypeError traceback instead of the resume."""
    from types import SimpleNamespace

    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.train.run_state import moved_backbone

    spec = BackboneSpec(clip, "none" if pretrained == "none" else "tag", None if pretrained == "none" else pretrained)
    ckpt, options = SimpleNamespace(backbone=spec), SimpleNamespace(pretrained=pretrained)
    overrides = {"pretrained": pretrained}
    assert moved_backbone(ckpt, options, overrides) == (ckpt, overrides)
    assert options.pretrained == pretrained


def test_resume_refusals_say_how_many_names_they_leave_out(tmp_path):
    """A --resume folder holding 5 runs named 3 and ended in ', …', one of 5 other files the same; a damaged
    history's epochs were cut at 5 as '[0, 1, 2, 3, 5]...', and test videos that decode otherwise at 5 with ', ...':
    none said how many more. Each now ends in 'and N more' (name_lists.some_names)."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from rap_deploy.cli.app import app
    from rap_deploy.errors import CheckFailedError, UsageError
    from rap_deploy.train.run_state import _check_history, check_same_test_videos

    runs, foreign = tmp_path / "runs", tmp_path / "foreign"
    for i in range(5):
        (runs / f"r{i}").mkdir(parents=True)
        (runs / f"r{i}" / "last.pt").write_bytes(b"")
        foreign.mkdir(exist_ok=True)
        (foreign / f"f{i}.txt").write_text("x")
    said = {}
    for name, folder in (("runs", runs), ("foreign", foreign)):
        result = CliRunner().invoke(app, ["train", "--resume", str(folder), "--quiet"])
        assert result.exit_code == 2, (result.exception, result.output)
        said[name] = " ".join(result.output.split())
    assert f"pass one of them: {runs / 'r0'}, {runs / 'r1'}, {runs / 'r2'} and 2 more" in said["runs"], said
    assert "(no last.pt; it holds f0.txt, f1.txt, f2.txt and 2 more)" in said["foreign"], said
    with pytest.raises(CheckFailedError, match=r"holds epochs \[0, 1, 2, 3, 5 and 3 more\], not one record per "):
        _check_history(tmp_path / "last.pt", [{"epoch": e} for e in (0, 1, 2, 3, 5, 6, 7, 8)], 8)
    options = SimpleNamespace(data_root=str(tmp_path / "data"), out=str(runs / "r0"))
    with pytest.raises(UsageError, match=r"decodes now: v0, v1, v2, v3, v4 and 2 more; undecodable now: none\)"):
        check_same_test_videos([f"v{i}" for i in range(7)], [], options)


def test_a_damaged_historys_epochs_are_shown_cut_not_whole(tmp_path):
    """The damaged-history refusal showed each epoch of the checkpoint's train_state as its whole repr: a crafted
    last.pt made the one-line error as long as its values (a 100,000-character string epoch), and an int epoch with
    more digits than Python prints ended in a ValueError traceback. Each is now cut to 40 characters."""
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.train.run_state import _check_history

    history = [{"epoch": 0}, {"epoch": "x" * 100_000}, {"epoch": 10 ** 5000}, {"epoch": list(range(10_000))}]
    shown = r"holds epochs \[0, 'x+\.\.\.x+', <int too large to show>, \[0, 1, .*\]\], not one record per"
    with pytest.raises(CheckFailedError, match=shown) as raised:
        _check_history(tmp_path / "last.pt", history, 3)
    assert len(str(raised.value)) < 400, str(raised.value)


@pytest.mark.parametrize("value", ["x" * 100_000, 10 ** 5000, list(range(10_000))], ids=["str", "int", "list"])
def test_a_damaged_train_states_counter_is_shown_cut_not_whole(tmp_path, value):
    """train_state's epoch/step/... refusal showed the value as its whole repr (9c12489 cut only the history's
    epochs): a 100,000-character string made a 100,000-character error line, and an int past Python's 4300 printable
    digits ended in a ValueError traceback instead of the refusal."""
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.train.run_state import _checked_state

    with pytest.raises(CheckFailedError, match=r"train_state\.epoch .* is not an integer in \[0, ") as raised:
        _checked_state(tmp_path / "last.pt", {"epoch": value})
    assert len(str(raised.value)) < 400, str(raised.value)


def test_resume_of_a_run_whose_backbone_file_holds_other_weights_names_both_fixes(micro_checkpoint, synth_root,
                                                                                    frame_cache, tmp_path):
    """A run's referenced backbone file replaced by other weights (pre-trained again) was refused with the
    checkpoint's advice only, 'put the file it was made with back at that path'; a resumed run also takes that file
    where it is now (--pretrained FILE of the recorded sha256), which the refusal now names too, and which resumes."""
    import shutil

    from typer.testing import CliRunner

    from rap_deploy.backbone_file import save_backbone
    from rap_deploy.cli.app import app
    from rap_deploy.train import loop

    weights = {k: v.contiguous() for k, v in load_checkpoint(micro_checkpoint).backbone_state.items()}
    backbone = save_backbone(weights, "rap-micro", tmp_path / "world" / "rap-micro.safetensors")
    run = tmp_path / "run"
    loop.train_rap(_options(synth_root, run, frame_cache, pretrained=str(backbone), max_epochs_this_run=1),
                   progress=False)
    sha = load_checkpoint(run / "last.pt").backbone.sha256
    kept = shutil.copy(backbone, tmp_path / "kept.safetensors")
    save_backbone({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, "rap-micro", backbone)
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "--resume", str(run), "--quiet"])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2, (refused.exception, said)
    assert f"backbone weights file {backbone}, which holds other weights now" in said, said
    from rap_deploy.atomic import sha256_file

    assert sha256_file(backbone)[:12] not in said  # the file last.pt names: its own hash is never told
    assert f"the run was trained on the file of sha256 {sha[:12]}…; put it back at that path" in said, said
    assert f"`rapdeploy train --resume {run} --pretrained FILE` (the file of sha256 {sha[:12]}…)" in said, said
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--pretrained", str(kept), "--quiet", "--json"])
    assert resumed.exit_code == 0 and json.loads(resumed.stdout)["resumed_after_epoch"] == 1, resumed.output

"""``rapdeploy train``'s model and recipe switches reach the run (test_train.py drives the CLI with the sizes and
the schedule; none of its tests passed --no-lorm, --no-asa, --selection, --freeze-offsets, --offset-lr-mult,
--eval-initial, --test-split or --amp, and --weight-decay and --grad-clip only to see bad values refused, so a
switch mapped to the wrong option on its way to the run passed)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.checkpoint import load_checkpoint
from rap_deploy.cli.app import app

MICRO_CLI = ["--clip", "rap-micro", "--pretrained", "none", "--frames", "4", "--topk", "4", "--heads", "2",
             "--asa-dim", "16", "--rank", "2"]


def _args(synth_root, cache, out, *extra: str) -> list[str]:
    return ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), *MICRO_CLI, "--out", str(out),
            "--batch-size", "8", "--max-test-videos", "6", "--top-m", "4", "--epoch-unit", "video", "--cache-dir",
            str(cache), "--quiet", "--json", *extra]


def _without_options(args: list[str], names: tuple[str, ...]) -> list[str]:
    """``args`` without each option in ``names`` and the value after it."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        else:
            kept.append(arg)
    return kept


def test_train_switches_reach_the_model_and_the_recipe(synth_root, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = _args(synth_root, tmp_path / "frames", run, "--epochs", "1", "--no-lorm", "--selection", "saliency",
                 "--freeze-offsets", "--offset-lr-mult", "3", "--eval-initial", "--test-split", "train", "--amp",
                 "off", "--weight-decay", "0.2", "--grad-clip", "0.5")
    res = runner.invoke(app, _without_options(args, ("--rank",)))  # LoRM's rank: refused with --no-lorm
    assert res.exit_code == 0, res.output
    last = load_checkpoint(run / "last.pt")
    assert (last.config.use_lorm, last.config.use_asa, last.config.asa_selection) == (False, True, "saliency")
    options = last.extra["train_options"]
    assert options["freeze_offsets"] is True and options["offset_lr_mult"] == 3.0
    assert (options["eval_initial"], options["test_split"], options["amp"]) == (True, "train", "off")
    assert (options["weight_decay"], options["grad_clip"]) == (0.2, 0.5)
    model = last.build_model()
    assert model.lorm_attn is None and model.lorm_mlp is None
    assert torch.count_nonzero(model.asa.patch_offset) == 0 and torch.count_nonzero(model.asa.time_offset) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # --eval-initial: the starting model is evaluated as epoch 0
    # the train split holds 5 captions per video, the test split 1: 6 videos give 30 text queries there
    assert all(r["t2v"]["queries"] == 30 and r["v2t"]["queries"] == 6 for r in rows), rows

    no_asa = tmp_path / "no_asa"
    no_asa_args = _without_options(_args(synth_root, tmp_path / "frames", no_asa, "--epochs", "0", "--no-asa"),
                                   ("--topk", "--heads", "--asa-dim", "--top-m"))  # ASA's options: refused here
    res = runner.invoke(app, no_asa_args)
    assert res.exit_code == 0, res.output
    last = load_checkpoint(no_asa / "last.pt")
    assert (last.config.use_lorm, last.config.use_asa) == (True, False) and last.build_model().asa is None


@pytest.mark.parametrize(("given", "named"), [
    (["--rank", "3"], "--rank 3 conflicts with checkpoint"),
    (["--topk", "2"], "--topk 2 conflicts with checkpoint"),
    (["--heads", "4"], "--heads 4 conflicts with checkpoint"),
    (["--selection", "saliency"], "--selection saliency conflicts with checkpoint"),
    (["--no-asa"], "--no-asa conflicts with checkpoint"),
    (["--no-lorm"], "--no-lorm conflicts with checkpoint"),
    (["--frames", "8"], "--frames 8 conflicts with checkpoint"),
    (["--preset", "paper"], "--preset paper (asa_dim = 32) conflicts with checkpoint"),
    (["--preset", "default"], "--preset default (lorm_rank = 4) conflicts with checkpoint"),
])
def test_a_model_option_against_the_checkpoint_is_refused_by_the_name_it_is_typed_with(micro_checkpoint, tmp_path,
                                                                                        given, named):
    """`train --checkpoint CKPT --rank 3` was refused as '--lorm-rank 3 conflicts ...', `--no-asa` as '--use-asa
    False', `--selection` as '--asa-selection': options that do not exist (the config's field names), and a size the
    preset set as if the user had typed its option. Refused before any data is read or anything is written."""
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--checkpoint",
                                   str(micro_checkpoint), "--out", str(out), "--quiet", *given])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and named in text, text
    assert "--lorm-rank" not in text and "--use-" not in text and "--asa-selection" not in text
    assert "drop --preset" in text if given[0] == "--preset" else "drop the option" in text
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--reference-backbone", "--embed-backbone"])
def test_a_backbone_storage_switch_beside_checkpoint_is_refused_not_ignored(micro_checkpoint, tmp_path, flag):
    """`train --checkpoint CKPT --embed-backbone` (or --reference-backbone) trained and wrote best.pt/last.pt storing
    the backbone as CKPT does (training_run: checkpoint_from_model keeps the template's backbone), the option ignored
    without a word; it is refused before anything is read or written, as --clip beside --checkpoint is."""
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--checkpoint",
                                   str(micro_checkpoint), "--out", str(out), "--quiet", flag])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, text
    assert f"{flag} chooses how a new model (--clip/--backbone) stores its backbone" in text, text
    assert f"drop {flag}" in text and not out.exists()

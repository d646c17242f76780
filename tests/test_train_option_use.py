"""``rapdeploy train`` refuses options that act on a part the model lacks (``--topk`` with ``--no-asa``,
``--lorm-lr-mult`` with ``--no-lorm``): they were accepted and did nothing, and ``info`` and ``summary.json`` called a
``--no-asa`` model ``rap`` with nothing saying it had no ASA head. Now every summary names the model's adapters."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.config import RAPConfig
from rap_deploy.errors import UsageError
from rap_deploy.train.option_use import check_options_apply, unused_options


@pytest.mark.parametrize(("changes", "adapters"), [
    ({}, "LoRM + ASA"),
    ({"use_asa": False}, "LoRM only"),
    ({"variant": "rap_light"}, "LoRM only"),
    ({"use_lorm": False}, "ASA only"),
    ({"use_lorm": False, "use_asa": False}, "none (meanP)"),
])
def test_a_config_names_its_adapters(changes, adapters):
    assert RAPConfig(**changes).adapters == adapters


def test_options_of_a_missing_part_are_named_as_typed():
    given = {"asa_topk": 4, "asa_selection": "saliency", "freeze_offsets": True, "offset_lr_mult": 3.0,
             "selection_loss_weight": 0.5, "top_m": 4, "lorm_rank": 2, "lorm_lr_mult": 5.0, "lr": 0.01}
    assert unused_options(RAPConfig(use_asa=False), given) == [
        "--topk 4", "--selection saliency", "--freeze-offsets", "--offset-lr-mult 3.0", "--selection-loss-weight 0.5",
        "--top-m 4"]
    assert unused_options(RAPConfig(use_lorm=False), given) == ["--rank 2", "--lorm-lr-mult 5.0"]
    assert unused_options(RAPConfig(variant="rap_light"), {"use_asa": True, "lr": 0.01}) == ["--asa"]
    assert unused_options(RAPConfig(), given) == []  # every part there: every option acts
    assert unused_options(RAPConfig(use_asa=False), {"asa_topk": None, "use_asa": False}) == []  # unset, or the switch
    with pytest.raises(UsageError) as refused:
        check_options_apply(RAPConfig(use_lorm=False), {"lorm_lr_mult": 5.0})
    assert str(refused.value) == ("--lorm-lr-mult 5.0 acts on a part this model lacks (LoRM; its adapters: ASA only): "
                                  "drop it, or train a model with that part")
    check_options_apply(RAPConfig(), given)
    with pytest.raises(UsageError) as refused:  # --no-asa given too: the refusal still names only LoRM
        check_options_apply(RAPConfig(use_asa=False, use_lorm=False), {"use_asa": False, "lorm_rank": 2})
    assert "(LoRM; its adapters: none (meanP))" in str(refused.value)


def test_train_refuses_asa_options_with_no_asa_before_writing(synth_root, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--clip",
                                   "rap-micro", "--pretrained", "none", "--frames", "4", "--no-asa", "--topk", "4",
                                   "--freeze-offsets", "--out", str(out), "--cache-dir", str(tmp_path / "frames"),
                                   "--quiet"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "--topk 4, --freeze-offsets act on a part this model lacks (an ASA head; its adapters: LoRM only)" in text
    assert not out.exists()


def test_info_and_the_run_summary_name_the_adapters(synth_root, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--clip", "rap-micro",
                              "--pretrained", "none", "--frames", "4", "--rank", "2", "--no-asa", "--epochs", "0",
                              "--max-test-videos", "4", "--out", str(out), "--cache-dir", str(tmp_path / "frames"),
                              "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["adapters"] == "LoRM only"
    assert json.loads((out / "summary.json").read_text())["adapters"] == "LoRM only"
    info = runner.invoke(app, ["info", str(out / "best.pt"), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["adapters"] == "LoRM only", info.output
    table = runner.invoke(app, ["info", str(out / "best.pt")])
    assert table.exit_code == 0 and "LoRM only" in table.output, table.output


def _no_weights(*args, **kwargs):
    raise AssertionError("weights were loaded before the options were checked")


def test_the_refusal_comes_before_any_weights_load(synth_root, tmp_path, monkeypatch):
    """With ``--clip ViT-B-32 --pretrained openai`` not in the cache, a download error hid the refusal (the model was
    built first): the options are checked against the config alone."""
    import rap_deploy.checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "load_clip", _no_weights)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--clip",
                                   "ViT-B-32", "--pretrained", "openai", "--no-lorm", "--rank", "2", "--out", str(out),
                                   "--cache-dir", str(tmp_path / "frames"), "--quiet"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "--rank 2 acts on a part this model lacks (LoRM; its adapters: ASA only)" in text
    assert not out.exists()


def test_a_checkpoint_is_checked_before_its_model_is_built(synth_root, tmp_path, monkeypatch):
    from rap_deploy.checkpoint_model import Checkpoint

    runner = CliRunner()
    ckpt = tmp_path / "no_asa.pt"
    made = runner.invoke(app, ["init", "--clip", "rap-micro", "--pretrained", "none", "--frames", "4", "--no-asa",
                               "--out", str(ckpt)])
    assert made.exit_code == 0, made.output
    monkeypatch.setattr(Checkpoint, "build_model", _no_weights)
    res = runner.invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--checkpoint",
                              str(ckpt), "--offset-lr-mult", "3", "--out", str(tmp_path / "run"), "--cache-dir",
                              str(tmp_path / "frames"), "--quiet"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "--offset-lr-mult 3.0 acts on a part this model lacks (an ASA head; its adapters: LoRM only)" in text
    sized = runner.invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--checkpoint",
                                str(ckpt), "--selection", "saliency", "--out", str(tmp_path / "run"), "--quiet"])
    assert "--selection saliency acts on a part this model lacks (an ASA head" in " ".join(sized.output.split())

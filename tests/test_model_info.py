"""``rapdeploy info`` on a model whose adapters are not the identity: the learned offsets and LoRM's distance from the
identity it prints are the model's own (test_model.py checks them only at init, where every value is 0 or the
start)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.cli.app import app


def _modulation_by_running_the_sites(model) -> tuple[float, float]:
    """max |scale − 1| and max |shift| over every LoRM site, read from what each site does to constant inputs:
    ``site(0) = shift`` and ``site(1) = scale + shift`` (one video of ``frames`` frames, one token)."""
    sites = [*model.lorm_attn, *model.lorm_mlp]
    width = sites[0].v_scale.shape[1]
    zeros = torch.zeros(model.config.frames, 1, width)
    scale_change = shift = 0.0
    with torch.no_grad():
        for site in sites:
            at_zero, at_one = site(zeros), site(zeros + 1.0)
            shift = max(shift, float(at_zero.abs().max()))
            scale_change = max(scale_change, float((at_one - at_zero - 1.0).abs().max()))
    return scale_change, shift


def test_info_reports_the_checkpoints_offsets_and_lorm_modulation(micro_checkpoint):
    from rap_deploy.checkpoint import load_checkpoint

    model = load_checkpoint(micro_checkpoint).build_model()
    gamma = model.asa.patch_offset.detach()
    delta = model.asa.time_offset.detach()
    assert gamma[:, 0].tolist() != gamma[:, 1].tolist() and delta[0] != delta[1]  # a swap would show

    res = CliRunner().invoke(app, ["info", str(micro_checkpoint), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert len(info["asa_offsets"]["gamma"]) == len(gamma)
    for got, want in zip(info["asa_offsets"]["gamma"], gamma.tolist(), strict=True):  # [y, x] per head
        assert got == pytest.approx(want, abs=1e-6)
    assert info["asa_offsets"]["delta"] == pytest.approx(delta.tolist(), abs=1e-6)
    scale_change, shift = _modulation_by_running_the_sites(model)
    assert scale_change > 0.1 and shift > 0.1 and abs(scale_change - shift) > 1e-3  # a swap would show
    assert info["lorm_modulation"]["max_scale_change"] == pytest.approx(scale_change, abs=2e-6)
    assert info["lorm_modulation"]["max_shift"] == pytest.approx(shift, abs=2e-6)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # the key bias is frozen
    assert info["lorm_params"] == sum(p.numel() for n, p in trained if n.startswith("lorm_"))
    assert info["asa_params"] == sum(p.numel() for n, p in trained if n.startswith("asa."))
    assert info["asa_params"] == sum(p.numel() for n, p in model.named_parameters()
                                     if n.startswith("asa.") and n != "asa.k_proj.bias")

    table = CliRunner().invoke(app, ["info", str(micro_checkpoint)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "  ".join(f"({y:+.3f}, {x:+.3f})" for y, x in gamma.tolist()) in table.output
    assert "  ".join(f"{d:+.3f}" for d in delta.tolist()) in table.output
    assert f"{scale_change:.4f}, {shift:.4f}" in table.output


def test_init_options_reach_the_checkpoint(tmp_path):
    """``init``'s switches and sizes are the checkpoint's config and its seed its adapters (the init test above uses
    the defaults, so an option dropped on the way to the model passed)."""
    from rap_deploy.checkpoint import load_checkpoint, new_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    runner = CliRunner()
    base = ["init", "--clip", "rap-micro", "--frames", "4", "--heads", "2", "--asa-dim", "16", "--topk", "4"]
    made = runner.invoke(app, [*base, "--no-lorm", "--selection", "saliency", "--context-length", "16", "--seed",
                               "7", "--out", str(tmp_path / "saliency.pt"), "--json"])
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    config = info["config"]
    assert (config["use_lorm"], config["use_asa"], config["asa_selection"]) == (False, True, "saliency")
    assert config["context_length"] == 16 and info["lorm_params"] == 0 and info["lorm_modulation"] is None
    written = load_checkpoint(tmp_path / "saliency.pt")
    _, same_seed = new_checkpoint(written.config, BackboneSpec.parse("rap-micro", "none"), seed=7)
    assert written.extra["seed"] == 7
    assert all(torch.equal(v, same_seed.adapter_state_dict()[k]) for k, v in written.adapter_state.items())
    _, seed_0 = new_checkpoint(written.config, BackboneSpec.parse("rap-micro", "none"), seed=0)
    assert not all(torch.equal(v, seed_0.adapter_state_dict()[k]) for k, v in written.adapter_state.items())

    made = runner.invoke(app, [*base, "--no-asa", "--rank", "3", "--out", str(tmp_path / "no_asa.pt"), "--json"])
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    assert (info["config"]["use_lorm"], info["config"]["use_asa"], info["config"]["lorm_rank"]) == (True, False, 3)
    assert info["asa_params"] == 0 and info["asa_offsets"] is None and info["lorm_params"] > 0
    assert load_checkpoint(tmp_path / "no_asa.pt").build_model().asa is None

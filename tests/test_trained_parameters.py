"""The trainable-parameter count is what training updates: the elements of the optimizer's parameter groups, for
every preset and variant. The ASA key bias, which softmax makes gradient-free, is in neither (it used to be counted
though the optimizer never trained it), and checkpoints keep it, so files written before still load."""

from __future__ import annotations

import pytest
import torch
from conftest import micro_config

from rap_deploy.checkpoint import load_checkpoint, new_checkpoint
from rap_deploy.config import PRESETS
from rap_deploy.model.clip_loader import BackboneSpec
from rap_deploy.model_summary import preset_changes_for, summarize
from rap_deploy.train.params import freeze_offsets_at_zero, param_groups

KEY_BIAS = "asa.k_proj.bias"
MODELS = {"rap": {}, "rap_light": {"variant": "rap_light"}, "no_asa": {"use_asa": False},
          "no_lorm": {"use_lorm": False}}


def _model(preset: str, model: str):
    config = micro_config(**preset_changes_for(preset, "rap-micro"), **MODELS[model])
    return new_checkpoint(config, BackboneSpec.parse("rap-micro", "none"), seed=0)[1]


def _grouped(groups: list[dict]) -> list[torch.nn.Parameter]:
    return [p for g in groups for p in g["params"]]


@pytest.mark.parametrize("model_kind", sorted(MODELS))
@pytest.mark.parametrize("preset", PRESETS)
def test_the_count_is_the_optimizers_elements(preset, model_kind):
    model = _model(preset, model_kind)
    names = {id(p): n for n, p in model.named_parameters()}
    summary = summarize(model, BackboneSpec.parse("rap-micro", "none"))
    for lorm_lr_mult in (1.0, 5.0):  # LoRM in the matrices' group, or in its own
        grouped = _grouped(param_groups(model, 0.1, offset_lr_mult=10.0, lorm_lr_mult=lorm_lr_mult))
        assert len({id(p) for p in grouped}) == len(grouped)  # no parameter in two groups
        assert model.parameter_counts()["trainable_params"] == sum(p.numel() for p in grouped)
        assert KEY_BIAS not in {names[id(p)] for p in grouped}
    assert summary["trainable_params"] == summary["lorm_params"] + summary["asa_params"]
    if model.asa is not None:  # counted in the total, not among the trainable
        assert model.parameter_counts()["total_params"] == sum(p.numel() for p in model.parameters())
        assert not model.asa.k_proj.bias.requires_grad


def test_frozen_offsets_leave_the_count_with_the_optimizer():
    model = _model("default", "rap")
    before = model.parameter_counts()["trainable_params"]
    freeze_offsets_at_zero(model)
    grouped = _grouped(param_groups(model, 0.1, offset_lr_mult=10.0))
    offsets = model.asa.patch_offset.numel() + model.asa.time_offset.numel()
    assert model.parameter_counts()["trainable_params"] == sum(p.numel() for p in grouped) == before - offsets


def test_a_checkpoint_keeps_the_key_bias_and_loads_it_frozen(micro_checkpoint):
    """Checkpoints written before the bias was frozen hold the same tensors: it is still a parameter of the model's
    state_dict, so they load with their value, and it stays out of training."""
    ckpt = load_checkpoint(micro_checkpoint)
    assert KEY_BIAS in ckpt.adapter_state and ckpt.adapter_state[KEY_BIAS].abs().max() > 0  # randomised adapters
    model = ckpt.build_model()
    assert set(model.adapter_state_dict()) == set(ckpt.adapter_state)
    assert torch.equal(model.asa.k_proj.bias, ckpt.adapter_state[KEY_BIAS])
    assert not model.asa.k_proj.bias.requires_grad
    assert KEY_BIAS not in dict(model.trained_parameters())

"""Which adapter parameters train, and how: the optimizer groups (weight decay, the learning-rate multipliers of the
ASA offsets and of LoRM) and the frozen-offsets ablation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rap_deploy.model.rap import RAPModel

# The ASA offsets γ (patch units) and δ (frames): their own optimizer group (learning-rate multiplier, no decay).
OFFSETS = ("asa.patch_offset", "asa.time_offset")

# LoRM's factors U, V of every block (``lorm_attn.<i>.*``, ``lorm_mlp.<i>.*``).
LORM_PREFIX = "lorm_"


def param_groups(model: RAPModel, weight_decay: float, offset_lr_mult: float = 1.0,
                 lorm_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on adapter matrices; none on biases and vectors; the ASA offsets γ/δ in their own
    group with learning rate ``offset_lr_mult`` × the schedule's (each group's ``lr_mult``); with ``lorm_lr_mult``
    other than 1, LoRM's factors in their own group at that multiple (with weight decay, which AdamW scales with the
    learning rate). At 1 they stay in the matrices' group: the same updates, and a run saved before the option
    existed resumes with the optimizer state it saved.

    Why the offsets get a multiplier: γ and δ are in patch and frame units, and Adam moves a parameter by about the
    learning rate per step whatever its gradient's size, so at lr 1e-3 a few hundred steps move them by a fraction of
    a patch or frame, too little to reach a neighbouring position. Only :meth:`RAPModel.trained_parameters` are
    grouped: frozen offsets (``requires_grad`` off) and the ASA key bias are left out.
    """
    decay, no_decay, offsets, lorm = [], [], [], []
    for name, p in model.trained_parameters():
        if name in OFFSETS:
            offsets.append(p)
        elif name.startswith(LORM_PREFIX) and lorm_lr_mult != 1.0:
            lorm.append(p)
        elif p.ndim < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    if offsets:
        groups.append({"params": offsets, "weight_decay": 0.0, "lr_mult": float(offset_lr_mult)})
    if lorm:
        groups.append({"params": lorm, "weight_decay": weight_decay, "lr_mult": float(lorm_lr_mult)})
    return groups


def freeze_offsets_at_zero(model: torch.nn.Module) -> None:
    """Set the ASA offsets γ, δ to zero and exclude them from training (the warp becomes the identity)."""
    for name, p in model.named_parameters():
        if name in OFFSETS:
            with torch.no_grad():
                p.zero_()
            p.requires_grad_(False)

"""Model summaries for ``init`` / ``info`` (the functions the commands call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rap_deploy.config import DEFAULT_CLIP, RAPConfig, preset_changes
from rap_deploy.model.clip_loader import BackboneSpec
from rap_deploy.model.rap import RAPModel


def preset_changes_for(preset: str, clip: str) -> dict[str, Any]:
    """:func:`rap_deploy.config.preset_changes` for the open_clip model ``clip`` (its joint width read from its
    config). Raises :class:`UsageError` for an unknown preset or model."""
    from rap_deploy.model.clip_loader import clip_model_config

    return preset_changes(preset, int(clip_model_config(clip)["embed_dim"])) if preset != "default" else {}


def asa_offsets(model: RAPModel) -> dict[str, list] | None:
    """The ASA head's per-head offsets: ``{"gamma": [[y, x] per head] (patch units), "delta": [per head] (frames)}``,
    rounded to 1e-6; ``None`` for a model without ASA."""
    asa = getattr(model, "asa", None)
    if asa is None:
        return None
    return {"gamma": [[round(float(v), 6) for v in row] for row in asa.patch_offset.detach().cpu()],
            "delta": [round(float(v), 6) for v in asa.time_offset.detach().cpu()]}


def lorm_modulation(model: RAPModel) -> dict[str, float] | None:
    """How far LoRM is from the identity: ``max_scale_change`` = max |U_s V_s| (the scale's distance from 1) and
    ``max_shift`` = max |U_c V_c| over every site, frame and channel; ``None`` for a model without LoRM."""
    sites = [m for group in (model.lorm_attn, model.lorm_mlp) if group is not None for m in group]
    if not sites:
        return None
    with torch.no_grad():
        scale = max(float((m.u_scale @ m.v_scale).abs().max()) for m in sites)
        shift = max(float((m.u_shift @ m.v_shift).abs().max()) for m in sites)
    return {"max_scale_change": round(scale, 6), "max_shift": round(shift, 6)}


def summarize(model: RAPModel, backbone: BackboneSpec) -> dict[str, Any]:
    """JSON-able summary: ``variant``, ``adapters`` (:attr:`RAPConfig.adapters`), ``clip``, ``frames``,
    ``trainable_params``, ``total_params``, the learned ASA offsets (``asa_offsets``: γ, δ per head) and LoRM's
    distance from the identity (``lorm_modulation``), and details."""
    counts = model.parameter_counts()
    cfg = model.config

    def count(prefix: str) -> int:  # trained parameters only, so lorm_params + asa_params = trainable_params
        return sum(p.numel() for n, p in model.trained_parameters() if n.startswith(prefix))

    return {
        "variant": cfg.variant,
        "adapters": cfg.adapters,
        "clip": cfg.clip,
        "frames": cfg.frames,
        "context_length": cfg.context_length,
        "backbone": backbone.kind if backbone.kind == "none" else f"{backbone.kind}:{backbone.value}",
        **counts,
        "trainable_percent": round(100.0 * counts["trainable_params"] / counts["total_params"], 4),
        "lorm_params": count("lorm_"),
        "asa_params": count("asa."),
        "embed_dim": model.embed_dim,
        "patches": model.num_patches,
        "image_size": cfg.preprocess.image_size,
        "asa_offsets": asa_offsets(model),
        "lorm_modulation": lorm_modulation(model),
        "config": cfg.to_dict(),
    }


def init_checkpoint(out: Path, clip: str | None, pretrained: str, backbone_file: Path | None, config: RAPConfig,
                    embed_backbone: bool, seed: int) -> dict[str, Any]:
    """Write an untrained checkpoint to ``out``; returns its summary. Raises :class:`UsageError` on bad options."""
    from rap_deploy.checkpoint import new_checkpoint, save_checkpoint

    if backbone_file is not None:
        from rap_deploy.backbone_file import backbone_clip

        clip = backbone_clip(backbone_file, clip)
        pretrained = str(backbone_file)
    clip = clip or DEFAULT_CLIP
    spec = BackboneSpec.parse(clip, pretrained)
    config = config.replace(clip=clip, preprocess=_preprocess_for(clip))
    ckpt, model = new_checkpoint(config, spec, embed_backbone=embed_backbone, seed=seed)
    save_checkpoint(ckpt, out)
    return {**summarize(model, spec), "checkpoint": str(out)}


def describe(checkpoint: Path | None, config: RAPConfig, pretrained: str) -> dict[str, Any]:
    """Summary of a checkpoint, or of ``config`` on a ``pretrained`` backbone when no checkpoint is given."""
    if checkpoint is not None:
        from rap_deploy.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        return {**summarize(ckpt.build_model(), ckpt.backbone), "checkpoint": str(checkpoint),
                "extra": {k: v for k, v in ckpt.extra.items() if isinstance(v, (int, float, str, bool))}}
    from rap_deploy.model.clip_loader import load_clip

    spec = BackboneSpec.parse(config.clip, pretrained)
    config = config.replace(preprocess=_preprocess_for(config.clip, spec))
    return summarize(RAPModel(load_clip(spec), config), spec)


def _preprocess_for(clip: str, spec: BackboneSpec | None = None):
    """The preprocessing of ``clip``: its image size with CLIP's mean/std and bicubic resize, or the normalisation
    ``spec``'s pretrained tag was trained with (:func:`~rap_deploy.model.clip_loader.pretrained_preprocess`)."""
    from rap_deploy.config import PreprocessConfig
    from rap_deploy.model.clip_loader import clip_model_config, pretrained_preprocess

    size = clip_model_config(clip)["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    return PreprocessConfig(image_size=int(size), **(pretrained_preprocess(spec) if spec is not None else {}))

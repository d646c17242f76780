"""RAP checkpoints: plain tensors and data only, loadable with ``torch.load(weights_only=True)`` (DESIGN.md §11).

A checkpoint is self-sufficient for export: it embeds the backbone weights, or names a backbone open_clip can load
offline (a pretrained tag already in the local cache, or a file with its sha256). ``.safetensors`` works too: the
tensors are prefixed ``backbone.`` / ``adapter.`` and the rest is JSON in the metadata.

This module is the public entry point: creating, writing and loading checkpoints. :class:`Checkpoint` and its model
building live in :mod:`rap_deploy.checkpoint_model` and reading a file, which is untrusted, in
:mod:`rap_deploy.checkpoint_read`; both are re-exported or called from here, and neither imports this module.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from rap_deploy.atomic import atomic_path, sha256_file
from rap_deploy.checkpoint_model import FORMAT, FORMAT_VERSION, Checkpoint
from rap_deploy.checkpoint_read import read_checkpoint
from rap_deploy.config import RAPConfig
from rap_deploy.errors import UsageError
from rap_deploy.file_kinds import CHECKPOINT_SUFFIXES
from rap_deploy.model.clip_loader import (
    BackboneSpec,
    clip_model_config,
    load_clip,
    pretrained_preprocess,
    quick_gelu_for,
)
from rap_deploy.model.rap import RAPModel

__all__ = ["CHECKPOINT_SUFFIXES", "FORMAT", "FORMAT_VERSION", "Checkpoint", "check_checkpoint_name",
           "checkpoint_from_model", "checkpoint_sha256", "load_checkpoint", "new_checkpoint", "recorded_checkpoint",
           "save_checkpoint"]


def new_checkpoint(config: RAPConfig, spec: BackboneSpec, embed_backbone: bool = True,
                   seed: int = 0) -> tuple[Checkpoint, RAPModel]:
    """Create an untrained RAP (identity adapters) on the backbone ``spec``; returns the checkpoint and the model.

    With ``embed_backbone`` (always for ``--pretrained none``) the backbone weights are stored in the checkpoint.
    """
    torch.manual_seed(seed)
    preprocess = dataclasses.replace(config.preprocess, **pretrained_preprocess(spec))  # the tag's mean/std
    config = config.replace(clip=spec.clip, pretrained=spec.value or "none", quick_gelu=quick_gelu_for(spec),
                            preprocess=preprocess)
    clip = load_clip(spec, quick_gelu=config.quick_gelu)
    model = RAPModel(clip, config)
    embed = embed_backbone or spec.kind == "none"
    ckpt = Checkpoint(config=config, backbone=spec, clip_model_cfg=clip_model_config(spec.clip),
                      adapter_state=model.adapter_state_dict(),
                      backbone_state=model.backbone_state_dict() if embed else None,
                      extra={"seed": seed})
    return ckpt, model


def checkpoint_from_model(model: RAPModel, template: Checkpoint, extra: dict[str, Any] | None = None) -> Checkpoint:
    """A checkpoint of ``model``'s current adapters, with the backbone reference of ``template``."""
    return Checkpoint(config=model.config, backbone=template.backbone, clip_model_cfg=template.clip_model_cfg,
                      adapter_state={k: v.detach().cpu().clone() for k, v in model.adapter_state_dict().items()},
                      backbone_state=template.backbone_state, extra=dict(extra or {}))


def _payload(ckpt: Checkpoint) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": ckpt.config.to_dict(),
        "backbone": ckpt.backbone.to_dict(),
        "clip_model_cfg": ckpt.clip_model_cfg,
        "extra": ckpt.extra,
    }


def check_checkpoint_name(path: str | Path) -> Path:
    """``path`` as a :class:`Path` when a checkpoint may be written there; :class:`UsageError` (exit 2) when it is a
    folder or its name does not end in :data:`~rap_deploy.file_kinds.CHECKPOINT_SUFFIXES` (verify, index, serve and
    build-engine know a checkpoint by it). Writing commands call it before any long work."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; pass a file path such as {path / 'ckpt.pt'}")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise UsageError(f"--out {path}: a checkpoint's name ends in {', '.join(CHECKPOINT_SUFFIXES)} (verify, index "
                         f"and serve take a checkpoint by its suffix); pass e.g. {path.with_suffix('.pt').name}")
    return path


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` atomically as ``.pt`` (torch) or ``.safetensors``; returns the path. Equal checkpoints are
    equal files, byte for byte, whatever their names. Raises :class:`UsageError` when ``path`` is a folder or not
    named ``.pt``, ``.pth`` or ``.safetensors``."""
    path = check_checkpoint_name(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {f"adapter.{k}": v.contiguous() for k, v in ckpt.adapter_state.items()}
        if ckpt.backbone_state is not None:
            tensors.update({f"backbone.{k}": v.contiguous() for k, v in ckpt.backbone_state.items()})
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"rapdeploy": json.dumps(_payload(ckpt))})
        return path
    payload = _payload(ckpt)
    payload["adapter_state"] = ckpt.adapter_state
    payload["backbone_state"] = ckpt.backbone_state
    # Through a file object, not the path: torch names the archive's top folder after a path it is given (here the
    # temporary file's random name), so equal checkpoints would differ in bytes and in their sha256 (the demo's step
    # records would then redo every step after a remade but equal checkpoint).
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; every file is treated as untrusted.

    Raises :class:`UsageError` (exit 2) for a missing path, a folder or special file, a file that is not a
    checkpoint at all (random bytes, another format, no rapdeploy format tag) or a pickle that needs arbitrary objects
    (refused: only tensors and plain data load); :class:`CheckFailedError` (exit 1) for a damaged one: empty,
    truncated, a broken safetensors header or metadata, missing or mistyped keys, an invalid or out-of-bounds model
    config. Messages name the file and say which of these it is.
    """
    return read_checkpoint(Path(path))


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file (recorded in every exported artifact)."""
    return sha256_file(path)


def recorded_checkpoint(value: Any, sha256: Any) -> Path | None:
    """The source checkpoint an artifact's manifest records, if it is usable here; else ``None``.

    The manifest is untrusted, so the path must name a regular file with a checkpoint suffix (never a FIFO, a device
    or ``/etc/shadow``) and, when ``sha256`` is recorded, have that hash. Nothing about a refused file is reported
    (not even its hash), so a manifest cannot be used to probe other files.
    """
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    path = Path(value)
    try:  # a name too long, a folder this user may not enter, an unreadable file: not usable here
        if path.suffix not in CHECKPOINT_SUFFIXES or not path.is_file():
            return None
        if sha256 is not None and (not isinstance(sha256, str) or sha256_file(path) != sha256):
            return None
    except OSError:
        return None
    return path

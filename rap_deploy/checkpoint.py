"""RAP checkpoints: plain tensors and data only, loadable with ``torch.load(weights_only=True)`` (DESIGN.md §11).

A checkpoint is self-sufficient for export: it embeds the backbone weights, or names a backbone open_clip can load
offline (a pretrained tag already in the local cache, or a file with its sha256). ``.safetensors`` works too: the
tensors are prefixed ``backbone.`` / ``adapter.`` and the rest is JSON in the metadata.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rap_deploy.atomic import atomic_path, sha256_file
from rap_deploy.config import RAPConfig
from rap_deploy.errors import UsageError
from rap_deploy.model.clip_loader import BackboneSpec, clip_model_config, load_clip, quick_gelu_for
from rap_deploy.model.rap import RAPModel

FORMAT = "rapdeploy.checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """The content of a checkpoint file. ``extra`` holds plain data (training state, metrics, provenance)."""

    config: RAPConfig
    backbone: BackboneSpec
    clip_model_cfg: dict[str, Any]
    adapter_state: dict[str, torch.Tensor]
    backbone_state: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def build_model(self) -> RAPModel:
        """Instantiate the RAP model (frozen backbone + these adapter weights), in eval mode, on CPU."""
        clip = load_clip(self.backbone, quick_gelu=self.config.quick_gelu, state_dict=self.backbone_state)
        model = RAPModel(clip, self.config)
        missing, unexpected = model.load_state_dict(self.adapter_state, strict=False)
        missing = [k for k in missing if not k.startswith("clip.")]
        if missing or unexpected:
            raise UsageError(f"checkpoint adapters do not fit the config: missing {missing[:5]}, "
                             f"unexpected {list(unexpected)[:5]}")
        return model.eval()


def new_checkpoint(config: RAPConfig, spec: BackboneSpec, embed_backbone: bool = True,
                   seed: int = 0) -> tuple[Checkpoint, RAPModel]:
    """Create an untrained RAP (identity adapters) on the backbone ``spec``; returns the checkpoint and the model.

    With ``embed_backbone`` (always for ``--pretrained none``) the backbone weights are stored in the checkpoint.
    """
    torch.manual_seed(seed)
    config = config.replace(clip=spec.clip, pretrained=spec.value or "none", quick_gelu=quick_gelu_for(spec))
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


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write ``ckpt`` atomically as ``.pt`` (torch) or ``.safetensors``; returns the path."""
    path = Path(path)
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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`UsageError` for a missing file, a pickle that needs arbitrary objects (refused: only tensors and
    plain data load), or a file that is not a rapdeploy checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist; create one with `rapdeploy init` or `rapdeploy train`")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if "rapdeploy" not in meta:
                raise UsageError(f"{path} is a safetensors file without rapdeploy metadata; not a RAP checkpoint")
            payload = json.loads(meta["rapdeploy"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        payload["adapter_state"] = {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")}
        backbone = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        payload["backbone_state"] = backbone or None
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UsageError(f"refusing {path}: it holds pickled Python objects that need weights_only=False "
                             f"({str(exc).splitlines()[0][:160]}); re-save it with tensors and plain data only"
                             ) from None
        except (RuntimeError, EOFError) as exc:
            raise UsageError(f"cannot read checkpoint {path}: {exc}; the file may be truncated") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"{path} is not a rapdeploy checkpoint (no '{FORMAT}' format tag)")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise UsageError(f"{path} has checkpoint format {payload['format_version']}; upgrade rapdeploy")
    b = payload["backbone"]
    return Checkpoint(config=RAPConfig.from_dict(payload["config"]),
                      backbone=BackboneSpec(b["clip"], b["kind"], b.get("value"), b.get("sha256")),
                      clip_model_cfg=payload.get("clip_model_cfg") or {},
                      adapter_state=payload["adapter_state"], backbone_state=payload.get("backbone_state"),
                      extra=payload.get("extra") or {})


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file (recorded in every exported artifact)."""
    return sha256_file(path)

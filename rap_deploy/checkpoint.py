"""RAP checkpoints: plain tensors and data only, loadable with ``torch.load(weights_only=True)`` (DESIGN.md §11).

A checkpoint is self-sufficient for export: it embeds the backbone weights, or names a backbone open_clip can load
offline (a pretrained tag already in the local cache, or a file with its sha256). ``.safetensors`` works too: the
tensors are prefixed ``backbone.`` / ``adapter.`` and the rest is JSON in the metadata.

This module holds the checkpoint, its creation, writing and model building; reading a file, which is untrusted, and
checking what it holds is :mod:`rap_deploy.checkpoint_read` (behind :func:`load_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rap_deploy.atomic import atomic_path, file_identity, sha256_file
from rap_deploy.config import RAPConfig
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.file_kinds import CHECKPOINT_FORMAT, CHECKPOINT_SUFFIXES
from rap_deploy.model.clip_loader import (
    BackboneSpec,
    clip_model_config,
    key_mismatch,
    load_clip,
    pretrained_preprocess,
    quick_gelu_for,
    state_dict_mismatch,
)
from rap_deploy.model.rap import RAPModel, topk_excess
from rap_deploy.name_lists import some_names

FORMAT = CHECKPOINT_FORMAT  # file_kinds.is_rap_checkpoint finds it in a file's bytes
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
    source: str | None = None  # the file it was read from (for messages)

    def build_model(self) -> RAPModel:
        """Instantiate the RAP model (frozen backbone + these adapter weights), in eval mode, on CPU.

        Raises :class:`CheckFailedError` (exit 1) when the stored weights do not fit the model the config describes
        (wrong shapes, missing or unexpected tensors: a damaged or edited file), naming the file.
        """
        where = f"checkpoint {self.source}" if self.source else "checkpoint"
        from rap_deploy.bounds import check_memory, clip_weight_bytes

        try:
            clip_cfg = clip_model_config(self.backbone.clip)
        except UsageError as exc:
            raise CheckFailedError(f"{where}: {exc}; the file names a CLIP this open_clip does not know: it is "
                                   "damaged, was edited, or needs the open_clip version it was made with") from None
        _check_same_architecture(where, self.backbone.clip, self.clip_model_cfg, clip_cfg)
        check_memory(clip_weight_bytes(clip_cfg), f"{where}: backbone {self.backbone.clip}",
                     "use a machine with more memory or a smaller --clip")
        spec, identity = (self.backbone, None) if self.backbone_state is not None \
            else _referenced_backbone(where, self.backbone)
        try:
            clip = load_clip(spec, quick_gelu=self.config.quick_gelu, state_dict=self.backbone_state,
                             checked_identity=identity)
        except RuntimeError as exc:  # load_state_dict: size mismatch of an embedded backbone tensor
            raise CheckFailedError(f"{where}: the embedded backbone weights do not fit {self.backbone.clip} "
                                   f"({_first_line(exc)}); the file is damaged or was edited") from None
        except UsageError as exc:
            if self.backbone_state is None:  # a tag or file that cannot be loaded here: the message says what to do
                raise _unloadable_tag(where, self.backbone, exc) from None
            raise CheckFailedError(f"{where}: {exc}; the file is damaged or was edited") from None
        _check_fits_backbone(where, self.config, clip)
        try:
            model = RAPModel(clip, self.config)
        except UsageError as exc:
            raise CheckFailedError(f"{where}: {exc}; the file is damaged or was edited") from None
        backbone_keys = [k for k in self.adapter_state if k.startswith("clip.")]
        if backbone_keys:  # load_state_dict would write them over the frozen backbone, past its sha256 reference
            raise CheckFailedError(f"{where}: its adapter weights hold {len(backbone_keys)} backbone tensor"
                                   f"{'s' if len(backbone_keys) > 1 else ''} ({some_names(backbone_keys, 3)}), which "
                                   "would replace the frozen CLIP's; the file is damaged or was edited")
        try:
            missing, unexpected = model.load_state_dict(self.adapter_state, strict=False)
        except RuntimeError as exc:  # tensors of another shape: torch's message lists each, and would be cut mid-name
            reason = state_dict_mismatch(exc) or _first_line(exc)
            raise CheckFailedError(f"{where}: adapter weights do not fit the config ({reason}); the file is "
                                   "damaged or was edited") from None
        missing = [k for k in missing if not k.startswith("clip.")]  # the backbone's come from its own weights
        if missing or unexpected:
            raise CheckFailedError(f"{where}: adapter weights do not fit the config "
                                   f"({key_mismatch(missing, list(unexpected), [])}); the file is damaged or was "
                                   "edited")
        bad = [k for k, v in self.adapter_state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:  # NaN would flow through every score, and NaN compares as no difference at all
            raise CheckFailedError(f"{where}: adapter weights {some_names(bad, 3)} hold NaN or infinite values "
                                   f"({len(bad)} of its {len(self.adapter_state)} adapter tensors); the file is "
                                   "damaged, or the run that wrote it diverged")
        return model.eval()


def _check_same_architecture(where: str, clip: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse (:class:`UsageError`, exit 2) a checkpoint whose recorded open_clip config of ``clip`` differs from the
    one installed here: the model would be built from the name's config here, silently another network than the one
    trained (QuickGELU for GELU, another LayerNorm or pooling) where no weight shape changes. An empty record (not
    written) is not compared."""
    if not stored or stored == current:
        return
    keys = _differing_keys(stored, current) or ["a key set to null in one of them"]
    raise UsageError(f"{where} was made with an open_clip config of {clip} that differs from this installation's "
                     f"(in {some_names(keys, 4)}): the network built here would not be "
                     "the one its adapters were trained on; use the open_clip and rapdeploy versions it was made with")


def _differing_keys(a: Any, b: Any, name: str = "") -> list[str]:
    """The dotted keys at which two JSON-like values differ (``name`` itself when they are not both objects)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in _differing_keys(a.get(key), b.get(key), f"{name}.{str(key)[:40]}" if name else str(key)[:40])]
    return [] if a == b else [name or "the whole config"]


def _referenced_backbone(where: str, spec: BackboneSpec) -> tuple[BackboneSpec, tuple[int, ...] | None]:
    """``spec`` to load, once the backbone weights file a ``--reference-backbone`` checkpoint names is the file it was
    made with, and that file's identity from before it was hashed (load_clip refuses the file if it changes before
    the weights are loaded): :class:`UsageError` (exit 2), naming the checkpoint, when it is gone or its sha256
    differs. The check is made here, once (load_clip would hash the file again), with advice that keeps the trained
    adapters."""
    if spec.kind != "file" or not spec.value or not spec.sha256:
        return spec, None
    path = Path(spec.value)
    keep = f"put the file it was made with (sha256 {spec.sha256[:12]}…) back at that path"
    if not path.exists():
        raise UsageError(f"{where} references the backbone weights file {path}, which does not exist (moved or "
                         f"deleted); {keep}: the checkpoint holds only its adapters (--reference-backbone)")
    if not path.is_file():
        return spec, None  # load_clip says what it is (a folder, FIFO or device)
    identity = file_identity(path)
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise UsageError(f"{where} references the backbone weights file {path}, which changed since (sha256 "
                         f"{actual[:12]}…); its adapters were trained on the recorded weights: {keep}")
    return dataclasses.replace(spec, sha256=None), identity  # checked: load_clip need not hash it again


def _unloadable_tag(where: str, spec: BackboneSpec, exc: UsageError) -> UsageError:
    """The refusal of a checkpoint whose backbone, an open_clip tag it only names, cannot be loaded here: load_clip's
    own message (``exc``) advises ``--pretrained /path``, an option of init, not of export, train or info. Other
    kinds: ``exc`` as it is."""
    if spec.kind != "tag" or exc.__cause__ is None:
        return exc
    reason = _first_line(exc.__cause__)
    return UsageError(f"{where} names its backbone, open_clip's {spec.clip} pretrained={spec.value}, without holding "
                      f"its weights (--reference-backbone), and they cannot be loaded here ({reason}); put them in "
                      "this machine's open_clip / Hugging Face cache (HF_HUB_OFFLINE=1 reads it without the network), "
                      "or make the checkpoint with --embed-backbone where they are")


def _check_fits_backbone(where: str, config: RAPConfig, clip: Any) -> None:
    """Refuse a config whose image size or top-k cannot run on ``clip`` (CheckFailedError: the file says otherwise)."""
    size = getattr(getattr(clip, "visual", None), "image_size", None)
    size = size[0] if isinstance(size, (list, tuple)) else size
    if isinstance(size, int) and size != config.preprocess.image_size:
        raise CheckFailedError(f"{where}: its preprocessing image size {config.preprocess.image_size} does not match "
                               f"{config.clip}'s input size {size}; the file is damaged or was edited")
    grid = getattr(getattr(clip, "visual", None), "grid_size", None)
    excess = topk_excess(config, grid) if grid is not None else None
    if excess:
        raise CheckFailedError(f"{where}: {excess}; the file is damaged or was edited")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])[:240]


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
    from rap_deploy.checkpoint_read import read_checkpoint

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

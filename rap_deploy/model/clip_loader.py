"""Loading an open_clip backbone by name, with pretrained weights from a tag, a local file, or none.

The project's own small configs (``rap-tiny`` for the offline default, ``rap-micro`` for tests) ship in
``rap_deploy/model_configs`` and are registered with open_clip, so every backbone goes through the same open_clip path.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rap_deploy.atomic import file_identity, sha256_file
from rap_deploy.errors import UsageError
from rap_deploy.file_kinds import check_archive_expansion, is_rap_checkpoint, is_torchscript_archive, sniff
from rap_deploy.model.weights_errors import (
    count_noun,
    key_mismatch,
    state_dict_error_keys,
    torchscript_refusal,
    weights_file_error,
)
from rap_deploy.name_lists import some_names
from rap_deploy.safe_paths import absent
from rap_deploy.workspace import user_path

PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "model_configs"


def register_packaged_configs() -> None:
    """Register rapdeploy's packaged open_clip model configs (``model_configs/*.json``: rap-tiny, rap-micro, ...) with
    open_clip, once: a no-op when open_clip already lists them all. Returns nothing; raises what open_clip's import
    and ``add_model_config`` raise (``ImportError`` without open_clip)."""
    import open_clip

    known = set(open_clip.list_models())
    if not all(p.stem in known for p in PACKAGED_CONFIGS.glob("*.json")):
        open_clip.add_model_config(PACKAGED_CONFIGS)


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone's weights come from: ``kind`` is ``none``, ``tag`` (open_clip pretrained tag) or ``file``."""

    clip: str
    kind: str
    value: str | None = None
    sha256: str | None = None

    @classmethod
    def parse(cls, clip: str, pretrained: str | None) -> BackboneSpec:
        """Interpret ``--pretrained``: ``none``/empty, an existing file path, or an open_clip tag for ``clip``.

        Raises :class:`UsageError` when the value is neither a file nor a tag open_clip knows for ``clip``, or its
        ``~user`` names no user here.
        """
        import open_clip

        register_packaged_configs()
        if clip not in open_clip.list_models():
            raise UsageError(f"open_clip has no model '{clip}'; try one of: ViT-B-32, ViT-B-16, rap-tiny, rap-micro "
                             "(`python -c 'import open_clip; print(open_clip.list_models())'` lists all)")
        if not pretrained or pretrained.lower() == "none":
            return cls(clip, "none")
        path = user_path(pretrained, "--pretrained")
        if path.is_file():
            return cls(clip, "file", str(path.resolve()), sha256_file(path))
        if path.exists():  # a folder, FIFO or device: 'does not exist' (below) would be wrong
            held = _hub_weights_in(path)
            fix = f"it holds open_clip's weights file: pass --pretrained {held}" if held else \
                "pass the weights file itself, an open_clip tag such as 'openai', or 'none'"
            raise UsageError(f"backbone weights file {pretrained} is not a regular file (a folder, FIFO or device); "
                             f"{fix}")
        if looks_like_path(pretrained):
            raise UsageError(f"backbone weights file {pretrained} {absent(path)}; pass an existing file, an open_clip "
                             "tag such as 'openai', or 'none'")
        tags = open_clip.list_pretrained_tags_by_model(clip)
        if pretrained not in tags:
            raise UsageError(f"'{pretrained}' is neither a file nor an open_clip pretrained tag for {clip} "
                             f"(tags: {', '.join(tags) or 'none'})")
        return cls(clip, "tag", pretrained)

    def to_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "kind": self.kind, "value": self.value, "sha256": self.sha256}


# The names open_clip gives a model's weights on the Hugging Face hub (a downloaded snapshot folder holds them)
HUB_WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _hub_weights_in(folder: Path) -> Path | None:
    """The weights file named as open_clip names it on the Hugging Face hub directly inside ``folder`` (the
    .safetensors first), or ``None`` (also when ``folder`` is no folder)."""
    if not folder.is_dir():
        return None
    return next((folder / name for name in HUB_WEIGHTS_NAMES if (folder / name).is_file()), None)


def looks_like_path(value: str) -> bool:
    """True when ``value`` is clearly meant as a file path rather than a tag."""
    return "/" in value or "\\" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def quick_gelu_for(spec: BackboneSpec) -> bool:
    """Whether the pretrained tag was trained with QuickGELU (OpenAI weights were); False for files and none."""
    if spec.kind != "tag":
        return False
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.clip, spec.value) or {}
    return bool(cfg.get("quick_gelu", False))


def pretrained_preprocess(spec: BackboneSpec) -> dict[str, Any]:
    """The image normalisation a pretrained tag was trained with, as :class:`~rap_deploy.config.PreprocessConfig`
    fields (``mean``, ``std``, ``interpolation``, ``resize_mode``) from open_clip's pretrained config: e.g. ViT-L-14's
    ``laion2b_s32b_b82k`` normalises by 0.5, not CLIP's mean/std, and ViT-H-14's ``dfn5b`` squashes frames to the
    square instead of centre-cropping. Empty for files and ``none`` (CLIP's defaults)."""
    if spec.kind != "tag":
        return {}
    import open_clip

    from rap_deploy.config import INTERPOLATIONS, RESIZE_MODES

    cfg = open_clip.get_pretrained_cfg(spec.clip, spec.value) or {}
    out: dict[str, Any] = {k: tuple(float(x) for x in cfg[k]) for k in ("mean", "std") if cfg.get(k)}
    if cfg.get("interpolation") in INTERPOLATIONS:
        out["interpolation"] = cfg["interpolation"]
    if cfg.get("resize_mode") is not None:
        if cfg["resize_mode"] not in RESIZE_MODES:
            raise UsageError(f"--pretrained {spec.value} for {spec.clip} was trained with open_clip resize_mode "
                             f"'{cfg['resize_mode']}', which rapdeploy's preprocessing does not do (it does "
                             f"{', '.join(RESIZE_MODES)}); pass another tag")
        out["resize_mode"] = cfg["resize_mode"]
    return out


def clip_model_config(clip: str) -> dict[str, Any]:
    """Return open_clip's architecture config (a JSON-able dict) for ``clip``."""
    import open_clip

    register_packaged_configs()
    cfg = open_clip.get_model_config(clip)
    if cfg is None:
        raise UsageError(f"open_clip has no model config '{clip}'")
    return json.loads(json.dumps(cfg))


def load_clip(spec: BackboneSpec, quick_gelu: bool | None = None, state_dict: dict[str, torch.Tensor] | None = None,
              checked_identity: tuple[int, ...] | None = None) -> nn.Module:
    """Create the open_clip model of ``spec`` on CPU, load its weights, freeze it and put it in eval mode.

    ``state_dict`` (the embedded weights of a checkpoint) overrides ``spec``'s weights source. A tag must already be
    in the local open_clip cache (no network here). A weights file is checked against ``spec.sha256`` (when given),
    then open_clip reads it by its path; ``checked_identity`` is the file's :func:`~rap_deploy.atomic.file_identity`
    from before a caller hashed it (else it is taken before the hash here), and a file whose identity differs once
    the weights are loaded (written or replaced in between) is refused: the weights loaded may not be those checked.
    Raises :class:`UsageError` with the reason when loading fails.
    """
    register_packaged_configs()
    from_file = spec.kind == "file" and state_dict is None
    file = Path(spec.value) if from_file and spec.value else None
    _check_memory_for(spec, file)
    if quick_gelu is None:
        quick_gelu = quick_gelu_for(spec)
    if file is not None:
        checked_identity = checked_identity or file_identity(file)
    pretrained = spec.value if state_dict is None and spec.kind in ("tag", "file") else None
    if from_file:
        _check_weights_source(spec, Path(spec.value))
    model = _create_model(spec, pretrained, quick_gelu, from_file)
    if file is not None and file_identity(file) != checked_identity:
        raise UsageError(f"backbone weights file {file} changed while it was loaded (written or replaced by another "
                         "process); run again once nothing writes it")
    if state_dict is not None:
        _load_embedded_weights(model, state_dict, spec.clip)
    _check_finite_weights(model, spec, embedded=state_dict is not None)
    freeze(model)
    return model


def _check_memory_for(spec: BackboneSpec, file: Path | None) -> None:
    """Refuse (``check_memory``'s error) a model and weights file that would not fit in memory: before open_clip
    allocates the model and reads a weights file whole beside it (a wrong, larger file too)."""
    from rap_deploy.bounds import check_memory, clip_weight_bytes

    read = file.stat().st_size if file is not None and file.is_file() else 0
    check_memory(clip_weight_bytes(clip_model_config(spec.clip)) + read,
                 f"backbone {spec.clip}" + (f" with its weights file {file}" if read else ""),
                 "use a machine with more memory, a smaller --clip" + (" or that model's weights" if read else ""))


def _check_weights_source(spec: BackboneSpec, file: Path) -> None:
    """Check a weights file before open_clip reads it: its sha256 against ``spec.sha256`` (when given), then what it
    holds against ``spec.clip``. Raises :class:`UsageError` naming the file."""
    if spec.sha256 and file.is_file():
        actual = sha256_file(file)
        if actual != spec.sha256:
            raise _changed_since_parsed(spec, actual)
    _check_weights_file(file, spec.clip)


def _create_model(spec: BackboneSpec, pretrained: str | None, quick_gelu: bool, from_file: bool) -> nn.Module:
    """open_clip's model of ``spec.clip`` with the weights ``pretrained`` (a tag or a file path; None: initialised
    only). Raises :class:`UsageError` with the reason, and for a tag where offline weights must come from."""
    import open_clip

    try:
        with quiet_loading_logs():
            return open_clip.create_model(spec.clip, pretrained=pretrained, force_quick_gelu=quick_gelu,
                                          load_weights=pretrained is not None)
    except Exception as exc:
        if from_file:
            raise weights_file_error(Path(spec.value), spec.clip, exc) from None
        if not isinstance(exc, (RuntimeError, OSError, ValueError)):
            raise
        hint = " (tags need the weights in the local open_clip / Hugging Face cache, where HF_HUB_OFFLINE=1 looks " \
               "without waiting for the network; offline, pass a local weights file: --pretrained /path/to/weights)" \
            if spec.kind == "tag" else ""
        raise UsageError(f"cannot load backbone {spec.clip} with pretrained={spec.value}: {exc}{hint}") from exc


def _load_embedded_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], clip: str) -> None:
    """Load a checkpoint's embedded backbone weights into ``model``; raises :class:`UsageError` naming the keys that
    are missing, unexpected or of another shape (or torch's own reason when it gives no keys)."""
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: torch raises even with strict=False, keys unlisted
        keys = state_dict_error_keys(exc)
        if keys is None:  # not torch's listing of keys (a tensor it cannot copy): its own reason, on one line
            reason = " ".join(str(exc).split())[:240] or type(exc).__name__
            raise UsageError(f"embedded backbone weights cannot be loaded into {clip} (torch: {reason})") from None
        expected = model.state_dict().keys()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        raise UsageError(f"embedded backbone weights do not fit {clip}: "
                         f"{key_mismatch(missing, unexpected, keys[2])}") from None
    if missing or unexpected:
        raise UsageError(f"embedded backbone weights do not fit {clip}: "
                         f"{key_mismatch(list(missing), list(unexpected), [])}")


def _changed_since_parsed(spec: BackboneSpec, actual: str) -> UsageError:
    """The refusal of a weights file whose sha256 is no longer the one :meth:`BackboneSpec.parse` took moments before,
    in the same command (``init``, ``info`` and a new ``train`` run parse ``--pretrained``, then load it): another
    process wrote or replaced the file in between, so running the command again is the fix, whichever command it is.
    A checkpoint's recorded sha256 never gets here: :meth:`Checkpoint.build_model` checks it with its own advice
    (put the file back) and passes none on."""
    return UsageError(f"backbone weights file {spec.value} changed while this command read it (sha256 "
                      f"{spec.sha256[:12]}… when --pretrained was read, {actual[:12]}… now): another process wrote or "
                      "replaced it; run the command again once nothing writes the file")


def _check_finite_weights(model: nn.Module, spec: BackboneSpec, embedded: bool) -> None:
    """Refuse a backbone whose weights hold NaN or inf (a damaged file, or one saved from a diverged run): every
    embedding would be NaN, and nothing would say why. Embedded weights: :class:`UsageError` (the checkpoint's loader
    names the file, exit 1); a weights file or a cached tag: :class:`~rap_deploy.errors.CheckFailedError` (exit 1).
    A tensor's sum is the fast test (0.06 s for ViT-B/32); only a sum that is not finite is looked at element-wise."""
    from rap_deploy.errors import CheckFailedError

    bad = [name for name, p in model.named_parameters()
           if p.is_floating_point() and not bool(torch.isfinite(p.sum())) and not bool(p.isfinite().all())]
    if not bad:
        return
    found = f"{count_noun(len(bad), 'tensor')} {'holds' if len(bad) == 1 else 'hold'} NaN or infinite values: " \
        f"{some_names(bad, 3)}"
    if embedded:
        raise UsageError(f"embedded backbone weights: {found}")
    source = f"backbone weights file {spec.value}" if spec.kind == "file" else \
        f"backbone {spec.clip} (pretrained={spec.value})"
    raise CheckFailedError(f"{source}: {found}; it is damaged or was saved from a diverged run: copy or download it "
                           "again")


def _check_weights_file(path: Path, clip: str) -> None:
    """Refuse a ``--pretrained`` path that is not a regular file, or an archive that would inflate past the memory
    available, before open_clip opens it (UsageError, exit 2)."""
    if not path.exists():
        raise UsageError(f"backbone weights file {path} {absent(path)}; pass an existing file, a tag or 'none'")
    if not path.is_file():
        raise UsageError(f"backbone weights file {path} is not a regular file (a folder, FIFO or device)")
    if is_rap_checkpoint(path):  # open_clip would read its adapters as a CLIP's and fail on missing keys
        raise UsageError(f"backbone weights file {path} is a RAP checkpoint (from `rapdeploy init` or `rapdeploy "
                         f"train`), not a CLIP's weights: fine-tune it with `rapdeploy train --checkpoint {path}`, or "
                         "pass the backbone itself (the .safetensors of `rapdeploy pretrain-backbone`, or open_clip "
                         "weights)")
    if is_torchscript_archive(path):  # torch.load would hand it to torch.jit.load, which runs its code
        raise UsageError(torchscript_refusal(path, clip))
    if sniff(path) == "zip":  # open_clip hands it to torch.load, which inflates what the archive declares
        check_archive_expansion(path, f"backbone weights file {path}")


@contextlib.contextmanager
def quiet_loading_logs() -> Iterator[None]:
    """Context manager: silence what open_clip and huggingface_hub log while a backbone loads ('No pretrained weights
    loaded', a failed download's warning and error): info/init report the backbone, and a failure becomes the
    one-line error whose message already carries open_clip's reason. Logging below CRITICAL is disabled inside the
    block and the previous ``logging.disable`` level restored on leaving it, also when the block raises (the
    exception propagates); it yields nothing."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def freeze(model: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter and put the module in eval mode; returns it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()

"""The RAP checkpoint in memory and the model it builds: :class:`Checkpoint` and the checks that turn weights which
do not fit (another architecture, a moved backbone file, damaged tensors) into refusals naming the file.

Kept apart from :mod:`rap_deploy.checkpoint` (the public entry point: creating, writing, loading) and
:mod:`rap_deploy.checkpoint_read` (reading an untrusted file) so that the two import it and the reader never imports
the entry point: the reader builds a :class:`Checkpoint`, the entry point re-exports it and calls the reader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rap_deploy.atomic import file_identity, sha256_file
from rap_deploy.config import RAPConfig
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.file_kinds import CHECKPOINT_FORMAT
from rap_deploy.model.clip_loader import BackboneSpec, clip_model_config, load_clip
from rap_deploy.model.rap import RAPModel, topk_excess
from rap_deploy.model.weights_errors import key_mismatch, state_dict_mismatch
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
        if self.backbone_state is not None:  # before load_clip builds (and randomly initialises) the whole model
            _check_embedded_shapes(where, self.backbone.clip, self.backbone_state)
        spec, identity = (self.backbone, None) if self.backbone_state is not None \
            else _referenced_backbone(where, self.backbone)
        try:  # load_clip turns load_state_dict's and open_clip's RuntimeErrors into UsageError, naming every key
            clip = load_clip(spec, quick_gelu=self.config.quick_gelu, state_dict=self.backbone_state,
                             checked_identity=identity)
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


# Which checkpoints name their backbone without its weights: train's by default (train/model_setup.source_checkpoint),
# init's when asked; the checkpoint does not record which, so a refusal names both rather than a flag never typed
REFERENCED_BY = "train stores a backbone by reference unless given --embed-backbone; init with --reference-backbone"


def _check_embedded_shapes(where: str, clip: str, state: dict[str, torch.Tensor]) -> None:
    """Raise :class:`CheckFailedError` when the embedded backbone weights ``state`` lack a tensor of open_clip model
    ``clip``, hold one it does not have or one of another shape: compared with a build on the ``meta`` device (no
    memory, no random init), so a small file naming a large CLIP is refused before that model is built. When that
    build fails, nothing is said here: building the model names the reason."""
    from rap_deploy.model.clip_loader import quiet_loading_logs, register_packaged_configs
    from rap_deploy.model.weights_shapes import differences, model_shapes

    register_packaged_configs()
    try:
        with quiet_loading_logs():
            expected = model_shapes(clip)
    except Exception:  # noqa: BLE001 - load_clip builds it again and words its failure
        return
    missing, unexpected, shapes = differences({k: list(v.shape) for k, v in state.items()}, expected)
    if missing or unexpected or shapes:
        raise CheckFailedError(f"{where}: embedded backbone weights do not fit {clip}: "
                               f"{key_mismatch(missing, unexpected, shapes)}; the file is damaged or was edited")


def _referenced_backbone(where: str, spec: BackboneSpec) -> tuple[BackboneSpec, tuple[int, ...] | None]:
    """``spec`` to load, once the backbone weights file a referencing checkpoint (:data:`REFERENCED_BY`) names is the
    file it was made with, and that file's identity from before it was hashed (load_clip refuses the file if it
    changes before the weights are loaded): :class:`UsageError` (exit 2), naming the checkpoint, when it is gone or
    its sha256 differs (the file's own is not quoted: the path comes from an untrusted file, which could name any
    file to learn its hash). The check is made here, once (load_clip would hash the file again), with advice that
    keeps the trained adapters."""
    if spec.kind != "file" or not spec.value or not spec.sha256:
        return spec, None
    path = Path(spec.value)
    keep = f"put the file it was made with (sha256 {spec.sha256[:12]}…) back at that path"
    if not path.exists():
        raise UsageError(f"{where} references the backbone weights file {path}, which does not exist (moved or "
                         f"deleted); {keep}: the checkpoint holds only its adapters, not the backbone's weights "
                         f"({REFERENCED_BY})")
    if not path.is_file():
        return spec, None  # load_clip says what it is (a folder, FIFO or device)
    identity = file_identity(path)
    if sha256_file(path) != spec.sha256:  # its hash is not quoted: a checkpoint must not probe other files
        raise UsageError(f"{where} references the backbone weights file {path}, which is not the file it was made "
                         f"with (another sha256); its adapters were trained on the recorded weights: {keep}")
    return dataclasses.replace(spec, sha256=None), identity  # checked: load_clip need not hash it again


def _unloadable_tag(where: str, spec: BackboneSpec, exc: UsageError) -> UsageError:
    """The refusal of a checkpoint whose backbone, an open_clip tag it only names, cannot be loaded here: load_clip's
    own message (``exc``) advises ``--pretrained /path``, an option of init, not of export, train or info. Other
    kinds: ``exc`` as it is."""
    if spec.kind != "tag" or exc.__cause__ is None:
        return exc
    reason = _first_line(exc.__cause__)
    return UsageError(f"{where} names its backbone, open_clip's {spec.clip} pretrained={spec.value}, without holding "
                      f"its weights ({REFERENCED_BY}), and they cannot be loaded here ({reason}); put them in "
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

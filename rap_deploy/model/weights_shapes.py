"""How a backbone weights file does not fit an open_clip model, in tensor names and shapes.

open_clip checks a few shapes itself while it loads a file (``text pos_embed width changed!``, an AssertionError that
names no tensor and no shape); :func:`file_shapes` reads the file's shapes without its data (a safetensors header,
or a memory-mapped torch archive) and the model's from a ``meta``-device build (no memory, no random init), so the
refusal can name what differs, and which packaged ``--clip`` the file does fit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rap_deploy.file_kinds import sniff


def open_clip_names(shapes: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
    """``shapes`` by the names open_clip loads them as: every name cut by ``module.``'s length when the first starts
    with ``module`` (a ``DistributedDataParallel`` model's state dict), as ``open_clip.load_state_dict`` does;
    ``shapes`` itself when it is ``None`` or empty."""
    if shapes and next(iter(shapes)).startswith("module"):
        return {k[7:]: v for k, v in shapes.items()}
    return shapes


def file_shapes(path: Path) -> dict[str, list[int]] | None:
    """The tensor shapes of the weights file ``path`` by name as stored (a ``state_dict`` entry unwrapped, as
    open_clip and ``sd.get('state_dict', sd)`` do; a ``module.`` prefix kept: :func:`open_clip_names` takes it off),
    read without the tensors' data; ``None`` when they cannot be read that way (a legacy, non-archive torch file, or
    a damaged one)."""
    try:
        if path.suffix == ".safetensors" or sniff(path) == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        if sniff(path) != "zip":
            return None
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - only a better message is at stake; the caller keeps open_clip's
        return None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return None
    return {str(k): list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def model_shapes(clip: str) -> dict[str, list[int]]:
    """The tensor shapes of open_clip model ``clip`` by state-dict name, from a build on the ``meta`` device."""
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model(clip, device="meta")
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def differences(file: dict[str, list[int]], model: dict[str, list[int]]
                ) -> tuple[list[str], list[str], list[tuple[str, str, str]]]:
    """The model's names ``file`` lacks, the names it has that the model does not, and the tensors of another shape
    (name, shape in the file, shape in the model), as :func:`~rap_deploy.model.weights_errors.key_mismatch` takes
    them."""
    missing = [k for k in model if k not in file]
    unexpected = [k for k in file if k not in model]
    shapes = [(k, str(file[k]), str(model[k])) for k in model if k in file and file[k] != model[k]]
    return missing, unexpected, shapes


def fitting_clip(file: dict[str, list[int]], candidates: list[str]) -> str | None:
    """The first of ``candidates`` (open_clip model names) whose every tensor ``file`` holds in the same shape."""
    for clip in candidates:
        missing, _, shapes = differences(file, model_shapes(clip))
        if not missing and not shapes:
            return clip
    return None


# Longest prefix nesting_prefix reports (a file's names are untrusted; a real one is a few module names: "clip.")
MAX_PREFIX_CHARS = 200


def nesting_prefix(file: dict[str, list[int]], model: dict[str, list[int]]) -> str | None:
    """The prefix (``"clip."``: CLIP4Clip's ``pytorch_model.bin.N``) under which ``file`` holds every tensor of
    ``model`` in its shape, so the file is a larger model's weights with the model inside; ``None`` when there is
    none, or when it is over :data:`MAX_PREFIX_CHARS` (it is printed). Only names ending in the model's longest name
    are tried, so the look is linear in the file's names."""
    if not model:
        return None
    anchor = max(model, key=len)
    for name in file:
        prefix = name[: -len(anchor)]
        if not (name.endswith(anchor) and prefix.endswith(".") and len(prefix) <= MAX_PREFIX_CHARS):
            continue
        if all(file.get(prefix + k) == v for k, v in model.items()):
            return prefix
    return None

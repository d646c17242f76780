"""Backbone weights files: an open_clip state dict in ``.safetensors`` with the model name in its metadata.

open_clip loads the file like any pretrained weights file (``create_model(name, pretrained=path)``); the metadata
lets ``rapdeploy init --backbone FILE`` know which architecture it belongs to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rap_deploy.atomic import atomic_path
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.file_kinds import metadata_object
from rap_deploy.safe_paths import absent


def save_backbone(state_dict: dict[str, torch.Tensor], clip: str, path: str | Path,
                  info: dict[str, Any] | None = None) -> Path:
    """Write ``state_dict`` of open_clip model ``clip`` to ``path`` (.safetensors) atomically; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"backbone file {path} must end in .safetensors")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"clip": clip, "rapdeploy_backbone": json.dumps(info or {})})
        _sort_metadata_keys(Path(tmp))
    return path


def _sort_metadata_keys(path: Path) -> None:
    """Rewrite, in place, the safetensors header of ``path`` with its ``__metadata__`` keys in sorted order.

    safetensors writes the metadata from a hash map whose order changes from process to process, so the same weights
    and metadata made files of different sha256 (measured: 3 of 6 processes put ``rapdeploy_backbone`` first), and runs
    know a backbone file by its sha256. The same entries in another order take the same bytes; the header is padded
    with spaces, as safetensors pads it, should it come out shorter. Raises :class:`RuntimeError` if it would not fit.
    """
    with path.open("r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if "__metadata__" not in header:
            return
        ordered = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            raise RuntimeError(f"{path}: the safetensors header with sorted metadata takes {len(text)} bytes, not "
                               f"{size}")
        f.seek(8)
        f.write(text.ljust(size, b" "))


def read_backbone_clip_name(path: str | Path) -> str | None:
    """Return the open_clip model name stored in a backbone file, or ``None`` for files without it.

    Raises :class:`UsageError` when the file is missing.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"backbone file {path} {absent(path)}; create it with `rapdeploy pretrain-backbone`")
    if not path.is_file():
        raise UsageError(f"backbone file {path} is not a regular file (a folder, FIFO or device); pass the "
                         ".safetensors file from `rapdeploy pretrain-backbone`")
    if path.suffix != ".safetensors":
        return None
    clip = _metadata(path).get("clip")
    if clip is not None and not isinstance(clip, str):
        raise CheckFailedError(f"backbone file {path}: its 'clip' metadata is not a model name; the file is damaged")
    return clip


def check_one_backbone_source(backbone: str | Path | None, pretrained: str | None) -> None:
    """Refuse (:class:`UsageError`, exit 2) ``--backbone`` with ``--pretrained``: both name the backbone weights, and
    the file's silently replaced the tag."""
    if backbone is not None and pretrained is not None:
        raise UsageError(f"pass either --backbone or --pretrained, not both: --backbone {backbone} is the backbone "
                         "weights")


def backbone_clip(path: str | Path, clip: str | None) -> str | None:
    """The CLIP of a model made on the backbone file ``path``: ``--clip`` (``clip``) when given, else the file's.
    Raises :class:`UsageError` when the two differ (exit 2), and as :func:`read_backbone_clip_name`."""
    stored = read_backbone_clip_name(path)
    if clip and stored and clip != stored:
        raise UsageError(f"--clip {clip} does not match the backbone file {path} (made for {stored})")
    return clip or stored


def read_backbone_info(path: str | Path) -> dict[str, Any]:
    """The ``info`` dict stored by :func:`save_backbone` (empty if none).

    Raises :class:`CheckFailedError` (exit 1) for a damaged file or metadata.
    """
    path = Path(path)
    return metadata_object(_metadata(path).get("rapdeploy_backbone", "{}"),
                           f"backbone file {path}: its rapdeploy_backbone metadata",
                           "the file is damaged; re-create it with `rapdeploy pretrain-backbone`")


def _metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file; :class:`CheckFailedError` naming the file when it is unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckFailedError(f"backbone file {path} is not a readable safetensors file ({str(exc)[:160]}): "
                               "truncated or damaged; re-create it with `rapdeploy pretrain-backbone`") from None

"""Reading a RAP checkpoint file, treated as untrusted: what :func:`rap_deploy.checkpoint.load_checkpoint` does.

Before anything is read, the path must be a regular file small enough for memory (a zip archive also small enough
once inflated); a ``.pt`` loads with ``torch.load(weights_only=True)`` (tensors and plain data only), a
``.safetensors`` through ``safe_open``. The payload is then checked key by key (format tag and version, object types,
tensor dicts of floating-point weights, the backbone reference, the model config) before a
:class:`~rap_deploy.checkpoint_model.Checkpoint` is built. Messages name the file, what is wrong with it and what to
pass.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from rap_deploy.checkpoint_model import FORMAT, FORMAT_VERSION, Checkpoint
from rap_deploy.config import RAPConfig
from rap_deploy.errors import CheckFailedError, RapDeployError, UsageError
from rap_deploy.file_kinds import CHECKPOINT_SUFFIXES, metadata_object
from rap_deploy.model.clip_loader import BackboneSpec
from rap_deploy.name_lists import int_text, short_repr, some_names
from rap_deploy.safe_paths import absent

# The dtypes a stored weight may have: float32, as rapdeploy writes them, or another float that converts into the
# model's float32 parameters. Complex, integer, bool and float8 tensors are no weights it wrote (load_state_dict would
# drop an imaginary part or take whole numbers silently; float8 has no isfinite check).
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at ``path``, read and checked; raises what :func:`rap_deploy.checkpoint.load_checkpoint`
    lists."""
    _check_regular(path)
    if _is_safetensors(path):
        _check_fits_memory(path)
        payload = _read_safetensors(path)
    else:
        from rap_deploy.file_kinds import check_archive_expansion

        check_archive_expansion(path, f"checkpoint {path}")
        _check_fits_memory(path)
        try:  # through a file object: torch.load reads any path named .safetensors as safetensors
            with open(path, "rb") as fh:
                payload = torch.load(fh, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError,
                AttributeError, UnicodeDecodeError, MemoryError, OSError) as exc:
            from rap_deploy.file_kinds import explain_load_error

            raise explain_load_error(path, exc) from None
    try:  # a value nested thousands deep (lists in lists) exhausts Python's stack in any comparison or message
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise _foreign_payload(path, payload)
        return _checkpoint_from_payload(path, payload)
    except RecursionError:
        raise _damaged(path, "it holds a value nested too deep to read (no rapdeploy writes one)") from None


def _init_on(weights: Path) -> str:
    """The `rapdeploy init` command that makes a checkpoint on the CLIP weights file ``weights`` (shell-quoted, so
    the command pastes as one line whatever the path holds)."""
    import shlex

    return f"`rapdeploy init --clip NAME --pretrained {shlex.quote(str(weights))} --out ckpt.pt`"


def _foreign_payload(path: Path, payload: Any) -> UsageError:
    """The error for a PyTorch file that loads but holds no rapdeploy checkpoint: what it holds (a state_dict of
    backbone weights is the likely mix-up, so that one names `rapdeploy init --pretrained`) and what to pass."""
    fix = "pass a checkpoint from `rapdeploy init` or `rapdeploy train`"
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        first = str(next(iter(payload)))[:60]
        return UsageError(f"{path} is a PyTorch state_dict ({len(payload):,} tensors, the first {first!r}), not a "
                          f"rapdeploy checkpoint; if these are CLIP weights, make a checkpoint on them with "
                          f"{_init_on(path)}, else {fix}")
    if isinstance(payload, dict):
        keys = some_names([repr(str(k)[:30]) for k in payload], 3)
        held = f"a dict with keys {keys}" if payload else "an empty dict"
    else:
        held = f"a {type(payload).__name__}"
    return UsageError(f"{path} is not a rapdeploy checkpoint: it holds {held} and no '{FORMAT}' format tag; {fix}")


def _check_regular(path: Path) -> None:
    """Refuse a missing path, a folder or a FIFO/device before opening it (UsageError, exit 2)."""
    if not path.exists():
        raise UsageError(f"checkpoint {path} {absent(path)}; create one with `rapdeploy init` or `rapdeploy train`")
    if path.is_dir():
        raise UsageError(f"checkpoint {path} {_checkpoint_in_folder(path)}")
    if not path.is_file():
        raise UsageError(f"checkpoint {path} is not a regular file (a FIFO, socket or device); pass a checkpoint file")


def _checkpoint_in_folder(folder: Path) -> str:
    """What ``folder`` is and what to pass instead: a training run's ``best.pt``; for an engine or export folder
    (which holds no checkpoint) the one its manifest names, when that is an existing checkpoint file."""
    from rap_deploy.workspace import RUN_BEST, RUN_LAST

    for name in (RUN_BEST, RUN_LAST):
        if (folder / name).is_file():
            return f"is a folder; pass the checkpoint inside it: {folder / name}"
    kind, source = _manifest_source(folder / "manifest.json")
    if kind is None:
        return "is a folder; pass the .pt or .safetensors file inside it"
    if source is None:
        return f"is {kind} folder, which holds no checkpoint; pass the checkpoint it was made from"
    return f"is {kind} folder, which holds no checkpoint; pass the one it was made from: {source}"


def _manifest_source(manifest: Path) -> tuple[str | None, str | None]:
    """``(kind, checkpoint)`` of an engine or export folder's manifest: ``"an engine"``/``"an export"`` and the
    source checkpoint it records when that is an existing file with a checkpoint suffix (the manifest is untrusted:
    nothing else it names is reported); ``(None, None)`` when ``manifest`` is neither."""
    from rap_deploy.bounds import read_manifest_text

    try:
        data = json.loads(read_manifest_text(manifest)) if manifest.is_file() else None
    except (OSError, ValueError, RapDeployError):
        return None, None
    kinds = {"rapdeploy.engine": "an engine", "rapdeploy.export": "an export"}
    if not isinstance(data, dict) or data.get("format") not in kinds:
        return None, None
    recorded = data.get("checkpoint")
    value = recorded.get("path") if isinstance(recorded, dict) else None
    ok = isinstance(value, str) and Path(value).suffix in CHECKPOINT_SUFFIXES and Path(value).is_file()
    return kinds[data["format"]], value if ok else None


def _check_fits_memory(path: Path) -> None:
    """Refuse (UsageError, exit 2) a checkpoint larger than the memory available: torch.load and safetensors read
    every tensor of it into memory, and one that cannot fit was ended by the kernel's OOM killer, without a word."""
    from rap_deploy.bounds import check_memory

    check_memory(path.stat().st_size, f"checkpoint {path} (read whole)",
                 "use a machine with more memory, or a checkpoint that references its backbone (--reference-backbone)")


def _is_safetensors(path: Path) -> bool:
    """Whether to read ``path`` as safetensors: its first bytes say so, or it is named ``.safetensors`` and they do
    not say it is a PyTorch file (a renamed file is read as what it is, not refused as damaged or foreign)."""
    from rap_deploy.file_kinds import sniff

    kind = sniff(path)
    return kind == "safetensors" or (path.suffix == ".safetensors" and kind not in ("zip", "pickle"))


def _read_safetensors(path: Path) -> dict[str, Any]:
    """The payload of a ``.safetensors`` checkpoint (its JSON metadata plus the tensors)."""
    from safetensors import SafetensorError, safe_open

    from rap_deploy.file_kinds import sniff

    if sniff(path) == "empty":
        raise CheckFailedError(f"checkpoint {path} is empty (0 bytes): an interrupted write or copy; re-create it")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if "rapdeploy_backbone" in meta:  # what `rapdeploy pretrain-backbone` writes
                raise UsageError(f"{path} is a backbone file (`rapdeploy pretrain-backbone`), not a RAP checkpoint; "
                                 f"make one on it with `rapdeploy init --backbone {path} --out ckpt.pt`")
            if "rapdeploy" not in meta:
                raise _plain_safetensors(path, list(fh.keys()))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckFailedError(f"checkpoint {path} is not a readable safetensors file ({str(exc)[:160]}): truncated "
                               "or damaged; copy it again or re-create it") from None
    payload = metadata_object(meta["rapdeploy"], f"checkpoint {path}: its rapdeploy metadata",
                              "the file is damaged or was edited")
    payload["adapter_state"] = {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")}
    backbone = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
    payload["backbone_state"] = backbone or None
    return payload


def _plain_safetensors(path: Path, names: list[str]) -> UsageError:
    """The error for a safetensors file without rapdeploy metadata holding the tensors ``names``: open_clip weights
    (``open_clip_model.safetensors``) are the likely mix-up, so it names `rapdeploy init --pretrained` as the
    PyTorch state_dict's refusal does."""
    fix = "pass a checkpoint from `rapdeploy init` or `rapdeploy train`"
    if not names:
        return UsageError(f"{path} is a safetensors file without rapdeploy metadata or tensors, not a RAP checkpoint; "
                          f"{fix}")
    return UsageError(f"{path} is a safetensors file without rapdeploy metadata ({len(names):,} tensors, the first "
                      f"{names[0][:60]!r}), not a RAP checkpoint; if these are CLIP weights, make a checkpoint on "
                      f"them with {_init_on(path)}, else {fix}")


def _damaged(path: Path, what: str) -> CheckFailedError:
    return CheckFailedError(f"checkpoint {path} is damaged: {what}; re-create it with `rapdeploy init` or "
                            "`rapdeploy train`")


def _tensor_dict(path: Path, value: Any, key: str, optional: bool) -> dict[str, torch.Tensor] | None:
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise _damaged(path, f"'{key}' is {'missing' if value is None else 'a ' + type(value).__name__}, not a "
                             "dict of tensors")
    for name, tensor in value.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise _damaged(path, f"'{key}' entry {short_repr(name, 80)} is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype not in WEIGHT_DTYPES:
            raise _damaged(path, f"'{key}' entry {name[:80]!r} is a {str(tensor.dtype).removeprefix('torch.')} tensor, "
                                 "not floating-point weights")
        kind = _not_dense(tensor)
        if kind:  # load_state_dict's refusal of it names no key: the message was empty, or cut mid-sentence
            raise _damaged(path, f"'{key}' entry {name[:80]!r} is {kind}, not dense weights")
    return value


def _not_dense(tensor: torch.Tensor) -> str | None:
    """What ``tensor`` is when it holds no dense values that copy into a model's parameters (a sparse tensor, a
    meta tensor: a shape without data, or a nested tensor, whose strided layout hides that it has no one shape),
    else ``None``."""
    if tensor.is_meta:
        return "a meta tensor (a shape without values)"
    if tensor.is_nested:  # load_state_dict's RuntimeError for it names no key: load_clip re-raises it (a traceback)
        return "a nested tensor (tensors of several shapes)"
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor"
    return None


def _checkpoint_from_payload(path: Path, payload: dict[str, Any]) -> Checkpoint:
    """Validate the payload's keys and types and build the :class:`Checkpoint` (CheckFailedError when damaged)."""
    version = _format_version(path, payload)
    if version > FORMAT_VERSION:
        from rap_deploy import __version__

        raise UsageError(f"checkpoint {path} has format {version}, newer than the format {FORMAT_VERSION} this "
                         f"rapdeploy {__version__} reads (it was written by a newer rapdeploy); upgrade rapdeploy")
    for key in ("config", "backbone"):
        if not isinstance(payload.get(key), dict):
            raise _damaged(path, f"'{key}' is {'missing' if key not in payload else 'not an object'}")
    for key in ("clip_model_cfg", "extra"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            raise _damaged(path, f"'{key}' is not an object")
    adapters = _tensor_dict(path, payload.get("adapter_state"), "adapter_state", optional=False)
    backbone_state = _tensor_dict(path, payload.get("backbone_state"), "backbone_state", optional=True)
    b = payload["backbone"]
    if not isinstance(b.get("clip"), str) or b.get("kind") not in ("none", "tag", "file"):
        raise _damaged(path, "'backbone' needs a 'clip' name and a 'kind' of none, tag or file, got "
                             f"{short_repr(b, 120)}")
    for key in ("value", "sha256"):
        if b.get(key) is not None and not isinstance(b[key], str):
            raise _damaged(path, f"'backbone' {key} is not a string")
    if b["kind"] == "file" and backbone_state is None and not b.get("sha256"):  # nothing would tell it is that file
        raise _damaged(path, "it references its backbone weights file by path alone, without the file's sha256 "
                             "(rapdeploy records both)")
    if b["kind"] == "none" and backbone_state is None:  # load_clip would draw a new random backbone, silently
        raise _damaged(path, "its backbone is a random one (--pretrained none), which only the file holds, but its "
                             "'backbone_state' weights are missing")
    newer = _unknown_settings(payload["config"])
    if newer:  # a setting added since this version (a squash checkpoint read by one without resize_mode): not damage
        raise UsageError(f"checkpoint {path}: its model config holds settings this rapdeploy does not know "
                         f"({some_names(newer)}): it was written by a newer rapdeploy (upgrade rapdeploy to use "
                         "it) or edited")
    try:
        config = RAPConfig.from_dict(payload["config"])
    except (UsageError, TypeError, ValueError) as exc:
        raise CheckFailedError(f"checkpoint {path} has an invalid model config: {exc}; the file is damaged or was "
                               "edited") from None
    if config.clip != b["clip"]:
        raise _damaged(path, f"its model config names CLIP {short_repr(config.clip, 60)} but its backbone is "
                             f"{short_repr(b['clip'], 60)}")
    return Checkpoint(config=config, backbone=BackboneSpec(b["clip"], b["kind"], b.get("value"), b.get("sha256")),
                      clip_model_cfg=payload.get("clip_model_cfg") or {}, adapter_state=adapters,
                      backbone_state=backbone_state, extra=payload.get("extra") or {}, source=str(path))


def _format_version(path: Path, payload: dict[str, Any]) -> int:
    """The payload's ``format_version``; :func:`_damaged` (exit 1) when it is missing, no integer or below 1: every
    rapdeploy since the first one has written it, as 1, so no checkpoint without it or with a lower one was ever
    written by one."""
    if "format_version" not in payload:
        raise _damaged(path, "its format_version is missing")
    version = payload["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _damaged(path, f"format_version is {short_repr(version)}, not an integer")
    if version < 1:
        raise _damaged(path, f"format_version is {int_text(version)}, below 1, which no rapdeploy writes")
    return version


def _unknown_settings(config: dict[str, Any]) -> list[str]:
    """The keys of a stored model config (and of its ``preprocess``) that this version's config does not have."""
    from rap_deploy.config import PreprocessConfig

    known = {f.name for f in dataclasses.fields(RAPConfig)}
    keys = [str(k)[:40] for k in config if k not in known]
    pre = config.get("preprocess")
    if isinstance(pre, dict):
        known_pre = {f.name for f in dataclasses.fields(PreprocessConfig)}
        keys += [f"preprocess.{str(k)[:40]}" for k in pre if k not in known_pre]
    return keys

"""The commands rapdeploy suggests for an engine that cannot be loaded or run here: the ``rapdeploy build-engine``
command that builds it again as its manifest (:mod:`rap_deploy.engines.manifest`) records it (backend, precision,
device, the export folder it came from), and the ONNX Runtime CPU builds to run instead.

A manifest is untrusted: the export folder it records is read bounded (:func:`recorded_export_dir`), and where it
records none the commands name :data:`EXPORT_PLACEHOLDER`, explained after them (:func:`where_the_export_is`), never
build-engine's default (the workspace's latest export, maybe another checkpoint's).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rap_deploy.engines.manifest import MAX_PATH_CHARS

#: Stands in a command for the export folder an engine manifest does not record (:func:`export_word`)
EXPORT_PLACEHOLDER = "<export folder>"


def build_engine_flags(manifest: Mapping[str, Any]) -> list[str]:
    """The ``rapdeploy build-engine`` options that build the engine ``manifest`` records again (its backend,
    precision and device): TensorRT ``--fp16``, or ``--backend tensorrt`` for fp32; ONNX Runtime ``--int8`` or none
    on the CPU, and on CUDA ``--backend onnxruntime --device cuda`` (``--fp16`` alone means TensorRT, and without
    ``--device cuda`` an ONNX Runtime engine is built for the CPU)."""
    precision = manifest.get("precision")
    if manifest.get("backend") == "tensorrt":
        return ["--fp16"] if precision == "fp16" else ["--backend", "tensorrt"]
    if manifest.get("provider") == "CUDAExecutionProvider" or precision == "fp16":
        return ["--backend", "onnxruntime", "--device", "cuda", *(["--fp16"] if precision == "fp16" else [])]
    return ["--int8"] if precision == "int8" else []


def ort_rebuild_command(manifest: Mapping[str, Any], folder: Path | None = None) -> str:
    """The ``rapdeploy build-engine`` command that builds an ONNX Runtime engine again as ``manifest`` records it:
    from the export folder it records (:data:`EXPORT_PLACEHOLDER` when none), :func:`build_engine_flags` with
    ``--backend onnxruntime`` always named and, with ``folder``, into that folder (``--out FOLDER --force``)."""
    flags = build_engine_flags(manifest)
    if "--backend" not in flags:
        flags = ["--backend", "onnxruntime", *flags]
    return _rebuild_command(manifest, flags, folder)


def _rebuild_command(manifest: Mapping[str, Any], flags: list[str], folder: Path | None) -> str:
    """``rapdeploy build-engine <export> FLAGS [--out FOLDER --force]``, shell-quoted, the export folder being
    :func:`export_word`'s."""
    parts = [export_word(manifest), *map(shlex.quote, flags)]
    if folder is not None:
        parts += ["--out", shlex.quote(str(folder)), "--force"]
    return " ".join(["rapdeploy build-engine", *parts])


def recorded_export_dir(manifest: Mapping[str, Any]) -> str | None:
    """The export folder an engine ``manifest`` records it was built from, or ``None`` when it records none (written
    before manifests did, or edited: also a text longer than
    :data:`~rap_deploy.engines.manifest.MAX_PATH_CHARS`, which no folder has)."""
    recorded = manifest.get("export_dir")
    return recorded if isinstance(recorded, str) and 0 < len(recorded) <= MAX_PATH_CHARS else None


def export_word(manifest: Mapping[str, Any]) -> str:
    """The export folder ``manifest`` records, shell-quoted for a command; :data:`EXPORT_PLACEHOLDER` (unquoted, so
    it reads as something to replace) when it records none, which a message then explains with
    :func:`where_the_export_is`."""
    export = recorded_export_dir(manifest)
    return shlex.quote(export) if export else EXPORT_PLACEHOLDER


def where_the_export_is(manifest: Mapping[str, Any]) -> str:
    """For a message whose command names :func:`export_word`: what :data:`EXPORT_PLACEHOLDER` stands for and where
    to find it (`` (<export folder> is ...)``), or nothing when ``manifest`` records the folder."""
    if recorded_export_dir(manifest):
        return ""
    return export_placeholder_note("the engine's manifest does not record it")


def export_placeholder_note(why: str) -> str:
    """`` (<export folder> is ...; WHY)``: what :data:`EXPORT_PLACEHOLDER` in a message's command stands for, where to
    find it, and ``why`` the message could not name the folder itself."""
    return (f" ({EXPORT_PLACEHOLDER} is the folder `rapdeploy export` wrote from this engine's checkpoint, by default "
            f"in the workspace's onnx folder; {why})")


def cpu_builds_instead(folder_word: str) -> str:
    """``run `rapdeploy build-engine FOLDER --backend onnxruntime` (CPU fp32) or `... --int8` (CPU int8) instead``
    with ``folder_word`` as FOLDER: a folder already shell-quoted, a placeholder the caller explains, or ``""`` (no
    folder: build-engine's default)."""
    head = " ".join(["rapdeploy build-engine", *([folder_word] if folder_word else [])])
    return f"run `{head} --backend onnxruntime` (CPU fp32) or `{head} --int8` (CPU int8) instead"


def cpu_engine_instead(manifest: Mapping[str, Any]) -> str:
    """What to run instead of an engine that cannot run here: the ONNX Runtime CPU builds (fp32, int8) of the export
    folder ``manifest`` records (:func:`cpu_builds_instead`); when it records none, of :data:`EXPORT_PLACEHOLDER`,
    explained (:func:`where_the_export_is`), not build-engine's default (the workspace's latest export, maybe another
    checkpoint's)."""
    return cpu_builds_instead(export_word(manifest)) + where_the_export_is(manifest)


def trt_rebuild_command(manifest: Mapping[str, Any], folder: Path | None = None) -> str:
    """The ``rapdeploy build-engine`` command that rebuilds a TensorRT engine as its manifest records it: the export
    it came from (:data:`EXPORT_PLACEHOLDER` when it records none), its precision (:func:`build_engine_flags`) and,
    with ``folder``, into that folder (``--out FOLDER --force``)."""
    return _rebuild_command(manifest, build_engine_flags(manifest), folder)

"""``build_engine``: an engine folder from an export folder, built atomically and validated before it is kept.

Targets (``resolve_target``): ``--fp16`` alone means TensorRT on CUDA; no flag means ONNX Runtime CPU fp32;
``--int8`` means ONNX Runtime CPU with dynamic int8 quantisation; ``--backend onnxruntime --device cuda [--fp16]``
an ONNX Runtime CUDA engine; ``--backend tensorrt`` without ``--fp16`` a TensorRT fp32 engine. Availability is
checked first, so a machine without TensorRT or a GPU gets one line that says what is missing and what to run instead.

The build holds the lock of the engine folder (:mod:`rap_deploy.locks`: a second build into it is told who is
writing), writes into a hidden sibling folder (``.<name>.partial-<pid>``, :mod:`rap_deploy.folder_swap`), writes
``manifest.json`` last, loads the result through :func:`~rap_deploy.engines.loader.load_engine`, compares it with the
reference (the PyTorch checkpoint the export came from when it is present and unchanged, else the export's fp32
graphs on ONNX Runtime CPU) and only then swaps the folder into place in one step. An interrupted or failed build
leaves the previous engine untouched and no folder that workspace discovery would take for an engine.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

from rap_deploy.bounds import manifest_format
from rap_deploy.crashpoints import crash_point
from rap_deploy.engines.base import Engine
from rap_deploy.engines.manifest import BACKENDS, FORMAT, MANIFEST, new_manifest, write_manifest
from rap_deploy.engines.trt_plan import ProfileOptions, profile_ranges
from rap_deploy.errors import UsageError
from rap_deploy.folder_swap import StagedFolder, check_not_replaced, folder_identity, staged_folder
from rap_deploy.locks import folder_lock, target_path

DEVICES = ("cpu", "cuda")


def resolve_target(backend: str | None, fp16: bool, int8: bool, device: str | None) -> tuple[str, str, str]:
    """Return ``(backend, precision, device)`` from the command-line flags (see the module docstring).

    Raises :class:`UsageError` for combinations that cannot be built (``--fp16 --int8``, TensorRT int8, int8 on
    CUDA, ONNX Runtime fp16 on the CPU, TensorRT on the CPU).
    """
    if fp16 and int8:
        raise UsageError("--fp16 and --int8 exclude each other; pick one precision")
    backend = backend or ("tensorrt" if fp16 else "onnxruntime")
    if backend not in BACKENDS:
        raise UsageError(f"backend '{backend}' is unknown; use one of {', '.join(BACKENDS)}")
    if device is not None and device not in DEVICES:
        raise UsageError(f"device '{device}' is unknown; use cpu or cuda")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    if backend == "tensorrt":
        if int8:
            raise UsageError("TensorRT int8 needs calibration data or Q/DQ graphs, which rapdeploy does not make; "
                             "use `--backend onnxruntime --int8` (CPU) or `--fp16` (TensorRT)")
        if device == "cpu":
            raise UsageError("TensorRT runs on NVIDIA GPUs only; use --backend onnxruntime for a CPU engine")
        return backend, precision, "cuda"
    device = device or ("cuda" if fp16 else "cpu")
    if int8 and device != "cpu":
        raise UsageError("int8 ONNX Runtime engines run on the CPU; drop --device cuda or use --fp16")
    if fp16 and device != "cuda":
        raise UsageError("fp16 ONNX Runtime engines need CUDA; on the CPU build fp32 (no flag) or --int8")
    return backend, precision, device


def engine_name(backend: str, precision: str, device: str) -> str:
    """The default engine folder name: ``<backend>-<precision>`` (ONNX Runtime on CUDA: ``onnxruntime-cuda-...``)."""
    if backend == "onnxruntime" and device == "cuda":
        return f"onnxruntime-cuda-{precision}"
    return f"{backend}-{precision}"


def resolve_export_dir(export_dir: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None) -> Path:
    """``export_dir``, or the workspace's most recent export; raises :class:`UsageError` when there is none or
    ``export_dir`` is a checkpoint."""
    from rap_deploy.workspace import latest_child, subdir

    if export_dir is not None:
        _refuse_checkpoint(Path(export_dir))
        return Path(export_dir)
    onnx_dir = subdir("onnx", workspace)
    found = latest_child(onnx_dir, "manifest.json")
    if found is None:
        raise UsageError(f"no export found under {onnx_dir}; run `rapdeploy export CKPT` first or pass EXPORT_DIR")
    return found


def _refuse_checkpoint(path: Path) -> None:
    """Raise :class:`UsageError` for a checkpoint given as the export folder (before the backend checks, whose
    advice would name it as an export folder again), with the export that makes one from it."""
    import shlex

    from rap_deploy.file_kinds import CHECKPOINT_SUFFIXES

    if path.suffix in CHECKPOINT_SUFFIXES and path.is_file():
        raise UsageError(f"{path} is a checkpoint, not an export folder: an engine is built from the ONNX graphs "
                         f"`rapdeploy export` makes of it; run `rapdeploy export {shlex.quote(str(path))}`, then "
                         "`rapdeploy build-engine` (it builds the workspace's latest export)")


def check_available(backend: str, device: str, device_id: int = 0,
                    export_dir: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`~rap_deploy.errors.BackendUnavailableError` (one line: what is missing, what to run instead, on
    ``export_dir``) unless ``backend`` can build on ``device`` here."""
    if backend == "tensorrt":
        from rap_deploy.engines.tensorrt_backend import require_tensorrt

        require_tensorrt(device_id, export_dir)
    else:
        from rap_deploy.engines.ort_backend import provider_for, require_provider

        require_provider(provider_for(device))


def reference_engine(export_manifest: dict[str, Any], export_dir: Path) -> tuple[Engine, str]:
    """The engine a new engine is compared with, and its description.

    The export's source checkpoint (PyTorch, CPU fp32) when the file is there with the recorded sha256; otherwise the
    export's fp32 graphs on ONNX Runtime CPU (they passed the export's parity check against that checkpoint).
    """
    from rap_deploy.checkpoint import recorded_checkpoint

    ckpt = export_manifest.get("checkpoint")
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    path = recorded_checkpoint(ckpt.get("path"), ckpt.get("sha256") or None)
    if path is not None:
        from rap_deploy.engines.torch_backend import TorchEngine

        return TorchEngine(path), f"pytorch checkpoint {path} (cpu fp32)"
    from rap_deploy.engines.loader import load_engine

    return load_engine(export_dir), f"export graphs {export_dir} (onnxruntime cpu fp32)"


def build_engine(export_dir: str | os.PathLike[str] | None = None, backend: str | None = None, fp16: bool = False,
                 int8: bool = False, out: str | os.PathLike[str] | None = None, device: str | None = None,
                 profiles: ProfileOptions | None = None, threads: int | None = None,
                 inter_threads: int | None = None, workspace: str | os.PathLike[str] | None = None,
                 force: bool = False, validate: bool = True, progress: bool = True, device_id: int = 0,
                 trt_workspace_gb: float = 4.0, per_channel: bool = True, reduce_range: bool = True
                 ) -> dict[str, Any]:
    """Build an engine folder from an export folder; returns its manifest (plus ``"dir"``).

    Defaults: ``export_dir`` = the workspace's latest export, ``out`` = ``<workspace>/engines/<backend>-<precision>``.
    An existing ``out`` is only replaced with ``force``. Raises :class:`UsageError` for bad options or paths,
    :class:`~rap_deploy.errors.BackendUnavailableError` when TensorRT / the GPU / the provider is missing,
    :class:`~rap_deploy.errors.CheckFailedError` when the build or its validation fails (nothing is left behind).
    """
    from rap_deploy.export import read_export_manifest
    from rap_deploy.folder_swap import recover_interrupted_swap
    from rap_deploy.workspace import subdir

    backend, precision, device = resolve_target(backend, fp16, int8, device)
    src = resolve_export_dir(export_dir, workspace)
    check_available(backend, device, device_id, src)
    src_identity = folder_identity(src)  # an export --force that swaps src during the build is refused at the end
    export_manifest = read_export_manifest(src)
    export_manifest.pop("dir", None)
    dest = Path(out) if out is not None else subdir("engines", workspace) / engine_name(backend, precision, device)
    ranges = profile_ranges(profiles, export_manifest["graphs"],
                            context_length=(export_manifest.get("dims") or {}).get("context_length"))
    with folder_lock(dest, "build-engine", "engine folder"):
        # An engine a killed two-rename swap left aside is put back before the folder is judged: judged missing, it
        # was replaced without --force once staged_folder had restored it.
        recover_interrupted_swap(target_path(dest))
        check_replaceable(dest, force)
        with staged_folder(dest) as stage:
            stage.before_commit = functools.partial(check_source_unchanged, src, src_identity)
            manifest = _build_into(stage, src, export_manifest, backend, precision, device, ranges, threads,
                                   inter_threads, workspace, validate, progress, device_id, trt_workspace_gb,
                                   per_channel, reduce_range)
    manifest["dir"] = str(dest.resolve())
    return manifest


def check_source_unchanged(src: Path, identity: tuple[int, int] | None) -> None:
    """Refuse to commit an engine built from the export folder ``src`` when ``src`` is no longer the folder whose
    manifest the build read (``identity``, :func:`~rap_deploy.folder_swap.folder_identity`): an ``export --force``
    swapped a new export in meanwhile, so the graphs read may be the new ones. Raises :class:`CheckFailedError`."""
    check_not_replaced(src, identity, "while the engine was built from it",
                       "the engine could hold graphs of the new export under the old one's record; nothing was "
                       "written: build again")


def check_replaceable(dest: Path, force: bool) -> None:
    """Refuse to build over ``dest`` unless it is absent, empty, or (with ``force``) an engine folder: one with a
    ``manifest.json`` and no sub-folders (:func:`rap_deploy.folder_swap.check_replaceable`; UsageError, exit 2)."""
    from rap_deploy.folder_swap import check_replaceable as check_folder

    check_folder(dest, force, "the engine", _not_an_engine_folder)


def _not_an_engine_folder(dest: Path) -> str | None:
    if not (dest / MANIFEST).is_file() or any(p.is_dir() for p in dest.iterdir()):
        return "exists and is not an engine folder"
    other = manifest_format(dest / MANIFEST)
    if other is not None and other != FORMAT:  # a damaged engine manifest (no format) may still be rebuilt
        return f"holds a {other} folder, not an engine"
    return None


def _build_into(stage: StagedFolder, src: Path, export_manifest: dict[str, Any], backend: str, precision: str,
                device: str, ranges: dict[str, Any], threads: int | None, inter_threads: int | None,
                workspace: str | os.PathLike[str] | None, validate: bool, progress: bool, device_id: int,
                trt_workspace_gb: float, per_channel: bool, reduce_range: bool) -> dict[str, Any]:
    """Build the engine into the staging folder, write its manifest, validate it, then swap it into place."""
    from rap_deploy.data.progress import progress_bar
    from rap_deploy.engines.loader import runtime_errors
    from rap_deploy.workspace import subdir

    tmp, dest = stage.path, stage.dest
    crash_point("build.staging-created")
    t0 = time.perf_counter()
    with runtime_errors(src):  # a runtime that cannot read an export graph: one line, exit 1
        with progress_bar(len(export_manifest["graphs"]), f"building {backend} {precision}", progress) as advance:
            if backend == "tensorrt":
                from rap_deploy.engines.trt_build import build_trt_graphs

                graphs, extra = build_trt_graphs(src, export_manifest, tmp, precision, ranges,
                                                 subdir("cache", workspace) / "tensorrt", trt_workspace_gb,
                                                 device_id, lambda _: advance(1))
                extra["profiles"] = {g: {a: r.to_dict() for a, r in axes.items()} for g, axes in ranges.items()}
                trt_version = extra.pop("tensorrt_version")
            else:
                from rap_deploy.engines.ort_build import build_ort_graphs

                graphs, extra = build_ort_graphs(src, export_manifest, tmp, precision, device, threads, inter_threads,
                                                 per_channel, reduce_range, device_id, lambda _: advance(1))
                asa = ranges.get("asa_head")
                if asa:
                    extra["asa_blocks"] = {"queries": asa["queries"].max, "videos": asa["videos"].max}
                trt_version = None
        provider = {"tensorrt": "TensorRT", "onnxruntime": None}[backend]
        if backend == "onnxruntime":
            from rap_deploy.engines.ort_backend import provider_for

            provider = provider_for(device)
        manifest = new_manifest(backend, precision, device, provider, graphs, export_manifest, src, **extra)
        if trt_version:
            manifest["versions"]["tensorrt"] = trt_version
        manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
        write_manifest(tmp, manifest)
        crash_point("build.manifest-written")
        if validate:
            manifest["validation"] = validate_engine(tmp, export_manifest, src, precision, device_id, dest.name)
            write_manifest(tmp, manifest)
        stage.commit()
    return manifest


def validate_engine(engine_dir: Path, export_manifest: dict[str, Any], export_dir: Path, precision: str,
                    device_id: int = 0, name: str | None = None) -> dict[str, Any]:
    """Load the engine in ``engine_dir`` and compare it with :func:`reference_engine` on real preprocessed inputs.

    Returns the comparison report (``reference``, per-output errors, ``passed``); raises
    :class:`~rap_deploy.errors.CheckFailedError` when it is outside the tolerance of ``precision``.
    """
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.validate import require_match

    engine = load_engine(engine_dir, device_id=device_id)
    try:  # the new engine is closed (its device memory released, on its device) also when the reference fails to load
        reference, described = reference_engine(export_manifest, export_dir)
        try:
            report = require_match(engine, reference, precision, what=f"{precision} engine {name or engine_dir.name}")
        finally:
            reference.close()
    finally:
        engine.close()
    return {"reference": described, **report}

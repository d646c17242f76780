"""The engine folder's ``manifest.json`` (format ``rapdeploy.engine``) and the rules that refuse an engine.

A manifest records what was built and from what: backend, precision, provider, device, library versions (ONNX
Runtime / TensorRT), GPU name and compute capability (TensorRT), optimisation profiles, every engine file with its
sha256 and the sha256 of the ONNX graph it came from, the export manifest and the source checkpoint.

Refusals, each with the reason and the fix:

- not an engine folder / unknown format → :class:`~rap_deploy.errors.UsageError` (exit 2);
- a listed file missing or with another sha256 (tampered, truncated), a file entry that escapes the folder or is a
  symlink (:mod:`rap_deploy.safe_paths`), a precision claim the graphs contradict
  (:mod:`rap_deploy.engines.integrity`), a manifest with mistyped keys → :class:`~rap_deploy.errors.CheckFailedError`
  (exit 1);
- built for another TensorRT version, another GPU, another ONNX Runtime release, another CPU layout (ONNX Runtime
  CPU engines, and any engine whose graphs hold CPU-placed NCHWc nodes: machine and AVX-512, :func:`cpu_layout`)
  → :class:`EngineMismatchError`
  (a ``UsageError``, exit 2: "cannot load this engine here, rebuild it");
- the engine's provider / library is not installed here → :class:`~rap_deploy.errors.BackendUnavailableError` (exit 2).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rap_deploy import bounds
from rap_deploy.atomic import sha256_file, write_json_atomic
from rap_deploy.bounds import read_manifest_text
from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError
from rap_deploy.name_lists import short_repr
from rap_deploy.safe_paths import absent

FORMAT = "rapdeploy.engine"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
#: The dynamic axes of each graph's TensorRT optimisation profile (:mod:`rap_deploy.engines.trt_plan`).
PROFILE_AXES = {"video_encoder": ("batch",), "text_encoder": ("batch", "tokens"), "asa_head": ("queries", "videos")}
#: Files a graph entry may list besides its own (a build writes at most one: ONNX Runtime's external weights).
MAX_EXTRA_FILES = 8
#: Library versions an engine manifest's ``versions`` may list; a build records at most five (rapdeploy, onnx,
#: onnxruntime, torch, tensorrt), so a longer map was padded and is refused before its keys are read.
MAX_VERSIONS = 16
#: Characters of a recorded name or version (backend, provider, library versions, GPU name and compute
#: capability, the host's machine); real ones are tens of characters. Longer ones are refused before any message
#: or check reads them.
MAX_TEXT_CHARS = 200
#: The longest recorded export folder a rebuild command names (Linux's PATH_MAX); a longer one is no folder here.
MAX_PATH_CHARS = 4096


class EngineMismatchError(UsageError):
    """The engine was built for another runtime (TensorRT / ONNX Runtime version, GPU): rebuild it here (exit 2)."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries an engine depends on that are importable here (no TensorRT import)."""
    from importlib import metadata

    out = {}
    for dist in ("rapdeploy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "onnxruntime-gpu" in out:  # the GPU wheel installs the same module
        out["onnxruntime"] = out.pop("onnxruntime-gpu")
    return out


# numpy's names of the instruction sets host_info records (AVX512_CLX: Cascade Lake's VNNI).
_NUMPY_ISA = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512_CLX": "avx512_vnni", "ASIMD": "asimd"}


def _runtime_cpu_features() -> dict[str, bool]:
    """numpy's run-time CPU feature detection (``{"AVX2": True, ...}``; empty where numpy does not expose it)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def host_info() -> dict[str, str]:
    """The CPU this engine was built on (ONNX Runtime's saved optimised graphs are tuned for it)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not flags:  # no /proc/cpuinfo (Windows, macOS): the CPU's own detection, as numpy made it at import
        flags = {ours for theirs, ours in _NUMPY_ISA.items() if _runtime_cpu_features().get(theirs)}
    isa = sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd"})
    return {"machine": platform.machine(), "cpu": model or platform.processor(), "system": platform.system(),
            "isa": isa}


def graph_entry(engine_dir: Path, file: str, source_onnx: Path | None, source_sha256: str | None) -> dict[str, Any]:
    """The manifest entry of one engine file: ``{file, sha256, bytes, source_onnx, source_onnx_sha256}``."""
    path = engine_dir / file
    return {"file": file, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            "source_onnx": source_onnx.name if source_onnx is not None else None,
            "source_onnx_sha256": source_sha256}


def new_manifest(backend: str, precision: str, device: str, provider: str | None, graphs: dict[str, Any],
                 export_manifest: Mapping[str, Any], export_dir: Path, **extra: Any) -> dict[str, Any]:
    """Assemble a manifest dict (see the module docstring); ``extra`` adds backend-specific keys."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    ckpt = dict(export_manifest.get("checkpoint") or {})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "precision": precision,
        "device": device,
        "provider": provider,
        "versions": library_versions(),
        "host": host_info(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "graphs": graphs,
        "config": export_manifest.get("config"),
        "checkpoint": {"path": ckpt.get("path"), "sha256": ckpt.get("sha256")},
        "export_dir": str(Path(export_dir).resolve()),
        "export": dict(export_manifest),
        **extra,
    }


def write_manifest(engine_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` atomically into ``engine_dir`` (always the last file of a build)."""
    return write_json_atomic(Path(engine_dir) / MANIFEST, dict(manifest))


def read_manifest(engine_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check an engine folder's manifest; raises :class:`UsageError` if it is not an engine folder."""
    d = Path(engine_dir)
    if not d.is_dir():
        what = absent(d) if not d.exists() else "is not a folder"
        raise UsageError(f"engine folder {d} {what}; build one with `rapdeploy build-engine`")
    path = d / MANIFEST
    if not path.is_file() and not path.is_symlink():
        raise UsageError(f"{d} has no {MANIFEST}: not an engine folder (or an interrupted build); rebuild it with "
                         "`rapdeploy build-engine`")
    from rap_deploy.safe_paths import resolve_entry

    resolve_entry(d, MANIFEST, "engine manifest", d)  # a symlinked or special manifest is refused (exit 1)
    try:
        manifest = json.loads(read_manifest_text(path, "engine manifest"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckFailedError(f"{path} is not valid JSON ({exc}); the engine folder is damaged, rebuild it") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        raise UsageError(f"{path} is not an engine manifest (format {short_repr(fmt)}, expected '{FORMAT}')")
    from rap_deploy.engines.integrity import rebuild_engine_advice

    bounds.check_format_version(manifest, path, "engine", FORMAT_VERSION, "the engine folder is damaged",
                                lambda: rebuild_engine_advice(d, manifest))
    for key in ("backend", "precision", "graphs"):
        if key not in manifest:
            raise CheckFailedError(f"{path} lacks '{key}'; the engine folder is damaged, rebuild it")
    _check_structure(path, manifest)
    return manifest


def _check_structure(path: Path, manifest: Mapping[str, Any]) -> None:
    """Types of the keys every reader indexes: CheckFailedError (exit 1) naming the key when the manifest was edited."""
    def damaged(what: str) -> CheckFailedError:
        return CheckFailedError(f"{path}: {what}; the engine folder is damaged or was edited, rebuild it")

    if manifest["precision"] not in PRECISIONS:
        raise damaged(f"precision {short_repr(manifest['precision'])} is not one of {', '.join(PRECISIONS)}")
    if not isinstance(manifest["backend"], str):
        raise damaged(f"backend {short_repr(manifest['backend'])} is not a name")
    _check_graphs(damaged, manifest["graphs"])
    for key in ("config", "checkpoint", "profiles", "session", "asa_blocks", "versions", "export", "host", "gpu"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise damaged(f"'{key}' is not an object")
    problem = checkpoint_record_problem(manifest.get("checkpoint") or {})
    if problem:
        raise damaged(problem)
    versions = manifest.get("versions") or {}
    if len(versions) > MAX_VERSIONS:  # counted before any entry is read: a padded map costs no per-key work
        raise damaged(f"'versions' lists {len(versions):,} libraries; no build records more than {MAX_VERSIONS}")
    if not all(isinstance(v, str) for v in versions.values()):
        raise damaged("'versions' holds a version that is not text")
    if manifest["backend"] == "onnxruntime" and not isinstance(manifest.get("provider"), str):
        raise damaged(f"provider {short_repr(manifest.get('provider'))} is not an ONNX Runtime provider name")
    _check_text_lengths(damaged, manifest)
    numbers = [(f"session {k}", (manifest.get("session") or {}).get(k), bounds.MAX_THREADS)
               for k in ("threads", "inter_threads")]
    numbers += [(f"asa_blocks {k}", (manifest.get("asa_blocks") or {}).get(k), bounds.MAX_BATCH_SIZE)
                for k in ("queries", "videos")]
    numbers += _profile_numbers(damaged, manifest.get("profiles") or {})
    for what, value, high in numbers:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):  # check_int would accept "2" and convert it
            raise damaged(f"{what} {short_repr(value)} is not an integer")
        try:
            bounds.check_int(value, what, 1, high)
        except UsageError as exc:
            raise damaged(str(exc)) from None


def checkpoint_record_problem(record: Mapping[str, Any]) -> str | None:
    """Why a manifest's source checkpoint record (``{"path", "sha256"}``) is damaged, as ``"checkpoint sha256 5 is
    not text"``, or ``None``: each of ``path`` and ``sha256`` must be absent, ``null`` or text, a path of at most
    :data:`MAX_PATH_CHARS` characters (no path is longer) and a sha256 of at most :data:`MAX_TEXT_CHARS` (a real one
    has 64). Their readers take them for text and pass them on whole (verify compares the sha256 and prints the path,
    ``triton-repo`` publishes both for a remote verify to read), so an edited one is refused where the manifest is
    read (:func:`read_manifest`, :func:`rap_deploy.export.read_export_manifest` for export folders, and
    :func:`rap_deploy.engines.engine_refs.resolve_reference` for the manifests verify and bench read)."""
    for key, most in (("path", MAX_PATH_CHARS), ("sha256", MAX_TEXT_CHARS)):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            return f"checkpoint {key} {short_repr(value)} is not text"
        if value is not None and len(value) > most:
            return f"checkpoint {key} {short_repr(value)} is longer than {most:,} characters"
    return None


def _check_graphs(damaged: Callable[[str], CheckFailedError], graphs: Any) -> None:
    """``graphs``: a non-empty object of known graph names, each an entry with a ``file`` and ``sha256`` string and at
    most :data:`MAX_EXTRA_FILES` such ``extra_files``, counted before any is read; raises ``damaged(...)``."""
    if not isinstance(graphs, dict) or not graphs:
        raise damaged("'graphs' is not a non-empty object")
    from rap_deploy.graphs import GRAPH_NAMES

    for name, entry in graphs.items():
        if name not in GRAPH_NAMES:
            raise damaged(f"it lists graph {short_repr(name)}; engines hold only {', '.join(GRAPH_NAMES)}")
        extra = entry.get("extra_files", []) if isinstance(entry, dict) else None
        if not isinstance(extra, list):
            raise damaged(f"graph '{name}' has no entry object or its 'extra_files' is not a list")
        if len(extra) > MAX_EXTRA_FILES:
            raise damaged(f"graph '{name}' lists {len(extra):,} extra files; a build writes at most {MAX_EXTRA_FILES}")
        for e in (entry, *extra):
            if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not isinstance(e.get("sha256"), str):
                raise damaged(f"graph '{name}' has a file entry without a 'file' and 'sha256' string")


def _check_text_lengths(damaged: Callable[[str], CheckFailedError], manifest: Mapping[str, Any]) -> None:
    """The recorded names and versions the runtime refusals print (backend, provider, ``versions``, GPU name and
    compute capability, the host's machine) hold at most :data:`MAX_TEXT_CHARS` characters; raises ``damaged(...)``
    naming the key."""
    gpu, host = manifest.get("gpu") or {}, manifest.get("host") or {}
    texts = [("backend", manifest["backend"]), ("provider", manifest.get("provider")), ("gpu name", gpu.get("name")),
             ("gpu compute_capability", gpu.get("compute_capability")), ("host machine", host.get("machine"))]
    texts += [(f"versions {short_repr(k)}", v) for k, v in (manifest.get("versions") or {}).items()]
    for what, value in texts:
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT_CHARS):
            raise damaged(f"{what} {short_repr(value)} is not text of at most {MAX_TEXT_CHARS} characters")


def _profile_numbers(damaged: Callable[[str], CheckFailedError], profiles: Mapping[str, Any]
                     ) -> list[tuple[str, Any, int]]:
    """The TensorRT ``profiles`` entries (``graph -> axis -> {min, opt, max}``) as numbers to bound-check; raises
    ``damaged(...)`` for an unknown graph or axis, a missing bound or ``min <= opt <= max`` broken (the engine splits
    and pads batches by these, so an edited one must not reach it)."""
    out: list[tuple[str, Any, int]] = []
    for graph, axes in profiles.items():
        known = PROFILE_AXES.get(graph, ())
        if not isinstance(axes, dict) or not set(axes) <= set(known):
            raise damaged(f"profiles {short_repr(graph)} is not an object of a graph's axes "
                          f"({', '.join(known) or 'none'})")
        for axis, r in axes.items():
            values = [r.get(k) for k in ("min", "opt", "max")] if isinstance(r, dict) else []
            out += [(f"profiles {graph} {axis} {k}", v, bounds.MAX_BATCH_SIZE)
                    for k, v in zip(("min", "opt", "max"), values, strict=False)]
            if len(values) != 3 or None in values or not all(isinstance(v, int) for v in values) \
                    or not values[0] <= values[1] <= values[2]:
                raise damaged(f"profiles {graph} {axis} {short_repr(r, 80)} is not min <= opt <= max")
    return out


def verify_files(engine_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Check every listed engine file exists and has its recorded size (before hashing) and sha256.

    Raises :class:`CheckFailedError` naming the file: missing (deleted or an interrupted copy) or changed (tampered,
    truncated, replaced).
    """
    from rap_deploy.export.integrity import check_recorded_size
    from rap_deploy.safe_paths import resolve_entry

    d = Path(engine_dir)
    files = [(name, e) for name, entry in manifest["graphs"].items() for e in (entry, *entry.get("extra_files", []))]
    for name, entry in files:  # every name is checked before any file is opened
        resolve_entry(d, entry["file"], f"engine graph '{name}'", d / MANIFEST)
    for name, entry in files:
        path = resolve_entry(d, entry["file"], f"engine graph '{name}'", d / MANIFEST)
        if not path.is_file():
            raise CheckFailedError(f"engine file {path} ({name}) listed in {d / MANIFEST} is missing; rebuild the "
                                   "engine with `rapdeploy build-engine`")
        check_recorded_size(path, entry.get("bytes"), d / MANIFEST, "rapdeploy build-engine")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise CheckFailedError(f"engine file {path} ({name}) has sha256 {digest[:16]}…, the manifest records "
                                   f"{entry['sha256'][:16]}…: it was modified after the build; rebuild the engine")


def _major_minor(version: str | None) -> tuple[str, ...]:
    return tuple(str(version or "").split(".")[:2])


def cpu_layout(host: Mapping[str, Any]) -> tuple[str, bool]:
    """What decides the blocked layout ONNX Runtime saves in a CPU graph: the machine and AVX-512 (its NCHWc
    convolutions reorder their filters into blocks of 16 floats with AVX-512F, 8 without; no blocks off x86)."""
    isa = host.get("isa")
    return str(host.get("machine", "")), isinstance(isa, list) and "avx512f" in isa


def _check_cpu_layout(built: Any, here: Any, rebuild: str = "`rapdeploy build-engine --backend onnxruntime`",
                      where: str = "") -> None:
    """Refuse an engine whose saved graphs were laid out for another CPU (:func:`cpu_layout`): the patch-embedding
    Conv becomes a ``com.microsoft.nchwc`` Conv with the building CPU's filter blocks, which another block size reads
    as other weights; the refusal names ``rebuild`` (the command in backticks, and what follows it). Engines without
    a recorded host, or a runtime without one, are not judged."""
    if not isinstance(built, Mapping) or not isinstance(here, Mapping):
        return
    (b_machine, b_avx512), (h_machine, h_avx512) = cpu_layout(built), cpu_layout(here)
    if (b_machine, b_avx512) == (h_machine, h_avx512):
        return

    def name(machine: str, avx512: bool) -> str:
        return f"a {machine or 'unknown'} CPU {'with' if avx512 else 'without'} AVX-512"

    raise EngineMismatchError(f"{where}engine was built on {name(b_machine, b_avx512)}, this machine has "
                              f"{name(h_machine, h_avx512)}: ONNX Runtime saved its CPU graphs with kernels laid out "
                              "for the CPU that built them (NCHWc filter blocks), which this CPU would read as other "
                              f"weights; rebuild it here with {rebuild}")


def check_runtime(manifest: Mapping[str, Any], runtime: Mapping[str, Any], nchwc_ops: int = 0,
                  folder: Path | None = None) -> None:
    """Refuse an engine (in ``folder``, which the messages name) that cannot run with this machine's libraries and
    GPU.

    ``runtime`` describes this machine (``onnxruntime`` version, ``providers`` and ``host`` for ONNX Runtime engines;
    ``tensorrt`` version and ``gpu`` for TensorRT engines; a missing key means the library is not installed).
    ``nchwc_ops`` counts the graphs' nodes in ONNX Runtime's CPU blocked layout
    (:func:`rap_deploy.engines.integrity.check_precision_claim`): a CUDA engine holding any (nodes ONNX Runtime placed
    on the CPU) is judged by the CPU layout as a CPU engine is, and one without a recorded ``host`` is refused
    (:class:`CheckFailedError`).
    Raises :class:`BackendUnavailableError` when the library or provider is missing, :class:`EngineMismatchError`
    when the engine was built for another version or GPU, or (ONNX Runtime CPU, or NCHWc nodes) for another CPU layout.
    """
    # here, not at the top: rebuild_commands imports this module
    from rap_deploy.engines.rebuild_commands import (
        cpu_engine_instead,
        ort_rebuild_command,
        trt_rebuild_command,
        where_the_export_is,
    )

    backend = manifest["backend"]
    built = manifest.get("versions") or {}
    where = f"{folder}: " if folder is not None else ""
    if backend == "onnxruntime":
        rebuild = f"`{ort_rebuild_command(manifest, folder)}`{where_the_export_is(manifest)}"
        have = runtime.get("onnxruntime")
        if not have:
            raise BackendUnavailableError("this engine needs ONNX Runtime, which is not installed; pip install "
                                          "onnxruntime (or onnxruntime-gpu for CUDA engines)")
        if _major_minor(have) != _major_minor(built.get("onnxruntime")):
            raise EngineMismatchError(f"{where}engine was built with ONNX Runtime {built.get('onnxruntime')}, this "
                                      "machine "
                                      f"has {have}; its saved optimised graphs need the same release: rebuild it "
                                      f"with {rebuild}")
        provider = manifest.get("provider")
        if nchwc_ops and not isinstance(manifest.get("host"), Mapping):
            raise CheckFailedError(f"the engine's graphs hold {nchwc_ops} NCHWc nodes, laid out for the CPU that "
                                   "built them, but its manifest records no 'host' (that CPU); the manifest was "
                                   f"edited, rebuild the engine with {rebuild}")
        if provider == "CPUExecutionProvider" or nchwc_ops:
            _check_cpu_layout(manifest.get("host"), runtime.get("host"), rebuild, where)
        if provider and provider not in (runtime.get("providers") or []):
            raise BackendUnavailableError(f"engine runs on {provider}, which this ONNX Runtime does not provide "
                                          f"(available: {', '.join(runtime.get('providers') or []) or 'none'}); "
                                          + (f"install onnxruntime-gpu and a CUDA GPU, or build a CPU engine: "
                                             f"{cpu_engine_instead(manifest)}"
                                             if "CUDA" in provider else "use an engine built for this machine"))
    elif backend == "tensorrt":
        from rap_deploy.engines.trt_plan import engine_mismatches

        if not runtime.get("tensorrt"):
            raise BackendUnavailableError(f"{where}engine was built with TensorRT {built.get('tensorrt')}, which is "
                                          "not installed here (import tensorrt failed); install it, or build an "
                                          f"ONNX Runtime engine: {cpu_engine_instead(manifest)}")
        if not runtime.get("gpu"):  # TensorRT installs without a GPU; a rebuild here would fail the same way
            raise BackendUnavailableError(f"{where}TensorRT engines run on an NVIDIA GPU and no CUDA GPU is visible "
                                          "here (this engine was built for "
                                          f"{(manifest.get('gpu') or {}).get('name') or 'one'}); build an ONNX "
                                          f"Runtime engine: {cpu_engine_instead(manifest)}")
        problems = engine_mismatches(manifest, runtime)
        if problems:
            raise EngineMismatchError(f"{where}cannot load this TensorRT engine here: " + "; ".join(problems)
                                      + f"; rebuild it on this machine: `{trt_rebuild_command(manifest, folder)}`"
                                      + where_the_export_is(manifest))
    else:
        raise UsageError(f"engine backend '{backend}' is unknown; this rapdeploy knows {', '.join(BACKENDS)}")


def validate_engine_dir(engine_dir: str | os.PathLike[str], runtime: Mapping[str, Any] | None = None,
                        check_hashes: bool = True, check_export: bool = True) -> dict[str, Any]:
    """Read the manifest, check every file's hash, and (with ``runtime``) check it can run here; returns it.

    With ``check_hashes`` the precision claim and (with ``check_export``) the export record are also checked against
    the graphs and the config (:mod:`rap_deploy.engines.integrity`: ``check_precision_claim``,
    ``check_export_record``; a loader that compares the config with the engine files first checks the record after).
    Raises as listed in the module docstring.
    """
    manifest = read_manifest(engine_dir)
    nchwc_ops = 0
    if check_hashes:
        verify_files(engine_dir, manifest)
        from rap_deploy.engines.integrity import (
            check_export_record,
            check_graph_contract,
            check_graph_set,
            check_precision_claim,
        )

        check_graph_set(Path(engine_dir), manifest, Path(engine_dir) / MANIFEST)
        nchwc_ops = check_precision_claim(Path(engine_dir), manifest, Path(engine_dir) / MANIFEST)
        if check_export:  # after the graphs: they name what was edited
            check_export_record(manifest, Path(engine_dir) / MANIFEST)
        check_graph_contract(Path(engine_dir), manifest, Path(engine_dir) / MANIFEST)
    if runtime is not None:
        check_runtime(manifest, runtime, nchwc_ops, Path(engine_dir))
    return manifest

"""``load_engine(path)``: the right backend for an engine folder, an export folder or a checkpoint."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rap_deploy.bounds import read_manifest_text
from rap_deploy.engines.base import Engine
from rap_deploy.errors import CheckFailedError, RapDeployError, UsageError
from rap_deploy.file_kinds import CHECKPOINT_SUFFIXES
from rap_deploy.safe_paths import absent

REMOTE_SCHEMES = ("http://", "https://")


def is_remote(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is a server URL (``http://HOST:PORT``) rather than a file or folder."""
    return isinstance(path, str) and path.lower().startswith(REMOTE_SCHEMES)


def runtime_for(backend: str, device_id: int = 0) -> dict[str, Any]:
    """Describe this machine for ``backend`` (ONNX Runtime version and providers, or TensorRT version and GPU)."""
    if backend == "tensorrt":
        from rap_deploy.engines.tensorrt_backend import runtime_info

        return runtime_info(device_id)
    from rap_deploy.engines.ort_backend import runtime_info as ort_runtime

    return ort_runtime()


def run_folder_advice(path: Path) -> str | None:
    """For a training run folder given as an engine (it holds ``best.pt`` or ``last.pt`` and no manifest), what to
    pass instead: its checkpoint, or an engine built from it; ``None`` for any other path."""
    import shlex

    from rap_deploy.workspace import RUN_BEST, RUN_LAST

    if not path.is_dir() or (path / "manifest.json").exists():
        return None
    name = next((n for n in (RUN_BEST, RUN_LAST) if (path / n).is_file()), None)
    if name is None:
        return None
    checkpoint = shlex.quote(str(path / name))
    return (f"{path} is a training run folder (it holds {name}), not an engine folder; pass its checkpoint for the "
            f"PyTorch engine, --engine {checkpoint}, or build an engine from it: `rapdeploy export {checkpoint}`, "
            "then `rapdeploy build-engine`")


def load_engine(path: str | os.PathLike[str], device: str | None = None, precision: str | None = None,
                threads: int | None = None, inter_threads: int | None = None, device_id: int = 0,
                query_block: int | None = None, video_block: int | None = None, lazy: bool = False) -> Engine:
    """Open ``path`` as an :class:`~rap_deploy.engines.base.Engine`.

    - an engine folder (``manifest.json`` of format ``rapdeploy.engine``): its manifest is validated (every file's
      sha256, the TensorRT / ONNX Runtime version and the GPU it was built for) and the matching backend returned;
    - an export folder (format ``rapdeploy.export``): ONNX Runtime over the exported fp32 graphs (``device`` cpu or
      cuda), unoptimised on disk;
    - a checkpoint (``.pt`` / ``.safetensors``): the PyTorch reference (``device``, ``precision`` fp32/fp16);
    - a server URL (``http://HOST:PORT``, a ``str``): the graphs over the Open Inference Protocol, as served by
      ``rapdeploy serve`` or Triton (:class:`~rap_deploy.engines.serving.remote.RemoteEngine`).

    ``threads``/``inter_threads`` override ONNX Runtime's thread counts; ``query_block``/``video_block`` the ASA
    block sizes (ONNX Runtime / PyTorch; a TensorRT engine uses its profile); ``lazy`` opens ONNX Runtime sessions on
    their graph's first call (a search process then never loads the video encoder). A folder's engine keeps the
    manifest its files were opened from as ``source_manifest``. Raises :class:`UsageError` for a path that is none
    of these, and the manifest module's errors for a refused engine.
    """
    if is_remote(path):
        from rap_deploy.engines.serving.remote import RemoteEngine

        return RemoteEngine(str(path))
    p = Path(path)
    if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES:
        from rap_deploy.engines.torch_backend import TorchEngine

        kw = {k: v for k, v in (("query_block", query_block), ("video_block", video_block)) if v is not None}
        return TorchEngine(p, device=device or "cpu", precision=precision or "fp32", **kw)
    if not p.exists():
        raise UsageError(f"{p} {absent(p)}; pass an engine folder (rapdeploy build-engine), an export folder "
                         "(rapdeploy export) or a checkpoint")
    if not p.is_dir() or not ((p / "manifest.json").is_file() or (p / "manifest.json").is_symlink()):
        raise UsageError(run_folder_advice(p) or f"{p} is not an engine folder, an export folder or a checkpoint "
                         f"({', '.join(CHECKPOINT_SUFFIXES)}); no manifest.json there")
    blocks = {k: v for k, v in (("query_block", query_block), ("video_block", video_block)) if v is not None}
    load = functools.partial(_load_folder, p, device, threads, inter_threads, device_id, blocks, lazy)
    return load_unswapped(p, load)


SWAP_RETRIES = 3  # loads of a folder that a concurrent writer replaced in the middle, before giving up


def load_unswapped(folder: Path, load: Callable[[], Engine]) -> Engine:
    """``load()`` of ``folder``, done again when ``folder`` was replaced while it ran (``rapdeploy build-engine
    --force`` or ``export --force`` swapping in a new folder): a load that straddles a swap has read one folder's
    manifest and the other's graphs, or failed on that mix. Raises :class:`CheckFailedError` after
    :data:`SWAP_RETRIES` swaps in a row; ``load()``'s own error when the folder stayed the same."""
    from rap_deploy.folder_swap import folder_identity as _identity
    from rap_deploy.folder_swap import folder_replaced

    for _ in range(SWAP_RETRIES):
        before = _identity(folder)
        try:
            engine = load()
        except (RapDeployError, OSError):  # a mix fails as a changed or missing file
            if _identity(folder) == before:
                raise
            continue
        if _identity(folder) == before:
            return engine
        engine.close()
    raise folder_replaced(folder, f"while it was being loaded, {SWAP_RETRIES} times",
                          "load it again when that command has finished")


def _load_folder(p: Path, device: str | None, threads: int | None, inter_threads: int | None, device_id: int,
                 blocks: dict[str, int], lazy: bool) -> Engine:
    """:func:`load_engine` of an engine or export folder (one attempt, see :func:`load_unswapped`)."""
    from rap_deploy.safe_paths import resolve_entry

    try:
        fmt = json.loads(read_manifest_text(resolve_entry(p, "manifest.json", "manifest", p))).get("format")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        fmt = None
    if fmt == "rapdeploy.export":
        return _export_engine(p, device or "cpu", threads, inter_threads, device_id, blocks, lazy)
    from rap_deploy.engines.manifest import read_manifest, validate_engine_dir

    backend = read_manifest(p)["backend"]
    # a TensorRT engine compares the config with its plans as it opens (the precise refusal), the export record after
    trt = backend == "tensorrt"
    manifest = validate_engine_dir(p, runtime=runtime_for(backend, device_id), check_export=not trt)
    config = manifest_config(manifest, p / "manifest.json")
    files = {name: resolve_entry(p, entry["file"], f"engine graph '{name}'", p / "manifest.json")
             for name, entry in manifest["graphs"].items()}
    with runtime_errors(p):
        engine = _open_backend(p, backend, manifest, config, files, threads, inter_threads, blocks, device_id, lazy)
    if trt:
        from rap_deploy.engines.integrity import check_export_record

        try:
            check_export_record(manifest, p / "manifest.json")
        except BaseException:
            engine.close()  # the refused engine's contexts and device memory go now, on its device
            raise
    engine.source_manifest = manifest
    return engine


def manifest_config(manifest: dict[str, Any], source: Path) -> Any:
    """The :class:`~rap_deploy.config.RAPConfig` of a manifest; :class:`CheckFailedError` (exit 1) if it is invalid."""
    from rap_deploy.config import RAPConfig

    cfg = manifest.get("config")
    try:
        if not isinstance(cfg, dict):
            raise UsageError(f"'config' is {type(cfg).__name__}, not an object")
        return RAPConfig.from_dict(cfg)
    except (UsageError, TypeError, ValueError) as exc:
        raise CheckFailedError(f"{source} has an invalid model config ({exc}); the folder is damaged or was edited, "
                               "rebuild it") from None


@contextlib.contextmanager
def runtime_errors(folder: Path) -> Iterator[None]:
    """Turn an inference runtime's refusal to load a graph (ONNX Runtime ``InvalidProtobuf``, ``Fail``, ...) into
    one :class:`CheckFailedError` naming ``folder`` (exit 1): the graphs passed their hash check, so they are
    damaged or were replaced together with the manifest."""
    try:
        yield
    except RapDeployError:
        raise
    except Exception as exc:
        if not type(exc).__module__.startswith(("onnxruntime", "tensorrt")):
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CheckFailedError(f"the runtime cannot load the graphs of {folder} ({type(exc).__name__}: "
                               f"{first[:200]}); the folder is damaged or was replaced, rebuild it") from None


def checkpoint_record(manifest: dict[str, Any], graphs: Iterable[Path] = ()) -> dict[str, Any]:
    """``{"checkpoint": path, "checkpoint_sha256": sha256}``: the source checkpoint of the engine or export manifest
    an engine was loaded from (``None`` for a path it does not record), for its ``describe()``; a library compares
    the sha256 with its own, ``rapdeploy serve`` publishes both, and they stay those of the loaded folder when a
    later ``build-engine --force`` / ``export --force`` replaces the folder.

    A manifest written before it recorded one (or recording no sha256) falls back to the
    ``rapdeploy.checkpoint_sha256`` metadata that every one of the ONNX files ``graphs`` carries (what the export
    recorded; :func:`rap_deploy.export.metadata_scan.graphs_checkpoint_sha256`, which reads no weights); ``None``
    when the graphs do not all carry one valid sha256, and for no ``graphs`` (TensorRT plans carry none)."""
    from rap_deploy.atomic import is_sha256

    record = manifest.get("checkpoint") if isinstance(manifest.get("checkpoint"), dict) else {}
    path = record.get("path") if isinstance(record.get("path"), str) and record.get("path") else None
    sha = record.get("sha256")
    if is_sha256(sha):
        return {"checkpoint": path, "checkpoint_sha256": sha}
    from rap_deploy.export.metadata_scan import graphs_checkpoint_sha256

    graphs = list(graphs)
    return {"checkpoint": path, "checkpoint_sha256": graphs_checkpoint_sha256(graphs) if graphs else None}


def _open_backend(p: Path, backend: str, manifest: dict[str, Any], config: Any, files: dict[str, Path],
                  threads: int | None, inter_threads: int | None, blocks: dict[str, int], device_id: int,
                  lazy: bool = False) -> Engine:
    if backend == "tensorrt":
        from rap_deploy.engines.tensorrt_backend import TrtEngine

        return TrtEngine(files, config, manifest.get("profiles") or {}, precision=manifest["precision"], path=p,
                         device_id=device_id, extra=checkpoint_record(manifest))
    from rap_deploy.engines.ort_backend import OrtEngine

    session = manifest.get("session") or {}
    asa = manifest.get("asa_blocks") or {}
    return OrtEngine(files, config, provider=manifest["provider"], precision=manifest["precision"],
                     threads=threads if threads is not None else recorded_threads(session.get("threads")),
                     inter_threads=inter_threads if inter_threads is not None
                     else recorded_threads(session.get("inter_threads")),
                     query_block=blocks.get("query_block", asa.get("queries", 32)),
                     video_block=blocks.get("video_block", asa.get("videos", 64)), path=p, device_id=device_id,
                     extra=checkpoint_record(manifest, files.values()), lazy=lazy,
                     checked_graphs=True)  # validate_engine_dir parsed them


def recorded_threads(value: int | None) -> int | None:
    """A thread count an engine manifest recorded (``build-engine --threads``), at most this process's usable cores:
    a count chosen on a larger machine (or edited in) oversubscribes this one, and ONNX Runtime spends seconds per
    session starting hundreds of threads. ``None`` stays ``None`` (the library's default); a ``--threads`` given to
    the command is used as given."""
    from rap_deploy.engines.machine_load import usable_cpus

    return None if value is None else min(int(value), len(usable_cpus()))


def _export_engine(export_dir: Path, device: str, threads: int | None, inter_threads: int | None, device_id: int,
                   blocks: dict[str, int], lazy: bool = False) -> Engine:
    from rap_deploy.engines.ort_backend import OrtEngine, provider_for
    from rap_deploy.export import read_export_manifest
    from rap_deploy.export.manifest import graph_label
    from rap_deploy.safe_paths import resolve_entry

    manifest = read_export_manifest(export_dir)
    files = {name: resolve_entry(export_dir, entry["file"], graph_label("graphs", name), export_dir / "manifest.json")
             for name, entry in manifest["graphs"].items()}
    config = manifest_config(manifest, export_dir / "manifest.json")
    with runtime_errors(export_dir):
        engine = OrtEngine(files, config, provider=provider_for(device), precision="fp32", threads=threads,
                           inter_threads=inter_threads, path=export_dir, device_id=device_id,
                           extra={"source": "export", **checkpoint_record(manifest, files.values())}, lazy=lazy,
                           checked_graphs=True, **blocks)  # read_export_manifest checked the graphs
    engine.source_manifest = manifest
    return engine

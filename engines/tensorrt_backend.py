"""TensorRT backend (TensorRT 10 and 11): engine build from the exported ONNX graphs, and the runtime.

Build, per graph: parse the ONNX file, one optimisation profile over the graph's batch axis (``asa_head``: the query
and the video axis), a timing cache on disk, then

- fp32: TF32 off, so the engine computes what the export computes;
- fp16 on TensorRT 10 (weakly typed): ``BuilderFlag.FP16`` plus ``OBEY_PRECISION_CONSTRAINTS``, with ``precision`` and
  output types set to FP32 on the layers the precision plan keeps in FP32 (LayerNorm, Softmax, reductions, the
  normalisation tails, the ASA selection and sampling arithmetic; decided by layer type and by the ONNX node each
  layer came from, see :mod:`rap_deploy.engines.trt_plan`);
- fp16 on TensorRT 11 (strongly typed, the precision flags are gone): the network is built from the export's fp16
  graph, in which exactly those nodes compute in fp32 (checked before the build).

After the build the engine is inspected (``IEngineInspector``, ``ProfilingVerbosity.DETAILED``) and an ``--fp16``
engine without FP16 layers is an error. The runtime keeps one execution context per graph, binds torch CUDA tensors
with ``set_tensor_address`` and runs ``execute_async_v3`` on a CUDA stream; batches larger than the profile's maximum
are split, so any batch size works.

``tensorrt`` is imported lazily: nothing here is needed to import the package.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.atomic import write_bytes_atomic
from rap_deploy.config import RAPConfig
from rap_deploy.engines.base import Engine, EngineInfo
from rap_deploy.engines.blocks import (
    batched,
    blocked_similarity,
    check_text_inputs,
    check_video_inputs,
    meanp_similarity_from_frames,
    rerank_inputs,
)
from rap_deploy.engines.trt_plan import (
    NodeMatcher,
    PrecisionPlan,
    build_mode,
    check_fp16_engine,
    layer_keeps_fp32,
    layer_precisions,
)
from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError
from rap_deploy.graphs import graph_io

INSTEAD = "run `rapdeploy build-engine EXPORT_DIR --backend onnxruntime` (CPU fp32) or add `--int8` instead"


def import_tensorrt() -> Any:
    """Import and return the ``tensorrt`` module; raises :class:`BackendUnavailableError` (one line) if missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed ({exc}); it needs an NVIDIA GPU machine "
                                      f"(pip install -e '.[trt]'); {INSTEAD}") from None
    build_mode(trt.__version__)  # refuses TensorRT < 10
    return trt


def gpu_info(device_id: int = 0) -> dict[str, Any] | None:
    """Name and compute capability of CUDA GPU ``device_id`` as torch sees it, or ``None`` without a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or device_id >= torch.cuda.device_count():
        return None
    major, minor = torch.cuda.get_device_capability(device_id)
    return {"name": torch.cuda.get_device_name(device_id), "compute_capability": f"{major}.{minor}",
            "device_id": device_id}


def runtime_info(device_id: int = 0) -> dict[str, Any]:
    """This machine for TensorRT engines: ``{"tensorrt": version or None, "gpu": gpu_info() or None}``."""
    try:
        import tensorrt as trt

        version: str | None = trt.__version__
    except ImportError:
        version = None
    return {"tensorrt": version, "gpu": gpu_info(device_id)}


def require_tensorrt(device_id: int = 0) -> tuple[Any, dict[str, Any]]:
    """Return ``(tensorrt module, gpu info)``; raise :class:`BackendUnavailableError` naming what is missing."""
    trt = import_tensorrt()
    gpu = gpu_info(device_id)
    if gpu is None:
        import torch

        raise BackendUnavailableError(f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible "
                                      f"(torch {torch.__version__}: cuda available = {torch.cuda.is_available()}); "
                                      f"{INSTEAD}")
    return trt, gpu


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


_NP_BY_NAME = {"FLOAT": np.float32, "HALF": np.float16, "BF16": np.float32, "INT32": np.int32, "INT64": np.int64,
               "INT8": np.int8, "BOOL": np.bool_, "UINT8": np.uint8}


def np_dtype(trt: Any, dtype: Any) -> Any:
    """The numpy dtype of a TensorRT ``DataType`` (``trt.nptype`` where it exists)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except (AttributeError, TypeError, KeyError):
        return np.dtype(_NP_BY_NAME[str(getattr(dtype, "name", dtype)).split(".")[-1].upper()])


def _float_types(trt: Any) -> tuple[Any, ...]:
    return tuple(t for t in (getattr(trt, "float32", None), getattr(trt, "float16", None),
                             getattr(trt, "bfloat16", None)) if t is not None)


def apply_precision_plan(trt: Any, network: Any, plan: PrecisionPlan) -> dict[str, str]:
    """TensorRT 10: pin the plan's layers to FP32 (``layer.precision`` and ``set_output_type``).

    Only layers with a floating-point output are constrained (shape and index layers have no precision to choose).
    Returns ``{layer name: reason}`` of the pinned layers.
    """
    matcher = NodeMatcher(plan.node_names)
    floats = _float_types(trt)
    pinned: dict[str, str] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        reason = layer_keeps_fp32(layer.type.name, layer.name, getattr(layer, "metadata", "") or "", plan, matcher)
        if reason is None:
            continue
        outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outs:
            continue
        layer.precision = trt.float32
        for j in outs:
            layer.set_output_type(j, trt.float32)
        pinned[layer.name] = reason
    return pinned


def _parser_error(err: Any) -> str:
    """One ONNX parser error as ``node: description`` (``IParserError``)."""
    try:
        node = err.node_name() or err.node_operator()
        return f"{node}: {err.desc()}" if node else str(err.desc())
    except AttributeError:
        return str(err)


def _set_flag(trt: Any, config: Any, name: str, on: bool = True) -> bool:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        return False
    (config.set_flag if on else config.clear_flag)(flag)
    return True


def build_graph(onnx_path: Path, engine_path: Path, shapes: Mapping[str, Mapping[str, list[int]]], fp16: bool,
                plan: PrecisionPlan | None, timing_cache: Path, workspace_gb: float = 4.0,
                graph: str = "") -> dict[str, Any]:
    """Build one serialized engine from ``onnx_path`` into ``engine_path`` and return its build report.

    ``shapes`` is the optimisation profile (input name → min/opt/max shapes), ``plan`` the FP32 plan (TensorRT 10
    fp16 only). On TensorRT 11, an fp16 build expects ``onnx_path`` to be the fp16 graph. The timing cache at
    ``timing_cache`` is read if present and written back. Raises :class:`CheckFailedError` when parsing or building
    fails or an fp16 engine has no FP16 layers, :class:`BackendUnavailableError` without TensorRT / a GPU.
    """
    trt, _ = require_tensorrt()
    mode = build_mode(trt.__version__)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if mode == "strongly-typed" and strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailedError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors[:600]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise UsageError(f"{onnx_path.name}: input '{name}' has no optimisation profile")
        s = shapes[name]
        profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    config.add_optimization_profile(profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")  # a cache from another device / version: start afresh
        config.set_timing_cache(cache, ignore_mismatch=False)

    pinned: dict[str, str] = {}
    if mode == "weakly-typed":
        if fp16:
            _set_flag(trt, config, "FP16")
            _set_flag(trt, config, "OBEY_PRECISION_CONSTRAINTS")
            pinned = apply_precision_plan(trt, network, plan or PrecisionPlan(graph))
        else:
            _set_flag(trt, config, "TF32", on=False)
    elif not fp16:
        _set_flag(trt, config, "TF32", on=False)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailedError(f"TensorRT {trt.__version__} failed to build {onnx_path.name} (see the log above); "
                               "try a smaller --max-batch or a larger workspace")
    seconds = time.perf_counter() - t0
    data = bytes(serialized)
    write_bytes_atomic(engine_path, data)
    write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))

    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise CheckFailedError(f"the engine just built for {onnx_path.name} does not deserialize")
    inspector = engine.create_engine_inspector()
    summary = layer_precisions(json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))
    if fp16:
        check_fp16_engine(graph or onnx_path.stem, summary)
    return {"mode": mode, "seconds": round(seconds, 2), "pinned_fp32_layers": len(pinned),
            "pinned": dict(sorted(pinned.items())),
            "layers": {k: summary[k] for k in ("fp16_layers", "fp32_layers", "fp16_compute_layers")},
            "num_layers": engine.num_layers}


def timing_cache_path(folder: Path, trt_version: str, gpu: Mapping[str, Any]) -> Path:
    """The on-disk timing cache for this TensorRT version and GPU (compute capability) under ``folder``."""
    cc = str(gpu.get("compute_capability", "unknown")).replace(".", "")
    return Path(folder) / f"tensorrt-{trt_version}-sm{cc}.timing-cache"


class TrtEngine(Engine):
    """The engines of one engine folder, each with its own execution context, on one CUDA device.

    ``files`` maps graph name to a serialized engine; ``profiles`` (from the manifest) gives each graph's maximal
    batch: bigger video / text batches are split, and ``asa_similarity`` feeds the ``asa_head`` engine blocks of at
    most (max Q) × (max V) — the ASA graph's intermediates grow as Q·V·T·k·d_a, so it only ever sees bounded blocks.
    """

    backend = "tensorrt"

    def __init__(self, files: Mapping[str, str | os.PathLike[str]], config: RAPConfig,
                 profiles: Mapping[str, Mapping[str, Mapping[str, int]]], precision: str = "fp16",
                 path: str | os.PathLike[str] | None = None, device_id: int = 0) -> None:
        import torch

        trt, gpu = require_tensorrt(device_id)
        self.trt, self.gpu, self.config, self.precision = trt, gpu, config, precision
        self.path = str(path) if path is not None else None
        self.device = torch.device(f"cuda:{device_id}")
        self.runtime = trt.Runtime(_logger(trt))
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        for name, f in files.items():
            engine = self.runtime.deserialize_cuda_engine(Path(f).read_bytes())
            if engine is None:
                raise CheckFailedError(f"TensorRT {trt.__version__} cannot deserialize {f}; rebuild the engine here")
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        ranges = {g: {axis: dict(r) for axis, r in axes.items()} for g, axes in profiles.items()}
        self.max_batch = {"video_encoder": ranges.get("video_encoder", {}).get("batch", {}).get("max"),
                          "text_encoder": ranges.get("text_encoder", {}).get("batch", {}).get("max"),
                          "asa_head": None}
        asa = ranges.get("asa_head", {})
        self.query_block = int(asa.get("queries", {}).get("max", 32))
        self.video_block = int(asa.get("videos", {}).get("max", 64))

    def _torch_dtype(self, trt_dtype: Any) -> Any:
        import torch

        return torch.from_numpy(np.empty(0, dtype=np_dtype(self.trt, trt_dtype))).dtype

    def _run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        trt, engine, ctx = self.trt, self.engines[graph], self.contexts[graph]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        keep = []
        with torch.cuda.stream(self.stream):
            for name in inputs:
                arr = np.ascontiguousarray(feeds[name], dtype=np_dtype(trt, engine.get_tensor_dtype(name)))
                t = torch.from_numpy(arr).to(self.device, non_blocking=False)
                if not ctx.set_input_shape(name, tuple(arr.shape)):
                    raise UsageError(f"{graph}: input {name} shape {list(arr.shape)} is outside the engine's "
                                     "optimisation profile; rebuild with a larger --max-batch")
                ctx.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            outs = []
            for name in outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                out = torch.empty(shape, dtype=self._torch_dtype(engine.get_tensor_dtype(name)), device=self.device)
                ctx.set_tensor_address(name, out.data_ptr())
                outs.append(out)
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise CheckFailedError(f"TensorRT execute_async_v3 failed for {graph} (see the log above)")
        self.stream.synchronize()
        return [o.float().cpu().numpy() for o in outs]

    def _runner(self, graph: str, names: tuple[str, ...]) -> Callable[..., tuple[np.ndarray, ...]]:
        def run(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
            return tuple(self._run(graph, dict(zip(names, arrays, strict=True))))
        return run

    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """See :meth:`Engine.encode_video` (batches above the profile maximum are split)."""
        frames, mask = check_video_inputs(frames, frame_mask, self.config)
        return batched(self._runner("video_encoder", graph_io("video_encoder", self.has_asa)[0]), (frames, mask),
                       self.max_batch["video_encoder"])

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        """See :meth:`Engine.encode_text`."""
        ids, pos = check_text_inputs(input_ids, eot, self.config)
        return batched(self._runner("text_encoder", graph_io("text_encoder", self.has_asa)[0]), (ids, pos),
                       self.max_batch["text_encoder"])[0]

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        """Similarity ``[Q, V]`` in blocks of at most the ``asa_head`` profile's (max Q) × (max V)."""
        rerank = rerank_inputs(self.has_asa and "asa_head" in self.engines, rerank)
        if "asa_head" not in self.engines:
            return meanp_similarity_from_frames(text_emb, rerank[0])
        run = self._runner("asa_head", graph_io("asa_head", True)[0])
        return blocked_similarity(lambda *arrays: run(*arrays)[0], text_emb, rerank, self.query_block,
                                  self.video_block)

    def describe(self) -> EngineInfo:
        """Backend ``tensorrt``, precision, GPU and TensorRT version."""
        return EngineInfo(backend=self.backend, precision=self.precision, device=str(self.device),
                          provider="TensorRT", versions={"tensorrt": self.trt.__version__}, path=self.path,
                          extra={"gpu": self.gpu, "query_block": self.query_block, "video_block": self.video_block,
                                 "max_batch": self.max_batch})

    def close(self) -> None:
        """Release contexts and engines (device memory)."""
        self.contexts.clear()
        self.engines.clear()


def build_trt_graphs(export_dir: Path, export_manifest: Mapping[str, Any], out_dir: Path, precision: str,
                     ranges: Mapping[str, Mapping[str, Any]], timing_cache_dir: Path, workspace_gb: float = 4.0,
                     device_id: int = 0, advance: Callable[[str], None] | None = None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build one TensorRT engine per exported graph into ``out_dir``; returns (manifest graphs, extra keys).

    ``ranges`` is :func:`~rap_deploy.engines.trt_plan.profile_ranges`'s output. fp16 on TensorRT 11 builds from the
    export's fp16 graphs after checking that the precision plan's nodes compute in fp32 there. Raises
    :class:`UsageError` (int8, export without fp16 graphs on TensorRT 11), :class:`CheckFailedError` (parse / build /
    precision failures), :class:`BackendUnavailableError` (no TensorRT / GPU).
    """
    import onnx

    from rap_deploy.engines.manifest import graph_entry
    from rap_deploy.engines.trt_plan import fp16_graph_violations, plan_for_file, profile_shapes

    if precision not in ("fp32", "fp16"):
        raise UsageError(f"TensorRT engines are fp16 or fp32 here, not {precision} (int8 needs calibration or Q/DQ "
                         "graphs); use `--backend onnxruntime --int8` for an int8 CPU engine")
    trt, gpu = require_tensorrt(device_id)
    mode = build_mode(trt.__version__)
    cache = timing_cache_path(timing_cache_dir, trt.__version__, gpu)
    cache.parent.mkdir(parents=True, exist_ok=True)
    fp16_graphs = export_manifest.get("fp16_graphs") or {}
    graphs: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    for name, entry in export_manifest["graphs"].items():
        src, src_sha = export_dir / entry["file"], entry.get("sha256")
        plan = plan_for_file(src, name) if precision == "fp16" else None
        report: dict[str, Any] = {}
        if precision == "fp16" and mode == "strongly-typed":
            f16 = fp16_graphs.get(name)
            if not f16:
                raise UsageError(f"TensorRT {trt.__version__} builds every network strongly typed, so an fp16 engine "
                                 f"needs the export's fp16 graph for {name}; re-export with `rapdeploy export CKPT "
                                 "--fp16`")
            src = export_dir / (f16["file"] if isinstance(f16, Mapping) else str(f16))
            src_sha = f16.get("sha256") if isinstance(f16, Mapping) else None
            check = fp16_graph_violations(onnx.load(str(src), load_external_data=False), plan)
            if check["fp16_nodes"] == 0:
                raise CheckFailedError(f"{src} has no fp16 compute: it is not an fp16 graph; re-export with --fp16")
            if check["violations"]:
                raise CheckFailedError(f"{src}: nodes that must stay fp32 compute in fp16: "
                                       f"{', '.join(check['violations'][:8])}; re-export with --fp16")
            report["fp16_graph"] = {"file": src.name, **check}
        shapes = profile_shapes(name, entry["inputs"], ranges[name])
        report.update(build_graph(src, out_dir / f"{name}.engine", shapes, precision == "fp16", plan, cache,
                                  workspace_gb, name))
        report["profile"] = shapes
        if plan is not None:
            report["precision_plan"] = plan.to_dict(with_nodes=False)
        reports[name] = report
        graphs[name] = graph_entry(out_dir, f"{name}.engine", src, src_sha)
        if advance is not None:
            advance(name)
    extra = {"gpu": gpu, "build_mode": mode, "timing_cache": str(cache), "build": reports,
             "tensorrt_version": trt.__version__}
    return graphs, extra

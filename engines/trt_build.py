"""TensorRT engine build (TensorRT 10 and 11) from the exported ONNX graphs.

Per graph, on CUDA device ``device_id`` (made current for the whole build): parse the ONNX file, one optimisation
profile over the graph's batch axis (``asa_head``: the query and the video axis), a timing cache on disk, TF32 off in
every build (it is on by default, and would let FP32 layers — all of them in an fp32 build, the pinned ones in an
fp16 build — compute in TF32), then

- fp32: nothing more; the engine computes what the export computes;
- fp16 on TensorRT 10 (weakly typed): ``BuilderFlag.FP16`` plus ``OBEY_PRECISION_CONSTRAINTS``, with ``precision``
  and output types set to FP32 on the layers the one precision plan (:mod:`rap_deploy.export.precision_plan`) keeps in
  FP32, and on the helper layers the ONNX parser adds for them without a node name (e.g. the x·x of ``ReduceL2``);
- fp16 on TensorRT 11 (strongly typed; the precision flags and layer constraints are gone): the network is built from
  the export's fp16 graph, in which exactly the plan's nodes compute in fp32 (checked before the build).

After the build the engine is inspected (``IEngineInspector``, ``ProfilingVerbosity.DETAILED``): an ``--fp16`` engine
without FP16 layers is an error, and so is one in which an output the plan keeps FP32 came out in lower precision
(layers are matched to ONNX nodes through their ``[ONNX Layer: ...]`` metadata and the ONNX tensor names).
Every API call's return value that reports failure is checked; a builder flag this TensorRT lacks is an error.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rap_deploy.atomic import write_bytes_atomic
from rap_deploy.engines.tensorrt_backend import CUDA, logger, require_tensorrt
from rap_deploy.engines.trt_plan import (
    UNPINNED_LAYER_TYPES,
    NodeMatcher,
    PrecisionPlan,
    build_mode,
    check_fp16_engine,
    layer_keeps_fp32,
    layer_precisions,
    pinned_output_check,
    require_pinned_fp32,
)
from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError
from rap_deploy.name_lists import some_names

HELPER = "helper:feeds-pinned"
#: Why a build's TensorRT refusal names the ``<export folder>`` placeholder: build_graph was called without one.
NOT_TOLD = "the build was not told its export folder"


def set_flag(trt: Any, config: Any, name: str, on: bool = True) -> None:
    """Set (``on``) or clear a ``trt.BuilderFlag``; raises :class:`BackendUnavailableError` when this TensorRT has no
    such flag (e.g. ``FP16`` on TensorRT 11), so a precision setting is never skipped silently."""
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} has no BuilderFlag.{name}, which this build needs; "
                                      "use TensorRT 10 or 11 (pip install -e '.[trt]')")
    (config.set_flag if on else config.clear_flag)(flag)


def _float_types(trt: Any) -> tuple[Any, ...]:
    return tuple(t for t in (getattr(trt, "float32", None), getattr(trt, "float16", None),
                             getattr(trt, "bfloat16", None)) if t is not None)


def _type_name(layer: Any) -> str:
    return str(getattr(layer.type, "name", layer.type)).split(".")[-1].upper()


def _float_outputs(layer: Any, floats: tuple[Any, ...]) -> list[int]:
    return [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]


def _consumers(network: Any, layers: list[Any]) -> dict[str, list[int]]:
    """Tensor name → indices of the layers that read it."""
    out: dict[str, list[int]] = {}
    for idx, layer in enumerate(layers):
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            if t is not None:
                out.setdefault(t.name, []).append(idx)
    return out


def pinned_layers(trt: Any, network: Any, plan: PrecisionPlan) -> dict[int, str]:
    """Which layers of a parsed network stay FP32: ``{layer index: reason}``.

    A layer is pinned when its type is one the plan's op types become (``type:REDUCE``, ...) or its ONNX node is in
    the plan (``node:<reason>``). Then, until nothing changes, a layer the parser added without a node of its own
    (no ``[ONNX Layer]`` metadata, no node-name prefix) is pinned too when every consumer of its float outputs is
    pinned and none is a network output (``helper:feeds-pinned``: e.g. the x·x that ``ReduceL2`` becomes, which
    would overflow fp16 above 256). Data-movement and constant layers are never pinned.
    """
    matcher = NodeMatcher(plan.node_names)
    floats = _float_types(trt)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    pinned: dict[int, str] = {}
    helpers = []
    for idx, layer in enumerate(layers):
        if _type_name(layer) in UNPINNED_LAYER_TYPES or not _float_outputs(layer, floats):
            continue
        metadata = getattr(layer, "metadata", "") or ""
        reason = layer_keeps_fp32(_type_name(layer), layer.name, metadata, plan, matcher)
        if reason is not None:
            pinned[idx] = reason
        elif matcher.owner(layer.name, metadata) is None:
            helpers.append(idx)
    consumers = _consumers(network, layers)
    network_outputs = {network.get_output(k).name for k in range(network.num_outputs)}
    changed = True
    while changed:
        changed = False
        for idx in reversed(helpers):
            if idx in pinned:
                continue
            outs = [layers[idx].get_output(j).name for j in _float_outputs(layers[idx], floats)]
            users = [u for o in outs for u in consumers.get(o, [])]
            if users and not network_outputs.intersection(outs) and all(u in pinned for u in users):
                pinned[idx] = HELPER
                changed = True
    return pinned


def apply_precision_plan(trt: Any, network: Any, plan: PrecisionPlan) -> dict[str, str]:
    """TensorRT 10: pin :func:`pinned_layers` to FP32 (``layer.precision`` and ``set_output_type`` on every float
    output). Returns ``{layer name: reason}`` of the pinned layers."""
    floats = _float_types(trt)
    out: dict[str, str] = {}
    for idx, reason in pinned_layers(trt, network, plan).items():
        layer = network.get_layer(idx)
        layer.precision = trt.float32
        for j in _float_outputs(layer, floats):
            layer.set_output_type(j, trt.float32)
        out[layer.name] = reason
    return out


def _parser_error(err: Any) -> str:
    """One ONNX parser error as ``node: description`` (``IParserError``)."""
    try:
        node = err.node_name() or err.node_operator()
        return f"{node}: {err.desc()}" if node else str(err.desc())
    except AttributeError:
        return str(err)


def _parse(trt: Any, network: Any, log: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailedError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors[:600]}")


def _configure(trt: Any, builder: Any, network: Any, onnx_path: Path, shapes: Mapping[str, Mapping[str, list[int]]],
               workspace_gb: float) -> Any:
    """A builder config with the workspace limit, detailed profiling, TF32 off and the one optimisation profile."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    set_flag(trt, config, "TF32", on=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise UsageError(f"{onnx_path.name}: input '{name}' has no optimisation profile")
        s = shapes[name]
        profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    if not profile:
        raise CheckFailedError(f"{onnx_path.name}: the optimisation profile {dict(shapes)} is not valid for TensorRT")
    if config.add_optimization_profile(profile) < 0:
        raise CheckFailedError(f"{onnx_path.name}: TensorRT refused the optimisation profile {dict(shapes)}")
    return config


def _attach_timing_cache(config: Any, timing_cache: Path) -> None:
    """Use the on-disk timing cache, or a fresh one when it comes from another device / version."""
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    try:  # an unreadable cache file may give None or raise, depending on the version: then start afresh
        cache = config.create_timing_cache(cache_bytes) if cache_bytes else None
    except (RuntimeError, TypeError, ValueError):
        cache = None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise CheckFailedError(f"TensorRT refused an empty timing cache (was {timing_cache})")


def _inspect(trt: Any, log: Any, data: bytes, onnx_path: Path, shapes: Mapping[str, Mapping[str, list[int]]]
             ) -> tuple[dict[str, Any], int]:
    """Deserialize a freshly built engine and summarise its layers (:func:`layer_precisions`).

    The inspector is given an execution context with every input at its profile's ``opt`` shape: without one,
    TensorRT prints the formats and data types of a dynamic-shape engine as "N/A due to dynamic shapes" (the
    ``IEngineInspector::setExecutionContext`` documentation; trtexec and Polygraphy do the same), and the FP16 and
    pinned-output checks would have no types to read.
    """
    engine = trt.Runtime(log).deserialize_cuda_engine(data)
    if engine is None:
        raise CheckFailedError(f"the engine just built for {onnx_path.name} does not deserialize")
    context = engine.create_execution_context()
    if context is None:
        raise CheckFailedError(f"no execution context for the engine just built for {onnx_path.name} (GPU memory?)")
    for name, s in shapes.items():
        if not context.set_input_shape(name, tuple(s["opt"])):
            raise CheckFailedError(f"the engine just built for {onnx_path.name} refuses input '{name}' at its "
                                   f"profile's opt shape {s['opt']}")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return layer_precisions(info), engine.num_layers


def _build_on_device(trt: Any, onnx_path: Path, engine_path: Path,
                     shapes: Mapping[str, Mapping[str, list[int]]], pin: bool, plan: PrecisionPlan, timing_cache: Path,
                     workspace_gb: float) -> tuple[dict[str, str], float, dict[str, Any], int]:
    """:func:`build_graph`'s TensorRT part, run with its device current: parse, configure (``pin``: TensorRT 10's
    FP16 flag and the plan's layer constraints), build, write the engine and the timing cache, inspect. Every TensorRT
    object it creates is its own local, destroyed when it returns (still on the device). Returns ``(pinned layers,
    build seconds, layer summary, number of layers)``."""
    log = logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(0)  # TensorRT 10: weakly typed; TensorRT 11: always strongly typed
    _parse(trt, network, log, onnx_path)
    config = _configure(trt, builder, network, onnx_path, shapes, workspace_gb)
    _attach_timing_cache(config, timing_cache)
    pinned: dict[str, str] = {}
    if pin:
        set_flag(trt, config, "FP16")
        set_flag(trt, config, "OBEY_PRECISION_CONSTRAINTS")
        pinned = apply_precision_plan(trt, network, plan)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailedError(f"TensorRT {trt.__version__} failed to build {onnx_path.name} (see the log "
                               "above); try a smaller --max-batch or a larger workspace")
    seconds = time.perf_counter() - t0
    data = bytes(serialized)
    write_bytes_atomic(engine_path, data)
    write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    summary, num_layers = _inspect(trt, log, data, onnx_path, shapes)
    return pinned, seconds, summary, num_layers


def build_graph(onnx_path: Path, engine_path: Path, shapes: Mapping[str, Mapping[str, list[int]]], fp16: bool,
                plan: PrecisionPlan | None, timing_cache: Path, workspace_gb: float = 4.0,
                graph: str = "", device_id: int = 0, export_dir: Path | None = None) -> dict[str, Any]:
    """Build one serialized engine from ``onnx_path`` into ``engine_path`` on GPU ``device_id``; return its report.

    ``shapes`` is the optimisation profile (input name → min/opt/max shapes), ``plan`` the precision plan of the fp32
    graph (fp16 only). On TensorRT 11, an fp16 build expects ``onnx_path`` to be the fp16 graph. The timing cache at
    ``timing_cache`` is read if present and written back. Raises :class:`CheckFailedError` when parsing or building
    fails, an fp16 engine has no FP16 layers or a pinned output is not FP32; :class:`BackendUnavailableError`
    without TensorRT / the GPU, naming the ONNX Runtime builds of ``export_dir`` (the export the graph is from) to
    run instead, or without it the ``<export folder>`` placeholder, explained as :data:`NOT_TOLD`.
    """
    trt, _ = require_tensorrt(device_id, export_dir, why=NOT_TOLD)  # why: read only without export_dir
    mode = build_mode(trt.__version__)
    plan = plan or PrecisionPlan(graph)
    with CUDA.scope(device_id):
        try:
            pinned, seconds, summary, num_layers = _build_on_device(
                trt, onnx_path, engine_path, shapes, fp16 and mode == "weakly-typed", plan, timing_cache, workspace_gb)
        except BaseException as exc:
            # the failed build's TensorRT objects (builder, network, parser, config), which the traceback's finished
            # frames still hold, are destroyed now, with device_id current, not whenever the error is dropped
            traceback.clear_frames(exc.__traceback__)
            raise
    report: dict[str, Any] = {
        "mode": mode, "seconds": round(seconds, 2), "tf32": False, "pinned_fp32_layers": len(pinned),
        "pinned": dict(sorted(pinned.items())),
        "layers": {k: summary[k] for k in ("fp16_layers", "fp32_layers", "fp16_compute_layers")},
        "num_layers": num_layers}
    if fp16:
        check_fp16_engine(graph or onnx_path.stem, summary)
        report["pinned_check"] = pinned_output_check(summary, plan)
        require_pinned_fp32(graph or onnx_path.stem, report["pinned_check"])
    return report


def timing_cache_path(folder: Path, trt_version: str, gpu: Mapping[str, Any]) -> Path:
    """The on-disk timing cache for this TensorRT version and GPU (compute capability) under ``folder``."""
    cc = str(gpu.get("compute_capability", "unknown")).replace(".", "")
    return Path(folder) / f"tensorrt-{trt_version}-sm{cc}.timing-cache"


def _fp16_source(trt: Any, export_dir: Path, name: str, fp16_graphs: Mapping[str, Any], plan: PrecisionPlan
                 ) -> tuple[Path, str | None, dict[str, Any]]:
    """TensorRT 11: the export's fp16 graph for ``name``, checked against the plan; ``(path, sha256, report)``."""
    import onnx

    from rap_deploy.engines.trt_plan import fp16_graph_violations

    f16 = fp16_graphs.get(name)
    if not f16:
        raise UsageError(f"TensorRT {trt.__version__} builds every network strongly typed, so an fp16 engine needs "
                         f"the export's fp16 graph for {name}; re-export with `rapdeploy export CKPT --fp16`")
    src = export_dir / (f16["file"] if isinstance(f16, Mapping) else str(f16))
    sha = f16.get("sha256") if isinstance(f16, Mapping) else None
    check = fp16_graph_violations(onnx.load(str(src), load_external_data=False), plan)
    if check["fp16_nodes"] == 0:
        raise CheckFailedError(f"{src} has no fp16 compute: it is not an fp16 graph; re-export with --fp16")
    if check["violations"]:
        raise CheckFailedError(f"{src}: nodes that must stay fp32 compute in fp16: "
                               f"{some_names(check['violations'], 8)}; re-export with --fp16")
    return src, sha, {"file": src.name, **check}


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
    from rap_deploy.engines.manifest import graph_entry
    from rap_deploy.engines.trt_plan import plan_for_file, profile_shapes

    if precision not in ("fp32", "fp16"):
        raise UsageError(f"TensorRT engines are fp16 or fp32 here, not {precision} (int8 needs calibration or Q/DQ "
                         "graphs); use `--backend onnxruntime --int8` for an int8 CPU engine")
    trt, gpu = require_tensorrt(device_id, export_dir)
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
        if plan is not None and mode == "strongly-typed":
            src, src_sha, report["fp16_graph"] = _fp16_source(trt, export_dir, name, fp16_graphs, plan)
        shapes = profile_shapes(name, entry["inputs"], ranges[name])
        report.update(build_graph(src, out_dir / f"{name}.engine", shapes, precision == "fp16", plan, cache,
                                  workspace_gb, name, device_id, export_dir))
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

"""Everything about a TensorRT build that does not need TensorRT, so it is tested on machines without it.

- **Profiles**: one optimisation profile per graph over its batch axis (``video_encoder`` / ``text_encoder``: the batch
  B; ``asa_head``: the query axis Q *and* the video axis V, which are the block sizes the engine feeds). Every other
  axis (T, P, L, d) is static in the export, so min = opt = max there.
- **Precision plan**: which ONNX nodes of the *real exported graph* stay FP32 in an FP16 engine, and why. The plan
  itself is :mod:`rap_deploy.export.precision_plan` (one plan for the export's fp16 graph and for TensorRT 10's layer
  constraints); its names are re-exported here. TensorRT 10 applies it as layer precision constraints; TensorRT 11
  (strongly typed) needs an fp16 ONNX graph in which exactly these nodes compute in fp32, and
  :func:`fp16_graph_violations` checks that.
- **Layer matching**: a TensorRT layer is mapped back to the ONNX node(s) it came from (the ONNX parser names layers
  after nodes and records ``[ONNX Layer: name]`` in the layer metadata; fused layers list several, separated by
  ``\x1f``).
- **Inspection**: parsing ``IEngineInspector`` JSON (``Format/Datatype`` as TensorRT 10/11 print it, Myelin's
  ``kgen``/``gemm`` layers included) into per-layer precisions; an ``--fp16`` engine without FP16 layers is an error,
  and so is a pinned output that did not come out FP32 (:func:`pinned_output_check`).
- **Compatibility**: the rules that refuse an engine built for another TensorRT version or another GPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.export.export_config import TOKENS
from rap_deploy.export.precision_plan import (  # noqa: F401 - re-exported: the engine code's view of the plan
    BLOCKED,
    DATA_MOVEMENT,
    INDEX,
    LAYERNORM,
    NORMALIZE,
    NUMERICS,
    REDUCTION,
    SAMPLING,
    SELECTION,
    SOFTMAX,
    GraphIndex,
    PrecisionPlan,
    infer_types,
    plan_for_file,
    precision_plan,
)
from rap_deploy.name_lists import some_names

# --------------------------------------------------------------------------------------------------------- profiles

#: Which named axis the first dimension of each graph input is, when the export left that dimension unnamed (the
#: export's specs name it: ``batch`` / ``queries`` / ``videos``). All other dimensions are static.
INPUT_AXIS = {
    "frames": "batch", "frame_mask": "batch",
    "input_ids": "batch", "eot": "batch",
    "text_emb": "queries", "frame_emb": "videos", "patch_tokens": "videos", "asa_tokens": "videos",
}
#: (min, opt, max) per graph and axis when no option is given. The ASA maxima are the (query × video) block sizes
#: the engine feeds the head: its intermediates grow as Q·V·T·k·d_a, so a bound keeps device memory bounded.
DEFAULT_RANGES: dict[str, dict[str, tuple[int, int, int]]] = {
    "video_encoder": {"batch": (1, 8, 32)},
    "text_encoder": {"batch": (1, 32, 128)},
    "asa_head": {"queries": (1, 32, 32), "videos": (1, 64, 64)},
}
#: The text encoder's ``tokens`` axis (1 … context length): TensorRT tunes its kernels for ``opt``, a typical query
#: (the captions of MSR-VTT and the synthetic world run 8–20 tokens with start and end).
TOKENS_OPT = 16


@dataclass(frozen=True)
class AxisRange:
    """An optimisation-profile range of one dynamic axis: ``1 <= min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise UsageError(f"profile range must satisfy 1 <= min <= opt <= max, got min={self.min} "
                             f"opt={self.opt} max={self.max}; fix --min-batch/--opt-batch/--max-batch")

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class ProfileOptions:
    """Profile options from the command line; ``None`` keeps the per-graph default.

    ``min_batch``/``opt_batch``/``max_batch`` apply to the batch axis of the video and text encoders;
    ``query_block``/``video_block`` are the ASA head's maximal Q and V (the blocks the engine feeds it).
    """

    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    query_block: int | None = None
    video_block: int | None = None


def _range(default: tuple[int, int, int], lo: int | None, opt: int | None, hi: int | None) -> AxisRange:
    d_lo, d_opt, d_hi = default
    hi_v = hi if hi is not None else max(d_hi, lo or 1, opt or 1)
    lo_v = lo if lo is not None else min(d_lo, hi_v)
    opt_v = opt if opt is not None else min(max(d_opt, lo_v), hi_v)
    return AxisRange(lo_v, opt_v, hi_v)


def profile_ranges(options: ProfileOptions | None = None, graphs: Iterable[str] | None = None,
                   context_length: int | None = None) -> dict[str, dict[str, AxisRange]]:
    """Return ``graph -> axis -> AxisRange`` from ``options`` (defaults from :data:`DEFAULT_RANGES`).

    A single option fills the others sensibly (``--max-batch 4`` gives min 1, opt 4, max 4). With
    ``context_length`` (the export's ``dims``) the text encoder also gets its ``tokens`` axis: 1 to the context,
    tuned for :data:`TOKENS_OPT`. Raises :class:`UsageError` for an impossible range.
    """
    o = options or ProfileOptions()
    names = list(graphs) if graphs is not None else list(DEFAULT_RANGES)
    out: dict[str, dict[str, AxisRange]] = {}
    for g in names:
        if g not in DEFAULT_RANGES:
            raise UsageError(f"unknown graph '{g}'; graphs are {', '.join(DEFAULT_RANGES)}")
        d = DEFAULT_RANGES[g]
        if g == "asa_head":
            q, v = o.query_block, o.video_block
            out[g] = {"queries": _range(d["queries"], None, q, q), "videos": _range(d["videos"], None, v, v)}
        else:
            out[g] = {"batch": _range(d["batch"], o.min_batch, o.opt_batch, o.max_batch)}
        if g == "text_encoder" and context_length:
            out[g][TOKENS] = AxisRange(1, min(TOKENS_OPT, int(context_length)), int(context_length))
    return out


def profile_shapes(graph: str, inputs: Sequence[Mapping[str, Any]], ranges: Mapping[str, AxisRange]
                   ) -> dict[str, dict[str, list[int]]]:
    """Return ``input name -> {"min", "opt", "max"}`` shapes for one graph's optimisation profile.

    ``inputs`` are the export manifest's input specs (``{name, shape, dtype}``, symbolic dimensions as strings or
    ``None``). Dimension 0 is the graph's dynamic axis, named by the spec itself (``batch`` / ``queries`` /
    ``videos``, so a new input such as ``asa_tokens`` needs no entry here) or, for an unnamed symbolic dimension, by
    :data:`INPUT_AXIS`; it must be symbolic. Every other dimension is static or a named axis of ``ranges`` (the text
    encoder's ``tokens``). Raises :class:`UsageError` otherwise.
    """
    out: dict[str, dict[str, list[int]]] = {}
    for spec in inputs:
        name, shape = spec["name"], list(spec["shape"])
        axis = shape[0] if shape and isinstance(shape[0], str) and shape[0] in ranges else INPUT_AXIS.get(name)
        if axis is None or axis not in ranges:
            raise UsageError(f"{graph}: input '{name}' has no profile axis; this rapdeploy knows {sorted(INPUT_AXIS)}")
        if not shape or isinstance(shape[0], int):
            raise UsageError(f"{graph}: input '{name}' has a static first dimension {shape[:1]}; re-export so the "
                             "batch axis stays symbolic (export with batch >= 2)")
        rest = shape[1:]
        bad = [d for d in rest if not isinstance(d, int) and d not in ranges]
        if bad:
            raise UsageError(f"{graph}: input '{name}' has symbolic dimensions {bad} beyond the batch axis with no "
                             f"profile range (this profile covers {sorted(ranges)}); re-export with this rapdeploy")
        dims = [ranges[axis], *(d if isinstance(d, int) else ranges[d] for d in rest)]
        out[name] = {k: [getattr(d, k) if isinstance(d, AxisRange) else d for d in dims] for k in ("min", "opt", "max")}
    return out


# -------------------------------------------------------------------------------------------------- layer matching

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]|]+?)\s*(?:\|[^\]]*)?\]")

#: TensorRT layer types (``trt.LayerType`` names) that the ONNX parser makes from the plan's always-FP32 op types
#: (LayerNormalization, Softmax, Reduce*, TopK), so its helper layers of these types are pinned too.
FP32_LAYER_TYPES = frozenset({"NORMALIZATION", "SOFTMAX", "REDUCE", "TOPK", "RAGGED_SOFTMAX"})
#: Layer types that never get a precision constraint: they move data or hold constants (``trt.LayerType`` names).
UNPINNED_LAYER_TYPES = frozenset({"CONSTANT", "SHAPE", "SHUFFLE", "SLICE", "CONCATENATION", "GATHER", "IDENTITY",
                                  "CAST", "SQUEEZE", "UNSQUEEZE", "ASSERTION", "FILL"})


def layer_type_needs_fp32(type_name: str) -> bool:
    """Whether a TensorRT layer of this type (``trt.LayerType`` name, e.g. ``"SOFTMAX"``) is kept FP32."""
    return type_name.split(".")[-1].upper() in FP32_LAYER_TYPES


def onnx_layers(metadata: str) -> list[str]:
    """The ONNX node names in a layer's metadata (``[ONNX Layer: a]\\x1f[ONNX Layer: b | Local Function: f]``)."""
    return [m.strip() for m in _ONNX_LAYER.findall(metadata or "")]


class NodeMatcher:
    """Map TensorRT layer names / metadata back to ONNX node names (longest known node name that prefixes it)."""

    def __init__(self, node_names: Iterable[str]) -> None:
        self.names = {n for n in node_names if n}
        self._by_len = sorted(self.names, key=len, reverse=True)

    def owners(self, layer_name: str, metadata: str = "") -> list[str]:
        """Every known ONNX node a layer came from: the metadata's ``[ONNX Layer: name]`` entries when there are any
        (a fused layer lists several), else :meth:`owner` of the name."""
        found = [n for n in onnx_layers(metadata) if n in self.names]
        if found:
            return list(dict.fromkeys(found))
        one = self.owner(layer_name)
        return [one] if one is not None else []

    def owner(self, layer_name: str, metadata: str = "") -> str | None:
        """The ONNX node a layer came from, or ``None``.

        The metadata's ``[ONNX Layer: name]`` wins; else an exact name; else the longest node name followed by a
        non-alphanumeric character in the layer name (the parser suffixes helper layers, e.g. ``name_1``,
        ``name_output``, ``name/cast``).
        """
        for cand in onnx_layers(metadata):
            if cand in self.names:
                return cand
        if layer_name in self.names:
            return layer_name
        for name in self._by_len:
            if layer_name.startswith(name) and not layer_name[len(name)].isalnum():
                return name
        return None


def layer_keeps_fp32(type_name: str, layer_name: str, metadata: str, plan: PrecisionPlan,
                     matcher: NodeMatcher) -> str | None:
    """Return why a TensorRT layer must stay FP32 (``"type:SOFTMAX"``, ``"node:<reason>"``), or ``None``."""
    if layer_type_needs_fp32(type_name):
        return f"type:{type_name.split('.')[-1].upper()}"
    owner = matcher.owner(layer_name, metadata)
    if owner is not None and owner in plan.fp32:
        return f"node:{plan.fp32[owner]}"
    return None


# ------------------------------------------------------------------------------------------------------ inspection

_DTYPE_PATTERNS = (("fp16", ("FP16", "HALF")), ("bf16", ("BF16", "BFLOAT16")), ("fp8", ("FP8",)),
                   ("int8", ("INT8",)), ("int64", ("INT64",)), ("int32", ("INT32",)), ("bool", ("BOOL",)),
                   ("fp32", ("FP32", "FLOAT")))
#: Inspector ``LayerType`` values of layers that compute nothing (lower case; TensorRT 10 classic layers such as
#: ``Reformat``/``NoOp``/``Shuffle`` and Myelin's ``reshape``/``shape_call``/``signal``/``wait``, as in NVIDIA's
#: trt-perf-analysis tool). Myelin's ``kgen`` / ``gemm`` / ``Myelin`` layers compute.
NON_COMPUTE_LAYER_TYPES = frozenset({"reformat", "noop", "shuffle", "constant", "slice", "gather", "concatenation",
                                     "identity", "cast", "shape", "reshape", "shape_call", "signal", "wait",
                                     "signal_and_wait", "signal_wait", "copy"})


def tensor_dtype(desc: Mapping[str, Any]) -> str:
    """Data type of one tensor entry of an inspector layer (``Format/Datatype``, or ``DataType`` / ``Datatype``)."""
    text = " ".join(str(desc.get(k, "")) for k in ("DataType", "Datatype", "Format/Datatype", "Format/DataType"))
    if not text.strip():
        text = str(desc.get("Format", ""))
    up = text.upper()
    for name, keys in _DTYPE_PATTERNS:
        if any(k in up for k in keys):
            return name
    return "unknown"


def is_compute_layer(layer_type: str) -> bool:
    """Whether an inspector ``LayerType`` computes (``Reformat``, ``NoOp``, ``shape_call``, ... do not)."""
    return re.sub(r"[\s-]+", "_", str(layer_type).strip().lower()) not in NON_COMPUTE_LAYER_TYPES


def layer_precisions(engine_info: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """Summarise ``IEngineInspector.get_engine_information(JSON)`` (parsed): per-layer output types and counts.

    Returns ``{"layers": [{name, type, outputs: [{name, dtype}], onnx: [node names from the metadata]}],
    "fp16_layers", "fp32_layers", "fp16_compute_layers", "detailed"}``. A layer counts as FP16 when one of its outputs
    is FP16; ``fp16_compute_layers`` leaves out pure data-movement layers (:func:`is_compute_layer`). ``detailed`` is
    False when the engine was not built with ``ProfilingVerbosity.DETAILED`` (layers are then bare names).
    """
    layers_in = engine_info.get("Layers", []) if isinstance(engine_info, Mapping) else list(engine_info)
    layers, fp16, fp32, fp16_compute, detailed = [], 0, 0, 0, True
    for item in layers_in:
        if not isinstance(item, Mapping):
            detailed = False
            layers.append({"name": str(item), "type": "unknown", "outputs": [], "onnx": []})
            continue
        outs = [{"name": str(o.get("Name", "")), "dtype": tensor_dtype(o)} for o in item.get("Outputs", [])
                if isinstance(o, Mapping)]
        dtypes = [o["dtype"] for o in outs]
        ltype = str(item.get("LayerType", "unknown"))
        layers.append({"name": str(item.get("Name", "")), "type": ltype, "outputs": outs,
                       "onnx": onnx_layers(str(item.get("Metadata", "")))})
        if "fp16" in dtypes:
            fp16 += 1
            if is_compute_layer(ltype):
                fp16_compute += 1
        elif "fp32" in dtypes:
            fp32 += 1
    return {"layers": layers, "fp16_layers": fp16, "fp32_layers": fp32, "fp16_compute_layers": fp16_compute,
            "detailed": detailed}


def check_fp16_engine(graph: str, summary: Mapping[str, Any]) -> None:
    """Raise :class:`CheckFailedError` if an ``--fp16`` engine came out with no FP16 compute layer."""
    if not summary.get("detailed", True):
        raise CheckFailedError(f"{graph}: cannot read layer precisions (engine inspector is not detailed); "
                               "rebuild with ProfilingVerbosity.DETAILED")
    if summary.get("fp16_compute_layers", 0) == 0:
        raise CheckFailedError(f"{graph}: the --fp16 engine has no FP16 layers ({summary.get('fp32_layers', 0)} "
                               "FP32 layers); TensorRT kept everything in FP32. Check the GPU supports fast FP16 and "
                               "that the graph's precision constraints are not too wide")


def pinned_output_check(summary: Mapping[str, Any], plan: PrecisionPlan) -> dict[str, Any]:
    """Read an FP16 engine's layers back against the precision plan: every pinned output must be FP32.

    An inspector layer's output is *pinned* when its tensor name is a floating-point output of a plan node
    (``plan.fp32_tensors``: the ONNX parser keeps ONNX tensor names), or when every ONNX node the layer's metadata
    names (``[ONNX Layer: ...]``) is in the plan — a layer made only of pinned nodes, however it was fused or named.
    Returns ``{"checked": outputs checked, "layers_with_pinned_nodes": n, "violations": [{layer, type, tensor,
    dtype, nodes}]}``; pinned nodes fused inside a bigger Myelin layer have no visible output and are counted in
    ``hidden_pinned_nodes``.
    """
    checked, with_pinned, violations = 0, 0, []
    visible: set[str] = set()
    hidden: set[str] = set()
    computing = set(plan.fp32_tensors.values())  # pinned nodes that compute (data movement has no precision)
    for layer in summary.get("layers", []):
        nodes = list(layer.get("onnx", []))
        pinned_nodes = [n for n in nodes if n in computing]
        if pinned_nodes:
            with_pinned += 1
        whole = bool(pinned_nodes) and all(n in plan.fp32 for n in nodes)
        for out in layer.get("outputs", []):
            node = plan.fp32_tensors.get(out.get("name", ""))
            if node is None and not whole:
                continue
            if out.get("dtype") in ("int32", "int64", "bool"):
                continue  # index / mask outputs (TopK indices) have no float precision; an unreadable type fails
            checked += 1
            visible.update([node] if node else pinned_nodes)
            if out.get("dtype") != "fp32":
                violations.append({"layer": layer.get("name", ""), "type": layer.get("type", ""),
                                   "tensor": out.get("name", ""), "dtype": out.get("dtype"),
                                   "nodes": [node] if node else pinned_nodes})
        hidden.update(pinned_nodes)
    return {"checked": checked, "layers_with_pinned_nodes": with_pinned, "violations": violations,
            "hidden_pinned_nodes": len(hidden - visible)}


def require_pinned_fp32(graph: str, check: Mapping[str, Any]) -> None:
    """Raise :class:`CheckFailedError` naming the layers whose pinned outputs did not come out FP32."""
    bad = check.get("violations") or []
    if bad:
        shown = some_names([f"{v['layer']} ({v['type']}) -> {v['tensor']} is {v['dtype']} [{', '.join(v['nodes'])}]"
                            for v in bad], 4, sep="; ")
        raise CheckFailedError(f"{graph}: {len(bad)} output(s) the precision plan keeps FP32 came out in lower "
                               f"precision: {shown}. TensorRT dropped the constraints "
                               "(Myelin fusions are known to, NVIDIA/TensorRT issues 3889 and 4505); rebuild with "
                               "another TensorRT version or report the layers")


# ------------------------------------------------------------------------------------------- strongly typed (TRT 11)


def fp16_graph_violations(model: Any, reference_plan: PrecisionPlan | None = None) -> dict[str, Any]:
    """Check an fp16 ONNX graph for a strongly typed build: the plan's FP32 nodes must compute in fp32.

    The plan is computed on ``model`` itself (node names survive fp16 conversion; inserted Casts do not matter), or
    ``reference_plan`` (the fp32 graph's) is used for the node names it shares. Pure data movement (gather, reshape,
    concat, ...) computes nothing and is not counted. Returns ``{"fp16_nodes": n, "violations": [node names that
    compute with fp16 inputs/outputs]}``; ``fp16_nodes == 0`` means the graph is not fp16 at all.
    """
    import onnx

    model = infer_types(model)
    g = GraphIndex(model)
    wanted = set(precision_plan(model).fp32)
    if reference_plan is not None:
        wanted |= set(reference_plan.fp32) & {n.name for n in g.nodes}
    f16 = onnx.TensorProto.FLOAT16
    fp16_nodes, violations = 0, []
    for n in g.nodes:
        if n.op_type in DATA_MOVEMENT or n.op_type == "Constant":
            continue  # moving fp16 values computes nothing: no precision to lose
        types = [g.dtypes.get(t) for t in [*n.input, *n.output] if t and g.dtypes.get(t) in (1, 10, 11, 16)]
        if f16 in types:
            fp16_nodes += 1
            if n.name in wanted:
                violations.append(n.name)
    return {"fp16_nodes": fp16_nodes, "violations": sorted(violations)}


# --------------------------------------------------------------------------------------------------- compatibility


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (``"10.9.0.34"`` -> 10); raises :class:`UsageError` if unreadable."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise UsageError(f"cannot read TensorRT version '{version}'") from None


def build_mode(version: str) -> str:
    """``"weakly-typed"`` (TensorRT 10: FP16 flag + precision constraints) or ``"strongly-typed"`` (TensorRT >= 11)."""
    major = trt_major(version)
    if major < 10:
        raise UsageError(f"TensorRT {version} is too old; rapdeploy needs TensorRT 10 or 11")
    return "weakly-typed" if major == 10 else "strongly-typed"


def engine_mismatches(manifest: Mapping[str, Any], runtime: Mapping[str, Any]) -> list[str]:
    """Reasons a TensorRT engine built as ``manifest`` says cannot run on ``runtime``.

    ``runtime`` describes this machine: ``{"tensorrt": version, "gpu": {"name", "compute_capability"}}`` (see
    ``tensorrt_backend.runtime_info``). A serialized TensorRT engine only runs with the exact TensorRT version and on
    the GPU model (compute capability) it was built for. Returns an empty list when it can run.
    """
    out = []
    built = (manifest.get("versions") or {}).get("tensorrt")
    have = runtime.get("tensorrt")
    if built != have:
        out.append(f"engine was built with TensorRT {built}, this machine has TensorRT {have or 'none'}")
    mgpu, rgpu = manifest.get("gpu") or {}, runtime.get("gpu") or {}
    if not rgpu:
        out.append(f"engine was built for GPU {mgpu.get('name')} but no CUDA GPU is visible here")
    else:
        if str(mgpu.get("compute_capability")) != str(rgpu.get("compute_capability")):
            out.append(f"engine was built for compute capability {mgpu.get('compute_capability')} "
                       f"({mgpu.get('name')}), this GPU is {rgpu.get('name')} with compute capability "
                       f"{rgpu.get('compute_capability')}")
        elif mgpu.get("name") != rgpu.get("name"):
            out.append(f"engine was built on GPU {mgpu.get('name')}, this GPU is {rgpu.get('name')}")
    return out

"""Everything about a TensorRT build that does not need TensorRT, so it is tested on machines without it.

- **Profiles**: one optimisation profile per graph over its batch axis (``video_encoder`` / ``text_encoder``: the batch
  B; ``asa_head``: the query axis Q *and* the video axis V, which are the block sizes the engine feeds). Every other
  axis (T, P, L, d) is static in the export, so min = opt = max there.
- **Precision plan**: which ONNX nodes of the *real exported graph* stay FP32 in an FP16 engine, and why: LayerNorm,
  Softmax, reductions (and the L2-normalisation tails that divide by them), pow/sqrt/exp-type numerics, the ASA
  selection path (the score product feeding TopK, TopK itself) and the ASA sampling arithmetic (constant-index gathers
  blended with constant weights: the trilinear warp). TensorRT 10 applies it as layer precision constraints;
  TensorRT 11 (strongly typed) needs an fp16 ONNX graph in which exactly these nodes compute in fp32, and
  :func:`fp16_graph_violations` checks that.
- **Layer matching**: a TensorRT layer is mapped back to the ONNX node it came from (the ONNX parser names layers after
  nodes and records ``[ONNX Layer: name]`` in the layer metadata).
- **Inspection**: parsing ``IEngineInspector`` JSON (TensorRT 10 ``Format/Datatype``, TensorRT 11 ``DataType``) into
  per-layer precisions, and the rule that an ``--fp16`` engine without FP16 layers is an error.
- **Compatibility**: the rules that refuse an engine built for another TensorRT version or another GPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rap_deploy.errors import CheckFailedError, UsageError

# --------------------------------------------------------------------------------------------------------- profiles

#: Which named axis the first dimension of each graph input is. All other dimensions are static.
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


def profile_ranges(options: ProfileOptions | None = None, graphs: Iterable[str] | None = None
                   ) -> dict[str, dict[str, AxisRange]]:
    """Return ``graph -> axis -> AxisRange`` from ``options`` (defaults from :data:`DEFAULT_RANGES`).

    A single option fills the others sensibly (``--max-batch 4`` gives min 1, opt 4, max 4). Raises
    :class:`UsageError` for an impossible range.
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
    return out


def profile_shapes(graph: str, inputs: Sequence[Mapping[str, Any]], ranges: Mapping[str, AxisRange]
                   ) -> dict[str, dict[str, list[int]]]:
    """Return ``input name -> {"min", "opt", "max"}`` shapes for one graph's optimisation profile.

    ``inputs`` are the export manifest's input specs (``{name, shape, dtype}``, symbolic dimensions as strings or
    ``None``). Dimension 0 is the graph's dynamic axis (:data:`INPUT_AXIS`); it must be symbolic, every other
    dimension must be static. Raises :class:`UsageError` otherwise.
    """
    out: dict[str, dict[str, list[int]]] = {}
    for spec in inputs:
        name, shape = spec["name"], list(spec["shape"])
        axis = INPUT_AXIS.get(name)
        if axis is None or axis not in ranges:
            raise UsageError(f"{graph}: input '{name}' has no profile axis; this rapdeploy knows {sorted(INPUT_AXIS)}")
        if not shape or isinstance(shape[0], int):
            raise UsageError(f"{graph}: input '{name}' has a static first dimension {shape[:1]}; re-export so the "
                             "batch axis stays symbolic (export with batch >= 2)")
        rest = shape[1:]
        bad = [d for d in rest if not isinstance(d, int)]
        if bad:
            raise UsageError(f"{graph}: input '{name}' has symbolic dimensions {bad} beyond the batch axis; "
                             "TensorRT profiles here only cover the batch axis")
        r = ranges[axis]
        out[name] = {"min": [r.min, *rest], "opt": [r.opt, *rest], "max": [r.max, *rest]}
    return out


# --------------------------------------------------------------------------------------------------- precision plan

# Reasons a node stays FP32 (the keys of PrecisionPlan.reasons()).
LAYERNORM, SOFTMAX, REDUCTION, NORMALIZE, NUMERICS, SELECTION, SAMPLING = (
    "layernorm", "softmax", "reduction", "divide-by-reduction", "numerics", "asa-selection", "asa-sampling")

_REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceMax", "ReduceMin", "ReduceProd",
               "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}
_NUMERIC_OPS = {"Pow", "Sqrt", "Reciprocal", "Exp", "Log"}
# Ops that only move or reshape data; precision passes through them.
_SHAPE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Expand", "Cast"}
# Ops that carry a computed norm / divisor unchanged in value (or clamp it) on its way to a Div.
_NORM_CARRIERS = _SHAPE_OPS | {"Clip", "Max", "Sqrt", "Add"}
# Ops that only select or rearrange values: an fp16 input gives exactly the fp16-rounded fp32 result.
_DATA_MOVEMENT = _SHAPE_OPS | {"Gather", "GatherElements", "GatherND", "Slice", "Concat", "Split", "Tile", "Pad"}
_FLOAT_TYPES = {1, 10, 11, 16}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_LN_SCOPE = re.compile(r"(^|[^a-z0-9])(ln_[a-z0-9]+|ln[0-9]?|layer_?norm|layernorm)([^a-z0-9]|$)", re.IGNORECASE)


@dataclass
class PrecisionPlan:
    """The FP32 nodes of one ONNX graph: ``fp32[node name] = reason``; ``compute_nodes`` counts every float compute
    node, so ``compute_nodes - len(fp32)`` nodes are free to run in FP16."""

    graph: str
    fp32: dict[str, str] = field(default_factory=dict)
    compute_nodes: int = 0
    node_names: tuple[str, ...] = ()

    def reasons(self) -> dict[str, int]:
        """Count of FP32 nodes per reason."""
        counts: dict[str, int] = {}
        for r in self.fp32.values():
            counts[r] = counts.get(r, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self, with_nodes: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"graph": self.graph, "fp32_nodes": len(self.fp32), "compute_nodes": self.compute_nodes,
                             "reasons": self.reasons()}
        if with_nodes:
            d["fp32"] = dict(sorted(self.fp32.items()))
        return d


def _scope_text(node: Any) -> str:
    """Node name plus the exporter's scope metadata (dynamo: ``namespace`` / ``pkg.torch.onnx.name_scopes``)."""
    meta = {p.key: p.value for p in getattr(node, "metadata_props", [])}
    return " ".join([node.name, meta.get("namespace", ""), meta.get("pkg.torch.onnx.name_scopes", "")])


class _Graph:
    """Producer/consumer maps and constant-ness of the tensors of an ONNX graph."""

    def __init__(self, model: Any) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        # "Static" tensors: initializers, Constants, shapes (they depend on input dimensions, never on input
        # values) and everything computed from those alone, e.g. gather positions built from a symbolic batch size.
        self.const = {t.name for t in g.initializer}
        for n in self.nodes:  # topological order
            if n.op_type in ("Constant", "Shape", "Size") or (
                    n.input and all((not i) or i in self.const for i in n.input)
                    and n.op_type not in ("RandomNormal", "RandomUniform", "If", "Loop", "Scan")):
                self.const.update(o for o in n.output if o)
        self.dtypes: dict[str, int] = {}
        for vi in [*g.input, *g.output, *g.value_info]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.dtypes[vi.name] = tt.elem_type
        for t in g.initializer:
            self.dtypes[t.name] = t.data_type

    def is_const(self, tensor: str) -> bool:
        return tensor in self.const

    def is_float(self, tensor: str) -> bool:
        return self.dtypes.get(tensor, 1) in _FLOAT_TYPES

    def through_shape_ops(self, tensor: str, carriers: set[str] = _SHAPE_OPS) -> tuple[Any | None, list[Any]]:
        """Walk up from ``tensor`` through ``carriers``; return (first other producer, carriers passed)."""
        passed = []
        node = self.producer.get(tensor)
        while node is not None and node.op_type in carriers and node.input:
            passed.append(node)
            node = self.producer.get(node.input[0])
        return node, passed


def precision_plan(model: Any, graph: str = "") -> PrecisionPlan:
    """Compute which nodes of ``model`` (an ``onnx.ModelProto``, ideally shape-inferred) stay FP32, and why.

    Rules, in order: LayerNormalization nodes and nodes in a LayerNorm scope (decomposed LayerNorm of old opsets);
    Softmax; every reduction; the L2-normalisation tail (a Div whose divisor comes from a reduction); pow / sqrt /
    reciprocal / exp / log; the ASA selection path (TopK and the product computing its scores); the ASA sampling
    arithmetic (gathers at constant positions blended with constant weights, and the blend). Returns a
    :class:`PrecisionPlan`; nodes that never compute in floating point are not listed.
    """
    g = _Graph(model)
    fp32: dict[str, str] = {}

    def mark(node: Any, reason: str) -> None:
        if node is not None and node.name and node.op_type != "Constant":
            fp32.setdefault(node.name, reason)

    for n in g.nodes:
        op = n.op_type
        if op == "LayerNormalization" or (op not in _SHAPE_OPS and op != "Constant" and _LN_SCOPE.search(
                _scope_text(n)) and any(g.is_float(o) for o in n.output)):
            mark(n, LAYERNORM)
        elif op in ("Softmax", "LogSoftmax"):
            mark(n, SOFTMAX)
        elif op in _REDUCE_OPS or op == "LpNormalization":
            mark(n, REDUCTION)
        elif op in _NUMERIC_OPS:
            mark(n, NUMERICS)
        elif op == "TopK":
            mark(n, SELECTION)
            src, passed = g.through_shape_ops(n.input[0])
            if src is not None:
                mark(src, SELECTION)
    for n in g.nodes:  # L2-normalisation: x / max(norm(x), eps) with norm from a reduction
        if n.op_type == "Div" and len(n.input) == 2 and not g.is_const(n.input[1]):
            src, passed = g.through_shape_ops(n.input[1], _NORM_CARRIERS)
            if src is not None and (src.op_type in _REDUCE_OPS or src.op_type in _NUMERIC_OPS):
                mark(n, NORMALIZE)
                for p in passed:
                    if p.op_type not in _SHAPE_OPS:
                        mark(p, NORMALIZE)
    for n in g.nodes:  # sampling: Add(Mul(gather_c(x), w0), Mul(gather_c(x'), w1)) with constant indices and weights
        if n.op_type not in ("Add", "Sum") or len(n.input) != 2:
            continue
        parts = [_weighted_const_gather(g, t) for t in n.input]
        if all(parts):
            mark(n, SAMPLING)
            for part in parts:
                for p in part:  # type: ignore[union-attr]
                    if p.op_type not in _SHAPE_OPS:
                        mark(p, SAMPLING)
    compute = [n for n in g.nodes if n.op_type not in _SHAPE_OPS and n.op_type not in ("Constant", "Shape", "Gather")
               and any(g.is_float(o) for o in n.output)]
    return PrecisionPlan(graph=graph, fp32=fp32, compute_nodes=len(compute), node_names=tuple(n.name for n in g.nodes))


def _weighted_const_gather(g: _Graph, tensor: str) -> list[Any] | None:
    """If ``tensor`` = Mul(shape-ops(Gather(x, constant indices)), constant weight), return those nodes."""
    mul = g.producer.get(tensor)
    if mul is None or mul.op_type != "Mul" or len(mul.input) != 2:
        return None
    for data_in, w_in in (mul.input, mul.input[::-1]):
        if not g.is_const(w_in) or g.is_const(data_in):
            continue
        src, passed = g.through_shape_ops(data_in)
        if (src is not None and src.op_type in ("Gather", "GatherElements") and len(src.input) == 2
                and g.is_const(src.input[1]) and not g.is_const(src.input[0])):
            return [mul, *passed, src]
    return None


def plan_for_file(path: Any, graph: str = "") -> PrecisionPlan:
    """:func:`precision_plan` of an ONNX file (loaded without external weights, shape-inferred)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types only sharpen the plan; the rules work without them
        pass
    return precision_plan(model, graph)


# -------------------------------------------------------------------------------------------------- layer matching

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")

#: TensorRT layer types (``trt.LayerType`` names) that always stay FP32 in an FP16 engine.
FP32_LAYER_TYPES = frozenset({"NORMALIZATION", "SOFTMAX", "REDUCE", "TOPK", "RAGGED_SOFTMAX"})


def layer_type_needs_fp32(type_name: str) -> bool:
    """Whether a TensorRT layer of this type (``trt.LayerType`` name, e.g. ``"SOFTMAX"``) is kept FP32."""
    return type_name.split(".")[-1].upper() in FP32_LAYER_TYPES


class NodeMatcher:
    """Map TensorRT layer names / metadata back to ONNX node names (longest known node name that prefixes it)."""

    def __init__(self, node_names: Iterable[str]) -> None:
        self.names = {n for n in node_names if n}
        self._by_len = sorted(self.names, key=len, reverse=True)

    def owner(self, layer_name: str, metadata: str = "") -> str | None:
        """The ONNX node a layer came from, or ``None``.

        The metadata's ``[ONNX Layer: name]`` wins; else an exact name; else the longest node name followed by a
        non-alphanumeric character in the layer name (the parser suffixes helper layers, e.g. ``name_1``,
        ``name_output``, ``name/cast``).
        """
        for cand in _ONNX_LAYER.findall(metadata or ""):
            cand = cand.strip()
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
_NON_COMPUTE_LAYERS = {"Reformat", "NoOp", "Shuffle", "Constant", "Slice", "Gather", "Concatenation", "Identity",
                       "Cast", "Shape"}


def tensor_dtype(desc: Mapping[str, Any]) -> str:
    """Data type of one tensor entry of an inspector layer (TensorRT 10 ``Format/Datatype`` or 11 ``DataType``)."""
    text = " ".join(str(desc.get(k, "")) for k in ("DataType", "Datatype", "Format/Datatype", "Format/DataType"))
    if not text.strip():
        text = str(desc.get("Format", ""))
    up = text.upper()
    for name, keys in _DTYPE_PATTERNS:
        if any(k in up for k in keys):
            return name
    return "unknown"


def layer_precisions(engine_info: Mapping[str, Any]) -> dict[str, Any]:
    """Summarise ``IEngineInspector.get_engine_information(JSON)`` (parsed): per-layer output types and counts.

    Returns ``{"layers": [{name, type, outputs}], "fp16_layers", "fp32_layers", "fp16_compute_layers",
    "detailed"}``. A layer counts as FP16 when one of its outputs is FP16; ``fp16_compute_layers`` leaves out pure
    data-movement layers (reformat, shuffle, ...). ``detailed`` is False when the engine was not built with
    ``ProfilingVerbosity.DETAILED`` (layers are then bare names).
    """
    layers_in = engine_info.get("Layers", [])
    layers, fp16, fp32, fp16_compute, detailed = [], 0, 0, 0, True
    for item in layers_in:
        if not isinstance(item, Mapping):
            detailed = False
            layers.append({"name": str(item), "type": "unknown", "outputs": []})
            continue
        outs = [tensor_dtype(o) for o in item.get("Outputs", []) if isinstance(o, Mapping)]
        ltype = str(item.get("LayerType", "unknown"))
        layers.append({"name": str(item.get("Name", "")), "type": ltype, "outputs": outs})
        if "fp16" in outs:
            fp16 += 1
            if ltype not in _NON_COMPUTE_LAYERS:
                fp16_compute += 1
        elif "fp32" in outs:
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


# ------------------------------------------------------------------------------------------- strongly typed (TRT 11)


def fp16_graph_violations(model: Any, reference_plan: PrecisionPlan | None = None) -> dict[str, Any]:
    """Check an fp16 ONNX graph for a strongly typed build: the plan's FP32 nodes must compute in fp32.

    The plan is computed on ``model`` itself (node names survive fp16 conversion; inserted Casts do not matter), or
    ``reference_plan`` (the fp32 graph's) is used for the node names it shares. Pure data movement (gather, reshape,
    concat, ...) computes nothing and is not counted. Returns ``{"fp16_nodes": n, "violations": [node names that
    compute with fp16 inputs/outputs]}``; ``fp16_nodes == 0`` means the graph is not fp16 at all.
    """
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        pass
    g = _Graph(model)
    plan = precision_plan(model)
    wanted = set(plan.fp32)
    if reference_plan is not None:
        wanted |= set(reference_plan.fp32) & {n.name for n in g.nodes}
    f16 = onnx.TensorProto.FLOAT16
    fp16_nodes, violations = 0, []
    for n in g.nodes:
        if n.op_type in _DATA_MOVEMENT or n.op_type == "Constant":
            continue  # moving fp16 values computes nothing: no precision to lose
        types = [g.dtypes.get(t) for t in [*n.input, *n.output] if t and g.dtypes.get(t) in _FLOAT_TYPES]
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

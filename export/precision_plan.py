"""The one FP16 precision plan: which nodes of an exported ONNX graph must compute in FP32, and why.

Both FP16 routes read this plan, so one ``--fp16`` means one precision map (DESIGN.md §8):

- the fp16 ONNX graph of the export (:func:`rap_deploy.export.fp16.convert_to_fp16`, what TensorRT 11 builds strongly
  typed and ONNX Runtime CUDA runs) keeps exactly the plan's nodes in fp32;
- TensorRT 10 (weakly typed) pins the layers the ONNX parser makes from the plan's nodes to FP32
  (:mod:`rap_deploy.engines.tensorrt_backend`), and the post-build check reads the engine back against it.

The rules look at op types and at the data flow of the graph, never at the graph's name, so they find the numerically
sensitive parts wherever the exporter put them (the ASA warp sits in ``asa_head`` or in ``video_encoder``):

1. op types that always stay FP32 (:data:`~rap_deploy.export.export_config.FP16_BLOCKED_OPS`): LayerNorm, Softmax,
   every reduction (so every L2 norm), pow/sqrt/reciprocal/exp/log, TopK, floor/ceil/round/clip, range/cumsum;
   decomposed LayerNorm is found by the exporter's node-name scopes (``ln_1``, ``layer_norm``, ...);
2. the selection scores: the node that computes a TopK's input (through data movement);
3. divisions by a value computed at run time (``x / norm``, ``sum / count``): a division by a constant is a scale and
   stays FP16, together with the clamp / max / sqrt carriers between a divisor and the reduction it came from;
4. index arithmetic: every floating-point node whose result flows into the indices of a Gather / Scatter (sampling
   positions, their clamps and floors), up to a TopK / ArgMax or a graph input;
5. the sampling blend: from a Gather of computed float data at many positions (index rank >= 1, so not the CLS token
   or a q/k/v split) through data movement and elementwise arithmetic, i.e. the trilinear interpolation of the warp,
   and the elementwise arithmetic that computes the blend's weights (``pos - floor(pos)``).

Nodes that compute nothing in floating point are never listed. Every node is expected to have a unique name (the
exporter's ``/scope/Op_N`` names or dynamo's ``node_*``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rap_deploy.export.export_config import FP16_BLOCKED_OPS

# Reasons a node stays FP32 (the keys of PrecisionPlan.reasons()).
LAYERNORM, SOFTMAX, REDUCTION, NORMALIZE, NUMERICS, SELECTION, SAMPLING, INDEX, BLOCKED = (
    "layernorm", "softmax", "reduction", "divide-by-computed", "numerics", "asa-selection", "asa-sampling",
    "index-arithmetic", "blocked-op")

_REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceMax", "ReduceMin", "ReduceProd",
               "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "LpNormalization"}
_NUMERIC_OPS = {"Pow", "Sqrt", "Reciprocal", "Exp", "Log"}
_SOFTMAX_OPS = {"Softmax", "LogSoftmax"}
# Ops that only move or reshape data; precision passes through them.
SHAPE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Expand", "Cast"})
# Ops that only select or rearrange values: an fp16 input gives exactly the fp16-rounded fp32 result.
DATA_MOVEMENT = SHAPE_OPS | {"Gather", "GatherElements", "GatherND", "Slice", "Concat", "Split", "Tile", "Pad"}
# Ops that carry a computed divisor unchanged in value (or clamp it) on its way to a Div.
_NORM_CARRIERS = SHAPE_OPS | {"Clip", "Max", "Sqrt", "Add"}
_GATHERS = {"Gather", "GatherElements", "GatherND"}
_INDEXED = _GATHERS | {"ScatterElements", "ScatterND", "Scatter"}
_BLEND_ARITHMETIC = {"Mul", "Add", "Sub", "Neg", "Sum"}
# What interpolation weights are computed with (positions, their floors and clamps): never a MatMul.
_WEIGHT_OPS = SHAPE_OPS | {"Add", "Sub", "Mul", "Div", "Neg", "Floor", "Ceil", "Round", "Clip", "Min", "Max", "Abs",
                           "ReduceSum", "Where", "Unsqueeze"}
# Index walks stop here: selection has its own rule, and graph inputs / constants compute nothing.
_INDEX_SOURCES = {"TopK", "ArgMax", "ArgMin", "NonZero"}
_FLOAT_TYPES = {1, 10, 11, 16}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_LN_SCOPE = re.compile(r"(^|[^a-z0-9])(ln_[a-z0-9]+|ln[0-9]?|layer_?norm|layernorm)([^a-z0-9]|$)", re.IGNORECASE)


@dataclass
class PrecisionPlan:
    """The FP32 nodes of one ONNX graph.

    ``fp32[node name] = reason``; ``fp32_tensors[tensor name] = node name`` for every floating-point output of those
    nodes that compute (data movement copies whatever precision it is given; what the post-build check reads back
    from the engine); ``compute_nodes`` counts every float compute node,
    so ``compute_nodes - len(fp32)`` nodes are free to run in FP16; ``node_names`` lists every node of the graph.
    """

    graph: str
    fp32: dict[str, str] = field(default_factory=dict)
    compute_nodes: int = 0
    node_names: tuple[str, ...] = ()
    fp32_tensors: dict[str, str] = field(default_factory=dict)

    def reasons(self) -> dict[str, int]:
        """Count of FP32 nodes per reason."""
        counts: dict[str, int] = {}
        for r in self.fp32.values():
            counts[r] = counts.get(r, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self, with_nodes: bool = True) -> dict[str, Any]:
        """JSON-ready summary (``with_nodes``: also the node → reason map)."""
        d: dict[str, Any] = {"graph": self.graph, "fp32_nodes": len(self.fp32), "compute_nodes": self.compute_nodes,
                             "reasons": self.reasons()}
        if with_nodes:
            d["fp32"] = dict(sorted(self.fp32.items()))
        return d


def _scope_text(node: Any) -> str:
    """Node name plus the exporter's scope metadata (dynamo: ``namespace`` / ``pkg.torch.onnx.name_scopes``)."""
    meta = {p.key: p.value for p in getattr(node, "metadata_props", [])}
    return " ".join([node.name, meta.get("namespace", ""), meta.get("pkg.torch.onnx.name_scopes", "")])


class GraphIndex:
    """Producer/consumer maps, element types and constant-ness of the tensors of an ONNX graph."""

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
        for n in self.nodes:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.dtypes[n.output[0]] = a.t.data_type
        self.ranks: dict[str, int] = {t.name: len(t.dims) for t in g.initializer}
        for vi in [*g.input, *g.output, *g.value_info]:
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.ranks[vi.name] = len(tt.shape.dim)

    def is_const(self, tensor: str) -> bool:
        """Whether ``tensor`` is known before any input value is (initializers, constants, shapes)."""
        return tensor in self.const

    def is_float(self, tensor: str) -> bool:
        """Whether ``tensor`` is floating point (unknown types count as float: the conservative side)."""
        return self.dtypes.get(tensor, 1) in _FLOAT_TYPES

    def computes_float(self, node: Any) -> bool:
        """Whether ``node`` computes (not only moves) and has a floating-point output."""
        return (node.op_type not in DATA_MOVEMENT and node.op_type not in ("Constant", "Shape", "Size")
                and any(o and self.is_float(o) for o in node.output))

    def through(self, tensor: str, carriers: Iterable[str]) -> tuple[Any | None, list[Any]]:
        """Walk up from ``tensor`` through ``carriers`` (first input); return (first other producer, carriers)."""
        carriers = set(carriers)
        passed = []
        node = self.producer.get(tensor)
        while node is not None and node.op_type in carriers and node.input:
            passed.append(node)
            node = self.producer.get(node.input[0])
        return node, passed


def precision_plan(model: Any, graph: str = "", op_types: Iterable[str] = FP16_BLOCKED_OPS) -> PrecisionPlan:
    """Compute which nodes of ``model`` (an ``onnx.ModelProto``, ideally shape-inferred) stay FP32, and why.

    ``op_types`` are the op types kept FP32 unconditionally (rule 1 of the module docstring; the default is the
    export's :data:`FP16_BLOCKED_OPS`); rules 2-5 always apply. Returns a :class:`PrecisionPlan`.
    """
    g = GraphIndex(model)
    op_types = set(op_types)
    fp32: dict[str, str] = {}

    def mark(node: Any, reason: str) -> None:
        if node is not None and node.name and node.op_type != "Constant":
            fp32.setdefault(node.name, reason)

    _mark_by_op_type(g, op_types, mark)
    _mark_divisions(g, mark)
    _mark_index_arithmetic(g, mark)
    _mark_sampling_blend(g, mark)
    names = {n.name for n in g.nodes}
    tensors = {o: n.name for n in g.nodes if n.name in fp32 and n.op_type not in DATA_MOVEMENT
               for o in n.output if o and g.is_float(o)}
    compute = [n for n in g.nodes if g.computes_float(n) and n.op_type != "Gather"]
    return PrecisionPlan(graph=graph, fp32={k: v for k, v in fp32.items() if k in names},
                         compute_nodes=len(compute), node_names=tuple(n.name for n in g.nodes), fp32_tensors=tensors)


def _op_reason(op: str) -> str:
    if op == "LayerNormalization":
        return LAYERNORM
    if op in _SOFTMAX_OPS:
        return SOFTMAX
    if op in _REDUCE_OPS:
        return REDUCTION
    if op in _NUMERIC_OPS:
        return NUMERICS
    if op == "TopK":
        return SELECTION
    return BLOCKED


def _mark_by_op_type(g: GraphIndex, op_types: set[str], mark: Any) -> None:
    """Rules 1 and 2: blocked op types, decomposed LayerNorm scopes, TopK and the node computing its scores."""
    for n in g.nodes:
        op = n.op_type
        if op in op_types:
            mark(n, _op_reason(op))
        elif "LayerNormalization" in op_types and op not in SHAPE_OPS and op != "Constant" \
                and _LN_SCOPE.search(_scope_text(n)) and any(g.is_float(o) for o in n.output):
            mark(n, LAYERNORM)
        if op == "TopK" and "TopK" in op_types:
            src, _ = g.through(n.input[0], DATA_MOVEMENT)
            if src is not None:
                mark(src, SELECTION)


def _mark_divisions(g: GraphIndex, mark: Any) -> None:
    """Rule 3: a Div by a run-time value, and the carriers between its divisor and a reduction / numerics node."""
    for n in g.nodes:
        if n.op_type != "Div" or len(n.input) != 2 or g.is_const(n.input[1]) or not g.is_float(n.output[0]):
            continue
        mark(n, NORMALIZE)
        src, passed = g.through(n.input[1], _NORM_CARRIERS)
        if src is not None and (src.op_type in _REDUCE_OPS or src.op_type in _NUMERIC_OPS):
            for p in passed:
                if p.op_type not in SHAPE_OPS:
                    mark(p, NORMALIZE)


def _mark_index_arithmetic(g: GraphIndex, mark: Any) -> None:
    """Rule 4: float nodes whose values end up as Gather / Scatter indices (positions, clamps, floors)."""
    seen: set[str] = set()
    stack = [n.input[1] for n in g.nodes if n.op_type in _INDEXED and len(n.input) > 1 and n.input[1]]
    while stack:
        tensor = stack.pop()
        if tensor in seen or g.is_const(tensor):
            continue
        seen.add(tensor)
        node = g.producer.get(tensor)
        if node is None or node.op_type in _INDEX_SOURCES:
            continue
        if g.computes_float(node) or (node.op_type == "Cast" and any(g.is_float(i) for i in node.input if i)):
            if g.computes_float(node):
                mark(node, INDEX)
        stack.extend(i for i in node.input if i)


def _mark_sampling_blend(g: GraphIndex, mark: Any) -> None:
    """Rule 5: gathers of computed float data at many positions and the elementwise arithmetic that blends them."""
    for gather in g.nodes:
        if not (gather.op_type in _GATHERS and len(gather.input) > 1 and not g.is_const(gather.input[0])
                and g.is_float(gather.input[0]) and g.ranks.get(gather.input[1], 1) >= 1):
            continue
        blended, seen, frontier = False, set(), [gather]
        while frontier:
            n = frontier.pop()
            for c in (c for o in n.output for c in g.consumers.get(o, [])):
                if c.name in seen:
                    continue
                seen.add(c.name)
                if c.op_type in _BLEND_ARITHMETIC:
                    mark(c, SAMPLING)
                    blended = True
                    frontier.append(c)
                elif c.op_type in DATA_MOVEMENT and c.op_type not in _GATHERS:
                    frontier.append(c)
        if blended:
            mark(gather, SAMPLING)
            _mark_blend_weights(g, [c for c in g.nodes if c.name in seen and c.op_type == "Mul"], seen, mark)


def _mark_blend_weights(g: GraphIndex, muls: list[Any], blend: set[str], mark: Any) -> None:
    """The interpolation weights of a blend (``frac = pos - floor(pos)``): walk up a blend Mul's other operand through
    elementwise arithmetic only (never into a MatMul or beyond), marking what computes them."""
    stack = [i for m in muls for i in m.input if i and g.producer.get(i) is not None
             and g.producer[i].name not in blend]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        node = g.producer.get(tensor)
        if tensor in seen or node is None or g.is_const(tensor) or node.op_type not in _WEIGHT_OPS:
            continue
        seen.add(tensor)
        if g.computes_float(node):
            mark(node, INDEX)
        stack.extend(i for i in node.input if i)


def plan_for_file(path: Any, graph: str = "") -> PrecisionPlan:
    """:func:`precision_plan` of an ONNX file (loaded without external weights, shape-inferred)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return precision_plan(infer_types(model), graph)


def infer_types(model: Any) -> Any:
    """``model`` with inferred value types where onnx can infer them (the rules only sharpen with types)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types only sharpen the plan; the rules work without them
        return model

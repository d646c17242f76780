"""fp16 ONNX graphs for GPU runtimes, with the numerically sensitive parts kept in fp32.

TensorRT 11 builds every network strongly typed, so an fp16 engine comes from an fp16 ONNX graph in which the ops
that must stay fp32 already are (DESIGN.md §8). Which nodes those are is decided by the one precision plan
(:mod:`rap_deploy.export.precision_plan`: LayerNorm, Softmax, reductions and L2 norms, divisions by computed values,
TopK and its scores, index arithmetic and the sampling blend of the ASA warp), the same plan TensorRT 10 applies as
layer constraints. The conversion here (written with ``onnx.helper``, no extra dependency) keeps graph inputs and
outputs in their own types.

Everything else that computes in float (MatMul, Gemm, Conv, Erf, ...) runs in fp16; Cast nodes are inserted where
a value crosses between the two, and fp32 initializers feeding fp16 nodes get an fp16 copy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rap_deploy.export.export_config import FP16_BLOCKED_OPS
from rap_deploy.export.precision_plan import infer_types, precision_plan

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
_FLOATS = (FLOAT, FLOAT16)
# Ops whose output type is set by an attribute, not by their inputs: their outputs keep their original type.
_EXPLICIT_TYPE_OPS = {"Cast", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
                      "RandomUniformLike", "Multinomial", "Constant"}
# Ops that accept any input type (no Cast needed in front of them).
_ANY_INPUT_OPS = {"Shape", "Size", "Cast", "CastLike"}
FP16_MAX = float(np.finfo(np.float16).max)


def _value_info(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """``(element type, rank)`` of every named value (inputs, initializers, intermediates, outputs), inferred."""
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True)
    g = inferred.graph
    types = {init.name: init.data_type for init in g.initializer}
    ranks = {init.name: len(init.dims) for init in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
            if vi.type.tensor_type.HasField("shape"):
                ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
                    ranks[node.output[0]] = len(attr.t.dims)
    return types, ranks


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    return _value_info(model)[0]


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Turn float ``Constant`` nodes into initializers, so the initializer rule converts them."""
    keep = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and value.t.data_type == FLOAT:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def fp32_node_names(model: onnx.ModelProto, blocked_ops: Iterable[str] = FP16_BLOCKED_OPS) -> set[str]:
    """Names of the nodes that stay fp32: the precision plan's (:mod:`rap_deploy.export.precision_plan`) with
    ``blocked_ops`` as its always-fp32 op types; every node must have a unique name."""
    return set(precision_plan(infer_types(model), op_types=blocked_ops).fp32)


def convert_to_fp16(model: onnx.ModelProto, blocked_ops: Iterable[str] = FP16_BLOCKED_OPS
                    ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Return ``(fp16 model, report)``: float compute in fp16 except the precision plan's nodes; graph inputs and
    outputs keep their types (keep_io_types: fp32 stays fp32, an fp16 input such as an index tensor stays fp16).

    ``report`` counts nodes per precision, the fp32 op types and the Casts inserted. Raises ``ValueError`` for graphs
    with subgraphs (If/Loop/Scan), which the export never produces.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
           for a in n.attribute):
        raise ValueError("fp16 conversion does not handle subgraphs (If/Loop/Scan)")
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    _constants_to_initializers(graph)
    orig_types = _value_types(model)
    fp32_nodes = fp32_node_names(model, blocked_ops)

    half = _HalfGraph(graph, orig_types)
    for node in graph.node:
        half.retype(node, FLOAT if node.name in fp32_nodes else FLOAT16)
    half.cast_outputs_back()
    half.install()
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model, _precision_report(model, half.n_casts, blocked_ops)


class _HalfGraph:
    """One conversion in progress: the new node list, the type each value has in the converted graph, and the Casts
    and fp16 initializer copies made so far (each made once, however many nodes read it)."""

    def __init__(self, graph: onnx.GraphProto, orig_types: dict[str, int]) -> None:
        self.graph, self.orig_types = graph, orig_types
        self.types: dict[str, int] = dict(orig_types)
        self.inits = {i.name: i for i in graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.casts: dict[tuple[str, int], str] = {}
        self.half_inits: dict[str, str] = {}
        self.n_casts = 0

    def as_type(self, name: str, target: int) -> str:
        """The name of ``name`` as a ``target``-typed value: an fp16 copy of an fp32 initializer (clipped to the fp16
        range), else the output of a Cast."""
        if name in self.inits and self.types[name] == FLOAT and target == FLOAT16:
            if name not in self.half_inits:
                arr = numpy_helper.to_array(self.inits[name]).astype(np.float32)
                copy = numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), f"{name}__fp16")
                self.graph.initializer.append(copy)
                self.half_inits[name] = copy.name
                self.types[copy.name] = FLOAT16
            return self.half_inits[name]
        key = (name, target)
        if key not in self.casts:
            out = f"{name}__to_{'fp16' if target == FLOAT16 else 'fp32'}"
            self.nodes.append(helper.make_node("Cast", [name], [out], to=target, name=f"{out}__cast"))
            self.types[out] = target
            self.casts[key] = out
            self.n_casts += 1
        return self.casts[key]

    def retype(self, node: onnx.NodeProto, target: int) -> None:
        """Append ``node`` computing in ``target``: its float inputs cast to it, its float outputs typed as it."""
        if node.op_type not in _ANY_INPUT_OPS:
            for j, name in enumerate(node.input):
                if name and self.types.get(name) in _FLOATS and self.types[name] != target:
                    node.input[j] = self.as_type(name, target)
        for out in node.output:
            orig = self.orig_types.get(out)
            self.types[out] = target if orig == FLOAT and node.op_type not in _EXPLICIT_TYPE_OPS else orig
        self.nodes.append(node)

    def cast_outputs_back(self) -> None:
        """keep_io_types: a graph output computed in fp16 is renamed inside and Cast back to fp32 under its name."""
        for out in self.graph.output:
            if self.types.get(out.name) != FLOAT16:
                continue
            inner = f"{out.name}__fp16"
            for node in self.nodes:
                node.input[:] = [inner if i == out.name else i for i in node.input]
                node.output[:] = [inner if o == out.name else o for o in node.output]
            self.nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{out.name}__cast_fp32"))
            self.n_casts += 1

    def install(self) -> None:
        """Put the new nodes into the graph, drop the initializers nothing reads and the stale value infos."""
        graph = self.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        used = {i for n in graph.node for i in n.input}
        kept = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        del graph.value_info[:]


def _precision_report(model: onnx.ModelProto, n_casts: int, blocked_ops: Iterable[str]) -> dict[str, Any]:
    """Nodes with a float output per precision, the fp32 op types, the Casts inserted and the blocked op types."""
    types = _value_types(model)
    precision: Counter[str] = Counter()
    fp32_ops: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type == "Cast" or not any(types.get(o) in _FLOATS for o in node.output):
            continue
        is32 = any(types.get(o) == FLOAT for o in node.output)
        precision["fp32" if is32 else "fp16"] += 1
        if is32:
            fp32_ops[node.op_type] += 1
    return {"nodes_fp16": precision["fp16"], "nodes_fp32": precision["fp32"], "casts_inserted": n_casts,
            "fp32_ops": dict(sorted(fp32_ops.items())), "blocked_op_types": sorted(set(blocked_ops))}

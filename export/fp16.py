"""fp16 ONNX graphs for GPU runtimes, with the numerically sensitive parts kept in fp32.

TensorRT 11 builds every network strongly typed, so an fp16 engine comes from an fp16 ONNX graph in which the ops
that must stay fp32 already are (DESIGN.md §8). The conversion here (written with ``onnx.helper``, no extra
dependency) keeps graph inputs and outputs fp32 and runs in fp32:

- ops of ``blocked_ops`` (LayerNorm, Softmax, reductions, normalisation, Div/Pow/Sqrt, TopK, Floor, ...);
- the producer of every ``TopK``'s input (the selection scores);
- the sampling arithmetic: the elementwise ``Mul/Add/Sub`` fed, through data-movement ops only, by a ``Gather`` of
  computed (non-initializer) float data with a non-scalar index — in RAP the trilinear interpolation of the ASA warp.

Everything else that computes in float (MatMul, Gemm, Conv, Erf, ...) runs in fp16; Cast nodes are inserted where
a value crosses between the two, and fp32 initializers feeding fp16 nodes get an fp16 copy.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
_FLOATS = (FLOAT, FLOAT16)
# Ops whose output type is set by an attribute, not by their inputs: their outputs keep their original type.
_EXPLICIT_TYPE_OPS = {"Cast", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike",
                      "RandomUniformLike", "Multinomial", "Constant"}
# Ops that accept any input type (no Cast needed in front of them).
_ANY_INPUT_OPS = {"Shape", "Size", "Cast", "CastLike"}
_DATA_MOVEMENT = {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity", "Flatten", "Expand", "Slice",
                  "Gather", "GatherElements", "GatherND", "Concat", "Tile", "Split"}
_SAMPLING_ARITHMETIC = {"Mul", "Add", "Sub", "Neg"}
_GATHERS = {"Gather", "GatherElements", "GatherND"}
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


def fp32_node_names(model: onnx.ModelProto, blocked_ops: Iterable[str]) -> set[str]:
    """Names of the nodes that stay fp32 (see the module docstring); every node must have a unique name."""
    graph = model.graph
    blocked_ops = set(blocked_ops)
    initializers = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    types, ranks = _value_info(model)
    keep = {n.name for n in graph.node if n.op_type in blocked_ops}
    for n in graph.node:  # TopK scores: walk up through data movement to the op that computes them
        if n.op_type == "TopK":
            src = producer.get(n.input[0])
            while src is not None and src.op_type in _DATA_MOVEMENT:
                keep.add(src.name)
                src = producer.get(src.input[0])
            if src is not None:
                keep.add(src.name)
    # Sampling arithmetic: from gathers of computed float data at many positions (index rank >= 1; a scalar index,
    # as in attention's q/k/v split or the CLS token, only slices), through data movement and elementwise arithmetic.
    frontier = [n for n in graph.node if n.op_type in _GATHERS and n.input[0] not in initializers
                and types.get(n.input[0]) == FLOAT and ranks.get(n.input[1], 1) >= 1]
    seen: set[str] = set()
    while frontier:
        n = frontier.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        for out in n.output:
            for c in consumers.get(out, []):
                if c.op_type in _DATA_MOVEMENT or c.op_type in _SAMPLING_ARITHMETIC:
                    keep.add(c.name)
                    frontier.append(c)
    return keep


def convert_to_fp16(model: onnx.ModelProto, blocked_ops: Iterable[str]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Return ``(fp16 model, report)``: float compute in fp16 except the fp32 set; I/O stays fp32 (keep_io_types).

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

    inits = {i.name: i for i in graph.initializer}
    cur: dict[str, int] = dict(orig_types)  # the type each value has in the converted graph
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    half_inits: dict[str, str] = {}
    n_casts = 0

    def as_type(name: str, target: int) -> str:
        nonlocal n_casts
        if name in inits and cur[name] == FLOAT and target == FLOAT16:
            if name not in half_inits:
                arr = numpy_helper.to_array(inits[name]).astype(np.float32)
                half = numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16),
                                               f"{name}__fp16")
                graph.initializer.append(half)
                half_inits[name] = half.name
                cur[half.name] = FLOAT16
            return half_inits[name]
        key = (name, target)
        if key not in casts:
            out = f"{name}__to_{'fp16' if target == FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=target, name=f"{out}__cast"))
            cur[out] = target
            casts[key] = out
            n_casts += 1
        return casts[key]

    for node in graph.node:
        target = FLOAT if node.name in fp32_nodes else FLOAT16
        if node.op_type not in _ANY_INPUT_OPS:
            for j, name in enumerate(node.input):
                if name and cur.get(name) in _FLOATS and cur[name] != target:
                    node.input[j] = as_type(name, target)
        for out in node.output:
            orig = orig_types.get(out)
            cur[out] = target if orig == FLOAT and node.op_type not in _EXPLICIT_TYPE_OPS else orig
        new_nodes.append(node)

    for out in graph.output:  # keep_io_types: outputs stay fp32
        if cur.get(out.name) == FLOAT16:
            inner = f"{out.name}__fp16"
            for node in new_nodes:
                node.input[:] = [inner if i == out.name else i for i in node.input]
                node.output[:] = [inner if o == out.name else o for o in node.output]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"{out.name}__cast_fp32"))
            n_casts += 1

    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input}
    kept_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)

    types = _value_types(model)
    precision = Counter()
    fp32_ops = Counter()
    for node in model.graph.node:
        if node.op_type == "Cast" or not any(types.get(o) in _FLOATS for o in node.output):
            continue
        is32 = any(types.get(o) == FLOAT for o in node.output)
        precision["fp32" if is32 else "fp16"] += 1
        if is32:
            fp32_ops[node.op_type] += 1
    report = {"nodes_fp16": precision["fp16"], "nodes_fp32": precision["fp32"], "casts_inserted": n_casts,
              "fp32_ops": dict(sorted(fp32_ops.items())), "blocked_op_types": sorted(set(blocked_ops))}
    return model, report

"""Structural checks of an exported graph (DESIGN.md §7): checker, shape inference, forbidden and required ops, I/O.

:func:`check_graph` returns a report dict with a ``problems`` list (empty when the graph passed); the caller writes
it into ``parity.json`` and fails the command with :class:`~rap_deploy.errors.CheckFailedError` if any graph has
problems.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from rap_deploy.export.export_config import FORBIDDEN_OPS, INT_ARG_OPS, REQUIRED_OPS, GraphSpec

_INT_TYPES = {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
              TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64}


def dtype_name(elem_type: int) -> str:
    """numpy-style name of an ONNX element type (``float32``, ``int32``, ``float16``, ...)."""
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def value_shape(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """The shape of a graph value: ints for static dims, names for symbolic ones, ``None`` for unknown."""
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return dims


def io_record(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """``{"inputs": [{name, shape, dtype}], "outputs": [...]}`` as declared in ``model``'s graph."""
    init = {i.name for i in model.graph.initializer}

    def rec(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        return {"name": vi.name, "shape": value_shape(vi), "dtype": dtype_name(vi.type.tensor_type.elem_type)}

    return {"inputs": [rec(v) for v in model.graph.input if v.name not in init],
            "outputs": [rec(v) for v in model.graph.output]}


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op type → count over the graph and its subgraphs."""
    return dict(sorted(Counter(n.op_type for n in _all_nodes(model.graph)).items()))


def check_graph(path: str | Path, spec: GraphSpec, opset: int, precision: str = "fp32") -> dict[str, Any]:
    """Check the ONNX file ``path`` against the contract ``spec``; returns a report with a ``problems`` list.

    Runs ``onnx.checker.check_model(full_check=True)``, strict shape inference (types and shapes must be
    consistent with the declared I/O), and verifies: the default-domain opset equals ``opset``; no forbidden op
    (GridSample, NonZero, control flow, ...), no ArgMax/ArgMin over integers; the required ops (TopK in
    ``asa_head``, with a constant k); input and output names, dtypes and shapes equal to ``spec`` (fp16 graphs too:
    their I/O stays fp32). Never raises for a bad graph: every finding goes into ``problems``.
    """
    path = Path(path)
    report: dict[str, Any] = {"file": path.name, "precision": precision}
    model, inferred, problems = _validate(path, report)
    problems += _opset_findings(path.name, model, opset, report)
    problems += _op_findings(path.name, model, inferred, spec, report)
    io = io_record(model)
    report.update(io)
    problems += _compare_io(path.name, "input", io["inputs"], spec.inputs)
    problems += _compare_io(path.name, "output", io["outputs"], spec.outputs)
    if report["shape_inference"] == "ok":
        problems += _compare_io(path.name, "inferred output", io_record(inferred)["outputs"], spec.outputs)
    report["problems"] = problems
    report["passed"] = not problems
    return report


def _validate(path: Path, report: dict[str, Any]) -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]]:
    """The ONNX checker (full check) and strict shape inference on ``path``: records ``checker`` and
    ``shape_inference`` in ``report``; returns the model, the shape-inferred model (the model itself when inference
    failed) and the problems found."""
    problems: list[str] = []
    try:
        onnx.checker.check_model(str(path), full_check=True)
        report["checker"] = "ok"
    except Exception as exc:  # onnx raises several types; all mean the same: invalid graph
        report["checker"] = f"failed: {_short(exc)}"
        problems.append(f"{path.name}: onnx.checker failed: {_short(exc)}")
    model = onnx.load(str(path), load_external_data=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        report["shape_inference"] = "ok"
    except Exception as exc:
        inferred = model
        report["shape_inference"] = f"failed: {_short(exc)}"
        problems.append(f"{path.name}: shape inference failed: {_short(exc)}")
    return model, inferred, problems


def _opset_findings(name: str, model: onnx.ModelProto, opset: int, report: dict[str, Any]) -> list[str]:
    """Records the default-domain ``opset`` and the IR version in ``report``; returns the problems: another opset, an
    IR version older than the opsets need, another domain."""
    problems = []
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    report["opset"] = opsets.get("ai.onnx")
    if report["opset"] != opset:
        problems.append(f"{name}: opset {report['opset']}, expected {opset}")
    report["ir_version"] = model.ir_version
    try:  # onnx's checker accepts an IR version older than the opset's (IR 3 with opset 19); runtimes may not
        needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except ValueError:
        needed = None
    if needed is not None and model.ir_version < needed:
        problems.append(f"{name}: IR version {model.ir_version} is older than its opsets need ({needed})")
    if set(opsets) - {"ai.onnx"}:
        problems.append(f"{name}: uses non-standard op domains {sorted(set(opsets) - {'ai.onnx'})}")
    return problems


def _op_findings(name: str, model: onnx.ModelProto, inferred: onnx.ModelProto, spec: GraphSpec,
                 report: dict[str, Any]) -> list[str]:
    """Records the op counts, forbidden and required ops in ``report``; returns the problems: forbidden ops (and
    ArgMax/ArgMin over integers), required ops missing, a TopK whose k is computed."""
    problems = []
    counts = op_counts(model)
    report["ops"] = counts
    report["nodes"] = sum(counts.values())
    forbidden = sorted(op for op in counts if op in FORBIDDEN_OPS)
    types = _types(inferred)
    for node in _all_nodes(model.graph):
        if node.op_type in INT_ARG_OPS and types.get(node.input[0]) in _INT_TYPES:
            forbidden.append(f"{node.op_type} over {dtype_name(types[node.input[0]])} ({node.name})")
    report["forbidden_ops"] = forbidden
    if forbidden:
        problems.append(f"{name}: forbidden ops {forbidden}")
    required = REQUIRED_OPS.get(spec.name, ())
    missing = [op for op in required if op not in counts]
    report["required_ops"] = {op: counts.get(op, 0) for op in required}
    if missing:
        problems.append(f"{name}: required ops missing: {missing}")
    if "TopK" in counts:
        constants = {i.name for i in model.graph.initializer} | {
            o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
        dynamic_k = [n.name for n in model.graph.node if n.op_type == "TopK" and n.input[1] not in constants]
        if dynamic_k:
            problems.append(f"{name}: TopK with a computed k (must be a constant): {dynamic_k}")
    return problems


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {i.name: i.data_type for i in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _compare_io(file: str, kind: str, actual: list[dict[str, Any]], expected) -> list[str]:
    problems = []
    if [a["name"] for a in actual] != [e.name for e in expected]:
        return [f"{file}: {kind} names {[a['name'] for a in actual]}, expected {[e.name for e in expected]}"]
    for a, e in zip(actual, expected, strict=True):
        if a["dtype"] != e.dtype:
            problems.append(f"{file}: {kind} '{e.name}' has dtype {a['dtype']}, expected {e.dtype}")
        if len(a["shape"]) != len(e.shape) or any((isinstance(x, int) or isinstance(y, int)) and x != y
                                                  for x, y in zip(a["shape"], e.shape, strict=True)):
            problems.append(f"{file}: {kind} '{e.name}' has shape {a['shape']}, expected {list(e.shape)}")
    return problems


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "")

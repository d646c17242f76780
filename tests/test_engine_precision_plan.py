"""The FP16 precision plan computed from the real exported micro graphs (what TensorRT keeps in FP32)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from rap_deploy.engines.trt_plan import (
    LAYERNORM,
    SAMPLING,
    SELECTION,
    SOFTMAX,
    NodeMatcher,
    fp16_graph_violations,
    plan_for_file,
)


@pytest.fixture(scope="module")
def plans(micro_ort_engines):
    export = micro_ort_engines["export"]
    return {g: plan_for_file(export / f"{g}.onnx", g) for g in ("video_encoder", "text_encoder", "asa_head")}


def _ops(path):
    return {n.name: n.op_type for n in onnx.load(str(path)).graph.node}


def test_video_encoder_keeps_layernorm_softmax_and_normalisation_fp32(plans, micro_ort_engines):
    ops = _ops(micro_ort_engines["export"] / "video_encoder.onnx")
    plan = plans["video_encoder"]
    ln = {n for n, op in ops.items() if op == "LayerNormalization"}
    # ln_pre, ln_post and ln_1/ln_2 of both residual blocks of rap-micro
    assert len(ln) == 6 and all(plan.fp32[n] == LAYERNORM for n in ln)
    assert any("ln_post" in n for n in ln) and any("ln_pre" in n for n in ln)
    assert all(plan.fp32[n] == SOFTMAX for n, op in ops.items() if op == "Softmax")
    assert all(n in plan.fp32 for n, op in ops.items() if op.startswith("Reduce"))
    # the heavy compute is left to FP16: every weight MatMul and the patch-embedding convolution
    matmuls = [n for n, op in ops.items() if op in ("MatMul", "Gemm", "Conv")]
    assert matmuls and not any(n in plan.fp32 for n in matmuls)
    assert plan.compute_nodes > len(plan.fp32)


def test_asa_head_keeps_selection_fp32(plans, micro_ort_engines):
    graph = onnx.load(str(micro_ort_engines["export"] / "asa_head.onnx")).graph
    ops = {n.name: n.op_type for n in graph.node}
    plan = plans["asa_head"]
    topk = [n for n in graph.node if n.op_type == "TopK"]
    assert len(topk) == 1 and plan.fp32[topk[0].name] == SELECTION
    scores = next(n for n in graph.node if topk[0].input[0] in n.output)
    while scores.op_type in ("Reshape", "Transpose", "Squeeze", "Unsqueeze"):  # up to the text x patch product
        scores = next(n for n in graph.node if scores.input[0] in n.output)
    assert scores.op_type == "MatMul" and plan.fp32[scores.name] == SELECTION
    assert all(plan.fp32[n] == SOFTMAX for n, op in ops.items() if op == "Softmax")
    # the warp moved to the video encoder (index time): no sampling per query, and only the output projection
    assert not any(r == SAMPLING for r in plan.fp32.values())
    projections = [n for n, op in ops.items() if op == "MatMul" and "proj" in n]
    assert len(projections) == 1 and not any(n in plan.fp32 for n in projections)


def test_video_encoder_keeps_the_asa_warp_fp32(plans, micro_ort_engines):
    """The warp of the keys and values (one volume) runs in the video encoder: 3 separable linear passes, each two
    gathers, two weights and a blend. All three are in the plan: the two spatial passes gather at constant positions,
    the temporal pass at positions clamped to each video's valid frames (computed from frame_mask), which the plan's
    index-arithmetic rule follows; the export's fp16 graph keeps them fp32 too (checked below)."""
    from rap_deploy.export.export_config import FP16_BLOCKED_OPS
    from rap_deploy.export.fp16 import convert_to_fp16

    path = micro_ort_engines["export"] / "video_encoder.onnx"
    ops = _ops(path)
    sampling = [n for n, r in plans["video_encoder"].fp32.items() if r == SAMPLING]
    assert sum(ops[n] == "Add" for n in sampling) == 3
    assert sum(ops[n] == "Gather" for n in sampling) == 6
    assert sum(ops[n] == "Mul" for n in sampling) >= 6  # the two weights of each pass (and the helpers computing them)
    half, _ = convert_to_fp16(onnx.load(str(path)), FP16_BLOCKED_OPS)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*half.graph.value_info, *half.graph.output)}
    blends = [n for n in half.graph.node if n.op_type == "Add" and all(
        (p := next((m for m in half.graph.node if i in m.output), None)) is not None and p.op_type == "Mul"
        for i in n.input)]
    warp_blends = [n for n in blends if any(types.get(o) == onnx.TensorProto.FLOAT for o in n.output)]
    assert len(warp_blends) >= 3  # time, rows and cols all blend in fp32 in the fp16 graph


def test_tensorrt_layer_names_map_to_the_planned_nodes(plans):
    plan = plans["video_encoder"]
    matcher = NodeMatcher(plan.node_names)
    node = next(n for n, r in plan.fp32.items() if r == SAMPLING)
    assert matcher.owner(node) == node
    assert matcher.owner(f"{node}_output_0") == node
    assert matcher.owner("fused", f"[ONNX Layer: {node}]") == node


def test_export_fp16_graph_keeps_the_plan_fp32(plans, micro_ort_engines, tmp_path):
    """TensorRT 11 builds from the export's fp16 graph: every planned node must compute in fp32 there."""
    from rap_deploy.export.export_config import FP16_BLOCKED_OPS
    from rap_deploy.export.fp16 import convert_to_fp16

    for g in ("video_encoder", "asa_head"):
        model = onnx.load(str(micro_ort_engines["export"] / f"{g}.onnx"))
        half, _ = convert_to_fp16(model, FP16_BLOCKED_OPS)
        check = fp16_graph_violations(half, plans[g])
        assert check["fp16_nodes"] > 0 and check["violations"] == [], (g, check)
        # a conversion that ignores the plan (nothing blocked) is caught
        naive, _ = convert_to_fp16(model, ())
        bad = fp16_graph_violations(naive, plans[g])
        assert bad["violations"], g
    fp32_graph = onnx.load(str(micro_ort_engines["export"] / "text_encoder.onnx"))
    assert fp16_graph_violations(fp32_graph)["fp16_nodes"] == 0


def _runtime_fp32_compute(model):
    """Nodes of ``model`` that compute in fp32 at run time (not casts, not data movement, not constant-folded)."""
    from rap_deploy.export.precision_plan import DATA_MOVEMENT, GraphIndex, infer_types

    g = GraphIndex(infer_types(model))
    return {n.name for n in g.nodes if n.op_type != "Cast" and n.op_type not in DATA_MOVEMENT
            and any(g.dtypes.get(o) == onnx.TensorProto.FLOAT for o in n.output)
            and not all(g.is_const(o) for o in n.output)}


def test_one_precision_map_for_the_fp16_graph_and_tensorrt_10(plans, micro_ort_engines):
    """Defect 7: the fp16 graph (TensorRT 11) computes in fp32 exactly the plan's nodes TensorRT 10 pins."""
    from rap_deploy.export.fp16 import convert_to_fp16
    from rap_deploy.export.precision_plan import GraphIndex, infer_types

    for g, plan in plans.items():
        model = onnx.load(str(micro_ort_engines["export"] / f"{g}.onnx"))
        index = GraphIndex(infer_types(model))
        pinned = {n.name for n in index.nodes if n.name in set(plan.fp32_tensors.values())
                  and not all(index.is_const(o) for o in n.output)}
        half, _ = convert_to_fp16(model)
        assert pinned and _runtime_fp32_compute(half) == pinned, g


def _warp_graph(name: str) -> onnx.ModelProto:
    """A tiny graph with the ASA warp's shape of computation, as it sits in the video encoder after index-time
    precompute: positions clamped to each video's valid frames (from frame_mask), floor, gather, linear blend."""
    from onnx import TensorProto as T
    from onnx import helper as h

    nodes = [
        h.make_node("MatMul", ["x", "w"], ["k"], name="/asa/k_proj/MatMul"),
        h.make_node("ReduceSum", ["frame_mask", "axis1"], ["n_valid"], name="/asa/ReduceSum", keepdims=1),
        h.make_node("Sub", ["n_valid", "one"], ["last"], name="/asa/Sub"),
        h.make_node("Add", ["t", "delta"], ["pos_raw"], name="/asa/Add_pos"),
        h.make_node("Min", ["pos_raw", "last"], ["pos"], name="/asa/Min"),
        h.make_node("Floor", ["pos"], ["pos0"], name="/asa/Floor"),
        h.make_node("Sub", ["pos", "pos0"], ["frac"], name="/asa/Sub_frac"),
        h.make_node("Cast", ["pos0"], ["idx"], name="/asa/Cast", to=T.INT64),
        h.make_node("Gather", ["k", "idx"], ["k0"], name="/asa/Gather", axis=1),
        h.make_node("Mul", ["k0", "frac"], ["blend"], name="/asa/Mul_blend"),
        h.make_node("Add", ["blend", "k"], ["warped"], name="/asa/Add_blend"),
        h.make_node("Div", ["warped", "scale"], ["scaled"], name="/asa/Div_const"),
        h.make_node("ReduceL2", ["scaled", "axis2"], ["norm"], name="/norm/ReduceL2", keepdims=1),
        h.make_node("Div", ["scaled", "norm"], ["out"], name="/norm/Div"),
    ]
    inits = [onnx.numpy_helper.from_array(v, n) for n, v in {
        "w": np.full((4, 4), 0.1, np.float32), "axis1": np.array([1], np.int64), "axis2": np.array([2], np.int64),
        "one": np.array(1.0, np.float32), "t": np.arange(3, dtype=np.float32).reshape(1, 3),
        "delta": np.array(0.5, np.float32), "scale": np.array(2.0, np.float32)}.items()]
    graph = h.make_graph(nodes, name, [h.make_tensor_value_info("x", T.FLOAT, ["batch", 3, 4]),
                                       h.make_tensor_value_info("frame_mask", T.FLOAT, ["batch", 3])],
                         [h.make_tensor_value_info("out", T.FLOAT, None)], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("graph", ["video_encoder", "asa_head"])
def test_plan_finds_the_warp_wherever_it_sits(graph):
    """Index arithmetic from frame_mask, the sampling blend, L2 norms and computed divisors are found by op type and
    data flow, not by the graph's name; a weight MatMul and a division by a constant stay fp16."""
    from rap_deploy.export.precision_plan import INDEX, NORMALIZE, REDUCTION, precision_plan

    plan = precision_plan(_warp_graph(graph), graph)
    for node in ("/asa/ReduceSum", "/asa/Sub", "/asa/Min", "/asa/Floor", "/asa/Sub_frac"):
        assert node in plan.fp32, node
    assert plan.fp32["/asa/Min"] == INDEX and plan.fp32["/asa/Sub"] == INDEX
    assert plan.fp32["/asa/Mul_blend"] == SAMPLING and plan.fp32["/asa/Add_blend"] == SAMPLING
    assert plan.fp32["/asa/Gather"] == SAMPLING
    assert plan.fp32["/norm/ReduceL2"] == REDUCTION and plan.fp32["/norm/Div"] == NORMALIZE
    assert "/asa/k_proj/MatMul" not in plan.fp32 and "/asa/Div_const" not in plan.fp32

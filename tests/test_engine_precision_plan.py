"""The FP16 precision plan computed from the real exported micro graphs (what TensorRT keeps in FP32)."""

from __future__ import annotations

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
    """The warp of the keys and values (one volume) runs in the video encoder: 3 separable linear passes. The two
    spatial passes gather at constant positions and are in the plan; the temporal pass gathers at positions clamped
    to each video's valid frames (computed from frame_mask), so the plan's constant-position rule does not pin it,
    and the export's fp16 graph keeps it fp32 by its own gather rule (checked below)."""
    from rap_deploy.export.export_config import FP16_BLOCKED_OPS
    from rap_deploy.export.fp16 import convert_to_fp16

    path = micro_ort_engines["export"] / "video_encoder.onnx"
    ops = _ops(path)
    sampling = [n for n, r in plans["video_encoder"].fp32.items() if r == SAMPLING]
    assert sum(ops[n] == "Add" for n in sampling) == 2
    assert sum(ops[n] == "Gather" for n in sampling) == 4 and sum(ops[n] == "Mul" for n in sampling) == 4
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

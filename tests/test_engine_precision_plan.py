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


def test_asa_head_keeps_selection_and_sampling_fp32(plans, micro_ort_engines):
    graph = onnx.load(str(micro_ort_engines["export"] / "asa_head.onnx")).graph
    ops = {n.name: n.op_type for n in graph.node}
    plan = plans["asa_head"]
    topk = [n for n in graph.node if n.op_type == "TopK"]
    assert len(topk) == 1 and plan.fp32[topk[0].name] == SELECTION
    scores = next(n for n in graph.node if topk[0].input[0] in n.output)  # the text x patch product
    assert plan.fp32[scores.name] == SELECTION
    sampling = [n for n, r in plan.fp32.items() if r == SAMPLING]
    # trilinear warp = 3 separable linear passes (time, rows, cols) on keys and on values: 6 blends of 2 gathers
    assert sum(ops[n] == "Add" for n in sampling) == 6
    assert sum(ops[n] == "Gather" for n in sampling) == 12 and sum(ops[n] == "Mul" for n in sampling) == 12
    assert all(plan.fp32[n] == SOFTMAX for n, op in ops.items() if op == "Softmax")
    projections = [n for n, op in ops.items() if op == "MatMul" and "proj" in n]
    assert len(projections) == 4 and not any(n in plan.fp32 for n in projections)


def test_tensorrt_layer_names_map_to_the_planned_nodes(plans):
    plan = plans["asa_head"]
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

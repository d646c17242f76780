"""TensorRT build plan without TensorRT: profiles, layer matching, inspector parsing, compatibility, targets."""

from __future__ import annotations

import pytest

from rap_deploy.engines.build import engine_name, resolve_target
from rap_deploy.engines.trt_plan import (
    DEFAULT_RANGES,
    AxisRange,
    NodeMatcher,
    PrecisionPlan,
    ProfileOptions,
    build_mode,
    check_fp16_engine,
    engine_mismatches,
    layer_keeps_fp32,
    layer_precisions,
    layer_type_needs_fp32,
    profile_ranges,
    profile_shapes,
    tensor_dtype,
)
from rap_deploy.errors import CheckFailedError, UsageError

VIDEO_INPUTS = [{"name": "frames", "shape": ["batch", 4, 3, 32, 32], "dtype": "float32"},
                {"name": "frame_mask", "shape": ["batch", 4], "dtype": "float32"}]
ASA_INPUTS = [{"name": "text_emb", "shape": ["queries", 32], "dtype": "float32"},
              {"name": "frame_emb", "shape": ["videos", 4, 32], "dtype": "float32"},
              {"name": "patch_tokens", "shape": ["videos", 4, 16, 32], "dtype": "float16"},
              {"name": "asa_tokens", "shape": ["videos", 4, 16, 48], "dtype": "float32"}]


def test_default_profiles_cover_every_graph_and_axis():
    ranges = profile_ranges()
    assert set(ranges) == {"video_encoder", "text_encoder", "asa_head"}
    assert ranges["video_encoder"]["batch"] == AxisRange(*DEFAULT_RANGES["video_encoder"]["batch"])
    assert set(ranges["asa_head"]) == {"queries", "videos"}
    assert ranges["asa_head"]["queries"].max == 32 and ranges["asa_head"]["videos"].max == 64


def test_profile_options_fill_each_other():
    r = profile_ranges(ProfileOptions(max_batch=4), ["video_encoder", "text_encoder"])
    assert r["video_encoder"]["batch"] == AxisRange(1, 4, 4)
    assert r["text_encoder"]["batch"] == AxisRange(1, 4, 4)
    r = profile_ranges(ProfileOptions(min_batch=2, opt_batch=16, max_batch=64, query_block=8, video_block=16))
    assert r["video_encoder"]["batch"] == AxisRange(2, 16, 64)
    assert r["asa_head"]["queries"] == AxisRange(1, 8, 8) and r["asa_head"]["videos"] == AxisRange(1, 16, 16)
    # a large minimum lifts the default opt/max with it
    assert profile_ranges(ProfileOptions(min_batch=40), ["video_encoder"])["video_encoder"]["batch"] == \
        AxisRange(40, 40, 40)


def test_impossible_profiles_are_usage_errors():
    with pytest.raises(UsageError, match="min <= opt <= max"):
        profile_ranges(ProfileOptions(min_batch=8, max_batch=4))
    with pytest.raises(UsageError, match="min <= opt <= max"):
        profile_ranges(ProfileOptions(opt_batch=0))
    with pytest.raises(UsageError, match="unknown graph"):
        profile_ranges(None, ["image_encoder"])


def test_profile_shapes_from_manifest_inputs():
    ranges = profile_ranges(ProfileOptions(min_batch=1, opt_batch=2, max_batch=8, query_block=4, video_block=6))
    video = profile_shapes("video_encoder", VIDEO_INPUTS, ranges["video_encoder"])
    assert video["frames"] == {"min": [1, 4, 3, 32, 32], "opt": [2, 4, 3, 32, 32], "max": [8, 4, 3, 32, 32]}
    assert video["frame_mask"]["max"] == [8, 4]
    asa = profile_shapes("asa_head", ASA_INPUTS, ranges["asa_head"])
    assert asa["text_emb"]["max"] == [4, 32]
    assert asa["frame_emb"]["max"] == [6, 4, 32] and asa["patch_tokens"]["opt"] == [6, 4, 16, 32]
    assert asa["asa_tokens"] == {"min": [1, 4, 16, 48], "opt": [6, 4, 16, 48], "max": [6, 4, 16, 48]}


def test_text_profile_covers_the_tokens_axis():
    ranges = profile_ranges(ProfileOptions(max_batch=8), ["text_encoder"], context_length=32)["text_encoder"]
    assert ranges["tokens"] == AxisRange(1, 16, 32)
    inputs = [{"name": "input_ids", "shape": ["batch", "tokens"]}, {"name": "eot", "shape": ["batch"]}]
    text = profile_shapes("text_encoder", inputs, ranges)
    assert text["input_ids"] == {"min": [1, 1], "opt": [8, 16], "max": [8, 32]}
    assert text["eot"] == {"min": [1], "opt": [8], "max": [8]}
    # an export from before the axis was dynamic keeps its static [B, L]
    assert profile_shapes("text_encoder", [{"name": "input_ids", "shape": ["batch", 32]}], ranges)["input_ids"][
        "min"] == [1, 32]
    assert "tokens" not in profile_ranges(None, ["text_encoder"])["text_encoder"]


def test_profile_shapes_refuse_static_batch_and_extra_symbolic_dims():
    ranges = profile_ranges()["video_encoder"]
    with pytest.raises(UsageError, match="static first dimension"):
        profile_shapes("video_encoder", [{"name": "frames", "shape": [2, 4, 3, 32, 32]}], ranges)
    with pytest.raises(UsageError, match="symbolic dimensions"):
        profile_shapes("video_encoder", [{"name": "frames", "shape": ["batch", "T", 3, 32, 32]}], ranges)
    with pytest.raises(UsageError, match="no profile axis"):
        profile_shapes("video_encoder", [{"name": "pixels", "shape": [None, 3]}], ranges)
    with pytest.raises(UsageError, match="no profile axis"):
        profile_shapes("video_encoder", [{"name": "pixels", "shape": ["queries", 3]}], ranges)


def test_node_matcher_maps_layers_back_to_onnx_nodes():
    m = NodeMatcher(["/asa/Mul_1", "/asa/Mul_10", "/ln_1/LayerNormalization", "node_add_1"])
    assert m.owner("/asa/Mul_10") == "/asa/Mul_10"
    assert m.owner("/asa/Mul_1_output_0_cast") == "/asa/Mul_1"  # helper layer suffixed by the parser
    assert m.owner("/asa/Mul_105") is None  # a different node, not a suffix
    assert m.owner("anonymous_layer_7", "[ONNX Layer: /ln_1/LayerNormalization]") == "/ln_1/LayerNormalization"
    assert m.owner("node_add_1 + /asa/Mul_1") == "node_add_1"


def test_layer_rules_by_type_and_by_node():
    plan = PrecisionPlan("asa_head", fp32={"/asa/Add_6": "asa-sampling"}, node_names=("/asa/Add_6", "/asa/MatMul"))
    m = NodeMatcher(plan.node_names)
    assert layer_type_needs_fp32("LayerType.SOFTMAX") and layer_type_needs_fp32("NORMALIZATION")
    assert not layer_type_needs_fp32("MATRIX_MULTIPLY")
    assert layer_keeps_fp32("REDUCE", "x", "", plan, m) == "type:REDUCE"
    assert layer_keeps_fp32("ELEMENTWISE", "/asa/Add_6", "", plan, m) == "node:asa-sampling"
    assert layer_keeps_fp32("MATRIX_MULTIPLY", "/asa/MatMul", "", plan, m) is None


def _layer(name, ltype, dtype_key, dtype):
    return {"Name": name, "LayerType": ltype, "Inputs": [], "Outputs": [{"Name": f"{name}_out", dtype_key: dtype}]}


def test_inspector_json_of_tensorrt_10_and_11():
    trt10 = {"Layers": [_layer("conv", "CaskConvolution", "Format/Datatype", "Channel major FP16 format where channel"
                               " % 8 == 0"),
                        _layer("ln", "Normalization", "Format/Datatype", "Row major linear FP32 format"),
                        _layer("cast", "Reformat", "Format/Datatype", "Row major linear FP16 format")]}
    s = layer_precisions(trt10)
    assert (s["fp16_layers"], s["fp32_layers"], s["fp16_compute_layers"]) == (2, 1, 1)
    check_fp16_engine("video_encoder", s)
    trt11 = {"Layers": [_layer("mm", "MatrixMultiply", "DataType", "Half"),
                        _layer("sm", "SoftMax", "DataType", "Float")]}
    s = layer_precisions(trt11)
    assert (s["fp16_layers"], s["fp32_layers"]) == (1, 1)
    assert tensor_dtype({"DataType": "Int32", "Format": "Row major linear INT32 format"}) == "int32"


def test_fp16_engine_without_fp16_layers_is_an_error():
    reformat = _layer("r", "Reformat", "Format/Datatype", "Row major linear FP16 format")
    all_fp32 = layer_precisions({"Layers": [_layer("mm", "MatrixMultiply", "DataType", "Float"), reformat]})
    with pytest.raises(CheckFailedError, match="no FP16 layers"):
        check_fp16_engine("text_encoder", all_fp32)
    with pytest.raises(CheckFailedError, match="not detailed"):
        check_fp16_engine("text_encoder", layer_precisions({"Layers": ["mm", "r"]}))


TRT_MANIFEST = {"backend": "tensorrt", "versions": {"tensorrt": "10.9.0.34"},
                "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}


def test_engine_mismatch_rules():
    same = {"tensorrt": "10.9.0.34", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}
    assert engine_mismatches(TRT_MANIFEST, same) == []
    assert "TensorRT 10.9.0.34" in engine_mismatches(TRT_MANIFEST, {**same, "tensorrt": "10.8.0.43"})[0]
    assert "compute capability 9.0" in engine_mismatches(TRT_MANIFEST, {**same, "gpu": {
        "name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}})[0]
    assert "this GPU is NVIDIA H200" in engine_mismatches(TRT_MANIFEST, {**same, "gpu": {
        "name": "NVIDIA H200", "compute_capability": "9.0"}})[0]
    assert "no CUDA GPU" in engine_mismatches(TRT_MANIFEST, {"tensorrt": "10.9.0.34", "gpu": None})[0]


def test_build_mode_by_tensorrt_version():
    assert build_mode("10.13.3.9") == "weakly-typed"
    assert build_mode("11.4.0.1") == "strongly-typed"
    with pytest.raises(UsageError, match="too old"):
        build_mode("8.6.1")


def test_build_targets_from_flags():
    assert resolve_target(None, False, False, None) == ("onnxruntime", "fp32", "cpu")
    assert resolve_target(None, True, False, None) == ("tensorrt", "fp16", "cuda")
    assert resolve_target(None, False, True, None) == ("onnxruntime", "int8", "cpu")
    assert resolve_target("onnxruntime", True, False, None) == ("onnxruntime", "fp16", "cuda")
    assert resolve_target("tensorrt", False, False, None) == ("tensorrt", "fp32", "cuda")
    assert engine_name("onnxruntime", "fp32", "cuda") == "onnxruntime-cuda-fp32"
    assert engine_name("tensorrt", "fp16", "cuda") == "tensorrt-fp16"
    for args, match in [((None, True, True, None), "exclude each other"), (("tensorrt", False, True, None), "int8"),
                        (("tensorrt", True, False, "cpu"), "NVIDIA GPUs only"),
                        (("onnxruntime", False, True, "cuda"), "CPU"), (("onnxruntime", True, False, "cpu"), "CUDA"),
                        (("openvino", False, False, None), "unknown"), ((None, False, False, "tpu"), "unknown")]:
        with pytest.raises(UsageError, match=match):
            resolve_target(*args)


def test_pinned_outputs_are_read_back_through_metadata_and_tensor_names():
    """Defect 3: inspector layers are matched to pinned ONNX nodes by ``[ONNX Layer: ...]`` metadata and tensor
    names; a pinned output that is not FP32 fails, whatever the (Myelin) layer is called."""
    from rap_deploy.engines.trt_plan import is_compute_layer, pinned_output_check, require_pinned_fp32

    plan = PrecisionPlan("video_encoder", fp32={"/ln/LayerNormalization": "layernorm", "/n/Div": "divide-by-computed"},
                         node_names=("/ln/LayerNormalization", "/n/Div", "/mlp/MatMul"),
                         fp32_tensors={"/ln/LayerNormalization_output_0": "/ln/LayerNormalization",
                                       "/n/Div_output_0": "/n/Div"})

    def layer(name, ltype, meta, outs):
        return {"Name": name, "LayerType": ltype, "Metadata": meta,
                "Outputs": [{"Name": n, "Format/Datatype": d} for n, d in outs]}

    good = layer_precisions({"Layers": [
        layer("__myl_MeanSubMul_myl0_1", "kgen", "[ONNX Layer: /ln/LayerNormalization]",
              [("/ln/LayerNormalization_output_0", "Float")]),
        # a fusion of a pinned and a free node: only the pinned node's own output is checked
        layer("__myl_DivMul_myl0_2", "kgen", "[ONNX Layer: /n/Div]\x1f[ONNX Layer: /mlp/MatMul]",
              [("/mlp/MatMul_output_0", "Half")]),
        layer("Reformatting CopyNode", "Reformat", "", [("x", "Row major linear FP16 format")])]})
    check = pinned_output_check(good, plan)
    assert check["violations"] == [] and check["checked"] == 1 and check["hidden_pinned_nodes"] == 1
    require_pinned_fp32("video_encoder", check)
    bad = layer_precisions({"Layers": [layer("fused_anything", "gemm", "[ONNX Layer: /n/Div | Local Function: f]",
                                             [("renamed_by_trt", "Half")])]})
    check = pinned_output_check(bad, plan)
    assert [v["nodes"] for v in check["violations"]] == [["/n/Div"]]
    with pytest.raises(CheckFailedError, match="lower precision: fused_anything \\(gemm\\)"):
        require_pinned_fp32("video_encoder", check)
    # a pinned output whose type the inspector did not print (no execution context: "N/A due to dynamic shapes")
    # fails instead of passing unchecked; an index output (TopK's) is still skipped
    unread = layer_precisions({"Layers": [
        layer("__myl_LN", "kgen", "[ONNX Layer: /ln/LayerNormalization]",
              [("/ln/LayerNormalization_output_0", "N/A due to dynamic shapes")]),
        layer("__myl_TopK", "kgen", "[ONNX Layer: /n/Div]", [("/n/Div_output_0", "Int64")])]})
    check = pinned_output_check(unread, plan)
    assert [(v["tensor"], v["dtype"]) for v in check["violations"]] == [("/ln/LayerNormalization_output_0",
                                                                          "unknown")]
    assert not is_compute_layer("shape_call") and not is_compute_layer("Reformat") and is_compute_layer("kgen")

"""TensorRT build and run code against the API-surface fake of TensorRT 10 and 11 (tests/fake_tensorrt).

Call validity only: the fake exposes the members of the real bindings of each major version and models what the
calls require; it never stands in for TensorRT's numbers (those tests need a GPU: test_tensorrt_engine.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import fake_tensorrt_env

from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError

MAJORS = (10, 11)


@pytest.fixture(scope="module")
def fake_builds(micro_fp16_export, tmp_path_factory):
    """fp16 and fp32 engine folders built through the fake, per major: ``{major: {"fp16": (dir, manifest, build
    record), "fp32": ...}}``; the fp16 builds are validated against PyTorch by build_engine itself (the fp32 ones are
    not, to keep the module fast: the fp32 engines run the export's own graphs)."""
    from rap_deploy.engines.build import build_engine

    out = {}
    for major in MAJORS:
        out[major] = {}
        for precision in ("fp16", "fp32"):
            with fake_tensorrt_env(major) as trt:
                dest = tmp_path_factory.mktemp(f"trt{major}") / f"tensorrt-{precision}"
                manifest = build_engine(micro_fp16_export, backend="tensorrt", fp16=precision == "fp16", out=dest,
                                        workspace=dest.parent / "ws", progress=False, validate=precision == "fp16")
                out[major][precision] = (dest, manifest, dict(trt._knobs["last_build"]))
    return out


def test_fake_exposes_only_the_real_members_of_each_major():
    from fake_tensorrt import make_module
    from fake_tensorrt.surface import SURFACE

    t10, t11 = make_module(10), make_module(11)
    assert t10.BuilderFlag.FP16 and t10.BuilderFlag.OBEY_PRECISION_CONSTRAINTS and t10.BuilderFlag.TF32
    for gone in ("FP16", "OBEY_PRECISION_CONSTRAINTS", "INT8", "BF16"):  # TensorRT 11: strongly typed only
        assert not hasattr(t11.BuilderFlag, gone)
    assert t11.BuilderFlag.TF32 and not hasattr(t11.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert "precision" in SURFACE[10]["ILayer"] and "precision" not in SURFACE[11]["ILayer"]
    assert "set_output_type" not in SURFACE[11]["ILayer"] and "platform_has_fast_fp16" not in SURFACE[11]["Builder"]
    logger = t11.Logger(t11.Logger.WARNING)
    builder = t11.Builder(logger)
    with pytest.raises(AttributeError, match="tensorrt 11.x"):
        builder.platform_has_fast_fp16  # noqa: B018 - the access is the test
    # every public member the fake classes implement exists in the real class of both majors
    from fake_tensorrt import engine, network

    for module in (engine, network):
        for cls in vars(module).values():
            if isinstance(cls, type) and getattr(cls, "_cls", ""):
                public = {n for n in vars(cls) if not n.startswith("_")}
                for major in MAJORS:
                    allowed = SURFACE[major][cls._cls]
                    extra = public - allowed
                    assert not extra or major == 11 and extra <= {"precision", "set_output_type", "get_output_type",
                                                                   "output_type_is_set", "precision_is_set"}, \
                        (cls._cls, major, extra)


@pytest.mark.parametrize("major", MAJORS)
def test_fp16_build_runs_end_to_end_with_valid_calls(major, fake_builds):
    dest, manifest, record = fake_builds[major]["fp16"]
    assert manifest["backend"] == "tensorrt" and manifest["precision"] == "fp16"
    assert manifest["build_mode"] == ("weakly-typed" if major == 10 else "strongly-typed")
    assert manifest["validation"]["passed"]
    assert "TF32" not in record["flags"]  # cleared in every build (defect 2)
    # the text encoder's tokens axis gets its own profile range, 1 … context (32), tuned for a 16-token query
    assert manifest["profiles"]["text_encoder"]["tokens"] == {"min": 1, "opt": 16, "max": 32}
    if major == 10:
        assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(record["flags"]) and not record["strongly_typed"]
        assert record["pinned"]
    else:
        assert record["strongly_typed"] and record["pinned"] == []
    for graph, report in manifest["build"].items():
        assert report["layers"]["fp16_compute_layers"] > 0, graph
        check = report["pinned_check"]
        assert check["violations"] == [] and check["checked"] > 0, (graph, check)
        if major == 11:
            assert report["fp16_graph"]["file"] == f"{graph}.fp16.onnx"


@pytest.mark.parametrize("major", MAJORS)
def test_fp32_builds_clear_tf32_and_stay_fp32(major, fake_builds):
    _, manifest, record = fake_builds[major]["fp32"]
    assert "TF32" not in record["flags"] and "FP16" not in record["flags"]
    # no layer computes in fp16; the video encoder's one fp16 tensor is the Cast that rounds the patch tokens as the
    # index stores them (asa_tokens are computed from what the index holds), a data-movement layer
    assert all(r["layers"]["fp16_compute_layers"] == 0 for r in manifest["build"].values())


def test_tensorrt_11_needs_the_fp16_export_which_the_old_fixture_lacked(micro_ort_engines, tmp_path):
    """Defect 1: the old fixture built fp16 from an export made without --fp16; TensorRT 11 refuses that."""
    from rap_deploy.engines.build import build_engine

    with fake_tensorrt_env(11), pytest.raises(UsageError, match="re-export with `rapdeploy export CKPT --fp16`"):
        build_engine(micro_ort_engines["export"], backend="tensorrt", fp16=True, out=tmp_path / "e",
                     workspace=tmp_path / "ws", progress=False)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("major", MAJORS)
def test_engine_outputs_are_collected_by_name_in_contract_order(major, fake_builds, micro_checkpoint):
    """Defect 5: the fake lists the engine's I/O reversed; results must still be in the contract's order."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.samples import sample_inputs
    from rap_deploy.engines.torch_backend import TorchEngine
    from rap_deploy.graphs import video_outputs

    dest, _, _ = fake_builds[major]["fp16"]
    with fake_tensorrt_env(major):
        engine = load_engine(dest)
        names = [engine.engines["video_encoder"].get_tensor_name(i) for i in range(5)]
        assert names[0] == video_outputs(True)[-1]  # reversed against the graph
        x = sample_inputs(engine.config, videos=3)
        engine.max_batch["video_encoder"] = 2  # split batches too
        outs = engine.encode_video(x.frames, x.frame_mask)
        text = engine.encode_text(x.input_ids, x.eot)
        # the batch ran cut to its longest caption, not the full context
        assert engine.contexts["text_encoder"].get_tensor_shape("input_ids") == (len(x.eot), int(x.eot.max()) + 1)
        engine.query_block, engine.video_block = 1, 2
        sim = engine.asa_similarity(text, *outs[1:])
        with pytest.raises(UsageError, match="expected the re-rank tensors"):
            engine.asa_similarity(text, outs[1])
        engine.close()
    ref = TorchEngine(micro_checkpoint)
    r_outs = ref.encode_video(x.frames, x.frame_mask)
    assert [o.shape for o in outs] == [o.shape for o in r_outs]
    for a, b in zip(outs, r_outs, strict=True):
        assert a.dtype == np.float32 and np.abs(a - b).max() < 2e-2
    assert sim.shape == (len(x.captions), 3)
    np.testing.assert_allclose(sim, ref.asa_similarity(ref.encode_text(x.input_ids, x.eot), *r_outs[1:]), atol=3e-2)


def test_build_load_and_run_use_the_requested_device(micro_fp16_export, tmp_path):
    """Defect 6: device_id becomes the current device for build, deserialisation, contexts and execution."""
    from rap_deploy.engines.build import build_engine
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.samples import sample_inputs

    scopes: list[int] = []
    with fake_tensorrt_env(10, scopes):
        build_engine(micro_fp16_export, backend="tensorrt", fp16=True, out=tmp_path / "e", workspace=tmp_path / "ws",
                     progress=False, device_id=1, validate=False)
        n_build = len(scopes)
        engine = load_engine(tmp_path / "e", device_id=1)
        x = sample_inputs(engine.config, videos=1)
        engine.encode_text(x.input_ids, x.eot)
        n_run = len(scopes)
        engine.close()  # contexts and engines are destroyed on their device too
        assert len(scopes) == n_run + 1 and not engine.contexts and not engine.engines
    assert n_build >= 3 and len(scopes) > n_build and set(scopes) == {1}


def test_unnamed_square_of_reduce_l2_is_pinned(micro_fp16_export):
    """Defect 4: the x*x the parser adds for ReduceL2 has no node name; it feeds a pinned reduce, so it is pinned."""
    from rap_deploy.engines.trt_build import HELPER, apply_precision_plan
    from rap_deploy.engines.trt_plan import plan_for_file

    with fake_tensorrt_env(10) as trt:
        network = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_network(0)
        assert trt.OnnxParser(network, None).parse_from_file(str(micro_fp16_export / "video_encoder.onnx"))
        pinned = apply_precision_plan(trt, network, plan_for_file(micro_fp16_export / "video_encoder.onnx"))
        squares = [network.get_layer(i) for i in range(network.num_layers)
                   if network.get_layer(i).name.startswith("(Unnamed Layer") and network.get_layer(i).metadata == ""
                   and network.get_layer(i).type.name == "ELEMENTWISE"]
        assert len(squares) == 2  # the two ReduceL2 of the video encoder
        for layer in squares:
            assert pinned[layer.name] == HELPER and layer.precision == trt.float32
        # a weight MatMul is not pinned, and constants never are
        assert not any(network.get_layer(i).type.name in ("MATRIX_MULTIPLY", "CONSTANT")
                       for i in range(network.num_layers) if network.get_layer(i).name in pinned)


def test_a_dropped_precision_constraint_fails_the_build(micro_fp16_export, tmp_path):
    """Defect 3: a pinned output that comes out fp16 (a Myelin fusion dropping the constraint) is an error."""
    from rap_deploy.engines.build import build_engine

    with fake_tensorrt_env(10) as trt:
        trt._knobs["drop_constraints"] = {"Div"}
        with pytest.raises(CheckFailedError, match="came out in lower precision.*Div"):
            build_engine(micro_fp16_export, backend="tensorrt", fp16=True, out=tmp_path / "e",
                         workspace=tmp_path / "ws", progress=False)
    assert not (tmp_path / "e").exists()


def test_failure_returns_of_the_api_are_errors(micro_fp16_export, fake_builds, tmp_path):
    """Also: add_optimization_profile / set_tensor_address results are checked; a missing flag is an error."""
    from rap_deploy.engines.build import build_engine
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.samples import sample_inputs
    from rap_deploy.engines.trt_build import set_flag

    with fake_tensorrt_env(11) as trt:
        trt._knobs["profile_index"] = -1
        with pytest.raises(CheckFailedError, match="refused the optimisation profile"):
            build_engine(micro_fp16_export, backend="tensorrt", fp16=True, out=tmp_path / "e",
                         workspace=tmp_path / "ws", progress=False)
        config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
        with pytest.raises(BackendUnavailableError, match="no BuilderFlag.FP16"):
            set_flag(trt, config, "FP16")
    with fake_tensorrt_env(10) as trt:
        engine = load_engine(fake_builds[10]["fp16"][0])
        trt._knobs["refuse_address"] = {"eot"}
        x = sample_inputs(engine.config, videos=1)
        with pytest.raises(CheckFailedError, match="refused the address of text_encoder input eot"):
            engine.encode_text(x.input_ids, x.eot)


def test_bf16_io_is_bound_as_bf16_and_fp8_is_refused():
    """Defect 8: BF16 engine tensors get a bf16 buffer (2 bytes per value) and come back as float32."""
    import torch
    from fake_tensorrt import make_module

    from rap_deploy.engines.tensorrt_backend import _to_numpy, torch_dtype

    trt = make_module(10)
    assert torch_dtype(trt, trt.bfloat16, "x") == torch.bfloat16 and torch_dtype(trt, trt.float16, "x") == torch.half
    values = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    assert values.element_size() == 2 and _to_numpy(values).dtype == np.float32
    np.testing.assert_array_equal(_to_numpy(values), [1.5, -2.25, 3.0])
    with pytest.raises(UsageError, match="FP8"):
        torch_dtype(trt, trt.fp8, "asa_head input x")


def test_engine_with_other_tensor_names_is_refused(fake_builds, tmp_path):
    """An engine whose I/O names are not the contract's (another export version) is refused at load."""
    import shutil

    from rap_deploy.atomic import sha256_file
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import read_manifest, write_manifest

    src = fake_builds[10]["fp32"][0]
    copy = tmp_path / "engine"
    shutil.copytree(src, copy)
    path = copy / "text_encoder.engine"
    data = json.loads(path.read_text())
    data["io"] = [dict(t, name="ids") if t["name"] == "input_ids" else t for t in data["io"]]
    path.write_text(json.dumps(data))
    manifest = read_manifest(copy)
    manifest["graphs"]["text_encoder"]["sha256"] = sha256_file(path)
    manifest["graphs"]["text_encoder"]["bytes"] = path.stat().st_size
    write_manifest(copy, manifest)
    with fake_tensorrt_env(10), pytest.raises(CheckFailedError, match="expects \\['input_ids', 'eot'\\]"):
        load_engine(copy)


def test_a_damaged_timing_cache_is_replaced_by_a_fresh_one(tmp_path):
    """A cache file TensorRT cannot read (it raises, or returns None) starts a fresh cache instead of failing."""
    from rap_deploy.engines.trt_build import _attach_timing_cache

    damaged = tmp_path / "timing.cache"
    damaged.write_bytes(b"\x00garbage")
    with fake_tensorrt_env(10) as trt:
        config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
        _attach_timing_cache(config, damaged)
        assert config.get_timing_cache()._data == b""
        config.create_timing_cache = lambda data, _real=config.create_timing_cache: None if data else _real(data)
        _attach_timing_cache(config, damaged)
        assert config.get_timing_cache()._data == b""


def test_batches_below_the_profile_minimum_are_padded(micro_fp16_export, micro_checkpoint, tmp_path):
    """``--min-batch 4`` builds a profile whose smallest batch is 4; a search of one query, the last partial batch
    of an index and the build's own validation (3 videos) run smaller batches, which the engine pads up to the
    minimum (it raised 'outside the engine's optimisation profile; rebuild with a larger --max-batch')."""
    from rap_deploy.engines.build import build_engine
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.samples import sample_inputs
    from rap_deploy.engines.torch_backend import TorchEngine
    from rap_deploy.engines.trt_plan import ProfileOptions

    with fake_tensorrt_env(10):
        build_engine(micro_fp16_export, backend="tensorrt", out=tmp_path / "e", workspace=tmp_path / "ws",
                     progress=False, profiles=ProfileOptions(min_batch=4, max_batch=8))
        engine = load_engine(tmp_path / "e")
        x = sample_inputs(engine.config, videos=3)
        outs = engine.encode_video(x.frames, x.frame_mask)
        text = engine.encode_text(x.input_ids[:1], x.eot[:1])
        engine.close()
    ref = TorchEngine(micro_checkpoint)
    for a, b in zip(outs, ref.encode_video(x.frames, x.frame_mask), strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4
    np.testing.assert_allclose(text, ref.encode_text(x.input_ids[:1], x.eot[:1]), atol=1e-4)


def test_export_manifest_io_claims_are_checked_against_the_graphs(micro_fp16_export, tmp_path):
    """The TensorRT profile is made from the export manifest's per-graph ``inputs``; an edited or damaged entry (no
    ``inputs``, another shape) passed every manifest check, then the build died with a KeyError traceback or built a
    profile the graph does not have. The entries are now read back against the graphs (exit 1, re-export)."""
    import shutil

    from rap_deploy.engines.build import build_engine
    from rap_deploy.export import read_export_manifest

    export = tmp_path / "export"
    shutil.copytree(micro_fp16_export, export)
    path = export / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["graphs"]["text_encoder"]["inputs"]
    path.write_text(json.dumps(manifest))
    with fake_tensorrt_env(10), pytest.raises(CheckFailedError, match="text_encoder.*inputs"):
        build_engine(export, backend="tensorrt", out=tmp_path / "e", workspace=tmp_path / "ws", progress=False)
    original = json.loads((micro_fp16_export / "manifest.json").read_text())
    original["fp16_graphs"]["asa_head"]["outputs"][0]["shape"] = ["queries", 1]
    path.write_text(json.dumps(original))
    with pytest.raises(CheckFailedError, match="asa_head.*outputs"):
        read_export_manifest(export)


def _edited_engine_copy(src, tmp_path, **changes):
    """A copy of the engine folder ``src`` whose manifest has ``changes`` (key -> value) written over it."""
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(src, copy)
    path = copy / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return copy


@pytest.mark.parametrize("profiles, gpu", [
    ({"video_encoder": {"batch": {"min": 10**12, "opt": 10**12, "max": 10**12}}}, None),  # padded to 10**12 rows
    ({"video_encoder": {"batch": {"min": 1, "opt": 8, "max": 0}}}, None),  # split by range(0, n, 0)
    ({"video_encoder": {"batch": {"min": 1, "opt": 8, "max": "32"}}}, None),
    ({"video_encoder": []}, None),
    ({"text_encoder": {"videos": {"min": 1, "opt": 1, "max": 1}}}, None),
    (None, "NVIDIA H200"),
])
def test_edited_tensorrt_profiles_and_gpu_are_refused_at_load(fake_builds, tmp_path, profiles, gpu):
    """The TensorRT engine splits and pads batches by the manifest's ``profiles``, and its GPU check reads
    ``gpu``: an edited manifest reached them unchecked (a 10**12 minimum allocated a row index of 10**12 before
    TensorRT saw a shape, max 0 and "32" raised ValueError / TypeError tracebacks, a ``gpu`` string an
    AttributeError). Both are checked with the manifest now (exit 1, the folder is damaged)."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import read_manifest

    src = fake_builds[10]["fp32"][0]
    assert read_manifest(src)["profiles"]["video_encoder"]["batch"]["max"] == 32  # the build's own passes
    changes = {"profiles": profiles} if profiles is not None else {"gpu": gpu}
    copy = _edited_engine_copy(src, tmp_path, **changes)
    with fake_tensorrt_env(10), pytest.raises(CheckFailedError, match="profiles|'gpu' is not an object"):
        load_engine(copy)


def test_a_manifest_profile_other_than_the_engines_is_refused(fake_builds, tmp_path):
    """The batch ranges the engine splits and pads by (and a Triton repository is configured with) are the ones the
    engine holds (``get_tensor_profile_shape``); a manifest claiming a larger ``max`` was believed, so a batch of 40
    reached TensorRT unsplit and was refused as 'outside the engine's optimisation profile; rebuild with a larger
    --max-batch'. A claim the engine contradicts is now refused at load (exit 1)."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import read_manifest

    src = fake_builds[10]["fp32"][0]
    profiles = read_manifest(src)["profiles"]
    with fake_tensorrt_env(10):
        engine = load_engine(src)
        assert engine.max_batch["video_encoder"] == 32 and engine.min_batch["text_encoder"] == 1
        assert (engine.query_block, engine.video_block) == (32, 64)
        engine.close()
        profiles["video_encoder"]["batch"]["max"] = 64
        copy = _edited_engine_copy(src, tmp_path, profiles=profiles)
        with pytest.raises(CheckFailedError, match="profile batch .*'max': 64.* engine holds .*'max': 32"):
            load_engine(copy)


def test_an_engine_folder_without_the_asa_head_of_an_asa_model_is_refused(fake_builds, tmp_path):
    """A manifest (and folder) without ``asa_head`` for a model with an ASA head loaded, and its re-rank silently
    became the mean-pooled similarity instead of the model's ASA scores (a missing ``text_encoder`` was a KeyError
    traceback at the first query); as in ONNX Runtime engines, the missing graph is now named at load: an edited
    manifest (exit 1), naming it, the graphs the model runs and the rebuild command."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import read_manifest

    src = fake_builds[10]["fp32"][0]
    manifest = read_manifest(src)
    assert manifest["config"]["use_asa"] and set(manifest["graphs"]) == {"video_encoder", "text_encoder", "asa_head"}
    for gone in ("asa_head", "text_encoder"):
        graphs = {k: v for k, v in manifest["graphs"].items() if k != gone}
        copy = _edited_engine_copy(src, tmp_path / gone, graphs=graphs)
        with fake_tensorrt_env(10), pytest.raises(CheckFailedError) as refused:
            load_engine(copy)
        assert f"lists graphs {sorted(graphs)}, but its config's model runs" in str(refused.value)
        assert "rapdeploy build-engine" in str(refused.value)


@pytest.mark.parametrize("key", ["frames", "context_length"])
def test_a_manifest_config_the_engine_contradicts_is_refused(fake_builds, tmp_path, key):
    """The inputs are checked and shaped by the manifest's model config; one edited to another frame count or context
    length loaded, and TensorRT then refused its inputs (every video for another frame count, a query longer than
    the engine's context) with 'outside the engine's optimisation profile; rebuild with a larger --max-batch' (the
    batch was never the problem). The encoders' inputs are now read back against the config at load (exit 1), as
    ONNX Runtime engines read their graphs' metadata; the refusal names the engine's range instead."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import read_manifest

    src = fake_builds[10]["fp32"][0]
    config = read_manifest(src)["config"]
    config[key] += 1
    copy = _edited_engine_copy(src, tmp_path, config=config)
    with fake_tensorrt_env(10), pytest.raises(CheckFailedError, match="manifest's model config gives"):
        load_engine(copy)


def test_a_tensorrt_engine_whose_export_record_was_edited_is_refused(fake_builds, tmp_path):
    """The export record an engine manifest keeps (``export``) is what serve and triton-repo describe the graphs
    from; an edited one (another config, another preprocessing copy) passed. A TensorRT engine's record is checked
    after the engine opened (it compares the config with its plans first, the precise refusal), triton-repo's at
    validation; exit 1 either way."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import read_manifest, validate_engine_dir

    src = fake_builds[10]["fp32"][0]
    export = read_manifest(src)["export"]
    for n, edited in enumerate(({**export, "config": {**export["config"], "asa_topk": 2}},
                                {**export, "preprocess": {**export["preprocess"], "interpolation": "bilinear"}},
                                {**export, "checkpoint": {**export["checkpoint"], "sha256": "0" * 64}})):
        copy = _edited_engine_copy(src, tmp_path / str(n), export=edited)
        needle = "its 'export.(config|preprocess|checkpoint)' differs"
        with fake_tensorrt_env(10), pytest.raises(CheckFailedError, match=needle):
            load_engine(copy)
        with pytest.raises(CheckFailedError, match=needle):
            validate_engine_dir(copy, runtime=None)
    with fake_tensorrt_env(10):
        assert load_engine(src).backend == "tensorrt"


@pytest.mark.parametrize("major", MAJORS)
def test_the_fake_profile_refuses_an_impossible_range_as_the_binding_does(major):
    """``IOptimizationProfile.set_shape`` raises RuntimeError (pyCore.cpp's PY_ASSERT_RUNTIME_ERROR on
    ``setDimensions``) in 10.x and 11.x; the fake raised ValueError, which code catching the real error would miss."""
    from fake_tensorrt import make_module

    trt = make_module(major)
    profile = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_optimization_profile()
    with pytest.raises(RuntimeError, match="inconsistent"):
        profile.set_shape("frames", (4, 3), (2, 3), (8, 3))
    profile.set_shape("frames", (1, 3), (2, 3), (8, 3))
    assert profile and profile.get_shape("frames")[2] == (8, 3)


@pytest.mark.parametrize("major", MAJORS)
def test_the_fake_answers_shapes_as_dims_as_the_binding_does(major, fake_builds):
    """``get_tensor_shape`` / ``get_tensor_profile_shape`` return ``trt.Dims`` (pyFoundationalTypes.cpp), not tuples:
    a sequence whose ``len()`` is ``nbDims``, unhashable, equal to a tuple of its values; a name that is not an input
    of the profile gets ``Dims{-1}`` (NvInferRuntime.h ``getProfileShape``), on which ``len()`` / ``tuple()`` raise
    ValueError. The fake answered tuples (an output's profile shape even looked valid), so code that used them
    unconverted, hashed them or read an output's profile would pass here and fail on TensorRT."""
    dest, manifest, _ = fake_builds[major]["fp16"]
    cfg = manifest["config"]
    size, frames = cfg["preprocess"]["image_size"], cfg["frames"]
    with fake_tensorrt_env(major) as trt:
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            (dest / "video_encoder.engine").read_bytes())
        lo, opt, hi = engine.get_tensor_profile_shape("frames", 0)
        assert not isinstance(hi, tuple) and hi == (32, frames, 3, size, size) and hi[1:] == (frames, 3, size, size)
        assert engine.get_tensor_shape("frames") == (-1, frames, 3, size, size)
        with pytest.raises(TypeError):
            hash(hi)
        with pytest.raises(IndexError):
            hi[5]
        for name, index in (("video_emb", 0), ("no_such_tensor", 0), ("frames", 1)):
            with pytest.raises(ValueError):
                tuple(engine.get_tensor_profile_shape(name, index)[2])
        context = engine.create_execution_context()
        assert context.get_tensor_shape("frames") == (-1, frames, 3, size, size)
        assert context.set_input_shape("frames", (2, frames, 3, size, size))
        assert context.set_input_shape("frame_mask", (2, frames))
        assert context.get_tensor_shape("video_emb")[0] == 2

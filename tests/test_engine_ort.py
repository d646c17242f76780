"""ONNX Runtime engines of the micro model: parity with PyTorch, int8, manifests and every refusal rule."""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest

from rap_deploy.engines.build import build_engine
from rap_deploy.engines.loader import load_engine
from rap_deploy.engines.manifest import (
    EngineMismatchError,
    check_runtime,
    new_manifest,
    read_manifest,
    validate_engine_dir,
    write_manifest,
)
from rap_deploy.engines.ort_backend import OrtEngine, create_session, runtime_info
from rap_deploy.engines.torch_backend import TorchEngine
from rap_deploy.engines.validate import compare_arrays
from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError
from rap_deploy.export.parity import asa_tokens_given
from rap_deploy.graphs import video_outputs


def synth_inputs(synth_root, config, videos=4):
    """Real preprocessed inputs: decoded synthetic test videos (the data pipeline) and their captions."""
    from rap_deploy.data.datasets import load_split
    from rap_deploy.data.video import decode_video
    from rap_deploy.preprocess import normalize
    from rap_deploy.tokenizer import tokenize

    split = load_split("msrvtt", synth_root, "test", max_frames=config.frames)
    decoded = [decode_video(v.path, split.sampling, config.preprocess) for v in split.videos[:videos]]
    frames = np.stack([normalize(d.frames, config.preprocess).numpy() for d in decoded])
    mask = np.stack([d.mask.astype(np.float32) for d in decoded])
    ids, eot = tokenize(split.captions[:videos], config.tokenizer)
    return frames, mask, ids, eot


@pytest.fixture(scope="module")
def reference(micro_checkpoint):
    return TorchEngine(micro_checkpoint)


@pytest.fixture(scope="module")
def int8_engine_dir(micro_ort_engines, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "onnxruntime-int8"
    build_engine(micro_ort_engines["export"], int8=True, out=out, progress=False)
    return out


def test_fp32_engine_matches_pytorch_within_export_tolerances(micro_ort_engines, reference, synth_root):
    engine = load_engine(micro_ort_engines["fp32"], threads=1)
    assert isinstance(engine, OrtEngine) and engine.provider == "CPUExecutionProvider"
    frames, mask, ids, eot = synth_inputs(synth_root, engine.config)
    ref_v, out_v = reference.encode_video(frames, mask), engine.encode_video(frames, mask)
    assert len(out_v) == len(video_outputs(True)) == 4
    # asa_tokens are computed from the patch tokens as the index stores them (fp16): compare on the engine's own
    ref_v = (*ref_v[:3], asa_tokens_given(reference.model, out_v[2], mask))
    for name, r, o in zip(video_outputs(True), ref_v, out_v, strict=True):
        m = compare_arrays(r, o)
        assert m["max_abs"] <= 1e-4 and m["min_cosine"] >= 0.99999, (name, m)
    ref_t, out_t = reference.encode_text(ids, eot), engine.encode_text(ids, eot)
    m = compare_arrays(ref_t, out_t)
    assert m["max_abs"] <= 1e-4 and m["min_cosine"] >= 0.99999
    # ASA similarity in blocks smaller than the input: 5 texts x 4 videos with 2 x 3 blocks
    engine.query_block, engine.video_block = 2, 3
    texts = np.concatenate([ref_t, ref_t[:1]])
    sim = engine.asa_similarity(texts, *ref_v[1:])
    ref_sim = reference.asa_similarity(texts, *ref_v[1:])
    assert sim.shape == (5, 4) and np.abs(sim - ref_sim).max() <= 1e-4
    info = engine.describe().to_dict()
    assert info["backend"] == "onnxruntime" and info["precision"] == "fp32" and info["versions"]["onnxruntime"]


def test_the_cpu_asa_blocks_are_fitted_to_the_available_memory(micro_ort_engines, monkeypatch):
    """The CPU engine fed its 32 x 64 blocks whatever the memory (20 GB a call at 64 frames on ViT-B/32). The
    blocks are now fitted with the export's per-pair estimate; here the micro model's calls are made to count
    (no unchecked floor) and 2 videos fit per call: the scores are those of the whole block."""
    from rap_deploy.engines import blocks

    engine = load_engine(micro_ort_engines["fp32"], threads=1)
    c = engine.config
    gen = np.random.default_rng(4)
    frames = gen.normal(size=(7, c.frames, 3, c.preprocess.image_size, c.preprocess.image_size)).astype(np.float32)
    rerank = engine.encode_video(frames)[1:]
    text = engine.encode_text(*(np.array(x) for x in ([[49406, 320, 49407]] * 5, [2] * 5)))
    whole = engine.asa_similarity(text, *rerank)
    per_pair, per_video = blocks.model_call_bytes(c, rerank[1].shape)
    monkeypatch.setattr(blocks, "UNCHECKED_CALL_BYTES", 0)
    monkeypatch.setattr("psutil.virtual_memory", lambda: types.SimpleNamespace(
        available=int(2 * (5 * per_pair + per_video) / blocks.ASA_MEMORY_SHARE)))
    calls, run = [], engine._run
    monkeypatch.setattr(engine, "_run", lambda g, feeds: calls.append(len(feeds["patch_tokens"])) or run(g, feeds))
    assert np.abs(engine.asa_similarity(text, *rerank) - whole).max() <= 1e-6  # measured: bit-identical
    assert calls == [2, 2, 2, 1] and engine.video_block == 64


def test_fp32_manifest_records_what_was_built(micro_ort_engines):
    m = validate_engine_dir(micro_ort_engines["fp32"], runtime=runtime_info())
    export = json.loads((micro_ort_engines["export"] / "manifest.json").read_text())
    assert (m["format"], m["backend"], m["precision"], m["device"]) == ("rapdeploy.engine", "onnxruntime", "fp32",
                                                                         "cpu")
    assert m["provider"] == "CPUExecutionProvider" and m["versions"]["onnxruntime"]
    assert set(m["graphs"]) == {"video_encoder", "text_encoder", "asa_head"}
    for name, entry in m["graphs"].items():
        assert entry["source_onnx_sha256"] == export["graphs"][name]["sha256"]
        assert len(entry["sha256"]) == 64
    assert m["checkpoint"]["sha256"] == export["checkpoint"]["sha256"]
    assert m["export"]["format"] == "rapdeploy.export"
    assert m["session"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert m["validation"]["passed"] and m["validation"]["reference"].startswith("pytorch checkpoint")


def test_int8_engine_cosine_on_real_inputs(int8_engine_dir, reference, synth_root):
    m = read_manifest(int8_engine_dir)
    q = m["quantization"]
    assert q["video_encoder"]["quantized"] > 0 and q["text_encoder"]["quantized"] > 0
    # the visual projection and ASA's q/k/v projection (writing asa_tokens) stay fp32
    assert sorted(q["video_encoder"]["excluded"].values()) == ["asa-head", "final-projection"]
    assert set(q["asa_head"]["excluded"].values()) == {"asa-head"}
    engine = load_engine(int8_engine_dir)
    assert engine.describe().precision == "int8"
    frames, mask, ids, eot = synth_inputs(synth_root, engine.config)
    video = compare_arrays(reference.encode_video(frames, mask)[0], engine.encode_video(frames, mask)[0])
    text = compare_arrays(reference.encode_text(ids, eot), engine.encode_text(ids, eot))
    assert video["min_cosine"] >= 0.99 and text["min_cosine"] >= 0.99, (video, text)
    assert video["min_cosine"] < 1.0 - 1e-7  # it really is quantised


def _copy(src, tmp_path, name="engine"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_refuses_tampered_and_missing_engine_files(micro_ort_engines, tmp_path):
    eng = _copy(micro_ort_engines["fp32"], tmp_path)
    path = eng / "text_encoder.onnx"
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckFailedError, match="text_encoder.onnx.*modified after the build"):
        load_engine(eng)
    path.write_bytes(original)
    assert validate_engine_dir(eng)["backend"] == "onnxruntime"
    (eng / "asa_head.onnx").unlink()
    with pytest.raises(CheckFailedError, match="asa_head.onnx.*missing"):
        validate_engine_dir(eng)
    (eng / "manifest.json").unlink()  # an interrupted build: no manifest, not an engine
    with pytest.raises(UsageError, match="not an engine folder"):
        load_engine(eng)


def test_refuses_other_onnxruntime_release_and_missing_provider(micro_ort_engines, tmp_path):
    eng = _copy(micro_ort_engines["fp32"], tmp_path)
    manifest = read_manifest(eng)
    write_manifest(eng, {**manifest, "versions": {**manifest["versions"], "onnxruntime": "1.10.0"}})
    with pytest.raises(EngineMismatchError, match="ONNX Runtime 1.10.0") as err:
        load_engine(eng)
    assert err.value.exit_code == 2
    write_manifest(eng, {**manifest, "provider": "CUDAExecutionProvider", "device": "cuda"})
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        load_engine(eng)
    with pytest.raises(BackendUnavailableError, match="ONNX Runtime"):
        check_runtime(manifest, {})


def test_requested_cuda_provider_is_never_a_silent_cpu_fallback(micro_ort_engines):
    graph = micro_ort_engines["export"] / "text_encoder.onnx"
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider") as err:
        create_session(graph, "CUDAExecutionProvider")
    assert err.value.exit_code == 2
    with pytest.raises(BackendUnavailableError):
        load_engine(micro_ort_engines["export"], device="cuda")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        build_engine(micro_ort_engines["export"], backend="onnxruntime", device="cuda", out="unused", progress=False)


def _trt_engine_folder(tmp_path, export_dir):
    """A TensorRT-format engine folder with its manifest rules under test (the engine bytes are opaque here: manifest
    checks never parse them)."""
    from rap_deploy.engines.manifest import graph_entry
    from rap_deploy.export import read_export_manifest

    eng = tmp_path / "tensorrt-fp16"
    eng.mkdir()
    export = read_export_manifest(export_dir)
    graphs = {}
    for name in export["graphs"]:
        (eng / f"{name}.engine").write_bytes(name.encode() * 64)
        graphs[name] = graph_entry(eng, f"{name}.engine", export_dir / export["graphs"][name]["file"],
                                   export["graphs"][name]["sha256"])
    manifest = new_manifest("tensorrt", "fp16", "cuda", "TensorRT", graphs, export, export_dir,
                            gpu={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
                            profiles={"video_encoder": {"batch": {"min": 1, "opt": 8, "max": 32}}})
    manifest["versions"]["tensorrt"] = "10.9.0.34"
    write_manifest(eng, manifest)
    return eng, manifest


def test_tensorrt_manifest_refusals(micro_ort_engines, tmp_path):
    eng, manifest = _trt_engine_folder(tmp_path, micro_ort_engines["export"])
    here = {"tensorrt": "10.9.0.34", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}
    assert validate_engine_dir(eng, runtime=here)["backend"] == "tensorrt"
    with pytest.raises(EngineMismatchError, match="TensorRT 10.9.0.34.*TensorRT 10.13.3.9"):
        validate_engine_dir(eng, runtime={**here, "tensorrt": "10.13.3.9"})
    with pytest.raises(EngineMismatchError, match="compute capability 9.0.*8.6"):
        validate_engine_dir(eng, runtime={**here, "gpu": {"name": "NVIDIA A10", "compute_capability": "8.6"}})
    with pytest.raises(BackendUnavailableError, match="not installed"):
        validate_engine_dir(eng, runtime={"tensorrt": None, "gpu": None})
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        load_engine(eng)  # this machine: no TensorRT
    (eng / "video_encoder.engine").write_bytes(b"tampered")
    with pytest.raises(CheckFailedError, match="video_encoder.engine"):
        validate_engine_dir(eng, runtime=here)


def test_interrupted_build_leaves_no_engine(micro_ort_engines, tmp_path, monkeypatch):
    import rap_deploy.engines.build as build_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "validate_engine", interrupted)
    out = tmp_path / "engines" / "onnxruntime-fp32"
    with pytest.raises(KeyboardInterrupt):
        build_engine(micro_ort_engines["export"], out=out, progress=False)
    assert not out.exists() and list((tmp_path / "engines").iterdir()) == []


def test_existing_engine_is_replaced_only_with_force(micro_ort_engines, tmp_path):
    out = _copy(micro_ort_engines["fp32"], tmp_path, "onnxruntime-fp32")
    before = read_manifest(out)["created"]
    with pytest.raises(UsageError, match="--force"):
        build_engine(micro_ort_engines["export"], out=out, progress=False)
    manifest = build_engine(micro_ort_engines["export"], out=out, force=True, validate=False, progress=False)
    assert manifest["dir"] == str(out.resolve()) and "validation" not in read_manifest(out)
    assert read_manifest(out)["created"] >= before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnxruntime-fp32"]


def test_torch_engine_refuses_unavailable_precisions(micro_checkpoint):
    with pytest.raises(UsageError, match="fp16 runs only on CUDA"):
        TorchEngine(micro_checkpoint, precision="fp16")
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        TorchEngine(micro_checkpoint, device="cuda")
    engine = load_engine(micro_checkpoint)
    assert isinstance(engine, TorchEngine) and engine.describe().backend == "torch"


def test_torch_engine_refuses_a_gpu_index_this_machine_lacks(micro_checkpoint, monkeypatch):
    """verify --reference-device / bench --torch-device cuda:N with N past the GPU count crashed in the model's move
    to the device (torch's 'invalid device ordinal' RuntimeError, a traceback); it is an unavailable backend."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(BackendUnavailableError, match=r"cuda:2 .* 2 CUDA GPUs \(cuda:0 \.\. cuda:1\)") as err:
        TorchEngine(micro_checkpoint, device="cuda:2")
    assert err.value.exit_code == 2


def test_the_cuda_fp32_reference_runs_without_tf32(micro_checkpoint, monkeypatch):
    """A CUDA fp32 TorchEngine switches TF32 off (cuDNN allows it by default); a CPU one and a CUDA fp16 one leave
    the flags alone. Without a GPU the CUDA constructions run with torch told a GPU is there and a stand-in for
    the model encoder (the one step that would move weights to the device); the GPU check constructs the real one."""
    import torch

    import rap_deploy.model_encoder as model_encoder
    from rap_deploy.engines.torch_backend import strict_fp32_on_cuda

    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    saved = [f.allow_tf32 for f in flags]  # process-wide flags: restored below whatever happens

    def tf32() -> tuple[bool, ...]:
        return tuple(bool(f.allow_tf32) for f in flags)

    def allow_tf32() -> None:
        for f in flags:
            f.allow_tf32 = True

    try:
        allow_tf32()
        TorchEngine(micro_checkpoint)
        assert tf32() == (True, True)
        strict_fp32_on_cuda()
        assert tf32() == (False, False)

        allow_tf32()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(model_encoder, "ModelEncoder",
                            lambda model, **kw: types.SimpleNamespace(model=model, **kw))
        TorchEngine(micro_checkpoint, device="cuda", precision="fp16")
        assert tf32() == (True, True)
        TorchEngine(micro_checkpoint, device="cuda")
        assert tf32() == (False, False)
    finally:
        for f, value in zip(flags, saved, strict=True):
            f.allow_tf32 = value


def test_lazy_engine_opens_only_the_graphs_it_runs(micro_ort_engines):
    """``load_engine(..., lazy=True)``: a search process (text encoder + ASA head) never holds the video encoder."""
    from rap_deploy.engines.samples import sample_inputs

    eager = load_engine(micro_ort_engines["fp32"], threads=1)
    lazy = load_engine(micro_ort_engines["fp32"], threads=1, lazy=True)
    assert set(eager.sessions) == {"video_encoder", "text_encoder", "asa_head"} and lazy.sessions == {}
    x = sample_inputs(lazy.config, videos=2)
    text = lazy.encode_text(x.input_ids, x.eot)
    assert set(lazy.sessions) == {"text_encoder"}
    np.testing.assert_array_equal(text, eager.encode_text(x.input_ids, x.eot))
    rerank = eager.encode_video(x.frames, x.frame_mask)[1:]
    np.testing.assert_array_equal(lazy.asa_similarity(text, *rerank), eager.asa_similarity(text, *rerank))
    assert set(lazy.sessions) == {"text_encoder", "asa_head"}
    eager.close()
    lazy.close()


def test_build_validation_checks_the_fp16_similarity_and_never_passes_nan(micro_checkpoint):
    """The build's validation gated an fp16 engine's ASA similarity with max_abs <= inf (never failing: scores off
    by 0.5, even NaN, passed) and ignored non-finite outputs it does not gate (an int8 engine's similarity)."""
    from rap_deploy.engines.validate import require_match

    class Shifted(TorchEngine):
        shift = 0.5

        def asa_similarity(self, text_emb, *rerank):
            return super().asa_similarity(text_emb, *rerank) + np.float32(self.shift)

    class NaNScores(Shifted):
        shift = float("nan")

    reference = TorchEngine(micro_checkpoint)
    assert require_match(TorchEngine(micro_checkpoint), reference, "fp16")["passed"]
    with pytest.raises(CheckFailedError, match="similarity: max abs error 0.5"):
        require_match(Shifted(micro_checkpoint), reference, "fp16")
    for precision in ("fp16", "int8"):
        with pytest.raises(CheckFailedError, match="similarity"):
            require_match(NaNScores(micro_checkpoint), reference, precision)


def _nchwc_engine_copy(micro_ort_engines, tmp_path):
    """A copy of the fp32 CPU engine, its manifest, and an ISA list of the other AVX-512 kind than the building
    CPU's; skips where ONNX Runtime saved no NCHWc (blocked-layout) node."""
    import onnx

    eng = _copy(micro_ort_engines["fp32"], tmp_path)
    model = onnx.load(str(eng / "video_encoder.onnx"), load_external_data=False)
    if not any(n.domain == "com.microsoft.nchwc" for n in model.graph.node):
        pytest.skip("this CPU has no NCHWc kernels (ONNX Runtime saves no blocked layout here)")
    manifest = read_manifest(eng)
    isa = set(manifest["host"]["isa"])
    return eng, manifest, sorted(isa - {"avx512f"} if "avx512f" in isa else isa | {"avx512f"})


def test_cpu_engine_saved_for_another_nchwc_layout_is_refused(micro_ort_engines, tmp_path):
    """ONNX Runtime's saved CPU graph holds the patch-embedding Conv as a ``com.microsoft.nchwc`` Conv whose filter is
    reordered into blocks of the building CPU (16 floats with AVX-512, 8 without); another CPU reads it with its own
    block size. The manifest records the building CPU; the engine loaded anywhere regardless."""
    eng, manifest, other = _nchwc_engine_copy(micro_ort_engines, tmp_path)
    write_manifest(eng, {**manifest, "host": {**manifest["host"], "isa": other}})
    with pytest.raises(EngineMismatchError, match="AVX-512") as err:
        load_engine(eng)
    assert err.value.exit_code == 2
    write_manifest(eng, {**manifest, "host": {**manifest["host"], "machine": "aarch64"}})
    with pytest.raises(EngineMismatchError, match="aarch64"):
        load_engine(eng)
    write_manifest(eng, manifest)
    assert load_engine(eng).backend == "onnxruntime"


def test_a_cuda_engine_whose_graphs_hold_nchwc_nodes_is_judged_by_the_cpu_layout(micro_ort_engines, tmp_path):
    """ONNX Runtime lays out NCHWc kernels for the nodes it places on the CPU, also in a CUDA session, and saves them
    with the building CPU's filter blocks; the layout check ran for CPU engines only, so a CUDA engine whose graphs
    hold such nodes loaded on a CPU of another kind. The graphs' NCHWc nodes are counted where they are parsed anyway
    (the precision check), and any engine holding them is judged by the CPU layout; a CUDA engine without is not."""
    eng, manifest, other = _nchwc_engine_copy(micro_ort_engines, tmp_path)
    cuda = {**manifest, "provider": "CUDAExecutionProvider", "device": "cuda",
            "host": {**manifest["host"], "isa": other}}
    write_manifest(eng, cuda)
    here = runtime_info()
    here = {**here, "providers": [*here["providers"], "CUDAExecutionProvider"]}  # as a CUDA machine reports
    with pytest.raises(EngineMismatchError, match="AVX-512.*--device cuda") as err:
        validate_engine_dir(eng, runtime=here)
    assert err.value.exit_code == 2
    check_runtime(cuda, here)  # no NCHWc node counted (or not parsed): a CUDA engine is not judged by its CPU
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):  # the record deleted: nothing to judge by
        write_manifest(eng, {k: v for k, v in {**manifest, "provider": provider}.items() if k != "host"})
        with pytest.raises(CheckFailedError, match="NCHWc nodes.*records no 'host'"):
            validate_engine_dir(eng, runtime=here)


def test_wrong_shaped_inputs_are_one_line_errors_not_runtime_tracebacks(micro_ort_engines):
    """Each graph input's declared rank and fixed dims are checked before the run: ONNX Runtime answered a wrong-shaped
    text embedding or re-rank tensor with its own InvalidArgument (a traceback)."""
    engine = load_engine(micro_ort_engines["fp32"], threads=1)
    cfg = engine.config
    frames = np.zeros((2, cfg.frames, 3, cfg.preprocess.image_size, cfg.preprocess.image_size), np.float32)
    rerank = engine.encode_video(frames)[1:]
    text = engine.encode_text(np.ones((2, 4)), np.array([3, 3]))
    width = text.shape[1]
    with pytest.raises(UsageError, match=rf"text_emb must be \[Q,{width}\] .*, got \[2, 5\]"):
        engine.asa_similarity(text[:, :5], *rerank)
    with pytest.raises(UsageError, match=r"asa_head graph input 'asa_tokens' must be \[.*\], got \[2, 4, 16\]"):
        engine.asa_similarity(text, *rerank[:2], rerank[2][..., 0])
    with pytest.raises(UsageError, match=r"asa_head graph input 'patch_tokens' must be .* got \[2, 4, 3, "):
        engine.asa_similarity(text, rerank[0], rerank[1][:, :, :3], rerank[2])
    assert engine.asa_similarity(text, *rerank).shape == (2, 2)


def test_empty_batches_give_empty_outputs(micro_ort_engines, reference):
    """Zero videos / zero texts: ONNX Runtime failed in a Reshape / Gather and PyTorch raised, each a traceback; every
    output now comes back with zero rows and the shape of the others."""
    engine = load_engine(micro_ort_engines["fp32"], threads=1)
    cfg = engine.config
    frames = np.zeros((1, cfg.frames, 3, cfg.preprocess.image_size, cfg.preprocess.image_size), np.float32)
    ids, eot = np.ones((1, 4)), np.array([3])
    for eng in (engine, reference):
        one, none = eng.encode_video(frames), eng.encode_video(frames[:0])
        assert [o.shape for o in none] == [(0, *o.shape[1:]) for o in one]
        assert all(o.dtype == np.float32 for o in none)
        assert eng.encode_text(ids[:0], eot[:0]).shape == (0, eng.encode_text(ids, eot).shape[1])


def test_a_failing_call_is_never_rerun_on_the_cpu_by_onnxruntime(micro_ort_engines, capsys):
    """ONNX Runtime's Python session catches an execution-provider failure (EPFail) of a call, prints to stdout,
    switches the session to its fallback providers (the CPU) for good and runs again: a CUDA engine went on running on
    the CPU while describing itself as CUDA. The fallback is off in every session rapdeploy creates."""
    from onnxruntime.capi import _pybind_state as C

    sess = create_session(micro_ort_engines["export"] / "text_encoder.onnx", "CPUExecutionProvider", threads=1)
    inner = sess._sess

    class FailingProvider:
        def run(self, *args):
            raise C.EPFail("the execution provider failed")

        def __getattr__(self, name):
            return getattr(inner, name)

    sess._sess = FailingProvider()
    with pytest.raises(C.EPFail):
        sess.run(None, {"input_ids": np.ones((1, 4), np.int32), "eot": np.array([3], np.int32)})
    assert "Falling back" not in capsys.readouterr().out


@pytest.mark.parametrize("status", [False, True])
def test_cuda_that_cannot_start_is_a_backend_error_without_a_cpu_session(micro_ort_engines, monkeypatch, capsys,
                                                                        status):
    """A CUDA provider that fails while the session is created (no GPU, a wrong --device-id) made ONNX Runtime print
    an 'EP Error' banner to stdout and build the whole session on the CPU before rapdeploy refused it; it is now
    refused at once, naming the failure (exit 2)."""
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state as C
    from onnxruntime.capi import onnxruntime_inference_collection as oic

    original = oic.InferenceSession._create_inference_session
    cpu_sessions = []

    def create(self, providers, provider_options, *args):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        if "CUDAExecutionProvider" in names:
            self._fallback_providers = ["CPUExecutionProvider"]  # what ONNX Runtime sets before creating
            error = C.RuntimeException if status else RuntimeError  # a status, or a C++ exception
            raise error("CUDA failure 101: invalid device ordinal ; expr=cudaSetDevice(info_.device_id);")
        cpu_sessions.append(names)
        return original(self, providers, provider_options, *args)

    monkeypatch.setattr(oic.InferenceSession, "_create_inference_session", create)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match=r"CUDAExecutionProvider \(device 3\) .*invalid device ordinal"
                       ) as refused:
        create_session(micro_ort_engines["export"] / "text_encoder.onnx", "CUDAExecutionProvider", device_id=3)
    assert cpu_sessions == [] and "EP Error" not in capsys.readouterr().out
    # the hint named a --device-id option no command has; it names the GPU and how it is made visible
    assert "--device-id" not in str(refused.value) and "GPU 3 exists" in str(refused.value)


def test_a_call_the_runtime_fails_is_one_line_naming_the_graph_and_provider(micro_ort_engines):
    """With ONNX Runtime's fallback off, a call its execution provider fails (EPFail) or a kernel fails surfaced as the
    runtime's own exception, a traceback; it is a BackendUnavailableError (the provider failed, exit 2) or a
    CheckFailedError (the graph failed, exit 1) naming the graph, the provider and the runtime's first line."""
    from onnxruntime.capi import _pybind_state as C

    engine = load_engine(micro_ort_engines["fp32"], threads=1)
    sess = engine._session("text_encoder")
    inner = sess._sess

    class Failing:
        error: type = C.EPFail

        def run(self, *args):
            raise self.error("something failed\nsecond line")

        def __getattr__(self, name):
            return getattr(inner, name)

    sess._sess = Failing()
    ids, eot = np.ones((1, 4)), np.array([3])
    with pytest.raises(BackendUnavailableError, match=r"text_encoder graph failed on CPUExecutionProvider "
                                                      r"\(EPFail: something failed\)"):
        engine.encode_text(ids, eot)
    Failing.error = C.Fail
    with pytest.raises(CheckFailedError, match=r"text_encoder graph failed on CPUExecutionProvider \(Fail: something"):
        engine.encode_text(ids, eot)
    Failing.error = ValueError  # not the runtime's: passes through unchanged
    with pytest.raises(ValueError):
        engine.encode_text(ids, eot)


def test_the_building_cpu_is_recorded_without_proc_cpuinfo(monkeypatch):
    """host_info read the CPU's instruction sets from /proc/cpuinfo only: where there is none (Windows, macOS) an
    AVX-512 CPU was recorded as having none, so its engine (NCHWc filter blocks of 16) loaded on an AVX2 CPU (blocks
    of 8) as the same layout. The CPU's own feature detection (numpy's) fills in where /proc/cpuinfo is missing."""
    import builtins

    from rap_deploy.engines import manifest as manifest_module

    real_open = builtins.open

    def no_cpuinfo(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    monkeypatch.setattr(manifest_module, "_runtime_cpu_features",
                        lambda: {"AVX2": True, "AVX512F": True, "AVX512_SKX": True, "ASIMD": False}, raising=False)
    built = manifest_module.host_info()
    assert built["isa"] == ["avx2", "avx512f"]
    with pytest.raises(EngineMismatchError, match="with AVX-512, this machine has .* without AVX-512"):
        manifest_module._check_cpu_layout(built, {**built, "isa": ["avx2"]})


def test_cuda_sessions_compute_fp32_without_tf32(micro_ort_engines, monkeypatch):
    """ONNX Runtime's CUDA provider runs fp32 MatMul/Gemm and cuDNN convolutions in TF32 (10-bit mantissas) on
    Ampere and later unless its ``use_tf32`` option is 0: an 'fp32' CUDA engine computed in TF32 while every other fp32
    path (the PyTorch reference, TensorRT builds) has it off. Sessions now ask for it off."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_inference_collection as oic

    seen = []

    def create(self, providers, provider_options, *args):
        seen.extend(p for p in providers if isinstance(p, tuple))
        self._fallback_providers = ["CPUExecutionProvider"]
        raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")

    monkeypatch.setattr(oic.InferenceSession, "_create_inference_session", create)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="no CUDA-capable device"):
        create_session(micro_ort_engines["export"] / "text_encoder.onnx", "CUDAExecutionProvider", device_id=1)
    assert seen == [("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0})]


def test_fp16_graphs_claimed_for_the_cpu_provider_are_refused_before_a_session(micro_ort_engines, micro_fp16_export,
                                                                                tmp_path):
    """build-engine writes fp16 ONNX Runtime engines for CUDA only; a manifest edited to fp16 on the CPU provider (with
    the export's fp16 graphs and their hashes) passed every check, and ONNX Runtime 1.32's CPU provider crashes the
    process creating the fp16 video encoder's session at ORT_ENABLE_ALL (segfault, exit 139)."""
    from rap_deploy.atomic import sha256_file

    eng = _copy(micro_ort_engines["fp32"], tmp_path)
    manifest = read_manifest(eng)
    for name, entry in manifest["graphs"].items():
        shutil.copy(micro_fp16_export / f"{name}.fp16.onnx", eng / entry["file"])
        entry.update(sha256=sha256_file(eng / entry["file"]), bytes=(eng / entry["file"]).stat().st_size)
    write_manifest(eng, {**manifest, "precision": "fp16"})
    with pytest.raises(CheckFailedError, match="precision fp16 on CPUExecutionProvider"):
        validate_engine_dir(eng, runtime=runtime_info())
    with pytest.raises(CheckFailedError, match="precision fp16 on CPUExecutionProvider"):
        load_engine(eng)


def test_a_direct_fp16_engine_on_the_cpu_provider_is_refused_before_a_session(micro_fp16_export):
    """The manifest path refuses fp16 on the CPU provider (above); OrtEngine built directly from the export's fp16
    graphs with precision fp16 created the CPU sessions, and ONNX Runtime's CPU provider crashed the process on the
    video encoder (segfault, exit 139). It is a UsageError now, before any session (lazy or not)."""
    from rap_deploy.config import RAPConfig

    manifest = json.loads((micro_fp16_export / "manifest.json").read_text())
    files = {name: micro_fp16_export / entry["file"] for name, entry in manifest["fp16_graphs"].items()}
    config = RAPConfig.from_dict(manifest["config"])
    for lazy in (True, False):  # lazy first: without the check it returns instead of crashing the test run
        with pytest.raises(UsageError, match="CUDAExecutionProvider only"):
            OrtEngine(files, config, precision="fp16", lazy=lazy)


def test_the_fp16_on_cpu_refusal_names_the_engine_the_value_and_the_fix(tmp_path):
    """The refusal said only why fp16 fails on the CPU and 'use the fp32 graphs on the CPU': not which engine or graph
    folder, nor how to get fp32 graphs. It names the engine folder (else the graphs' folder), the precision and
    provider, and the build-engine commands for the CPU and for a GPU (checked before any file is read)."""
    import re

    from rap_deploy.config import RAPConfig

    graphs = {name: tmp_path / "graphs" / f"{name}.fp16.onnx" for name in ("video_encoder", "text_encoder", "asa_head")}
    # no manifest says the export folder: the commands name the explained placeholder, not build-engine's default
    # (the workspace's latest export, maybe another checkpoint's), as cpu_engine_instead does
    fix = re.escape("`rapdeploy build-engine <export folder>`, or `rapdeploy build-engine <export folder> --int8`), "
                    "on a GPU an fp16 engine (`rapdeploy build-engine <export folder> --backend onnxruntime --device "
                    "cuda --fp16`) (<export folder> is the folder `rapdeploy export` wrote from this engine's "
                    "checkpoint, by default in the workspace's onnx folder; the graphs' folder does not record it)"
                    ) + "$"
    engine, folder = re.escape(str(tmp_path / "eng")), re.escape(str(tmp_path / "graphs"))
    with pytest.raises(UsageError, match=rf"^engine {engine}: precision fp16 on CPUExecutionProvider: .*{fix}"):
        OrtEngine(graphs, RAPConfig(), precision="fp16", path=tmp_path / "eng", lazy=True)
    with pytest.raises(UsageError, match=rf"^the graphs in {folder}: precision fp16 on CPU.*{fix}"):
        OrtEngine(graphs, RAPConfig(), precision="fp16", lazy=True)


def test_the_fp16_on_cpu_refusal_names_the_real_export_folder(tmp_path):
    """The fix named `rapdeploy build-engine EXPORT_DIR`, a placeholder, though an engine folder's manifest records
    its export folder and graphs in an export folder are in it; the commands now name that folder, shell-quoted, and
    build what they say (CPU fp32, CPU int8, CUDA fp16)."""
    import shlex

    from rap_deploy.config import RAPConfig
    from rap_deploy.engines.build import resolve_target

    export = tmp_path / "my exports" / "micro"
    engine = tmp_path / "eng"
    for folder, manifest in ((export, {"format": "rapdeploy.export"}),
                             (engine, {"format": "rapdeploy.engine", "export_dir": str(export)})):
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    graphs = {name: export / f"{name}.fp16.onnx" for name in ("video_encoder", "text_encoder", "asa_head")}
    for path in (engine, None):  # the engine folder's record, and the graphs' own export folder
        with pytest.raises(UsageError) as info:
            OrtEngine(graphs, RAPConfig(), precision="fp16", path=path, lazy=True)
        said = str(info.value)
        assert "EXPORT_DIR" not in said, said
        commands = [shlex.split(part) for part in said.split("`") if part.startswith("rapdeploy build-engine")]
        assert [words[2] for words in commands] == [str(export)] * 3, said
        assert [resolve_target(w[w.index("--backend") + 1] if "--backend" in w else None, "--fp16" in w,
                               "--int8" in w, w[w.index("--device") + 1] if "--device" in w else None)
                 for w in commands] == [("onnxruntime", "fp32", "cpu"), ("onnxruntime", "int8", "cpu"),
                                        ("onnxruntime", "fp16", "cuda")], said


def test_fp16_graph_content_on_the_cpu_provider_is_refused_whatever_the_label(micro_fp16_export, monkeypatch):
    """The CPU provider's fp16 guard read only the ``precision`` label: the export's fp16 graphs given with the default
    label fp32 still reached ONNX Runtime's CPU provider, which crashes the process creating the fp16 video encoder's
    session (exit 139). The graphs' float16 tensors are counted now (parsed without external data) and such a graph
    is a UsageError before its session: up front, or with ``lazy`` at its first call."""
    from rap_deploy.config import RAPConfig

    manifest = json.loads((micro_fp16_export / "manifest.json").read_text())
    files = {name: micro_fp16_export / entry["file"] for name, entry in manifest["fp16_graphs"].items()}
    config = RAPConfig.from_dict(manifest["config"])
    from rap_deploy.engines import ort_backend

    real = ort_backend.create_session

    def guarded(path, *args, **kwargs):  # without the check, fail here instead of crashing the test run
        assert ".fp16." not in str(path), f"a CPU session was created for {path}"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort_backend, "create_session", guarded)
    lazy = OrtEngine(files, config, lazy=True)
    with pytest.raises(UsageError, match="video_encoder graph .* holds [0-9]+ float16 tensors .*labelled fp32"):
        lazy.encode_video(np.zeros((1, config.frames, 3, config.preprocess.image_size, config.preprocess.image_size),
                                   np.float32))
    assert not lazy.sessions
    with pytest.raises(UsageError, match="float16 tensors"):
        OrtEngine(files, config)
    fp32 = {name: micro_fp16_export / entry["file"] for name, entry in manifest["graphs"].items()}
    mixed = OrtEngine({**fp32, "asa_head": files["asa_head"]}, config, lazy=True)
    mixed.encode_text(*[np.asarray(a) for a in _one_caption(config)])  # fp32 graphs still run beside it
    with pytest.raises(UsageError, match="asa_head graph"):
        OrtEngine({**fp32, "asa_head": files["asa_head"]}, config)
    with pytest.raises(UsageError, match="gone.onnx does not exist"):  # still a usage error, not a damaged graph
        OrtEngine({**fp32, "asa_head": micro_fp16_export / "gone.onnx"}, config)


def _one_caption(config):
    from rap_deploy.tokenizer import tokenize

    return tokenize(["a red circle moves left"], config.tokenizer)

"""TensorRT build and run on the micro model: needs TensorRT and an NVIDIA GPU, skipped (with the reason) elsewhere."""

from __future__ import annotations

import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (it needs an NVIDIA GPU machine and "
                          "NVIDIA's package index); the TensorRT-independent parts are tested in test_engine_plan.py")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("TensorRT is installed but no CUDA GPU is visible", allow_module_level=True)

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def fp16_engine(micro_ort_engines, tmp_path_factory):
    from rap_deploy.engines.build import build_engine

    out = tmp_path_factory.mktemp("trt") / "tensorrt-fp16"
    ws = tmp_path_factory.mktemp("trt_ws")
    manifest = build_engine(micro_ort_engines["export"], fp16=True, out=out, workspace=ws, progress=False)
    return out, manifest


def test_fp16_engine_has_fp16_layers_and_matches_pytorch(fp16_engine, micro_checkpoint):
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.torch_backend import TorchEngine
    from rap_deploy.engines.validate import compare_engines

    out, manifest = fp16_engine
    assert manifest["backend"] == "tensorrt" and manifest["versions"]["tensorrt"] == trt.__version__
    assert manifest["gpu"]["compute_capability"]
    for name, report in manifest["build"].items():
        assert report["layers"]["fp16_compute_layers"] > 0, name
    engine = load_engine(out)
    report = compare_engines(engine, TorchEngine(micro_checkpoint))
    assert report["video_emb"]["min_cosine"] >= 0.999 and report["text_emb"]["min_cosine"] >= 0.999


def test_dynamic_batch_beyond_the_profile_is_split(fp16_engine):
    import numpy as np

    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.samples import sample_inputs

    out, _ = fp16_engine
    engine = load_engine(out)
    x = sample_inputs(engine.config, videos=3)
    engine.max_batch["video_encoder"] = 2
    v, *rerank = engine.encode_video(x.frames, x.frame_mask)
    assert v.shape[0] == 3 and all(np.isfinite(r).all() for r in rerank)
    engine.query_block, engine.video_block = 1, 2
    sim = engine.asa_similarity(engine.encode_text(x.input_ids, x.eot), *rerank)
    assert sim.shape == (len(x.captions), 3)


def test_engine_from_another_tensorrt_is_refused(fp16_engine, tmp_path):
    import shutil

    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import EngineMismatchError, read_manifest, write_manifest

    out, _ = fp16_engine
    copy = tmp_path / "engine"
    shutil.copytree(out, copy)
    manifest = read_manifest(copy)
    manifest["versions"]["tensorrt"] = "9.0.0"
    write_manifest(copy, manifest)
    with pytest.raises(EngineMismatchError, match="TensorRT 9.0.0"):
        load_engine(copy)

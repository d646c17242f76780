"""TensorRT's refusals (not installed, no GPU) end with the ONNX Runtime CPU builds to run instead. Without a known
export folder they named none (`rapdeploy build-engine --backend onnxruntime`): build-engine's default, the workspace's
latest export, maybe another checkpoint's; the ONNX Runtime engine's fp16 refusal names the '<export folder>'
placeholder and says what it stands for. TensorRT's now does the same, and an engine folder (TrtEngine) names the
export its manifest records. TensorRT is not installed here: the message-building functions are called directly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import micro_config

from rap_deploy.engines import tensorrt_backend as T
from rap_deploy.errors import BackendUnavailableError

NOTE = ("(<export folder> is the folder `rapdeploy export` wrote from this engine's checkpoint, by default in the "
        "workspace's onnx folder; the engine's folder does not record it)")


def test_without_a_folder_the_cpu_builds_name_the_explained_placeholder() -> None:
    assert T.onnxruntime_instead() == ("run `rapdeploy build-engine <export folder> --backend onnxruntime` (CPU fp32) "
                                       "or `rapdeploy build-engine <export folder> --int8` (CPU int8) instead " + NOTE)


def test_a_known_folder_is_named_quoted() -> None:
    assert T.onnxruntime_instead("/w/my export").startswith("run `rapdeploy build-engine '/w/my export' --backend")


@pytest.fixture
def no_tensorrt() -> None:
    """Skip where TensorRT is installed: the refusals are the ones of a machine without it."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed")


def test_import_tensorrt_without_a_folder_names_the_placeholder(no_tensorrt: None) -> None:
    with pytest.raises(BackendUnavailableError) as err:
        T.import_tensorrt()
    assert str(err.value).endswith("`rapdeploy build-engine <export folder> --int8` (CPU int8) instead " + NOTE)


def test_an_engine_folder_names_the_export_it_records(tmp_path: Path, no_tensorrt: None) -> None:
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "manifest.json").write_text(json.dumps({"format": "rapdeploy.engine", "export_dir": "/w/my export"}),
                                          encoding="utf-8")
    config = micro_config()
    files = {g: engine / f"{g}.plan" for g in ("video_encoder", "text_encoder", "asa_head")}
    with pytest.raises(BackendUnavailableError) as err:
        T.TrtEngine(files, config, {}, path=engine)
    assert "run `rapdeploy build-engine '/w/my export' --backend onnxruntime` (CPU fp32)" in str(err.value)
    assert "<export folder>" not in str(err.value)

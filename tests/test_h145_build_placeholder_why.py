"""trt_build.build_graph called without ``export_dir`` refused a machine without TensorRT naming the
'<export folder>' placeholder explained as 'the engine's folder does not record it': wrong in a build, where no
engine folder exists yet. It now says 'the build was not told its export folder'; engine folders (TrtEngine,
import_tensorrt / require_tensorrt by default) keep their reason. TensorRT is not installed here: the not-installed
path is exercised, skipped where TensorRT is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rap_deploy.engines import tensorrt_backend as T
from rap_deploy.engines import trt_build
from rap_deploy.errors import BackendUnavailableError

BUILD_NOTE = ("(<export folder> is the folder `rapdeploy export` wrote from this engine's checkpoint, by default in "
              "the workspace's onnx folder; the build was not told its export folder)")
ENGINE_WHY = "the engine's folder does not record it"


@pytest.fixture
def no_tensorrt() -> None:
    """Skip where TensorRT is installed: the refusals are the ones of a machine without it."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed")


def _build(tmp_path: Path, **kw: object) -> str:
    with pytest.raises(BackendUnavailableError) as err:
        trt_build.build_graph(tmp_path / "text_encoder.onnx", tmp_path / "text_encoder.engine", {}, False, None,
                              tmp_path / "cache", graph="text_encoder", **kw)
    return str(err.value)


def test_a_build_without_its_export_says_it_was_not_told(tmp_path: Path, no_tensorrt: None) -> None:
    message = _build(tmp_path)
    assert message.endswith("`rapdeploy build-engine <export folder> --int8` (CPU int8) instead " + BUILD_NOTE), message
    assert ENGINE_WHY not in message and "\n" not in message


def test_a_build_given_its_export_names_it(tmp_path: Path, no_tensorrt: None) -> None:
    message = _build(tmp_path, export_dir=Path("/w/my export"))
    assert "`rapdeploy build-engine '/w/my export' --int8`" in message and "<export folder>" not in message, message


def test_engine_refusals_keep_their_reason(no_tensorrt: None) -> None:
    for call in (T.import_tensorrt, T.require_tensorrt):
        with pytest.raises(BackendUnavailableError) as err:
            call()
        assert str(err.value).endswith(f"; {ENGINE_WHY})"), str(err.value)


def test_the_reason_passes_through_require_tensorrt(no_tensorrt: None) -> None:
    with pytest.raises(BackendUnavailableError) as err:
        T.require_tensorrt(0, None, why="a reason")
    assert str(err.value).endswith("; a reason)"), str(err.value)

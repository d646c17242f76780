"""trt_build.build_graph checked for TensorRT and the GPU without the export folder (require_tensorrt(device_id)),
so its refusal's ONNX Runtime builds to run instead named the '<export folder>' placeholder, explained as 'the
engine's folder does not record it' while no engine folder was involved, although build_trt_graphs, its caller,
knew the folder. build_graph now takes ``export_dir`` and build_trt_graphs passes it. TensorRT is not installed
here: build_graph is called on the not-installed path, and build_trt_graphs with require_tensorrt recorded.

Called without ``export_dir``, build_graph's placeholder was explained as 'the engine's folder does not record it':
wrong in a build, where no engine folder exists yet. It now says 'the build was not told its export folder'; engine
folders (TrtEngine, import_tensorrt / require_tensorrt by default) keep their reason."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

from rap_deploy.engines import tensorrt_backend as T
from rap_deploy.engines import trt_build
from rap_deploy.errors import BackendUnavailableError

EXPORT = Path("/w/my export")
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
        trt_build.build_graph(EXPORT / "text_encoder.onnx", tmp_path / "text_encoder.engine", {}, False, None,
                              tmp_path / "cache", graph="text_encoder", **kw)
    return str(err.value)


def test_build_graph_names_the_export_it_is_given(tmp_path: Path, no_tensorrt: None) -> None:
    message = _build(tmp_path, export_dir=EXPORT)
    assert "run `rapdeploy build-engine '/w/my export' --backend onnxruntime` (CPU fp32)" in message, message
    assert "<export folder>" not in message


def test_build_graph_without_one_names_the_placeholder(tmp_path: Path, no_tensorrt: None) -> None:
    assert "`rapdeploy build-engine <export folder> --int8`" in _build(tmp_path)


def test_build_trt_graphs_passes_its_export_to_build_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[object] = []

    def require_tensorrt(device_id: int = 0, export_dir: object = None, why: str = "") -> tuple[object, dict]:
        asked.append(export_dir)
        if len(asked) > 1:  # build_graph's own check: the GPU went away
            raise BackendUnavailableError(f"no GPU; export {export_dir}")
        return types.SimpleNamespace(__version__="10.8.0"), {"compute_capability": "9.0"}

    monkeypatch.setattr(trt_build, "require_tensorrt", require_tensorrt)
    monkeypatch.setattr("rap_deploy.engines.trt_plan.profile_shapes", lambda *a: {})
    manifest = {"graphs": {"text_encoder": {"file": "text_encoder.onnx", "inputs": []}}}
    with pytest.raises(BackendUnavailableError):
        trt_build.build_trt_graphs(tmp_path / "export", manifest, tmp_path / "out", "fp32", {"text_encoder": {}},
                                   tmp_path / "caches")
    assert asked == [tmp_path / "export"] * 2, asked


def test_a_build_without_its_export_says_it_was_not_told(tmp_path: Path, no_tensorrt: None) -> None:
    message = _build(tmp_path)
    assert message.endswith("`rapdeploy build-engine <export folder> --int8` (CPU int8) instead " + BUILD_NOTE), message
    assert ENGINE_WHY not in message and "\n" not in message


def test_engine_refusals_keep_their_reason(no_tensorrt: None) -> None:
    for call in (T.import_tensorrt, T.require_tensorrt):
        with pytest.raises(BackendUnavailableError) as err:
            call()
        assert str(err.value).endswith(f"; {ENGINE_WHY})"), str(err.value)


def test_the_reason_passes_through_require_tensorrt(no_tensorrt: None) -> None:
    with pytest.raises(BackendUnavailableError) as err:
        T.require_tensorrt(0, None, why="a reason")
    assert str(err.value).endswith("; a reason)"), str(err.value)

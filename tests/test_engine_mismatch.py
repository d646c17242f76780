"""An engine built for another TensorRT version or GPU is refused with one line (exit 2) that names the engine folder
and the command that rebuilds it as it was built (engines/manifest.py: check_runtime)."""

from __future__ import annotations

import shlex

import pytest

HERE = {"tensorrt": "10.9.0.34", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}


def _trt_folder(tmp_path, export_dir, precision):
    """A TensorRT-format engine folder of ``precision`` built (says its manifest) for :data:`HERE`; the engine bytes
    are opaque here: the manifest rules never parse them."""
    from rap_deploy.engines.manifest import graph_entry, new_manifest, write_manifest
    from rap_deploy.export import read_export_manifest

    eng = tmp_path / f"my engines/tensorrt-{precision}"
    eng.mkdir(parents=True)
    export = read_export_manifest(export_dir)
    graphs = {}
    for name, entry in export["graphs"].items():
        (eng / f"{name}.engine").write_bytes(name.encode() * 64)
        graphs[name] = graph_entry(eng, f"{name}.engine", export_dir / entry["file"], entry["sha256"])
    manifest = new_manifest("tensorrt", precision, "cuda", "TensorRT", graphs, export, export_dir, gpu=HERE["gpu"])
    manifest["versions"]["tensorrt"] = HERE["tensorrt"]
    write_manifest(eng, manifest)
    return eng


@pytest.mark.parametrize(("precision", "flags"), [("fp16", ["--fp16"]), ("fp32", ["--backend", "tensorrt"])])
def test_another_tensorrt_or_gpu_names_the_folder_and_the_rebuild_command(micro_fp16_export, tmp_path, precision,
                                                                            flags):
    from rap_deploy.engines.manifest import EngineMismatchError, validate_engine_dir

    eng = _trt_folder(tmp_path, micro_fp16_export, precision)
    assert validate_engine_dir(eng, runtime=HERE)["precision"] == precision
    rebuild = shlex.join(["rapdeploy", "build-engine", str(micro_fp16_export.resolve()), *flags, "--out", str(eng),
                          "--force"])
    for here, why in (({**HERE, "tensorrt": "10.13.3.9"}, "TensorRT 10.9.0.34, this machine has TensorRT 10.13.3.9"),
                      ({**HERE, "gpu": {"name": "NVIDIA A10", "compute_capability": "8.6"}},
                       "compute capability 9.0")):
        with pytest.raises(EngineMismatchError) as err:
            validate_engine_dir(eng, runtime=here)
        message = str(err.value)
        assert err.value.exit_code == 2 and "\n" not in message
        assert message.startswith(f"{eng}: cannot load this TensorRT engine here") and why in message
        assert message.endswith(f"rebuild it on this machine: `{rebuild}`")  # the path with a space stays one word


def test_tensorrt_without_a_gpu_is_unavailable_not_a_rebuild(micro_fp16_export, tmp_path):
    """TensorRT installs on a machine without a GPU; its engines were refused there as built 'for another GPU' with
    the advice to rebuild on this machine, which fails the same way. It is an unavailable backend (exit 2) now."""
    from rap_deploy.engines.manifest import validate_engine_dir
    from rap_deploy.errors import BackendUnavailableError

    eng = _trt_folder(tmp_path, micro_fp16_export, "fp16")
    with pytest.raises(BackendUnavailableError) as err:
        validate_engine_dir(eng, runtime={**HERE, "gpu": None})
    message = str(err.value)
    assert err.value.exit_code == 2 and message.startswith(f"{eng}: TensorRT engines run on an NVIDIA GPU")
    assert "NVIDIA H100 80GB HBM3" in message and "--backend onnxruntime" in message and "rebuild it" not in message

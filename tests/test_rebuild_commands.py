"""The ``rapdeploy build-engine`` command a refusal names for rebuilding an engine must build the engine its manifest
records (backend, precision, device), not another kind: ``--fp16`` alone means TensorRT, and without ``--device
cuda`` an ONNX Runtime engine is built for the CPU."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from rap_deploy.engines.build import resolve_target
from rap_deploy.engines.integrity import rebuild_engine_command
from rap_deploy.engines.rebuild_commands import trt_rebuild_command

ENGINES = [("onnxruntime", "fp32", "cpu", "CPUExecutionProvider"),
           ("onnxruntime", "int8", "cpu", "CPUExecutionProvider"),
           ("onnxruntime", "fp32", "cuda", "CUDAExecutionProvider"),
           ("onnxruntime", "fp16", "cuda", "CUDAExecutionProvider"),
           ("tensorrt", "fp32", "cuda", None),
           ("tensorrt", "fp16", "cuda", None)]


def _built(command: str) -> tuple[str, str, str]:
    """``(backend, precision, device)`` that ``build-engine`` resolves the options of ``command`` to."""
    words = shlex.split(command)
    value = {o: words[words.index(o) + 1] for o in ("--backend", "--device") if o in words}
    return resolve_target(value.get("--backend"), "--fp16" in words, "--int8" in words, value.get("--device"))


@pytest.mark.parametrize("backend, precision, device, provider", ENGINES)
def test_the_rebuild_command_builds_the_engine_the_manifest_records(backend, precision, device, provider):
    """An ONNX Runtime fp16 engine (CUDA) was to be rebuilt with `build-engine EXPORT --fp16`, which builds a
    TensorRT engine, and an ONNX Runtime CUDA fp32 engine with no flag, which builds a CPU one."""
    manifest = {"backend": backend, "precision": precision, "device": device, "provider": provider,
                "export_dir": "/w/onnx"}
    command = rebuild_engine_command(Path("/w/engine"), manifest)
    assert command.startswith("rapdeploy build-engine /w/onnx ") and command.endswith(" --force --out /w/engine")
    assert _built(command) == (backend, precision, device), command
    if backend == "tensorrt":
        assert _built(trt_rebuild_command(manifest)) == (backend, precision, device)


ORT_ENGINES = [e for e in ENGINES if e[0] == "onnxruntime"]


def _named_command(message: str) -> str:
    """The `rapdeploy build-engine ...` command a refusal names (between backticks)."""
    return next(part for part in message.split("`") if part.startswith("rapdeploy build-engine"))


@pytest.mark.parametrize("backend, precision, device, provider", ORT_ENGINES)
def test_runtime_refusals_name_a_rebuild_of_the_same_engine(backend, precision, device, provider):
    """The ONNX Runtime release, missing-host and CPU-layout refusals named `build-engine --backend onnxruntime`
    whatever the engine, so an int8 engine was to be rebuilt as fp32 (and the release refusal dropped the device)."""
    from rap_deploy.engines.manifest import EngineMismatchError, check_runtime
    from rap_deploy.errors import CheckFailedError

    avx512 = {"machine": "x86_64", "isa": ["avx512f"]}
    manifest = {"backend": backend, "precision": precision, "device": device, "provider": provider,
                "versions": {"onnxruntime": "1.0.0"}, "host": avx512}
    here = {"onnxruntime": "9.9.0", "providers": [provider], "host": avx512}
    refusals = []
    with pytest.raises(EngineMismatchError) as release:  # another ONNX Runtime release
        check_runtime(manifest, here)
    refusals.append(str(release.value))
    same = {**here, "onnxruntime": "1.0.0"}
    with pytest.raises(CheckFailedError) as no_host:  # NCHWc nodes and no recorded host
        check_runtime({**manifest, "host": None}, same, nchwc_ops=1)
    refusals.append(str(no_host.value))
    with pytest.raises(EngineMismatchError) as layout:  # laid out for another CPU
        check_runtime(manifest, {**same, "host": {"machine": "x86_64", "isa": ["avx2"]}}, nchwc_ops=1)
    refusals.append(str(layout.value))
    for message in refusals:
        assert _built(_named_command(message)) == (backend, precision, device), message


def _trt_refusal(manifest: dict) -> str:
    """check_runtime's refusal of the TensorRT engine ``manifest`` on a machine with another TensorRT release."""
    from rap_deploy.engines.manifest import EngineMismatchError, check_runtime

    gpu = {"name": "NVIDIA H200", "compute_capability": "9.0"}
    with pytest.raises(EngineMismatchError) as info:
        check_runtime({**manifest, "versions": {"tensorrt": "10.0.0"}, "gpu": gpu}, {"tensorrt": "10.9.0", "gpu": gpu},
                      folder=Path("/w/my engine"))
    return str(info.value)


def test_the_trt_rebuild_names_the_recorded_export_quoted_else_a_placeholder_it_explains():
    """A manifest recording no export folder gave `rapdeploy build-engine EXPORT_DIR --fp16 ...`, a placeholder that
    reads as a folder's name and that nothing explained; it is now `<export folder>`, with what it stands for and
    where to find it. A recorded folder is named shell-quoted (one word, a space and all)."""
    manifest = {"backend": "tensorrt", "precision": "fp16", "device": "cuda", "export_dir": "/w/my exports/micro"}
    said = _trt_refusal(manifest)
    command = _named_command(said)
    assert shlex.split(command) == ["rapdeploy", "build-engine", "/w/my exports/micro", "--fp16", "--out",
                                    "/w/my engine", "--force"], said
    assert said.endswith(f"`{command}`") and "<export folder>" not in said, said

    said = _trt_refusal({k: v for k, v in manifest.items() if k != "export_dir"})
    assert "EXPORT_DIR" not in said, said
    assert said.endswith("rebuild it on this machine: `rapdeploy build-engine <export folder> --fp16 --out '/w/my "
                         "engine' --force` (<export folder> is the folder `rapdeploy export` wrote from this engine's "
                         "checkpoint, by default in the workspace's onnx folder; the engine's manifest does not record "
                         "it)"), said


@pytest.mark.parametrize("backend, precision, device, provider", ORT_ENGINES)
def test_runtime_refusals_rebuild_from_the_recorded_export_into_the_engine(backend, precision, device, provider):
    """The ONNX Runtime release refusal named `rapdeploy build-engine --backend onnxruntime ...` with no export
    folder, which builds the workspace's latest export (another checkpoint's, maybe) into a new folder, though the
    manifest records the engine's export; the command now builds that export (shell-quoted) into the engine folder."""
    from rap_deploy.engines.manifest import EngineMismatchError, check_runtime

    manifest = {"backend": backend, "precision": precision, "device": device, "provider": provider,
                "versions": {"onnxruntime": "1.0.0"}, "export_dir": "/w/my exports/micro"}
    here = {"onnxruntime": "9.9.0", "providers": [provider]}
    with pytest.raises(EngineMismatchError) as info:
        check_runtime(manifest, here, folder=Path("/w/my engine"))
    said = str(info.value)
    words = shlex.split(_named_command(said))
    assert words[2] == "/w/my exports/micro" and words[-3:] == ["--out", "/w/my engine", "--force"], said
    assert _built(_named_command(said)) == (backend, precision, device) and said.endswith("`"), said
    with pytest.raises(EngineMismatchError) as info:  # a manifest recording none: a placeholder, explained
        check_runtime({k: v for k, v in manifest.items() if k != "export_dir"}, here, folder=Path("/w/my engine"))
    said = str(info.value)
    assert _named_command(said).startswith("rapdeploy build-engine <export folder> --backend onnxruntime"), said
    assert said.endswith("(<export folder> is the folder `rapdeploy export` wrote from this engine's checkpoint, by "
                         "default in the workspace's onnx folder; the engine's manifest does not record it)"), said


def _instead_commands(message: str) -> list[list[str]]:
    """The `rapdeploy build-engine ...` commands a message names, split into words."""
    return [shlex.split(part) for part in message.split("`") if part.startswith("rapdeploy build-engine")]


@pytest.mark.parametrize("manifest, here", [
    ({"backend": "tensorrt", "precision": "fp16", "versions": {"tensorrt": "10.0.0"}}, {}),  # no TensorRT
    ({"backend": "tensorrt", "precision": "fp16", "versions": {"tensorrt": "10.0.0"}}, {"tensorrt": "10.0.0"}),  # GPU
    ({"backend": "onnxruntime", "precision": "fp32", "provider": "CUDAExecutionProvider",
      "versions": {"onnxruntime": "1.0.0"}}, {"onnxruntime": "1.0.0", "providers": ["CPUExecutionProvider"]})])
def test_engines_that_cannot_run_here_name_cpu_builds_of_their_export(manifest, here):
    """A TensorRT engine without TensorRT or a GPU here, and a CUDA ONNX Runtime engine without the CUDA provider,
    were to be replaced by `rapdeploy build-engine --backend onnxruntime` (--device cpu): no export folder, so the
    workspace's latest export, maybe another checkpoint's, though the manifest records the engine's. The refusal now
    names the CPU fp32 and int8 builds of that folder (shell-quoted)."""
    from rap_deploy.engines.manifest import check_runtime
    from rap_deploy.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError) as info:
        check_runtime({**manifest, "export_dir": "/w/my exports/micro"}, here)
    commands = _instead_commands(str(info.value))
    assert [words[2] for words in commands] == ["/w/my exports/micro"] * 2, str(info.value)
    assert [_built(shlex.join(words)) for words in commands] == [("onnxruntime", "fp32", "cpu"),
                                                                 ("onnxruntime", "int8", "cpu")], str(info.value)


PLACEHOLDER_NOTE = ("(<export folder> is the folder `rapdeploy export` wrote from this engine's checkpoint, by default "
                    "in the workspace's onnx folder; the engine's manifest does not record it)")


def _contract_refusal(manifest: dict) -> str:
    """check_graph_contract's refusal of an engine in '/w/my engine' whose video_encoder has another rapdeploy's I/O."""
    from rap_deploy.config import RAPConfig
    from rap_deploy.engines.integrity import check_graph_contract
    from rap_deploy.errors import UsageError

    manifest = {**manifest, "config": RAPConfig().to_dict(),
                "export": {"graphs": {"video_encoder": {"inputs": [], "outputs": []}}}}
    with pytest.raises(UsageError) as info:
        check_graph_contract(Path("/w/my engine"), manifest, Path("/w/my engine/manifest.json"))
    return str(info.value)


def test_the_fresh_export_rebuild_names_the_recorded_export_else_the_explained_placeholder():
    """An engine of another rapdeploy whose manifest records no export folder was to be rebuilt with `rapdeploy
    export CKPT --force --out EXPORT` then `rapdeploy build-engine EXPORT ...`: a placeholder that reads as a folder
    named EXPORT and that nothing explained. It now reads '<export folder>' as the other rebuild commands do, with its
    explanation; a recorded folder is named, shell-quoted, in both commands."""
    manifest = {"backend": "onnxruntime", "precision": "int8", "provider": "CPUExecutionProvider"}
    said = _contract_refusal({**manifest, "export_dir": "/w/my exports/micro"})
    assert said.endswith("`rapdeploy export CKPT --force --out '/w/my exports/micro'` then `rapdeploy build-engine "
                         "'/w/my exports/micro' --int8 --force --out '/w/my engine'`"), said
    said = _contract_refusal(manifest)
    assert said.endswith("`rapdeploy export CKPT --force --out <export folder>` then `rapdeploy build-engine "
                         f"<export folder> --int8 --force --out '/w/my engine'` {PLACEHOLDER_NOTE}"), said
    assert "EXPORT" not in said, said


def test_the_rebuild_command_without_a_recorded_export_is_the_placeholder():
    """rebuild_engine_command (the newer-format refusal's command) read `rapdeploy build-engine EXPORT ...`."""
    command = rebuild_engine_command(Path("/w/my engine"), {"backend": "tensorrt", "precision": "fp16"})
    assert command == "rapdeploy build-engine <export folder> --fp16 --force --out '/w/my engine'", command


@pytest.mark.parametrize("manifest, here", [
    ({"backend": "tensorrt", "precision": "fp16", "versions": {"tensorrt": "10.0.0"}}, {}),  # no TensorRT
    ({"backend": "onnxruntime", "precision": "fp32", "provider": "CUDAExecutionProvider",
      "versions": {"onnxruntime": "1.0.0"}}, {"onnxruntime": "1.0.0", "providers": ["CPUExecutionProvider"]})])
def test_cpu_builds_instead_without_a_recorded_export_name_the_explained_placeholder(manifest, here):
    """Without a recorded export folder the CPU builds named none (`rapdeploy build-engine --backend onnxruntime`):
    build-engine's default, the workspace's latest export, maybe another checkpoint's. They now name the
    '<export folder>' placeholder and say what it stands for, as the rebuild refusals do."""
    from rap_deploy.engines.manifest import check_runtime
    from rap_deploy.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError) as info:
        check_runtime(manifest, here)
    said = str(info.value)
    assert said.endswith("run `rapdeploy build-engine <export folder> --backend onnxruntime` (CPU fp32) or "
                         f"`rapdeploy build-engine <export folder> --int8` (CPU int8) instead {PLACEHOLDER_NOTE}"), said

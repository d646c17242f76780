"""Shared fixtures: a tiny RAP model on the ``rap-micro`` open_clip config, deterministic (fixed seeds)."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)

MICRO_KW = {"clip": "rap-micro", "frames": 4, "asa_topk": 4, "asa_heads": 2, "asa_dim": 16, "lorm_rank": 2}


def micro_config(**changes):
    """A :class:`RAPConfig` for the tiny test backbone (4 frames, 32 px, 16 patches)."""
    from rap_deploy.config import PreprocessConfig, RAPConfig

    kw = {**MICRO_KW, **changes}
    return RAPConfig(preprocess=PreprocessConfig(image_size=32), **kw)


def randomize_adapters(model, seed: int = 0, std: float = 0.2) -> None:
    """Give every adapter weight a random non-zero value (identity adapters would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("clip."):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="session", autouse=True)
def isolated_workspace(tmp_path_factory):
    """Every test session gets an empty workspace (``$RAPDEPLOY_HOME``) of its own, never the user's: after the
    README's first command, ``rapdeploy demo``, ``./rapdeploy-out`` holds the demo's engines and library, and the
    commands that default to the workspace's latest artifact (``serve``, ``search``, ``verify``) would pick them up."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAPDEPLOY_HOME", str(tmp_path_factory.mktemp("workspace")))
        yield


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory):
    """Path of an untrained rap-micro checkpoint with randomised (non-identity) adapters."""
    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    save_checkpoint(checkpoint_from_model(model, ckpt), path)
    return path


@pytest.fixture
def micro_model():
    """A fresh rap-micro RAP model with identity adapters (seed 0)."""
    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    _, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    return model


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Folder of a small synthetic MSR-VTT-layout dataset: 24 train + 12 test videos (6 time-reversed test pairs),
    64x64 px, 4 fps, 12 s, seed 0 (see :func:`rap_deploy.data.synth_dataset.generate_synthetic_dataset`)."""
    from rap_deploy.data.synth_dataset import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(root, videos=36, test_videos=12, seed=0, size=64, progress=False)
    return root


@pytest.fixture(scope="session")
def micro_ort_engines(tmp_path_factory, micro_checkpoint):
    """Engines of the micro checkpoint for verify/bench tests: ``{"export", "fp32", "damaged"}`` folders.

    ``damaged`` is the fp32 ONNX Runtime engine with one visual-transformer weight of its video encoder scaled ×3 and
    the manifest's sha256 recomputed, so it loads like a valid engine but ranks videos differently.
    """
    import json
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from rap_deploy.atomic import sha256_file
    from rap_deploy.engines.build import build_engine
    from rap_deploy.export import export_checkpoint

    base = tmp_path_factory.mktemp("micro_engines")
    export_dir = base / "export"
    export_checkpoint(micro_checkpoint, export_dir, progress=False)
    fp32 = base / "onnxruntime-fp32"
    build_engine(export_dir, backend="onnxruntime", out=fp32, progress=False)
    damaged = base / "damaged-fp32"
    shutil.copytree(fp32, damaged)
    manifest_path = damaged / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["graphs"]["video_encoder"]
    graph_path = damaged / entry["file"]
    model = onnx.load(str(graph_path))
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    named = [i for i in weights if "resblocks" in i.name and i.name.endswith("weight")] or weights
    target = max(named, key=lambda i: int(np.prod(i.dims)))
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * 3.0, target.name))
    onnx.save(model, str(graph_path))
    entry["sha256"] = sha256_file(graph_path)
    entry["bytes"] = graph_path.stat().st_size
    manifest["damaged_initializer"] = target.name
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return {"export": export_dir, "fp32": fp32, "damaged": damaged}


@pytest.fixture(scope="session")
def micro_fp16_export(tmp_path_factory, micro_checkpoint):
    """Export folder of the micro checkpoint WITH the fp16 graphs (``rapdeploy export --fp16``): what a TensorRT fp16
    build needs on TensorRT 11, whose networks are always strongly typed."""
    from rap_deploy.export import export_checkpoint

    out = tmp_path_factory.mktemp("micro_fp16") / "export"
    export_checkpoint(micro_checkpoint, out, fp16=True, progress=False)
    return out


class _HostStream:
    """Stands in for a CUDA stream when the fake TensorRT runs on host memory."""

    cuda_stream = 0

    def synchronize(self) -> None:
        return None


@contextlib.contextmanager
def fake_tensorrt_env(major: int, scopes: list | None = None):
    """Run rapdeploy's TensorRT code against the API-surface fake of TensorRT ``major`` (tests/fake_tensorrt): the
    fake module as ``tensorrt``, a fake GPU, and host memory in place of CUDA buffers. ``scopes`` collects the
    device ids the code made current."""
    from fake_tensorrt import make_module

    from rap_deploy.engines import tensorrt_backend as tb

    def scope(device_id):
        if scopes is not None:
            scopes.append(device_id)
        return contextlib.nullcontext()

    with pytest.MonkeyPatch.context() as mp:
        module = make_module(major)
        mp.setitem(sys.modules, "tensorrt", module)
        mp.setattr(tb, "gpu_info", lambda device_id=0: {"name": "Fake GPU", "compute_capability": "9.0",
                                                        "device_id": device_id})
        mp.setattr(tb.CUDA, "scope", scope)
        mp.setattr(tb.CUDA, "device", lambda device_id: torch.device("cpu"))
        mp.setattr(tb.CUDA, "stream", lambda device: _HostStream())
        mp.setattr(tb.CUDA, "on_stream", lambda stream: contextlib.nullcontext())
        yield module


@contextlib.contextmanager
def held_folder_lock(folder, command: str, *kind: str):
    """Hold ``folder_lock(folder, command, *kind)`` in another process for the ``with`` body; yields its pid."""
    import subprocess

    args = ", ".join(repr(a) for a in (str(folder), command, *kind))
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from rap_deploy.locks import folder_lock\n"
                               f"with folder_lock({args}):\n    print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.communicate("", timeout=60)


@pytest.fixture
def listed_folders(monkeypatch):
    """A ``Counter`` of the folders ``rap_deploy.data.video_files`` lists with ``os.scandir`` (the real one still
    lists them), for tests that bound how often a folder is looked at."""
    from collections import Counter

    from rap_deploy.data import video_files

    listed: Counter = Counter()
    real = os.scandir

    def scandir(path):
        listed[os.fspath(path)] += 1
        return real(path)

    monkeypatch.setattr(video_files.os, "scandir", scandir)
    return listed


def run_suggested_conversion(said: str) -> None:
    """Run the ``python -c "..."`` weights conversion that the refusal line ``said`` suggests, as a user pasting it
    would (raises ``CalledProcessError`` when it fails)."""
    import subprocess

    conversion = said.split('python -c "', 1)[1].split('"', 1)[0]
    subprocess.run([sys.executable, "-W", "ignore", "-c", conversion], check=True)


def follow_suggested_conversion(said: str, converted, out) -> None:
    """Run the conversion ``said`` suggests, then ``rapdeploy init --clip rap-micro --pretrained converted`` into
    ``out``, which must succeed."""
    from typer.testing import CliRunner

    from rap_deploy.cli.app import app

    run_suggested_conversion(said)
    made = CliRunner().invoke(app, ["init", "--clip", "rap-micro", "--pretrained", str(converted), "--frames", "4",
                                    "--out", str(out)])
    assert made.exit_code == 0, made.output


def msrvtt_annotations(root, ids=("video1", "video2")):
    """MSR-VTT's three annotation files for ``ids`` (no videos) in a new folder ``root``; returns ``root``."""
    import json

    root.mkdir(parents=True)
    rows = "".join(f"ret{i},msr{i},{vid},a clip {vid}\n" for i, vid in enumerate(ids))
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + rows)
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{vid}\n" for vid in ids))
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": v, "caption": f"a clip {v}"}
                                                                     for v in ids]}))
    return root


def empty_file(path) -> None:
    """An empty file at ``path``, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def all_missing(split) -> list[dict[str, str]]:
    """``{video_id, reason: 'missing'}`` for every video of ``split``: what decoding reports when none is found."""
    return [{"video_id": v.video_id, "reason": "missing"} for v in split.videos]

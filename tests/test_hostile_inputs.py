"""Hostile and careless input (issue 16), every case through the real CLI.

Each case asserts the exit code (1: a damaged or tampered artifact or data; 2: bad usage), one ``error:`` line on
stderr that names the file or option, no traceback, and that nothing outside the target folder was read or changed:
a ``guard`` watches a folder beside the target that holds a FIFO (any attempt to open it for reading is seen by a
watchdog thread, which also unblocks the reader, so a regression fails instead of hanging) and a sentinel file.

Kill tests run ``build-engine`` and ``export --force`` in subprocesses that kill themselves with SIGKILL at named steps
(``RAPDEPLOY_CRASH_AT``, :mod:`rap_deploy.crashpoints`): deterministic, no sleeps or races.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()
KILLED = -signal.SIGKILL


# ---------------------------------------------------------------------------------------------------- helpers
def cli(*args, env: dict | None = None):
    """Run the real CLI in-process (CliRunner): ``(exit code, stdout, stderr, result)``."""
    result = runner.invoke(app, [str(a) for a in args], env=env)
    return result


def refused(result, code: int, *needles: str) -> str:
    """Assert a one-line refusal: exit ``code``, no traceback, one ``error:`` line on stderr naming ``needles``."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Names, types, sizes, mtimes and content hashes (regular files) of everything under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


class Guard:
    """A folder outside the target with a FIFO (``fifo``) and a sentinel file (``secret``).

    A watchdog opens the FIFO for writing without blocking every few milliseconds: that only succeeds while a reader
    is blocked opening it, which the watchdog records (``tripped``) and then releases with EOF.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.fifo = folder / "secret.fifo"
        os.mkfifo(self.fifo)
        self.secret = folder / "secret.txt"
        self.secret.write_text("root:$6$do-not-read\n")
        self.tripped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self.before = snapshot(folder)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.005)
                continue
            self.tripped += 1
            os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check(self) -> None:
        assert self.tripped == 0, "a command opened the FIFO outside its folder"
        assert snapshot(self.folder) == self.before, "a command changed files outside its folder"


@pytest.fixture
def guard(tmp_path):
    g = Guard(tmp_path / "outside")
    yield g
    g.close()
    g.check()


def edit_json(path: Path, change) -> dict:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))
    return data


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def engine(micro_ort_engines, tmp_path) -> Path:
    """A fresh copy of the micro fp32 ONNX Runtime engine (tests may damage it)."""
    dst = tmp_path / "target" / "engine"
    shutil.copytree(micro_ort_engines["fp32"], dst)
    return dst


@pytest.fixture
def export(micro_ort_engines, tmp_path) -> Path:
    """A fresh copy of the micro export."""
    dst = tmp_path / "target" / "export"
    shutil.copytree(micro_ort_engines["export"], dst)
    return dst


@pytest.fixture
def payload(micro_checkpoint) -> dict:
    """The micro checkpoint's content (plain data and tensors), to damage and save again."""
    return torch.load(micro_checkpoint, map_location="cpu", weights_only=True)


def verify_engine(engine_dir: Path, tmp_path: Path, *extra):
    data = tmp_path / "target" / "data"
    data.mkdir(parents=True, exist_ok=True)
    return cli("verify", "--dataset", "msrvtt", "--data-root", data, "--engine", engine_dir, "--out",
               tmp_path / "target" / "report", "--quiet", *extra)


# ---------------------------------------------------------------------------------------------------- path escapes
@pytest.mark.parametrize("where", ["relative", "absolute", "extra_files"])
def test_engine_entry_pointing_outside_is_refused_unread(engine, tmp_path, guard, where):
    def change(m):
        entry = m["graphs"]["text_encoder"]
        if where == "relative":
            entry["file"] = "../../outside/secret.fifo"
        elif where == "absolute":
            entry["file"] = str(guard.fifo)
        else:
            entry["extra_files"] = [{"file": str(guard.fifo), "sha256": "0" * 64}]

    edit_json(engine / "manifest.json", change)
    line = refused(verify_engine(engine, tmp_path), 1, "manifest.json", "secret.fifo")
    assert "outside its folder" in line


def test_engine_symlink_is_refused_even_with_matching_content(engine, tmp_path, guard):
    real = guard.folder / "copy.onnx"
    shutil.copy(engine / "text_encoder.onnx", real)  # same bytes, same sha256 as the manifest records
    guard.before = snapshot(guard.folder)
    (engine / "text_encoder.onnx").unlink()
    (engine / "text_encoder.onnx").symlink_to(real)
    refused(verify_engine(engine, tmp_path), 1, "text_encoder.onnx", "symlink")
    (engine / "text_encoder.onnx").unlink()
    (engine / "text_encoder.onnx").symlink_to(guard.fifo)
    refused(cli("bench", "--engine", engine, "--out", tmp_path / "target" / "bench"), 1, "symlink")
    (engine / "manifest.json").rename(engine / "real-manifest.json")
    (engine / "manifest.json").symlink_to(engine / "real-manifest.json")
    refused(verify_engine(engine, tmp_path), 1, "manifest.json", "symlink")


def test_export_entries_pointing_outside_are_refused(export, tmp_path, guard):
    out = tmp_path / "target" / "engine"
    edit_json(export / "manifest.json", lambda m: m["graphs"]["video_encoder"].update(file="../../outside/secret.fifo"))
    refused(cli("build-engine", export, "--out", out), 1, "video_encoder", "secret.fifo")
    edit_json(export / "manifest.json", lambda m: m["graphs"]["video_encoder"].update(
        file="video_encoder.onnx", external_data={"file": str(guard.fifo), "sha256": "0" * 64}))
    refused(cli("build-engine", export, "--out", out), 1, "secret.fifo")

    def rename_graph(m):  # graph names become engine file names: a name that is a path must not be written
        m["graphs"]["video_encoder"].pop("external_data")
        m["graphs"]["../../outside/evil"] = m["graphs"].pop("text_encoder")

    edit_json(export / "manifest.json", rename_graph)
    refused(cli("build-engine", export, "--out", out), 1, "../../outside/evil")
    assert not out.exists()


def test_onnx_external_data_outside_the_folder_is_refused(export, tmp_path, guard):
    """A graph whose initializer loads external data from outside: refused before any runtime opens it."""
    import onnx

    path = export / "text_encoder.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    init.data_location = onnx.TensorProto.EXTERNAL
    init.ClearField("raw_data")
    for key, value in (("location", "../../outside/secret.fifo"), ("offset", "0"), ("length", "16")):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    edit_json(export / "manifest.json", lambda m: m["graphs"]["text_encoder"].update(
        sha256=sha(path), bytes=path.stat().st_size))  # re-recorded as a whole: the graph itself is refused
    refused(cli("build-engine", export, "--out", tmp_path / "target" / "engine"), 1, "text_encoder",
            "external data", "secret.fifo")


def _msrvtt(root: Path, test_csv: bytes | None = None, data: dict | str | None = None) -> Path:
    (root / "videos").mkdir(parents=True)
    (root / "MSRVTT_JSFUSION_test.csv").write_bytes(
        test_csv if test_csv is not None else b"key,vid_key,video_id,sentence\nret0,msr0,video0,a cat\n")
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\n")
    (root / "MSRVTT_data.json").write_text(data if isinstance(data, str) else json.dumps(
        data if data is not None else {"sentences": [{"video_id": "video0", "caption": "a cat"}]}))
    return root


def test_dataset_video_id_escaping_the_videos_folder_is_refused(tmp_path, guard):
    os.mkfifo(guard.folder / "x.mp4")  # where ../../outside/x would land
    guard.before = snapshot(guard.folder)
    root = _msrvtt(tmp_path / "target" / "data",
                   b"key,vid_key,video_id,sentence\nret0,msr0,../../outside/x,a cat\n")
    refused(cli("data-check", "--dataset", "msrvtt", "--data-root", root, "--no-cache", "--quiet"), 1,
            "MSRVTT_JSFUSION_test.csv", "../../outside/x", "not a plain file name")
    root2 = _msrvtt(tmp_path / "target" / "data2", b"key,vid_key,video_id,sentence\nret0,m,/etc/shadow,a cat\n")
    refused(cli("data-check", "--dataset", "msrvtt", "--data-root", root2, "--no-cache", "--quiet"), 1,
            "/etc/shadow")
    long_id = "v" * 300  # no file system holds such a name: a damaged annotation, not "check the permissions"
    root3 = _msrvtt(tmp_path / "target" / "data3", f"key,vid_key,video_id,sentence\nret0,m,{long_id},a cat\n".encode())
    refused(cli("data-check", "--dataset", "msrvtt", "--data-root", root3, "--no-cache", "--quiet"), 1,
            "MSRVTT_JSFUSION_test.csv", "is 300 bytes long")


# ---------------------------------------------------------------------------------------------------- half artifacts
def test_hidden_and_temporary_folders_are_never_the_latest_artifact(engine, tmp_path):
    from rap_deploy.workspace import latest_child

    engines = tmp_path / "ws" / "engines"
    engines.mkdir(parents=True)
    for name in (".onnxruntime-fp32.partial-4242", "onnxruntime-fp32.old-7", ".x.failed"):
        shutil.copytree(engine, engines / name)  # complete manifests, newer than anything real
    refused(cli("bench", "--workspace", tmp_path / "ws", "--quiet"), 2, "no engine in")
    shutil.copytree(engine, engines / "onnxruntime-fp32")
    os.utime(engines / "onnxruntime-fp32" / "manifest.json", (1, 1))  # the oldest of all
    assert latest_child(engines, "manifest.json") == engines / "onnxruntime-fp32"


def _subprocess_cli(args, crash_at: str | None, **env_extra) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    env.pop("RAPDEPLOY_CRASH_AT", None)
    if crash_at:
        env["RAPDEPLOY_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, "-m", "rap_deploy.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_killed_build_engine_and_export_leave_the_previous_artifact(micro_ort_engines, micro_checkpoint, tmp_path):
    """SIGKILL at every step of build-engine and export --force: the previous artifact stays usable, and no folder a
    bare command would pick up is left; the next writer cleans up. All kills run concurrently (one wait)."""
    from rap_deploy.engines.build import build_engine, resolve_export_dir
    from rap_deploy.engines.engine_refs import resolve_engine
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.export import read_export_manifest

    runs = {}
    for point in ("build.manifest-written", "swap.exchanged", "fresh"):
        ws = tmp_path / point
        dest = ws / "engines" / "onnxruntime-fp32"
        if point != "fresh":
            shutil.copytree(micro_ort_engines["fp32"], dest)
        args = ["build-engine", micro_ort_engines["export"], "--workspace", ws, "--force", "--no-validate", "--quiet"]
        runs[point] = (ws, dest, sha(dest / "manifest.json") if dest.exists() else None,
                       _subprocess_cli(args, "build.manifest-written" if point == "fresh" else point))
    for point in ("export.graphs-written", "export.before-swap"):
        ws = tmp_path / point
        shutil.copytree(micro_ort_engines["export"], ws / "onnx")
        args = ["export", micro_checkpoint, "--workspace", ws, "--force", "--quiet"]
        runs[point] = (ws, ws / "onnx", sha(ws / "onnx" / "manifest.json"), _subprocess_cli(args, point))
    for point, (_, _, _, proc) in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == KILLED, (point, proc.returncode, err)

    for point in ("build.manifest-written", "swap.exchanged"):
        ws, dest, before, _ = runs[point]
        assert resolve_engine(None, ws) == dest  # what a bare verify / bench opens
        assert _visible(ws / "engines") == ["onnxruntime-fp32"]
        load_engine(dest).close()  # complete: every hash and the precision claim check out
        # killed before the swap: the old engine; killed after the exchange: the new one (the old one hidden)
        assert (sha(dest / "manifest.json") == before) == (point == "build.manifest-written")
    ws, dest, _, _ = runs["fresh"]
    assert (ws / "engines").is_dir() and not dest.exists()
    assert any((p / "manifest.json").is_file() for p in (ws / "engines").iterdir())  # the partial build is there...
    refused(cli("bench", "--workspace", ws, "--quiet"), 2, "no engine in")  # ...and no command takes it

    for point in ("export.graphs-written", "export.before-swap"):
        ws, dest, before, _ = runs[point]
        assert sha(dest / "manifest.json") == before and read_export_manifest(dest)["format"] == "rapdeploy.export"
        assert resolve_export_dir(None, ws) == dest
        assert _visible(ws) == ["onnx"] and any(p.name.startswith(".onnx.partial-") for p in ws.iterdir())

    ws, dest, _, _ = runs["swap.exchanged"]  # the next build removes what the killed one left behind
    build_engine(micro_ort_engines["export"], workspace=ws, force=True, validate=False, progress=False)
    assert sorted(p.name for p in (ws / "engines").iterdir()) == ["onnxruntime-fp32"]


def test_killed_two_rename_swap_is_recovered(tmp_path):
    """Where the atomic exchange is missing, a kill between the two renames leaves the old folder aside; the next
    writer puts it back before doing anything else."""
    old, new = tmp_path / "engine", tmp_path / ".engine.partial-1"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    new.mkdir()
    (new / "manifest.json").write_text("new")
    code = ("import sys, rap_deploy.folder_swap as fs; fs.USE_EXCHANGE = False; "
            "fs.swap_into_place(fs.Path(sys.argv[1]), fs.Path(sys.argv[2]))")
    env = {**os.environ, "RAPDEPLOY_CRASH_AT": "swap.between-renames"}
    proc = subprocess.run([sys.executable, "-c", code, str(new), str(old)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == KILLED, proc.stderr
    assert not old.exists() and [p.name for p in tmp_path.glob(".engine.old-*")]
    from rap_deploy.folder_swap import staged_folder
    from rap_deploy.locks import folder_lock

    with folder_lock(old, "test"), staged_folder(old) as stage:
        assert (old / "manifest.json").read_text() == "old"  # recovered first
        (stage.path / "manifest.json").write_text("newer")
        stage.commit()
    assert (old / "manifest.json").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]


def test_an_export_left_aside_by_a_killed_swap_is_back_before_export_judges_the_folder(micro_checkpoint, export):
    """A two-rename swap killed between its renames leaves the previous export aside (.<name>.old-<pid>) and --out
    missing. export judged the missing folder free, then staged_folder put the old export back and the new export
    (or a failed one's report) replaced it without --force. The folder is recovered first, then refused (exit 2)."""
    aside = export.parent / f".{export.name}.old-99999"
    export.rename(aside)
    before = snapshot(aside)
    refused(cli("export", micro_checkpoint, "--out", export, "--quiet"), 2, "already exists", "--force")
    assert snapshot(export) == before and not aside.exists()


def test_an_engine_left_aside_by_a_killed_swap_is_back_before_build_engine_judges_the_folder(engine, export):
    """The same for build-engine: an engine folder a killed two-rename swap left aside (.<name>.old-<pid>) was judged
    absent, then put back by staged_folder and replaced without --force. It is recovered first, then refused."""
    aside = engine.parent / f".{engine.name}.old-99999"
    engine.rename(aside)
    before = snapshot(aside)
    refused(cli("build-engine", export, "--backend", "onnxruntime", "--out", engine, "--no-validate", "--quiet"), 2,
            "already exists", "--force")
    assert snapshot(engine) == before and not aside.exists()


# ---------------------------------------------------------------------------------------------------- data loss
def test_failed_export_force_keeps_the_previous_export(micro_checkpoint, export, tmp_path, guard):
    before = snapshot(export)
    empty = tmp_path / "target" / "no-dataset"
    empty.mkdir()
    line = refused(cli("export", micro_checkpoint, "--out", export, "--force", "--data-root", empty, "--quiet"), 2,
                   "MSRVTT_JSFUSION_test.csv")
    assert snapshot(export) == before, line
    assert _visible(export.parent) == ["export", "no-dataset"]


# ---------------------------------------------------------------------------------------------------- bounds
def test_checkpoint_asking_for_a_billion_frames_is_refused_before_allocating(payload, tmp_path, guard):
    payload["config"]["frames"] = 10**9
    path = tmp_path / "target" / "huge.pt"
    path.parent.mkdir()
    torch.save(payload, path)
    refused(cli("info", path), 1, "huge.pt", "frames", "512")


def test_backbone_too_large_for_memory_is_refused_before_creating_it(micro_checkpoint, monkeypatch, tmp_path):
    import psutil

    from rap_deploy.checkpoint import load_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    class Tiny:
        available = 1 << 20  # 1 MiB: even rap-micro's 6 MiB of weights do not fit

    weights = tmp_path / "backbone-weights.pt"  # a small checkpoint: its backbone is this file
    torch.save(load_checkpoint(micro_checkpoint).backbone_state, weights)
    reference = tmp_path / "reference.pt"
    ckpt = load_checkpoint(micro_checkpoint)
    ckpt.backbone, ckpt.backbone_state = BackboneSpec.parse("rap-micro", str(weights)), None
    save_checkpoint(ckpt, reference)
    safetensors = save_checkpoint(load_checkpoint(micro_checkpoint), tmp_path / "micro.safetensors")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    refused(cli("info", reference), 2, "backbone rap-micro", "GiB", "more memory")
    # a checkpoint embedding its backbone is itself larger than that: refused before it is read (was the OOM killer
    # for a file past the memory: torch.load reads every tensor)
    refused(cli("info", micro_checkpoint), 2, f"checkpoint {micro_checkpoint} (read whole)", "GiB", "more memory")
    refused(cli("info", safetensors), 2, "micro.safetensors (read whole)", "GiB")
    refused(cli("info", "--clip", "rap-micro"), 2, "backbone rap-micro", "GiB")  # no checkpoint: the CLIP alone
    refused(cli("init", "--clip", "rap-micro", "--out", Path(micro_checkpoint).parent / "never.pt"), 2, "GiB")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("when", ["after-its-check", "while-loading"])
def test_a_weights_file_replaced_after_its_check_is_refused(micro_checkpoint, monkeypatch, tmp_path, suffix, when):
    """A --pretrained file (init, info) and a --reference-backbone checkpoint's file were hashed, then open_clip read
    the file again by its path: one replaced in between loaded unchecked. The file's identity (inode, size, change
    time) from before the hash must hold once the weights are loaded, else the load is refused: the weights loaded
    are those checked, or none."""
    import open_clip
    from safetensors.torch import save_file

    from rap_deploy.checkpoint import load_checkpoint, save_checkpoint
    from rap_deploy.errors import UsageError
    from rap_deploy.model import clip_loader
    from rap_deploy.model.clip_loader import BackboneSpec, load_clip

    state = {k: v.contiguous() for k, v in load_checkpoint(micro_checkpoint).backbone_state.items()}
    weights = tmp_path / f"backbone{suffix}"
    save = (lambda sd, path: save_file(sd, str(path))) if suffix == ".safetensors" else torch.save
    save(state, weights)
    spec = BackboneSpec.parse("rap-micro", str(weights))
    ckpt = load_checkpoint(micro_checkpoint)
    ckpt.backbone, ckpt.backbone_state = spec, None
    reference = save_checkpoint(ckpt, tmp_path / "reference.pt")
    assert torch.equal(load_checkpoint(reference).build_model().clip.state_dict()["logit_scale"],
                       state["logit_scale"])  # unchanged, it loads
    target = (clip_loader, "_check_weights_file") if when == "after-its-check" else (open_clip, "create_model")
    original = getattr(*target)

    def replacing(*args, **kwargs):  # other weights put in the file's place once it was checked
        save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, weights)
        return original(*args, **kwargs)

    monkeypatch.setattr(*target, replacing)
    for build in (lambda: load_clip(spec), lambda: load_checkpoint(reference).build_model()):
        with pytest.raises(UsageError, match="changed while it was loaded"):
            build()
        save(state, weights)


def test_synth_refuses_videos_larger_than_memory_and_drops_a_stale_annotation_first(tmp_path, monkeypatch):
    """A video is rendered whole: one that cannot fit is refused before rendering. Writing into a dataset folder
    removes its annotation before the first video, so a run killed half-way never leaves the old annotation over new
    videos (data-check would pass it)."""
    from rap_deploy.data import synth_dataset

    refused(cli("synth", "--out", tmp_path / "huge", "--size", "1024", "--fps", "240", "--seconds", "3600",
                "--quiet"), 2, "GiB", "--size")
    data = tmp_path / "data"
    synth_dataset.generate_synthetic_dataset(data, videos=4, test_videos=2, size=32, progress=False)
    assert (data / "MSRVTT_data.json").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_dataset, "_write_videos", killed)
    with pytest.raises(KeyboardInterrupt):
        synth_dataset.generate_synthetic_dataset(data, videos=4, test_videos=2, size=32, seed=1, progress=False)
    assert not (data / "MSRVTT_data.json").exists()


@pytest.mark.parametrize("args, needle", [
    (["bench", "--batch-sizes", "100000000"], "--batch-sizes"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--torch-device", "tpu"], "--torch-device"),
    (["verify", "--dataset", "msrvtt", "--tolerance", "nan"], "--tolerance"),
    (["data-check", "--dataset", "msrvtt", "--image-size", "0"], "--image-size"),
    (["data-check", "--dataset", "msrvtt", "--frames", "100000"], "--frames"),
    (["build-engine", "--max-batch", "100000000"], "--max-batch"),
    (["pretrain-backbone", "--lr", "inf"], "--lr"),
    (["synth", "--out", "x", "--size", "100000"], "--size"),
    (["init", "--clip", "rap-micro", "--frames", "100000000", "--out", "x.pt"], "frames"),
])
def test_out_of_bounds_options_are_usage_errors(args, needle, tmp_path, micro_checkpoint):
    args = [a if a != "x" and a != "x.pt" else str(tmp_path / a) for a in args]
    if args[0] == "bench":
        args += ["--checkpoint", str(micro_checkpoint)]
    refused(cli(*args), 2, needle)


@pytest.mark.parametrize("option, value", [("--epochs", "100000000000000000000"), ("--lr", "nan"), ("--lr", "inf"),
                                           ("--lr", "-1"), ("--weight-decay", "nan"), ("--warmup", "-1"),
                                           ("--grad-clip", "inf"), ("--batch-size", "0"),
                                           ("--selection-loss-weight", "nan"), ("--selection-loss-weight", "-1"),
                                           ("--lorm-lr-mult", "0"), ("--lorm-lr-mult", "nan")])
def test_bad_training_numbers_are_usage_errors(option, value, micro_checkpoint, tmp_path):
    data = _msrvtt(tmp_path / "data")
    result = cli("train", "--dataset", "msrvtt", "--data-root", data, "--checkpoint", micro_checkpoint, "--out",
                 tmp_path / "run", option, value, "--quiet")
    refused(result, 2, option)
    assert not (tmp_path / "run").exists()


def test_option_parse_errors_are_one_line_in_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rap_deploy.cli", "train", "--epochs", "1e20"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--epochs" in proc.stderr


# ---------------------------------------------------------------------------------------------------- integrity
@pytest.mark.parametrize("claim", ["int8", "fp16"])
def test_relabelled_engine_precision_is_refused(engine, tmp_path, guard, claim):
    edit_json(engine / "manifest.json", lambda m: m.update(precision=claim))
    refused(verify_engine(engine, tmp_path), 1, f"precision {claim}", "manifest.json")


def test_export_opset_claim_is_checked_against_the_graphs(export, tmp_path, guard):
    edit_json(export / "manifest.json", lambda m: m.update(opset=18))
    refused(cli("build-engine", export, "--out", tmp_path / "target" / "engine"), 1, "opset", "18", "17")


def test_garbage_onnx_with_a_matching_sha_is_damaged_not_a_traceback(engine, export, tmp_path, guard):
    for folder in (engine, export):
        graph = folder / "text_encoder.onnx"
        graph.write_bytes(b"garbage, not ONNX " * 256)  # does not parse as protobuf
        edit_json(folder / "manifest.json",
                  lambda m, g=graph: m["graphs"]["text_encoder"].update(sha256=sha(g), bytes=g.stat().st_size))
    refused(verify_engine(engine, tmp_path), 1, "text_encoder.onnx", "not a valid ONNX graph")
    refused(cli("build-engine", export, "--out", tmp_path / "target" / "e2"), 1, "text_encoder.onnx")


def test_verify_with_another_checkpoint_says_so(engine, payload, tmp_path):
    other = tmp_path / "target" / "other.pt"
    payload["extra"] = {"note": "another training run"}
    torch.save(payload, other)
    refused(verify_engine(engine, tmp_path, "--checkpoint", other), 2, "other.pt", "not the checkpoint")


def test_manifest_checkpoint_path_is_never_hashed_or_printed(engine, tmp_path, guard):
    edit_json(engine / "manifest.json", lambda m: m["checkpoint"].update(path=str(guard.secret)))
    line = refused(verify_engine(engine, tmp_path), 2, "secret.txt", "not an existing checkpoint file")
    assert hashlib.sha256(guard.secret.read_bytes()).hexdigest()[:16] not in line


# ---------------------------------------------------------------------------------------------------- checkpoints
class _Touch:
    """Unpickling this would create ``marker``: the proof that no code ran is that it does not exist."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind, code, needles", [
    ("empty", 1, ["empty (0 bytes)"]),
    ("random", 2, ["not a checkpoint"]),
    ("text", 2, ["not a checkpoint"]),
    ("truncated", 1, ["truncated"]),
    ("folder", 2, ["is a folder"]),
    ("fifo", 2, ["not a regular file"]),
    ("pickle-zip", 2, ["pickled Python objects", "weights_only=False"]),
    ("pickle-raw", 2, ["pickled Python objects"]),
    ("no-adapters", 1, ["adapter_state"]),
    ("bad-backbone", 1, ["'backbone'"]),
    ("no-backbone-weights", 1, ["random one", "'backbone_state' weights are missing"]),  # was a new random CLIP
    ("wrong-shape", 1, ["do not fit"]),
    ("float8-adapter", 1, ["float8_e4m3fn tensor", "adapter_state"]),  # isfinite's NotImplementedError traceback
    ("complex-adapter", 1, ["complex64 tensor"]),  # was loaded silently, its imaginary part dropped
    ("int-backbone", 1, ["int64 tensor", "backbone_state"]),  # was loaded silently as whole-number weights
    ("bad-config-type", 1, ["invalid model config", "frames"]),
    ("bad-interpolation", 1, ["invalid model config", "interpolation must be one of"]),
    ("tiny-std", 1, ["invalid model config", "std must be >= 1e-6"]),
    ("huge-mean", 1, ["invalid model config", "mean must be three finite numbers"]),
    ("clip-mismatch", 1, ["names CLIP 'ViT-B-32' but its backbone is 'rap-micro'"]),
    # a setting of a newer rapdeploy is no damage (it was 'invalid model config ... damaged or was edited', exit 1)
    ("newer-setting", 2, ["preprocess.crop_scale", "written by a newer rapdeploy"]),
    ("unknown-clip", 1, ["open_clip has no model config", "damaged"]),
    ("st-header", 1, ["safetensors", "truncated or damaged"]),
    ("st-meta-json", 1, ["metadata is not valid JSON"]),
    ("st-meta-list", 1, ["metadata is a list"]),
])
def test_damaged_or_foreign_checkpoints_get_one_line(kind, code, needles, payload, micro_checkpoint, tmp_path):
    from safetensors.torch import save_file

    target = tmp_path / "target"
    target.mkdir()
    marker = tmp_path / "code-ran"
    path = target / ("ckpt.safetensors" if kind.startswith("st-") else "ckpt.pt")
    good = micro_checkpoint.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(b"\x13\x37" + os.urandom(2000))
    elif kind == "text":
        path.write_text("hello, this is not a checkpoint\n")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "pickle-zip":
        torch.save({"format": "rapdeploy.checkpoint", "x": _Touch(marker)}, path)
    elif kind == "pickle-raw":
        path.write_bytes(pickle.dumps({"format": "rapdeploy.checkpoint", "x": _Touch(marker)}))
    elif kind.startswith("st-"):
        tensors = {f"adapter.{k}": v.contiguous() for k, v in payload["adapter_state"].items()}
        meta = {k: v for k, v in payload.items() if k not in ("adapter_state", "backbone_state")}
        text = {"st-meta-json": "{not json", "st-meta-list": "[1, 2]"}.get(kind, json.dumps(meta))
        save_file(tensors, str(path), metadata={"rapdeploy": text})
        if kind == "st-header":
            path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])
    else:
        if kind == "no-adapters":
            del payload["adapter_state"]
        elif kind == "no-backbone-weights":
            payload["backbone_state"] = None
        elif kind == "bad-backbone":
            payload["backbone"] = {"clip": 5}
        elif kind == "wrong-shape":
            name = next(iter(payload["adapter_state"]))
            payload["adapter_state"][name] = torch.zeros(3, 3, 3)
        elif kind.endswith("-adapter"):  # the right shape, a dtype rapdeploy never writes
            name = next(iter(payload["adapter_state"]))
            dtype = torch.float8_e4m3fn if kind == "float8-adapter" else torch.complex64
            payload["adapter_state"][name] = payload["adapter_state"][name].to(dtype)
        elif kind == "int-backbone":
            name = next(iter(payload["backbone_state"]))
            payload["backbone_state"][name] = payload["backbone_state"][name].long()
        elif kind == "bad-config-type":
            payload["config"]["frames"] = "twelve"
        elif kind == "bad-interpolation":
            payload["config"]["preprocess"]["interpolation"] = "garbage"
        elif kind == "tiny-std":
            payload["config"]["preprocess"]["std"] = [1e-300, 1.0, 1.0]
        elif kind == "huge-mean":  # an integer past float's range (pickle and JSON both carry one)
            payload["config"]["preprocess"]["mean"] = [10**400, 0.5, 0.5]
        elif kind == "newer-setting":
            payload["config"]["preprocess"]["crop_scale"] = 0.9
        elif kind == "clip-mismatch":  # the config and the backbone must name the same CLIP
            payload["config"]["clip"] = "ViT-B-32"
        elif kind == "unknown-clip":
            payload["config"]["clip"] = payload["backbone"]["clip"] = "../../etc/passwd"
        torch.save(payload, path)
    refused(cli("info", path), code, "ckpt", *needles)
    refused(cli("export", path, "--out", target / "onnx"), code, *needles)
    assert not marker.exists() and not (target / "onnx").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_as_pretrained_weights_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "target" / "open_clip_model.pt"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps({"state_dict": _Touch(marker)}))
    refused(cli("init", "--clip", "rap-micro", "--pretrained", evil, "--out", tmp_path / "target" / "c.pt"), 2,
            "open_clip_model.pt", "pickled Python objects")
    torch.save({"state_dict": _Touch(marker)}, evil)
    refused(cli("init", "--clip", "rap-micro", "--pretrained", evil, "--out", tmp_path / "target" / "c.pt"), 2,
            "pickled Python objects")
    evil.write_bytes(b"")
    refused(cli("init", "--clip", "rap-micro", "--pretrained", evil, "--out", tmp_path / "target" / "c.pt"), 1,
            "empty")
    assert not marker.exists() and not (tmp_path / "target" / "c.pt").exists()


def test_an_uncached_pretrained_tag_offline_is_one_line(tmp_path):
    """A tag whose weights are not in the local cache, offline: one error line naming the tag and the ways out, and
    none of open_clip's or huggingface_hub's log lines (a subprocess, so their loggers start fresh)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "rap_deploy.cli", "init", "--clip", "ViT-B-32", "--pretrained",
                           "openai", "--out", str(tmp_path / "b32.pt")], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot load backbone ViT-B-32 with pretrained=openai"), lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0] and "local weights file" in lines[0]
    assert not (tmp_path / "b32.pt").exists()


def test_broken_backbone_file_is_one_line(tmp_path):
    bad = tmp_path / "backbone.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{oops}")
    refused(cli("init", "--backbone", bad, "--out", tmp_path / "c.pt"), 1, "backbone.safetensors")


def test_weights_of_another_model_are_bad_usage_not_a_damaged_file(tmp_path):
    """A valid weights file of another CLIP: the message says to pass that model's weights or its --clip (exit 2),
    never "truncated or damaged, copy it again"."""
    import open_clip
    from safetensors.torch import save_file

    from rap_deploy.model.clip_loader import register_packaged_configs

    register_packaged_configs()
    micro = open_clip.create_model("rap-micro")
    weights = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in micro.state_dict().items()}, str(weights))
    refused(cli("init", "--clip", "rap-tiny", "--pretrained", weights, "--out", tmp_path / "c.pt"), 2,
            "does not fit open_clip model rap-tiny", "--clip")


# ---------------------------------------------------------------------------------------------------- workspaces
@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot create anything in (chmod 0555; as root a path under read-only /sys)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder / "ws"
        folder.chmod(0o755)
        return
    candidate = Path("/sys/rapdeploy-hostile-test")
    try:
        candidate.mkdir()
    except OSError:
        yield candidate / "ws"
        return
    candidate.rmdir()
    pytest.skip("running as root and /sys is writable here: no unwritable folder to test with")


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_workspace_that_cannot_be_written_fails_first(kind, micro_ort_engines, micro_checkpoint, tmp_path,
                                                      unwritable):
    if kind == "file":
        ws = tmp_path / "ws-file"
        ws.write_text("not a folder")
    else:
        ws = unwritable
    data = _msrvtt(tmp_path / "data")
    commands = {
        "export": ["export", micro_checkpoint],
        "build-engine": ["build-engine", micro_ort_engines["export"]],
        "verify": ["verify", "--dataset", "msrvtt", "--data-root", data, "--engine", micro_ort_engines["fp32"]],
        "bench": ["bench", "--engine", micro_ort_engines["fp32"]],
        "train": ["train", "--dataset", "msrvtt", "--data-root", data, "--checkpoint", micro_checkpoint],
        "pretrain-backbone": ["pretrain-backbone"],
    }
    for name, args in commands.items():
        line = refused(cli(*args, "--workspace", ws, "--quiet"), 2, str(ws))
        assert "cannot" in line or "not a folder" in line or "is a file" in line, (name, line)


def test_outputs_that_are_the_wrong_kind_of_path(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    refused(cli("synth", "--out", a_file, "--quiet"), 2, "--out", "is a file")
    refused(cli("init", "--clip", "rap-micro", "--out", tmp_path), 2, "--out", "is a folder")
    refused(cli("train", "--resume", tmp_path / "no-such-run"), 2, "no-such-run", "does not exist")


# ---------------------------------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("damage, split, needle", [
    ("binary-csv", "test", "not UTF-8 text"),
    ("nul-csv", "test", "MSRVTT_JSFUSION_test.csv"),
    ("sentences-5", "train", "'sentences'"),
    ("caption-dict", "train", "'caption'"),
    ("id-list", "train", "'video_id'"),
    ("huge-int", "train", "not valid JSON"),  # more digits than Python converts
])
def test_damaged_annotation_files_are_exit_1(damage, split, needle, tmp_path):
    kw = {}
    if damage == "binary-csv":
        kw["test_csv"] = b"key,video_id\n\xff\xfe\x00\x81garbage\n"
    elif damage == "nul-csv":
        kw["test_csv"] = b"key,vid_key,video_id,sentence\nret0,m,vid\x000,a cat\n"
    elif damage == "sentences-5":
        kw["data"] = {"sentences": 5}
    elif damage == "caption-dict":
        kw["data"] = {"sentences": [{"video_id": "video0", "caption": {"x": 1}}]}
    elif damage == "id-list":
        kw["data"] = {"sentences": [{"video_id": ["video0"], "caption": "a cat"}]}
    elif damage == "huge-int":
        kw["data"] = '{"sentences": [], "n": ' + "9" * 5000 + "}"
    root = _msrvtt(tmp_path / "data", **kw)
    refused(cli("data-check", "--dataset", "msrvtt", "--data-root", root, "--split", split, "--no-cache", "--quiet"),
            1, needle)


def test_a_video_path_that_is_not_a_file_is_named_so(tmp_path):
    root = _msrvtt(tmp_path / "data")
    os.mkfifo(root / "videos" / "video0.mp4")  # present, but no decoder can read it: not "missing"
    result = cli("data-check", "--dataset", "msrvtt", "--data-root", root, "--no-cache", "--quiet")
    assert result.exit_code == 1 and "not a regular file" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------- concurrency
class LockHolder:
    """Another process holding the lock of ``target`` until :meth:`release` (stdin closed) or :meth:`kill`."""

    CODE = ("import sys; from rap_deploy.locks import folder_lock\n"
            "with folder_lock(sys.argv[1], 'export'):\n    print('locked', flush=True); sys.stdin.read()")

    def __init__(self, target: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, str(target)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.locked = self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc.stdin.close()
        self.proc.stdout.close()


def test_second_writer_is_told_who_holds_the_folder(micro_checkpoint, export, tmp_path):
    from rap_deploy.locks import folder_lock

    holder = LockHolder(export)
    try:
        assert holder.locked
        before = snapshot(export)
        refused(cli("export", micro_checkpoint, "--out", export, "--force"), 2, str(export),
                f"process {holder.pid}", "`rapdeploy export`")
        refused(cli("build-engine", export, "--out", export, "--force"), 2, f"process {holder.pid}")
        assert snapshot(export) == before
    finally:
        holder.release()
    holder = LockHolder(export)
    holder.kill()  # SIGKILL: the kernel releases the lock, so no stale lock can block the next writer
    assert holder.locked
    with folder_lock(export, "test"):
        pass


# ---------------------------------------------------------------------------------------------------- files
def test_atomic_writes_fsync_the_folder_and_keep_the_umask(tmp_path, monkeypatch):
    from rap_deploy import atomic

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    if Path("/proc/self/status").is_file():  # the umask is read, never set (os.umask is process-wide)
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask was called"))
    atomic.write_text_atomic(tmp_path / "a.json", "{}")
    assert synced == [False, True]


def test_atomic_writes_under_a_umask_that_takes_the_owners_write_bit(tmp_path, monkeypatch):
    """With umask 0o277 the finished file is 0o400 and was then opened 'rb+' to fsync it: PermissionError for every
    user but root (simulated here: the tests may run as root, who may open any file for writing)."""
    import builtins

    from rap_deploy import atomic

    def as_a_user(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wa+") and not os.stat(file).st_mode & stat.S_IWUSR:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "_umask", lambda: 0o277)
    monkeypatch.setattr(atomic, "open", as_a_user, raising=False)
    atomic.write_text_atomic(tmp_path / "a.json", "{}")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o400
    assert [*tmp_path.iterdir()] == [tmp_path / "a.json"]


@pytest.mark.parametrize("name", ["r" * 245 + ".json", "é" * 120 + ".json", "x." + "s" * 240])
def test_atomic_writes_to_a_name_near_the_length_limit(tmp_path, name):
    """The temporary file was named '.<name>.<random><suffix>.tmp': for a name the filesystem accepts, up to 255
    bytes, that was over the limit and the write failed (File name too long) after all the work."""
    from rap_deploy import atomic

    atomic.write_text_atomic(tmp_path / name, "{}")
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_text() == "{}"


def test_safetensors_and_pt_outputs_get_the_same_mode(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("c.safetensors", "c.pt"):
        result = cli("init", "--clip", "rap-micro", "--frames", "4", "--out", tmp_path / name, "--json")
        assert result.exit_code == 0, result.output
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_sigterm_leaves_no_temporary_file(tmp_path):
    """SIGTERM right after an atomic write created its temporary file: the command unwinds, removes it, exits 143
    with one line. (The same CLI handler and atomic_path serve train's best.pt/last.pt; synth is just faster.)"""
    out = tmp_path / "data"
    proc = _subprocess_cli(["synth", "--out", out, "--videos", "2", "--test-videos", "1", "--seconds", "3", "--size",
                            "32", "--quiet"], "atomic.tmp-created:TERM")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert err.strip().startswith("error: terminated") and err.strip().count("\n") == 0, err
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no 0-byte temporary file, no half file


def _spawned_children(pid: int) -> list[int]:
    """The live multiprocessing workers whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat_file.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"multiprocessing.spawn" in cmdline:
            found.append(int(stat_file.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads worker processes from /proc (Linux)")
def test_sigterm_stops_ablate_workers(tmp_path):
    """SIGTERM to `ablate --jobs 2` while both workers train: the command exits 143 with one error line and takes its
    workers with it (none is left training, so a rerun does not race them for the same run folders)."""
    import time

    out = tmp_path / "ablation"
    proc = _subprocess_cli(["ablate", "--tiny", "--world", tmp_path / "world", "--out", out, "--rows", "rap",
                            "--seeds", "0,1", "--jobs", "2", "--threads", "1", "--epochs", "500", "--quiet"], None)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _spawned_children(proc.pid)
            if len(workers) == 2 and all((out / "rap" / f"seed{k}" / "metrics.jsonl").is_file() for k in (0, 1)):
                break
            time.sleep(0.5)
        assert len(workers) == 2 and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else workers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # a worker left alive would hold stderr open: this times out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.2)
        left = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    finally:  # never leave a process behind, whatever failed above
        if proc.poll() is None:
            proc.kill()
        for pid in workers:
            with contextlib.suppress(OSError):
                if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # after the step lines
    assert len(errors) == 1 and errors[0].startswith("error: terminated"), err
    assert left == [], f"workers {left} outlived the command"


# ---------------------------------------------------------------------------------------------------- the rules
def test_entry_and_name_rules(tmp_path):
    """The resolver's rules in one place (what the library and serving code get when they call it)."""
    from rap_deploy.safe_paths import UnsafePathError, check_plain_name, resolve_entry
    from rap_deploy.workspace import is_temporary_name

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "000.npy").write_bytes(b"x")
    assert resolve_entry(tmp_path, "shards/000.npy") == tmp_path / "shards" / "000.npy"
    assert resolve_entry(tmp_path, "not-yet.onnx") == tmp_path / "not-yet.onnx"  # missing: the caller says so
    for bad in ("", "..", "../x", "a/../b", "/etc/shadow", "a//b", "./a", "a\\b", "x\0y", "~root", 5, None, ["a"]):
        with pytest.raises(UnsafePathError):
            resolve_entry(tmp_path, bad, "test entry", tmp_path / "manifest.json")
    (tmp_path / "link").symlink_to(tmp_path / "shards")  # a symlink component, even one pointing inside
    with pytest.raises(UnsafePathError, match="symlink"):
        resolve_entry(tmp_path, "link/000.npy")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        resolve_entry(tmp_path, "shards")
    assert check_plain_name("video7", "video id") == "video7" and check_plain_name(42, "video id") == "42"
    for bad in ("", ".", "..", "a/b", "..\\x", "x\0", True, 1.5):
        with pytest.raises(UnsafePathError):
            check_plain_name(bad, "video id")
    assert [n for n in (".x", "e.partial-3", "e.old-9", "e.failed", "e.tmp", "e.lock", "onnxruntime-fp32", "my.tmpl")
            if is_temporary_name(n)] == [".x", "e.partial-3", "e.old-9", "e.failed", "e.tmp", "e.lock"]


def _edited_copy(folder: Path, dest: Path, edit) -> Path:
    shutil.copytree(folder, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


ENGINE_EDITS = {
    "versions not an object": (lambda m: m.update(versions=[1]), "'versions' is not an object"),
    "threads as text": (lambda m: m.setdefault("session", {}).update(threads="2"), "is not an integer"),
    "config against its graphs": (lambda m: m["config"].update(context_length=16),
                                  "rapdeploy.config differs from the manifest's 'config' (in context_length)"),
    "graphs swapped": (lambda m: m["graphs"].update(video_encoder=m["graphs"]["text_encoder"],
                                                    text_encoder=m["graphs"]["video_encoder"]),
                       "the manifest lists it as 'video_encoder'"),
    # the export record serve and triton-repo describe the graphs from (it was never checked)
    "export I/O against its graphs": (lambda m: m["export"]["graphs"]["text_encoder"]["inputs"][0].update(
        dtype="int64"), "differ from the manifest's 'export.graphs.text_encoder.inputs'"),
    "export config": (lambda m: m["export"]["config"].update(asa_topk=2), "'export.config' differs from its 'config'"),
    "export preprocess copy": (lambda m: m["export"]["preprocess"].update(interpolation="bilinear"),
                               "'export.preprocess' differs from what its 'config' derives (in interpolation)"),
    # the weights' source a library compares before an engine may search it
    "checkpoint against its graphs": (lambda m: m["checkpoint"].update(sha256="0" * 64),
                                      "rapdeploy.checkpoint_sha256 is"),
    "export checkpoint": (lambda m: m["export"]["checkpoint"].update(sha256="0" * 64),
                          "'export.checkpoint' differs from its 'checkpoint'"),
}
EXPORT_EDITS = {
    "dims not an object": (lambda m: m.update(dims="x"), "'dims' is not an object"),
    "dims value as text": (lambda m: m["dims"].update(context_length="abc"), "dims.context_length 'abc'"),
    "checkpoint not an object": (lambda m: m.update(checkpoint="x"), "'checkpoint' is not an object"),
    "config against its graphs": (lambda m: m["config"].update(asa_topk=2), "differs from the manifest's 'config'"),
    "checkpoint against its graphs": (lambda m: m["checkpoint"].update(sha256="0" * 64),
                                      "rapdeploy.checkpoint_sha256 is"),
    # built first and refused after the build as an unusable engine (exit 2)
    "a graph the model needs removed": (lambda m: m["graphs"].pop("asa_head"),
                                        "its 'graphs' lists ['text_encoder', 'video_encoder'], its config's model "
                                        "exports ['asa_head', 'text_encoder', 'video_encoder']"),
}


@pytest.mark.parametrize("case", list(ENGINE_EDITS))
def test_an_edited_engine_manifest_is_damaged(micro_ort_engines, tmp_path, case):
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.errors import CheckFailedError

    edit, needle = ENGINE_EDITS[case]
    engine = _edited_copy(micro_ort_engines["fp32"], tmp_path / "engine", edit)
    with pytest.raises(CheckFailedError) as err:
        load_engine(engine)
    assert needle in str(err.value)


@pytest.mark.parametrize("case", list(EXPORT_EDITS))
def test_an_edited_export_manifest_is_damaged_one_line(micro_ort_engines, tmp_path, case):
    edit, needle = EXPORT_EDITS[case]
    export = _edited_copy(micro_ort_engines["export"], tmp_path / "export", edit)
    line = refused(cli("build-engine", export, "--backend", "onnxruntime", "--out", tmp_path / "e"), 1)
    assert needle in line and not (tmp_path / "e").exists()


def _edit_graph_metadata(folder: Path, section: str, graph: str, key: str, change: dict) -> None:
    """Update the JSON metadata prop ``rapdeploy.<key>`` of one listed graph and re-record its sha256 and size, as
    someone editing the folder by hand would (the hashes then agree)."""
    import onnx

    from rap_deploy.atomic import sha256_file

    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest[section][graph]
    path = folder / entry["file"]
    model = onnx.load(str(path), load_external_data=False)
    prop = next(p for p in model.metadata_props if p.key == f"rapdeploy.{key}")
    prop.value = json.dumps({**json.loads(prop.value), **change}, sort_keys=True)
    onnx.save(model, str(path))
    entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_copies_of_the_settings_a_config_defines_must_equal_what_it_derives(micro_ort_engines, tmp_path):
    """The export manifest's 'preprocess', 'tokenizer' and 'sampling' and each graph's rapdeploy.preprocess /
    .tokenizer / .sampling metadata are copies of what the model config defines (outside tools read them); they were
    written and never read back, so an edited copy (another mean, context length or frame count) passed every check
    and misled whoever read it. Each copy is now compared with what the config derives (exit 1, naming the field)."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.export import read_export_manifest

    export = _edited_copy(micro_ort_engines["export"], tmp_path / "export",
                          lambda m: m["preprocess"].update(mean=[0.5, 0.5, 0.5]))
    with pytest.raises(CheckFailedError, match="its 'preprocess' differs from what its 'config' derives \\(in mean\\)"):
        read_export_manifest(export)
    export = _edited_copy(micro_ort_engines["export"], tmp_path / "export1", lambda m: m.update(has_asa=False))
    with pytest.raises(CheckFailedError, match="its 'has_asa' differs from what its 'config' derives"):
        read_export_manifest(export)
    export = _edited_copy(micro_ort_engines["export"], tmp_path / "export2", lambda m: None)
    _edit_graph_metadata(export, "graphs", "text_encoder", "tokenizer", {"context_length": 77})
    line = refused(cli("build-engine", export, "--backend", "onnxruntime", "--out", tmp_path / "e"), 1)
    assert "text_encoder" in line and "rapdeploy.tokenizer differs from what the manifest's 'config' derives (in " \
        "context_length)" in line and not (tmp_path / "e").exists()
    engine = _edited_copy(micro_ort_engines["fp32"], tmp_path / "engine", lambda m: None)
    _edit_graph_metadata(engine, "graphs", "video_encoder", "sampling", {"max_frames": 64})
    with pytest.raises(CheckFailedError, match="rapdeploy.sampling differs from what the manifest's 'config' derives"):
        load_engine(engine)
    for n, folder in enumerate((micro_ort_engines["export"], micro_ort_engines["fp32"])):  # the I/O copy, too
        edited = _edited_copy(folder, tmp_path / f"io{n}", lambda m: None)
        _edit_graph_metadata(edited, "graphs", "text_encoder", "io", {"inputs": []})
        with pytest.raises(CheckFailedError, match="rapdeploy.io differs from the graph's own inputs and outputs"):
            load_engine(edited)
    for folder in (micro_ort_engines["export"], micro_ort_engines["fp32"]):  # what the current code writes passes
        assert load_engine(folder, lazy=True).backend == "onnxruntime"


def test_the_recorded_sizes_are_checked_against_the_files(micro_ort_engines, tmp_path):
    """Every graph entry records its size ('bytes'); it was never compared with the file (only the sha256 was), so
    a manifest claiming another size passed, and a replaced file of any size was hashed whole before it was refused.
    The size is now checked first (exit 1, naming the file and both sizes)."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.export import read_export_manifest

    export = _edited_copy(micro_ort_engines["export"], tmp_path / "export",
                          lambda m: m["graphs"]["text_encoder"].update(bytes=m["graphs"]["text_encoder"]["bytes"] + 1))
    with pytest.raises(CheckFailedError, match="text_encoder.onnx has [0-9,]+ bytes, manifest.json records"):
        read_export_manifest(export)
    engine = _edited_copy(micro_ort_engines["fp32"], tmp_path / "engine",
                          lambda m: m["graphs"]["asa_head"].update(bytes="many"))
    with pytest.raises(CheckFailedError, match="records for asa_head.onnx .*'many'.* is not a byte count"):
        load_engine(engine)
    engine = _edited_copy(micro_ort_engines["fp32"], tmp_path / "engine2", lambda m: None)
    with (engine / "asa_head.onnx").open("ab") as fh:  # a replaced (grown) file: refused by its size before hashing
        fh.write(b"\0" * 10)
    with pytest.raises(CheckFailedError, match="asa_head.onnx has [0-9,]+ bytes, manifest.json records .*truncated or "
                                               "replaced"):
        load_engine(engine)


def test_a_manifest_nested_too_deep_is_damaged_one_line(tmp_path):
    """json.loads raises RecursionError past about 1,000 levels, which no manifest reader caught: search and verify
    (and every other reader) printed a traceback for a damaged or replaced manifest."""
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "manifest.json").write_text("[" * 100_000)
    refused(cli("search", "a dog", "--library", deep), 1, "manifest.json", "nested 100,000 levels deep")
    refused(verify_engine(deep, tmp_path), 1, "manifest.json", "nested 100,000 levels deep")


def test_the_nesting_check_of_a_large_manifest_holds_little_memory():
    """The nesting check held int64 running sums of the whole text (16 bytes a character with their steps: about
    1 GiB for a manifest at the 64 MiB limit); it now sums blocks of a MiB."""
    import tracemalloc

    from rap_deploy.bounds import json_depth

    text = "[1," * 3_000_000  # 9 MB, nested 3,000,000 deep
    tracemalloc.start()
    try:
        assert json_depth(text) == 3_000_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * len(text), peak


def test_force_never_replaces_the_other_kind_of_folder_and_manifests_are_size_checked(micro_ort_engines, tmp_path,
                                                                                     monkeypatch, micro_checkpoint):
    from rap_deploy import bounds
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.errors import CheckFailedError

    export = shutil.copytree(micro_ort_engines["export"], tmp_path / "export")
    engine = shutil.copytree(micro_ort_engines["fp32"], tmp_path / "engine")
    refused(cli("build-engine", export, "--backend", "onnxruntime", "--out", export, "--force"), 2,
            "holds a rapdeploy.export folder, not an engine")
    assert (export / "parity.json").is_file()
    refused(cli("export", micro_checkpoint, "--out", engine, "--force"), 2, "holds a rapdeploy.engine folder")
    refused(cli("export", micro_checkpoint, "--out", tmp_path / "x", "--dataset", "msvd"), 2, "pass --data-root too")
    nested = tmp_path / "nested"  # a damaged manifest nested too deep for json (RecursionError) is just damaged
    nested.mkdir()
    (nested / "manifest.json").write_text("[" * 100_000)
    assert bounds.manifest_format(nested / "manifest.json") is None
    with pytest.raises(CheckFailedError, match="over the 1,000 one can be"):
        monkeypatch.setattr(bounds, "MAX_MANIFEST_BYTES", 1000)  # a padded manifest is never read whole
        load_engine(engine)


def test_output_piped_into_a_reader_that_closed_ends_quietly(micro_checkpoint):
    """`rapdeploy search ... --json | head -1` ended with exit 2 and 'error: Broken pipe; check the paths and their
    permissions'; a standard output whose reader went away now ends the command quietly with 141, as shell tools do."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        proc = subprocess.run([sys.executable, "-m", "rap_deploy.cli", "info", str(micro_checkpoint), "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr.decode()


# The re-create command of a newer manifest recording no source: the export's CKPT; the engine's export folder is
# the '<export folder>' placeholder every rebuild command uses, explained after the command (was: a bare EXPORT).
ENGINE_RECREATE = (r"build-engine <export folder> --force --out \S+` \(<export folder> is the folder `rapdeploy "
                   r"export` wrote from this engine's checkpoint, by default in the workspace's onnx folder; the "
                   r"engine's manifest does not record it\)$")


@pytest.mark.parametrize("reader, fmt, kind, damaged, recreate", [
    ("rap_deploy.engines.manifest:read_manifest", "rapdeploy.engine", "engine", "the engine folder is damaged",
     ENGINE_RECREATE),
    ("rap_deploy.export:read_export_manifest", "rapdeploy.export", "export", "the manifest was edited",
     r"export CKPT --force --out \S+`$")])
def test_a_manifests_format_version_is_an_integer_this_version_reads(tmp_path, reader, fmt, kind, damaged, recreate):
    """An engine or export manifest whose format_version is no integer (true, "1") is damaged (exit 1); a newer one
    asks for a newer rapdeploy (exit 2): one check (bounds.check_format_version) for both, before anything else."""
    import importlib

    from rap_deploy.errors import CheckFailedError, UsageError

    module, name = reader.split(":")
    read = getattr(importlib.import_module(module), name)
    for version, error, said in ((True, CheckFailedError, f"format_version True is not an integer; {damaged}$"),
                                 ("1", CheckFailedError, f"format_version '1' is not an integer; {damaged}$"),
                                 (99, UsageError, f"has {kind} format 99, newer than the format 1 this rapdeploy "
                                  r"\S+ reads; upgrade rapdeploy, or re-create it with this one: `rapdeploy "
                                  + recreate)):
        (tmp_path / "manifest.json").write_text(json.dumps({"format": fmt, "format_version": version}))
        with pytest.raises(error, match=said):
            read(tmp_path)

"""The one-shot GPU check (rap_deploy.engines.gpu_check): its --dry-run runs every step on the CPU, so it cannot rot."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_both_reports(tmp_path):
    from rap_deploy.engines.gpu_check import REPORT_JSON, REPORT_MD, main

    out = tmp_path / "out"
    assert main(["--out", str(out), "--work", str(tmp_path / "work"), "--dry-run"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [REPORT_JSON, REPORT_MD]  # the device brings back few files
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["passed"] and report["dry_run"] and report["complete"]
    steps = {r["step"]: r for r in report["steps"]}
    assert all(r["ok"] for r in steps.values()), steps
    assert {"environment", "synthetic data", "demo checkpoint (train)"} <= set(steps)
    assert set(report["models"]) == {"demo", "rap-micro"}  # the dry run's stand-in for ViT-B/32
    for label, model in report["models"].items():
        assert [p["passed"] for p in model["parity"]] == [True], label
        assert model["parity"][0]["queries"] == 6
        assert model["parity"][0]["ties"]["reference"].keys() == {"t2v", "v2t"}  # what a tie-heavy engine shows
        graphs = {(r["graph"], r["batch_size"]) for r in model["bench"]}
        assert graphs == {(g, b) for g in ("video", "text", "asa", "search") for b in (1, 2)}, label
        assert all(r["throughput"] > 0 for r in model["bench"])
    blocks = report["models"]["demo"]["rerank_blocks"]
    assert [(r["precision"], r["video_block"]) for r in blocks] == [("fp32", 2), ("fp32", 4)]
    assert all(r["p50_ms"] > 0 and r["candidates"] == 4 for r in blocks)
    assert blocks[0]["max_abs_vs_first"] == 0 and blocks[1]["max_abs_vs_first"] < 1e-6  # blocking is exact
    assert report["models"]["rap-micro"]["rerank_blocks"] == []
    if report["environment"]["tensorrt"] is None:
        assert steps["demo: TensorRT"]["skipped"]
    md = (out / REPORT_MD).read_text()
    assert "## Recall parity" in md and "## Speed" in md and "| demo | torch eager | fp32 | search | 2 |" in md
    assert "| demo | fp32 | 4 | 4 |" in md


def test_a_run_stopped_midway_leaves_a_report_of_the_steps_it_finished(tmp_path, monkeypatch):
    from dataclasses import replace

    import rap_deploy.engines.gpu_check as gc

    def stopped(*_args):
        raise KeyboardInterrupt  # what a timeout's signal does: not a step failure, the run just ends

    def bench_then_stopped(*args):
        if args[3] == "fp32":
            return [{"engine": "torch eager", "precision": "fp32", "graph": "video", "batch_size": 1,
                     "throughput": 1.0, "unit": "videos/s", "p50_ms": 1.0, "p99_ms": 1.0}]
        stopped()

    zero = {"t2v": {"R1": 0.0, "R5": 0.0}, "v2t": {"R1": 0.0, "R5": 0.0}}
    monkeypatch.setattr(gc, "parity", lambda *a: {"engine": "e", "precision": a[4], "passed": True, "queries": 6,
                                                  "tolerance": 0.5, "delta": zero})
    monkeypatch.setattr(gc, "speed", bench_then_stopped)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        gc.run_check(out, tmp_path / "work", replace(gc.CheckSizes.dry_run(), fp16="fp16"),
                     checkpoint=tmp_path / "given.pt", log=lambda _m: None)
    report = json.loads((out / gc.REPORT_JSON).read_text())
    assert not report["complete"] and not report["passed"]
    assert [(r["step"], r["ok"]) for r in report["steps"]][:2] == [("environment", True), ("synthetic data", True)]
    assert report["steps"][-1]["step"] == "demo: bench fp32"  # the last step that finished, with its result:
    assert [p["precision"] for p in report["models"]["demo"]["parity"]] == ["fp32", "fp16"]
    assert [r["graph"] for r in report["models"]["demo"]["bench"]] == ["video"]
    assert report["environment"]["device"] == "cpu"
    assert (out / gc.REPORT_MD).read_text().startswith("# GPU check (dry run on the CPU): INCOMPLETE")


def test_bad_arguments_are_exit_2_before_any_work(tmp_path, capsys):
    from rap_deploy.engines.gpu_check import main

    a_file = tmp_path / "file"
    a_file.write_text("x")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    for extra in (["--test-videos", "0"], ["--epochs", "-1"], ["--checkpoint", str(garbage)],
                  ["--checkpoint", str(tmp_path)]):
        assert main(["--out", str(out), "--dry-run", *extra]) == 2, extra
        assert "error:" in capsys.readouterr().err and not out.exists(), extra
    assert main(["--out", str(a_file), "--dry-run"]) == 2


def test_an_error_that_ends_the_run_exits_with_its_own_code(tmp_path, monkeypatch, capsys):
    """main() returned 2 for every RapDeployError, so a failed check that ended the run (a damaged --checkpoint, a
    refused artifact) read as bad usage; the contract is 1 for a failed check, 2 for bad usage or a missing backend."""
    import rap_deploy.engines.gpu_check as gc
    from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError

    for error, code in ((CheckFailedError("best.pt: damaged"), 1), (BackendUnavailableError("no CUDA"), 2),
                        (UsageError("bad"), 2)):
        def fails(*_args, error=error, **_kwargs):
            raise error
        monkeypatch.setattr(gc, "run_check", fails)
        assert gc.main(["--out", str(tmp_path / "out"), "--dry-run"]) == code, error
        assert capsys.readouterr().err == f"error: {error}\n"
    empty = tmp_path / "empty.pt"
    empty.touch()  # load_checkpoint: CheckFailedError ("an interrupted write or copy"), before run_check
    assert gc.main(["--out", str(tmp_path / "out"), "--dry-run", "--checkpoint", str(empty)]) == 1
    assert "empty (0 bytes)" in capsys.readouterr().err


def test_a_second_run_into_one_out_is_refused_and_a_killed_runs_temporaries_go(tmp_path, monkeypatch, capsys):
    """Two runs into one --out wrote its reports (and OUT/work) interleaved, and a SIGKILL-ed report write left its
    hidden temporary there for ever. A run now holds the report folder's lock: a second one is refused (exit 2, one
    line, nothing touched) and the first deletes the reports' own temporaries under it, not another file's."""
    from conftest import held_folder_lock

    import rap_deploy.engines.gpu_check as gc

    out = tmp_path / "out"
    out.mkdir()
    ours = [out / ".gpu_check.json.k2x9_a1.json.tmp", out / ".gpu_check.md.0q3z.md.tmp"]
    others = [out / ".gpu_check.json.bak.k3b_c3hn.bak.tmp", out / ".notes.tmp"]
    for path in ours + others:
        path.write_text("partial")
    monkeypatch.setattr(gc, "make_data", lambda *_a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with held_folder_lock(out, "gpu_check", "report folder"):
        assert gc.main(["--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "is being written by process" in err and len(err.strip().splitlines()) == 1, err
    assert all(p.exists() for p in ours) and not (out / gc.REPORT_JSON).exists()
    with pytest.raises(KeyboardInterrupt):
        gc.run_check(out, tmp_path / "work", gc.CheckSizes.dry_run(), log=lambda _m: None)
    assert not any(p.exists() for p in ours) and all(p.read_text() == "partial" for p in others)
    assert json.loads((out / gc.REPORT_JSON).read_text())["steps"][0]["step"] == "environment"


def test_a_rerun_in_the_same_work_folder_reuses_its_demo_checkpoint(tmp_path):
    """The demo checkpoint step of a second run with the same --work (the device command's /tmp/gpu-check on a warm
    machine) failed: train_rap refuses a new run into a folder holding last.pt, so the demo model's every step was
    lost. A finished run is now resumed (nothing trained) and its best.pt reused."""
    import rap_deploy.engines.gpu_check as gc

    sizes = gc.CheckSizes.dry_run()
    data = gc.make_data(tmp_path / "data", sizes)
    first = gc.demo_checkpoint(tmp_path / "demo", data, sizes)
    weights = first.read_bytes()
    assert gc.demo_checkpoint(tmp_path / "demo", data, sizes) == first and first.read_bytes() == weights


def test_a_report_folder_that_cannot_be_locked_is_written_unlocked_with_a_note(tmp_path, monkeypatch):
    """A lock that cannot be made at all (a read-only parent, a filesystem without file locks) does not cost the
    device's run: the reports are written, a note says they are unlocked."""
    import contextlib

    import rap_deploy.engines.gpu_check as gc
    from rap_deploy import locks
    from rap_deploy.errors import UsageError

    @contextlib.contextmanager
    def no_locks(target, *_args):
        raise UsageError(f"cannot lock {target}: no locks")
        yield

    logged: list[str] = []
    monkeypatch.setattr(locks, "folder_lock", no_locks)
    monkeypatch.setattr(gc, "make_data", lambda *_a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        gc.run_check(tmp_path / "out", tmp_path / "work", gc.CheckSizes.dry_run(), log=logged.append)
    assert any("without a folder lock" in m and "no locks" in m for m in logged), logged
    assert (tmp_path / "out" / gc.REPORT_JSON).is_file()


def test_the_first_partial_report_holds_the_environment_and_skips_are_saved(tmp_path, monkeypatch):
    """The report written after the environment step already has it; a skipped step is saved like a run one."""
    import rap_deploy.engines.gpu_check as gc

    saved: list[dict] = []

    def stop_after_environment(*_args):
        saved.append(json.loads((tmp_path / "out" / gc.REPORT_JSON).read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(gc, "make_data", stop_after_environment)
    with pytest.raises(KeyboardInterrupt):
        gc.run_check(tmp_path / "out", tmp_path / "work", gc.CheckSizes.dry_run(), log=lambda _m: None)
    assert saved[0]["environment"]["device"] == "cpu" and saved[0]["environment"]["torch"]
    steps = gc.Steps(lambda _m: None, after_step=lambda: saved.append("after"))
    steps.skip("x", "why")
    assert saved[-1] == "after"


def test_the_check_trains_the_model_the_demo_trains(monkeypatch):
    """CheckSizes repeated the demo model's backbone, frame size, frames, preset and ASA top-k/heads as literals
    (``as rapdeploy demo``), so a change to the demo's model left the check testing another one. They now come
    from DemoSizes: the GPU run's from the demo's, the dry run's from the tiny demo's."""
    from dataclasses import dataclass

    import rap_deploy.cli.demo_recipe as demo_recipe
    import rap_deploy.engines.gpu_check as gc

    @dataclass(frozen=True)
    class ChangedDemo(demo_recipe.DemoSizes):
        preset: str = "default"
        asa_heads: int = 8
        frames: int = 8

    monkeypatch.setattr(demo_recipe, "DemoSizes", ChangedDemo)
    s, dry = gc.CheckSizes.gpu(), gc.CheckSizes.dry_run()
    assert (s.backbone_clip, s.size, s.frames, s.preset, s.asa) == ("rap-tiny", 64, 8, "default", (8, 8))
    tiny = ChangedDemo.tiny()
    assert (dry.backbone_clip, dry.size, dry.frames, dry.preset, dry.asa) == (
        tiny.backbone_clip, tiny.size, tiny.frames, "default", (tiny.asa_topk, tiny.asa_heads))
    assert s.videos == 440 and dry.videos == 12  # the data and the recipe stay the check's own


@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="needs a CUDA GPU (run on the device machine: training, fp16 parity and bench on cuda)")
def test_the_dry_run_sizes_on_cuda_train_verify_and_bench_there(tmp_path):
    """Every step at the dry run's sizes, but on CUDA with fp16: caught the first H200 run's device mismatches (the
    training step's duplicate mask on the CPU, the bench's random index fed to a CUDA ASA head)."""
    from dataclasses import replace

    import rap_deploy.engines.gpu_check as gc

    sizes = replace(gc.CheckSizes.dry_run(), device="cuda", fp16="fp16")
    report = gc.run_check(tmp_path / "out", tmp_path / "work", sizes, log=lambda _m: None)
    assert [r["step"] for r in report["steps"] if not r["ok"]] == [], report["steps"]
    assert report["passed"] and report["complete"]
    for model in report["models"].values():
        assert [p["precision"] for p in model["parity"]][:2] == ["fp32", "fp16"]
        assert {r["precision"] for r in model["bench"]} == {"fp32", "fp16"}


def test_gpu_run_without_a_gpu_is_an_unavailable_backend_that_names_the_fix(tmp_path, monkeypatch, capsys):
    import torch

    from rap_deploy.engines.gpu_check import CheckSizes, main, run_check
    from rap_deploy.errors import BackendUnavailableError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="run the check on the GPU machine, or with --dry-run on a CPU"):
        run_check(tmp_path / "raised", tmp_path / "work", CheckSizes.gpu(), log=lambda _m: None)
    assert main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    # the device brought back nothing but that line; the report now holds the environment it was seen in
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["complete"] and not report["passed"] and report["environment"]["cuda_available"] is False
    assert [(r["step"], r["ok"]) for r in report["steps"]] == [("environment", True), ("CUDA GPU", False)]
    assert "no CUDA GPU visible" in (tmp_path / "gpu_check.md").read_text()


def test_the_gpu_sizes_and_the_device_command_fit_the_limits():
    import rap_deploy.engines.gpu_check as gc

    s = gc.CheckSizes.gpu()
    assert s.device == "cuda" and s.batch_sizes == (1, 8, 64) and s.large_clip == "ViT-B-32" and s.fp16 == "fp16"
    assert s.test_videos >= 200  # one query moves R@K by at most 0.5 points: the fp16 tolerance can be tested
    doc = gc.__doc__
    command = doc[doc.index("    set -o pipefail"):doc.index("(one line")]
    line = " ".join(command.split())
    assert len(line) <= 2000 and ".whl/*.whl" in line and "--out $OUT" in line and "python3 -P -m" in line


def test_a_broken_library_install_is_reported_and_the_environment_kept(tmp_path, monkeypatch):
    """onnxruntime (or tensorrt) left as a bare folder after one of two wheels sharing the module was uninstalled
    imports without its members: the AttributeError failed the whole environment step, and the report held no torch,
    CUDA or GPU. Each probe's failure is now data beside the rest."""
    import sys
    import types

    import rap_deploy.engines.gpu_check as gc
    from rap_deploy.engines import gpu_check_steps

    def broken_tensorrt():
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    monkeypatch.setattr(gpu_check_steps, "tensorrt_status", broken_tensorrt)
    monkeypatch.setattr(gc, "make_data", lambda *_a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        gc.run_check(tmp_path / "out", tmp_path / "work", gc.CheckSizes.dry_run(), log=lambda _m: None)
    report = json.loads((tmp_path / "out" / gc.REPORT_JSON).read_text())
    assert report["steps"][0] == {"step": "environment", "ok": True, "seconds": report["steps"][0]["seconds"]}
    env = report["environment"]
    assert env["torch"] and env["device"] == "cpu" and env["onnxruntime"] is None and env["tensorrt"] is None
    assert env["onnxruntime_error"].startswith("AttributeError") and "libnvinfer" in env["tensorrt_error"]
    md = (tmp_path / "out" / gc.REPORT_MD).read_text()
    assert "TensorRT not available" in md and "onnxruntime failed: AttributeError" in md


def test_the_carried_wheels_and_the_working_tree_fit_one_device_call():
    """The device call carries the working tree and .whl/ together, 64 MiB at most: the docstring said the tree was
    under 1 MB (it is 2.6 MB); what matters is that its tracked files and the wheels it lists still fit."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    import rap_deploy.engines.gpu_check as gc

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs the git checkout (its tracked files are what the device call carries)")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((root / n.decode()).stat().st_size for n in names if n and (root / n.decode()).is_file())
    wheels = sum(float(mb) for mb in re.findall(r"[\w_]+ ([\d.]+) MB", gc.__doc__.split("5 wheels, about")[1]
                                                .split(")")[0])) * 1e6
    assert 50e6 < wheels < 55e6  # the five wheels' sizes the docstring lists
    assert tree + wheels <= 64 * 2**20, f"tracked files {tree / 1e6:.1f} MB + wheels {wheels / 1e6:.1f} MB"
    assert "under 1 MB" not in gc.__doc__


def test_tensorrt_runs_after_every_pytorch_step_of_both_models(tmp_path, monkeypatch):
    """TensorRT has never run on a real GPU; its build ran between the demo's verify and bench, so a native crash or a
    build past the device's time limit there (here: the run killed during the demo's build) lost the demo's benches
    and the whole large model. It now runs after both models' PyTorch steps, and its bench keeps only its own rows."""
    from dataclasses import replace

    import rap_deploy.engines.gpu_check as gc
    from rap_deploy.engines import gpu_check_steps

    zero = {"t2v": {"R1": 0.0, "R5": 0.0}, "v2t": {"R1": 0.0, "R5": 0.0}}

    def rows(*args):
        engines = args[4] if len(args) > 4 else ()
        return [{"engine": e, "backend": b, "precision": args[3], "graph": "video", "batch_size": 1, "throughput": 1.0,
                 "unit": "videos/s", "p50_ms": 1.0, "p99_ms": 1.0}
                for e, b in [("torch eager", "torch"), *((str(x), "tensorrt") for x in engines)]]

    built = []

    def build_then_killed(checkpoint, data, work):
        built.append(work.name)
        if len(built) == 2:
            raise KeyboardInterrupt  # the device's time limit (or a crash) during the second model's build
        return work / "tensorrt-fp16"

    monkeypatch.setattr(gpu_check_steps, "tensorrt_status", lambda: "10.9.0")
    monkeypatch.setattr(gc, "parity", lambda *a: {"engine": "e", "precision": a[4], "passed": True, "queries": 6,
                                                  "tolerance": 0.5, "delta": zero})
    monkeypatch.setattr(gc, "speed", rows)
    monkeypatch.setattr(gc, "rerank_blocks", lambda *a: [])
    monkeypatch.setattr(gc, "random_adapter_checkpoint", lambda path, *a: path)
    monkeypatch.setattr(gc, "tensorrt_engine", build_then_killed)
    with pytest.raises(KeyboardInterrupt):
        gc.run_check(tmp_path / "out", tmp_path / "work", replace(gc.CheckSizes.dry_run(), fp16="fp16"),
                     checkpoint=tmp_path / "given.pt", log=lambda _m: None)
    report = json.loads((tmp_path / "out" / gc.REPORT_JSON).read_text())
    names = [r["step"] for r in report["steps"]]
    assert names.index("rap-micro: bench fp16") < names.index("demo: TensorRT 10.9.0 fp16 engine"), names
    assert names[-2:] == ["demo: verify TensorRT fp16", "demo: bench TensorRT fp16"], names
    demo = report["models"]["demo"]
    assert [(r["backend"], r["precision"]) for r in demo["bench"]] == [
        ("torch", "fp32"), ("torch", "fp16"), ("tensorrt", "fp16")]
    assert [p["precision"] for p in report["models"]["rap-micro"]["parity"]] == ["fp32", "fp16"]


def test_the_reports_say_which_percentiles_of_few_timed_calls_are_interpolated_maxima(tmp_path, monkeypatch):
    """The bench and re-rank rows' p99 comes from bench_repeats (10) timed calls: numpy's interpolation puts it between
    the two slowest, so the slowest call alone moves it. Both reports now state the convention and name it, as bench
    does (bench_timing.percentile_notes), with the calls a p99 needs; the p50 of 10 calls is a percentile."""
    from dataclasses import replace

    import rap_deploy.engines.gpu_check as gc
    from rap_deploy.engines import gpu_check_steps

    zero = {"t2v": {"R1": 0.0, "R5": 0.0}, "v2t": {"R1": 0.0, "R5": 0.0}}
    row = {"engine": "torch eager", "backend": "torch", "graph": "video", "batch_size": 1, "throughput": 1.0,
           "unit": "videos/s", "p50_ms": 1.0, "p99_ms": 2.0}
    block = {"video_block": 2, "candidates": 4, "p50_ms": 1.0, "p99_ms": 2.0, "max_abs_vs_first": 0.0}
    monkeypatch.setattr(gpu_check_steps, "tensorrt_status", lambda: None)
    monkeypatch.setattr(gc, "parity", lambda *a: {"engine": "e", "precision": a[4], "passed": True, "queries": 6,
                                                  "tolerance": 0.5, "delta": zero})
    monkeypatch.setattr(gc, "speed", lambda *a: [{**row, "precision": a[3]}])
    monkeypatch.setattr(gc, "rerank_blocks", lambda *a: [{**block, "precision": a[2]}])
    monkeypatch.setattr(gc, "random_adapter_checkpoint", lambda path, *a: path)
    sizes = replace(gc.CheckSizes.dry_run(), bench_repeats=10)
    report = gc.run_check(tmp_path / "out", tmp_path / "work", sizes, checkpoint=tmp_path / "given.pt",
                          log=lambda _m: None)
    saved = json.loads((tmp_path / "out" / gc.REPORT_JSON).read_text())
    assert saved["percentiles"] == report["percentiles"]
    settings = saved["percentiles"]
    assert settings["calls"] == 10 and settings["calls_needed"] == {"p50": 3, "p99": 101}
    assert "linear interpolation" in settings["method"]
    (note,) = settings["notes"]
    assert note.startswith("p99 of 10 timed calls is interpolated between the two slowest calls"), note
    assert "p99 >= 101" in note and "CheckSizes.bench_repeats" in note and "p50" not in note
    md = (tmp_path / "out" / gc.REPORT_MD).read_text()
    speed_section, rerank_section = md.split("## Speed")[1].split("## Re-rank")
    assert f"Note: {note}." in speed_section and f"Note: {note}." in rerank_section
    # the dry run's single call is no percentile at all; 101 calls need no note
    assert gc.percentile_settings(1)["notes"][0].startswith("p50 and p99 of 1 timed call are that call")
    assert gc.percentile_settings(101)["notes"] == []
    assert "Note:" not in gc.markdown({**saved, "percentiles": gc.percentile_settings(101)})


def test_a_failed_step_logs_the_frames_where_it_failed():
    """format_exc(limit=6) keeps the 6 outermost frames: Steps.run, the step's lambda, verify's entry... and cut the
    frames inside the model where a CUDA-only error (a tensor left on the CPU) is raised, which a one-shot GPU run
    needs in its log. The innermost frames are logged now."""
    from rap_deploy.engines.gpu_check import Steps

    logs: list[str] = []

    def raised_here(n: int) -> None:
        if n == 0:
            raise RuntimeError("Expected all tensors to be on the same device")
        outer(n - 1)

    def outer(n: int) -> None:
        raised_here(n)

    Steps(logs.append).run("deep", lambda: outer(8))
    assert "raise RuntimeError" in logs[-1] and logs[-1].rstrip().endswith("on the same device"), logs[-1]


def test_a_step_that_runs_on_dumps_its_stacks_and_the_watch_ends_with_it(monkeypatch):
    """A hung step (a CUDA call that never returns, a decoder stuck) left '[run ] step' as the log's last line until
    the device's time limit killed the run, with nothing saying where it hung. Each step now arms faulthandler's
    stack dump (every STALL_DUMP_S seconds, to stderr) and cancels it when the step ends, passed or failed."""
    import faulthandler

    import rap_deploy.engines.gpu_check as gc

    events: list[tuple] = []
    monkeypatch.setattr(faulthandler, "dump_traceback_later",
                        lambda timeout, repeat=False, file=None, exit=False: events.append(("arm", timeout, repeat)))
    monkeypatch.setattr(faulthandler, "cancel_dump_traceback_later", lambda: events.append(("cancel",)))
    steps = gc.Steps(lambda _m: None, after_step=lambda: events.append(("saved",)))
    assert steps.run("ok", lambda: events.append(("step",)) or 1) == 1
    steps.run("fails", lambda: 1 / 0)
    armed = ("arm", gc.STALL_DUMP_S, True)
    assert events == [armed, ("step",), ("cancel",), ("saved",), armed, ("cancel",), ("saved",)]
    assert 60 <= gc.STALL_DUMP_S < 600  # past the longest measured step, inside the device's limit

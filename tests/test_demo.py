"""``rapdeploy demo --tiny`` end to end through the CLI, and its resume behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app


def test_demo_tiny_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--tiny", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for key in ("seconds", "zero_shot", "rap", "engines", "bench"):
        assert key in summary
    for part in ("zero_shot", "rap"):
        assert set(summary[part]) == {"t2v", "v2t"}
        assert {"R1", "R5", "R10", "MdR", "MnR", "RSum", "ties"} <= set(summary[part]["t2v"])
    # RAP's row is the run's best.pt epoch, zero-shot its epoch-0 evaluation (identity adapters), both read back
    run = json.loads((out / "runs" / "rap" / "summary.json").read_text())
    history = {r["epoch"]: r for r in map(json.loads, (out / "runs" / "rap" / "metrics.jsonl").read_text().splitlines())
               if "t2v" in r}
    assert json.loads((out / "rap_eval.json").read_text())["epoch"] == run["best_epoch"]
    assert summary["rap"] == {d: history[run["best_epoch"]][d] for d in ("t2v", "v2t")}
    assert summary["zero_shot"] == {d: history[0][d] for d in ("t2v", "v2t")}
    names = {e["name"] for e in summary["engines"]}
    assert names == {"onnxruntime-fp32", "onnxruntime-int8"}
    assert all(e["passed"] for e in summary["engines"])
    assert {"torch", "onnxruntime"} <= {r["backend"] for r in summary["bench"]}
    for artifact in ("data/MSRVTT_data.json", "runs/rap/best.pt", "onnx/manifest.json", "onnx/parity.json",
                     "engines/onnxruntime-fp32/manifest.json", "verify/onnxruntime-int8/verify.json",
                     "bench/bench.json", "bench/bench.png"):
        assert (out / artifact).is_file(), artifact
    assert "Engines: recall parity" in result.output
    # the search it suggests works as printed: --out is not the workspace, so the command names the library
    from rap_deploy.cli.demo_cmds import search_command

    lib = out / "index" / "msrvtt-test"
    printed = "".join(result.output.split())  # rich wraps the table's caption, long paths mid-word
    assert "".join(f'search it with rapdeploy search "..." --library {lib}'.split()) in printed
    found = runner.invoke(app, ["search", "a blue circle", "--library", str(lib), "--top", "2", "--json"])
    assert found.exit_code == 0 and len(json.loads(found.stdout)["results"]) == 2, found.output
    monkeypatch.setenv("RAPDEPLOY_HOME", str(out))  # where a bare command looks: then the bare command is printed
    assert search_command(str(lib)) == 'rapdeploy search "..."'
    monkeypatch.undo()

    again = runner.invoke(app, ["demo", "--tiny", "--out", str(out), "--quiet"])
    assert again.exit_code == 0, again.output
    assert "[skip] train (rap)" in again.output and "[run ] train" not in again.output
    ran = [line for line in again.output.splitlines() if line.startswith(("[run ]", "[redo]"))]
    assert ran == [], again.output  # nothing changed: every step is read back, none runs again
    (out / "checkpoints" / "init.pt").unlink()  # made again with the same tensors: the same bytes, training is kept
    remade = runner.invoke(app, ["demo", "--tiny", "--out", str(out), "--quiet"])
    assert "[run ] init" in remade.output and "[skip] train (rap)" in remade.output, remade.output
    ran = [line for line in remade.output.splitlines() if line.startswith(("[run ]", "[redo]"))]
    assert ran == ["[run ] init"], remade.output  # the same bytes: no later step runs again
    _check_changed_files_redo_their_steps(runner, out)

    # a folder made by another recipe (here: another ASA width) is refused before any step reuses its model
    import dataclasses

    from rap_deploy.cli.pipeline import DemoSizes, run_demo
    from rap_deploy.errors import UsageError

    with pytest.raises(UsageError, match=r"asa_dim = 16, but the demo's recipe now has asa_dim = 8: pass a new --out"):
        run_demo(out, dataclasses.replace(DemoSizes.tiny(), asa_dim=8), progress=False, log=lambda msg: None)
    # ... and so is a run trained with other numbers (here: LoRM at the shared learning rate): nothing is retrained
    stamp = (out / "runs" / "rap" / "best.pt").stat().st_mtime_ns
    with pytest.raises(UsageError, match=r"last.pt was trained with lorm_lr_mult = 5.0, but the demo's recipe now has "
                       r"lorm_lr_mult = 1.0: pass a new --out"):
        run_demo(out, dataclasses.replace(DemoSizes.tiny(), lorm_lr_mult=1.0), progress=False, log=lambda msg: None)
    assert (out / "runs" / "rap" / "best.pt").stat().st_mtime_ns == stamp
    # a step that fails prints its own error, never the previous run's summary as if it were this one's
    (out / "runs" / "rap" / "summary.json").unlink()
    (out / "runs" / "rap" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    failed = runner.invoke(app, ["demo", "--tiny", "--out", str(out), "--quiet", "--json"])
    assert failed.exit_code == 1 and "last.pt" in failed.output and failed.stdout.strip() == "", failed.output
    assert runner.invoke(app, ["demo", "--tiny", "--out", str(out), "--threads", "0"]).exit_code == 2


def _check_changed_files_redo_their_steps(runner, out):
    """A step is skipped only when its files are what it wrote: a truncated engine graph rebuilds that engine and
    verifies it again (the export, which it reads, is kept); a damaged summary.json is not read (each step's
    timing comes from the step records)."""
    graph = out / "engines" / "onnxruntime-fp32" / "video_encoder.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    (out / "summary.json").write_text("{not json")
    redo = runner.invoke(app, ["demo", "--tiny", "--out", str(out), "--quiet"])
    assert redo.exit_code == 0, redo.output
    assert "[redo] build-engine onnxruntime-fp32: engines/onnxruntime-fp32/video_encoder.onnx changed" in redo.output
    assert "[run ] verify onnxruntime-fp32" in redo.output and "[skip] export" in redo.output
    assert "[skip] build-engine onnxruntime-int8" in redo.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"synth", "train (rap)", "export", "verify onnxruntime-fp32", "bench"} <= set(summary["step_seconds"])
    assert all(e["passed"] for e in summary["engines"])
    best = out / "runs" / "rap" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])  # a finished run's output damaged: trained again, not "resumed"
    retrained = runner.invoke(app, ["demo", "--tiny", "--out", str(out), "--quiet"])
    assert retrained.exit_code == 0 and "training it again from the start" in retrained.output, retrained.output
    from rap_deploy.checkpoint import load_checkpoint

    load_checkpoint(best)
    from conftest import held_folder_lock

    with held_folder_lock(out, "demo"):
        busy = runner.invoke(app, ["demo", "--tiny", "--out", str(out), "--quiet"])  # a second demo on the folder
        assert busy.exit_code == 2 and str(out) in busy.output, busy.output


def test_a_folder_from_before_the_step_records_is_adopted_until_a_demo_ran_every_step(tmp_path):
    """Markers without records are adopted while the folder is being adopted (``ablate`` prepares only the world,
    so it does not end the adoption); after a demo ran every step, an unrecorded marker runs its step again."""
    from rap_deploy.cli.demo_steps import Steps

    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
    (tmp_path / "summary.json").write_text("{}")  # what an earlier demo wrote when it finished
    ran: list[str] = []
    first = Steps(lambda m: None, tmp_path)
    assert first.adopting and not first.run("a", [tmp_path / "a"], lambda: ran.append("a"))
    second = Steps(lambda m: None, tmp_path)  # ablate's world steps recorded "a" only
    assert second.adopting and not second.run("b", [tmp_path / "b"], lambda: ran.append("b"))
    second.every_step_recorded()
    third = Steps(lambda m: None, tmp_path)
    assert not third.adopting and third.run("c", [tmp_path / "c"], lambda: ran.append("c"))
    assert ran == ["c"]
    (tmp_path / "demo-steps.json").unlink()
    (tmp_path / "demo-steps.json").symlink_to(tmp_path / "nowhere.json")  # a dangling link is damaged, not absent
    assert not Steps(lambda m: None, tmp_path).adopting


def test_demo_split_is_sharp_enough():
    """One query of the default demo's test split moves R@1 by at most 0.5 points (DESIGN.md §10)."""
    from rap_deploy.cli.demo_recipe import DemoSizes

    sizes = DemoSizes()
    assert sizes.test_videos >= 200 and 100.0 / sizes.test_videos <= 0.5
    assert sizes.epoch_unit == "caption" and sizes.videos - sizes.test_videos >= sizes.test_videos


def test_quantized_tolerance_scales_with_the_split():
    """The design's 0.5 points at 1k queries, scaled as 1/sqrt(N) and rounded down to whole queries (≥ one)."""
    from rap_deploy.cli.pipeline import quantized_tolerance

    assert quantized_tolerance(1000) == pytest.approx(0.5, abs=1e-3)
    assert quantized_tolerance(200) == pytest.approx(1.0, abs=1e-3)  # 1.118 rounded down to two queries
    assert quantized_tolerance(60) == pytest.approx(100 / 60, abs=1e-3)  # one query
    assert quantized_tolerance(8) == pytest.approx(12.5, abs=1e-3)
    assert quantized_tolerance(20000) == pytest.approx(0.5, abs=1e-3)  # never below the design's limit


def test_a_deleted_or_damaged_bench_report_is_made_again(tmp_path, monkeypatch):
    """bench.md and bench.png are the bench step's outputs too: deleting the plot runs bench again on resume."""
    from types import SimpleNamespace

    from rap_deploy.cli.demo_steps import Steps
    from rap_deploy.cli.pipeline import DemoSizes, _bench_step
    from rap_deploy.engines import bench as bench_module

    ran: list[str] = []

    def fake_bench(engines, out, **kw):
        ran.append(str(out))
        out.mkdir(parents=True, exist_ok=True)
        for name in ("bench.md", "bench.png"):
            (out / name).write_text(name)
        (out / "bench.json").write_text(json.dumps({"results": []}))

    monkeypatch.setattr(bench_module, "bench", fake_bench)
    (tmp_path / "best.pt").write_bytes(b"weights")
    Steps(lambda m: None, tmp_path).every_step_recorded()  # a recorded folder: nothing is adopted

    def resume() -> None:
        world = SimpleNamespace(data=tmp_path / "data", frame_cache=tmp_path / "cache")
        run = SimpleNamespace(out=tmp_path, sizes=DemoSizes.tiny(), steps=Steps(lambda m: None, tmp_path),
                              best=tmp_path / "best.pt", threads=None, progress=False, world=world)
        _bench_step(run, [])

    resume()
    resume()
    assert len(ran) == 1  # nothing changed: skipped
    (tmp_path / "bench" / "bench.png").unlink()
    resume()
    assert len(ran) == 2 and (tmp_path / "bench" / "bench.png").is_file()


def test_demo_threads_apply_to_every_step_when_the_world_is_reused(tmp_path, monkeypatch):
    """``--threads`` reached PyTorch only through the steps that take it (backbone pre-training, verify, bench): with
    the world's backbone reused, init and training ran at PyTorch's default thread count."""
    import torch

    from rap_deploy.cli import pipeline

    class Stop(Exception):
        pass

    seen: list[int] = []

    def init_step(run):
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(pipeline, "_init_step", init_step)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(Stop):  # makes the world (synth, backbone) with the default threads
            pipeline.run_demo(tmp_path, pipeline.DemoSizes.tiny(), progress=False, log=lambda m: None)
        with pytest.raises(Stop):  # the world is reused: no step with its own threads option runs before init
            pipeline.run_demo(tmp_path, pipeline.DemoSizes.tiny(), progress=False, threads=1, log=lambda m: None)
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1]


def test_the_demo_library_step_opens_its_engine_with_the_demo_threads(tmp_path, monkeypatch):
    """The library step's ONNX Runtime engine got the runtime's default thread count whatever ``--threads`` said."""
    from types import SimpleNamespace

    from rap_deploy.cli.demo_steps import Steps
    from rap_deploy.cli.pipeline import DemoSizes, _library_step
    from rap_deploy.engines import loader

    class Stop(Exception):
        pass

    asked: list[int | None] = []

    def load_engine(path, **kw):
        asked.append(kw.get("threads"))
        raise Stop

    monkeypatch.setattr(loader, "load_engine", load_engine)
    world = SimpleNamespace(data=tmp_path / "data", frame_cache=tmp_path / "cache")
    run = SimpleNamespace(out=tmp_path, sizes=DemoSizes.tiny(), steps=Steps(lambda m: None, tmp_path),
                          best=tmp_path / "best.pt", threads=1, progress=False, world=world)
    with pytest.raises(Stop):
        _library_step(run, ["onnxruntime-fp32"])
    assert asked == [1]


def test_the_workspace_is_never_inside_the_installed_engines_package(tmp_path, monkeypatch):
    """A wheel installs the engines stage as ``rap_deploy/engines`` (setuptools' package-dir mapping), beside
    ``workspace.py``; the check looked only where a source checkout keeps it (``<repo>/engines``)."""
    from rap_deploy import workspace
    from rap_deploy.errors import UsageError

    site = tmp_path / "site-packages"
    monkeypatch.setattr(workspace, "__file__", str(site / "rap_deploy" / "workspace.py"))
    with pytest.raises(UsageError, match="inside the package's engines/ folder"):
        workspace.workspace_root(site / "rap_deploy" / "engines" / "out")
    assert workspace.workspace_root(tmp_path / "out") == (tmp_path / "out").resolve()


@pytest.mark.parametrize("distractors", ["x", None, [0.1]])
def test_a_world_with_a_damaged_distractor_rate_is_one_line(tmp_path, distractors):
    """info.distractors of the world's annotation that is not a number ended the demo in a traceback."""
    from rap_deploy.data.synth_dataset import FORMAT as SYNTH_FORMAT

    data = tmp_path / "data"
    data.mkdir()
    (data / "MSRVTT_data.json").write_text(json.dumps({"info": {"format": SYNTH_FORMAT, "distractors": distractors},
                                                       "videos": [], "sentences": []}))
    result = CliRunner().invoke(app, ["demo", "--tiny", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 1 and "MSRVTT_data.json" in result.output and "distractors" in result.output, \
        result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_damaged_init_checkpoint_is_made_again_not_refused(tmp_path, micro_checkpoint):
    """The recipe guard read checkpoints/init.pt before the init step ran, so a truncated one (which the step makes
    again: its sha256 no longer matches) ended the demo with exit 1; an unreadable file holds no recipe to refuse."""
    from conftest import micro_config

    from rap_deploy.cli.demo_guards import check_demo_model
    from rap_deploy.errors import UsageError

    init = tmp_path / "checkpoints" / "init.pt"
    init.parent.mkdir()
    init.write_bytes(micro_checkpoint.read_bytes()[:3000])
    check_demo_model(init, micro_config(), tmp_path)  # the step remakes it
    init.write_bytes(b"not a checkpoint at all")
    check_demo_model(init, micro_config(), tmp_path)
    init.write_bytes(micro_checkpoint.read_bytes())
    check_demo_model(init, micro_config(), tmp_path)
    with pytest.raises(UsageError, match="asa_dim = 16, but the demo's recipe now has asa_dim = 8"):
        check_demo_model(init, micro_config(asa_dim=8), tmp_path)


def test_a_damaged_world_backbone_is_pre_trained_again_not_refused(tmp_path):
    """The world's backbone check read the cached backbone before its step ran, so a truncated or garbled one (which
    the step makes again: its sha256 no longer matches) ended the demo with exit 1."""
    from rap_deploy.cli.demo_world import _check_world_backbone

    backbone = tmp_path / "backbone.safetensors"
    for damaged in (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__metadata", b"garbage\n"):
        backbone.write_bytes(damaged)
        _check_world_backbone(backbone)  # the pretrain-backbone step makes it again


def test_a_workspace_that_holds_other_artifacts_is_not_adopted_as_a_demo_folder(tmp_path):
    """The demo writes into the workspace by default. A workspace without step records that holds the user's own
    export (``rapdeploy export`` into ``onnx/``) is no demo folder from before the records: its files must not be
    taken as the demo's steps (the user's export was skipped over and its engines verified against the demo's
    model). A folder an earlier demo finished (it has the demo's ``summary.json``) is still adopted."""
    from rap_deploy.cli.demo_steps import Steps

    marker = tmp_path / "onnx" / "manifest.json"
    marker.parent.mkdir()
    marker.write_text("{}")
    ran: list[str] = []
    assert Steps(lambda m: None, tmp_path).run("export", [marker, marker.parent], lambda: ran.append("export"))
    assert ran == ["export"]
    half = tmp_path / "verify.json"  # a killed first demo's step wrote its marker but never recorded it
    half.write_text("{}")
    assert Steps(lambda m: None, tmp_path).run("verify", [half], lambda: ran.append("verify"))
    assert ran == ["export", "verify"]
    earlier = tmp_path / "earlier"
    (earlier / "onnx").mkdir(parents=True)
    (earlier / "onnx" / "manifest.json").write_text("{}")
    (earlier / "summary.json").write_text(json.dumps({"step_seconds": {"export": 5.0}}))
    steps = Steps(lambda m: None, earlier)
    assert steps.adopting and not steps.run("export", [earlier / "onnx" / "manifest.json"], lambda: ran.append("x"))
    assert ran == ["export", "verify"]


def test_a_demo_folder_that_is_a_file_says_so(tmp_path):
    """demo --out FILE was refused as 'cannot access FILE: File exists; check the path and its permissions'; it says
    the folder is a file now (exit 2) and leaves the file alone."""
    from typer.testing import CliRunner

    from rap_deploy.cli import app

    a_file = tmp_path / "file"
    a_file.write_text("x")
    res = CliRunner().invoke(app, ["demo", "--tiny", "--quiet", "--out", str(a_file)])
    assert res.exit_code == 2 and f"demo folder {a_file} is a file" in res.stderr and a_file.read_text() == "x"


def test_a_finished_run_whose_last_pt_is_damaged_is_trained_again_not_refused(tmp_path):
    """The training guard read ``last.pt`` before the train step, which trains a finished run whose files changed
    again from the start: a damaged ``last.pt`` of a finished run ended the demo (exit 1, 're-create it with
    `rapdeploy init`'). It is left to that step now; a killed run's damaged ``last.pt`` (nothing to resume from)
    says to remove the run folder, the demo's fix, not another command's."""
    from rap_deploy.cli.demo_guards import check_demo_training
    from rap_deploy.cli.demo_recipe import DemoSizes, train_options
    from rap_deploy.errors import CheckFailedError

    run_dir = tmp_path / "runs" / "rap"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    options = train_options(DemoSizes.tiny(), tmp_path / "data", run_dir, tmp_path / "cache", checkpoint="init.pt")
    (run_dir / "summary.json").write_text(json.dumps({"complete": True}))
    check_demo_training(run_dir, options, tmp_path)  # finished: the train step trains it again
    (run_dir / "summary.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(CheckFailedError, match=r"last.pt is a damaged .*killed training run cannot be resumed; "
                       r"remove .*runs/rap and the demo trains it again") as caught:
        check_demo_training(run_dir, options, tmp_path)
    assert "rapdeploy init" not in str(caught.value)


def test_a_skipped_step_reports_its_own_records_seconds_and_no_other_steps(tmp_path):
    """Timings were every record's by step name, so a step with two markers (the demo's backbone and one `ablate
    --backbone-epochs 3` pre-trained in the same world) reported whichever record came last, and a step this run
    did not take (an engine another machine built) stayed in the summary's step_seconds and its total."""
    from rap_deploy.cli.demo_steps import Steps

    for name in ("e12", "e3", "trt"):
        (tmp_path / name).write_text(name)
    first = Steps(lambda m: None, tmp_path)
    for step, marker in (("pretrain-backbone", "e12"), ("pretrain-backbone", "e3"), ("build-engine trt", "trt")):
        first.run(step, [tmp_path / marker], lambda: None)
    records = json.loads((tmp_path / "demo-steps.json").read_text())
    for key, seconds in (("pretrain-backbone: e12", 400.0), ("pretrain-backbone: e3", 100.0),
                         ("build-engine trt: trt", 9.0)):
        records["steps"][key]["seconds"] = seconds
    (tmp_path / "demo-steps.json").write_text(json.dumps(records))
    again = Steps(lambda m: None, tmp_path)
    assert not again.run("pretrain-backbone", [tmp_path / "e12"], lambda: None)
    assert again.timings == {"pretrain-backbone": 400.0}


def test_a_killed_training_run_resumes_on_this_folders_world(tmp_path, monkeypatch, micro_checkpoint):
    """A killed run resumed with the data and frame cache paths its last.pt stored, so a demo folder moved (or
    copied) before the next demo failed with 'dataset folder OLD/data does not exist; pass --data-root' (an option
    demo has not; reproduced by moving a tiny demo folder whose run was marked unfinished), or read and cached the
    other copy's files. The resume now reads this folder's world."""
    from rap_deploy.cli import pipeline
    from rap_deploy.cli.demo_steps import Steps
    from rap_deploy.cli.demo_world import World
    from rap_deploy.train import loop

    class Stop(Exception):
        pass

    asked: list[dict] = []

    def train_rap(options, progress=True, resume=None, overrides=None):
        asked.append({"options": options, "resume": resume, "overrides": overrides})
        raise Stop

    monkeypatch.setattr(loop, "train_rap", train_rap)
    monkeypatch.setattr(pipeline, "check_demo_training", lambda *a: None)  # last.pt below is no real checkpoint
    world = World(tmp_path / "data", tmp_path / "cache" / "backbone.safetensors", tmp_path / "cache" / "frames")
    run = pipeline._DemoRun(out=tmp_path, sizes=pipeline.DemoSizes.tiny(), steps=Steps(lambda m: None, tmp_path),
                            world=world, progress=False, threads=None, log=lambda m: None)
    run.run_dir.mkdir(parents=True)
    run.init_ckpt.parent.mkdir()
    for path in (run.run_dir / "last.pt", run.init_ckpt):  # a killed run on the backbone init.pt holds
        path.write_bytes(micro_checkpoint.read_bytes())
    with pytest.raises(Stop):
        pipeline._train_and_results_steps(run)
    assert asked == [{"options": None, "resume": run.run_dir,
                      "overrides": {"data_root": str(world.data), "cache_dir": str(world.frame_cache)}}]
    _check_a_killed_run_on_another_backbone_starts_again(run, asked, micro_checkpoint, Stop)


def _check_a_killed_run_on_another_backbone_starts_again(run, asked, micro_checkpoint, stop):
    """A killed run whose backbone is not the one init.pt holds now (the world's backbone was pre-trained again:
    cache/ deleted, say) was resumed on the earlier backbone, so best.pt, the engines and the zero-shot row came from
    a backbone the summary does not name; it starts again from this init.pt."""
    import dataclasses

    from rap_deploy.checkpoint import load_checkpoint, save_checkpoint
    from rap_deploy.cli import pipeline
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt = load_checkpoint(micro_checkpoint)
    for path, sha in ((run.init_ckpt, "a" * 64), (run.run_dir / "last.pt", "b" * 64)):
        save_checkpoint(dataclasses.replace(ckpt, backbone=BackboneSpec("rap-micro", "file", "/x", sha)), path)
    logged: list[str] = []
    run = dataclasses.replace(run, log=logged.append)
    with pytest.raises(stop):
        pipeline._train_and_results_steps(run)
    assert asked[-1]["resume"] is None and asked[-1]["options"] is not None, asked
    assert any("a killed run on another backbone (sha256 bbbbbbbbbbbb…; init.pt holds aaaaaaaaaaaa…)" in line
               for line in logged), logged
    assert not run.run_dir.exists()


def test_a_damaged_world_annotation_the_demo_wrote_is_written_again_not_refused(tmp_path, monkeypatch):
    """The world check read data/MSRVTT_data.json before the synth step, so a truncated annotation of a world the
    demo wrote (which that step writes again: its sha256 no longer matches the record) ended `demo` and `ablate`
    with exit 1 and 'delete data/' (reproduced on a tiny demo folder). It is left to the step now; in a folder the
    synth step never recorded (a user's own dataset) it is still refused, never overwritten."""
    from rap_deploy.cli.demo_recipe import DemoSizes
    from rap_deploy.cli.demo_steps import Steps
    from rap_deploy.cli.demo_world import prepare_world
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.train import backbone as backbone_module

    def pretrain_backbone(out, **kw):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(b"weights")

    monkeypatch.setattr(backbone_module, "pretrain_backbone", pretrain_backbone)
    logged: list[str] = []
    prepare_world(tmp_path, DemoSizes.tiny(), Steps(logged.append, tmp_path), progress=False, threads=None)
    annotation = tmp_path / "data" / "MSRVTT_data.json"
    whole = annotation.read_bytes()
    annotation.write_bytes(whole[:500])
    prepare_world(tmp_path, DemoSizes.tiny(), Steps(logged.append, tmp_path), progress=False, threads=None)
    assert any(line.startswith("[redo] synth") for line in logged) and annotation.read_bytes() == whole, logged
    (tmp_path / "demo-steps.json").unlink()  # no record: not the demo's dataset
    annotation.write_bytes(whole[:500])
    with pytest.raises(CheckFailedError, match="is not a readable synthetic dataset annotation"):
        prepare_world(tmp_path, DemoSizes.tiny(), Steps(logged.append, tmp_path), progress=False, threads=None)
    assert annotation.read_bytes() == whole[:500]

"""A run whose trained epochs all score below its starting model (epoch 0, ``--eval-initial``) keeps the starting
weights in ``best.pt`` by the selection rule; that is said: ``summary.json``'s ``best_is_initial``/``best_trained``,
``rapdeploy train``'s ``note:`` line, ``rapdeploy info``'s epoch row and the demo's line under its retrieval table.

Which epoch wins is made deterministic by setting the epoch-0 evaluation's recalls (the first evaluation of the run)
to 100 (the starting model wins) or 0 (a trained epoch wins); training and every other figure are the real run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.checkpoint import load_checkpoint
from rap_deploy.cli.app import app

MICRO_CLI = ["--clip", "rap-micro", "--pretrained", "none", "--frames", "4", "--topk", "4", "--heads", "2",
             "--asa-dim", "16", "--rank", "2"]


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory):
    """One decoded-frame cache for the module (each video is decoded once)."""
    return tmp_path_factory.mktemp("frames")


def _note(summary: dict) -> str | None:
    from rap_deploy.train.selection import initial_kept_note

    return initial_kept_note(summary)


def _initial_recalls(monkeypatch, value: float) -> None:
    """Make the run's first evaluation (epoch 0, the starting model) report ``value`` for every R@1/5/10."""
    import rap_deploy.train.training_run as training_run

    real, calls = training_run.evaluate_model, []

    def evaluate(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            for direction in ("t2v", "v2t"):
                result["asa"][direction].update(R1=value, R5=value, R10=value)
        return result

    monkeypatch.setattr(training_run, "evaluate_model", evaluate)


def _train(synth_root, out: Path, cache: Path, **kw):
    from rap_deploy.train.loop import TrainOptions, train_rap

    given = dict(dataset="msrvtt", data_root=str(synth_root), out=str(out), clip="rap-micro", pretrained="none",
                 frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=2, batch_size=8, lr=5e-3,
                 warmup=0, seed=3, max_train_videos=8, max_test_videos=4, cache_dir=str(cache), top_m=4,
                 epoch_unit="video", eval_initial=True)
    options = TrainOptions(**{**given, **kw})
    return train_rap(options, progress=False)


def test_a_run_whose_trained_epochs_score_below_the_start_keeps_it_and_says_so(synth_root, frame_cache, tmp_path,
                                                                               monkeypatch):
    _initial_recalls(monkeypatch, 100.0)
    run = tmp_path / "run"
    summary = _train(synth_root, run, frame_cache)
    assert summary["best_epoch"] == 0 and summary["best_is_initial"] is True
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = max((r for r in rows if r["epoch"] > 0), key=lambda r: (r["selection_score"], r["epoch"]))
    assert summary["best_trained"] == {"epoch": trained["epoch"],
                                       "selection_score": pytest.approx(trained["selection_score"], abs=1e-6)}
    assert rows[0]["epoch"] == 0 and rows[0]["selection_score"] == 600.0 and trained["selection_score"] < 600.0
    assert json.loads((run / "summary.json").read_text())["best_is_initial"] is True
    assert load_checkpoint(run / "best.pt").extra["epoch"] == 0 and load_checkpoint(run / "last.pt").extra["epoch"] == 2

    note = _note(summary)
    assert note.startswith("note: no trained epoch scored as high as the starting model (selection score 600.0, "
                           f"epoch 0); the best trained epoch, {trained['epoch']}, scored "
                           f"{trained['selection_score']:.1f}: best.pt holds the starting model's weights, last.pt "
                           "the trained ones (epoch 2); "), note
    assert f"`rapdeploy export {run / 'last.pt'}`" in note and "\n" not in note

    from rap_deploy.cli.pipeline import _write_results, rap_initial_note

    _write_results(run, tmp_path / "zero_shot.json", tmp_path / "rap_eval.json")  # the demo's results step
    rap = json.loads((tmp_path / "rap_eval.json").read_text())
    assert rap["epoch"] == 0 and rap["best_trained"] == summary["best_trained"]
    demo_note = rap_initial_note({"rap_is_initial": rap["epoch"] == 0, "rap_best_trained": rap["best_trained"],
                                  "rap": rap["asa"], "checkpoint": str(run / "best.pt")})
    assert demo_note.startswith("note: the RAP rows are the starting model (epoch 0: identity adapters, so "
                                "zero-shot)"), demo_note
    assert (f"the best trained epoch, {trained['epoch']}, scored {trained['selection_score']:.1f} against the "
            "starting model's 600.0") in demo_note and str(run / "last.pt") in demo_note


def test_a_run_whose_trained_epoch_wins_has_no_note(synth_root, frame_cache, tmp_path, monkeypatch):
    _initial_recalls(monkeypatch, 0.0)
    summary = _train(synth_root, tmp_path / "run", frame_cache, epochs=1)
    assert summary["best_epoch"] == 1 and summary["best_is_initial"] is False
    assert summary["best_trained"]["epoch"] == 1
    assert _note(summary) is None


def test_a_run_that_only_evaluates_the_start_has_no_note(synth_root, frame_cache, tmp_path):
    """--epochs 0 keeps the starting model by asking for it: nothing was trained to compare it with."""
    summary = _train(synth_root, tmp_path / "run", frame_cache, epochs=0)
    assert summary["best_is_initial"] is True and summary["best_trained"] is None
    assert _note(summary) is None


def test_train_cli_notes_a_kept_start_on_stderr_and_info_names_it(synth_root, frame_cache, tmp_path, monkeypatch):
    runner = CliRunner()
    args = ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), *MICRO_CLI, "--epochs", "1",
            "--batch-size", "8", "--max-train-videos", "8", "--max-test-videos", "4", "--top-m", "4", "--warmup", "0",
            "--cache-dir", str(frame_cache), "--quiet", "--epoch-unit", "video", "--eval-initial"]
    with monkeypatch.context() as patched:
        _initial_recalls(patched, 100.0)
        kept = runner.invoke(app, [*args, "--out", str(tmp_path / "kept"), "--json"])
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["best_is_initial"] is True
    notes = [line for line in kept.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: no trained epoch scored as high as the starting model"), \
        kept.stderr
    info = runner.invoke(app, ["info", str(tmp_path / "kept" / "best.pt")])
    assert info.exit_code == 0 and "0: the starting weights, untrained" in info.stdout, info.output
    assert "training run epoch" in runner.invoke(app, ["info", str(tmp_path / "kept" / "last.pt")]).stdout

    with monkeypatch.context() as patched:
        _initial_recalls(patched, 0.0)
        trained = runner.invoke(app, [*args, "--out", str(tmp_path / "trained")])
    assert trained.exit_code == 0, trained.output
    assert "note:" not in trained.stderr and "best.pt = epoch 1" in trained.stdout, trained.output
    info = runner.invoke(app, ["info", str(tmp_path / "trained" / "best.pt")])
    assert "starting model" not in info.stdout, info.output


def test_the_demo_summary_says_when_its_rap_rows_are_the_starting_model(tmp_path, capsys):
    from rap_deploy.cli.demo_cmds import _print
    from rap_deploy.cli.demo_recipe import DemoSizes

    recalls = {"R1": 50.0, "R5": 75.0, "R10": 75.0, "MdR": 2.0, "MnR": 3.0, "RSum": 200.0, "ties": 0, "queries": 8}
    summary = {"zero_shot": {"t2v": recalls, "v2t": recalls}, "rap": {"t2v": recalls, "v2t": recalls},
               "rap_is_initial": True, "rap_best_trained": {"epoch": 1, "selection_score": 375.0},
               "checkpoint": str(tmp_path / "runs" / "rap" / "best.pt"),
               "sizes": {k: getattr(DemoSizes.tiny(), k) for k in ("videos", "test_videos", "epochs")},
               "engines": [], "bench": [], "seconds": 1.0, "pipeline_seconds": 1.0}
    _print(summary, False, tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert lines == [f"note: the RAP rows are the starting model (epoch 0: identity adapters, so zero-shot), and so "
                     "are the export, the engines and the search: training did not beat it (the best trained epoch, "
                     "1, scored 375.0 against the starting model's 400.0; rule: best t2v + v2t RSum); the trained "
                     f"weights are in {tmp_path / 'runs' / 'rap' / 'last.pt'}; more epochs or steps train past it "
                     "(the full demo, without --tiny, does)"]
    _print({**summary, "rap_is_initial": False, "sizes": {}}, False, tmp_path)
    assert "note:" not in capsys.readouterr().out

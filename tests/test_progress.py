"""Progress off a terminal (nohup, sbatch, a pipe): plain, rate-limited lines on stderr, nothing on stdout.

The clock is patched; no test waits.
"""

from __future__ import annotations

import io
import itertools
import shutil

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.data import progress


def _ticking_clock(monkeypatch, step: float) -> None:
    ticks = itertools.count(0.0, step)
    monkeypatch.setattr(progress, "_clock", lambda: next(ticks))


def _run(total: int, enabled: bool = True) -> None:
    with progress.progress_bar(total, "decoding videos", enabled, unit="videos") as advance:
        for _ in range(total):
            advance()


def test_off_a_terminal_a_line_every_interval_and_a_last_one(monkeypatch, capsys):
    _ticking_clock(monkeypatch, 20.0)  # each step takes 20 s: a line every 3 steps (60 s)
    _run(9)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "decoding videos: 3/9 (33 %), 0.05 videos/s, ETA 2 min 00 s", lines
    assert len(lines) == 4 and lines[-1] == "decoding videos: 9/9 (100 %), 0.045 videos/s, done in 3 min 20 s", lines


def test_a_short_run_or_a_quiet_one_prints_nothing(monkeypatch, capsys):
    _ticking_clock(monkeypatch, 2.0)  # 40 s in all: under one interval
    _run(20)
    _ticking_clock(monkeypatch, 100.0)
    _run(20, enabled=False)
    assert capsys.readouterr() == ("", "")


def test_line_format_hours_rate_and_unknown_eta(monkeypatch):
    _ticking_clock(monkeypatch, 0.0)
    lines = progress.PlainProgress(9000, "decoding videos", "videos")
    lines.done = 1200
    assert lines.line(1200 / 2.1) == "decoding videos: 1200/9000 (13 %), 2.1 videos/s, ETA 1 h 01 min"
    lines.done = 0
    assert lines.line(40.0) == "decoding videos: 0/9000 (0 %), 0 videos/s, ETA unknown"
    assert progress.PlainProgress(0, "ASA similarity").line(5.0) == "ASA similarity: 0/0, 0 steps/s, ETA unknown"


def test_a_closed_stderr_does_not_fail_the_run(monkeypatch):
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr("sys.stderr", closed)
    _ticking_clock(monkeypatch, 100.0)
    _run(3)  # no ValueError from the closed stream


@pytest.mark.parametrize("quiet", [False, True])
def test_index_off_a_terminal_logs_progress_to_stderr_only(synth_root, micro_checkpoint, tmp_path, monkeypatch,
                                                           quiet):
    """``index`` gave progress only to a terminal (its own isatty check): under nohup it printed nothing."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for i, src in enumerate(sorted((synth_root / "videos").glob("*.mp4"))[:2]):
        shutil.copy(src, folder / f"v{i}.mp4")
    _ticking_clock(monkeypatch, 100.0)
    res = CliRunner().invoke(app, ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out",
                                   str(tmp_path / "lib"), "--cache-dir", str(tmp_path / "frames"), "--batch-size",
                                   "1", *(["--quiet"] if quiet else [])])
    assert res.exit_code == 0, res.output
    assert "encoding videos:" not in res.stdout
    if quiet:
        assert "encoding videos" not in res.stderr
    else:
        assert "encoding videos: 1/2 (50 %)" in res.stderr and "encoding videos: 2/2 (100 %)" in res.stderr, res.stderr


def test_the_training_line_counts_one_epoch_and_one_step_in_the_singular(capsys):
    """train announced '1 epochs × 5 steps' (found in a demo log); counts of one are singular now, others plural."""
    from types import SimpleNamespace

    from rap_deploy.train.training_run import TrainingRun

    class OneCaption:  # the training items: one caption of one video
        split, bad_videos = SimpleNamespace(num_videos=1), []

        def __len__(self) -> int:
            return 1

    counts = {"trainable_params": 10, "total_params": 100}
    run = SimpleNamespace(show=True, state=None, steps_per_epoch=1, batch=8, dataset=OneCaption(),
                          options=SimpleNamespace(dataset="msrvtt", epochs=1),
                          ctx=SimpleNamespace(world_size=1, device="cpu"),
                          model=SimpleNamespace(config=SimpleNamespace(variant="rap"), parameter_counts=lambda: counts))
    TrainingRun.announce(run)
    line = " ".join(capsys.readouterr().err.split())
    assert "(1 caption of 1 video, 0 skipped)" in line and "1 epoch × 1 step of 8" in line, line
    run.steps_per_epoch, run.options.epochs = 5, 2
    TrainingRun.announce(run)
    assert "2 epochs × 5 steps of 8" in " ".join(capsys.readouterr().err.split())


def test_the_training_summary_counts_one_step_in_the_singular(capsys):
    """train's closing line said '1 steps of 8' the same way; one step is singular now."""
    from rap_deploy.cli.train_cmds import _print_train_summary

    summary = {"run_dir": "runs/rap", "variant": "rap", "clip": "rap-micro", "trainable_params": 10,
               "total_params": 100, "steps": 1, "batch_size": 8, "train_seconds": 1.0, "wall_seconds": 2.0,
               "world_size": 1, "device": "cpu", "epochs": 1, "complete": True, "best_epoch": 1,
               "selection_rule": "rsum"}
    _print_train_summary(summary)
    assert "100 parameters; 1 step of 8 in" in " ".join(capsys.readouterr().out.split())


def test_verify_off_a_terminal_says_whose_run_each_progress_line_is(micro_ort_engines, synth_root, tmp_path,
                                                                     monkeypatch):
    """verify evaluates the PyTorch reference, then the engine, with the same steps; its progress lines did not say
    which ran: a log read 'encoding videos: 12/12 (100 %)' and then 'encoding videos: 1/12 (8 %)', progress that
    seemed to start over. Each line now names its run: 'PyTorch reference: encoding videos: ...', 'engine: ...'."""
    _ticking_clock(monkeypatch, 100.0)
    res = CliRunner().invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                                   str(micro_ort_engines["fp32"]), "--out", str(tmp_path / "v"), "--cache-dir",
                                   str(tmp_path / "frames"), "--rerank-top", "5"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if "/12 (" in line]
    assert lines and all(line.startswith(("PyTorch reference: ", "engine: ")) for line in lines), res.stderr
    for run in ("PyTorch reference", "engine"):
        for step in ("decoding videos", "encoding videos"):
            assert f"{run}: {step}: 12/12 (100 %)" in res.stderr, (run, step, res.stderr)
    first_engine_line = next(i for i, line in enumerate(lines) if line.startswith("engine: "))
    assert all(line.startswith("PyTorch reference: ") for line in lines[:first_engine_line]), lines

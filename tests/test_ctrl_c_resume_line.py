"""Ctrl-C / SIGTERM of the commands that resume (train, demo, ablate, index): exit 130 / 143 and one stderr line
that says how to carry on. Only `index` said it; a stopped `train` was told nothing of `--resume`, and a stopped
`demo` or `ablate` nothing of re-running it."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import Terminated, app


def _train_args(synth_root, cache, run) -> list[str]:
    """A one-epoch rap-micro run on 8 training videos, evaluated on 4 test videos."""
    return ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--clip", "rap-micro", "--pretrained",
            "none", "--frames", "4", "--topk", "4", "--heads", "2", "--asa-dim", "16", "--rank", "2", "--epochs", "2",
            "--batch-size", "8", "--max-train-videos", "8", "--max-test-videos", "4", "--top-m", "4",
            "--cache-dir", str(cache), "--out", str(run), "--quiet"]


def test_train_stopped_after_an_epoch_names_its_resume_command(synth_root, tmp_path, monkeypatch):
    """Ctrl-C right after epoch 1's last.pt is written: the line names `rapdeploy train --resume RUN`, and that
    command finishes the run."""
    from rap_deploy import checkpoint

    real_save = checkpoint.save_checkpoint

    def interrupted_save(ckpt, path):
        real_save(ckpt, path)
        if path.name == "last.pt" and ckpt.extra.get("epoch") == 1:
            raise KeyboardInterrupt

    run = tmp_path / "my run"  # a space: the command is quoted for the shell
    monkeypatch.setattr(checkpoint, "save_checkpoint", interrupted_save)
    res = CliRunner().invoke(app, _train_args(synth_root, tmp_path / "frames", run))
    assert res.exit_code == 130, res.output
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    line = " ".join(res.stderr.split())
    assert line.startswith("error: interrupted (Ctrl-C); finished files are kept"), line
    assert f"continue the run with `rapdeploy train --resume {shlex.quote(str(run))}`" in line, line
    assert shlex.split(line.split("`")[1])[-1] == str(run)

    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run), "--quiet", "--json"])
    assert resumed.exit_code == 0, resumed.output


def test_train_terminated_before_any_epoch_says_to_run_it_again(synth_root, tmp_path, monkeypatch):
    """SIGTERM before the first epoch finished: no last.pt, so the line says to run the same command again (an
    --resume of that folder would be refused)."""
    from rap_deploy.train import training_run
    from rap_deploy.train.loop import how_to_continue

    def terminated(self):
        raise Terminated()

    run = tmp_path / "run"
    monkeypatch.setattr(training_run.TrainingRun, "train_epochs", terminated)
    res = CliRunner().invoke(app, _train_args(synth_root, tmp_path / "frames", run))
    assert res.exit_code == 143, res.output
    line = " ".join(res.stderr.split())
    assert line.startswith("error: terminated (SIGTERM)") and line.endswith("; run the same command again"), line
    assert not (run / "last.pt").exists()
    assert how_to_continue(run) == "run the same command again"


@pytest.mark.parametrize("command", ["demo", "ablate"])
def test_demo_and_ablate_stopped_say_to_run_them_again(command, tmp_path, monkeypatch):
    """Both resume when given again (finished steps are skipped, finished runs read back): the line says so."""
    from rap_deploy.cli import demo_world, pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_demo", interrupted)
    monkeypatch.setattr(demo_world, "prepare_world", interrupted)
    args = {"demo": ["demo", "--tiny", "--out", str(tmp_path / "demo"), "--quiet"],
            "ablate": ["ablate", "--tiny", "--world", str(tmp_path / "world"), "--out", str(tmp_path / "ab"),
                       "--seeds", "0", "--rows", "rap", "--quiet"]}[command]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130, res.output
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert " ".join(res.stderr.split()).endswith("nothing half-written is left; re-run the same command to resume: "
                                                 + {"demo": "finished steps are kept",
                                                    "ablate": "finished runs are read back, stopped ones resumed"}[
                                                     command]), res.stderr

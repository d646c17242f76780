"""`rapdeploy ablate` after its world and ablation folders moved: killed runs resume there, finished ones read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from rap_deploy.checkpoint import load_checkpoint
from rap_deploy.cli.app import app


def _args(world: Path, out: Path) -> list[str]:
    """The tiny recipe's `rap` row, one seed, two epochs (so a run killed after its first epoch has a last.pt)."""
    return ["ablate", "--tiny", "--epochs", "2", "--world", str(world), "--out", str(out), "--seeds", "0", "--rows",
            "rap", "--quiet"]


def _killed_after_first_epoch(runner: CliRunner, world: Path, out: Path, monkeypatch) -> Path:
    """Run the ablation and stop it (as a kill would) right after its run wrote epoch 1's last.pt; returns the run."""
    from rap_deploy import checkpoint

    run, real_save = out / "rap" / "seed0", checkpoint.save_checkpoint

    def dying_save(ckpt, path):
        real_save(ckpt, path)
        if Path(path) == run / "last.pt" and ckpt.extra.get("epoch") == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(checkpoint, "save_checkpoint", dying_save)
        killed = runner.invoke(app, _args(world, out))
    assert killed.exit_code == 130 and (run / "last.pt").is_file() and not (run / "summary.json").exists()
    return run


def _moved(src: Path, dst: Path) -> Path:
    shutil.move(src, dst)
    return dst


def test_a_killed_run_resumes_in_its_moved_world_and_the_table_names_the_moved_runs(tmp_path, monkeypatch):
    """A killed run was resumed with the data, frame cache and backbone paths its last.pt stored: after the world
    folder moved it failed (exit 2, 'the backbone weights file <old world>/... does not exist'; with the old world
    still there it read the old copy). It now resumes on the moved world's files (the backbone known by its sha256,
    the data by its fingerprint), and ablation.json names the runs' folders as they are now, also of a finished run
    read back after a second move (it named the folder the run was trained in)."""
    runner = CliRunner()
    world, out = tmp_path / "world", tmp_path / "ablation"
    _killed_after_first_epoch(runner, world, out, monkeypatch)
    world, out = _moved(world, tmp_path / "world-moved"), _moved(out, tmp_path / "ablation-moved")
    resumed = runner.invoke(app, _args(world, out))
    assert resumed.exit_code == 0, resumed.output
    run = out / "rap" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["resumed_after_epoch"] == 1  # resumed, not trained again
    last = load_checkpoint(run / "last.pt")
    stored = last.extra["train_options"]
    assert Path(last.backbone.value).parent == world / "cache" / "backbones"
    assert stored["pretrained"] == last.backbone.value
    assert (stored["data_root"], stored["cache_dir"]) == (str(world / "data"), str(world / "cache" / "frames"))
    table_run = json.loads((out / "ablation.json").read_text())["rows"][0]["runs"][0]
    assert table_run["run_dir"] == str(run)
    stamp = (run / "summary.json").stat().st_mtime_ns
    world, out = _moved(world, tmp_path / "world-again"), _moved(out, tmp_path / "ablation-again")
    read_back = runner.invoke(app, _args(world, out))
    assert read_back.exit_code == 0, read_back.output
    assert (out / "rap" / "seed0" / "summary.json").stat().st_mtime_ns == stamp  # read back, not trained again
    table_run = json.loads((out / "ablation.json").read_text())["rows"][0]["runs"][0]
    assert table_run["run_dir"] == str(out / "rap" / "seed0")

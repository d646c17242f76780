"""`rapdeploy ablate` reads a finished run's summary.json only when it is what the run's checkpoints hold.

The table is read from each run's ``summary.json``; an edited one put its numbers in the table (a forged R@1 passed
the targets), a summary beside a killed run's checkpoints read the run back as finished, a summary alone in a
folder was read back as any row and seed, and an edited summary that lacked what the table reads ended in a
traceback. Each is now the one-line damaged-run error (exit 1), or for a run of another recipe the refusal (exit 2).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app


def _args(world: Path, out: Path, rows: str = "zero_shot,rap", seeds: str = "0") -> list[str]:
    return ["ablate", "--tiny", "--epochs", "2", "--world", str(world), "--out", str(out), "--seeds", seeds,
            "--rows", rows, "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny world and an ablation of its zero-shot and `rap` rows (seed 0, two epochs), trained once."""
    root = tmp_path_factory.mktemp("ablate-checked")
    world, out = root / "world", root / "ablation"
    done = CliRunner().invoke(app, _args(world, out))
    assert done.exit_code == 0, done.output
    return world, out


@pytest.fixture
def ablation(finished, tmp_path) -> tuple[Path, Path]:
    """The finished ablation copied into a folder of this test's own (the world is shared, never written)."""
    world, out = finished
    copy = tmp_path / "ablation"
    shutil.copytree(out, copy)
    return world, copy


def _edit(path: Path, change) -> None:
    summary = json.loads(path.read_text())
    change(summary)
    path.write_text(json.dumps(summary))


def _run(world: Path, out: Path, rows: str = "zero_shot,rap", seeds: str = "0"):
    return CliRunner().invoke(app, _args(world, out, rows, seeds))


def _tables_without_rap(out: Path) -> None:
    """Both tables hold the rows finished before the damaged run (zero-shot), marked incomplete: never its numbers."""
    result = json.loads((out / "ablation.json").read_text())
    assert result["complete"] is False and [r["name"] for r in result["rows"]] == ["zero_shot"]
    table = (out / "ablation.md").read_text()
    assert table.startswith("Incomplete: ") and "`rap`" not in table, table


def _damaged(result, words: str) -> None:
    assert result.exit_code == 1, result.output
    assert words in result.output and "remove " in result.output and "Traceback" not in result.output, result.output
    assert "the next `rapdeploy ablate` trains that run again" in result.output


def test_an_edited_summary_metric_is_refused_not_put_in_the_table(ablation):
    """Editing best.t2v.R1 to 99 put 99.0 in the table and passed the targets, while best.pt's stored metrics said
    otherwise; so did another best epoch or two-stage score. Each is a damaged run now, and the tables are left."""
    from rap_deploy.checkpoint import load_checkpoint

    world, out = ablation
    run = out / "rap" / "seed0"
    stored = load_checkpoint(run / "best.pt").extra
    r1 = stored["metrics"]["t2v"]["R1"]
    original = (run / "summary.json").read_text()
    edits = [(lambda s: s["best"]["t2v"].update(R1=99.0), f"its best.t2v.R1 99.0 is not what its best.pt holds ({r1})"),
             (lambda s: s["best"]["two_stage"]["v2t"].update(R5=0.0), "its best.two_stage.v2t.R5 0.0 is not what"),
             (lambda s: s.update(best_epoch=s["best_epoch"] + 1), f"its best_epoch {stored['epoch'] + 1} is not")]
    for change, words in edits:
        (run / "summary.json").write_text(original)
        _edit(run / "summary.json", change)
        _damaged(_run(world, out), words)
        _tables_without_rap(out)
    (run / "summary.json").write_text(original)
    assert _run(world, out).exit_code == 0  # the run as it was: read back


def test_a_killed_run_beside_a_forged_complete_summary_is_not_read_back(finished, tmp_path, monkeypatch):
    """A run killed after its first of two epochs, with a summary saying it finished, was read back as finished;
    its last.pt holds epoch 1 of 2: a damaged run."""
    from rap_deploy.train import training_run

    world, done = finished
    out = tmp_path / "ablation"
    run, real_write = out / "rap" / "seed0", training_run.write_metrics

    def dying_write(run_dir, history):  # after epoch 1's last.pt and (when it is the best) best.pt
        real_write(run_dir, history)
        if history[-1]["epoch"] == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(training_run, "write_metrics", dying_write)
        assert _run(world, out, "rap").exit_code == 130
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file() and not (run / "summary.json").exists()
    shutil.copy(done / "rap" / "seed0" / "summary.json", run / "summary.json")  # "complete": true, epochs 2
    _edit(run / "summary.json", lambda s: s.update(run_dir=str(run)))
    _damaged(_run(world, out, "rap"), "it says the run finished its 2 epochs, but its last.pt holds epoch 1")


def test_a_summary_alone_or_a_run_copied_elsewhere_is_not_another_rows_run(ablation):
    """rap's summary.json copied (run_dir edited) into saliency/seed0 and no_lorm/seed0 read back as those rows:
    three identical rows. A finished run without best.pt is damaged now; a run copied with its checkpoints into
    another row's or seed's folder is refused by the options its checkpoints stored (exit 2), with or without its
    last.pt."""
    world, out = ablation
    rap = out / "rap" / "seed0"
    for row in ("no_lorm", "saliency"):
        (out / row / "seed0").mkdir(parents=True)
        shutil.copy(rap / "summary.json", out / row / "seed0" / "summary.json")
        _edit(out / row / "seed0" / "summary.json", lambda s, row=row: s.update(run_dir=str(out / row / "seed0")))
    _damaged(_run(world, out, "rap,no_lorm,saliency"), "it says the run finished, but the folder has no best.pt")
    for row, seed, words in (("no_lorm", 0, "use_lorm = True, not False"), ("rap", 1, "seed = 0, not 1")):
        copy = out / row / f"seed{seed}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(rap, copy)
        _edit(copy / "summary.json", lambda s, copy=copy: s.update(run_dir=str(copy)))
        for _ in range(2):  # with its last.pt, then only with best.pt
            refused = _run(world, out, row, str(seed))
            assert refused.exit_code == 2 and words in refused.output, refused.output
            (copy / "last.pt").unlink(missing_ok=True)


@pytest.mark.parametrize("change, words", [
    (lambda s: s["best"].pop("v2t"), "it has no 'best.v2t' metrics"),
    (lambda s: s["best"]["two_stage"].pop("t2v"), "it has no 'best.two_stage.t2v' metrics"),
    (lambda s: s.update(best={**s["best"], "offsets": {"gamma": [], "delta": []}},
                        offsets_initial={"gamma": [], "delta": []}),
     "'best.offsets' does not hold finite gamma and delta offsets of at least one head"),
    (lambda s: s.update(trainable_params="n/a"), "its trainable_params 'n/a' is not an integer >= 0"),
    (lambda s: s.update(trainable_params=True), "its trainable_params True is not an integer >= 0"),
], ids=["no-v2t", "no-two-stage-t2v", "empty-offsets", "params-text", "params-bool"])
def test_an_edited_summary_is_one_error_line_not_a_traceback(ablation, change, words):
    """A summary lacking best.v2t (KeyError), with empty offsets (ValueError: zero-size array) or a trainable
    parameter count that is not a number (ValueError in the table, after ablation.json was rewritten) ended in a
    traceback; each is the damaged-run line now, and neither table holds the run."""
    world, out = ablation
    _edit(out / "rap" / "seed0" / "summary.json", change)
    _damaged(_run(world, out), words)
    _tables_without_rap(out)


def test_the_two_tables_are_written_together_or_not_at_all(tmp_path, monkeypatch):
    """ablation.json was written before ablation.md was rendered: a record the table cannot show left a new
    ablation.json beside the previous call's ablation.md. Both texts are made before either file is written."""
    from rap_deploy.train import ablate
    from rap_deploy.train.loop import TrainOptions

    def record(options, progress, heldout):
        return {"seed": options.seed, "run_dir": options.out, "offset_change": None, "trainable_params": params,
                **{d: {"R1": 30.0, "R5": 50.0, "R10": 60.0, "MnR": 3.0} for d in ("t2v", "v2t")}}

    monkeypatch.setattr(ablate, "_run_and_score", record)
    base = TrainOptions(dataset="msrvtt", data_root="d", out="o")
    params = 10
    ablate.run_ablation(base, tmp_path, [0], ["rap"], log=lambda msg: None)
    before = (tmp_path / "ablation.json").read_text(), (tmp_path / "ablation.md").read_text()
    params = "n/a"
    with pytest.raises(ValueError):
        ablate.run_ablation(base, tmp_path, [0, 1], ["rap"], log=lambda msg: None)
    assert ((tmp_path / "ablation.json").read_text(), (tmp_path / "ablation.md").read_text()) == before

"""An unfinished run whose ``last.pt`` a user removed cannot be resumed, and `rapdeploy train` refuses to start again
over its other files with a fix for its own ``--out``. Reached from ``ablate`` or the demo, that fix was not theirs:
``ablate`` now says to remove the run folder (its next call trains the run again), and the demo trains it again with
a note, as it does a killed run on another backbone."""

from __future__ import annotations

import pytest

from rap_deploy.errors import UsageError
from rap_deploy.train.ablate_runs import run_one
from rap_deploy.train.loop import TrainOptions


def test_ablate_says_to_remove_an_unfinished_run_without_last_pt(tmp_path):
    run_dir = tmp_path / "ablation" / "rap" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    options = TrainOptions(dataset="msrvtt", data_root=str(tmp_path / "data"), out=str(run_dir))
    with pytest.raises(UsageError) as refused:
        run_one(options, progress=False)
    assert str(refused.value) == (f"ablation run {run_dir} holds metrics.jsonl but no last.pt: it stopped before it "
                                  f"finished and cannot be resumed; remove {run_dir} and the next `rapdeploy ablate` "
                                  "trains that run again")
    assert (run_dir / "metrics.jsonl").exists()  # nothing removed: the user decides


def test_the_demo_trains_an_unfinished_run_without_last_pt_again(tmp_path):
    from rap_deploy.cli.pipeline import _not_to_resume

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert _not_to_resume(run_dir, tmp_path / "init.pt") is None  # an empty folder: nothing to say
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert _not_to_resume(run_dir, tmp_path / "init.pt") == (
        "an unfinished run without its last.pt (metrics.jsonl), which cannot be resumed")

"""A last.pt whose optimizer moments have other shapes than the model's parameters, or whose stored batch, steps per
epoch or total steps are not what its stored options give on the data, is refused on --resume (CheckFailedError,
exit 1, naming the file) before anything is trained: it used to end in a size-mismatch traceback from torch's Adam
step, or resume with the edited batch and run past total_steps at learning rate 0."""

from __future__ import annotations

import shutil

import pytest
import torch

from rap_deploy.errors import CheckFailedError


@pytest.fixture(scope="module")
def stopped_run(synth_root, tmp_path_factory):
    """A two-epoch rap-micro run (8 training videos, batches of 4: two steps per epoch) stopped after epoch 1."""
    from rap_deploy.train.loop import TrainOptions, train_rap

    out = tmp_path_factory.mktemp("stopped") / "run"
    options = TrainOptions(dataset="msrvtt", data_root=str(synth_root), out=str(out), clip="rap-micro",
                           pretrained="none", frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=2,
                           batch_size=4, lr=5e-3, warmup=1, seed=3, max_train_videos=8, max_test_videos=4,
                           cache_dir=str(tmp_path_factory.mktemp("frames")), top_m=4, epoch_unit="video",
                           max_epochs_this_run=1)
    train_rap(options, progress=False)
    return out


def _edited_copy(stopped_run, tmp_path, edit):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    payload = torch.load(run / "last.pt", weights_only=True)
    edit(payload["extra"]["train_state"])
    torch.save(payload, run / "last.pt")
    return run


def _first_moment(shape, dtype=torch.float32):
    def edit(state):
        first = next(iter(state["optimizer"]["state"]))
        state["optimizer"]["state"][first]["exp_avg"] = torch.zeros(shape, dtype=dtype)
    return edit


def _setting(key, value):
    def edit(state):
        state[key] = value(state[key])
    return edit


@pytest.mark.parametrize("edit, said", [
    (_first_moment((7, 7)), "'exp_avg' of parameter 0 is of shape (7, 7)"),
    (_first_moment((7, 7), torch.int64), "'exp_avg' of parameter 0 is a strided tensor of int64"),
    (_setting("batch_size", lambda v: 3), "train_state.batch_size 3 is not the run's --batch-size 4"),
    (_setting("steps_per_epoch", lambda v: v + 1), "train_state.steps_per_epoch 3 is not the 2 steps of 4"),
    (_setting("total_steps", lambda v: v + 1), "train_state.total_steps 5 is not the 4 steps of 2 epoch(s)"),
], ids=["moment-shape", "moment-dtype", "batch", "steps-per-epoch", "total-steps"])
def test_a_training_state_that_does_not_fit_is_refused(stopped_run, tmp_path, edit, said):
    from rap_deploy.train.loop import train_rap

    run = _edited_copy(stopped_run, tmp_path, edit)
    metrics = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckFailedError, match="does not fit the run") as err:
        train_rap(None, progress=False, resume=run)
    assert said in str(err.value) and str(run / "last.pt") in str(err.value)
    assert (run / "metrics.jsonl").read_bytes() == metrics  # nothing trained or written


def test_the_unedited_run_resumes(stopped_run, tmp_path):
    from rap_deploy.train.loop import train_rap

    run = _edited_copy(stopped_run, tmp_path, lambda state: None)
    summary = train_rap(None, progress=False, resume=run)
    assert summary["resumed_after_epoch"] == 1 and summary["steps"] == 4

"""`rapdeploy train --resume` printed "120.0 s of training (40.0 s wall)": ``train_seconds`` sums every epoch of the
run, ``wall_seconds`` is the resuming command's alone, and the line did not say so."""

from __future__ import annotations

from rap_deploy.cli.train_cmds import _wall_words


def test_a_resumed_run_says_what_its_wall_time_covers():
    assert _wall_words({"wall_seconds": 41.04, "resumed_after_epoch": None}) == "41.0 s wall"
    assert _wall_words({"wall_seconds": 41.04, "resumed_after_epoch": 2}) == (
        "all epochs; this command, resumed after epoch 2, took 41.0 s wall")

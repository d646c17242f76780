"""A run's last.pt is untrusted: the refusal of its invalid stored training options (train --resume) shows their error
at a bounded length; a padded option made a line of 100,000 characters and more."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import micro_config

from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
from rap_deploy.errors import CheckFailedError
from rap_deploy.model.clip_loader import BackboneSpec
from rap_deploy.train.run_state import stored_run

HUGE = 100_000


@pytest.fixture(scope="module")
def checkpoint():
    ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    return checkpoint_from_model(model, ckpt)


@pytest.mark.parametrize("bad,named", [
    ({"epochs": "x" * HUGE}, "--epochs must be an integer, got 'xxx"),
    ({"epochs": [0] * HUGE}, "--epochs must be an integer, got [0, 0,"),
    ({"epoch_unit": "v" * HUGE}, "epoch unit 'vvv"),
], ids=["padded-text", "long-list", "padded-epoch-unit"])
def test_padded_stored_options_are_named_short(checkpoint, tmp_path: Path, bad: dict, named: str) -> None:
    options = {"dataset": "msrvtt", "data_root": "/d", "out": "/o", **bad}
    checkpoint.extra = {"train_state": {}, "train_options": options}
    last = save_checkpoint(checkpoint, tmp_path / "last.pt")
    with pytest.raises(CheckFailedError) as err:
        stored_run(last)
    message = str(err.value)
    assert message.startswith(f"{last}: its training options are invalid ({named}"), message[:300]
    assert "the file is damaged or was edited: start the run again without --resume" in message
    assert len(message) < 600 + len(str(last)), len(message)

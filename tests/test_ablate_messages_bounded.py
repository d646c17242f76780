"""An ablation run's summary.json and checkpoints are untrusted: the values its refusals echo (the run folder a summary
was written for, the option a run was trained with, invalid stored options) are shown at a bounded length; a padded
one made a megabyte error line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import PATH_CHARS
from rap_deploy.train.ablate_runs import _best_options, check_same_recipe, read_summary
from rap_deploy.train.loop import TrainOptions

HUGE = 1_000_000


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "rap" / "seed0"
    run.mkdir(parents=True)
    return run


def _options(run: Path, **changes) -> TrainOptions:
    return TrainOptions(dataset="msrvtt", data_root="/data", out=str(run), epochs=0, **changes)


def test_a_summary_of_a_padded_run_folder_is_named_short(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run / "summary.json").write_text(json.dumps({"run_dir": "/elsewhere/" + "y" * HUGE}), encoding="utf-8")
    with pytest.raises(CheckFailedError) as err:
        read_summary(run)
    message = str(err.value)
    assert "it was written for the run '/elsewhere/yyy" in message and f"remove {run}" in message
    assert len(message) < PATH_CHARS + 300 + len(str(run)) * 2, len(message)


@pytest.mark.parametrize("key,recorded,shown", [
    ("pretrained", "/w/" + "b" * HUGE, "pretrained = '/w/bbb"),
    ("epochs", [0] * HUGE, "epochs = [0, 0, 0, 0, 0, 0, ...], not 0"),
])
def test_a_summary_of_another_recipe_is_named_short(tmp_path: Path, key: str, recorded, shown: str) -> None:
    run = _run(tmp_path)
    with pytest.raises(UsageError) as err:
        check_same_recipe(run, {"run_dir": str(run), key: recorded}, _options(run, pretrained="/w/backbone.pt"))
    message = str(err.value)
    assert shown in message and "pass --out with a new folder" in message
    assert len(message) < PATH_CHARS + 300 + len(str(run)), len(message)


def test_a_real_backbone_path_is_named_whole(tmp_path: Path) -> None:
    run = _run(tmp_path)
    recorded = "/w/" + "deep/" * 150 + "backbone.safetensors"  # 773 characters: a real path, shown whole
    with pytest.raises(UsageError) as err:
        check_same_recipe(run, {"run_dir": str(run), "pretrained": recorded}, _options(run, pretrained="/w/b.pt"))
    assert f"pretrained = {recorded!r}, not '/w/b.pt'" in str(err.value)


def test_padded_invalid_stored_options_are_named_short(tmp_path: Path) -> None:
    stored = {"dataset": "msrvtt", "data_root": "/data", "out": "/o", "epochs": "9" * HUGE}
    best = tmp_path / "best.pt"
    with pytest.raises(CheckFailedError) as err:
        _best_options(best, SimpleNamespace(extra={"train_options": stored}))
    message = str(err.value)
    assert "its training options are invalid (" in message and "epochs" in message
    assert len(message) < 600 + 2 * len(str(tmp_path)), len(message)

"""``train --dataset didemo`` with a checkpoint of rap-micro (32 text positions) advised ``rapdeploy init --frames 64
--context-length 64 ...``, which init refuses ('context_length 64 exceeds rap-micro's 32 text positions'): a dead
end. The protocol's 64 tokens are capped at the backbone's positions (init refuses more, DESIGN §5's 64 is for a
backbone that has them), so the advice names --clip and --context-length 32, and following it trains."""

from __future__ import annotations

import json
import shlex

import numpy as np
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.data.synth_dataset import write_video


def _tiny_didemo(root):
    """A DiDeMo-layout folder: 4 train and 2 val/test videos of 20 random 32x32 frames at 4 fps."""
    rng = np.random.default_rng(0)
    splits = {"train": ["1@N00_1", "2@N00_2", "3@N00_3", "4@N00_4"], "val": ["5@N00_5", "6@N00_6"]}
    splits["test"] = splits["val"]
    (root / "videos").mkdir(parents=True)
    for split, names in splits.items():
        (root / f"{split}_list.txt").write_text("".join(f"{n}.mp4\n" for n in names))
        notes = [{"video": f"{n}.mp4", "description": f"clip {i} moves", "times": [[0, 1]]}
                 for i, n in enumerate(names)]
        (root / f"{split}_data.json").write_text(json.dumps(notes))
        for n in names:
            if not (root / "videos" / f"{n}.mp4").exists():
                write_video(root / "videos" / f"{n}.mp4", rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8), 4)
    return root


def test_following_the_paragraph_protocol_advice_for_rap_micro_trains(tmp_path):
    runner = CliRunner()
    data = _tiny_didemo(tmp_path / "didemo")
    made = runner.invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--out", str(tmp_path / "m4.pt")])
    assert made.exit_code == 0, made.output
    train = ["train", "--dataset", "didemo", "--data-root", str(data), "--epochs", "1", "--batch-size", "2",
             "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache"), "--checkpoint"]
    refused = runner.invoke(app, [*train, str(tmp_path / "m4.pt"), "--out", str(tmp_path / "run0")])
    assert refused.exit_code == 2, refused.output
    said = " ".join(refused.stderr.split())
    assert "has frames 4, but didemo's protocol uses 64:" in said and "pass --frames 4 to train" in said, said
    advice = shlex.split(said.split("`", 2)[1])
    assert advice[:2] == ["rapdeploy", "init"] and advice[-1] == "...", said
    assert advice[2:-1] == ["--clip", "rap-micro", "--frames", "64", "--context-length", "32"], said
    followed = runner.invoke(app, [*advice[1:-1], "--out", str(tmp_path / "m64.pt")])
    assert followed.exit_code == 0, followed.output
    trained = runner.invoke(app, [*train, str(tmp_path / "m64.pt"), "--out", str(tmp_path / "run")])
    assert trained.exit_code == 0, trained.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["complete"] is True

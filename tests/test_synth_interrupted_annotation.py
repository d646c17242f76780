"""A ``rapdeploy synth`` killed while it rewrites a folder's videos left the earlier run's test and train csvs over
the new videos (only ``MSRVTT_data.json`` was deleted first), and data-check and verify read them as a dataset. Every
annotation file now goes before the first video is rewritten, and the unfinished folder is refused with the fix."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.data import synth_dataset
from rap_deploy.data.datasets import load_split
from rap_deploy.errors import UsageError

ARGS = ["--videos", "6", "--test-videos", "2", "--size", "32", "--seconds", "3", "--quiet"]


class Killed(BaseException):
    """Stands for the SIGKILL: nothing of synth runs after it."""


def test_a_synth_killed_while_writing_videos_leaves_no_annotation_and_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "workspace"))
    monkeypatch.delenv("RAPDEPLOY_DATA", raising=False)
    runner = CliRunner()
    out = tmp_path / "ds"
    assert runner.invoke(app, ["synth", "--out", str(out), *ARGS, "--seed", "0"]).exit_code == 0

    write_video, written = synth_dataset.write_video, []

    def dies_at_the_fifth(path, frames, fps):
        if len(written) == 4:  # the test videos are the last two: video4 is being written
            raise Killed
        written.append(path)
        write_video(path, frames, fps)

    monkeypatch.setattr(synth_dataset, "write_video", dies_at_the_fifth)
    with pytest.raises(Killed):
        synth_dataset.generate_synthetic_dataset(out, videos=6, test_videos=2, seed=1, size=32, seconds=3,
                                                 progress=False)
    monkeypatch.undo()
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "workspace"))
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [synth_dataset.SYNTH_MARKER]

    for split in ("test", "train"):
        with pytest.raises(UsageError, match="did not finish"):
            load_split("msrvtt", out, split)
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(out), "--no-cache",
                                 "--quiet"])
    assert result.exit_code == 2, result.output
    assert str(out) in result.stderr and "rapdeploy synth did not finish" in result.stderr
    assert f"rapdeploy synth --out {out}" in result.stderr

    # writing it again, as the message says, gives a readable dataset
    assert runner.invoke(app, ["synth", "--out", str(out), *ARGS, "--seed", "1"]).exit_code == 0
    assert len(load_split("msrvtt", out, "test").videos) == 2

"""``rapdeploy synth`` + ``rapdeploy data-check`` through the real CLI, and ``check_dataset``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.data.cache import FrameCache
from rap_deploy.data.check import check_dataset
from rap_deploy.errors import UsageError

REPORT_KEYS = {"dataset", "split", "videos", "captions", "missing", "undecodable", "per_video", "ok"}


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "workspace"))
    monkeypatch.delenv("RAPDEPLOY_DATA", raising=False)
    return CliRunner()


@pytest.fixture
def small_synth(tmp_path, runner):
    out = tmp_path / "synth"
    result = runner.invoke(app, ["synth", "--out", str(out), "--videos", "20", "--test-videos", "10", "--size", "64",
                                 "--seed", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_synth_then_data_check_json(small_synth, runner, tmp_path, monkeypatch):
    args = ["data-check", "--dataset", "msrvtt", "--data-root", str(small_synth), "--split", "test", "--json",
            "--image-size", "32", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert REPORT_KEYS <= set(report)
    assert (report["dataset"], report["split"], report["videos"], report["captions"]) == ("msrvtt", "test", 10, 10)
    assert report["missing"] == [] and report["undecodable"] == [] and report["ok"] is True
    assert len(report["per_video"]) == 10
    assert all(v == {"frames": 12, "seconds": 12.0} for v in report["per_video"].values())
    # the decoded frames went into the workspace cache; a second run reads them back
    entries = list((tmp_path / "workspace" / "cache" / "frames").rglob("*.npz"))
    assert len(entries) == 10
    import rap_deploy.data.cache as cache_module

    def no_decoding(path, *args, **kwargs):
        raise AssertionError(f"{path} was decoded again")

    with monkeypatch.context() as patched:
        patched.setattr(cache_module, "decode_video", no_decoding)
        cached = runner.invoke(app, args)
    assert cached.exit_code == 0, cached.output
    assert json.loads(cached.stdout)["per_video"] == report["per_video"]
    again = runner.invoke(app, args + ["--no-cache"])  # decodes every video again, the same
    assert again.exit_code == 0 and json.loads(again.stdout)["per_video"] == report["per_video"]


def test_train_split_and_env_data_root(small_synth, runner, monkeypatch):
    monkeypatch.setenv("RAPDEPLOY_DATA", str(small_synth))
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt", "--split", "train", "--no-cache",
                                 "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert "msrvtt train: 10 videos, 50 captions, 12 frames each, 0 missing, 0 undecodable" in result.stdout


def test_missing_and_truncated_videos_exit_1_and_are_named(small_synth, runner):
    videos = sorted(small_synth.glob("videos/video1[0-9].mp4"))  # test videos are video10..video19
    missing, truncated = videos[2], videos[5]
    missing.unlink()
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    base = ["data-check", "--dataset", "msrvtt", "--data-root", str(small_synth), "--no-cache", "--image-size", "32"]

    result = runner.invoke(app, base)
    assert result.exit_code == 1
    assert str(missing) in result.stderr and str(truncated) in result.stderr
    assert "2 of 10 videos unusable" in result.stderr
    assert f"missing      {missing.stem}" in result.stdout and f"undecodable  {truncated.stem}" in result.stdout

    result = runner.invoke(app, base + ["--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["missing"] == [missing.stem] and report["ok"] is False
    assert [u["video_id"] for u in report["undecodable"]] == [truncated.stem]
    assert report["undecodable"][0]["reason"].startswith("cannot decode")
    assert len(report["per_video"]) == 8


def test_a_clip_shorter_than_a_second_is_checked_ok_with_one_frame(small_synth, runner):
    """data-check reported a 0.8 s clip as undecodable ("shorter than 1 second", exit 1) and training dropped it;
    it is sampled (one frame, as CLIP4Clip) and data-check says so in per_video."""
    from rap_deploy.data.synth_dataset import write_video

    short = small_synth / "videos" / "video10.mp4"  # a test video
    write_video(short, np.full((4, 64, 64, 3), 90, dtype=np.uint8), 5)  # 4 frames at 5 fps: 0.8 s
    args = ["data-check", "--dataset", "msrvtt", "--data-root", str(small_synth), "--split", "test", "--json",
            "--no-cache", "--image-size", "32", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["undecodable"] == []
    assert report["per_video"]["video10"] == {"frames": 1, "seconds": 0.8}


def test_usage_errors_exit_2(tmp_path, runner):
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt"])
    assert result.exit_code == 2 and "RAPDEPLOY_DATA" in result.stderr and "demo" not in result.stderr
    demo_data = tmp_path / "workspace" / "data"  # what `rapdeploy demo` leaves: named, never used unasked
    demo_data.mkdir(parents=True)
    (demo_data / "MSRVTT_data.json").write_text("{}")
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt"])
    assert result.exit_code == 2 and "RAPDEPLOY_DATA" in result.stderr, result.output
    assert f"the demo's synthetic data (msrvtt layout) is {demo_data}" in " ".join(result.stderr.split())
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "MSRVTT_JSFUSION_test.csv" in result.stderr
    result = runner.invoke(app, ["data-check", "--dataset", "hmdb", "--data-root", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "unknown" in result.stderr


def test_a_data_root_that_is_a_file_is_named_as_such(tmp_path, runner):
    """data-check (train, verify, index) and bench --data-root FILE said the dataset folder 'does not exist'; they
    say it is not a folder now (exit 2)."""
    from rap_deploy.data.datasets import load_split

    a_file = tmp_path / "MSRVTT_data.json"
    a_file.write_text("{}")
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(a_file), "--no-cache"])
    assert result.exit_code == 2 and "is not a folder" in result.stderr, result.output
    with pytest.raises(UsageError, match="is not a folder"):
        load_split("msrvtt", a_file, "test")


def test_check_dataset_function(synth_root, tmp_path):
    report = check_dataset("msrvtt", synth_root, "test", cache=FrameCache(tmp_path / "c"), progress=False)
    assert report["ok"] and report["videos"] == 12 and report["captions"] == 12
    assert report["sampling"] == {"max_frames": 12, "fps": 1.0}
    assert set(report["per_video"]) == {f"video{i}" for i in range(24, 36)}


def test_synth_refuses_to_write_over_a_real_dataset(tmp_path, runner):
    """MSR-VTT's own videos are named video0.mp4 ... video9999.mp4: `synth --out` pointed at a real dataset folder
    deleted its MSRVTT_data.json and replaced its first videos. A folder whose annotation rapdeploy did not write is
    refused (exit 2) and left as it was; a synthetic folder is still written again."""
    real = tmp_path / "msrvtt"
    (real / "videos").mkdir(parents=True)
    annotation = json.dumps({"info": {"year": "2016", "version": "1.0"}, "videos": [], "sentences": []})
    (real / "MSRVTT_data.json").write_text(annotation)
    (real / "videos" / "video0.mp4").write_bytes(b"a real video")
    args = ["synth", "--videos", "4", "--test-videos", "2", "--size", "32", "--quiet", "--out"]
    result = runner.invoke(app, [*args, str(real)])
    assert result.exit_code == 2, result.output
    assert "MSRVTT_data.json" in result.stderr and "not a rapdeploy synthetic dataset" in result.stderr
    assert (real / "MSRVTT_data.json").read_text() == annotation
    assert (real / "videos" / "video0.mp4").read_bytes() == b"a real video"
    (real / "MSRVTT_data.json").write_text("{not json")
    assert runner.invoke(app, [*args, str(real)]).exit_code == 2
    assert (real / "videos" / "video0.mp4").read_bytes() == b"a real video"
    (real / "MSRVTT_data.json").unlink()  # MSR-VTT's videos without their annotation: still not synth's folder
    result = runner.invoke(app, [*args, str(real)])
    assert result.exit_code == 2 and "no annotation that rapdeploy synth wrote" in result.stderr, result.output
    assert (real / "videos" / "video0.mp4").read_bytes() == b"a real video"

    synth = tmp_path / "synth"
    for seed in ("0", "1"):
        result = runner.invoke(app, [*args, str(synth), "--seed", seed])
        assert result.exit_code == 0, result.output
    (synth / "MSRVTT_data.json").unlink()  # as if a synth was killed before its annotation: written again
    assert runner.invoke(app, [*args, str(synth)]).exit_code == 0
    (synth / "videos" / "notes.mp4").write_bytes(b"the user's")
    fewer = runner.invoke(app, [*args[:2], "3", *args[3:], str(synth)])  # an earlier, larger world's videos go
    assert fewer.exit_code == 0, fewer.output
    assert sorted(p.name for p in (synth / "videos").iterdir()) == ["notes.mp4", "video0.mp4", "video1.mp4",
                                                                    "video2.mp4"]


def test_a_split_without_videos_fails_the_check(tmp_path, runner):
    """An annotation file that lists no video (a test csv with its header only) passed data-check with exit 0, though
    training and verify cannot use the split; it is now a failed check (exit 1) saying so."""
    root = tmp_path / "msrvtt"
    root.mkdir()
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n")
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                 "--quiet", "--json"])
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["ok"] is False
    assert "msrvtt test split" in result.stderr and "lists no videos" in result.stderr


def test_missing_dataset_folder_from_the_environment_names_rapdeploy_data(tmp_path, runner, monkeypatch):
    """A missing folder that came from $RAPDEPLOY_DATA (set long ago, in a shell profile) was reported as 'pass
    --data-root pointing at the dataset', though no --data-root was passed: the line now names the variable and its
    value, and says to fix or unset it (or pass --data-root)."""
    gone = tmp_path / "moved-away"
    monkeypatch.setenv("RAPDEPLOY_DATA", str(gone))
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt"])
    line = " ".join(result.stderr.split())
    assert result.exit_code == 2, result.output
    assert f"(from RAPDEPLOY_DATA={gone}) does not exist" in line and "fix or unset RAPDEPLOY_DATA" in line, line
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(gone)])
    line = " ".join(result.stderr.split())
    assert result.exit_code == 2 and "RAPDEPLOY_DATA" not in line and "pass --data-root" in line, line

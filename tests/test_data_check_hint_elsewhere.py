"""``rapdeploy data-check``, the README's first step on a real dataset, named only the folder it looked in when every
video was missing (``DATA/videos does not exist; put the videos there ...``), while ``train``, ``export``, ``verify``
and ``bench`` on the same folder go on to name the folder of the data root that holds video files (MSR-VTT's own
release unpacks to ``TrainValVideo/`` and ``TestVideo/``). data-check now says it too, without naming a folder twice."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rap_deploy.cli import app


def _annotations(root, ids=("video1", "video2")):
    """MSR-VTT's three annotation files for the test videos ``ids`` (no videos) in ``root``."""
    root.mkdir(parents=True)
    rows = "".join(f"ret{i},msr{i},{vid},a clip {vid}\n" for i, vid in enumerate(ids))
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + rows)
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n")
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": v, "caption": f"a clip {v}"}
                                                                     for v in ids]}))
    return root


def _file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _error_line(root) -> str:
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: 2 of 2 videos unusable: "), result.stderr
    return lines[0]


def test_data_check_names_the_folders_of_the_data_root_that_hold_video_files(tmp_path):
    root = _annotations(tmp_path / "msrvtt")
    _file(root / "TestVideo" / "video9.mp4")
    _file(root / "TrainValVideo" / "video0.mp4")
    _file(root / "frames" / "video1" / "00001.jpg")  # no video file: not named
    said = _error_line(root)
    assert said.endswith(
        f": {root / 'videos'} does not exist; put the videos there (<video_id>.<ext>, any sub-folder) or pass the "
        f"--data-root that holds them; {root / 'TestVideo'}, {root / 'TrainValVideo'} hold video files: if they are "
        f"this split's, move them into {root / 'videos'}"), said


def test_data_check_names_an_unread_videos_folder_once(tmp_path):
    """A candidate folder left unread (MSRVTT_Videos/ beside a videos/ that holds other videos) is named by its own
    advice only, not again among the other folders holding video files."""
    root = _annotations(tmp_path / "msrvtt")
    _file(root / "videos" / "other.mp4")
    _file(root / "MSRVTT_Videos" / "video7.mp4")
    _file(root / "clips" / "video8.mkv")
    said = _error_line(root)
    assert said.count(str(root / "MSRVTT_Videos")) == 1, said
    assert f"{root / 'MSRVTT_Videos'} also holds videos but is not read" in said, said
    assert said.endswith(f"; {root / 'clips'} holds video files: if they are this split's, move them into "
                         f"{root / 'videos'}"), said

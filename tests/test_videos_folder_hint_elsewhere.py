"""When every video of a split is missing, the hint named the folder looked in (``DATA/videos does not exist; put the
videos there ...``) but not the folder of the data root that does hold video files, where the user likely put them
(``DATA/my_clips``). It now names up to three such folders (a bounded look, each path shortened). ``rapdeploy
data-check``, the README's first step on a real dataset, says it too (MSR-VTT's own release unpacks to
``TrainValVideo/`` and ``TestVideo/``), without naming a folder twice."""

from __future__ import annotations

from conftest import all_missing, empty_file, msrvtt_annotations
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.data.datasets import load_split
from rap_deploy.data.video_files import MAX_ENTRIES_SEARCHED_FOR_HINT
from rap_deploy.name_lists import PATH_CHARS
from rap_deploy.retrieval import videos_folder_hint


def test_the_hint_names_a_folder_of_the_data_root_that_holds_video_files(tmp_path):
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "my_clips" / "all" / "clip1.webm")  # a video file one level down
    empty_file(root / "frames" / "frame00001.jpg")  # no video file: not named
    (root / "empty").mkdir()
    split = load_split("msrvtt", root)
    assert split.videos_dir == root / "videos"
    assert videos_folder_hint(split, all_missing(split)) == (
        f": {root / 'videos'} does not exist; put the videos there (<video_id>.<ext>, any sub-folder) or pass the "
        f"--data-root that holds them; {root / 'my_clips'} holds video files: if they are this split's, move them "
        f"into {root / 'videos'}")
    assert videos_folder_hint(split, [{"video_id": "video1", "reason": "undecodable"}]) == ""  # not all missing


def test_the_folder_read_is_not_named_and_at_most_three_are(tmp_path):
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "videos" / "other.mp4")  # read (it holds a video file), but not this split's: not named again
    for name in ("e", "d", "c", "b", "a"):
        empty_file(root / name / f"{name}.mkv")
    split = load_split("msrvtt", root)
    hint = videos_folder_hint(split, all_missing(split))
    assert hint.startswith(f": {root / 'videos'} holds none of them; "), hint
    assert hint.endswith(f"; {root / 'a'}, {root / 'b'}, {root / 'c'} hold video files: if they are this split's, "
                         f"move them into {root / 'videos'}"), hint


def test_the_look_is_bounded_and_paths_are_shortened(tmp_path):
    root = tmp_path
    for _ in range(5):  # a data root whose path is over PATH_CHARS characters
        root = root / ("r" * 250)
    root = msrvtt_annotations(root)
    empty_file(root / "clips" / "a.mp4")
    split = load_split("msrvtt", root)
    hint = videos_folder_hint(split, all_missing(split))
    assert str(root / "clips") not in hint and f"; {str(root)[:PATH_CHARS - 1]}… holds video files" in hint, hint
    frames = tmp_path / "frames"
    for i in range(MAX_ENTRIES_SEARCHED_FOR_HINT):  # no video file among the first entries looked at: not named
        empty_file(frames / "many" / f"frame{i:05d}.jpg")
    empty_file(frames / "many" / "deeper" / "clip.mp4")
    short = msrvtt_annotations(tmp_path / "short")
    (frames / "many").rename(short / "many")
    split = load_split("msrvtt", short)
    assert "holds video files" not in videos_folder_hint(split, all_missing(split))


def test_train_names_the_folder_holding_the_videos(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "workspace"))
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "downloaded" / "video1.mp4")
    result = CliRunner().invoke(app, ["train", "--clip", "rap-micro", "--pretrained", "none", "--dataset", "msrvtt",
                                      "--data-root", str(root), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert f"; {root / 'downloaded'} holds video files: if they are this split's, move them into " \
           f"{root / 'videos'}; run `rapdeploy data-check" in said, said


def _data_check_error_line(root) -> str:
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: 2 of 2 videos unusable: "), result.stderr
    return lines[0]


def test_data_check_names_the_folders_of_the_data_root_that_hold_video_files(tmp_path):
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "TestVideo" / "video9.mp4")
    empty_file(root / "TrainValVideo" / "video0.mp4")
    empty_file(root / "frames" / "video1" / "00001.jpg")  # no video file: not named
    said = _data_check_error_line(root)
    assert said.endswith(
        f": {root / 'videos'} does not exist; put the videos there (<video_id>.<ext>, any sub-folder) or pass the "
        f"--data-root that holds them; {root / 'TestVideo'}, {root / 'TrainValVideo'} hold video files: if they are "
        f"this split's, move them into {root / 'videos'}"), said


def test_data_check_names_an_unread_videos_folder_once(tmp_path):
    """A candidate folder left unread (MSRVTT_Videos/ beside a videos/ that holds other videos) is named by its own
    advice only, not again among the other folders holding video files."""
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "videos" / "other.mp4")
    empty_file(root / "MSRVTT_Videos" / "video7.mp4")
    empty_file(root / "clips" / "video8.mkv")
    said = _data_check_error_line(root)
    assert said.count(str(root / "MSRVTT_Videos")) == 1, said
    assert f"{root / 'MSRVTT_Videos'} also holds videos but is not read" in said, said
    assert said.endswith(f"; {root / 'clips'} holds video files: if they are this split's, move them into "
                         f"{root / 'videos'}"), said

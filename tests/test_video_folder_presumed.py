"""A candidate videos folder too large to list (more than ``MAX_ENTRIES_SEARCHED_FOR_VIDEO`` entries without a video
file among them: thousands of extracted frames) is only presumed to hold videos: it does not win over a later candidate
where a video file was found. Before, ``videos/`` full of frames was read and every video was 'missing', while
``MSRVTT_Videos/`` beside it held them all."""

from __future__ import annotations

import json

from rap_deploy.data.datasets import load_split
from rap_deploy.data.synth_dataset import write_video
from rap_deploy.data.video_files import MAX_ENTRIES_SEARCHED_FOR_VIDEO, holds_video_file, video_file_seen
from tests.test_video_folder_choice import _check, _frames, _msrvtt, runner  # noqa: F401  (runner: a fixture)


def _frames_folder(folder, count: int) -> None:
    """``count`` empty .jpg files in ``folder`` (extracted frames, no video file)."""
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"frame{i:05d}.jpg").touch()


def test_a_folder_found_to_hold_videos_wins_over_one_too_large_to_tell(tmp_path, runner):  # noqa: F811
    root = _msrvtt(tmp_path / "msrvtt", ["video7010"])
    _frames_folder(root / "videos", MAX_ENTRIES_SEARCHED_FOR_VIDEO + 1)
    write_video(root / "MSRVTT_Videos" / "video7010.mp4", _frames(), fps=4)
    assert video_file_seen(root / "videos") is None and holds_video_file(root / "videos")  # presumed, not seen
    assert load_split("msrvtt", root).videos_dir == root / "MSRVTT_Videos"
    result = _check(runner, "msrvtt", root, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["videos_dir"] == str(root / "MSRVTT_Videos") and report["missing"] == []
    assert report["unread_videos_dirs"] == [str(root / "videos")]  # not known to be empty: still named


def test_a_folder_too_large_to_tell_is_still_read_when_no_other_holds_videos(tmp_path):
    root = _msrvtt(tmp_path / "msrvtt", ["video7010"])
    (root / "videos").mkdir()
    _frames_folder(root / "MSRVTT_Videos", MAX_ENTRIES_SEARCHED_FOR_VIDEO + 1)
    assert load_split("msrvtt", root).videos_dir == root / "MSRVTT_Videos"

"""A candidate videos folder that is a link to the one read (``MSRVTT_Videos -> videos``, a common way to give
CLIP4Clip's folder name to one's own) holds the very videos that are read: data-check must not name it as a folder
'not read, though it holds videos' and tell the user to move the videos or rename a folder."""

from __future__ import annotations

import json

from rap_deploy.data.synth_dataset import write_video
from tests.test_video_folder_choice import _check, _frames, _msrvtt, runner  # noqa: F401  (runner: a fixture)


def test_a_link_to_the_folder_read_is_not_named_unread(tmp_path, runner):  # noqa: F811
    root = _msrvtt(tmp_path / "msrvtt", ["video7010"])
    write_video(root / "videos" / "video7010.mp4", _frames(), fps=4)
    (root / "MSRVTT_Videos").symlink_to("videos", target_is_directory=True)
    result = _check(runner, "msrvtt", root, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["videos_dir"] == str(root / "videos") and report["unread_videos_dirs"] == []
    text = _check(runner, "msrvtt", root)
    assert text.exit_code == 0 and "not read" not in text.output, text.output


def test_a_separate_copy_is_still_named(tmp_path, runner):  # noqa: F811
    root = _msrvtt(tmp_path / "msrvtt", ["video7010"])
    for folder in ("videos", "MSRVTT_Videos"):
        write_video(root / folder / "video7010.mp4", _frames(), fps=4)
    report = json.loads(_check(runner, "msrvtt", root, "--json").stdout)
    assert report["unread_videos_dirs"] == [str(root / "MSRVTT_Videos")]

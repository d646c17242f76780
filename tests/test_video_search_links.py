"""A folder link under videos/ (``escape -> /``) made the search for a video in sub-folders walk the whole machine
(18-41 s) and take a file of that name from anywhere on it for a video missing from the data root. Links to the data
root or a folder above it are not entered, links inside a linked folder elsewhere stay in it, the walk is bounded,
and what it left out is named: a video only there is missing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import rap_deploy.data.video_files as video_files
from rap_deploy.cli.app import app
from rap_deploy.data.datasets import load_split
from tests.conftest import empty_file, msrvtt_annotations


def _root(tmp_path):
    root = msrvtt_annotations(tmp_path / "data" / "msrvtt", ids=("video1", "zz_missing"))
    empty_file(root / "videos" / "video1.mp4")
    empty_file(tmp_path / "elsewhere" / "zz_missing.mp4")  # a file of that name outside the data root
    return root


def _paths(root):
    split = load_split("msrvtt", root, "test")
    return {v.video_id: v.path for v in split.videos}, split.not_searched


def test_a_link_to_a_folder_above_the_data_root_is_not_walked(tmp_path):
    root = _root(tmp_path)
    (root / "videos" / "escape").symlink_to(tmp_path, target_is_directory=True)
    paths, not_searched = _paths(root)
    assert paths["zz_missing"] == root / "videos" / "zz_missing.mp4"  # missing, not tmp_path/elsewhere's
    assert not_searched == (f"{root / 'videos' / 'escape'} (a link to {tmp_path.resolve()}, a folder holding the "
                            "data root)",)

    runner = CliRunner()
    result = runner.invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                 "--quiet"], env={"RAPDEPLOY_HOME": str(tmp_path / "ws")})
    assert result.exit_code == 1, result.output
    assert f"not searched for videos: {root / 'videos' / 'escape'}" in result.stdout
    assert f"missing      zz_missing: {root / 'videos' / 'zz_missing.mp4'}" in result.stdout


def test_a_link_out_of_a_linked_folder_elsewhere_is_not_walked(tmp_path):
    root = _root(tmp_path)
    disk2 = tmp_path / "disk2" / "clips"
    empty_file(disk2 / "deeper" / "video7.mp4")
    (root / "videos" / "clips").symlink_to(disk2, target_is_directory=True)  # videos on another disk: searched
    (disk2 / "deeper" / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # out of it: not
    finder = video_files.StemFinder(root / "videos", root)
    assert finder.find("video7", ".mp4") == root / "videos" / "clips" / "deeper" / "video7.mp4"
    assert finder.find("zz_missing", ".mp4") == root / "videos" / "zz_missing.mp4"
    assert finder.not_searched == [f"{root / 'videos' / 'clips' / 'deeper' / 'out'} (a link to "
                                   f"{(tmp_path / 'elsewhere').resolve()}, outside {disk2.resolve()})"]


def test_the_walk_is_bounded_and_says_where_it_stopped(tmp_path, monkeypatch):
    root = _root(tmp_path)
    for i in range(6):
        empty_file(root / "videos" / "a" / f"frame{i}.jpg")
    empty_file(root / "videos" / "b" / "zz_missing.mp4")
    monkeypatch.setattr(video_files, "MAX_ENTRIES_WALKED_FOR_VIDEOS", 8)
    paths, not_searched = _paths(root)
    assert paths["zz_missing"] == root / "videos" / "zz_missing.mp4"
    assert len(not_searched) == 1 and "the search stops after 8 entries" in not_searched[0]
    monkeypatch.setattr(video_files, "MAX_ENTRIES_WALKED_FOR_VIDEOS", 20)
    paths, not_searched = _paths(root)
    assert paths["zz_missing"] == root / "videos" / "b" / "zz_missing.mp4" and not_searched == ()


@pytest.mark.parametrize("layout", ["loop", "twice"])
def test_links_inside_the_data_root_are_still_walked_each_real_folder_once(tmp_path, layout):
    root = _root(tmp_path)
    empty_file(root / "extra" / "zz_missing.mp4")
    (root / "videos" / "more").symlink_to(root / "extra", target_is_directory=True)
    if layout == "loop":
        (root / "extra" / "back").symlink_to(root / "videos", target_is_directory=True)
    else:
        (root / "videos" / "same").symlink_to(root / "extra", target_is_directory=True)
    paths, not_searched = _paths(root)
    assert paths["zz_missing"] == root / "videos" / "more" / "zz_missing.mp4" and not_searched == ()


def test_a_link_from_a_folder_elsewhere_back_into_the_data_root_is_no_escape(tmp_path):
    root = _root(tmp_path)
    disk2 = tmp_path / "disk2" / "clips"
    empty_file(root / "extra" / "zz_missing.mp4")
    disk2.mkdir(parents=True)
    (root / "videos" / "clips").symlink_to(disk2, target_is_directory=True)
    (disk2 / "back").symlink_to(root / "extra", target_is_directory=True)
    finder = video_files.StemFinder(root / "videos", root)
    assert finder.find("zz_missing", ".mp4") == root / "videos" / "clips" / "back" / "zz_missing.mp4"
    assert finder.not_searched == []

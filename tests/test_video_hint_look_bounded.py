"""video_files_near (the 'DATA/x holds video files' hint when every video of a split is missing) bounded the look
per folder (200 entries of the root, 200 in each sub-folder) but not in all: a data root of 200 sub-folders of 200
sub-folders each was 40,201 folders listed (4.3 s on a local disk) for one error message. And a link in the root to
the root itself (``current -> .``) was named as a folder holding the videos, which would be the root's own."""

from __future__ import annotations

import os

from rap_deploy.data.video_files import MAX_ENTRIES_SEARCHED_FOR_HINT, video_files_near


def _file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_the_look_over_all_sub_folders_is_bounded(tmp_path, listed_folders):
    root = tmp_path / "data"
    for i in range(60):  # 60 folders of 60 empty sub-folders each: 3,661 folders to list in full
        for j in range(60):
            (root / f"d{i:02d}" / f"s{j:02d}").mkdir(parents=True)
    _file(root / "a_clips" / "video1.mp4")  # looked at first (by name): named
    _file(root / "zz_clips" / "video2.mp4")  # after the budget is spent: not looked at
    listed = listed_folders
    assert video_files_near(root, root / "videos").folders == [root / "a_clips"]
    assert sum(listed.values()) <= 1 + 10 * MAX_ENTRIES_SEARCHED_FOR_HINT, sum(listed.values())
    assert all(count == 1 for count in listed.values()), listed


def test_a_link_to_the_root_or_above_it_is_not_named(tmp_path):
    root = tmp_path / "data"
    _file(root / "video1.mp4")  # the videos loose in the root, beside its annotation files
    _file(tmp_path / "elsewhere" / "video2.mp4")
    os.symlink(".", root / "current")
    os.symlink("..", root / "up")
    os.symlink(tmp_path / "elsewhere", root / "linked")
    os.symlink("loop", root / "loop")  # a link to itself: neither a folder nor an error
    assert video_files_near(root, root / "videos").folders == [root / "linked"]


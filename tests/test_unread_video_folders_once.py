"""``unread_video_folders`` lists each candidate videos folder once: it chose the folder read (which looks at every
candidate) and then looked at the other candidates again to tell which hold videos, so each was listed twice (a
bounded look, but up to 2,000 entries of a slow disk each time)."""

from __future__ import annotations

import os
from collections import Counter

from rap_deploy.data import video_files


def test_each_candidate_folder_is_listed_once(tmp_path, listed_folders):
    root = tmp_path / "msvd"
    for name, files in (("videos", ["a.mp4"]), ("MSVD_Videos", ["notes.txt"]), ("YouTubeClips", ["b.avi"])):
        (root / name).mkdir(parents=True)
        for file in files:
            (root / name / file).write_bytes(b"")
    listed = listed_folders
    assert video_files.unread_video_folders(root, "msvd") == [root / "YouTubeClips"]
    assert listed == Counter({str(root / name): 1 for name in ("videos", "MSVD_Videos", "YouTubeClips")})


def test_results_are_unchanged_for_a_presumed_folder_a_link_and_no_folder(tmp_path, listed_folders):
    root = tmp_path / "msrvtt"
    (root / "videos").mkdir(parents=True)
    for i in range(video_files.MAX_ENTRIES_SEARCHED_FOR_VIDEO + 1):  # too many to tell: presumed, read, not unread
        (root / "videos" / f"frame{i}.jpg").write_bytes(b"")
    (root / "MSRVTT_Videos").mkdir()
    (root / "MSRVTT_Videos" / "video1.mp4").write_bytes(b"")  # seen: it wins, and videos/ is named unread
    listed = listed_folders
    assert video_files.videos_folder(root, "msrvtt") == root / "MSRVTT_Videos"
    assert video_files.unread_video_folders(root, "msrvtt") == [root / "videos"]
    assert listed == Counter({str(root / "videos"): 2, str(root / "MSRVTT_Videos"): 2})  # one call each, two calls
    os.symlink(root / "MSRVTT_Videos", root / "linked")
    (root / "videos").rename(root / "frames")
    (root / "linked").rename(root / "videos")  # videos -> MSRVTT_Videos: the same folder, read, not named
    assert video_files.unread_video_folders(root, "msrvtt") == []
    assert video_files.unread_video_folders(tmp_path / "absent", "msrvtt") == []

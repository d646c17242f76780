"""The two bounds on folder listings in rap_deploy.data were both named MAX_ENTRIES_LOOKED_AT (200 in folder_layout,
2000 in video_files): one name, two values, two different looks. Each is now named for what it bounds, and each
bounds that look."""

from __future__ import annotations

import re

import pytest

from rap_deploy.data import folder_layout, video_files
from rap_deploy.errors import UsageError


def test_the_look_for_a_video_file_stops_after_max_entries_searched_for_video(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(video_files.MAX_ENTRIES_SEARCHED_FOR_VIDEO):
        (frames / f"frame{i:05d}.jpg").write_bytes(b"")
    assert video_files.video_file_seen(frames) is False  # every entry looked at: none is a video file
    (frames / "one_more.jpg").write_bytes(b"")
    assert video_files.video_file_seen(frames) is None  # one over the bound: too many to tell


def test_the_look_for_a_dataset_folder_stops_after_max_entries_searched_for_dataset(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        (root / name / "MSRVTT_data.json").write_text("{}")
    with pytest.raises(UsageError, match=re.escape(f"{root / 'a'}, {root / 'b'}, {root / 'c'} hold it")):
        folder_layout.check_dataset_layout(root, "msrvtt")
    monkeypatch.setattr(folder_layout, "MAX_ENTRIES_SEARCHED_FOR_DATASET", 2)
    with pytest.raises(UsageError) as raised:
        folder_layout.check_dataset_layout(root, "msrvtt")
    assert sum(str(root / name) in str(raised.value) for name in ("a", "b", "c")) == 2  # the first two listed

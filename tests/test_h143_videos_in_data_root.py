"""A user who unpacked a split's videos straight into the --data-root (``DATA/video0.mp4`` beside
``MSRVTT_data.json``, a common mistake) had every video missing from ``DATA/videos`` and a hint that named only
sub-folders of the root holding video files (``video_files_near``'s ``folders``), never the root itself. The hint
now says ``DATA itself holds video files: if they are this split's, move them into DATA/videos``, read from the same
bounded listing of the root that finds its sub-folders (each folder listed once). ``rapdeploy data-check`` and ``train``
(every caller of ``videos_folder_hint``/``video_folders_elsewhere``) say it too."""

from __future__ import annotations

import os

from conftest import all_missing, empty_file, msrvtt_annotations
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.data import video_files
from rap_deploy.data.datasets import load_split
from rap_deploy.data.video_files import MAX_ENTRIES_SEARCHED_FOR_HINT
from rap_deploy.name_lists import PATH_CHARS
from rap_deploy.retrieval import videos_folder_hint


def _root_hint(root) -> str:
    return f"; {root} itself holds video files: if they are this split's, move them into {root / 'videos'}"


def test_the_hint_names_the_data_root_holding_the_videos(tmp_path):
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "video1.mp4")
    empty_file(root / "video2.mp4")
    split = load_split("msrvtt", root)
    assert split.videos_dir == root / "videos" and split.data_root == root
    assert videos_folder_hint(split, all_missing(split)) == (
        f": {root / 'videos'} does not exist; put the videos there (<video_id>.<ext>, any sub-folder) or pass the "
        f"--data-root that holds them{_root_hint(root)}")


def test_the_root_comes_first_beside_its_sub_folders_and_a_root_without_videos_is_not_named(tmp_path):
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "video1.MKV")  # any case of a video extension
    empty_file(root / "clips" / "video2.mp4")
    split = load_split("msrvtt", root)
    assert videos_folder_hint(split, all_missing(split)).endswith(
        f"; {root} itself, {root / 'clips'} hold video files: if they are this split's, move them into "
        f"{root / 'videos'}")
    plain = msrvtt_annotations(tmp_path / "plain")
    empty_file(plain / "notes.txt")
    (plain / "folder.mp4").mkdir()  # a folder named like a video: not a video file
    split = load_split("msrvtt", plain)
    assert "itself" not in videos_folder_hint(split, all_missing(split))


def test_the_root_path_is_shortened(tmp_path):
    root = tmp_path
    for _ in range(5):  # a data root whose path is over PATH_CHARS characters
        root = root / ("r" * 250)
    root = msrvtt_annotations(root)
    empty_file(root / "video1.mp4")
    split = load_split("msrvtt", root)
    hint = videos_folder_hint(split, all_missing(split))
    assert f"{root} itself" not in hint and f"; {str(root)[:PATH_CHARS - 1]}… itself holds video files" in hint, hint


def test_the_look_at_the_root_is_one_bounded_listing(tmp_path, monkeypatch):
    """The root is listed once, at most MAX_ENTRIES_SEARCHED_FOR_HINT of its entries read, each sub-folder listed
    once (the root's own look does not descend into them again)."""
    root = tmp_path / "data"
    for i in range(3 * MAX_ENTRIES_SEARCHED_FOR_HINT):
        empty_file(root / f"note{i:04d}.txt")
    for name in ("a", "b"):
        empty_file(root / name / "clip.mp4")
    listed: dict[str, int] = {}
    read: dict[str, int] = {}
    real = os.scandir

    class Counted:
        def __init__(self, path):
            self.path, self.entries = os.fspath(path), real(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.entries.close()

        def __iter__(self):
            for entry in self.entries:
                read[self.path] = read.get(self.path, 0) + 1
                yield entry

    def scandir(path):
        listed[os.fspath(path)] = listed.get(os.fspath(path), 0) + 1
        return Counted(path)

    monkeypatch.setattr(video_files.os, "scandir", scandir)
    near = video_files.video_files_near(root, root / "videos")
    assert not near.in_root  # no video file among the root entries read
    assert read[str(root)] <= MAX_ENTRIES_SEARCHED_FOR_HINT, read
    assert all(count == 1 for count in listed.values()), listed
    assert set(listed) <= {str(root), str(root / "a"), str(root / "b")}, listed


def test_the_videos_folder_itself_is_not_named_as_the_root(tmp_path):
    folder = tmp_path / "videos"
    empty_file(folder / "other.mp4")
    assert video_files.video_files_near(folder, folder) == (False, [])
    assert video_files.video_files_near(tmp_path / "absent", folder) == (False, [])


def test_data_check_names_the_data_root_holding_the_videos(tmp_path):
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "video1.mp4")
    empty_file(root / "video2.webm")
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: 2 of 2 videos unusable: "), result.stderr
    assert lines[0].endswith(f"or pass the --data-root that holds them{_root_hint(root)}"), lines[0]


def test_train_names_the_data_root_holding_the_videos(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "workspace"))
    root = msrvtt_annotations(tmp_path / "msrvtt")
    empty_file(root / "video1.mp4")
    result = CliRunner().invoke(app, ["train", "--clip", "rap-micro", "--pretrained", "none", "--dataset", "msrvtt",
                                      "--data-root", str(root), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())
    assert f"{_root_hint(root)}; run `rapdeploy data-check" in said, said

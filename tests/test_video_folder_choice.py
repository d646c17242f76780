"""Which of a dataset's candidate video folders is read (rap_deploy/data/video_files.py ``videos_folder``): an empty
one never wins over one with videos, MSVD's official ``YouTubeClips/`` is a candidate, the choice is named by
data-check when several hold videos, and telling a folder's emptiness looks at a bounded number of entries."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.data.datasets import load_split
from rap_deploy.data.synth_dataset import write_video

# An MSVD id as the official archive names its clip (YouTube id, start and end second): it starts with '-'
MSVD_ID = "-4wsuPCjDBc_5_15"


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "workspace"))
    monkeypatch.delenv("RAPDEPLOY_DATA", raising=False)
    return CliRunner()


def _frames() -> np.ndarray:
    """Eight 32 px frames of a moving square (2 s at 4 fps)."""
    frames = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    for t in range(8):
        frames[t, 8:16, 2 * t:2 * t + 8] = 255
    return frames


def _write_avi(path, frames: np.ndarray, fps: int = 4) -> None:
    """``frames`` as an MPEG-4 Part 2 .avi, the container and codec of MSVD's YouTubeClips."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _msvd(root, ids: list[str]):
    root.mkdir(parents=True, exist_ok=True)
    (root / "test_list.txt").write_text("".join(f"{vid}\n" for vid in ids))
    (root / "raw-captions.pkl").write_bytes(pickle.dumps({vid: [["a", "square", "moves"]] for vid in ids}))
    return root


def _msrvtt(root, ids: list[str]):
    root.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"ret{i},msr{i},{vid},a square moves\n" for i, vid in enumerate(ids))
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + rows)
    return root


def _check(runner, dataset: str, root, *extra: str):
    return runner.invoke(app, ["data-check", "--dataset", dataset, "--data-root", str(root), "--image-size", "32",
                               "--frames", "2", "--no-cache", "--quiet", *extra])


def test_an_empty_videos_folder_does_not_hide_the_clip4clip_folder(tmp_path, runner):
    """A user made videos/, then downloaded into MSRVTT_Videos/ (CLIP4Clip's name): videos/ existing was enough to
    be read, every video was 'missing' and the hint said videos/ 'holds none of them'. The folder with videos is read;
    videos/ holding only empty sub-folders counts as empty too."""
    root = _msrvtt(tmp_path / "msrvtt", ["video7010", "video7011"])
    (root / "videos" / "all").mkdir(parents=True)
    (root / "videos" / "notes.txt").write_text("to do: download")
    for vid in ("video7010", "video7011"):
        write_video(root / "MSRVTT_Videos" / f"{vid}.mp4", _frames(), fps=4)
    assert load_split("msrvtt", root).videos_dir == root / "MSRVTT_Videos"
    result = _check(runner, "msrvtt", root)
    assert result.exit_code == 0, result.output
    assert "2 videos, 2 captions, 2 frames each, 0 missing, 0 undecodable" in result.output
    assert "not read" not in result.output  # one folder holds videos: nothing to say


def test_msvd_official_youtubeclips_folder_is_read(tmp_path, runner):
    """MSVD's official archive extracts to YouTubeClips/<id>.avi; that folder was not a candidate, so every video of
    a folder laid out that way was 'missing'. data-check through the CLI decodes the .avi files found there."""
    root = _msvd(tmp_path / "msvd", [MSVD_ID, "vid2_0_4"])
    (root / "videos").mkdir()  # empty, as in the first defect
    for vid in (MSVD_ID, "vid2_0_4"):
        _write_avi(root / "YouTubeClips" / f"{vid}.avi", _frames())
    split = load_split("msvd", root, "test")
    assert [v.path for v in split.videos] == [root / "YouTubeClips" / f"{MSVD_ID}.avi",
                                              root / "YouTubeClips" / "vid2_0_4.avi"]
    result = _check(runner, "msvd", root, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["videos_dir"] == str(root / "YouTubeClips") and report["unread_videos_dirs"] == []
    assert report["missing"] == [] and report["per_video"][MSVD_ID]["frames"] == 2


def test_two_folders_with_videos_keep_the_order_and_data_check_names_the_unread_one(tmp_path, runner):
    """When videos/ and YouTubeClips/ both hold videos, videos/ is read alone (never a mix of the two copies) and
    data-check says so, in its text, its --json and the all-missing message."""
    root = _msvd(tmp_path / "msvd", [MSVD_ID])
    _write_avi(root / "videos" / f"{MSVD_ID}.avi", _frames())
    _write_avi(root / "YouTubeClips" / f"{MSVD_ID}.avi", _frames())
    assert load_split("msvd", root, "test").videos[0].path == root / "videos" / f"{MSVD_ID}.avi"
    result = _check(runner, "msvd", root)
    assert result.exit_code == 0, result.output
    assert (f"videos read from {root / 'videos'}; not read, though they hold videos: {root / 'YouTubeClips'}"
            in result.output)
    report = json.loads(_check(runner, "msvd", root, "--json").stdout)
    assert report["unread_videos_dirs"] == [str(root / "YouTubeClips")]

    (root / "videos" / f"{MSVD_ID}.avi").rename(root / "videos" / "another_dataset.avi")
    result = _check(runner, "msvd", root)
    assert result.exit_code == 1
    assert f"{root / 'videos'} holds none of them" in result.output
    assert (f"{root / 'YouTubeClips'} also holds videos but is not read (videos/ comes before it: rename videos/ to "
            "read it instead)") in " ".join(result.output.split())


class _CountingScandir:
    """``os.scandir`` that counts the entries taken from it (the real one kept: patching ``os`` patches it for all)."""

    def __init__(self) -> None:
        self.taken = 0
        self.scandir = os.scandir

    def __call__(self, path):
        counter = self

        class Listing:
            def __enter__(self):
                self.inner = counter.scandir(path)
                return self

            def __exit__(self, *exc):
                self.inner.close()

            def __iter__(self):
                for entry in self.inner:
                    counter.taken += 1
                    yield entry

        return Listing()


def test_telling_a_folder_holds_videos_stops_at_the_first_and_at_a_bound(tmp_path, monkeypatch):
    """A folder of 100,000 videos must not be listed in full to find it is not empty: the look stops at the first
    video file, and after a bounded number of entries without one."""
    from rap_deploy.data import video_files

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(300):
        (videos / f"video{i}.mp4").write_bytes(b"")
    others = tmp_path / "others"
    (others / "deeper").mkdir(parents=True)
    for i in range(300):
        (others / f"frame{i}.jpg").write_bytes(b"")
    (others / "deeper" / "clip.webm").write_bytes(b"")
    counting = _CountingScandir()
    monkeypatch.setattr(video_files.os, "scandir", counting)
    assert video_files.holds_video_file(videos) and counting.taken == 1
    counting.taken = 0
    assert video_files.holds_video_file(others, limit=20) and counting.taken == 21  # too many to tell: kept
    assert video_files.holds_video_file(others)  # found in the sub-folder, under the default bound
    (others / "deeper" / "clip.webm").unlink()
    assert not video_files.holds_video_file(others) and not video_files.holds_video_file(tmp_path / "absent")

"""data-check loaded the split (whose videos folder is chosen by looking at every candidate folder) and then asked
unread_video_folders, which chose again: each candidate folder was looked at twice per data-check, up to 2,000
entries of a possibly slow disk each time. The split now keeps the candidates left unread from its one look, and
data-check reports them (text and --json) as before."""

from __future__ import annotations

import json
import pickle

from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.data.datasets import load_split


def _msvd(root):
    """An MSVD folder whose test video is in videos/, with MSVD_Videos/ and YouTubeClips/ holding other copies."""
    root.mkdir()
    for name in ("train", "val", "test"):
        (root / f"{name}_list.txt").write_text("clip1\n")
    (root / "raw-captions.pkl").write_bytes(pickle.dumps({"clip1": [["a", "cat"]]}))
    for folder in ("videos", "MSVD_Videos", "YouTubeClips"):
        (root / folder).mkdir()
        (root / folder / "clip1.avi").write_bytes(b"")  # present but undecodable: data-check names it, exit 1
    return root


def test_data_check_looks_at_each_unread_candidate_once(tmp_path, listed_folders):
    root = _msvd(tmp_path / "msvd")
    listed = listed_folders
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msvd", "--data-root", str(root), "--no-cache",
                                      "--quiet", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["videos_dir"] == str(root / "videos")
    assert report["unread_videos_dirs"] == [str(root / "MSVD_Videos"), str(root / "YouTubeClips")]
    assert listed[str(root / "MSVD_Videos")] == 1 and listed[str(root / "YouTubeClips")] == 1, listed


def test_the_split_keeps_the_unread_candidates(tmp_path):
    root = _msvd(tmp_path / "msvd")
    split = load_split("msvd", root)
    assert split.videos_dir == root / "videos"
    assert split.unread_videos_dirs == (root / "MSVD_Videos", root / "YouTubeClips")
    assert split.subset([0]).unread_videos_dirs == split.unread_videos_dirs
    (root / "MSVD_Videos" / "clip1.avi").unlink()
    (root / "YouTubeClips" / "clip1.avi").unlink()
    assert load_split("msvd", root).unread_videos_dirs == ()

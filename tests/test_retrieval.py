"""rap_deploy.retrieval against an encoder that answers with the wrong shape (an engine or a remote server).

numpy broadcast a one-row answer into every row of the batch (every video the same embedding, every query the same
scores) and refused other shapes with a traceback; each is now a failed check naming what answered.
"""

from __future__ import annotations

import numpy as np
import pytest

from rap_deploy import retrieval
from rap_deploy.config import RAPConfig
from rap_deploy.errors import CheckFailedError

CONFIG = RAPConfig(frames=2, context_length=8, asa_dim=8, asa_heads=2)
D, T, P = 4, 2, 3


class OneRowEncoder:
    """Answers every call with one row (``rows=None``: as many rows as asked, the correct answer)."""

    config = CONFIG

    def __init__(self, rows: int | None = 1) -> None:
        self.rows = rows

    def _n(self, asked: int) -> int:
        return asked if self.rows is None else self.rows

    def encode_text(self, input_ids: np.ndarray, eot: np.ndarray) -> np.ndarray:
        return np.ones((self._n(len(input_ids)), D), np.float32)

    def encode_video(self, frames: np.ndarray, frame_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        n = self._n(len(frames))
        return (np.ones((n, D)), np.ones((n, T, D)), np.ones((n, T, P, D)), np.ones((n, T, P, 24)))

    def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
        return np.ones((self._n(len(text_emb)), len(rerank[0])), np.float32)


def _index(videos: int = 3) -> retrieval.VideoIndex:
    rng = np.random.default_rng(0)
    return retrieval.VideoIndex([f"v{i}" for i in range(videos)], rng.random((videos, D), np.float32),
                                rng.random((videos, T, D), np.float32), np.ones((videos, T, P, D), np.float16),
                                np.ones((videos, T, P, 24), np.float32))


def test_a_one_row_similarity_answer_is_a_failed_check():
    text = np.ones((3, D), np.float32)
    assert retrieval.full_similarity(OneRowEncoder(None), text, _index(), progress=False).shape == (3, 3)
    with pytest.raises(CheckFailedError, match=r"ASA similarity returned shape \[1, 3\] for \[3, 3\]"):
        retrieval.full_similarity(OneRowEncoder(), text, _index(), progress=False)


def test_a_one_row_text_answer_is_a_failed_check():
    assert retrieval.encode_texts(OneRowEncoder(None), ["a", "b", "c"]).shape == (3, D)
    with pytest.raises(CheckFailedError, match=r"text encoder returned shape \[1, 4\] for \[3\]"):
        retrieval.encode_texts(OneRowEncoder(), ["a", "b", "c"])


def test_a_short_re_rank_answer_is_a_failed_check():
    class OneScore(OneRowEncoder):
        def asa_similarity(self, text_emb: np.ndarray, *rerank: np.ndarray) -> np.ndarray:
            return np.ones((1, 1), np.float32)  # one score for every candidate

    text = np.ones((2, D), np.float32)
    assert retrieval.two_stage_similarity(OneRowEncoder(None), text, _index(), top_m=2, progress=False).shape == (2, 3)
    with pytest.raises(CheckFailedError, match=r"ASA re-rank returned shape \[1, 1\] for \[1, 2\]"):
        retrieval.two_stage_similarity(OneScore(), text, _index(), top_m=2, progress=False)


def test_a_one_row_video_answer_is_a_failed_check(monkeypatch):
    class Split:
        split, num_videos = "test", 2
        videos = [type("Entry", (), {"video_id": f"v{i}"})() for i in range(2)]

    monkeypatch.setattr(retrieval, "load_video_batch",
                        lambda split, idx, cache, config: (np.zeros((len(idx), 1)), np.ones((len(idx), T))))
    assert len(retrieval.encode_videos(OneRowEncoder(None), Split(), None, progress=False)) == 2
    with pytest.raises(CheckFailedError, match=r"video encoder's video_emb returned shape \[1, 4\] for \[2\]"):
        retrieval.encode_videos(OneRowEncoder(), Split(), None, progress=False)


def _caption_split(captioned: list[int], videos: int = 3):
    from pathlib import Path

    from rap_deploy.config import FrameSamplingConfig
    from rap_deploy.data.datasets import RetrievalSplit, VideoEntry

    return RetrievalSplit("msvd", "test", [VideoEntry(f"v{i}", Path(f"v{i}.avi")) for i in range(videos)],
                          [f"caption of v{v}" for v in captioned], np.asarray(captioned, np.int64),
                          FrameSamplingConfig(), 8)


@pytest.mark.parametrize(("captioned", "undecodable", "message"), [
    ([], set(), "give none of its 3 videos a caption"),
    ([0, 0], {"v0.avi"}, r"every captioned video of the test split was skipped \(v0: broken\)")])
def test_a_split_with_no_caption_of_a_decodable_video_is_a_failed_check(monkeypatch, captioned, undecodable, message):
    """A split whose decodable videos have no caption (an MSVD list of empty caption lists, or every captioned video
    undecodable) reached the text encoder with nothing to encode: numpy's "need at least one array to concatenate"
    traceback from evaluate, and from evaluate_in_galleries before its own check. It is a failed check naming why."""
    from rap_deploy.data.video import VideoDecodeError
    from rap_deploy.gallery_eval import evaluate_in_galleries

    class Cache:
        def get(self, path, *args):
            if str(path) in undecodable:
                raise VideoDecodeError(path, "broken")

    monkeypatch.setattr(retrieval, "load_video_batch",
                        lambda split, idx, cache, config: (np.zeros((len(idx), 1)), np.ones((len(idx), T))))
    for run in (lambda s: retrieval.evaluate(OneRowEncoder(None), s, Cache(), progress=False),
                lambda s: evaluate_in_galleries(OneRowEncoder(None), s, Cache(), 3, progress=False)):
        with pytest.raises(CheckFailedError, match=message):
            run(_caption_split(captioned))
    assert retrieval.evaluate(OneRowEncoder(None), _caption_split([1, 1, 2]), Cache(), top_m=2,
                              progress=False)["captions"] == 3


@pytest.mark.parametrize(("available", "message"), [
    (100, "scoring 3 captions against 3 videos needs"),
    (1000, r"the video index of 3 videos \(0\.00 MiB each\) needs")])
def test_an_evaluation_too_large_for_memory_is_refused_before_it_is_allocated(monkeypatch, available, message):
    """evaluate sized nothing: np.empty reserved the whole split's index untouched and the similarity matrices came
    after it, so a split too large for memory (ViT-B/32 keeps 1.5 MB a video; 40 bytes a text-video pair are scored)
    failed hours in, killed mid-encoding. Both are checked first (memory patched here: 3 x 3 pairs need 360 bytes,
    the index 2,016)."""
    import types

    import psutil

    from rap_deploy.errors import UsageError

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=available))
    monkeypatch.setattr(retrieval, "load_video_batch",
                        lambda split, idx, cache, config: (np.zeros((len(idx), 1)), np.ones((len(idx), T))))

    class Cache:
        def get(self, *args):
            return None

    with pytest.raises(UsageError, match=message):
        retrieval.evaluate(OneRowEncoder(None), _caption_split([0, 1, 2]), Cache(), top_m=2, progress=False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=10_000))
    assert retrieval.evaluate(OneRowEncoder(None), _caption_split([0, 1, 2]), Cache(), top_m=2,
                              progress=False)["videos"] == 3


def test_a_re_rank_depth_below_one_is_refused():
    """top_m 0 re-ranked nothing (two-stage silently equal to stage 1) and -1 re-ranked every video but one
    (numpy's negative slice); both are refused."""
    from rap_deploy.errors import UsageError

    text = np.ones((2, D), np.float32)
    for top_m in (0, -1, 1.5, True):
        with pytest.raises(UsageError, match="top_m >= 1"):
            retrieval.two_stage_similarity(OneRowEncoder(None), text, _index(), top_m=top_m, progress=False)
    assert retrieval.two_stage_similarity(OneRowEncoder(None), text, _index(), top_m=1, progress=False).shape == (2, 3)


def test_load_video_files_refuses_a_sampling_rate_no_video_has():
    """fps 0 or NaN reached every file as its own 'bad segment' (the first file was blamed) and fps 1e9 sized the
    sampling times by it (80 GB for a 10 s clip); the rate is checked before any file is opened."""
    for fps in (0, -1.0, float("nan"), float("inf"), 1e9, True, "1"):
        with pytest.raises(ValueError, match=r"fps must be a number in \(0, 1000\]"):
            retrieval.load_video_files(["missing.mp4"], CONFIG, fps=fps)

"""The decoded-frame cache: round trip, keys, corrupt-entry rebuild, no-cache mode."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
from rap_deploy.data.cache import FrameCache, default_cache_dir
from rap_deploy.data.synth_dataset import write_video
from rap_deploy.data.video import VideoDecodeError

SAMPLING = FrameSamplingConfig(max_frames=6)
PRE = PreprocessConfig(image_size=16)


@pytest.fixture
def video_file(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(20, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    write_video(path, frames, 4)
    return path


def _entries(root):
    return sorted(root.rglob("*.npz"))


def test_round_trip_decodes_once(tmp_path, video_file):
    cache = FrameCache(tmp_path / "cache")
    first = cache.get(video_file, SAMPLING, PRE)
    second = cache.get(video_file, SAMPLING, PRE)
    assert (cache.misses, cache.hits) == (1, 1)
    assert len(_entries(tmp_path / "cache")) == 1
    np.testing.assert_array_equal(first.frames, second.frames)
    np.testing.assert_array_equal(first.mask, second.mask)
    assert second.frames.dtype == np.uint8 and second.frames.shape == (6, 16, 16, 3)
    assert second.seconds == pytest.approx(5.0) and second.num_frames == 5
    # a new FrameCache on the same folder (another process) reads it back too
    other = FrameCache(tmp_path / "cache")
    np.testing.assert_array_equal(other.get(video_file, SAMPLING, PRE).frames, first.frames)
    assert other.hits == 1 and other.misses == 0


def test_key_covers_content_and_settings(tmp_path, video_file):
    cache = FrameCache(tmp_path / "cache")
    base = cache.key(video_file, SAMPLING, PRE)
    assert cache.key(video_file, FrameSamplingConfig(max_frames=7), PRE) != base
    assert cache.key(video_file, SAMPLING, PreprocessConfig(image_size=24)) != base
    assert cache.key(video_file, SAMPLING, PRE, start=1.0) != base
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(video_file.read_bytes())
    assert cache.key(copy, SAMPLING, PRE) == base  # keyed by content, not by name
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(1, 1))
    assert cache.key(copy, SAMPLING, PRE) != base


@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong_shape", "no_frames", "gap"])
def test_corrupt_entry_is_rebuilt(tmp_path, video_file, damage):
    cache = FrameCache(tmp_path / "cache")
    good = cache.get(video_file, SAMPLING, PRE)
    (entry,) = _entries(tmp_path / "cache")
    if damage == "garbage":
        entry.write_bytes(b"not an npz")
    elif damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:100])
    elif damage == "wrong_shape":
        with open(entry, "wb") as fh:
            np.savez(fh, frames=np.zeros((2, 2, 2, 3), np.uint8), mask=np.ones(2, bool), seconds=1.0, num_frames=2)
    else:  # right shapes and dtypes, but a mask the decoder never writes: no real frame, or one after padding
        mask = np.zeros_like(good.mask)
        if damage == "gap":
            mask[-1] = True
        with open(entry, "wb") as fh:
            np.savez(fh, frames=good.frames, mask=mask, seconds=good.seconds, num_frames=int(mask.sum()))
    again = cache.get(video_file, SAMPLING, PRE)
    assert cache.rebuilt == 1
    np.testing.assert_array_equal(again.frames, good.frames)
    fresh = FrameCache(tmp_path / "cache")
    fresh.get(video_file, SAMPLING, PRE)
    assert fresh.hits == 1 and fresh.rebuilt == 0


def test_no_cache_and_failures_not_stored(tmp_path, video_file, monkeypatch):
    plain = FrameCache(None)
    assert plain.get(video_file, SAMPLING, PRE).num_frames == 5
    assert plain.misses == 1
    cache = FrameCache(tmp_path / "cache")
    with pytest.raises(VideoDecodeError, match="missing"):
        cache.get(tmp_path / "absent.mp4", SAMPLING, PRE)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(VideoDecodeError, match="cannot decode"):
        cache.get(tmp_path / "bad.mp4", SAMPLING, PRE)
    assert _entries(tmp_path / "cache") == []
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "ws"))
    assert default_cache_dir() == (tmp_path / "ws" / "cache" / "frames").resolve()
    assert FrameCache.default().root == default_cache_dir()


def test_a_video_that_cannot_be_read_is_undecodable_with_the_cache_too(tmp_path, video_file, monkeypatch):
    """A read error while hashing the file (a bad disk sector, a file removed meanwhile) is that video's failure,
    as without the cache: data-check, training and indexing report it by name instead of stopping at it."""
    import errno

    from rap_deploy.data import cache as cache_module

    def failing_read(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(cache_module, "sha256_file", failing_read)
    cache = FrameCache(tmp_path / "cache")
    with pytest.raises(VideoDecodeError, match="cannot read: Input/output error") as info:
        cache.get(video_file, SAMPLING, PRE)
    assert info.value.path == video_file
    monkeypatch.setattr(cache_module, "file_digest", lambda path: (_ for _ in ()).throw(FileNotFoundError(path)))
    with pytest.raises(VideoDecodeError, match="missing"):
        cache.get(video_file, SAMPLING, PRE)
    assert _entries(tmp_path / "cache") == []


def test_a_file_replaced_under_its_size_and_mtime_is_hashed_again(tmp_path, video_file):
    """The content hash was memoised on (path, size, mtime): a file replaced by one of the same size with the old
    modification time kept (tar, cp -p) kept the old hash in a running process (serve, index), so the cache served
    the old file's frames. The inode and change time are part of the memo now."""
    from rap_deploy.atomic import sha256_file
    from rap_deploy.data.cache import file_digest

    old = file_digest(video_file)
    st = os.stat(video_file)
    other = bytearray(video_file.read_bytes())
    other[-1] ^= 0xFF
    replacement = tmp_path / "new.mp4"
    replacement.write_bytes(bytes(other))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, video_file)
    assert os.stat(video_file).st_size == st.st_size and os.stat(video_file).st_mtime_ns == st.st_mtime_ns
    assert file_digest(video_file) == sha256_file(video_file) != old


def test_a_video_changed_while_decoded_is_not_stored_under_its_old_content(tmp_path, video_file, monkeypatch):
    """The key hashes the file, then the file is decoded: a file rewritten in between (re-encoded in place) had the
    new content's frames stored under the old content's key, served again once that content came back."""
    from rap_deploy.data import cache as cache_module

    original = video_file.read_bytes()
    other = tmp_path / "other.mp4"
    write_video(other, np.full((12, 32, 32, 3), 200, dtype=np.uint8), 4)
    real_decode = cache_module.decode_video

    def decode_after_rewrite(path, *args):
        video_file.write_bytes(other.read_bytes())  # rewritten after it was hashed, before it is read
        return real_decode(path, *args)

    monkeypatch.setattr(cache_module, "decode_video", decode_after_rewrite)
    FrameCache(tmp_path / "cache").get(video_file, SAMPLING, PRE)
    monkeypatch.setattr(cache_module, "decode_video", real_decode)
    video_file.write_bytes(original)
    cache = FrameCache(tmp_path / "cache")
    np.testing.assert_array_equal(cache.get(video_file, SAMPLING, PRE).frames,
                                  FrameCache(None).get(video_file, SAMPLING, PRE).frames)  # not the grey video's
    assert (cache.hits, cache.misses) == (0, 1)

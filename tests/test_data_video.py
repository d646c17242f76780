"""Frame sampling and decoding: indices at 1 fps for several frame rates and durations, masks, decode errors."""

from __future__ import annotations

import numpy as np
import pytest

from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
from rap_deploy.data.synth_dataset import write_video
from rap_deploy.data.video import VideoDecodeError, decode_video, sample_frame_indices

S12 = FrameSamplingConfig(max_frames=12, fps=1.0)


@pytest.mark.parametrize(
    ("num_frames", "fps", "expected"),
    [
        (360, 30.0, list(range(0, 360, 30))),  # 12 s at 30 fps: exactly 12 seconds -> 12 frames
        (48, 4.0, list(range(0, 48, 4))),  # the synthetic videos
        (120, 24.0, [0, 24, 48, 72, 96]),  # 5 s: 5 frames, padded later
        (40, 10.0, [0, 10, 20, 30]),
        (10, 10.0, [0]),  # exactly 1 s
    ],
)
def test_indices_one_per_second(num_frames, fps, expected):
    idx, valid = sample_frame_indices(num_frames, fps, S12)
    assert idx.tolist() == expected
    assert valid == len(expected)


def test_indices_more_seconds_than_frames_uses_linspace():
    # 20 s at 25 fps: 20 one-per-second frames, 12 of them picked uniformly.
    idx, valid = sample_frame_indices(500, 25.0, S12)
    picks = [0, 1, 3, 5, 6, 8, 10, 12, 13, 15, 17, 19]  # np.linspace(0, 19, 12).astype(int)
    assert idx.tolist() == [25 * p for p in picks]
    assert valid == 12


def test_indices_fractional_frame_rate():
    # 300 frames at 29.97 fps last 10.01 s, so t = 0..10 s are all inside the video.
    idx, valid = sample_frame_indices(300, 29.97, S12)
    assert idx.tolist() == [int(np.floor(k * 29.97 + 1e-6)) for k in range(11)]
    assert valid == 11


def test_indices_other_sampling_rates_and_segments():
    idx, _ = sample_frame_indices(40, 10.0, FrameSamplingConfig(max_frames=100, fps=2.0))
    assert idx.tolist() == list(range(0, 40, 5))
    # start/end in seconds, end inclusive (CLIP4Clip)
    idx, valid = sample_frame_indices(600, 30.0, S12, start=5, end=8)
    assert idx.tolist() == [150, 180, 210, 240] and valid == 4
    # a reversed segment is swapped; an end past the video is clamped
    assert sample_frame_indices(600, 30.0, S12, start=8, end=5)[0].tolist() == [150, 180, 210, 240]
    assert sample_frame_indices(60, 30.0, S12, start=1, end=100)[0].tolist() == [30]
    # sampling faster than the video: no duplicate frames
    idx, valid = sample_frame_indices(6, 2.0, FrameSamplingConfig(max_frames=64, fps=4.0))
    assert idx.tolist() == list(range(6)) and valid == 6


def test_indices_bad_input():
    with pytest.raises(ValueError, match="starts at"):
        sample_frame_indices(100, 10.0, S12, start=20)
    with pytest.raises(ValueError, match="no frames"):
        sample_frame_indices(0, 10.0, S12)
    for rate in (0.0, -4.0, float("nan"), float("inf")):  # a damaged header's rate, not a numpy error later
        with pytest.raises(ValueError, match="frame rate must be positive"):
            sample_frame_indices(10, rate, S12)


def _ramp_video(path, seconds: float, fps: int, h: int = 48, w: int = 64):
    """A video whose frame k has grey level 5 * k, so decoded frames tell which index they came from."""
    n = int(round(seconds * fps))
    frames = np.empty((n, h, w, 3), dtype=np.uint8)
    frames[:] = (np.arange(n) * 5 % 250).astype(np.uint8)[:, None, None, None]
    write_video(path, frames, fps)
    return frames


def test_decode_pads_short_video_with_mask(tmp_path):
    _ramp_video(tmp_path / "v.mp4", seconds=3, fps=10)
    video = decode_video(tmp_path / "v.mp4", S12, PreprocessConfig(image_size=32))
    assert video.frames.shape == (12, 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.mask.tolist() == [True] * 3 + [False] * 9
    assert video.num_frames == 3 and video.seconds == pytest.approx(3.0)
    assert not video.frames[3:].any()  # padding is zeros, real frames are not
    levels = video.frames[:3].reshape(3, -1).mean(1)
    assert levels == pytest.approx([0, 50, 100], abs=4)  # frames 0, 10, 20


def test_a_clip_shorter_than_a_second_is_sampled_not_dropped(tmp_path):
    """A real clip of 0.8 s was refused ("shorter than 1 second"), so training and evaluation dropped it where
    CLIP4Clip samples its first frame. It gives that frame (at 0 s) and 11 masked padding frames, with or without a
    segment end past it (DiDeMo's 31 s)."""
    _ramp_video(tmp_path / "short.mp4", seconds=0.8, fps=10)
    for end in (None, 31.0):
        video = decode_video(tmp_path / "short.mp4", S12, PreprocessConfig(image_size=32), end=end)
        assert video.num_frames == 1 and video.mask.tolist() == [True] + [False] * 11
        assert video.seconds == pytest.approx(0.8)
        assert video.frames[0].mean() == pytest.approx(0, abs=4) and not video.frames[1:].any()
    # a one-frame clip (a 25 fps still) too
    write_video(tmp_path / "one.mp4", np.full((1, 32, 32, 3), 120, dtype=np.uint8), 25)
    video = decode_video(tmp_path / "one.mp4", S12, PreprocessConfig(image_size=32))
    assert video.num_frames == 1 and video.frames[0].mean() == pytest.approx(120, abs=4)


def test_decode_long_video_uniform(tmp_path):
    _ramp_video(tmp_path / "v.mp4", seconds=20, fps=2)
    video = decode_video(tmp_path / "v.mp4", FrameSamplingConfig(max_frames=4), PreprocessConfig(image_size=16))
    assert video.mask.all() and video.num_frames == 4
    # 20 one-per-second frames (indices 0, 2, ..., 38), linspace picks seconds 0, 6, 12, 19
    levels = video.frames.reshape(4, -1).mean(1)
    assert levels == pytest.approx([0, 60, 120, 190], abs=4)


def test_decode_errors_name_the_reason(tmp_path):
    cfg = PreprocessConfig(image_size=16)
    with pytest.raises(VideoDecodeError) as e:
        decode_video(tmp_path / "nope.mp4", S12, cfg)
    assert e.value.reason == "missing" and e.value.path.name == "nope.mp4"

    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty file"):
        decode_video(tmp_path / "empty.mp4", S12, cfg)

    _ramp_video(tmp_path / "good.mp4", seconds=3, fps=10)
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError) as e:
        decode_video(tmp_path / "cut.mp4", S12, cfg)
    assert e.value.reason.startswith("cannot decode")

    (tmp_path / "text.mp4").write_bytes(b"this is not a video" * 50)
    with pytest.raises(VideoDecodeError, match="cannot decode"):
        decode_video(tmp_path / "text.mp4", S12, cfg)

    with pytest.raises(VideoDecodeError, match="bad segment"):
        decode_video(tmp_path / "good.mp4", S12, cfg, start=10)


def test_a_video_claiming_to_last_for_years_is_refused_before_sampling(tmp_path, monkeypatch):
    """The frame rate a container claims sets how many sample times are computed: a one-frame file that claims
    1e-8 fps would make sampling allocate per second of 1e8. It is refused, named, before anything is sized."""
    import decord

    _ramp_video(tmp_path / "good.mp4", seconds=3, fps=10)
    monkeypatch.setattr(decord.VideoReader, "get_avg_fps", lambda self: 1e-8)
    # frame times that agree with that rate (times that do not would place the frames by them, 3 s)
    monkeypatch.setattr(decord.VideoReader, "get_frame_timestamp",
                        lambda self, idx: np.stack([np.asarray(idx) * 1e8, (np.asarray(idx) + 1) * 1e8], axis=1))
    with pytest.raises(VideoDecodeError, match="claims to last .* over the 24 hours"):
        decode_video(tmp_path / "good.mp4", S12, PreprocessConfig(image_size=32))


def test_decode_holds_a_few_full_size_frames_at_a_time(tmp_path, monkeypatch):
    """Full-size frames are read and resized a few at a time: 64 frames of a 1080p video held at once took 843 MiB
    (4K: about four times that), where the output is 64 x 224 x 224 x 3 bytes. Frames and order are unchanged."""
    from rap_deploy.data import video as video_module

    _ramp_video(tmp_path / "v.mp4", seconds=40, fps=1)
    sampling, pre = FrameSamplingConfig(max_frames=40), PreprocessConfig(image_size=16)
    whole = decode_video(tmp_path / "v.mp4", sampling, pre)
    sizes = []
    real_resize = video_module.resize_crop

    def counting_resize(frames, cfg):
        sizes.append(len(frames))
        return real_resize(frames, cfg)

    monkeypatch.setattr(video_module, "resize_crop", counting_resize)
    chunked = decode_video(tmp_path / "v.mp4", sampling, pre)
    assert sum(sizes) == 40 and max(sizes) <= video_module.DECODE_CHUNK_FRAMES < 40
    np.testing.assert_array_equal(chunked.frames, whole.frames)
    assert chunked.mask.all() and chunked.num_frames == 40
    levels = chunked.frames.reshape(40, -1).mean(1)
    assert np.all(np.diff(levels) >= 0)  # in time order


def test_a_file_name_that_is_not_utf8_decodes_like_any_other(tmp_path):
    """Linux file names are bytes; decord passes names to FFmpeg as UTF-8 text, so 'café' saved in Latin-1 was always
    undecodable ("surrogates not allowed"); it is now read through a descriptor of the open file."""
    import os
    import shutil
    from pathlib import Path

    _ramp_video(tmp_path / "v.mp4", seconds=3, fps=10)
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.mp4"))
    shutil.copy(tmp_path / "v.mp4", odd)
    plain = decode_video(tmp_path / "v.mp4", S12, PreprocessConfig(image_size=32))
    video = decode_video(odd, S12, PreprocessConfig(image_size=32))
    assert video.num_frames == 3 and np.array_equal(video.frames, plain.frames)


def _variable_rate_video(path):
    """Frames 0-19 at 20 fps (the first second), then frames 20-29 every 0.5 s (to 5.5 s); frame k has grey 8 k."""
    from fractions import Fraction

    import av

    tb = Fraction(1, 1000)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = stream.time_base = tb
        stream.options = {"qmin": "1", "qmax": "2"}
        for k, pts in enumerate([50 * k for k in range(20)] + [1000 + 500 * k for k in range(10)]):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_variable_frame_rate_video_is_sampled_at_its_frames_times(tmp_path):
    """A variable frame rate video (phones record them) was sampled at k / average rate: this 5.55 s video (average
    5.4 fps) was read as 4.65 s ... and its 'one per second' frames were 0.0, 0.3, 0.6, 0.95 and 3.0 s. Its frames
    are now placed by their timestamps: 0, 1, 2, 3, 4 and 5 s (frames 0, 20, 22, 24, 26, 28)."""
    _variable_rate_video(tmp_path / "vfr.mp4")
    video = decode_video(tmp_path / "vfr.mp4", S12, PreprocessConfig(image_size=32))
    assert video.num_frames == 6 and video.seconds == pytest.approx(5.55, abs=0.01)
    levels = video.frames[:6].reshape(6, -1).mean(1)
    assert levels == pytest.approx([0, 160, 176, 192, 208, 224], abs=4)


def test_frame_timestamps_place_the_one_per_second_frames():
    # starts 0, 0.5, 0.6, 0.7, 3.0 and the last frame ends at 4.0: t = 0, 1, 2, 3 -> frames 0, 3, 3, 4
    ts = np.array([[0.0, 0.5], [0.5, 0.6], [0.6, 0.7], [0.7, 3.0], [3.0, 4.0]], dtype=np.float32) + 0.25
    idx, valid = sample_frame_indices(5, 1.25, S12, timestamps=ts)
    assert idx.tolist() == [0, 3, 4] and valid == 3
    idx, _ = sample_frame_indices(5, 1.25, S12, start=0.55, end=2.8, timestamps=ts)  # times 0.55, 1.55, 2.55
    assert idx.tolist() == [1, 3]


def test_frame_times_that_do_not_increase_keep_the_average_rate(tmp_path, monkeypatch):
    """A container whose frame times are broken (every frame starting at 0, lasting 0.1 s) is still read at k /
    average rate, not as a video of 0.1 s (one frame instead of three)."""
    import decord

    _ramp_video(tmp_path / "v.mp4", seconds=3, fps=10)
    plain = decode_video(tmp_path / "v.mp4", S12, PreprocessConfig(image_size=32))
    monkeypatch.setattr(decord.VideoReader, "get_frame_timestamp", lambda self, idx: np.tile([0.0, 0.1], (len(idx), 1)))
    video = decode_video(tmp_path / "v.mp4", S12, PreprocessConfig(image_size=32))
    assert video.num_frames == 3 and video.seconds == pytest.approx(3.0)
    np.testing.assert_array_equal(video.frames, plain.frames)


def test_a_variable_frame_rate_video_without_frame_lengths_is_still_placed_by_its_times(tmp_path, monkeypatch):
    """Frame times whose ends equal their starts (packets without a duration) kept the average rate: the last
    frame's length is taken as a typical frame's instead."""
    import decord

    _variable_rate_video(tmp_path / "vfr.mp4")
    real = decord.VideoReader.get_frame_timestamp

    def no_lengths(self, idx):
        ts = real(self, idx)
        return np.stack([ts[:, 0], ts[:, 0]], axis=1)

    monkeypatch.setattr(decord.VideoReader, "get_frame_timestamp", no_lengths)
    video = decode_video(tmp_path / "vfr.mp4", S12, PreprocessConfig(image_size=32))
    assert video.num_frames == 6 and video.seconds == pytest.approx(5.55, abs=0.01)
    assert video.frames[:6].reshape(6, -1).mean(1) == pytest.approx([0, 160, 176, 192, 208, 224], abs=4)


@pytest.mark.parametrize("no_rate", [float("nan"), 0.0])
def test_a_container_without_an_average_frame_rate_is_placed_by_its_frame_times(tmp_path, monkeypatch, no_rate):
    """A container without an average frame rate (decord gives 0/0 = NaN, or 0) was refused as 'no video frames'
    though its frames have times; it is now read by them (a constant rate video: the same frames as at its rate, a
    variable rate one: its times), and one without usable times either is refused naming the file and the fix."""
    import decord

    _ramp_video(tmp_path / "v.mp4", seconds=3, fps=10)
    _variable_rate_video(tmp_path / "vfr.mp4")
    plain = decode_video(tmp_path / "v.mp4", S12, PreprocessConfig(image_size=32))
    monkeypatch.setattr(decord.VideoReader, "get_avg_fps", lambda self: no_rate)
    video = decode_video(tmp_path / "v.mp4", S12, PreprocessConfig(image_size=32))
    assert video.num_frames == 3 and video.seconds == pytest.approx(3.0, abs=0.01)
    np.testing.assert_array_equal(video.frames, plain.frames)
    vfr = decode_video(tmp_path / "vfr.mp4", S12, PreprocessConfig(image_size=32))
    assert vfr.frames[:6].reshape(6, -1).mean(1) == pytest.approx([0, 160, 176, 192, 208, 224], abs=4)
    monkeypatch.setattr(decord.VideoReader, "get_frame_timestamp", lambda self, idx: np.zeros((len(idx), 2)))
    with pytest.raises(VideoDecodeError, match=r"v\.mp4: cannot decode: the container gives no frame rate"):
        decode_video(tmp_path / "v.mp4", S12, PreprocessConfig(image_size=32))


def test_frames_without_pixels_one_channel_or_too_elongated_are_refused_before_resizing(tmp_path):
    """resize_crop scaled the short side first, so a 4096x8 video (a 2 KB file) was resized to 224x114688 frames
    (619 MiB peak for one video; 65535x2 would take 4.9 GB a frame); a frame without pixels was a ZeroDivisionError,
    and normalize broadcast a one-channel frame into three. Each is now a one-line refusal (a named, skipped video)."""
    from rap_deploy.preprocess import normalize, resize_crop

    cfg = PreprocessConfig(image_size=16)
    for shape in [(1, 0, 5, 3), (1, 5, 0, 3)]:
        with pytest.raises(ValueError, match="have no picture"):
            resize_crop(np.zeros(shape, np.uint8), cfg)
    with pytest.raises(ValueError, match="over 16:1"):
        resize_crop(np.zeros((1, 2, 33, 3), np.uint8), cfg)
    assert resize_crop(np.zeros((1, 2, 32, 3), np.uint8), cfg).shape == (1, 16, 16, 3)  # 16:1 is still read
    for shape in [(2, 16, 16, 1), (2, 16, 16, 4), (2, 8, 8, 3), (16, 3)]:
        with pytest.raises(ValueError, match=r"expected uint8 frames \[\.\.\., 16, 16, 3\]"):
            normalize(np.zeros(shape, np.uint8), cfg)
    write_video(tmp_path / "wide.mp4", np.full((4, 16, 512, 3), 90, np.uint8), 2)
    with pytest.raises(VideoDecodeError, match="cannot use: frames of 512x16 pixels are over 16:1"):
        decode_video(tmp_path / "wide.mp4", FrameSamplingConfig(max_frames=2), cfg)


def test_frames_too_large_to_decode_are_refused_from_the_header(tmp_path, monkeypatch):
    # a crafted 65535x65535 stream would take 12.9 GB a frame before resizing: the header's size is checked first
    import rap_deploy.data.video as video

    path = tmp_path / "v.mp4"
    _ramp_video(path, seconds=2, fps=4, h=48, w=64)
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 64 * 48 - 1)
    with pytest.raises(VideoDecodeError, match="frames of 64x48 pixels, over the"):
        decode_video(path, S12, PreprocessConfig(image_size=32))
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 64 * 48)
    assert decode_video(path, S12, PreprocessConfig(image_size=32)).num_frames == 2

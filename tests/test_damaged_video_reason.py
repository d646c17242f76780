"""A video whose header reads but whose data is damaged (a bad download, a disk error in the middle) is refused by
decord while decoding. Its reason was decord's message with one of its two '[HH:MM:SS] /github/workspace/src/...cc:N:'
prefixes left in ('cannot decode: [15:40:46] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:218: Check failed:
avcodec_send_packet(...) >= 0 (-1094995529 vs. 0) Thread worker: Error sending packet.'), so data-check's line and
--json changed with the clock, and FFmpeg's own log ('[h264 @ 0x...] Invalid NAL unit size ...') was written to
stderr beside the command's one error line. The reason is now FFmpeg's, stable, and decoding writes nothing to
stderr."""

from __future__ import annotations

import numpy as np
import pytest

from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
from rap_deploy.data.synth_dataset import write_video
from rap_deploy.data.video import VideoDecodeError, decode_video


def _damaged_video(path):
    """An MPEG-4 file whose container reads, with its second quarter overwritten (the frames' data is damaged)."""
    frames = np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), dtype=np.uint8)
    write_video(path, frames, 10)
    data = bytearray(path.read_bytes())
    data[len(data) // 4: len(data) // 2] = b"\x7f" * (len(data) // 2 - len(data) // 4)
    path.write_bytes(bytes(data))
    return path


def _refusal_reason(path, capfd) -> str:
    """The reason ``decode_video`` refuses ``path`` with; nothing may reach stderr while it decodes."""
    capfd.readouterr()
    with pytest.raises(VideoDecodeError) as caught:
        decode_video(path, FrameSamplingConfig(max_frames=12), PreprocessConfig(image_size=32))
    assert capfd.readouterr().err == ""
    return caught.value.reason


def test_a_damaged_video_s_reason_is_ffmpeg_s_and_nothing_reaches_stderr(tmp_path, capfd):
    reason = _refusal_reason(_damaged_video(tmp_path / "video7.mp4"), capfd)
    assert reason == ("cannot decode: Error sending packet (Invalid data found when processing input); "
                      "the file is damaged: download or copy it again"), reason


def test_a_video_cut_off_before_its_index_is_named_damaged_with_the_fix(tmp_path, capfd):
    """A video cut off before its index (an MP4 whose moov atom, written last, is missing: an interrupted download or
    copy) does not open, and was reported 'cannot decode: Invalid data found when processing input' with no fix; it
    now ends with the same fix."""
    path = tmp_path / "video3.mp4"
    write_video(path, np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), dtype=np.uint8), 10)
    data = path.read_bytes()
    assert data.find(b"moov") > len(data) // 2  # the index is written last: the first half lacks it
    path.write_bytes(data[: len(data) // 2])
    reason = _refusal_reason(path, capfd)
    assert reason == ("cannot decode: Invalid data found when processing input; the file is damaged: "
                      "download or copy it again"), reason

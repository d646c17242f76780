"""A video cut off before its index (an MP4 whose moov atom, written last, is missing: an interrupted download or
copy) does not open, and was reported 'cannot decode: Invalid data found when processing input' with no fix, while a
video whose frames' data is damaged ends with the fix (1602c68). Both now end 'the file is damaged: download or copy
it again'."""

from __future__ import annotations

import numpy as np
import pytest

from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
from rap_deploy.data.synth_dataset import write_video
from rap_deploy.data.video import VideoDecodeError, decode_video


def test_a_video_cut_off_before_its_index_is_named_damaged_with_the_fix(tmp_path, capfd):
    path = tmp_path / "video3.mp4"
    write_video(path, np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), dtype=np.uint8), 10)
    data = path.read_bytes()
    assert data.find(b"moov") > len(data) // 2  # the index is written last: the first half lacks it
    path.write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    with pytest.raises(VideoDecodeError) as caught:
        decode_video(path, FrameSamplingConfig(max_frames=12), PreprocessConfig(image_size=32))
    assert caught.value.reason == ("cannot decode: Invalid data found when processing input; the file is damaged: "
                                   "download or copy it again"), caught.value.reason
    assert capfd.readouterr().err == ""

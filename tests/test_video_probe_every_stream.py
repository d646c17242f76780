"""The frame-size limit read only the first video stream's header: an MP4 with a small first stream and an 8K-plus
second one passed, and decord decoded the large one (FFmpeg's best stream). The largest stream now decides."""

from __future__ import annotations

import numpy as np
import pytest

import rap_deploy.data.video as video
from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
from rap_deploy.data.video import VideoDecodeError, decode_video


def _two_stream_mp4(path, sizes):
    import av

    with av.open(str(path), "w", format="mp4") as container:
        streams = []
        for width, height in sizes:
            stream = container.add_stream("mpeg4", rate=4)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            streams.append(stream)
        for stream, (width, height) in zip(streams, sizes, strict=True):
            frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)


@pytest.mark.parametrize("sizes", [((16, 16), (64, 64)), ((64, 64), (16, 16))])
def test_a_large_stream_is_refused_whichever_place_it_has(tmp_path, monkeypatch, sizes):
    path = tmp_path / "two.mp4"
    _two_stream_mp4(path, sizes)
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 32 * 32)
    with pytest.raises(VideoDecodeError, match="frames of 64x64 pixels, over the"):
        decode_video(path, FrameSamplingConfig(max_frames=2), PreprocessConfig(image_size=32))

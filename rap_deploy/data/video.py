"""Video decoding with decord: 1 frame per second, then ``max_frames`` picked uniformly, padded with a frame mask.

This is CLIP4Clip's frame sampling (``feature_framerate=1``, ``slice_framepos=2``) with exact frame times instead of
an integer frame rate (a variable frame rate video's frames are placed by their timestamps). A video that is missing
or cannot be decoded raises :class:`VideoDecodeError` with a short reason; it is never replaced by zeros. A video
shorter than a second is used, as CLIP4Clip uses it: its one sample time, 0 s, gives its first frame, and the other
``max_frames - 1`` are padding that the mask marks (the model clamps its temporal warp to a video's valid frames).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rap_deploy.config import FrameSamplingConfig, PreprocessConfig

# decord opens every file with this many decoding threads; more would oversubscribe DataLoader workers.
DECODE_THREADS = 1
# Full-size frames are read and resized this many at a time: 64 frames of 1080p at once held 843 MiB, 4K four times it.
DECODE_CHUNK_FRAMES = 8
MAX_SECONDS = 24 * 3600  # longest video read: far beyond ActivityNet's (minutes), bounds what sampling allocates
# A frame starting further than this many frame intervals from k / average rate marks a variable frame rate video,
# whose frames are then placed by their timestamps; a constant rate video keeps k / rate (its frames are unchanged).
VFR_TOLERANCE_FRAMES = 1.0
# Largest frame read (DCI 8K): a full-size frame is decoded before it is resized, DECODE_CHUNK_FRAMES at a time
# (8 of these are 850 MB); a crafted file claiming 65535x65535 would take 12.9 GB a frame.
MAX_FRAME_PIXELS = 8192 * 4320
# decord's error text: "[15:40:46] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:218: " before each level's
# message, and a failed check on an FFmpeg call as "Check failed: CALL >= 0 (CODE vs. 0) [Thread worker: ]WHAT".
_DECORD_PREFIX = re.compile(r"\[[0-9:]+\] [^ ]+:[0-9]+: ")
_DECORD_CHECK = re.compile(r"Check failed: .* \((-?[0-9]+) vs\. -?[0-9]+\) (?:Thread worker: )?(.+)")
AVERROR_INVALIDDATA = -1094995529  # FFmpeg's "Invalid data found when processing input" (FFERRTAG 'INDA')
# The fix for AVERROR_INVALIDDATA, whether the container does not open (a file cut off before an MP4's index, the moov
# atom, or one that holds no video data) or its frames' data does not decode.
DAMAGED_FILE_FIX = "the file is damaged: download or copy it again"


class VideoDecodeError(Exception):
    """A video that cannot be used: ``path`` and a short ``reason`` ("missing", "empty file", "cannot decode: ...")."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across processes (its args are not __init__'s)
        return type(self), (str(self.path), self.reason)


@dataclass
class DecodedVideo:
    """Sampled, resized and center-cropped frames of one video.

    ``frames`` uint8 ``[max_frames, S, S, 3]`` (zeros after the real frames), ``mask`` bool ``[max_frames]`` (True =
    real frame), ``seconds`` the video's duration, ``num_frames`` the number of frames sampled (= ``mask.sum()``).
    """

    frames: np.ndarray
    mask: np.ndarray
    seconds: float
    num_frames: int


def sample_frame_indices(
    num_frames: int,
    native_fps: float,
    sampling: FrameSamplingConfig,
    start: float | None = None,
    end: float | None = None,
    timestamps: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Return ``(indices, number_valid)``: the frames to decode from a video of ``num_frames`` at ``native_fps``.

    Frames are taken at times ``start + k / sampling.fps`` (``start`` defaults to 0) up to ``end`` inclusive (default:
    the end of the video), each time mapped to the frame shown at that time; when more than ``sampling.max_frames``
    remain, ``max_frames`` of them are picked uniformly with ``np.linspace``. ``indices`` is sorted int64 of length
    ``number_valid`` (``<= max_frames``); the caller pads to ``max_frames``. A reversed segment is swapped (as in
    CLIP4Clip). ``timestamps`` (decord's ``[num_frames, 2]`` start and end seconds, given for a variable frame rate
    video, see :func:`variable_rate_timestamps`) replaces ``k / native_fps`` as each frame's time. Raises
    ``ValueError`` for an empty video, a non-positive rate or a segment starting after the video.
    """
    if num_frames <= 0:
        raise ValueError(f"video has no frames (num_frames={num_frames})")
    if not native_fps > 0 or not math.isfinite(native_fps):
        raise ValueError(f"video frame rate must be positive, got {native_fps}")
    if not sampling.fps > 0 or sampling.max_frames < 1:
        raise ValueError(f"bad frame sampling {sampling}")
    duration = num_frames / native_fps if timestamps is None else float(timestamps[-1, 1] - timestamps[0, 0])
    t0 = max(0.0, float(start)) if start is not None else 0.0
    t1 = duration if end is None else max(0.0, float(end))
    if t1 < t0:
        t0, t1 = t1, t0
    if t0 >= duration:
        raise ValueError(f"segment starts at {t0:.2f} s but the video lasts {duration:.2f} s")
    t1 = min(t1, duration)
    # A small tolerance so that t = k / fps lands on k exactly despite float rounding.
    count = int(math.floor((t1 - t0) * sampling.fps + 1e-9)) + 1
    times = t0 + np.arange(count, dtype=np.float64) / sampling.fps
    if timestamps is None:
        idx = np.floor(times * native_fps + 1e-6).astype(np.int64)
    else:  # the frame shown at time t: the last one starting at or before it (float32 times: a 0.1 ms tolerance)
        starts = timestamps[:, 0].astype(np.float64) - float(timestamps[0, 0])
        idx = np.maximum(np.searchsorted(starts, times + 1e-4, side="right") - 1, 0).astype(np.int64)
        idx[times > duration - 1e-4] = num_frames  # the end of the last frame shows none (as k / fps past it)
    idx = np.unique(idx[idx < num_frames])
    if len(idx) > sampling.max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, num=sampling.max_frames, dtype=int)]
    return idx, int(len(idx))


def variable_rate_timestamps(reader: object, num_frames: int, native_fps: float) -> np.ndarray | None:
    """decord's ``[num_frames, 2]`` frame start and end seconds of an open reader when the video's frame rate varies:
    some frame starts over ``VFR_TOLERANCE_FRAMES`` frame intervals away from ``k / native_fps`` (a phone's
    recording, an edited clip). None for a constant rate video (its frames are placed at ``k / native_fps`` as
    before), or when the times cannot be read or do not increase from frame to frame."""
    ts = _frame_times(reader, num_frames, 1.0 / native_fps)
    if ts is None:
        return None
    stray = np.abs(ts[:, 0] - ts[0, 0] - np.arange(num_frames) / native_fps).max()
    return ts if stray > VFR_TOLERANCE_FRAMES / native_fps else None


def _frame_times(reader: object, num_frames: int, one_frame: float | None = None) -> np.ndarray | None:
    """decord's ``[num_frames, 2]`` frame start and end seconds of an open reader, or None when they cannot be read,
    are not finite or do not increase from frame to frame (a container without usable times). A last frame without
    a length (end = start) lasts a typical (median) frame interval, or ``one_frame`` seconds for a one-frame video
    (None when that is unknown)."""
    try:
        ts = np.asarray(reader.get_frame_timestamp(list(range(num_frames))), dtype=np.float64)  # type: ignore[attr-defined]
    except Exception:  # a container without usable times
        return None
    # times that do not increase frame to frame (missing or broken ones) say nothing
    if ts.shape != (num_frames, 2) or not np.isfinite(ts).all() or np.any(np.diff(ts[:, 0]) <= 0):
        return None
    if not ts[-1, 1] > ts[-1, 0]:  # a last packet without a duration: it lasts as long as a typical frame
        length = float(np.median(np.diff(ts[:, 0]))) if num_frames > 1 else one_frame
        if length is None:
            return None
        ts[-1, 1] = ts[-1, 0] + length
    return ts


def _rate_and_times(reader: object, path: Path, num_frames: int, native_fps: float
                    ) -> tuple[float, np.ndarray | None]:
    """The video's frame rate and, for a variable rate video, its frame times (:func:`variable_rate_timestamps`),
    from decord's average rate ``native_fps``. A container without an average frame rate (decord gives 0 or NaN)
    is placed by its frame times, its rate their average; :class:`VideoDecodeError` naming the file when it has no
    usable times either."""
    if native_fps > 0 and math.isfinite(native_fps):
        return native_fps, variable_rate_timestamps(reader, num_frames, native_fps)
    ts = _frame_times(reader, num_frames)
    rate = num_frames / float(ts[-1, 1] - ts[0, 0]) if ts is not None else math.nan
    if not math.isfinite(rate):
        raise VideoDecodeError(path, f"cannot decode: the container gives no frame rate (average {native_fps:g} fps) "
                               "and no usable frame times; re-encode it (e.g. ffmpeg -i IN -r 30 OUT.mp4)")
    return rate, ts


def _probe(path: Path) -> str | None:
    """Return why FFmpeg (through PyAV) cannot open ``path`` as a video, or why its frames are too large to decode
    (over :data:`MAX_FRAME_PIXELS`, read from the streams' headers before any frame is decoded), or None.

    Every video stream's size is checked, the largest decides: decord decodes FFmpeg's best stream, which need not be
    the first (a small first stream would let a 65535x65535 second one through)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
            width, height = max(((int(s.width or 0), int(s.height or 0)) for s in container.streams.video),
                                key=lambda size: size[0] * size[1])
    except Exception as exc:  # PyAV raises many FFmpeg error types; the message is what matters
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        # PyAV's errno is FFmpeg's code negated (1094995529); a file cut off before an MP4's moov atom gives it
        if getattr(exc, "errno", None) in (AVERROR_INVALIDDATA, -AVERROR_INVALIDDATA):
            return f"{reason}; {DAMAGED_FILE_FIX}"
        return reason
    if width * height > MAX_FRAME_PIXELS:
        return (f"frames of {width}x{height} pixels, over the {MAX_FRAME_PIXELS / 1e6:.1f} megapixels (8K) rapdeploy "
                "decodes; scale it down first (e.g. ffmpeg -i IN -vf scale=-2:1080 OUT.mp4)")
    return None


def require_video_file(path: Path) -> None:
    """Raise :class:`VideoDecodeError` ("missing", or "not a regular file") unless ``path`` is a regular file."""
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file (a folder, FIFO or device)" if path.exists() else "missing")


def decode_video(
    path: str | Path,
    sampling: FrameSamplingConfig,
    preprocess: PreprocessConfig,
    start: float | None = None,
    end: float | None = None,
) -> DecodedVideo:
    """Decode the sampled frames of ``path`` and apply :func:`rap_deploy.preprocess.resize_crop`.

    Returns a :class:`DecodedVideo` padded to ``sampling.max_frames``; a video of any length with a decodable frame
    has at least one real frame (one shorter than a second: its first, the frame at 0 s). Raises
    :class:`VideoDecodeError` when the file is missing or empty, cannot be opened or decoded, claims to last over
    :data:`MAX_SECONDS`, or ``start`` lies past its end.
    """
    path = Path(path)
    require_video_file(path)
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file")
    problem = _probe(path)  # PyAV first: it gives FFmpeg's reason without decord's log noise
    if problem is not None:
        raise VideoDecodeError(path, f"cannot decode: {problem}")
    with _decoder_name(path) as name:
        return _decode_sampled(path, name, sampling, preprocess, start, end)


@contextlib.contextmanager
def _decoder_name(path: Path) -> Iterator[str]:
    """A name decord can open ``path`` by: the path itself, or, when it is not valid UTF-8 (decord hands names to
    FFmpeg as UTF-8 text; Linux file names are bytes), the ``/proc/self/fd`` link of a descriptor held open meanwhile.
    Raises :class:`VideoDecodeError` for such a name where there is no ``/proc``."""
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        if not os.path.isdir("/proc/self/fd"):
            raise VideoDecodeError(path, "cannot decode: its file name is not valid UTF-8; rename it") from None
        fd = os.open(path, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield name


def _decode_sampled(path: Path, name: str, sampling: FrameSamplingConfig, preprocess: PreprocessConfig,
                    start: float | None, end: float | None) -> DecodedVideo:
    """The body of :func:`decode_video` once ``path`` (opened as ``name``) is known to hold a video stream."""
    import decord

    _quiet_decord()
    try:
        reader = decord.VideoReader(name, ctx=decord.cpu(0), num_threads=DECODE_THREADS)
        num_frames = len(reader)
        native_fps = float(reader.get_avg_fps())
    except Exception as exc:
        raise VideoDecodeError(path, f"cannot decode: {_first_line(exc)}") from None
    if num_frames <= 0:
        raise VideoDecodeError(path, "cannot decode: no video frames")
    native_fps, timestamps = _rate_and_times(reader, path, num_frames, native_fps)
    seconds = num_frames / native_fps if timestamps is None else float(timestamps[-1, 1] - timestamps[0, 0])
    if seconds > MAX_SECONDS:  # sampling allocates per second claimed: a 1-frame file can claim 1e8 s (fps 1e-8)
        raise VideoDecodeError(path, f"claims to last {seconds:.3g} s ({num_frames} frames at {native_fps:.3g} "
                               f"fps), over the {MAX_SECONDS // 3600} hours rapdeploy reads; the file is damaged")
    try:
        indices, valid = sample_frame_indices(num_frames, native_fps, sampling, start, end, timestamps)
    except ValueError as exc:
        raise VideoDecodeError(path, f"bad segment: {exc}") from None
    size = preprocess.image_size
    out = np.zeros((sampling.max_frames, size, size, 3), dtype=np.uint8)
    try:
        for first in range(0, valid, DECODE_CHUNK_FRAMES):
            stop = min(first + DECODE_CHUNK_FRAMES, valid)
            out[first:stop] = _read_resized(reader, path, indices[first:stop], preprocess)
    finally:
        del reader
    mask = np.zeros(sampling.max_frames, dtype=bool)
    mask[:valid] = True
    return DecodedVideo(frames=out, mask=mask, seconds=float(seconds), num_frames=valid)


@functools.cache
def _quiet_decord() -> None:
    """Set decord's log level to QUIET, once per process (it is process-wide, and decord cannot read it back to
    restore it): its FFmpeg's log lines would reach stderr beside the command's one error line, and the reason a video
    fails is raised as :class:`VideoDecodeError` anyway."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)


def resize_crop(frames: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """:func:`rap_deploy.preprocess.resize_crop`, imported when a video is decoded: it brings torch and torchvision
    (~700 MiB, seconds to import), which reading the frame cache never needs (the server's thumbnails over an ONNX
    Runtime engine run without torch)."""
    from rap_deploy.preprocess import resize_crop as resize

    return resize(frames, cfg)


def _read_resized(reader: object, path: Path, indices: np.ndarray, preprocess: PreprocessConfig) -> np.ndarray:
    """Frames ``indices`` of an open decord reader, resized and cropped (:func:`resize_crop`); raises
    :class:`VideoDecodeError` when decord fails or returns frames of another shape or of a size :func:`resize_crop`
    refuses (no pixels, or more elongated than its ``MAX_ASPECT_RATIO``)."""
    try:
        raw = reader.get_batch(indices.tolist()).asnumpy()  # type: ignore[attr-defined]
    except Exception as exc:
        raise VideoDecodeError(path, f"cannot decode: {_first_line(exc)}") from None
    if raw.ndim != 4 or raw.shape[0] != len(indices) or raw.shape[-1] != 3:
        raise VideoDecodeError(path, f"cannot decode: got frames of shape {tuple(raw.shape)}")
    try:
        return resize_crop(np.ascontiguousarray(raw, dtype=np.uint8), preprocess)
    except ValueError as exc:
        raise VideoDecodeError(path, f"cannot use: {exc}") from None


def _first_line(exc: BaseException) -> str:
    """The part of decord's error ``exc`` a user can act on: its last line without decord's ``"[time] source.cc:N: "``
    prefixes (one per level it was re-raised at, so the text never holds the clock), and a failed check on an FFmpeg
    call (``"Check failed: call(...) >= 0 (-1094995529 vs. 0) Thread worker: Error sending packet."``) as what
    failed and FFmpeg's reason: ``"Error sending packet (Invalid data found when processing input); the file is
    damaged: ..."``."""
    text = str(exc).strip().splitlines()
    line = text[-1] if text else type(exc).__name__
    while (prefix := _DECORD_PREFIX.match(line)) is not None:
        line = line[prefix.end():]
    check = _DECORD_CHECK.match(line)
    if check is None:
        return line
    code, what = int(check.group(1)), check.group(2).rstrip(".")
    if code == AVERROR_INVALIDDATA:
        return f"{what} (Invalid data found when processing input); {DAMAGED_FILE_FIX}"
    return f"{what} (FFmpeg error {code})"

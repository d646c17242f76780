"""Encoding one plan shard: decode each video (through the frame cache), run the video encoder in batches, keep
the stored tensors in their index dtypes, and write the shard atomically.

Undecodable or missing videos are skipped and listed with the reason, never zero-filled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.config import FrameSamplingConfig
from rap_deploy.graphs import video_outputs
from rap_deploy.library.manifest import store_tensors, tensor_dtype
from rap_deploy.library.plan import plan_videos, shard_digest
from rap_deploy.library.shards import FILE_STAT_FIELDS, VIDEO_FIELDS, file_stat, write_shard


def encode_shard(root: Path, shard: dict[str, Any], engine: Any, cache: Any, sampling: FrameSamplingConfig,
                 batch_size: int, advance: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Encode and write one plan shard; returns its entry (with ``skipped``: ``[{video_id, path, reason}]``)."""
    from rap_deploy.data.cache import file_digest
    from rap_deploy.data.video import VideoDecodeError
    from rap_deploy.retrieval import VideoList, load_video_batch

    has_asa = bool(getattr(engine, "has_asa", engine.config.has_asa))
    outputs, keep = video_outputs(has_asa), store_tensors(has_asa)
    src = VideoList(plan_videos(shard), sampling)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in keep}
    meta: dict[str, list[Any]] = {k: [] for k in (*VIDEO_FIELDS, *FILE_STAT_FIELDS)}
    skipped: list[dict[str, str]] = []
    frames, masks = [], []
    checked = False

    def flush() -> None:
        if not frames:
            return
        out = engine.encode_video(np.concatenate(frames), np.concatenate(masks))
        named = dict(zip(outputs, out, strict=True))
        stored = {name: np.asarray(named[name]).astype(tensor_dtype(name), copy=False) for name in keep}
        for name, arr in _drop_non_finite(stored, meta, skipped).items():
            parts[name].append(arr)
        advance(len(frames))
        frames.clear()
        masks.clear()

    for i, video in enumerate(src.videos):
        try:
            st = os.stat(video.path)
            f, m = load_video_batch(src, [i], cache, engine.config)
            sha = file_digest(video.path)
            if file_stat(os.stat(video.path)) != file_stat(st):  # its frames and its hash may be of two contents
                raise VideoDecodeError(video.path, "changed while it was read; run the command again")
        except (VideoDecodeError, OSError) as exc:
            reason = exc.reason if isinstance(exc, VideoDecodeError) else f"cannot read: {exc.strerror or exc}"
            skipped.append({"video_id": video.video_id, "path": str(video.path), "reason": reason})
            advance(1)
            continue
        frames.append(f)
        masks.append(m)
        for key, value in zip(VIDEO_FIELDS, (video.video_id, str(video.path), video.start, video.end, sha),
                              strict=True):
            meta[key].append(value)
        for key, value in zip(FILE_STAT_FIELDS, file_stat(st), strict=True):
            meta[key].append(int(value))
        if len(frames) >= batch_size:
            flush()
            checked = checked or _check_shard_memory(parts, len(src.videos), shard["name"])
    flush()
    arrays = {name: np.concatenate(p) for name, p in parts.items() if p}
    return write_shard(root, shard["name"], shard["row_offset"], arrays, meta, skipped, shard_digest(shard))


def _drop_non_finite(arrays: dict[str, np.ndarray], meta: dict[str, list[Any]],
                     skipped: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """``arrays`` (one batch, the last rows of ``meta``) without the videos any of whose stored tensors holds NaN or
    inf (an overflow, e.g. of float16): those leave ``meta`` and join ``skipped``, never stored (FAISS would never
    rank a NaN score, so the video would silently be unfindable)."""
    n = len(next(iter(arrays.values())))
    bad = np.zeros(n, dtype=bool)
    for arr in arrays.values():
        bad |= ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
    if not bad.any():
        return arrays
    start = len(meta["video_id"]) - n
    for i in np.flatnonzero(bad):
        skipped.append({"video_id": meta["video_id"][start + i], "path": meta["path"][start + i],
                        "reason": "the engine gave non-finite values (NaN or inf) for it"})
    for values in meta.values():
        values[start:] = [v for v, b in zip(values[start:], bad, strict=True) if not b]
    return {name: arr[~bad] for name, arr in arrays.items()}


def _check_shard_memory(parts: dict[str, list[np.ndarray]], videos: int, name: str) -> bool:
    """Refuse a shard whose tensors, measured on its first encoded batch, would not fit in memory (a shard is held
    whole, then joined: twice its size) before encoding the rest of it (:class:`UsageError`, exit 2); returns
    whether it measured (not while every video encoded so far was dropped as non-finite: the next batch is)."""
    from rap_deploy.bounds import check_memory

    rows = sum(len(a) for a in next(iter(parts.values()), []))
    if rows:
        per_video = sum(a.nbytes for p in parts.values() for a in p) / rows
        check_memory(int(2 * per_video * videos), f"library shard {name} ({videos} videos of "
                     f"{per_video / 2**20:.2f} MiB)", "pass a smaller --shard-size")
    return rows > 0

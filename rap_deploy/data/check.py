"""``data-check``: read a dataset folder exactly as training and verify would, and report what is unusable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rap_deploy.config import PreprocessConfig
from rap_deploy.data.cache import FrameCache
from rap_deploy.data.datasets import load_split
from rap_deploy.data.progress import progress_bar
from rap_deploy.data.video import VideoDecodeError


def check_dataset(
    dataset: str,
    data_root: str | os.PathLike[str],
    split: str = "test",
    cache: FrameCache | None = None,
    progress: bool = True,
    preprocess: PreprocessConfig | None = None,
    max_frames: int | None = None,
) -> dict[str, Any]:
    """Load ``split`` of ``dataset`` and decode every video once (through ``cache`` when given).

    Returns the ``data-check --json`` report (DESIGN.md §11): ``dataset``, ``split``, ``videos``, ``captions``,
    ``missing`` (video ids), ``undecodable`` (``{video_id, reason, path}``), ``per_video`` (id -> ``{frames,
    seconds}``), plus ``ok`` (some videos, none missing or undecodable), ``missing_paths``, ``videos_dir``,
    ``unread_videos_dirs`` (other candidate folders that hold videos but are not read, as :func:`load_split` found
    them: :func:`~rap_deploy.data.video_files.unread_video_folders`), ``not_searched`` (what the search for videos in
    sub-folders left out: links out of the data root, folders past its bound; a video only there is missing)
    and ``sampling``.
    Raises :class:`UsageError` when the annotation files cannot be read.
    """
    rs = load_split(dataset, data_root, split, max_frames=max_frames)
    preprocess = preprocess or PreprocessConfig()
    cache = cache or FrameCache(None)
    missing: list[str] = []
    missing_paths: list[str] = []
    undecodable: list[dict[str, str]] = []
    per_video: dict[str, dict[str, float | int]] = {}
    with progress_bar(rs.num_videos, f"checking {dataset} {split}", enabled=progress) as advance:
        for entry in rs.videos:
            try:
                video = cache.get(entry.path, rs.sampling, preprocess, entry.start, entry.end)
                per_video[entry.video_id] = {"frames": video.num_frames, "seconds": round(video.seconds, 3)}
            except VideoDecodeError as exc:
                if exc.reason == "missing":
                    missing.append(entry.video_id)
                    missing_paths.append(str(entry.path))
                else:
                    undecodable.append({"video_id": entry.video_id, "reason": exc.reason, "path": str(entry.path)})
            advance()
    return {
        "dataset": dataset,
        "split": split,
        "videos": rs.num_videos,
        "captions": rs.num_captions,
        "missing": missing,
        "undecodable": undecodable,
        "per_video": per_video,
        "ok": rs.num_videos > 0 and not missing and not undecodable,
        "missing_paths": missing_paths,
        "videos_dir": str(rs.videos_dir or Path(rs.data_root or data_root) / "videos"),
        "unread_videos_dirs": [str(folder) for folder in rs.unread_videos_dirs],
        "not_searched": list(rs.not_searched),
        "sampling": rs.sampling.to_dict(),
        "image_size": preprocess.image_size,
    }

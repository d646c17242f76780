"""Where the videos of a library come from: a dataset split, a folder of video files, or a list file.

Each source gives an ordered list of :class:`~rap_deploy.data.datasets.VideoEntry` (id, path, optional segment), the
frame rate videos are sampled at, and, for a dataset, its captions (used to measure stage-1 recall with real text
queries).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rap_deploy.config import FrameSamplingConfig
from rap_deploy.data.datasets import VideoEntry
from rap_deploy.data.video_files import VIDEO_EXTENSIONS
from rap_deploy.errors import UsageError
from rap_deploy.library.typed_urls import url_typed_as_path
from rap_deploy.safe_paths import absent
from rap_deploy.workspace import user_path


@dataclass
class VideoSource:
    """The videos to index, in order, with their sampling rate (``sampling.max_frames`` is replaced by the model's)
    and, for a dataset split, its captions."""

    kind: str
    description: dict[str, Any]
    videos: list[VideoEntry]
    sampling: FrameSamplingConfig = field(default_factory=FrameSamplingConfig)
    captions: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """A default library name: ``<dataset>-<split>``, the folder's name or the list file's stem."""
        d = self.description
        if self.kind == "dataset":
            return f"{d['dataset']}-{d['split']}"
        return Path(d["path"]).stem or "library"


def dataset_source(dataset: str, data_root: str | os.PathLike[str], split: str,
                   frames: int | None = None) -> VideoSource:
    """The videos (and captions) of a dataset split read by the dataset readers (``frames``: the sampling's frame
    count, default the dataset's own; a build samples the engine's); raises their :class:`UsageError`."""
    from rap_deploy.data.datasets import load_split

    s = load_split(dataset, data_root, split, max_frames=frames)
    _check_unique([v.video_id for v in s.videos], [str(v.path) for v in s.videos], f"{dataset} {split}")
    videos = [VideoEntry(v.video_id, v.path.resolve(), v.start, v.end) for v in s.videos]
    return VideoSource("dataset", {"dataset": dataset, "data_root": str(Path(data_root).resolve()), "split": split},
                       videos, s.sampling, list(s.captions))


def folder_source(folder: str | os.PathLike[str]) -> VideoSource:
    """Every video file under ``folder`` (recursively, hidden names skipped, symlinked folders not followed), sorted;
    id = path relative to ``folder`` without its extension. Raises :class:`UsageError` for a missing folder, a
    file given as the folder, a folder under it that cannot be listed, no video, or two files with the same id."""
    url = url_typed_as_path(folder)
    if url is not None:
        raise UsageError(f"--videos {url} is a URL; index reads video files on this machine: download the videos "
                         "into a folder and pass --videos DIR")
    root = user_path(folder, "--videos")
    if root.exists() and not root.is_dir():
        raise UsageError(f"--videos {root} is a file, not a folder; pass the folder that holds your videos "
                         "(--videos DIR), or list single files with --list FILE (one path per line)")
    if not root.is_dir():
        raise UsageError(f"video folder {root} {absent(root)}; pass --videos DIR with your video files")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unlisted_folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames
                     if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS)
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    if not found:
        raise UsageError(f"no video file under {root} (looked for {', '.join(VIDEO_EXTENSIONS)})")
    ids = [p.relative_to(root).with_suffix("").as_posix() for p in found]
    _check_unique(ids, [str(p) for p in found], str(root))
    videos = [VideoEntry(i, p.resolve()) for i, p in zip(ids, found, strict=True)]
    return VideoSource("videos", {"path": str(root.resolve())}, videos)


def _unlisted_folder(exc: OSError) -> None:
    """``os.walk``'s error handler: a folder that cannot be listed (permissions) would leave its videos out of the
    library without a word (os.walk skips it), so it is refused, named."""
    raise UsageError(f"cannot list the folder {exc.filename} ({exc.strerror or exc}): its videos would be left out of "
                     "the library; make it readable, or move it out of the --videos folder")


def list_source(list_file: str | os.PathLike[str]) -> VideoSource:
    """The videos named in ``list_file``, one path per line (blank lines and ``#`` comments skipped; relative paths
    are relative to the list file's folder); id = the path as written without its extension. Raises
    :class:`UsageError` for a missing or non-text file, a folder given as the file, an empty list, or two lines with
    the same id."""
    path = user_path(list_file, "--list")
    if path.is_dir():
        raise UsageError(f"--list {path} is a folder, not a list file; pass --list FILE with one video path per "
                         "line, or index the folder's videos with --videos DIR")
    if not path.is_file():
        what = "is not a regular file (a FIFO or device)" if path.exists() else absent(path)
        raise UsageError(f"list file {path} {what}; pass --list FILE with one video path per line")
    videos, paths = [], []
    for number, line in _list_lines(path):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if url_typed_as_path(text) is not None:
            raise UsageError(f"list file {path} line {number} ({text}) is a URL; index reads video files on this "
                             "machine: download the video and list the path of its file")
        if not Path(text).name:  # '.', '/': no file name to make an id of
            raise UsageError(f"list file {path} line {number} ({text!r}) names no file; write one video path per line")
        # ~ and ~user are home folders; any other line is relative to the list file's folder (./~/x: its folder ~)
        file = user_path(text, f"list file {path} line {number}:") if text.startswith("~") else path.parent / text
        videos.append(VideoEntry(Path(text).with_suffix("").as_posix(), file.resolve()))
        paths.append(f"line {number}")
    if not videos:
        raise UsageError(f"list file {path} names no video; write one video path per line")
    _check_unique([v.video_id for v in videos], paths, str(path))
    return VideoSource("list", {"path": str(path.resolve())}, videos)


def missing_list_hint(source: VideoSource | None, skipped: list[dict[str, Any]]) -> str:
    """The clause that explains a ``--list`` source none of whose videos was found: its relative paths were read
    from the list file's folder (a list of paths relative to the current folder, written elsewhere, names nothing
    there); ``""`` for another source, or when some skipped file exists or every path was absolute."""
    if source is None or source.kind != "list" or not skipped:
        return ""
    if any(Path(s["video_id"]).is_absolute() for s in skipped) or any(Path(s["path"]).exists() for s in skipped):
        return ""
    folder = Path(source.description["path"]).parent
    return (f"; a --list file's relative paths are read from its own folder ({folder}), so {skipped[0]['video_id']} "
            f"was looked for at {skipped[0]['path']}: write absolute paths, or paths relative to that folder")


MAX_LIST_LINE = 4096  # bytes: PATH_MAX; a longer --list line is no path (a binary file passed by mistake)


def _list_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a list file with their numbers, read one at a time with at most :data:`MAX_LIST_LINE` bytes
    each (a huge binary file is refused at its first long line, not read whole). Lines end as ``str.splitlines``
    ends them. Raises :class:`UsageError` naming the file and line for a long, NUL-holding or non-UTF-8 line."""
    number = 0
    with path.open("rb") as fh:
        while raw := fh.readline(MAX_LIST_LINE + 2):  # room for the line's "\r\n"
            if len(raw.rstrip(b"\r\n")) > MAX_LIST_LINE:
                raise UsageError(f"list file {path} line {number + 1} is longer than {MAX_LIST_LINE} bytes, so it "
                                 "is no path (a binary file?); write one video path per line")
            if b"\x00" in raw:
                raise UsageError(f"list file {path} line {number + 1} holds a NUL byte, so it is no path (a binary "
                                 "file?); write one video path per line")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(f"list file {path} line {number + 1} is not UTF-8 text (byte {exc.start}); write "
                                 "one video path per line") from None
            for part in text.splitlines() or [""]:
                number += 1
                yield number, part


def _check_unique(ids: list[str], where: list[str], source: str) -> None:
    seen: dict[str, str] = {}
    for vid, w in zip(ids, where, strict=True):
        if vid in seen:
            raise UsageError(f"{source}: '{seen[vid]}' and '{w}' both give the video id '{vid}'; ids must be unique "
                             "(rename one of them)")
        seen[vid] = w

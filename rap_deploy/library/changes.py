"""Videos changed in place since they were indexed: what ``rapdeploy index --add`` re-encodes.

Each library row records its file's size, modification time (ns), change time (ns), inode and content sha256 when it was
encoded. A given video whose id is live in the library and whose file now differs in any of these stat fields is hashed,
and when its sha256 differs too it is re-encoded (the change time and inode catch a file replaced with its size and
modification time kept, as ``cp -p`` or ``touch -r`` leave it; no user can set a change time): the build plans it like a
new video and removes the old row once the new one is committed (a re-encode that fails to decode keeps the old row and
is listed as skipped). Only files whose stat changed are read, so ``--add`` over an unchanged folder costs one ``stat``
per video. Rows of libraries built before the stat was recorded are never re-checked: re-encode those with ``--remove
ID`` then ``--add``; rows recorded before the change time and inode compare the size and modification time only.

A video whose id is live but whose file is now at another path with the same content (a moved or renamed folder) is
not re-encoded: its new path and stat are recorded in the manifest's ``moved`` (global row → ``{"path", "bytes",
"mtime_ns", "ctime_ns", "inode"}``), which overrides the row's ``videos.json`` (kept as written, like every committed
shard file) for search results, thumbnails and later ``--add`` runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rap_deploy.data.datasets import VideoEntry
from rap_deploy.errors import UsageError
from rap_deploy.library.assemble import live_records
from rap_deploy.library.shards import FILE_STAT_FIELDS, file_stat


@dataclass(frozen=True)
class IndexedFile:
    """What a live library row recorded about the file it was encoded from (a stat field is ``None`` when not
    recorded)."""

    row: int
    path: str
    sha256: str
    size: int | None
    mtime_ns: int | None
    ctime_ns: int | None = None
    inode: int | None = None

    def same_stat(self, st: os.stat_result) -> bool:
        """Whether ``st`` matches every stat field this row recorded (then the content is taken as unchanged)."""
        was = (self.size, self.mtime_ns, self.ctime_ns, self.inode)
        return all(w is None or w == n for w, n in zip(was, file_stat(st), strict=True))


def indexed_files(root: Path, shards: list[dict[str, Any]], removed: set[int],
                  moved: dict[str, dict[str, Any]] | None = None) -> dict[str, IndexedFile]:
    """The :class:`IndexedFile` of every live row, by video id (reads each shard's ``videos.json``; a row in
    ``moved``, the manifest's record of moved files, takes its path and stat from there)."""
    out: dict[str, IndexedFile] = {}
    for row, videos, i in live_records(root, shards, removed):
        record = (moved or {}).get(str(row))
        if record is not None:
            path, stat = record["path"], [record.get(k) for k in FILE_STAT_FIELDS]
        else:
            path, stat = videos["path"][i], [videos[k][i] if k in videos else None for k in FILE_STAT_FIELDS]
        out[videos["video_id"][i]] = IndexedFile(row, path, str(videos["sha256"][i]), *stat)
    return out


def moved_videos(videos: list[VideoEntry], indexed: dict[str, IndexedFile]) -> dict[str, dict[str, Any]]:
    """The files of ``videos`` that are live rows' content at another path (a moved or renamed folder), as the
    manifest's ``moved`` records them: global row (a string) → new path and stat.

    A file is the row's when its stat matches every field the row recorded, inode included (a rename keeps it), or
    else when its sha256 does (a copy); a file at another path that cannot be read, or holds other content, is left
    to :func:`changed_videos`.
    """
    from rap_deploy.data.cache import file_digest

    moved: dict[str, dict[str, Any]] = {}
    for video in videos:
        known = indexed.get(video.video_id)
        if known is None or str(video.path) == known.path:
            continue
        try:
            st = os.stat(video.path)
            same = (known.inode is not None and known.same_stat(st)) or file_digest(video.path) == known.sha256
        except OSError:
            continue
        if same:
            moved[str(known.row)] = {"path": str(video.path), **dict(zip(FILE_STAT_FIELDS, file_stat(st),
                                                                         strict=True))}
    return moved


def with_moves(indexed: dict[str, IndexedFile], moved: dict[str, dict[str, Any]]) -> dict[str, IndexedFile]:
    """``indexed`` with the rows of ``moved`` at their new path and stat (so they count as unchanged)."""
    by_row = {str(f.row): vid for vid, f in indexed.items()}
    out = dict(indexed)
    for row, record in moved.items():
        vid = by_row[row]
        out[vid] = IndexedFile(indexed[vid].row, record["path"], indexed[vid].sha256,
                               *[record[k] for k in FILE_STAT_FIELDS])
    return out


def changed_videos(videos: list[VideoEntry], indexed: dict[str, IndexedFile]) -> dict[str, int]:
    """The ids of ``videos`` whose file's content changed since its row was encoded, mapped to that old row.

    A file that cannot be read now keeps its row (``--remove`` drops it); so does one whose stat changed but whose
    content did not (a ``touch``, a copy over it), which is hashed again on every ``--add`` until it is
    re-indexed. Raises :class:`UsageError` for a video of other content at another path than its id's row: two files
    with one id (two folders with the same relative names), not a file changed in place.
    """
    from rap_deploy.data.cache import file_digest

    changed: dict[str, int] = {}
    for video in videos:
        known = indexed.get(video.video_id)
        if known is None or known.size is None:
            continue
        try:
            st = os.stat(video.path)
            if known.same_stat(st) or file_digest(video.path) == known.sha256:
                continue
        except OSError:
            continue
        if str(video.path) != known.path:
            raise UsageError(f"video id {video.video_id!r} is in the library from {known.path}, and {video.path} "
                             "has the same id but other content: --remove that id first, or index these videos "
                             "into another library (--name)")
        changed[video.video_id] = known.row
    return changed

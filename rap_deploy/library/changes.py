"""Videos changed in place since they were indexed: what ``rapdeploy index --add`` re-encodes.

Each library row records its file's size, modification time (ns), change time (ns), inode and content sha256 when it was
encoded. A given video whose id is live in the library and whose file now differs in any of these stat fields is hashed,
and when its sha256 differs too it is re-encoded (the change time and inode catch a file replaced with its size and
modification time kept, as ``cp -p`` or ``touch -r`` leave it; no user can set a change time): the build plans it like a
new video and removes the old row once the new one is committed (a re-encode that fails to decode keeps the old row and
is listed as skipped). Only files whose stat changed are read, so ``--add`` over an unchanged folder costs one ``stat``
per video. Rows of libraries built before the stat was recorded are never re-checked: re-encode those with ``--remove
ID`` then ``--add``; rows recorded before the change time and inode compare the size and modification time only."""

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


def indexed_files(root: Path, shards: list[dict[str, Any]], removed: set[int]) -> dict[str, IndexedFile]:
    """The :class:`IndexedFile` of every live row, by video id (reads each shard's ``videos.json``)."""
    out: dict[str, IndexedFile] = {}
    for row, videos, i in live_records(root, shards, removed):
        stat = [videos[k][i] if k in videos else None for k in FILE_STAT_FIELDS]
        out[videos["video_id"][i]] = IndexedFile(row, videos["path"][i], str(videos["sha256"][i]), *stat)
    return out


def changed_videos(videos: list[VideoEntry], indexed: dict[str, IndexedFile]) -> dict[str, int]:
    """The ids of ``videos`` whose file's content changed since its row was encoded, mapped to that old row.

    A file that cannot be read now keeps its row (``--remove`` drops it); so does one whose stat changed but whose
    content did not (a ``touch``, a copy, a moved folder), which is hashed again on every ``--add`` until it is
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

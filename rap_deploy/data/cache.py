"""Decoded-frame cache on disk, so training epochs, verify and bench decode each video once.

An entry is the uint8 output of :func:`decode_video` (frames, mask, duration) in an ``.npz``, keyed by the sha256 of
the video file's content plus the sampling, preprocessing and segment settings. Entries are written atomically; an
entry that cannot be read back (truncated, corrupt, wrong shape) is deleted and rebuilt.

Several processes may share a cache (train's DataLoader workers, verify, index). A writer holds an ``flock`` on its
hidden temporary file (``.<key>.npz.*.tmp``) until it is renamed into place, so a temporary that a killed writer left
is told from a live one: the first look-up in a sub-folder by a :class:`FrameCache` (a hit too, so a cache that is
complete is cleaned) deletes the unlocked temporaries there older than :data:`STALE_TEMP_SECONDS` (the age covers the
instant between a temporary's creation and its lock, and clocks that differ on a shared filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from rap_deploy.atomic import atomic_path, file_identity, sha256_file
from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
from rap_deploy.crashpoints import crash_point
from rap_deploy.data.video import DecodedVideo, VideoDecodeError, decode_video, require_video_file
from rap_deploy.errors import RapDeployError

CACHE_FORMAT = 2  # 2: variable frame rate videos sampled by their frame times
STALE_TEMP_SECONDS = 300  # an unlocked temporary entry file this old was left by a killed writer

# (resolved path, device, inode, size, mtime_ns, ctime_ns) -> sha256 of the content: each file is hashed once per
# process. The inode and change time tell a file replaced under a kept size and modification time (tar, cp -p).
_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}


def visible_files(folder: Path) -> Iterator[Path]:
    """The regular files under ``folder``, in path order, hidden names (locks, temporary files) left out: what a
    digest of a folder's content reads (the demo's step records, a held-out split's record)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


def file_digest(path: str | Path) -> str:
    """Return the sha256 of ``path``'s content, memoised for this process on the path and the file's device, inode,
    size, modification and change times.

    Raises ``FileNotFoundError`` / ``OSError`` when the file cannot be read.
    """
    p = Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(memo_key)
    if digest is None:
        digest = sha256_file(p)
        _DIGESTS[memo_key] = digest
    return digest


def default_cache_dir(workspace: str | os.PathLike[str] | None = None) -> Path:
    """Return the default frame cache folder, ``<workspace>/cache/frames``."""
    from rap_deploy.workspace import subdir

    return subdir("cache", workspace) / "frames"


class FrameCacheError(RapDeployError):
    """The frame cache cannot store an entry (a full disk, a folder it may not write): exit 2, one line. Not a
    :class:`~rap_deploy.errors.UsageError`: callers that take those for a bad request or an undecodable video (the
    server's thumbnails) must not blame the video or the client for the machine's disk."""

    exit_code = 2


class FrameCache:
    """Decode-once cache of sampled frames under ``root``; ``FrameCache(None)`` decodes every time (no caching).

    ``hits``, ``misses`` and ``rebuilt`` count lookups served from disk, decoded, and corrupt entries replaced.
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0
        self.rebuilt = 0
        self._swept: set[Path] = set()  # sub-folders whose stale temporaries this cache removed (first look-up)

    @classmethod
    def default(cls, workspace: str | os.PathLike[str] | None = None) -> FrameCache:
        """The cache in the workspace: ``<workspace>/cache/frames`` (see :func:`default_cache_dir`)."""
        return cls(default_cache_dir(workspace))

    def __repr__(self) -> str:
        return f"FrameCache({str(self.root) if self.root else None!r})"

    def key(
        self,
        path: str | Path,
        sampling: FrameSamplingConfig,
        preprocess: PreprocessConfig,
        start: float | None = None,
        end: float | None = None,
    ) -> str:
        """Return the entry key (hex sha256) of a video file and its decoding settings."""
        recipe = {
            "format": CACHE_FORMAT,
            "content_sha256": file_digest(path),
            "sampling": sampling.to_dict(),
            "preprocess": preprocess.to_dict(),
            "start": None if start is None else float(start),
            "end": None if end is None else float(end),
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    def _key_of_video(self, path: Path, sampling: FrameSamplingConfig, preprocess: PreprocessConfig,
                      start: float | None, end: float | None) -> str:
        """:meth:`key`, with a file that cannot be read (hashing it) raised as that video's
        :class:`VideoDecodeError`, as :func:`decode_video` reports it without the cache."""
        try:
            return self.key(path, sampling, preprocess, start, end)
        except FileNotFoundError:
            raise VideoDecodeError(path, "missing") from None
        except OSError as exc:
            raise VideoDecodeError(path, f"cannot read: {exc.strerror or exc}") from None

    def entry_path(self, key: str) -> Path:
        """Return where the entry ``key`` lives (``<root>/<key[:2]>/<key>.npz``)."""
        if self.root is None:
            raise ValueError("FrameCache(None) has no entries")
        return self.root / key[:2] / f"{key}.npz"

    def get(
        self,
        path: str | Path,
        sampling: FrameSamplingConfig,
        preprocess: PreprocessConfig,
        start: float | None = None,
        end: float | None = None,
    ) -> DecodedVideo:
        """Return the decoded video, from the cache when present, else decoded with :func:`decode_video` and stored.

        Raises :class:`VideoDecodeError` like :func:`decode_video` (failures are not cached), and
        :class:`FrameCacheError` when the entry cannot be stored (``ENOSPC``, ``EACCES``).
        """
        path = Path(path)
        if self.root is None:
            self.misses += 1
            return decode_video(path, sampling, preprocess, start, end)
        require_video_file(path)
        before = file_identity(path)
        entry = self.entry_path(self._key_of_video(path, sampling, preprocess, start, end))
        if entry.parent not in self._swept:
            self._swept.add(entry.parent)
            remove_stale_temporaries(entry.parent)
        if entry.is_file():
            video = _load_entry(entry, sampling, preprocess)
            if video is not None:
                self.hits += 1
                return video
            entry.unlink(missing_ok=True)
            self.rebuilt += 1
        self.misses += 1
        video = decode_video(path, sampling, preprocess, start, end)
        if file_identity(path) == before:  # else the frames may be of other content than the key's: not stored
            self._store(entry, video, path)
        return video


    def _store(self, entry: Path, video: DecodedVideo, path: Path) -> None:
        """Store ``video`` as ``entry``; an OS error (a full disk) is raised as one line, :class:`FrameCacheError`."""
        try:
            _save_entry(entry, video)
        except OSError as exc:
            raise FrameCacheError(f"cannot store the decoded frames of {path} in the frame cache {self.root}: "
                                  f"{exc.strerror or exc}; free space there or pass another --cache-dir") from None


def _save_entry(entry: Path, video: DecodedVideo) -> None:
    # np.savez adds ".npz" to names that lack it, so write through an open file object. The temporary file is locked
    # from its creation until after its rename (the lock is released last), so no sweep takes it for a killed one.
    with _locked_while_written() as lock, atomic_path(entry) as tmp:
        lock(tmp)
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                frames=video.frames,
                mask=video.mask,
                seconds=np.float64(video.seconds),
                num_frames=np.int64(video.num_frames),
            )
        crash_point("cache.entry-written")


@contextlib.contextmanager
def _locked_while_written() -> Iterator[Callable[[Path], None]]:
    """Yield ``lock(path)``, which takes an exclusive ``flock`` on ``path``; every lock taken is released on exit.
    Where the filesystem has no locks (``flock`` fails), the entry is written unlocked: only the age then keeps a
    sweep off it, as the cache must still work there."""
    fds: list[int] = []

    def lock(path: Path) -> None:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        fds.append(fd)
        with contextlib.suppress(ImportError, OSError):
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)

    try:
        yield lock
    finally:
        for fd in fds:
            os.close(fd)


def remove_stale_temporaries(folder: Path, min_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the hidden temporary entry files (``.*.tmp``) in ``folder`` that no writer holds locked and that are
    older than ``min_age`` seconds: the ones writers killed while storing an entry left (``SIGKILL`` runs no cleanup).
    Returns the files deleted; a file that cannot be examined is left alone. Does nothing where ``flock`` is missing.
    """
    try:
        import fcntl
    except ImportError:
        return []
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return []
    return [folder / name for name in names if _remove_if_stale(folder / name, min_age, fcntl)]


def _remove_if_stale(path: Path, min_age: float, fcntl) -> bool:
    """Delete ``path`` when no writer holds its lock and it was last written over ``min_age`` seconds ago."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a live writer holds LOCK_EX: BlockingIOError
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < min_age:
            return False
        if os.stat(path, follow_symlinks=False).st_ino != st.st_ino:
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _load_entry(entry: Path, sampling: FrameSamplingConfig, preprocess: PreprocessConfig) -> DecodedVideo | None:
    """Read an entry back; return None when it is unreadable or does not have the expected shapes."""
    size = preprocess.image_size
    try:
        with np.load(entry, allow_pickle=False) as data:
            frames = data["frames"]
            mask = data["mask"]
            seconds = float(data["seconds"])
            num_frames = int(data["num_frames"])
    except Exception:  # zipfile, zlib, numpy and OS errors all mean the same thing here: rebuild the entry
        return None
    if (
        frames.dtype != np.uint8
        or frames.shape != (sampling.max_frames, size, size, 3)
        or mask.dtype != np.bool_
        or mask.shape != (sampling.max_frames,)
        or int(mask.sum()) != num_frames
        or num_frames < 1  # the decoder never writes an empty video, and real frames come first
        or not mask[:num_frames].all()
        or not np.isfinite(seconds)
    ):
        return None
    return DecodedVideo(frames=frames, mask=mask, seconds=seconds, num_frames=num_frames)

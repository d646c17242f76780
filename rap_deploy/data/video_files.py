"""Where a dataset's video files are: its videos folder (``videos/``, the one CLIP4Clip's README names or the one the
dataset's own release extracts to) and each listed video's file in it, found by name or stem whatever its extension or
sub-folder. A video that is not there gets the path it would have, so ``data-check`` and training report it by name.
"""

from __future__ import annotations

import os
from collections import deque
from itertools import islice
from pathlib import Path
from typing import NamedTuple

VIDEO_DIR = "videos"
# The video folders CLIP4Clip's README trains from (``--features_path ${DATA_PATH}/<name>``), read when the dataset
# folder has no videos/ of its own.
CLIP4CLIP_VIDEO_DIRS = {"msrvtt": "MSRVTT_Videos", "msvd": "MSVD_Videos", "didemo": "DiDeMo_Videos",
                        "activitynet": "Activity_Videos"}
# The folders a dataset's official release extracts its videos to: MSVD's YouTubeClips.tar holds
# YouTubeClips/<id>.avi (-4wsuPCjDBc_5_15.avi), the ids its list files name.
RELEASE_VIDEO_DIRS = {"msvd": ("YouTubeClips",)}
# At most this many entries (of a folder and its sub-folders) are looked at to tell whether a candidate folder holds a
# video file (a folder of videos answers at its first entry; one of 100,000 videos is not listed in full to find out);
# not folder_layout.MAX_ENTRIES_SEARCHED_FOR_DATASET, which bounds the look for a dataset folder in a --data-root
MAX_ENTRIES_SEARCHED_FOR_VIDEO = 2000
# When every video of a split is missing from its videos folder, the hint names other sub-folders of the --data-root
# that hold video files (:func:`video_files_near`): at most this many entries of the root are looked at, and this
# many in each sub-folder, so an error path over a root of 100,000 entries or folders of frames stays a bounded look
MAX_ENTRIES_SEARCHED_FOR_HINT = 200
# ... and at most about this many in all its sub-folders together (entries and folders listed): 200 sub-folders of 200
# sub-folders each were 40,201 folders listed, 4.3 s on a local disk, minutes on a network one, for an error message
MAX_ENTRIES_SEARCHED_FOR_HINT_IN_ALL = 10 * MAX_ENTRIES_SEARCHED_FOR_HINT
# A video not in its folder's top level is looked for in every sub-folder (:class:`StemFinder`), at most this many
# entries in all (files and folders): ActivityNet's 20,000 videos are 2 % of it; a link to / listed a whole machine
MAX_ENTRIES_WALKED_FOR_VIDEOS = 1_000_000
# (.mts, .m2ts: camcorder files, which DiDeMo's Flickr videos include)
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".3gp", ".flv", ".wmv",
                    ".mts", ".m2ts", ".3g2", ".ogv", ".vob", ".asf", ".f4v")


def video_folder_candidates(root: Path, dataset: str) -> list[Path]:
    """The folders under ``root`` that may hold ``dataset``'s videos, in order of preference: ``videos/``, the folder
    CLIP4Clip's README names (:data:`CLIP4CLIP_VIDEO_DIRS`), then the release's own (:data:`RELEASE_VIDEO_DIRS`)."""
    names = [VIDEO_DIR, CLIP4CLIP_VIDEO_DIRS[dataset], *RELEASE_VIDEO_DIRS.get(dataset, ())]
    return [root / name for name in names]


def videos_folder(root: Path, dataset: str) -> Path:
    """The folder of ``dataset``'s videos under its folder ``root``: the first of :func:`video_folder_candidates`
    where a video file was found (:func:`video_file_seen`), else the first that holds too many entries to tell
    (presumed to hold videos), else the first that exists (an empty one: every video is then missing from it), else
    ``videos/``.

    An empty folder never wins over one with videos (a user who made ``videos/`` and then downloaded into
    ``MSRVTT_Videos/`` had every video 'missing'), nor does a large folder where no video file was seen (extracted
    frames, thousands of them) win over one where one was. When several hold videos the first is read, alone: the
    folders are never merged, as two folders are two copies (a re-encoded ``videos/`` beside the originals, a partial
    download beside a full one) and reading some videos from each would mix them. Nor is it refused: a user who
    unpacks the official archive beside a working ``videos/`` would have training, verify and index stop for a folder
    they may not mean to use, and the order is fixed and documented. ``data-check`` names the folders left unread
    (:func:`unread_video_folders`), so the choice is never silent where a dataset is checked.
    """
    return _chosen_folder(root, _candidates_seen(root, dataset))


def unread_video_folders(root: Path, dataset: str) -> list[Path]:
    """The candidate folders (:func:`video_folder_candidates`) that hold video files but are not the one
    :func:`videos_folder` reads, nor a link to it (``MSRVTT_Videos -> videos``: the same videos, read): ``[]`` when at
    most one holds videos. Each candidate is looked at once, for both (:func:`video_folder_choice`)."""
    return video_folder_choice(root, dataset)[1]


def video_folder_choice(root: Path, dataset: str) -> tuple[Path, list[Path]]:
    """:func:`videos_folder` and :func:`unread_video_folders` of ``root`` together, each candidate folder looked at
    once for both (a look of up to :data:`MAX_ENTRIES_SEARCHED_FOR_VIDEO` entries of a possibly slow disk)."""
    seen = _candidates_seen(root, dataset)
    chosen = _chosen_folder(root, seen)
    return chosen, [folder for folder, held in seen.items() if held is not False and not _same_folder(folder, chosen)]


def _candidates_seen(root: Path, dataset: str) -> dict[Path, bool | None]:
    """The existing candidate folders (:func:`video_folder_candidates`, in order), each with what
    :func:`video_file_seen` tells of it."""
    return {folder: video_file_seen(folder) for folder in video_folder_candidates(root, dataset) if folder.is_dir()}


def _chosen_folder(root: Path, seen: dict[Path, bool | None]) -> Path:
    """The folder :func:`videos_folder` reads, from the candidates ``seen`` (:func:`_candidates_seen`)."""
    found = next((folder for folder, held in seen.items() if held is True), None)
    presumed = next((folder for folder, held in seen.items() if held is None), None)
    return found or presumed or next(iter(seen), root / VIDEO_DIR)


class VideoFilesNear(NamedTuple):
    """What :func:`video_files_near` saw in a data root: whether the root's own entries include a video file, and
    the sub-folders of it that hold one."""

    in_root: bool
    folders: list[Path]


def video_files_near(root: Path, besides: Path, most: int = 3, named: tuple[Path, ...] = ()) -> VideoFilesNear:
    """Where a user whose videos are all missing from ``besides`` may have put them, from one bounded look at the
    data root ``root``: ``in_root`` is True when a file with a video extension is among the root's first
    :data:`MAX_ENTRIES_SEARCHED_FOR_HINT` entries (videos unpacked straight into the root, beside its annotation
    files; False when ``root`` is ``besides`` or one of ``named``), read from the same listing that finds its
    sub-folders; ``folders`` holds up to ``most`` sub-folders of ``root`` (by name, among those first entries) other
    than ``besides`` or a link to it, one of ``named`` (folders the caller names already), or a link to ``root`` or a
    folder above it (``current -> .``: naming it would name ``root`` itself), where a video file was seen (each
    looked into once, at most :data:`MAX_ENTRIES_SEARCHED_FOR_HINT` entries each and
    :data:`MAX_ENTRIES_SEARCHED_FOR_HINT_IN_ALL` in all). ``(False, [])`` when ``root`` cannot be read."""
    try:
        with os.scandir(root) as entries:
            first = list(islice(entries, MAX_ENTRIES_SEARCHED_FOR_HINT))
            folders = sorted(Path(entry.path) for entry in first if _is_folder(entry))
    except OSError:
        return VideoFilesNear(False, [])
    in_root = (not any(_same_folder(root, other) for other in (besides, *named))
               and any(_is_video_file(entry) for entry in first))
    return VideoFilesNear(in_root, _sub_folders_with_videos(root, folders, besides, most, named))


def _sub_folders_with_videos(root: Path, folders: list[Path], besides: Path, most: int,
                             named: tuple[Path, ...]) -> list[Path]:
    """Up to ``most`` of ``root``'s sub-folders ``folders`` (in order) where a video file was seen, skipping
    ``besides``, ``named`` and links to ``root`` or above it, within :data:`MAX_ENTRIES_SEARCHED_FOR_HINT` entries
    each and :data:`MAX_ENTRIES_SEARCHED_FOR_HINT_IN_ALL` in all."""
    real_root = os.path.realpath(root)
    found: list[Path] = []
    left = MAX_ENTRIES_SEARCHED_FOR_HINT_IN_ALL
    for folder in folders:
        if len(found) == most or left <= 0:
            break
        if _holds_folder(folder, real_root) or any(_same_folder(folder, other) for other in (besides, *named)):
            continue
        seen, cost = _look_for_video_file(folder, min(MAX_ENTRIES_SEARCHED_FOR_HINT, left))
        left -= cost
        if seen is True:
            found.append(folder)
    return found


def _holds_folder(folder: Path, real: str) -> bool:
    """Whether ``folder`` is a link to the real folder ``real`` (an :func:`os.path.realpath`) or one above it (a
    folder that is no link is neither: it is below the folder listed)."""
    if not folder.is_symlink():
        return False
    return _inside(real, os.path.realpath(folder))


def _same_folder(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one folder (the same path, or links to one real folder); False when either cannot
    be looked at."""
    try:
        return a == b or os.path.samefile(a, b)
    except OSError:
        return False


def holds_video_file(folder: Path, limit: int = MAX_ENTRIES_SEARCHED_FOR_VIDEO) -> bool:
    """Whether ``folder`` or a sub-folder of it (linked ones too, each once) holds a file with a video extension
    (:data:`VIDEO_EXTENSIONS`), as far as ``limit`` entries tell (:func:`video_file_seen`): True when one was found
    or too many entries were met to tell (a folder that large is presumed a dataset's, not listed in full), False
    for a folder without one or that cannot be read."""
    return video_file_seen(folder, limit) is not False


def video_file_seen(folder: Path, limit: int = MAX_ENTRIES_SEARCHED_FOR_VIDEO) -> bool | None:
    """Look at the entries of ``folder`` and its sub-folders (linked ones too, each once) breadth first, stopping at
    the first file with a video extension: True when one was found, None when ``limit`` entries were looked at
    without one (too many to tell), False when every entry was looked at and none is a video file, or the folder
    cannot be read."""
    return _look_for_video_file(folder, limit)[0]


def _look_for_video_file(folder: Path, limit: int) -> tuple[bool | None, int]:
    """What :func:`video_file_seen` tells of ``folder`` within ``limit`` entries, and what the look cost: the entries
    looked at plus the folders listed (an empty folder costs its listing; at most ``2 * limit + 1``)."""
    seen: set[tuple[int, int]] = set()
    _first_visit(folder, seen)
    pending = deque([folder])
    looked_at = listed = 0
    while pending:
        listed += 1
        try:
            with os.scandir(pending.popleft()) as entries:
                for entry in entries:
                    looked_at += 1
                    if looked_at > limit:
                        return None, looked_at + listed
                    if _is_video_file(entry):
                        return True, looked_at + listed
                    if _is_folder(entry) and _first_visit(Path(entry.path), seen):
                        pending.append(Path(entry.path))
        except OSError:
            continue
    return False, looked_at + listed


def _is_video_file(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is a file (or a link to one) whose name ends in a video extension."""
    if Path(entry.name).suffix.lower() not in VIDEO_EXTENSIONS:
        return False
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is a folder (or a link to one); False when it cannot be told."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def msrvtt_video(videos_dir: Path, vid: str, finders: dict[Path, StemFinder] | None = None) -> Path:
    """``videos/<id>.mp4``, else ``<id>.webm`` (CLIP4Clip's fallback), each also under ``videos/all/`` (the layout
    of the unzipped MSRVTT.zip CLIP4Clip's README links); else a file of that stem in any sub-folder (the official
    release's ``TrainValVideo/`` and ``TestVideo/``), found by a :class:`StemFinder` kept in ``finders``."""
    for folder in (videos_dir, videos_dir / "all"):
        for ext in (".mp4", ".webm"):
            if (folder / f"{vid}{ext}").exists():
                return folder / f"{vid}{ext}"
    finders = {} if finders is None else finders
    if videos_dir not in finders:
        finders[videos_dir] = StemFinder(videos_dir)
    return finders[videos_dir].find(vid, default_ext=".mp4")


class StemFinder:
    """Finds a video file by its stem anywhere under a folder, whatever its extension (.mp4 preferred).

    The folder is walked once, depth first in name order, each real folder once, at most
    :data:`MAX_ENTRIES_WALKED_FOR_VIDEOS` entries. Linked folders are entered (datasets keep videos on other disks
    behind them) unless the link leads to the data root ``within`` (default: the folder's parent) or a folder above
    it (``escape -> /`` would walk the whole machine), or, from inside a linked folder outside the data root, out of
    that folder. What was not walked is in :attr:`not_searched`: a video only there is missing, never found elsewhere.
    """

    def __init__(self, folder: Path, within: Path | None = None) -> None:
        self.folder = folder
        self._by_stem: dict[str, list[Path]] = {}
        self._by_name: dict[str, list[Path]] = {}
        # what the walk left out, for reports: "LINK (links to REAL, outside ...)", "FOLDER and after (... entries)"
        self.not_searched: list[str] = []
        if folder.is_dir():
            self._walk(folder, os.path.realpath(within if within is not None else folder.parent))

    def _walk(self, folder: Path, root: str) -> None:
        """Index the files under ``folder``; ``root`` is the data root's real path."""
        seen: set[tuple[int, int]] = set()
        _first_visit(folder, seen)
        real = os.path.realpath(folder)  # a videos/ linked to another disk: its links stay on that disk's folder
        # each folder to walk, with the real folder its links must stay in
        pending: list[tuple[Path, str]] = [(folder, root if _inside(real, root) else real)]
        left = MAX_ENTRIES_WALKED_FOR_VIDEOS
        while pending:
            current, bound = pending.pop()
            try:
                with os.scandir(current) as listing:
                    entries = sorted(islice(listing, left + 1), key=lambda entry: entry.name)
            except OSError:
                continue
            if len(entries) > left:
                self.not_searched.append(f"{current} and the folders after it (the search stops after "
                                         f"{MAX_ENTRIES_WALKED_FOR_VIDEOS:,} entries)")
                return
            left -= len(entries)
            subfolders = []
            for entry in entries:
                if _is_folder(entry):
                    inner = self._entered(Path(entry.path), bound, root)
                    if inner is not None and _first_visit(Path(entry.path), seen):
                        subfolders.append((Path(entry.path), inner))
                else:
                    self._by_name.setdefault(entry.name, []).append(Path(entry.path))
                    if Path(entry.name).suffix.lower() in VIDEO_EXTENSIONS:
                        self._by_stem.setdefault(Path(entry.name).stem, []).append(Path(entry.path))
            pending.extend(reversed(subfolders))  # the first by name is walked next, as os.walk did

    def _entered(self, path: Path, bound: str, root: str) -> str | None:
        """The real folder the links under ``path`` must stay in when the walk enters it (``bound``, the one its
        parent is in, for a folder that is no link or a link inside ``bound``; ``root`` for a link into the data root
        ``root``; the link's own real folder for a link from inside the data root to a folder elsewhere), or None when
        the walk must not enter it (recorded in :attr:`not_searched`)."""
        if not path.is_symlink():
            return bound
        real = os.path.realpath(path)
        for folder in (root, bound):
            if _inside(real, folder) and real != folder:
                return folder
        if bound == root and not _inside(root, real):
            return real
        where = "a folder holding the data root" if _inside(root, real) else f"outside {bound}"
        self.not_searched.append(f"{path} (a link to {real}, {where})")
        return None

    def find(self, vid: str, default_ext: str, alternatives: tuple[str, ...] = ()) -> Path:
        """Return the file for ``vid``: the file of that very name (directly in the folder first, then, when the
        name has an extension, in a sub-folder, as CLIP4Clip walks it), else one whose stem is ``vid``, ``vid``
        without a video extension or an alternative; when none exists, the path it would have
        (``folder/<vid><default_ext>``)."""
        stems = [vid, *alternatives]
        exact = self.folder / vid
        if exact.is_file():  # the listed name itself, whatever its extension (DiDeMo keeps Flickr's: .mts, .3gp...)
            return exact
        if Path(vid).suffix and self._by_name.get(vid):  # a name with an extension (not a stray 'abc' beside abc.avi)
            return sorted(self._by_name[vid], key=str)[0]
        if Path(vid).suffix.lower() in VIDEO_EXTENSIONS:
            stems.append(Path(vid).stem)
        for stem in stems:
            found = self._by_stem.get(stem)
            if found:
                return sorted(found, key=lambda p: (p.suffix.lower() != ".mp4", str(p)))[0]
        return self.folder / (vid if Path(vid).suffix.lower() in VIDEO_EXTENSIONS else f"{vid}{default_ext}")


def _inside(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is the real folder ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _first_visit(folder: Path, seen: set[tuple[int, int]]) -> bool:
    """True the first time the real folder behind ``folder`` is met (recorded in ``seen``); False after, or when
    it cannot be read."""
    try:
        st = folder.stat()
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True

"""Where a dataset's video files are: its videos folder (``videos/`` or the one CLIP4Clip's README names) and each
listed video's file in it, found by name or stem whatever its extension or sub-folder. A video that is not there gets
the path it would have, so ``data-check`` and training report it by name.
"""

from __future__ import annotations

import os
from pathlib import Path

VIDEO_DIR = "videos"
# The video folders CLIP4Clip's README trains from (``--features_path ${DATA_PATH}/<name>``), read when the dataset
# folder has no videos/ of its own.
CLIP4CLIP_VIDEO_DIRS = {"msrvtt": "MSRVTT_Videos", "msvd": "MSVD_Videos", "didemo": "DiDeMo_Videos",
                        "activitynet": "Activity_Videos"}
# (.mts, .m2ts: camcorder files, which DiDeMo's Flickr videos include)
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".3gp", ".flv", ".wmv",
                    ".mts", ".m2ts", ".3g2", ".ogv", ".vob", ".asf", ".f4v")


def videos_folder(root: Path, dataset: str) -> Path:
    """The folder of ``dataset``'s videos under its folder ``root``: ``videos/`` when it exists, else the folder
    CLIP4Clip's README names (``MSRVTT_Videos/``, ``MSVD_Videos/``, ``DiDeMo_Videos/``, ``Activity_Videos/``) when that
    one does (else ``videos/``, where every video is then missing)."""
    own = root / VIDEO_DIR
    theirs = root / CLIP4CLIP_VIDEO_DIRS[dataset]
    return theirs if not own.is_dir() and theirs.is_dir() else own


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
    """Finds a video file by its stem anywhere under a folder, whatever its extension (.mp4 preferred)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._by_stem: dict[str, list[Path]] = {}
        self._by_name: dict[str, list[Path]] = {}
        if folder.is_dir():
            seen: set[tuple[int, int]] = set()
            _first_visit(folder, seen)
            # linked folders are entered (datasets keep videos on other disks behind them), each real folder once
            for dirpath, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = [d for d in sorted(dirs) if _first_visit(Path(dirpath) / d, seen)]
                for name in files:
                    p = Path(dirpath) / name
                    self._by_name.setdefault(name, []).append(p)
                    if p.suffix.lower() in VIDEO_EXTENSIONS:
                        self._by_stem.setdefault(p.stem, []).append(p)

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

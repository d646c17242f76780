"""The shard store: per-video tensors in ``.npy`` files, written atomically, read row by row.

A shard is a folder ``LIB/shards/shard-NNNNNN/`` with one ``<tensor>.npy`` per stored tensor (``video_emb`` and the
model's re-rank tensors, in the dtypes of ``rap_deploy.graphs.INDEX_DTYPES``), ``videos.json`` (id, source path,
segment and content sha256 per row) and ``shard.json`` (its manifest entry). It is written into a temporary sibling
folder and renamed into place, so a shard either exists complete or not at all: that is what makes indexing
resumable.

Reading: every file's size and ``.npy`` header (dtype, shape, C order) are checked against the manifest when the
library opens, and (with full verification) its sha256. Rows are then read with positioned reads (``os.pread``) into
a buffer the caller owns: a search touches only its candidates' rows, the process holds no mapping of the store (so
its memory does not grow with the library, whatever queries it answers), and a file truncated after opening gives a
:class:`~rap_deploy.errors.DamagedArtifactError` naming it rather than a ``SIGBUS``. The files stay plain ``.npy``,
readable with ``np.load(path, mmap_mode="r", allow_pickle=False)``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.atomic import sha256_file
from rap_deploy.bounds import read_manifest_text
from rap_deploy.errors import CheckFailedError, DamagedArtifactError, LibraryChangedError
from rap_deploy.library.manifest import FILE_STAT_FIELDS, SHARDS_DIR, entry_path

SHARD_RECORD = "shard.json"
VIDEOS_FILE = "videos.json"
VIDEO_FIELDS = ("video_id", "path", "start", "end", "sha256")


def file_stat(st: os.stat_result) -> tuple[int, int, int, int]:
    """The :data:`FILE_STAT_FIELDS` of ``st``, in their order: what changes when a file's content does."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def shard_name(number: int) -> str:
    """The folder name of shard ``number`` (``shard-000042``)."""
    return f"shard-{number:06d}"


def shard_number(name: str) -> int | None:
    """The number in a shard folder name, or ``None`` for any other name."""
    if name.startswith("shard-") and name[6:].isdigit():
        return int(name[6:])
    return None


# ------------------------------------------------------------------------------------------------------- writing
def write_shard(root: Path, name: str, row_offset: int, arrays: dict[str, np.ndarray], videos: dict[str, list[Any]],
                skipped: list[dict[str, str]], plan_sha256: str | None = None) -> dict[str, Any]:
    """Write shard ``name`` of library ``root`` atomically and return its manifest entry.

    ``arrays`` maps tensor name to ``[rows, ...]`` arrays already in their stored dtype; ``videos`` holds the
    :data:`VIDEO_FIELDS` lists (one value per row; the :data:`FILE_STAT_FIELDS` lists too when given); ``skipped``
    the videos of this shard that could not be decoded; ``plan_sha256`` the digest of the plan entry it realises
    (so a resumed build only keeps shards of its own plan).
    The files go to a temporary folder which is renamed to ``shards/<name>`` (an existing shard of that name is
    replaced: it was found incomplete or damaged).
    """
    shards = Path(root) / SHARDS_DIR
    shards.mkdir(parents=True, exist_ok=True)
    final = shards / name
    tmp = shards / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files: dict[str, Any] = {}
        rows = len(videos["video_id"])
        for tensor, arr in arrays.items():
            if arr.shape[0] != rows:
                raise ValueError(f"{tensor} has {arr.shape[0]} rows for {rows} videos")
            path = tmp / f"{tensor}.npy"
            with open(path, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            files[tensor] = _file_entry(path, name, dtype=str(arr.dtype), shape=list(arr.shape))
        # the first row too: sha256-checked with the ids, so a manifest that moves a shard's rows is caught
        listed = {k: videos[k] for k in (*VIDEO_FIELDS, *FILE_STAT_FIELDS) if k in videos}
        _write_json_synced(tmp / VIDEOS_FILE, {**listed, "row_offset": int(row_offset)})
        files["videos"] = _file_entry(tmp / VIDEOS_FILE, name)
        entry = {"name": name, "row_offset": int(row_offset), "rows": rows, "files": files, "skipped": skipped,
                 "plan_sha256": plan_sha256}
        _write_json_synced(tmp / SHARD_RECORD, entry)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(shards)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _file_entry(path: Path, shard: str, **extra: Any) -> dict[str, Any]:
    return {"file": f"{SHARDS_DIR}/{shard}/{path.name}", "bytes": path.stat().st_size, "sha256": sha256_file(path),
            **extra}


def _write_json_synced(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def committed_shard(root: Path, name: str, plan_sha256: str | None, verify_hash: bool = True,
                    row_offset: int | None = None) -> dict[str, Any] | None:
    """The entry of shard ``name`` when it was committed for the plan entry with digest ``plan_sha256`` (first row
    ``row_offset`` when given) and its files still match it (each in the shard's own folder, sizes, ``videos.json``
    and its rows, and sha256 with ``verify_hash``), else ``None`` (absent, interrupted, damaged, edited, or left by
    another plan: the caller re-encodes it)."""
    folder = Path(root) / SHARDS_DIR / name
    try:
        entry = json.loads(read_manifest_text(folder / SHARD_RECORD, "shard record"))  # bounded, not too deep
        if entry.get("name") != name or entry.get("plan_sha256") != plan_sha256 or \
                row_offset not in (None, entry.get("row_offset")) or not _record_fields_ok(entry):
            return None
        for f in entry["files"].values():
            if not isinstance(f["file"], str) or f["file"] != f"{SHARDS_DIR}/{name}/{Path(f['file']).name}":
                return None  # a shard.json pointing at another shard's (or any other) file
            path = entry_path(Path(root), f["file"])
            if path.stat().st_size != f["bytes"] or (verify_hash and sha256_file(path) != f["sha256"]):
                return None
        read_videos(Path(root), entry)  # its rows, first row and sha256 as the manifest will check them
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CheckFailedError):
        return None
    return entry


def _record_fields_ok(entry: dict[str, Any]) -> bool:
    """Whether the fields of a shard.json that the build takes over without reading them from the files are
    well-formed: its skipped videos (listed in the report, printed by the CLI) and each tensor's dtype and shape (the
    library's tensor shapes come from them)."""
    rows, skipped = entry.get("rows"), entry.get("skipped", [])
    if type(rows) is not int or rows < 0 or not isinstance(skipped, list):
        return False
    if not all(isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("video_id", "path", "reason"))
               for s in skipped):
        return False
    return all(isinstance(f.get("dtype"), str) and isinstance(f.get("shape"), list) and f["shape"][:1] == [rows]
               and all(type(n) is int and n > 0 for n in f["shape"][1:])
               for key, f in entry["files"].items() if key != "videos")


def remove_stale(root: Path, keep: set[str]) -> list[str]:
    """Delete temporary shard folders and shard folders not named in ``keep``; return what was deleted."""
    shards = Path(root) / SHARDS_DIR
    gone = []
    if not shards.is_dir() or shards.is_symlink():  # never delete through a link (the builder refuses one first)
        return gone
    for child in shards.iterdir():
        stale_tmp = child.name.startswith(".tmp-shard-")
        stale_shard = shard_number(child.name) is not None and child.name not in keep
        if child.is_dir() and not child.is_symlink() and (stale_tmp or stale_shard):
            shutil.rmtree(child, ignore_errors=True)
            gone.append(child.name)
    return gone


# ------------------------------------------------------------------------------------------------------- reading
@dataclass
class TensorFile:
    """One stored tensor of one shard: ``rows`` rows of ``row_shape`` in ``dtype``, starting at byte ``offset``."""

    path: Path
    offset: int
    rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    size: int
    identity: tuple[int, ...] = ()  # (device, inode, mtime_ns) when opened: a file replaced since is not read

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize  # Python ints: a claimed shape cannot wrap to 0

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Read rows ``rows`` (sorted local indices) into ``out`` ``[len(rows), *row_shape]`` with positioned reads,
        one per run of consecutive rows. Raises :class:`DamagedArtifactError` when the file is gone or shorter."""
        if len(rows) == 0:
            return
        if rows[0] < 0 or rows[-1] >= self.rows:
            raise DamagedArtifactError(f"library shard file {self.path} has rows 0..{self.rows - 1}, stage 1 asked for "
                                       f"{rows[0]}..{rows[-1]}: the stage-1 index does not match the shards; "
                                       "re-index the library")
        flat = out.reshape(len(rows), -1).view(np.uint8).reshape(len(rows), self.row_bytes)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise LibraryChangedError(f"library shard file {self.path} cannot be opened ({exc.strerror}) though it "
                                      f"was there when this process opened the library: {_CHANGED_FIX}") from None
        try:
            st = os.fstat(fd)
            if st.st_size != self.size:
                raise DamagedArtifactError(f"library shard file {self.path} changed size since the library was opened "
                                           f"({st.st_size} bytes, manifest {self.size}); re-index it")
            if self.identity and _identity(st) != self.identity:
                raise LibraryChangedError(f"library shard file {self.path} was replaced since this process opened "
                                          f"the library: {_CHANGED_FIX}")
            start = 0
            while start < len(rows):
                stop = start + 1
                while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                    stop += 1
                _pread_into(fd, flat[start:stop], self.offset + int(rows[start]) * self.row_bytes, self.path)
                start = stop
        finally:
            os.close(fd)


_CHANGED_FIX = ("`rapdeploy index` updated the library (or it was damaged); reopen it (restart the server), and "
                "re-index it if this persists")


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _pread_into(fd: int, buf: np.ndarray, offset: int, path: Path) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [view[done:]], offset + done)
        else:  # pragma: no cover - platforms without preadv
            chunk = os.pread(fd, len(view) - done, offset + done)
            view[done:done + len(chunk)] = chunk
            n = len(chunk)
        if n <= 0:
            raise DamagedArtifactError(f"library shard file {path} ends before row data at byte {offset + done}; "
                                       "it was truncated: re-index the library")
        done += n


# numpy parses a .npy header with ast.literal_eval, which is not thread-safe on CPython 3.11: on 3.11.7 a full test
# run once failed with "SystemError: AST constructor recursion depth mismatch" while the library opened its shards in
# a thread pool. Headers are tiny, so parsing them one at a time costs nothing.
_HEADER_PARSE = threading.Lock()


def open_tensor_file(root: Path, shard: dict[str, Any], tensor: str, dtype: str, row_shape: list[int],
                     verify_hash: bool) -> TensorFile:
    """Check one shard file against its manifest entry and return a :class:`TensorFile` for it.

    Checks: the path stays inside the library, the file exists with the recorded size, its ``.npy`` header says
    ``dtype``, C order and shape ``[rows, *row_shape]``, the header and rows fill the file exactly, and with
    ``verify_hash`` its sha256. Raises :class:`DamagedArtifactError` naming the file.
    """
    f = shard["files"][tensor]
    path = entry_path(root, f["file"])
    _check_size(path, f, shard["name"])
    want = (shard["rows"], *row_shape)
    try:
        with open(path, "rb") as fh, _HEADER_PARSE:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = fh.tell()
    except (OSError, ValueError) as exc:
        raise DamagedArtifactError(f"library shard file {path} has no valid .npy header ({exc}); re-index the "
                                   "library") from None
    if got_dtype != np.dtype(dtype) or fortran or tuple(shape) != want:
        raise DamagedArtifactError(f"library shard file {path} holds {got_dtype} {list(shape)}"
                                   f"{' (Fortran order)' if fortran else ''}, the manifest expects {dtype} "
                                   f"{list(want)}; re-index the library")
    tf = TensorFile(path, offset, shard["rows"], tuple(row_shape), np.dtype(dtype), f["bytes"],
                    _identity(path.stat()))
    if offset + tf.rows * tf.row_bytes != f["bytes"]:
        raise DamagedArtifactError(f"library shard file {path} is {f['bytes']} bytes, its header and {tf.rows} rows "
                                   f"need {offset + tf.rows * tf.row_bytes}; re-index the library")
    if verify_hash:
        check_sha256(path, f)
    return tf


# One row of a videos.json at most: an id and a path of up to PATH_MAX (4096) characters each, JSON-escaped (12 bytes
# for a character outside the BMP), its segment, sha256 and stat numbers; the file is read whole, so its size is
# bounded by its rows before it is read.
MAX_VIDEO_ROW_BYTES = 128 << 10


def read_videos(root: Path, shard: dict[str, Any]) -> dict[str, list[Any]]:
    """The ``videos.json`` of a shard (always sha256-checked: it is small and read whole). Raises
    :class:`DamagedArtifactError` naming the file when it is larger than its rows can take (:data:`MAX_VIDEO_ROW_BYTES`
    each, refused unread), damaged, or not the list of videos the manifest says."""
    f = shard["files"]["videos"]
    path = entry_path(root, f["file"])
    limit = (1 << 20) + shard["rows"] * MAX_VIDEO_ROW_BYTES
    if f["bytes"] > limit:
        raise DamagedArtifactError(f"library shard file {path} is {f['bytes']:,} bytes, more than the {shard['rows']} "
                                   f"videos of shard {shard['name']} can take ({limit:,}); it was padded or replaced: "
                                   "re-index the library")
    _check_size(path, f, shard["name"])
    data = path.read_bytes()
    import hashlib

    if hashlib.sha256(data).hexdigest() != f["sha256"]:
        raise DamagedArtifactError(f"library shard file {path} does not match its sha256 in the manifest; it was "
                                   "modified or damaged: re-index the library")
    try:
        videos = json.loads(data.decode("utf-8"))
    except RecursionError:  # nested past Python's recursion limit: no videos.json rapdeploy writes
        raise DamagedArtifactError(f"library shard file {path} is nested too deep to be a list of videos; re-index "
                                   "the library") from None
    except ValueError as exc:
        raise DamagedArtifactError(f"library shard file {path} is not valid JSON ({exc}); re-index the library") \
            from None
    if not isinstance(videos, dict) or any(not isinstance(videos.get(k), list) or len(videos[k]) != shard["rows"]
                                           for k in VIDEO_FIELDS):
        raise DamagedArtifactError(f"library shard file {path} does not list {shard['rows']} videos with "
                                   f"{', '.join(VIDEO_FIELDS)}; re-index the library")
    if not all(isinstance(v, str) for v in videos["video_id"]) or not all(isinstance(p, str) for p in videos["path"]):
        raise DamagedArtifactError(f"library shard file {path} has non-text video ids or paths; re-index the library")
    for k, low in (("bytes", 0), ("mtime_ns", -(2 ** 63)), ("ctime_ns", -(2 ** 63)), ("inode", 0)):  # pre-1970 too
        values = videos.get(k, [0] * shard["rows"])
        if not isinstance(values, list) or len(values) != shard["rows"] or \
                not all(type(v) is int and low <= v < 2 ** 63 for v in values):
            raise DamagedArtifactError(f"library shard file {path} lists {k!r} that are not {shard['rows']} "
                                       f"integers from {low}; re-index the library")
    _check_segments(videos, path)
    if videos.get("row_offset", shard["row_offset"]) != shard["row_offset"]:  # absent in libraries built before it
        raise DamagedArtifactError(f"library shard file {path} holds rows from {videos['row_offset']}, the manifest "
                                   f"puts shard {shard['name']} at row {shard['row_offset']}: the manifest was "
                                   "edited; re-index the library")
    return videos


def with_moved_paths(videos: dict[str, list[Any]], row_offset: int,
                     moved: dict[str, dict[str, Any]] | None) -> dict[str, list[Any]]:
    """A shard's ``videos`` with the paths of its rows in the manifest's ``moved`` (global row → new path and
    stat, recorded by ``index --add`` for files that moved) replaced by their new paths."""
    if not moved:
        return videos
    paths = [moved.get(str(row_offset + i), {}).get("path", p) for i, p in enumerate(videos["path"])]
    return videos | {"path": paths}


def _check_segments(videos: dict[str, list[Any]], path: Path) -> None:
    """Each video's segment ``start``/``end`` is absent (``None``) or a finite time in seconds >= 0, ``end`` after
    ``start``: they reach the decoder when its thumbnails are asked for."""
    def time_or_none(t: Any) -> bool:
        return t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0)

    for i, (start, end) in enumerate(zip(videos["start"], videos["end"], strict=True)):
        if not (time_or_none(start) and time_or_none(end)) or (start is not None and end is not None
                                                                   and end <= start):
            raise DamagedArtifactError(f"library shard file {path} gives video {i} the segment start {start!r}, end "
                                       f"{end!r}: not times in seconds; re-index the library")


def check_shard_sizes(root: Path, shards: list[dict[str, Any]]) -> None:
    """Raise :class:`DamagedArtifactError` naming the first file of ``shards`` (manifest entries) that is missing or
    not of its recorded size: one ``stat`` per file, nothing read (what ``index --add`` / ``--remove`` check before
    changing a library)."""
    for shard in shards:
        for f in shard["files"].values():
            _check_size(entry_path(root, f["file"]), f, shard["name"])


def _check_size(path: Path, f: dict[str, Any], shard: str) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        raise DamagedArtifactError(f"library shard file {path} (shard {shard}) is missing; re-index the library "
                                   "or restore the file") from None
    if size != f["bytes"]:
        raise DamagedArtifactError(f"library shard file {path} (shard {shard}) is {size} bytes, the manifest records "
                                   f"{f['bytes']}: it was truncated or modified; re-index the library")


def check_sha256(path: Path, f: dict[str, Any]) -> None:
    """Raise :class:`DamagedArtifactError` when ``path``'s sha256 is not the recorded ``f["sha256"]``."""
    got = sha256_file(path)
    if got != f["sha256"]:
        raise DamagedArtifactError(f"library file {path} has sha256 {got[:16]}…, the manifest records "
                                   f"{f['sha256'][:16]}…: it was modified or damaged; re-index the library")

"""Atomic file writes: a temporary file in the destination folder, fsync, ``os.replace``, then fsync of the folder.

A killed command therefore never leaves a half-written checkpoint, graph, engine or report behind, and a renamed file
survives a power loss. A ``SIGTERM`` unwinds through the ``finally`` below (the CLI turns it into an exception), so the
temporary file is removed; only ``SIGKILL`` can leave one (hidden, ``.<name>.*.tmp``; a long name is cut). The
commands that own a folder delete their own files' ones under its lock (:func:`remove_temporaries`: a training run,
verify's, bench's and the GPU check's reports, a library); elsewhere (a checkpoint ``init`` wrote) one stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rap_deploy.crashpoints import crash_point


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, on error delete it.

    The suffix of the temporary file defaults to the destination's, so writers that look at the extension
    (``torch.save``, ``onnx.save``, matplotlib) behave as for the real file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = _temp_affixes(dest, suffix)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        crash_point("atomic.tmp-created")
        yield tmp_path
        # mkstemp creates 0600 and some writers (safetensors) re-create the file: set the mode of an output file last
        os.chmod(tmp_path, 0o666 & ~_umask())
        # read-only: a umask that takes the owner's write bit (0o277) leaves a file its owner cannot open for writing
        with open(tmp_path, "rb" if os.name == "posix" else "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        fsync_dir(dest.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# Bytes of the destination's name (and of its suffix) kept in a temporary file's name: with the dot, random part
# and ".tmp" it stays far below the 255 bytes a file name may have, whatever the destination's name.
_TEMP_NAME_BYTES = 100
_TEMP_SUFFIX_BYTES = 32


def _temp_affixes(dest: Path, suffix: str | None) -> tuple[str, str]:
    """``(prefix, suffix)`` of ``dest``'s temporary file: ``.<name>.`` and ``<suffix>.tmp``, the name cut to
    :data:`_TEMP_NAME_BYTES` bytes and a suffix longer than :data:`_TEMP_SUFFIX_BYTES` dropped (a destination whose
    name is near the limit got a temporary name over it: ``File name too long``)."""
    suffix = dest.suffix if suffix is None else suffix
    if len(os.fsencode(suffix)) > _TEMP_SUFFIX_BYTES:
        suffix = ""
    name = os.fsencode(dest.name)[:_TEMP_NAME_BYTES].decode("utf-8", "ignore")  # no half character at the cut
    return f".{name}.", suffix + ".tmp"


def remove_temporaries(folder: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_path` writes of ``folder/<name>`` left, for each of
    ``names`` (``.<name>.<random><suffix>.tmp``, the destination's own suffix); return them.

    Only those names' regular files go: not another file's temporary (``.<name>.bak.<random>.bak.tmp``), nor a
    folder or link. The names hold no pid, so call it only while holding the lock every writer of those files takes
    (:func:`rap_deploy.locks.folder_lock`): that lock is what says their writers are dead, not writing.
    """
    folder = Path(folder)
    patterns = [re.compile(re.escape(prefix) + r"[a-z0-9_]+" + re.escape(suffix))  # [a-z0-9_]+: mkstemp's random
                for prefix, suffix in (_temp_affixes(folder / name, None) for name in names)]
    if not folder.is_dir():
        return []
    with os.scandir(folder) as entries:
        stale = [Path(e.path) for e in entries
                 if any(p.fullmatch(e.name) for p in patterns) and e.is_file(follow_symlinks=False)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``); else read once by setting it back."""
    global _UMASK
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if _UMASK is None:  # no /proc (macOS): os.umask can only be read by setting it, so do that once
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def output_file_problem(out: Path) -> str | None:
    """Why ``out`` cannot become a file (it is a folder, or lies under a file), or ``None``: checked before work
    that would only write its result at the end."""
    if out.is_dir():
        return f"{out} is a folder; name a file"
    blocker = next((q for q in out.parents if q.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return f"{out} cannot be written: {blocker} is a file, not a folder"
    return None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_text(obj: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None,
              sort_keys: bool = False) -> str:
    """``obj`` as strict JSON text: NaN and infinities become ``null`` (JSON has neither; ``json.dumps`` would write
    bare ``NaN``, which other parsers refuse), paths become strings and NumPy values plain numbers and lists.
    ``default`` converts anything else (raises ``TypeError`` without it)."""
    def fallback(o: Any) -> Any:
        try:
            return _json_default(o)
        except TypeError:
            if default is None:
                raise
            return default(o)

    return json.dumps(_finite(obj, fallback), indent=indent, sort_keys=sort_keys, allow_nan=False)


def _finite(obj: Any, convert: Callable[[Any], Any]) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {k: _finite(v, convert) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, convert) for v in obj]
    return _finite(convert(obj), convert)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (:func:`json_text`) to ``path`` atomically and return the path."""
    return write_text_atomic(path, json_text(obj, indent=indent) + "\n")


def save_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def file_identity(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """What changes whenever a file's content does: device, inode, size, modification and change times (any write
    or a replacement moves the change time, which no process can set back); None when it cannot be read. Equal
    identities before a read and after it mean the read saw the content that was there before."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a regular file's content.

    Raises ``FileNotFoundError`` for a missing file and ``IsADirectoryError`` / ``OSError`` (``EINVAL``) for anything
    that is not a regular file: a FIFO or device named by an untrusted manifest is refused without blocking on it.
    """
    with open_regular(path) as fh:
        h = hashlib.sha256()
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: Any) -> bool:
    """Whether ``value`` is a hex sha256 as :func:`sha256_file` writes it (64 lower-case hex digits): what a record
    read from an untrusted manifest or server must hold before it is compared as one."""
    return isinstance(value, str) and SHA256_HEX.fullmatch(value) is not None


def open_regular(path: str | os.PathLike[str]):
    """Open ``path`` for reading in binary mode, refusing anything but a regular file before reading a byte.

    The file is opened non-blocking (a FIFO does not wait for a writer), checked with ``fstat``, then switched back to
    blocking reads. Raises ``IsADirectoryError`` for a folder and ``OSError`` (``EINVAL``) for a FIFO, socket or
    device.
    """
    import errno
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

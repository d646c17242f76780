"""One place that turns untrusted file names into paths that stay inside their folder.

Manifests (export, engine, library) and dataset annotation files travel between machines and people, so every file
name they hold is untrusted: ``../other/graph.onnx``, ``/etc/shadow``, or a symlink planted in the folder must never
make a command read, hash, build or print anything outside it.

How to use it:

- a **manifest entry** (a file an artifact folder lists): ``resolve_entry(folder, entry, what=..., source=manifest)``
  returns ``folder / entry`` or raises :class:`UnsafePathError` (exit 1). Rules: a non-empty relative POSIX path
  (sub-folders allowed), no ``..`` component, no NUL, no backslash; no component may be a symlink (not even one
  whose target is inside the folder: rapdeploy never writes symlinks, so one is a sign of tampering, and a check of
  the target could be raced); an existing entry must be a regular file (a FIFO or device would block or never end).
  A missing file is returned as is: callers report "missing" in their own words.
- a **dataset video id**: :func:`check_plain_name` (one file name, no separators, no ``..``) before joining it to the
  videos folder. Video *files* may be symlinks: datasets are commonly assembled with them, and the annotation files
  (what travels) cannot point outside with a plain name.
- anything else that must stay inside a folder: :func:`is_inside` on resolved paths.

Errors name the source file, the entry and what to do.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from rap_deploy.errors import CheckFailedError

MAX_NAME_CHARS = 4096
MAX_ID_BYTES = 250  # a video id becomes a file name with its extension: NAME_MAX is 255 bytes


class UnsafePathError(CheckFailedError):
    """A file name from a manifest or an annotation file escapes its folder or names a non-regular file (exit 1)."""


def _where(source: str | os.PathLike[str] | None) -> str:
    return f"{source}: " if source is not None else ""


def check_relative_name(name: Any, what: str, source: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Check ``name`` lexically and return its components; raises :class:`UnsafePathError` naming it.

    Accepted: a non-empty relative POSIX path without ``..``, ``.``-only or empty components, NUL or backslash.
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(f"{_where(source)}{what} has file entry {name!r}, which is not a file name; the file "
                              "was damaged or edited: rebuild or re-download it")
    bad = None
    if len(name) > MAX_NAME_CHARS or "\0" in name or "\\" in name:
        bad = "holds a NUL, a backslash or is too long"
    elif PurePosixPath(name).is_absolute() or name.startswith("~"):
        bad = "is an absolute path"
    else:
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            bad = "has an empty, '.' or '..' component"
    if bad:
        raise UnsafePathError(f"{_where(source)}{what} entry {name!r} {bad}: it points outside its folder; refusing "
                              "it (the file was edited or tampered with; rebuild or re-download it)")
    return tuple(name.split("/"))


def resolve_entry(folder: str | os.PathLike[str], name: Any, what: str = "file",
                  source: str | os.PathLike[str] | None = None) -> Path:
    """The path of manifest entry ``name`` inside ``folder``, after the checks of the module docstring.

    ``what`` describes the entry in messages (``"engine graph video_encoder"``), ``source`` is the manifest.
    Returns ``folder / name`` (it may not exist). Raises :class:`UnsafePathError` (exit 1) for a name that escapes
    the folder, a symlink anywhere below the folder, or an entry that exists but is not a regular file.
    """
    parts = check_relative_name(name, what, source)
    base = Path(folder)
    current = base
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return base.joinpath(*parts)
        except NotADirectoryError:
            raise UnsafePathError(f"{_where(source)}{what} entry {name!r}: {current.parent} is not a folder; the "
                                  "folder is damaged, rebuild it") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"{_where(source)}{what} entry {name!r}: {current} is a symlink; artifact folders "
                                  "hold regular files only (a symlink can point anywhere), refusing it: copy the real "
                                  "file in or rebuild the folder")
        if last and not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO, socket or device"
            raise UnsafePathError(f"{_where(source)}{what} entry {name!r}: {current} is {kind}, not a regular file; "
                                  "refusing to read it: rebuild the folder")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"{_where(source)}{what} entry {name!r}: {current} is not a folder; the folder is "
                                  "damaged, rebuild it")
    return base.joinpath(*parts)


def check_plain_name(name: Any, what: str, source: str | os.PathLike[str] | None = None) -> str:
    """Check that ``name`` is one plain file name (a dataset video id): no ``/``, ``\\``, NUL, ``..`` or ``.``.

    Returns it as a string. Raises :class:`UnsafePathError` (exit 1) naming the source file and the value.
    """
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise UnsafePathError(f"{_where(source)}{what} {name!r} is not a name (a {type(name).__name__}); fix the "
                              "annotation file")
    text = str(name)
    if (not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text
            or len(text) > MAX_NAME_CHARS):
        raise UnsafePathError(f"{_where(source)}{what} {text!r} is not a plain file name (it could point outside "
                              "the dataset's videos folder); refusing it: fix the annotation file")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise UnsafePathError(f"{_where(source)}{what} {text[:40]!r}… is {len(text.encode('utf-8', 'surrogatepass'))} "
                              f"bytes long; a file name (the id and its extension) holds at most 255 bytes: fix the "
                              "annotation file")
    return text


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when ``path`` resolves (symlinks followed) to ``folder`` itself or somewhere below it."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def absent(path: str | os.PathLike[str]) -> str:
    """Why ``path``, which :meth:`Path.exists` calls missing, is not there, worded to follow the path in a message:
    ``does not exist``; for a path a symbolic link hides, ``is a symbolic link to TARGET, which does not exist`` or
    ``cannot be reached: a symbolic link on its way leads back to itself`` (:meth:`Path.exists` says False for both,
    and "does not exist" sent a user looking for a file that is there, behind a link). Raises nothing."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "cannot be reached: a symbolic link on its way leads back to itself"
        if os.path.islink(path):
            try:
                return f"is a symbolic link to {os.readlink(path)}, which does not exist"
            except OSError:
                pass
    except ValueError:  # a NUL in the name
        pass
    return "does not exist"

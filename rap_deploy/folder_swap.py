"""Replace an artifact folder in one step: at every instant the destination holds the old or the new artifact.

How to use it (while holding :func:`rap_deploy.locks.folder_lock` on ``dest``)::

    from rap_deploy.folder_swap import staged_folder

    with folder_lock(dest, "build-engine"), staged_folder(dest) as stage:
        write_everything_into(stage.path)   # a hidden sibling: .<name>.partial-<pid>
        stage.commit()                      # swap it into place

Leaving the block without :meth:`StagedFolder.commit` (an exception) deletes the staging folder; a ``SIGKILL`` leaves
it behind, hidden, and the next writer of ``dest`` deletes it. Workspace discovery
(:func:`rap_deploy.workspace.latest_child`) ignores hidden folders, so no half-written folder is ever taken for an
artifact.

The swap (:func:`swap_into_place`) uses ``renameat2(RENAME_EXCHANGE)`` on Linux: one system call exchanges the two
folders, so there is no moment without an artifact at ``dest``; the old one is then deleted from the staging name.
Where that call is missing (other systems, some filesystems), it falls back to two renames through
``.<name>.old-<pid>``; a kill between them leaves ``dest`` missing and the old folder aside, and
:func:`recover_interrupted_swap` (run by every writer before it stages) puts it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from rap_deploy.atomic import fsync_dir
from rap_deploy.crashpoints import crash_point
from rap_deploy.errors import CheckFailedError
from rap_deploy.locks import target_path

RENAME_EXCHANGE = 2
AT_FDCWD = -100
_STAGING_RE = r"\.{name}\.(partial|old)-(\d+)"
USE_EXCHANGE = True  # tests switch this off to exercise the two-rename fallback


def folder_identity(folder: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``folder``'s device and inode (a swap puts another folder, another inode, at the path); None when missing.
    A reader that compares it before and after reading a folder knows whether a swap happened meanwhile."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def folder_replaced(folder: str | os.PathLike[str], when: str, then: str) -> CheckFailedError:
    """The one refusal of a folder replaced ``when`` (``"while the engine was built from it"``...) by a concurrent
    ``build-engine --force`` or ``export --force``; ``then`` says what to do (exit 1)."""
    return CheckFailedError(f"{folder} was replaced {when} (a `rapdeploy build-engine --force` or `export --force` "
                            f"swapped a new folder in?); {then}")


def check_not_replaced(folder: str | os.PathLike[str], identity: tuple[int, int] | None, when: str,
                       then: str) -> None:
    """Raise :func:`folder_replaced` when ``folder`` is no longer the folder of ``identity`` (its
    :func:`folder_identity` when it was checked): what was read since may be the new folder's, never checked."""
    if folder_identity(folder) != identity:
        raise folder_replaced(folder, when, then)


def staging_name(dest: Path, kind: str, pid: int | None = None) -> Path:
    """``<parent>/.<name>.<kind>-<pid>`` (``kind`` partial or old)."""
    return dest.parent / f".{dest.name}.{kind}-{os.getpid() if pid is None else pid}"


def _siblings(dest: Path) -> list[tuple[Path, str, int]]:
    """The hidden staging and old folders of ``dest`` as ``(path, kind, pid)``."""
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(_STAGING_RE.format(name=re.escape(dest.name)) + "$")
    out = []
    for entry in dest.parent.iterdir():
        m = pattern.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink():
            out.append((entry, m.group(1), int(m.group(2))))
    return out


def recover_interrupted_swap(dest: Path) -> Path | None:
    """Undo a two-rename swap that was killed half-way: ``dest`` missing and ``.<name>.old-<pid>`` present.

    Call it only while holding the lock of ``dest``. Returns the folder put back, or ``None``.
    """
    if dest.exists() or dest.is_symlink():
        return None
    olds = sorted((p for p, kind, _ in _siblings(dest) if kind == "old"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return None
    os.rename(olds[-1], dest)
    fsync_dir(dest.parent)
    return olds[-1]


def remove_stale(dest: Path, keep: tuple[Path, ...] = ()) -> list[Path]:
    """Delete the staging and old folders left by killed writers of ``dest`` (call while holding its lock)."""
    removed = []
    for path, kind, _ in _siblings(dest):
        if kind in ("partial", "old") and path not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with ``renameat2(RENAME_EXCHANGE)``; False when the system lacks it."""
    if not USE_EXCHANGE:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest``, replacing what is there; the old content is deleted.

    At every instant ``dest`` is the old folder or the new one (see the module docstring for the fallback).
    Raises ``OSError`` when the renames fail (the old folder is then still in place).
    """
    new, dest = Path(new), Path(dest)
    if not dest.exists() and not dest.is_symlink():
        os.rename(new, dest)
        fsync_dir(dest.parent)
        return
    if _exchange(new, dest):
        fsync_dir(dest.parent)
        crash_point("swap.exchanged")
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    old = staging_name(dest, "old")
    if old.exists():
        shutil.rmtree(old)
    os.rename(dest, old)
    crash_point("swap.between-renames")
    os.rename(new, dest)
    fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


class StagedFolder:
    """A hidden staging folder beside ``dest`` (``path``) that :meth:`commit` swaps into place."""

    def __init__(self, dest: Path) -> None:
        self.dest = Path(dest)
        self.path = staging_name(self.dest, "partial")
        self.committed = False
        self.before_commit: Callable[[], None] | None = None  # a last check, raising to refuse the commit

    def commit(self) -> None:
        """Swap the staging folder into place (see :func:`swap_into_place`), after :attr:`before_commit` (when set)
        returned: what it raises leaves ``dest`` as it was."""
        if self.before_commit is not None:
            self.before_commit()
        swap_into_place(self.path, self.dest)
        self.committed = True

    def keep_failed(self) -> Path:
        """Keep a failed attempt for inspection as ``.<name>.failed`` (hidden; replaces an older one); returns it."""
        target = self.dest.parent / f".{self.dest.name}.failed"
        if target.exists():
            shutil.rmtree(target)
        os.rename(self.path, target)
        self.committed = True  # nothing left to clean up
        return target


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike[str]) -> Iterator[StagedFolder]:
    """Yield a fresh :class:`StagedFolder` for ``dest``; remove it on exit unless committed (or kept).

    Call while holding the lock of ``dest``: first an interrupted swap is undone and stale staging folders of killed
    writers are deleted. Raises ``OSError`` when the staging folder cannot be created.
    """
    dest = target_path(dest)
    recover_interrupted_swap(dest)
    remove_stale(dest)
    stage = StagedFolder(dest)
    stage.path.mkdir(parents=True)
    try:
        yield stage
    finally:
        if not stage.committed:
            shutil.rmtree(stage.path, ignore_errors=True)


def check_replaceable(dest: Path, force: bool, what: str, not_ours: Callable[[Path], str | None]) -> None:
    """Refuse to write ``what`` (a folder a swap replaces whole) over ``dest`` unless it is absent, empty or, with
    ``force``, a folder the command wrote: ``not_ours(dest)`` returns why it is not one (then refused), else
    ``None``. A home folder passed as ``--out`` must never be replaced. Raises :class:`UsageError` (exit 2)."""
    from rap_deploy.errors import UsageError

    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--out {dest} is a file; pass a folder for {what}")
    if not dest.exists() or not any(dest.iterdir()):
        return
    if not force:
        raise UsageError(f"{dest} already exists; pass --force to replace it or another --out")
    problem = not_ours(dest)
    if problem is not None:
        raise UsageError(f"{dest} {problem}; refusing to replace it, pass another --out")

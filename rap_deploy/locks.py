"""A lock on every folder (or file) a command writes, with the owner's pid, so a second writer is told who holds it.

How to use it::

    from rap_deploy.locks import folder_lock

    with folder_lock(out_dir, "export"):
        ...  # write into out_dir (or a staging folder beside it, see rap_deploy.folder_swap)

The lock is the hidden file ``<parent>/.<name>.lock`` beside the target (not inside it, so the target can be swapped
or deleted while locked), held with ``flock``: the kernel releases it when the owner exits, even by ``SIGKILL``, so a
crash never leaves a stale lock. The file holds the owner's pid, host, command and start time for the message the
second writer gets (:class:`FolderBusyError`, exit 2). Taking the lock also proves the parent folder is writable, so
an unwritable or non-directory workspace fails here, first, with one line. The lock is re-entrant within a thread
(a library call that exports while already holding the lock does not block itself); another thread of the same
process is a second writer and gets :class:`FolderBusyError`. ``flock`` is advisory and local:
it coordinates rapdeploy commands on one machine, not other programs or NFS clients.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rap_deploy.errors import UsageError
from rap_deploy.workspace import user_path

_HELD: dict[tuple[int, str], int] = {}  # (thread, lock file) -> depth: re-entrant per thread, not per process
_HELD_LOCK = threading.Lock()
_FDS: set[int] = set()  # descriptors of the locks this process holds


def _forget_locks_in_child() -> None:
    """After ``fork``: the child (a DataLoader worker) does not own its parent's locks. Its copies of their
    descriptors are closed, or a child outliving its parent (the parent ``SIGKILL``-ed, by the OOM killer say) would
    keep the folder locked in the parent's name; the parent's own descriptors keep holding the locks."""
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()  # another thread of the parent may have held it at the fork
    for fd in _FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _FDS.clear()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


class FolderBusyError(UsageError):
    """Another process is writing the same folder (exit 2): wait for it, or write elsewhere."""


def target_path(target: str | os.PathLike[str]) -> Path:
    """``target`` made absolute; a symlink to a folder is replaced by that folder, so its lock and staging folders sit
    beside the real folder (and a swap replaces the folder, not the link)."""
    path = user_path(target, "folder").absolute()
    return path.resolve() if path.is_symlink() else path


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of ``target``: ``<parent>/.<name>.lock``."""
    target = target_path(target)
    return target.parent / f".{target.name}.lock"


def _owner_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"process {int(info['pid'])} on {info.get('host', '?')} (`rapdeploy {info.get('command', '?')}`, "
                f"since {info.get('started', '?')})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _open_parent(target: Path, what: str) -> list[Path]:
    """Create ``target``'s parent folder when missing; returns the folders this created, deepest first. Raises
    :class:`UsageError` when it cannot be created or is no folder."""
    parent = target.parent
    created = _missing_folders(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"cannot write {what} {target}: {parent} is a file, not a folder; pass another --out or "
                         "--workspace") from None
    except OSError as exc:
        raise UsageError(f"cannot write {what} {target}: cannot create {exc.filename or parent} "
                         f"({exc.strerror or exc}); pass a writable --out or --workspace") from None
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {target}: {parent} is not a folder; pass another --out or --workspace")
    return created


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors up to the first that exists, deepest first: what ``mkdir(parents=True)`` makes."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """``rmdir`` each of ``folders`` (deepest first) until one is not empty (or cannot be removed): a folder that holds
    anything, the user's files or another writer's lock, stays, and so do the folders above it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def folder_lock(target: str | os.PathLike[str], command: str, what: str = "output",
                tidy_parents: bool = False) -> Iterator[Path]:
    """Hold the write lock of ``target`` (a folder or a file) while the block runs; yields the lock file's path.

    ``command`` names the command in the message a second writer gets; ``what`` names the target in messages
    (``"export folder"``). With ``tidy_parents``, when the block leaves no ``target`` (a first build that failed and
    removed its folder), the parent folders taking the lock created are removed again, each only while empty.
    Raises :class:`FolderBusyError` (exit 2) when another process holds the lock and
    :class:`~rap_deploy.errors.UsageError` (exit 2) when the parent folder cannot be created or written.
    """
    import fcntl

    target = target_path(target)
    path = lock_path(target)
    key = (threading.get_ident(), str(path))
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield path
        finally:
            with _HELD_LOCK:
                _HELD[key] -= 1
        return
    created = _open_parent(target, what)
    fd, owner = _acquire(path, target, command, what, fcntl), os.getpid()
    with _HELD_LOCK:
        _HELD[key] = 1
        _FDS.add(fd)
    try:
        yield path
    finally:
        if os.getpid() == owner:  # a forked child leaving the block must not remove its parent's lock
            _release(key, path, fd)
            if tidy_parents and not os.path.lexists(target):  # after the release: the lock file sat in the parent
                _remove_if_empty(created)


def _release(key: tuple[int, str], path: Path, fd: int) -> None:
    with _HELD_LOCK:
        _HELD.pop(key, None)
        _FDS.discard(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)  # unlink while still locked: a waiter that opened the old file re-checks the inode
    os.close(fd)


def _acquire(path: Path, target: Path, command: str, what: str, fcntl) -> int:
    """Open, lock and stamp the lock file; returns its descriptor (see :func:`folder_lock`)."""
    for _ in range(100):
        fd, writable = _open_lock_file(path, target, what)
        _lock_or_raise(fd, path, target, what, fcntl)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous owner unlinked this file as we opened it: lock the new one instead
            os.close(fd)
            continue
        if not writable:  # another user's lock file, left by an owner that was killed: make our own instead
            _remove_unwritable(path, fd, target, what)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "target": str(target)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        return fd
    raise FolderBusyError(f"{what} {target}: could not take its lock {path} (it keeps being replaced); retry")


def _open_lock_file(path: Path, target: Path, what: str) -> tuple[int, bool]:
    """``(descriptor, writable)`` of the lock file, created when missing; a lock file this user may not write (another
    user's, in a shared workspace) is opened read-only, which ``flock`` still locks."""
    flags = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644), True
        except FileNotFoundError:
            # the parent was there (_open_parent), but a writer that just released its lock there removed it again,
            # empty (folder_lock's tidy_parents): make it again, or this writer failed for that writer's tidying
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o644), True
        except PermissionError as denied:
            try:
                return os.open(path, os.O_RDONLY | flags), False
            except PermissionError:
                _refuse_unreadable(path, target, what)
            except OSError:
                pass
            raise denied from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{path} (the lock of {target}) is a symlink; remove it") from None
        raise UsageError(f"cannot write {what} {target}: cannot create {path} ({exc.strerror}); pass a writable "
                         "--out or --workspace") from None


def _refuse_unreadable(path: Path, target: Path, what: str) -> None:
    """Raise :class:`UsageError` for a lock file this user may neither write nor read: another user's, made under a
    umask like 077. Whether its owner is writing cannot be told; deleting it could let two writers in."""
    try:
        owner = f"user {path.lstat().st_uid}"
    except OSError:
        return
    raise UsageError(f"cannot write {what} {target}: its lock file {path} belongs to {owner} and this user may not "
                     "read it, so whether that user's command is still writing cannot be told; if none is, remove "
                     "the file, else wait or pass another --out or --workspace")


def _lock_or_raise(fd: int, path: Path, target: Path, what: str, fcntl) -> None:
    """``flock`` the lock file; else close it and raise :class:`FolderBusyError` (held) or :class:`UsageError` (the
    filesystem has no locks)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusyError(f"{what} {target} is being written by {_owner_text(path)}; wait for it to finish "
                              "or write to another --out") from None
    except OSError as exc:
        os.close(fd)
        raise UsageError(f"cannot lock {path}, the lock of {what} {target} ({exc.strerror or exc}): its filesystem "
                         "does not support file locks; pass an --out or --workspace on another one") from None


def _remove_unwritable(path: Path, fd: int, target: Path, what: str) -> None:
    """Delete a stale lock file this user cannot write while holding its lock, then close it; :class:`UsageError`
    when the folder does not allow it either."""
    try:
        os.unlink(path)
    except OSError as exc:
        raise UsageError(f"cannot write {what} {target}: its lock file {path} belongs to another user and cannot be "
                         f"replaced ({exc.strerror}); remove it or pass another --out or --workspace") from None
    finally:
        os.close(fd)


def check_writable_folder(folder: str | os.PathLike[str], command: str, what: str = "output folder") -> Path:
    """Fail early, before any expensive work, when ``folder`` cannot be written or is being written; returns it.

    Takes and releases the lock of ``folder`` (so its parent is created and proven writable, and a current writer is
    reported). Raises :class:`UsageError` (exit 2) for a file in the way or an unwritable parent, and
    :class:`FolderBusyError` when another process holds the lock.
    """
    path = target_path(folder)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder; pass another --out or --workspace")
    with folder_lock(path, command, what):
        pass
    return path

"""Concurrency review: two writers of one folder or cache entry, and commands killed half-way."""

from __future__ import annotations

import threading

from rap_deploy.locks import FolderBusyError, folder_lock


def test_folder_lock_is_reentrant_per_thread_only(tmp_path):
    """A second thread of the same process taking a held lock is told the folder is busy; it used to share the
    holder's lock (two writers at once) and, when the holder released first, crashed with KeyError on its exit."""
    target = tmp_path / "out"
    held, done = threading.Event(), threading.Event()
    outcome: list[BaseException | str] = []

    def other() -> None:
        held.wait()
        try:
            with folder_lock(target, "second"):
                outcome.append("entered")
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with folder_lock(target, "first"):
        with folder_lock(target, "first again"):  # the holding thread itself: re-entrant, no deadlock
            pass
        held.set()
        done.wait()
    thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], FolderBusyError), outcome
    assert "first" in str(outcome[0])
    with folder_lock(target, "third"):  # released cleanly: takeable again
        pass
    assert not (tmp_path / ".out.lock").exists()

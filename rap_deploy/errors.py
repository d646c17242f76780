"""Exceptions the CLI turns into a one-line message and an exit code (DESIGN.md §11)."""

from __future__ import annotations


class RapDeployError(Exception):
    """Base class: a user-facing failure. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class UsageError(RapDeployError):
    """Bad input from the user: a wrong path, value or combination of options (exit 2)."""

    exit_code = 2


class BackendUnavailableError(RapDeployError):
    """A requested backend, provider or device is not available here (exit 2)."""

    exit_code = 2


class CheckFailedError(RapDeployError):
    """A check ran and failed: parity, missing data, refused artifact (exit 1)."""

    exit_code = 1


class DamagedArtifactError(CheckFailedError):
    """An artifact that fails its integrity check: a file missing, truncated, or not matching its recorded sha256,
    size or header (exit 1). The message names the file and how to repair it."""

    exit_code = 1


class LibraryChangedError(DamagedArtifactError):
    """A library file is gone or was replaced since this process opened the library (``rapdeploy index`` updated
    it, or it was damaged): reopen it (restart the server). A server answers 503."""


_RESUME_NOTE = "rapdeploy-resume: "


def note_how_to_resume(exc: BaseException, how: str) -> None:
    """Record on ``exc`` (a Ctrl-C or SIGTERM unwinding out of a long step) how to carry on; the CLI ends its
    'interrupted' line with it when the command has no fixed resume line of its own (:func:`resume_note`)."""
    exc.add_note(_RESUME_NOTE + how)


def resume_note(exc: BaseException) -> str | None:
    """The innermost :func:`note_how_to_resume` line recorded on ``exc``, or ``None``."""
    notes = [n for n in getattr(exc, "__notes__", ()) if isinstance(n, str) and n.startswith(_RESUME_NOTE)]
    return notes[0][len(_RESUME_NOTE):] if notes else None

"""Default output locations (DESIGN.md §11): ``./rapdeploy-out`` or ``$RAPDEPLOY_HOME``, with a latest-artifact lookup;
and :func:`user_path`, the one way a path the user typed has its ``~`` expanded.

Layout: ``onnx/`` for exports, ``engines/<backend>-<precision>/`` for engines, ``verify/`` and ``bench/`` for reports,
``runs/`` for training runs, ``index/<name>/`` for video libraries (``rapdeploy index``), ``cache/`` for decoded frames
and the offline backbone.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from pathlib import Path

from rap_deploy.errors import UsageError
from rap_deploy.safe_paths import absent

DEFAULT_WORKSPACE = "rapdeploy-out"
# The checkpoints `rapdeploy train` writes into every run folder: the selected epoch's and the last one's (with the
# training state). train.loop writes them; verify names a run's reports after them (report_labels.engine_label).
RUN_BEST = "best.pt"
RUN_LAST = "last.pt"
# A run folder's other files: one line per evaluation, and the run's summary (``complete`` once it finished); the demo
# reads both (cli.pipeline, cli.demo_guards).
RUN_METRICS = "metrics.jsonl"
RUN_SUMMARY = "summary.json"


def user_path(value: str | os.PathLike[str], option: str) -> Path:
    """``value`` as a :class:`Path` with a leading ``~`` or ``~user`` expanded (:meth:`Path.expanduser`).

    A string is expanded only when it starts with ``~``: ``./~/x`` (an environment variable, a string option such as
    ``--pretrained``) is the folder ``~`` under the current one, returned absolute (:func:`tilde_folded`). A
    :class:`Path` has folded ``./~/x`` to ``~/x`` already, so the command line makes a typed ``./~/x`` absolute before
    a command sees it (``cli.app._folded_tilde_kept``).

    Raises :class:`UsageError` (exit 2) naming ``option`` (how the value was given: ``--pretrained``, an environment
    variable, a list file's line) and the value when ``~user`` names no user on this machine, or no home folder is
    known for ``~``: :meth:`Path.expanduser` raises a bare RuntimeError there, which ended commands in a traceback.
    """
    path = Path(value)
    if isinstance(value, str) and tilde_folded(value, path):
        return path.absolute()
    try:
        return path.expanduser()
    except RuntimeError:
        head = path.parts[0]
        if head == "~":
            raise UsageError(f"{option} {value}: no home folder is known for ~ here (HOME is not set and this user has "
                             "no entry in the user database); set HOME or write the path without ~") from None
        raise UsageError(f"{option} {value}: {head} names no user on this machine, so it has no home folder; write "
                         f"the full path without {head} (such as /home/NAME/...), or an existing user's name after ~"
                         ) from None


def tilde_folded(typed: str, path: Path) -> bool:
    """Whether ``path``, read from the string ``typed``, starts with ``~`` only because a :class:`Path` folded the
    ``./`` of ``./~/x`` away: it names the folder ``~`` under the current one (where older versions wrote
    ``--out=~/x``), not the home folder. Only a value typed starting with ``~`` is the home folder."""
    return not typed.startswith("~") and str(path).startswith("~")


def workspace_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the workspace folder: ``explicit``, else ``$RAPDEPLOY_HOME``, else ``./rapdeploy-out``.

    Raises :class:`UsageError` if it would be inside the package's own ``engines/`` source folder.
    """
    option = "--workspace" if explicit else "RAPDEPLOY_HOME"
    root = user_path(explicit or os.environ.get("RAPDEPLOY_HOME") or DEFAULT_WORKSPACE, option).resolve()
    package = Path(__file__).resolve().parent
    # a source checkout keeps the engines stage beside the package (<repo>/engines), a wheel inside it
    for pkg_engines in (package.parent / "engines", package / "engines"):
        pkg_engines = pkg_engines.resolve()
        if root == pkg_engines or pkg_engines in root.parents:
            raise UsageError(f"workspace {root} is inside the package's engines/ folder; pass --workspace elsewhere")
    return root


def subdir(name: str, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return ``<workspace>/<name>`` (not created)."""
    return workspace_root(explicit) / name


TEMPORARY_NAME = re.compile(r".*(\.(partial|old)-\d+|\.failed|\.tmp|\.lock)$")


def is_temporary_name(name: str) -> bool:
    """True for names that are never artifacts: hidden (``.x``) or ending like a writer's staging, old, failed, tmp
    or lock name (``x.partial-123``, ``x.old-123``, ``x.failed``, ``x.tmp``, ``x.lock``)."""
    return name.startswith(".") or bool(TEMPORARY_NAME.match(name))


def latest_child(folder: Path, marker: str) -> Path | None:
    """Return the most recently modified sub-folder of ``folder`` (or ``folder`` itself) that contains ``marker``.

    Hidden and temporary folders (:func:`is_temporary_name`: a killed build's ``.NAME.partial-PID``, a swap's
    ``.NAME.old-PID``, a failed export's ``.NAME.failed``) are never candidates, and neither is a marker that is not
    a regular file. Use this for every "latest artifact" lookup (exports, engines, libraries). A sub-folder or marker
    deleted while it looks (a ``--force`` rebuild swapping a folder, a cleanup) is skipped, never a traceback.
    """
    try:
        children = [p for p in folder.iterdir() if not is_temporary_name(p.name)] if folder.is_dir() else []
    except OSError:  # removed (or made unreadable) between the look and the listing
        children = []
    candidates = children if is_temporary_name(folder.name) else [folder, *children]
    stamped = [(mtime, p) for p in candidates if (mtime := _marker_mtime(p, marker)) is not None]
    return max(stamped, key=lambda item: item[0])[1] if stamped else None


def _marker_mtime(folder: Path, marker: str) -> float | None:
    """The mtime of ``folder/marker`` when it is a regular file (not a link), read in one ``lstat`` so there is no gap
    between checking it and reading it; else ``None``, also when ``folder`` is a file or either is gone."""
    try:
        st = (folder / marker).lstat()
    except OSError:  # missing, vanished since the listing, or folder is not a folder (ENOTDIR)
        return None
    return st.st_mtime if stat.S_ISREG(st.st_mode) else None


def data_root(explicit: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None = None) -> Path:
    """Return the dataset folder from ``--data-root`` or ``$RAPDEPLOY_DATA``.

    Raises :class:`UsageError` if neither is set (naming the workspace's demo data, ``<workspace>/data``, when
    ``rapdeploy demo`` left one there: it is never used unasked, since it is synthetic) or the folder is missing.
    """
    value = explicit or os.environ.get("RAPDEPLOY_DATA")
    if not value:
        hint = ""
        demo_data = subdir("data", workspace)
        if (demo_data / "MSRVTT_data.json").is_file():
            hint = f"; the demo's synthetic data (msrvtt layout) is {demo_data}"
        raise UsageError("no dataset folder: pass --data-root DIR (the dataset's folder in CLIP4Clip's layout, for "
                         f"MSR-VTT the one holding MSRVTT_data.json) or set RAPDEPLOY_DATA{hint}")
    path = user_path(value, "--data-root" if explicit else "RAPDEPLOY_DATA")
    if not path.is_dir():
        raise UsageError(_missing_data_root(path, from_env=not explicit))
    return path


def _missing_data_root(path: Path, from_env: bool) -> str:
    """The refusal for a dataset folder ``path`` that is missing or not a folder, naming where the value came from
    (``--data-root``, or ``$RAPDEPLOY_DATA``, which a user may have forgotten setting) and how to fix it."""
    if path.is_file():
        return _data_root_is_a_file(path, from_env)
    what = "is not a folder" if path.exists() else absent(path)
    if from_env:
        return (f"dataset folder {path} (from RAPDEPLOY_DATA={os.environ.get('RAPDEPLOY_DATA')}) {what}; fix or "
                "unset RAPDEPLOY_DATA, or pass --data-root pointing at the dataset")
    return f"dataset folder {path} {what}; pass --data-root pointing at the dataset"


def _data_root_is_a_file(path: Path, from_env: bool) -> str:
    """The refusal for a dataset folder ``path`` that is a file (most often the annotation file itself, such as
    ``DATA/MSRVTT_data.json``), naming the folder holding it, shell-quoted, as the likely dataset folder."""
    folder = shlex.quote(str(path.parent))
    if from_env:
        return (f"dataset folder {path} (from RAPDEPLOY_DATA={os.environ.get('RAPDEPLOY_DATA')}) is not a folder but "
                f"a file; set RAPDEPLOY_DATA={folder} (the folder holding it, most likely the dataset) or pass "
                f"--data-root {folder}")
    return (f"dataset folder {path} is not a folder but a file; pass the folder holding it, most likely the "
            f"dataset: --data-root {folder}")

"""The main rank's first step of a library build, under the folder's lock (:func:`prepare`): ``--force``, read and
check the library, then plan the shards of the videos to encode (or resume the plan of an interrupted build).

What it refuses, it refuses before any video is encoded or any file of the library is deleted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rap_deploy.atomic import remove_temporaries
from rap_deploy.config import FrameSamplingConfig
from rap_deploy.data.datasets import VideoEntry
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.library import plan as plans
from rap_deploy.library.changes import IndexedFile, changed_videos, indexed_files, moved_videos, with_moves
from rap_deploy.library.manifest import (
    FORMAT,
    INDEX_OTHER_MODEL_FIX,
    MANIFEST,
    SHARDS_DIR,
    STAGE1_DIR,
    check_model,
    model_identity,
    read_manifest,
    reindex_command,
)
from rap_deploy.library.shards import check_shard_sizes, remove_stale
from rap_deploy.library.sources import VideoSource
from rap_deploy.name_lists import some_names

if TYPE_CHECKING:
    from rap_deploy.library.builder import BuildOptions


def prepare(root: Path, engine: Any, source: VideoSource | None, options: BuildOptions,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Main rank, under the lock: --force, read and check the library, plan the new shards (or resume the plan).

    Returns the build's state: ``old`` (the library's manifest, ``None`` for a new one or under ``--force``),
    ``replacing`` (the manifest ``--force`` replaces), ``plan``, ``resumed`` and ``folder_existed`` (whether ``root``
    was there before this build, which a failed first build then leaves); with ``source`` also the library's
    ``model`` and ``sampling`` and the ``replaces``, ``moved`` and ``moved_ids`` of the videos given, ``gone`` and
    ``deferred`` (given videos a resumed plan does not hold: they wait for the next ``--add``) and ``not_retried``
    (the library's undecodable videos a build without ``--add`` leaves alone, :func:`_unasked_retries`). Raises
    :class:`UsageError` for a request the library cannot take, :class:`~rap_deploy.safe_paths.UnsafePathError` for
    linked shard or stage-1 folders.
    """
    folder_existed = root.is_dir()
    old, replacing = _read_library(root, options)
    _check_request(root, old, engine, source)
    state: dict[str, Any] = {"old": old, "plan": None, "resumed": False, "replacing": replacing,
                             "folder_existed": folder_existed}
    if source is None:
        _end_finished_plan(root, old)
        return state
    sampling = FrameSamplingConfig(max_frames=engine.config.frames, fps=source.sampling.fps)
    model = _library_model(engine, sampling, old)
    todo = _videos_to_encode(root, source, options, old)
    not_retried = _unasked_retries(old, todo, options)
    _refuse_unasked_update(root, old, todo, options, len(not_retried))
    if not_retried:  # the same command again: the library's undecodable videos wait for an --add, as it said
        left_alone = {s["video_id"] for s in not_retried}
        todo.pending = [v for v in todo.pending if v.video_id not in left_alone]
    numbering = old or replacing or {}  # --force numbers its shards after the library it replaces
    plan, resumed = _plan_shards(root, todo, sampling, model, options, numbering, replacing)
    deferred = _log_resume(root, plan, todo, source, log) if resumed else []
    replaces = dict(plan.get("replaces") or {}) if resumed else todo.changed  # the rows the plan's videos replace
    state.update(plan=plan, resumed=resumed, model=model, sampling=sampling, replaces=replaces, moved=todo.moved,
                 moved_ids=todo.moved_ids, gone=todo.gone, deferred=deferred, not_retried=not_retried)
    return state


def _log_resume(root: Path, plan: dict[str, Any], todo: VideosToEncode, source: VideoSource,
                log: Callable[[str], None]) -> list[str]:
    """Log the resume of ``plan`` and how the given videos differ from it; returns the ids of the given videos to
    encode that it does not hold (added or changed since it was made), which wait for the next ``--add``."""
    planned = plans.plan_video_ids(plan)
    log(f"resuming the interrupted build of {root}: {len(plan['shards'])} shards planned")
    held = set(planned)
    deferred = [v.video_id for v in todo.pending if v.video_id not in held]
    given = {v.video_id for v in source.videos}
    dropped = [vid for vid in planned if vid not in given]
    if dropped:
        log(f"{len(dropped)} of the videos it planned are no longer given ({some_names(dropped)}): encoded as "
            "planned, a file that is gone is skipped")
    if deferred:
        log(f"{len(deferred)} of the given videos are not in its plan (new or changed since it started: "
            f"{some_names(deferred)}): they wait for the next --add")
    return deferred


@dataclass
class VideosToEncode:
    """What a build encodes of the videos given: ``pending`` (new or changed), ``changed`` (their ids → the rows they
    replace), ``moved`` (files moved since they were indexed: recorded, never re-encoded; ``moved_ids`` their ids),
    the ``interrupted`` build's plan, if any, and ``gone`` (live rows not given whose file no longer exists: kept)."""

    pending: list[VideoEntry]
    changed: dict[str, int]
    moved: dict[str, dict[str, Any]]
    moved_ids: list[str]
    interrupted: dict[str, Any] | None
    gone: list[dict[str, str]]


def _read_library(root: Path, options: BuildOptions) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(the library's manifest or None, the manifest --force replaces or None)``, after refusing linked shard or
    stage-1 folders and a folder that holds other things than a library; removes a killed write's temporaries."""
    _refuse_linked_folders(root)
    had_library = (root / MANIFEST).is_file()
    replacing = _force_start(root, had_library) if options.force else None
    remove_temporaries(root, (MANIFEST, plans.PLAN))  # a killed atomic write's (the lock says it is dead)
    old = read_manifest(root) if (root / MANIFEST).is_file() and not options.force else None
    if old is not None:  # a damaged library is refused as search refuses it, before any video is encoded
        check_shard_sizes(root, old["shards"])
    if old is None and not (options.force and had_library):  # a library's folder may hold the user's files too
        _refuse_foreign_folder(root)
    return old, replacing


def _check_request(root: Path, old: dict[str, Any] | None, engine: Any, source: VideoSource | None) -> None:
    """Refuse (:class:`UsageError`) a request without videos for a folder without a library, and an engine or
    videos whose embeddings would not be comparable with the library's rows."""
    if old is None and source is None:
        raise UsageError(f"{root} holds no library yet; give videos to index (--dataset/--data-root, --videos DIR "
                         "or --list FILE)")
    if old is not None and engine is not None:
        check_model(old["model"], engine, root, INDEX_OTHER_MODEL_FIX, old.get("engine"))
    if old is not None and source is not None:
        _check_sampling_rate(old["model"]["sampling"], source, root)


def _end_finished_plan(root: Path, old: dict[str, Any]) -> None:
    """Without videos (``--remove`` alone): refuse while an interrupted build is unfinished, else drop its plan."""
    pending = plans.read_plan(root)
    if pending is not None and not plans.plan_finished(pending, {s["name"] for s in old["shards"]},
                                                       old["next_shard"]):
        raise UsageError(f"{root} has an interrupted build ({plans.PLAN}); re-run the command that started it "
                         "to finish it first, or pass --force with the videos to rebuild")
    plans.drop_plan(root)


def _library_model(engine: Any, sampling: FrameSamplingConfig, old: dict[str, Any] | None) -> dict[str, Any]:
    """The model identity the library records (:func:`model_identity`); an existing library keeps the checkpoint
    hash it recorded, since its rows keep those weights (check_model compared them, or warned it cannot)."""
    model = model_identity(engine, sampling)
    if old is not None:
        model["checkpoint_sha256"] = old["model"].get("checkpoint_sha256")
    return model


def _videos_to_encode(root: Path, source: VideoSource, options: BuildOptions, old: dict[str, Any] | None
                      ) -> VideosToEncode:
    """The given videos a build encodes: those not in the library and those whose file changed since it was indexed
    (never those ``--remove`` names); raises :class:`UsageError` for a ``--remove`` of videos not in it."""
    indexed = indexed_files(root, old["shards"], set(old["removed"]), old.get("moved")) if old is not None else {}
    _refuse_unknown_removals(root, options.remove, indexed)
    removing = set(options.remove)  # never encoded, even when their files are given or changed
    given = [v for v in source.videos if v.video_id not in removing]
    moved = moved_videos(given, indexed)  # recorded in the manifest, never re-encoded
    moved_ids = [vid for vid, f in indexed.items() if str(f.row) in moved]
    indexed = with_moves(indexed, moved)
    changed = changed_videos(given, indexed)
    interrupted = plans.read_plan(root)
    if interrupted is not None:
        changed = _resumable_replaces(interrupted, indexed, changed)
    pending = [v for v in given if v.video_id not in indexed or v.video_id in changed]
    return VideosToEncode(pending=pending, changed=changed, moved=moved, moved_ids=moved_ids, interrupted=interrupted,
                          gone=_gone_files(indexed, {v.video_id for v in source.videos} | removing))


def _gone_files(indexed: dict[str, IndexedFile], given: set[str]) -> list[dict[str, str]]:
    """The live rows of ``indexed`` not among the ``given`` ids whose recorded file no longer exists, as
    ``{"video_id", "path"}``: a build keeps them (a folder on an unmounted disk must not empty a library), and the
    report names them with the ``--remove`` that drops them."""
    return [{"video_id": vid, "path": f.path} for vid, f in indexed.items()
            if vid not in given and not os.path.lexists(f.path)]


def _refuse_unknown_removals(root: Path, remove: list[str], indexed: dict[str, IndexedFile]) -> None:
    """Refuse (:class:`UsageError`) a ``--remove`` of videos not in the library, before any video is encoded."""
    unknown = [v for v in remove if v not in indexed]
    if unknown:
        raise UsageError(f"--remove: {some_names(unknown, 10)} not in the library {root}; nothing was changed")


def _unasked_retries(old: dict[str, Any] | None, todo: VideosToEncode, options: BuildOptions) -> list[dict[str, str]]:
    """Without ``--add``, the pending videos that the library's latest build skipped as undecodable (the same id and
    path; its ``skipped`` entries, returned): re-running the command that built the library is not an update, and
    only ``--add`` retries them. Empty with ``--add``, for a new library or while an interrupted build is pending."""
    if old is None or options.add or todo.interrupted is not None or not isinstance(old.get("skipped"), list):
        return []
    recorded = {(s["video_id"], s["path"]): s for s in old["skipped"]  # untrusted: string pairs only
                if isinstance(s, dict) and isinstance(s.get("video_id"), str) and isinstance(s.get("path"), str)}
    return [recorded[(v.video_id, str(v.path))] for v in todo.pending
            if v.video_id not in todo.changed and (v.video_id, str(v.path)) in recorded]


def _refuse_unasked_update(root: Path, old: dict[str, Any] | None, todo: VideosToEncode, options: BuildOptions,
                           not_retried: int = 0) -> None:
    """Refuse (:class:`UsageError`) new or changed videos for an existing library without ``--add`` (and with no
    interrupted build to resume): the user may have meant another library, or a rebuild. ``not_retried`` of the
    pending videos are the library's undecodable ones (:func:`_unasked_retries`), which alone are no update."""
    if old is not None and len(todo.pending) > not_retried and not options.add and todo.interrupted is None:
        changed = todo.changed
        news = f"{len(todo.pending) - len(changed) - not_retried} of the given videos are not in it" + \
            (f" and {len(changed)} changed since they were indexed" if changed else "") + \
            (f" ({not_retried} more it skipped as undecodable)" if not_retried else "")
        raise UsageError(f"{root} already holds a library of {old['videos']} videos and {news}: pass --add to "
                         "encode only those, or --force to rebuild it")


def _plan_shards(root: Path, todo: VideosToEncode, sampling: FrameSamplingConfig, model: dict[str, Any],
                 options: BuildOptions, numbering: dict[str, Any], replacing: dict[str, Any] | None
                 ) -> tuple[dict[str, Any], bool]:
    """``(plan, resumed)``: the shards of ``todo.pending``, numbered after ``numbering`` (the library, or the one
    ``--force`` replaces), or the interrupted build's plan of the same request; shard folders of neither are
    deleted."""
    new = plans.make_plan(todo.pending, sampling, model, options.shard_size, numbering.get("next_shard", 0),
                          numbering.get("next_row", 0), replaces=todo.changed)
    known = {s["name"] for s in numbering.get("shards", [])}
    if replacing is not None and (plans.read_plan(root) or {}).get("request_sha256") != new["request_sha256"]:
        plans.drop_plan(root)  # an interrupted build of other videos: --force discards it (a forced one resumes)
    plan, resumed = plans.adopt_plan(root, new, known, numbering.get("next_shard", 0))
    remove_stale(root, keep=known | {s["name"] for s in plan["shards"]})
    return plan, resumed


def _check_sampling_rate(recorded: dict[str, Any], source: VideoSource, root: Path) -> None:
    """Raise :class:`UsageError` (exit 2) when ``source`` samples its videos at another frame rate than the library
    at ``root`` recorded: their embeddings would not be comparable with the library's rows (and the build would
    record the new rate as the library's)."""
    was, now = recorded.get("fps"), source.sampling.fps
    if was != now:
        raise UsageError(f"{root / MANIFEST} records frame sampling at fps {was}, and the given videos "
                         f"({source.kind}) are sampled at fps {now}: their embeddings would not be comparable; "
                         f"rebuild the library from these videos with --force ({reindex_command(root)}), or index "
                         "them into another library (--out NEW_LIB); nothing was changed")


def _resumable_replaces(plan: dict[str, Any], indexed: dict[str, Any], changed: dict[str, int]) -> dict[str, int]:
    """The rows an interrupted build was replacing, while they still are live rows of those ids: its resume then
    re-encodes the same videos (and matches its plan); files changed since wait for the next ``--add``."""
    recorded = plan.get("replaces", {})
    if not isinstance(recorded, dict) or recorded == changed:
        return changed
    if all(isinstance(k, str) and k in indexed and indexed[k].row == v for k, v in recorded.items()):
        return dict(recorded)
    return changed


def _force_start(root: Path, had_library: bool) -> dict[str, Any] | None:
    """--force: the library it replaces, left in place (searchable) until the new manifest replaces it; the new
    shards and stage-1 files are numbered after it, and its files are deleted once the new manifest is written. A
    folder without a readable library (an interrupted first build, a damaged manifest) is wiped first instead."""
    if not had_library:  # before deleting: the folder holds something else
        _refuse_foreign_folder(root)
    else:
        _refuse_other_artifact(root)
        try:
            replacing = read_manifest(root)
        except (UsageError, CheckFailedError):  # damaged, oversized: wiped
            replacing = None
        if replacing is not None:
            try:
                plans.read_plan(root)
            except CheckFailedError:
                plans.drop_plan(root)  # a damaged or oversized plan of an interrupted build: discarded
            return replacing
    _wipe(root)
    return None


def _refuse_other_artifact(root: Path) -> None:
    """Refuse (:class:`UsageError`), before ``--force`` deletes anything, a folder whose ``manifest.json`` is readable
    JSON but no library's: another rapdeploy artifact's (an export or engine folder given as ``--out``) or another
    program's (a web app's ``manifest.json``, with no ``format``). Neither is a damaged library to wipe; an unreadable
    one (a truncated write) is, and is wiped."""
    from rap_deploy.artifact_kind import manifest_kind, read_folder_manifest
    from rap_deploy.name_lists import shortened

    manifest = read_folder_manifest(root)
    if manifest is None:
        return  # unreadable: a damaged library's, wiped
    kind = manifest_kind(manifest)
    if kind == "library":
        return
    if kind != "foreign":  # an engine's, an export's, a newer rapdeploy's
        raise UsageError(f"{root} holds a {shortened(manifest['format'])} folder (its {MANIFEST}), not a library: "
                         "--force replaces only a library; pass another --out (nothing was changed)")
    raise UsageError(f"{root / MANIFEST} is not a library's (it has no format '{FORMAT}'): --force replaces only a "
                     "library; pass another --out (nothing was changed), or, if it is an edited library's, delete "
                     "that file first")


def _wipe(root: Path) -> None:
    """--force: delete what a library consists of (only those names) so the build starts from nothing."""
    for name in (MANIFEST, plans.PLAN):
        (root / name).unlink(missing_ok=True)
    for name in (SHARDS_DIR, STAGE1_DIR):
        if (root / name).is_dir() and not (root / name).is_symlink():
            shutil.rmtree(root / name)


def _refuse_linked_folders(root: Path) -> None:
    """Refuse (:class:`~rap_deploy.safe_paths.UnsafePathError`, exit 1), before anything is written or deleted, a
    library whose ``shards`` or ``stage1`` is a symlink or not a folder, or holds a symlink: the build would write its
    shards and index through the link and delete the shard folders it finds there (another library's, when the link
    points at it), or stop at a shard folder that is a link ("Cannot call rmtree on a symbolic link", naming no
    file), and no search would open the result (a library holds no symlink)."""
    from rap_deploy.safe_paths import UnsafePathError

    for name in (SHARDS_DIR, STAGE1_DIR):
        path = root / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            what = f"a symlink to {path.resolve()}" if path.is_symlink() else "not a folder"
            raise UnsafePathError(f"{path} is {what}; a library's {name} folder must be a real folder inside it "
                                  f"(the build would write and delete through it): remove {path} or choose another "
                                  "--out folder; nothing was changed")
        link = next((p for p in path.iterdir() if p.is_symlink()), None) if path.is_dir() else None
        if link is not None:
            raise UnsafePathError(f"{link} is a symlink to {link.resolve()}; a library holds no symlink (the build "
                                  f"would write or delete through it): remove {link}; nothing was changed")


def _refuse_foreign_folder(root: Path) -> None:
    """Refuse to build into a folder that holds other things than a library (or an interrupted one)."""
    if not root.is_dir():
        return
    ours = {MANIFEST, plans.PLAN, STAGE1_DIR, SHARDS_DIR}
    foreign = sorted(p.name for p in root.iterdir() if p.name not in ours and not p.name.startswith("."))
    if foreign:
        raise UsageError(f"{root} is not empty and is not a library (it holds {some_names(foreign)}); choose "
                         "another --out folder")

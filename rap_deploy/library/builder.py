"""``build_library``: encode videos into a library folder, resumably, incrementally, optionally over ``torchrun``
ranks (what ``rapdeploy index`` runs).

Steps: take the folder's lock (main rank) → read the library and check the engine is its model → plan the shards of
the videos not yet in it → every rank encodes its shards (committed ones are skipped: that is the resume) → the main
rank waits for all shards, applies removals, updates the stage-1 index, measures its recall and writes the manifest.

Ranks are given as a :class:`Ranks` (rank, world size, barrier); the CLI builds it from the training stage's
``torchrun`` helpers, so this core module needs no process group of its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from rap_deploy.config import FrameSamplingConfig
from rap_deploy.crashpoints import crash_point
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.library import plan as plans
from rap_deploy.library.assemble import (
    Assembly,
    Stage1Request,
    apply_removals,
    apply_replacements,
    build_stage1,
    remove_unused_stage1,
    stage1_kind,
    write_library_manifest,
)
from rap_deploy.library.encode import encode_shard
from rap_deploy.library.manifest import SHARDS_DIR, STAGE1_DIR
from rap_deploy.library.prepare import prepare
from rap_deploy.library.shards import committed_shard, remove_stale
from rap_deploy.library.sources import VideoSource, missing_list_hint
from rap_deploy.locks import folder_lock
from rap_deploy.name_lists import some_names
from rap_deploy.workspace import user_path


@dataclass
class BuildOptions:
    """Options of ``rapdeploy index`` beyond the source and the engine."""

    add: bool = False
    remove: list[str] = field(default_factory=list)
    ann: str | None = None
    target_recall: float = 0.95
    top_m: int | None = None  # M of the recall@M measurement; None: the library's, else 100
    shard_size: int = 256
    batch_size: int = 8
    force: bool = False
    recall_queries: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        """Raise :class:`UsageError` for a value out of range (named as its ``rapdeploy index`` option), or for
        ``add`` with ``force``, which ask for opposite builds."""
        from rap_deploy.bounds import MAX_BATCH_SIZE, MAX_TOP_M, MAX_VIDEOS

        if self.add and self.force:  # --force re-encoded every video, where --add promises only the new ones
            raise UsageError("--add encodes only the videos not yet in the library and --force rebuilds it from "
                             "every given video: pass --add to update it, or --force to rebuild it")
        if not 0.0 < self.target_recall <= 1.0:  # also refuses NaN
            raise UsageError(f"--target-recall must be in (0, 1], got {self.target_recall}")
        for value, option, top in ((self.top_m, "--top-m", MAX_TOP_M), (self.shard_size, "--shard-size", MAX_VIDEOS),
                                   (self.batch_size, "--batch-size", MAX_BATCH_SIZE),
                                   (self.recall_queries, "recall_queries", MAX_VIDEOS)):
            if value is not None and not 1 <= value <= top:
                why = " (recall@M is measured at an M a search can ask for: search --top-m and serve's top_m stop " \
                    f"at {MAX_TOP_M:,})" if option == "--top-m" else ""
                raise UsageError(f"{option} must be in [1, {top:,}], got {value}{why}")


def unused_engine_note(engine: str, options: BuildOptions) -> str:
    """The stderr note of ``rapdeploy index --engine ENGINE`` without videos (``--remove``, a stage-1 retune): the
    build checked the engine against the library's model (refusing another's, as an update with videos does) and
    encoded nothing with it."""
    dropped = "--remove drops rows and " if options.remove else ""
    return (f"note: --engine {engine} was checked against the library's model and not otherwise used: without videos "
            f"(--dataset, --videos or --list) nothing is encoded; {dropped}a stage-1 rebuild (--ann, --top-m, "
            "--target-recall) reads the embeddings the library stores")


@dataclass
class Ranks:
    """This process's place in a ``torchrun`` job: ``rank`` of ``world_size``, and a barrier over all ranks."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)
    poll_seconds: float = 0.5

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def build_library(out: str | Path, engine: Any = None, source: VideoSource | None = None, cache: Any = None,
                  options: BuildOptions | None = None, ranks: Ranks | None = None, progress: bool = True,
                  log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Build or update the library at ``out``; returns the report (``videos``, ``added``, ``skipped``, ``removed``,
    ``bytes_per_video``, ``seconds``, ``stage1``...).

    ``source`` and ``engine`` are needed to add videos; ``--remove`` alone needs neither. Raises
    :class:`UsageError` (bad request, another model's library, a pending build of other videos, a live writer) and
    :class:`~rap_deploy.errors.DamagedArtifactError` (a damaged library); :class:`CheckFailedError` when no video
    of a new library could be decoded.
    """
    options, ranks = options or BuildOptions(), ranks or Ranks()
    root = user_path(out, "--out").resolve()
    t0 = time.perf_counter()
    if source is not None and engine is None:
        raise UsageError("indexing videos needs an engine (--engine)")
    _check_force(root, source, options)
    if ranks.is_main:
        with folder_lock(root, "index", "library folder", tidy_parents=True):  # and its new parents
            state = prepare(root, engine, source, options, log)
            # the job's resumed shards, for the report of a multi-rank build (one rank counts its own below); the
            # other ranks wait at the barrier
            committed_before = _committed_shards(root, state["plan"]) if ranks.world_size > 1 else 0
            ranks.barrier()
            written, resumed, encode_s = _encode_mine(root, engine, cache, options, ranks, progress, log)
            report = _finish(root, engine, source, options, ranks, state, log)
            report["gone"] = state.get("gone", [])
            report["deferred"] = state.get("deferred", [])
            report["not_retried"] = state.get("not_retried", [])
        if ranks.world_size > 1 and engine is not None:  # the job's counts, not this rank's share
            planned = len((state["plan"] or {}).get("shards", []))
            written, resumed = planned - committed_before, committed_before
    else:
        ranks.barrier()
        written, resumed, encode_s = _encode_mine(root, engine, cache, options, ranks, progress, log)
        report = {"library": str(root), "rank": ranks.rank}
    if report.get("up_to_date"):  # a plan of undecodable videos only was encoded, then dropped: nothing kept
        written = resumed = 0
    report.update(world_size=ranks.world_size, shards_written=written, shards_resumed=resumed,
                  encode_seconds=round(encode_s, 3), seconds=round(time.perf_counter() - t0, 3))
    if ranks.is_main and report.get("added"):
        report["videos_per_second"] = round(report["added"] / max(encode_s, 1e-9), 2)
    return report


def _check_force(root: Path, source: VideoSource | None, options: BuildOptions) -> None:
    """Refuse, before anything is deleted, a ``--force`` that could not rebuild: without videos, or with
    ``--remove`` (the rebuilt library holds only the given videos)."""
    if options.force and source is None:
        raise UsageError(f"--force rebuilds {root} from videos, and none were given (--dataset/--data-root, --videos "
                         "DIR or --list FILE); nothing was changed")
    if options.force and options.remove:
        raise UsageError("--force rebuilds the library from the given videos only: leave the videos to drop out of "
                         "them instead of passing --remove; nothing was changed")


def _committed_shards(root: Path, plan: dict[str, Any] | None) -> int:
    """How many shards of the pending ``plan`` are already committed (a killed build's work to resume)."""
    return sum(_committed(root, s) is not None for s in (plan or {}).get("shards", []))


def _committed(root: Path, shard: dict[str, Any], verify_hash: bool = True) -> dict[str, Any] | None:
    """The committed entry of plan shard ``shard``, or ``None`` when it is still to be encoded (or damaged)."""
    return committed_shard(root, shard["name"], plans.shard_digest(shard), verify_hash, shard["row_offset"])


# ------------------------------------------------------------------------------------------------------- encode
def _encode_mine(root: Path, engine: Any, cache: Any, options: BuildOptions, ranks: Ranks, progress: bool,
                 log: Callable[[str], None]) -> tuple[int, int, float]:
    """Encode this rank's shards of the pending plan; returns (written, already committed, seconds)."""
    from rap_deploy.data.progress import progress_bar

    plan = plans.read_plan(root) if engine is not None else None
    if plan is None:
        return 0, 0, 0.0
    sampling = FrameSamplingConfig.from_dict(plan["sampling"])
    mine = [s for i, s in enumerate(plan["shards"]) if i % ranks.world_size == ranks.rank]
    todo = [s for s in mine if _committed(root, s) is None]
    t0 = time.perf_counter()
    with progress_bar(sum(len(s["videos"]) for s in todo), "encoding videos", progress, unit="videos") as advance:
        for shard in todo:
            encode_shard(root, shard, engine, cache, sampling, options.batch_size, advance)
            crash_point("index.shard-written")
    return len(todo), len(mine) - len(todo), time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------------- finish
def _finish(root: Path, engine: Any, source: VideoSource | None, options: BuildOptions, ranks: Ranks,
            state: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Main rank: collect every shard of the plan, apply removals, update stage 1, write the manifest."""
    old = state["old"]
    added, skipped = _collect_shards(root, state["plan"], ranks)
    if old is None and not added:
        _fail_empty_first_build(root, source, state, skipped)
    asm, replaced = _assemble(root, old, added, skipped, state, options)
    if _up_to_date(old, added, options, state):
        _drop_plan_and_its_shards(root, keep={s["name"] for s in old["shards"]})
        return _report(root, old, [], skipped, [], up_to_date=True)
    shapes = _tensor_shapes(old, added)
    replacing = state.get("replacing")
    history = {"builds": replacing.get("builds") or []} if replacing else old  # --force: new stage-1 names
    build_number = len((history or {}).get("builds") or []) + 1
    stage1_entry, tombstones = _update_stage1(root, engine, source, options, old, asm, added,
                                              shapes["video_emb"][0], build_number, log)
    build = _build_record(state, ranks, skipped, asm, added, replaced)
    manifest = _write_manifest(root, engine, source, state, history, asm, added, tombstones, stage1_entry, shapes,
                               build)
    _remove_superseded(root, manifest, stage1_entry)
    return _report(root, manifest, added, skipped, asm.removed_ids, replaced=list(replaced),
                   moved=state.get("moved_ids", []))


def _collect_shards(root: Path, plan: dict[str, Any] | None, ranks: Ranks
                    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``(added, skipped)``: the entries of the plan's shards that hold rows, once every rank committed its own, and
    the videos those shards could not decode."""
    entries = _wait_for_shards(root, plan, ranks) if plan else []
    return [e for e in entries if e["rows"] > 0], [s for e in entries for s in e.get("skipped", [])]


def _fail_empty_first_build(root: Path, source: VideoSource | None, state: dict[str, Any],
                            skipped: list[dict[str, str]]) -> NoReturn:
    """A new library (or a ``--force`` rebuild) of which no video could be decoded: drop its shards and plan (and
    the folders a first build created) and raise :class:`CheckFailedError` naming the videos and why."""
    replacing = state.get("replacing")
    _drop_plan_and_its_shards(root, keep={s["name"] for s in (replacing or {}).get("shards", [])})
    if replacing is None:
        _remove_empty_first_build(root, state["folder_existed"])
    names = some_names([f"{s['video_id']} ({s['reason']})" for s in skipped])
    kept = "; the library there was left as it was" if replacing else ""
    raise CheckFailedError(f"no video could be decoded, nothing was indexed into {root}{kept}: {names}"
                           f"{missing_list_hint(source, skipped)}")


def _assemble(root: Path, old: dict[str, Any] | None, added: list[dict[str, Any]], skipped: list[dict[str, str]],
              state: dict[str, Any], options: BuildOptions) -> tuple[Assembly, dict[str, int]]:
    """The library's rows after this build (its shards and the new ones, less the old rows of re-encoded videos and
    the rows of ``--remove``), and the re-encoded ids → the rows they replace; raises what
    :func:`apply_removals` raises."""
    asm = Assembly(shards=[*((old or {}).get("shards") or []), *added], removed=set((old or {}).get("removed", [])))
    failed = {s["video_id"] for s in skipped}  # a re-encode that failed keeps the old row
    replaced = {vid: row for vid, row in state.get("replaces", {}).items() if vid not in failed}
    apply_replacements(asm, set(replaced.values()))
    apply_removals(root, asm, options.remove)
    return asm, replaced


def _update_stage1(root: Path, engine: Any, source: VideoSource | None, options: BuildOptions,
                   old: dict[str, Any] | None, asm: Assembly, added: list[dict[str, Any]], dim: int,
                   build_number: int, log: Callable[[str], None]) -> tuple[dict[str, Any], set[int]]:
    """Update or rebuild the stage-1 index as ``options`` ask (its recall measured with the source's captions when
    there are some); returns :func:`build_stage1`'s manifest entry and tombstones."""
    top_m = options.top_m or int((old or {}).get("stage1", {}).get("top_m") or 100)
    req = Stage1Request(kind=options.ann, target_recall=options.target_recall, top_m=top_m,
                        max_queries=options.recall_queries, seed=options.seed,
                        **_caption_queries(engine, source, options))
    log(f"building the stage-1 index ({stage1_kind(req, old)})")  # the library's type too when --ann is not given
    return build_stage1(root, old, asm, added, dim, req, build_number)


def _build_record(state: dict[str, Any], ranks: Ranks, skipped: list[dict[str, str]], asm: Assembly,
                  added: list[dict[str, Any]], replaced: dict[str, int]) -> dict[str, Any]:
    """This build's entry in the manifest's ``builds``: when, what it added, skipped, removed, replaced and moved."""
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "added": sum(e["rows"] for e in added),
            "skipped": skipped, "removed": asm.removed_ids, "replaced": list(replaced),
            "moved": state.get("moved_ids", []),
            "world_size": ranks.world_size,
            "resumed": bool(state.get("resumed")), **({"force": True} if state.get("replacing") else {})}


def _write_manifest(root: Path, engine: Any, source: VideoSource | None, state: dict[str, Any],
                    history: dict[str, Any] | None, asm: Assembly, added: list[dict[str, Any]], tombstones: set[int],
                    stage1_entry: dict[str, Any], shapes: dict[str, list[int]], build: dict[str, Any]
                    ) -> dict[str, Any]:
    """Write the library's new manifest (:func:`write_library_manifest`), the commit point of the build; returns it.
    The engine and the source are recorded only when this build added rows."""
    old, plan = state["old"], state["plan"]
    engine_info = _engine_info(engine) if added else None
    model = state.get("model") or old["model"]
    desc = asdict(source)["description"] | {"kind": source.kind} if source is not None and added else None
    plan_next = (plan or {}).get("next_shard", (old or {}).get("next_shard", 0))
    plan_row = (plan or {}).get("next_row", (old or {}).get("next_row", 0))
    moved = {**((old or {}).get("moved") or {}), **state.get("moved", {})}
    return write_library_manifest(root, history, model, engine_info, asm, tombstones, stage1_entry, shapes,
                                  plan_next, plan_row, build, desc, moved)


def _remove_superseded(root: Path, manifest: dict[str, Any], stage1_entry: dict[str, Any]) -> None:
    """After the manifest is written: drop the plan, then the shard and stage-1 files it no longer names."""
    plans.drop_plan(root)
    remove_stale(root, keep={s["name"] for s in manifest["shards"]})
    remove_unused_stage1(root, stage1_entry)


def _up_to_date(old: dict[str, Any] | None, added: list[dict[str, Any]], options: BuildOptions,
                state: dict[str, Any]) -> bool:
    """Whether the build leaves the library as it is: nothing added, removed or moved, and stage 1 as asked."""
    return old is not None and not added and not options.remove and not state.get("moved") \
        and _stage1_as_asked(old["stage1"], options)


def _stage1_as_asked(st: dict[str, Any], options: BuildOptions) -> bool:
    """Whether the library's stage 1 already is what ``options`` ask for: its type, its M (``--top-m``) and, for an
    ANN index, the recall its effort was tuned to (``--target-recall``); else an update rebuilds and retunes it."""
    return options.ann in (None, st["type"]) and options.top_m in (None, st.get("top_m")) and \
        (st["type"] == "exact" or options.target_recall == st.get("target_recall"))


def _drop_plan_and_its_shards(root: Path, keep: set[str]) -> None:
    """End a build that committed nothing to the manifest: delete its shards (all rows skipped), then its plan.

    A shard left behind would be taken as committed by the next build of the same videos (same name, same plan
    entry), so a file fixed since would never be encoded again. Shards first: a kill in between leaves the plan,
    and the re-run encodes them again."""
    remove_stale(root, keep=keep)
    plans.drop_plan(root)


def _remove_empty_first_build(root: Path, folder_existed: bool) -> None:
    """After a first build that kept nothing: remove the library's folders it left empty (``shards``, ``stage1``),
    then ``root`` itself when this build created it and it is empty. ``rmdir`` only: a folder that holds anything
    else (the user's files, another process's) stays, as does one that was there before the build. The folders above
    ``root`` that taking its lock created go when the lock is released (``folder_lock``'s ``tidy_parents``)."""
    for folder in (root / SHARDS_DIR, root / STAGE1_DIR, *(() if folder_existed else (root,))):
        if folder.is_dir() and not folder.is_symlink():
            with contextlib.suppress(OSError):  # not empty
                folder.rmdir()


def _wait_for_shards(root: Path, plan: dict[str, Any], ranks: Ranks) -> list[dict[str, Any]]:
    """The entries of every plan shard, waiting (polling the folder) for other ranks to commit theirs."""
    entries: dict[str, dict[str, Any]] = {}
    names = [s["name"] for s in plan["shards"]]
    while True:
        for shard in plan["shards"]:
            if shard["name"] not in entries:
                entry = _committed(root, shard, verify_hash=False)
                if entry is not None:
                    entries[shard["name"]] = entry
        if len(entries) == len(names):
            return [entries[n] for n in names]
        if ranks.world_size == 1:
            missing = [n for n in names if n not in entries]
            raise CheckFailedError(f"{len(missing)} of the {len(names)} shards of {root} were not written "
                                   f"({some_names(missing)}); re-run the command")
        time.sleep(ranks.poll_seconds)


def _tensor_shapes(old: dict[str, Any] | None, added: list[dict[str, Any]]) -> dict[str, list[int]]:
    shapes = dict((old or {}).get("tensor_shapes") or {})
    for entry in added:
        got = {name: f["shape"][1:] for name, f in entry["files"].items() if "shape" in f}
        for name, shape in got.items():
            if shapes.setdefault(name, shape) != shape:
                raise UsageError(f"shard {entry['name']} stores {name} as {shape}, the library as {shapes[name]}")
    return shapes


def _caption_queries(engine: Any, source: VideoSource | None, options: BuildOptions) -> dict[str, Any]:
    """Text embeddings of (a sample of) the source's captions, to measure stage-1 recall with real text queries."""
    if engine is None or source is None or not source.captions:
        return {}
    from rap_deploy.retrieval import encode_texts

    captions = list(dict.fromkeys(source.captions))
    if len(captions) > options.recall_queries:
        pick = np.sort(np.random.default_rng(options.seed).choice(len(captions), options.recall_queries,
                                                                   replace=False))
        captions = [captions[i] for i in pick]
    return {"query_emb": encode_texts(engine, captions), "query_source": "captions"}


def _engine_info(engine: Any) -> dict[str, Any] | None:
    """The engine's description for the manifest, its file paths absolute: `rapdeploy search` loads the engine
    that built the library from there, run from any folder, and `serve`'s ``/library`` shows them to clients that
    do not know the folder `index` ran in."""
    from rap_deploy.engines.base import engine_info

    info = engine_info(engine)
    if info is None:
        return None
    for key in ("path", "checkpoint"):
        if key in info:
            info[key] = _absolute(info[key])
    if isinstance(info.get("graphs"), dict):
        info["graphs"] = {name: _absolute(file) for name, file in info["graphs"].items()}
    return info


def _absolute(value: Any) -> Any:
    """``value`` resolved when it is a relative path of an existing file or folder; anything else as it is."""
    if isinstance(value, str) and "://" not in value and not Path(value).is_absolute() and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _report(root: Path, manifest: dict[str, Any], added: list[dict[str, Any]], skipped: list[dict[str, str]],
            removed: list[str], up_to_date: bool = False, replaced: list[str] | None = None,
            moved: list[str] | None = None) -> dict[str, Any]:
    st = manifest["stage1"]
    return {"library": str(root), "videos": manifest["videos"], "added": sum(e["rows"] for e in added),
            "skipped": skipped, "removed": removed, "replaced": replaced or [],
            "moved": moved or [], "up_to_date": up_to_date,
            "bytes_on_disk": manifest.get("bytes_on_disk"), "bytes_per_video": manifest.get("bytes_per_video"),
            "stage1": {"type": st["type"], "effort": st.get("effort"), "recall_at_m": st["recall_at_m"]["recall"],
                       "m": st["recall_at_m"]["m"], "queries": st["recall_at_m"]["queries"],
                       "query_source": st["recall_at_m"].get("query_source"), "build_seconds": st["build_seconds"],
                       **_target(st)}}


def _target(st: dict[str, Any]) -> dict[str, Any]:
    """The recall target an ANN stage 1 was tuned to and whether its measured recall@M reached it (``stage1.tune``
    keeps its best effort when none does, and the report says so); exact search has no target."""
    target = st.get("target_recall")
    if st["type"] == "exact" or isinstance(target, bool) or not isinstance(target, (int, float)):
        return {"target_recall": None, "target_reached": True}
    return {"target_recall": target, "target_reached": bool(st["recall_at_m"]["recall"] >= target)}

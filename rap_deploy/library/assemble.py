"""Assembling a library after its shards are written: shard list, removals, the stage-1 index and its measured
recall, then the manifest (written last, atomically)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy import __version__
from rap_deploy.atomic import sha256_file
from rap_deploy.errors import DamagedArtifactError, UsageError
from rap_deploy.library import stage1
from rap_deploy.library.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    STAGE1_DIR,
    entry_path,
    stage1_files,
    write_manifest,
)
from rap_deploy.library.shards import check_sha256, open_tensor_file, read_videos
from rap_deploy.name_lists import some_names


@dataclass
class Stage1Request:
    """What the stage-1 step needs: the index type, the recall target and M, and new text queries (or none)."""

    kind: str | None = None
    target_recall: float = 0.95
    top_m: int = 100
    query_emb: np.ndarray | None = None
    query_source: str = "videos"
    max_queries: int = 500
    seed: int = 0


@dataclass
class Assembly:
    """The library state being assembled: kept and new shards, removed rows, and what the build did."""

    shards: list[dict[str, Any]]
    removed: set[int] = field(default_factory=set)
    removed_ids: list[str] = field(default_factory=list)


def live_records(root: Path, shards: list[dict[str, Any]],
                 removed: set[int]) -> Iterator[tuple[int, dict[str, list[Any]], int]]:
    """``(global row, the shard's videos.json, index in it)`` of every row not removed, in row order."""
    for shard in shards:
        videos = read_videos(root, shard)
        for i in range(len(videos["video_id"])):
            row = shard["row_offset"] + i
            if row not in removed:
                yield row, videos, i


def live_rows(root: Path, shards: list[dict[str, Any]], removed: set[int]) -> tuple[list[str], np.ndarray]:
    """Video ids and global rows of every row not removed, in row order (reads each shard's ``videos.json``)."""
    records = list(live_records(root, shards, removed))
    return [v["video_id"][i] for _, v, i in records], np.asarray([r for r, _, _ in records], dtype=np.int64)


def apply_removals(root: Path, asm: Assembly, remove: list[str]) -> None:
    """Mark the rows of video ids ``remove`` as removed and drop shards with no row left.

    Raises :class:`UsageError` naming ids that are not in the library (nothing is changed then).
    """
    if not remove:
        return
    ids, rows = live_rows(root, asm.shards, asm.removed)
    where = dict(zip(ids, rows.tolist(), strict=True))
    unknown = [v for v in remove if v not in where]
    if unknown:
        raise UsageError(f"--remove: {some_names(unknown, 10)} not in the library {root}; nothing was removed")
    asm.removed |= {where[v] for v in remove}
    asm.removed_ids = list(dict.fromkeys(remove))
    drop_empty_shards(asm)


def apply_replacements(asm: Assembly, replaced_rows: set[int]) -> None:
    """Mark the old rows of re-encoded videos as removed (their new rows are in the added shards)."""
    asm.removed |= replaced_rows
    drop_empty_shards(asm)


def drop_empty_shards(asm: Assembly) -> None:
    """Leave out of the assembly every shard whose rows are all removed.

    Counts the removed rows in each shard's range (never materialises the range: the row counts come from the
    manifest, which is checked against the shards' files only later)."""
    removed = np.asarray(sorted(asm.removed), dtype=np.int64)

    def emptied(s: dict[str, Any]) -> bool:
        lo, hi = s["row_offset"], s["row_offset"] + s["rows"]
        return int(np.searchsorted(removed, hi) - np.searchsorted(removed, lo)) >= s["rows"]

    asm.shards = [s for s in asm.shards if not emptied(s)]


def read_video_emb(root: Path, shards: list[dict[str, Any]], rows: np.ndarray, dim: int) -> np.ndarray:
    """The stored ``video_emb`` of global ``rows`` (sorted), read from their shards. Each file's header is checked
    against ``[rows, dim]`` before anything is allocated (``dim`` comes from the manifest)."""
    parts = []
    for shard in shards:
        lo, hi = shard["row_offset"], shard["row_offset"] + shard["rows"]
        local = rows[(rows >= lo) & (rows < hi)] - lo
        if len(local):
            parts.append((open_tensor_file(root, shard, "video_emb", "float32", [dim], verify_hash=False), local))
    out = np.empty((len(rows), dim), dtype=np.float32)
    pos = 0
    for tf, local in parts:
        tf.read_rows(local, out[pos:pos + len(local)])
        pos += len(local)
    if pos != len(rows):
        raise DamagedArtifactError(f"library {root}: {len(rows) - pos} rows have no shard; re-index the library")
    return out


def stage1_kind(req: Stage1Request, old: dict[str, Any] | None) -> str:
    """The stage-1 index type a build makes: the one asked for (``--ann``), else the library's, else ``exact``;
    raises :class:`UsageError` for an unknown type."""
    return stage1.check_ann(req.kind or (old or {}).get("stage1", {}).get("type") or "exact")


def build_stage1(root: Path, old: dict[str, Any] | None, asm: Assembly, new_shards: list[dict[str, Any]], dim: int,
                 req: Stage1Request, build: int) -> tuple[dict[str, Any], set[int]]:
    """Update (or rebuild) the stage-1 index, tune and measure its recall@M, write it under the names of build
    number ``build``; returns the manifest's ``stage1`` entry and the removed rows still referenced (tombstones)."""
    t0 = time.perf_counter()
    kind = stage1_kind(req, old)
    _, live = live_rows(root, asm.shards, asm.removed)
    vectors = read_video_emb(root, asm.shards, live, dim)
    index = _reusable_index(root, old, kind, asm.removed, len(live))
    if index is None:
        train = _sample(vectors, 256 * stage1.ivf_lists(len(vectors)), req.seed) if kind == "ivf" else None
        index = stage1.new_index(kind, dim, train, seed=req.seed)
        stage1.add(index, vectors, live)
        in_index = set(live.tolist())
    else:
        new_rows = np.asarray([r for s in new_shards for r in range(s["row_offset"], s["row_offset"] + s["rows"])
                               if r not in asm.removed], dtype=np.int64)
        stage1.add(index, read_video_emb(root, new_shards, new_rows, dim), new_rows)
        old_next = int(old["next_row"])  # rows from here on are this build's: a removed one was never added
        in_index = set(live.tolist()) | {r for r in asm.removed if r < old_next}
    tombstones = asm.removed & in_index
    build_seconds = time.perf_counter() - t0
    queries, source = _recall_queries(root, old, req, vectors)
    m = min(req.top_m, len(live))
    exclude = np.asarray(sorted(tombstones), dtype=np.int64)
    truth = stage1.exact_top(vectors, live, queries, m) if m else np.zeros((len(queries), 0), np.int64)
    tuning = stage1.tune(index, kind, queries, truth, m, req.target_recall, exclude)
    index_file, queries_file = stage1_files(build)
    stage1.save(index, root / index_file)
    from rap_deploy.atomic import save_with

    def write_queries(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # np.save would append ".npy" to the temporary name
            np.save(fh, queries.astype(np.float32), allow_pickle=False)

    save_with(root / queries_file, write_queries)
    entry = {
        "type": kind, "file": index_file, "bytes": (root / index_file).stat().st_size,
        "sha256": sha256_file(root / index_file), "dim": dim, "ntotal": int(index.ntotal),
        "effort": tuning.effort, "effort_name": {"hnsw": "efSearch", "ivf": "nprobe"}.get(kind),
        "params": _index_params(index, kind), "target_recall": req.target_recall, "top_m": req.top_m,
        "recall_at_m": tuning.to_dict() | {"query_source": source},
        "build_seconds": round(build_seconds, 3),
        "queries": {"file": queries_file, "bytes": (root / queries_file).stat().st_size,
                    "sha256": sha256_file(root / queries_file), "count": int(len(queries)), "source": source},
    }
    return entry, tombstones


def _reusable_index(root: Path, old: dict[str, Any] | None, kind: str, removed: set[int], live: int) -> Any | None:
    """The previous stage-1 index when it has the requested type, few enough tombstones and (IVF) lists enough
    for the ``live`` videos it will hold, else ``None``.

    The tombstones it would hold: those it holds now (its rows beyond the old library's live videos; a rebuild left
    none, though the manifest still lists the removed rows of kept shards) and the rows this build removes that it
    indexed (live before, below the old ``next_row``). An IVF index is rebuilt once the library has grown to twice
    the lists it was trained with (four times the videos): its lists would hold four times the vectors they were
    sized for, and every probe would scan them. An IVF index of a library whose last videos are removed is kept
    (there is nothing to train a new one on)."""
    if old is None or old["stage1"].get("type") != kind:
        return None
    path = entry_path(root, old["stage1"]["file"])
    if not path.is_file():
        return None
    check_sha256(path, old["stage1"])
    index = stage1.load(path, kind, fix="re-index with --force")
    if kind == "ivf" and live == 0:
        return index  # no video left to train new lists on: it holds only tombstones until --add rebuilds it
    held = max(0, int(index.ntotal) - int(old["videos"]))
    newly = {r for r in removed - set(old["removed"]) if r < int(old["next_row"])}
    if held + len(newly) > stage1.REBUILD_TOMBSTONE_FRACTION * max(1, index.ntotal):
        return None
    if kind == "ivf" and stage1.ivf_lists(live) >= 2 * int(index.nlist):
        return None
    return index


def _sample(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(vectors) <= n:
        return vectors
    pick = np.sort(np.random.default_rng(seed).choice(len(vectors), n, replace=False))
    return vectors[pick]


def _recall_queries(root: Path, old: dict[str, Any] | None, req: Stage1Request, vectors: np.ndarray
                    ) -> tuple[np.ndarray, str]:
    """Queries for recall@M: new text embeddings, else the library's stored text queries, else a sample of its
    live videos (drawn again each build, so videos added or removed since are represented)."""
    if req.query_emb is not None and len(req.query_emb):
        return _sample(req.query_emb.astype(np.float32), req.max_queries, req.seed), req.query_source
    stored = (old or {}).get("stage1", {}).get("queries")
    if isinstance(stored, dict) and isinstance(stored.get("file"), str) and stored.get("source", "videos") != "videos":
        path = entry_path(root, stored["file"])
        if path.is_file():
            check_sha256(path, stored)
            try:  # mapped, not read: a header claiming more rows than the file holds fails here, unallocated
                q = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DamagedArtifactError(f"library file {path} is not a valid .npy ({exc}); re-index the "
                                           "library") from None
            if q.ndim == 2 and q.shape[1] == vectors.shape[1]:
                return np.array(_sample(q, req.max_queries, req.seed), dtype=np.float32), str(stored["source"])
    return _sample(vectors, req.max_queries, req.seed).copy(), "videos"


def _index_params(index: Any, kind: str) -> dict[str, Any]:
    import faiss

    if kind == "hnsw":
        inner = faiss.downcast_index(faiss.downcast_index(index).index)
        return {"M": stage1.HNSW_M, "efConstruction": int(inner.hnsw.efConstruction)}
    if kind == "ivf":
        return {"nlist": int(index.nlist)}
    return {}


def remove_unused_stage1(root: Path, entry: dict[str, Any]) -> None:
    """Delete the stage-1 files of earlier builds (after the manifest naming ``entry``'s files was written)."""
    keep = {Path(entry["file"]).name, Path(entry["queries"]["file"]).name}
    folder = root / STAGE1_DIR
    if folder.is_dir() and not folder.is_symlink():
        for p in folder.iterdir():
            if p.is_file() and p.name not in keep:
                p.unlink(missing_ok=True)


def disk_bytes(root: Path, shards: list[dict[str, Any]], stage1_entry: dict[str, Any]) -> int:
    """Bytes on disk of the library: every shard file, the stage-1 index and queries, the manifest."""
    total = sum(f["bytes"] for s in shards for f in s["files"].values())
    total += stage1_entry["bytes"] + stage1_entry["queries"]["bytes"]
    manifest = root / MANIFEST
    return total + (manifest.stat().st_size if manifest.is_file() else 0)


def _build_record(build: Any) -> Any:
    """A build as the manifest keeps it: its undecodable videos counted, not listed (every --add retries them, so
    a list per build would grow the manifest by the same names each time; the latest list is ``skipped``)."""
    if isinstance(build, dict) and isinstance(build.get("skipped"), list):
        return build | {"skipped": len(build["skipped"])}
    return build


def write_library_manifest(root: Path, old: dict[str, Any] | None, model: dict[str, Any], engine_info: Any,
                           asm: Assembly, tombstones: set[int], stage1_entry: dict[str, Any],
                           tensor_shapes: dict[str, list[int]], next_shard: int, next_row: int,
                           build: dict[str, Any], source: dict[str, Any] | None,
                           moved: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Compose and write the manifest (``moved``: the new path and stat of rows whose files moved, kept for the rows
    still live); returns it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rows = {r for s in asm.shards for r in range(s["row_offset"], s["row_offset"] + s["rows"])}
    referenced = tombstones | rows
    live = len(rows - asm.removed)  # a tombstone whose shard was dropped is no row of a kept shard
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "rapdeploy": __version__, "name": root.name,
        "created": (old or {}).get("created", now), "updated": now,
        "model": model, "engine": engine_info if engine_info is not None else (old or {}).get("engine"),
        "sources": [*((old or {}).get("sources") or []), *([source] if source else [])],
        "tensor_shapes": tensor_shapes, "videos": live,
        "shards": [{k: v for k, v in s.items() if k != "skipped"} | {"skipped": len(s.get("skipped") or [])}
                   if isinstance(s.get("skipped"), list) else s for s in asm.shards],
        "next_shard": next_shard, "next_row": next_row,
        "removed": sorted(asm.removed & referenced),
        "skipped": build["skipped"],
        "stage1": stage1_entry,
        "builds": [_build_record(b) for b in [*((old or {}).get("builds") or []), build]],
    }
    live_moves = {r: m for r, m in (moved or {}).items() if int(r) in rows - asm.removed}
    if live_moves:
        manifest["moved"] = dict(sorted(live_moves.items(), key=lambda item: int(item[0])))
    total = disk_bytes(root, asm.shards, stage1_entry)
    manifest["bytes_on_disk"] = total
    manifest["bytes_per_video"] = round(total / live, 1) if live else None
    write_manifest(root, manifest)
    return manifest

"""``open_library`` and :class:`Library`: the two-stage search over a library folder with any engine of its model.

Stage 1 ranks every video by ``text_emb · video_emb`` with the FAISS index (held in RAM); stage 2 re-ranks the top
``top_m`` candidates with the engine's ASA head on their stored re-rank tensors, read row by row from the shards and
handed to the engine in their stored dtypes. The ranking is that of
:func:`rap_deploy.retrieval.two_stage_similarity`: candidates by ASA score, then the rest by stage-1 score.

Integrity at open (see the README): the manifest's structure, every shard file's presence, size and ``.npy`` header,
the sha256 of the small files (``videos.json``, the stage-1 index and its queries) are always checked; the sha256 of
the re-rank tensors too with ``verify="full"`` (the default: it reads the whole store once), not with
``verify="quick"``.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.errors import DamagedArtifactError, UsageError
from rap_deploy.library import stage1
from rap_deploy.library.manifest import (
    MANIFEST,
    check_model,
    entry_path,
    read_manifest,
    store_tensors,
    tensor_dtype,
)
from rap_deploy.library.queries import check_queries
from rap_deploy.library.shards import TensorFile, check_sha256, open_tensor_file, read_videos, with_moved_paths
from rap_deploy.workspace import user_path

VERIFY_MODES = ("full", "quick")
OPEN_ATTEMPTS = 3  # reads of the manifest when `rapdeploy index` keeps replacing it during the open


@dataclass
class _Shard:
    """One open shard: its first global row, row count, tensor files and per-row video metadata."""

    name: str
    row_offset: int
    rows: int
    tensors: dict[str, TensorFile]
    videos: dict[str, list[Any]]


def open_library(path: str | os.PathLike[str], engine: Any, verify: str = "full",
                 cache_dir: str | os.PathLike[str] | None = None) -> Library:
    """Open the library folder ``path`` for searching with ``engine``.

    Raises :class:`UsageError` (exit 2) when ``path`` is not a library or ``engine`` is another model (naming what
    differs), :class:`DamagedArtifactError` (exit 1) naming the first damaged file. ``verify`` is ``full`` (every
    file's sha256) or ``quick`` (sizes, headers and the small files' sha256); ``cache_dir`` is the decoded-frame
    cache for :meth:`Library.thumbnail_frames` (default: the workspace's). A library updated by ``rapdeploy index``
    while it is being opened is read again (its new manifest), up to :data:`OPEN_ATTEMPTS` times.
    """
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify mode '{verify}' is unknown; use one of {', '.join(VERIFY_MODES)}")
    root = user_path(path, "library")
    for attempt in range(OPEN_ATTEMPTS):
        stamp = _manifest_stamp(root)
        manifest = read_manifest(root)
        check_model(manifest["model"], engine, root, built_by=manifest.get("engine"))
        try:
            return Library(root, engine, manifest, verify, cache_dir)
        except DamagedArtifactError:
            # `rapdeploy index` replaced the manifest while the files it named were opened (and deleted the ones the
            # new one no longer names): read the library again rather than call it damaged
            if attempt + 1 == OPEN_ATTEMPTS or _manifest_stamp(root) == stamp:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _manifest_stamp(root: Path) -> tuple[int, int, int] | None:
    """Identity of ``root/manifest.json`` (inode, size, mtime): a build replaces it atomically, so it changes."""
    try:
        st = (root / MANIFEST).stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class Library:
    """An open library (see :func:`open_library`). Thread-safe for concurrent searches as long as the engine is
    (it holds no engine lock: a server that must serialise engine calls wraps the engine it passes in)."""

    def __init__(self, root: Path, engine: Any, manifest: dict[str, Any], verify: str,
                 cache_dir: str | os.PathLike[str] | None) -> None:
        self.root, self.engine, self.manifest, self.verify = root, engine, manifest, verify
        self._cache_dir = cache_dir
        self._tensors = list(manifest["model"]["tensors"])
        self._rerank = [t for t in self._tensors if t != "video_emb"]
        if self._tensors != list(store_tensors(bool(manifest["model"].get("has_asa")))):
            raise DamagedArtifactError(f"{root}: the manifest's tensors {self._tensors} do not match its model")
        t0 = time.perf_counter()
        self._removed = np.asarray(sorted(set(manifest["removed"])), dtype=np.int64)
        self._shards = self._open_shards(manifest["shards"])
        self._offsets = np.asarray([s.row_offset for s in self._shards], dtype=np.int64)
        self._id_to_row = self._index_ids()
        self._index = self._open_stage1()
        self.open_seconds = time.perf_counter() - t0
        self._closed = False

    # --------------------------------------------------------------------------------------------- opening
    def _open_shards(self, entries: list[dict[str, Any]]) -> list[_Shard]:
        """Check and open every shard; the sha256 work is spread over a few threads (hashlib releases the GIL), and
        the first damaged shard in manifest order is the one reported."""
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, min(4, os.cpu_count() or 1, len(entries)))
        if workers == 1:
            return [self._open_shard(e) for e in entries]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._open_shard, entries))

    def _open_shard(self, entry: dict[str, Any]) -> _Shard:
        shapes = self.manifest["tensor_shapes"]
        tensors = {}
        for name in self._tensors:
            dtype = tensor_dtype(name)
            if entry["files"][name].get("dtype", dtype) != dtype:
                raise DamagedArtifactError(f"{self.root}: shard {entry['name']} stores {name} as "
                                           f"{entry['files'][name].get('dtype')}, the index dtype is {dtype}")
            full = self.verify == "full" or name == "video_emb"
            tensors[name] = open_tensor_file(self.root, entry, name, dtype, shapes[name], verify_hash=full)
        videos = with_moved_paths(read_videos(self.root, entry), entry["row_offset"], self.manifest.get("moved"))
        return _Shard(entry["name"], entry["row_offset"], entry["rows"], tensors, videos)

    def _index_ids(self) -> dict[str, int]:
        removed = set(self._removed.tolist())
        ids: dict[str, int] = {}
        for shard in self._shards:
            for i, vid in enumerate(shard.videos["video_id"]):
                row = shard.row_offset + i
                if row in removed:
                    continue
                if vid in ids:
                    raise DamagedArtifactError(f"{self.root}: video id '{vid}' appears twice; re-index the library")
                ids[vid] = row
        return ids

    def _open_stage1(self) -> Any:
        entry = self.manifest["stage1"]
        path = entry_path(self.root, entry["file"])
        if not path.is_file():
            raise DamagedArtifactError(f"library stage-1 index {path} is missing; re-index the library")
        if path.stat().st_size != entry.get("bytes"):
            raise DamagedArtifactError(f"library stage-1 index {path} is {path.stat().st_size} bytes, the manifest "
                                       f"records {entry.get('bytes')}; re-index the library")
        check_sha256(path, entry)
        stage1.check_ann(entry["type"])
        index = stage1.load(path, entry["type"])
        dim = self.manifest["tensor_shapes"]["video_emb"][0]
        if index.d != dim:
            raise DamagedArtifactError(f"library stage-1 index {path} has dimension {index.d}, the library {dim}")
        recorded = entry.get("ntotal", index.ntotal)
        if index.ntotal != recorded or index.ntotal < len(self._id_to_row):
            raise DamagedArtifactError(f"library stage-1 index {path} holds {index.ntotal} vectors, the manifest "
                                       f"records {recorded} for {len(self._id_to_row)} live videos (a search would "
                                       "miss videos); re-index the library")
        return index

    # --------------------------------------------------------------------------------------------- public
    def __len__(self) -> int:
        return len(self._id_to_row)

    def describe(self) -> dict[str, Any]:
        """Size, model summary, the engine that built it and the one searching, stage-1 type and recall@M, bytes
        per video, integrity mode and open time."""
        from rap_deploy.engines.base import engine_info

        m, st = self.manifest, self.manifest["stage1"]
        cfg = m["model"]["config"]
        return {
            "path": str(self.root.absolute()), "videos": len(self), "shards": len(self._shards),
            "model": {"clip": cfg.get("clip"), "variant": cfg.get("variant"), "frames": cfg.get("frames"),
                      "config_sha256": m["model"]["config_sha256"],
                      "checkpoint_sha256": m["model"].get("checkpoint_sha256"), "tensors": self._tensors,
                      "tensor_shapes": m["tensor_shapes"], "sampling": m["model"]["sampling"]},
            "built_with": m.get("engine"),
            "engine": engine_info(self.engine),
            "stage1": {"type": st["type"], "effort": st.get("effort"), "effort_name": st.get("effort_name"),
                       "params": st.get("params"), "recall_at_m": st["recall_at_m"].get("recall"),
                       "m": st["recall_at_m"].get("m"), "query_source": st["recall_at_m"].get("query_source")},
            "bytes_on_disk": m.get("bytes_on_disk"), "bytes_per_video": m.get("bytes_per_video"),
            "verify": self.verify, "open_seconds": round(self.open_seconds, 3),
            "created": m.get("created"), "updated": m.get("updated"),
        }

    def search(self, queries: list[str], top_k: int = 10, top_m: int = 100,
               names: list[str] | None = None) -> list[dict[str, Any]]:
        """Two-stage search for each query; one ``rapdeploy search --json`` object per query (``query``,
        ``results``, ``timings_ms``, and ``warnings`` when a query was truncated). Raises :class:`UsageError` for
        queries that are not searchable text (see ``rap_deploy.library.queries``; ``names``: how its messages name
        each query, default ``query N``) or bad ``top_k``/``top_m``."""
        from rap_deploy.retrieval import encode_texts

        self._check_open()
        texts, warnings = check_queries(queries, self.engine.config.tokenizer, names)
        t0 = time.perf_counter()
        emb = encode_texts(self.engine, texts)
        text_ms = (time.perf_counter() - t0) * 1000 / len(texts)
        results = self._search(emb, top_k, top_m, text_ms)
        return [{"query": text, **r, **({"warnings": warn} if warn else {})}
                for r, text, warn in zip(results, texts, warnings, strict=True)]

    def search_embeddings(self, text_emb: np.ndarray, top_k: int = 10, top_m: int = 100) -> list[dict[str, Any]]:
        """:meth:`search` for already encoded, L2-normalised queries ``text_emb`` float32 ``[Q, d]`` (no ``query``
        key, ``timings_ms["text"] = 0.0``)."""
        self._check_open()
        emb = np.asarray(text_emb)
        d = self.manifest["tensor_shapes"]["video_emb"][0]
        if emb.ndim != 2 or emb.shape[1] != d or emb.shape[0] == 0 or not np.issubdtype(emb.dtype, np.floating):
            raise UsageError(f"text_emb must be float [Q, {d}] with Q >= 1, got {emb.dtype} {list(emb.shape)}")
        if not np.isfinite(emb).all():
            raise UsageError("text_emb holds NaN or infinite values")
        return self._search(emb.astype(np.float32), top_k, top_m, 0.0)

    def thumbnail_frames(self, video_id: str, count: int = 4) -> np.ndarray:
        """``count`` frames (uint8 ``[n, H, W, 3]``, n ≤ count, evenly spread over the real frames) of ``video_id``,
        decoded with the library's sampling and preprocessing through the decoded-frame cache. Raises ``KeyError``
        for an id not in the library and :class:`UsageError` when its source file cannot be decoded any more."""
        from rap_deploy.config import FrameSamplingConfig
        from rap_deploy.data.cache import FrameCache
        from rap_deploy.data.video import VideoDecodeError

        row = self._id_to_row[video_id]
        shard, local = self._locate(row)
        v = shard.videos
        cache = FrameCache(self._cache_dir) if self._cache_dir is not None else FrameCache.default()
        sampling = FrameSamplingConfig.from_dict(self.manifest["model"]["sampling"])
        try:
            decoded = cache.get(v["path"][local], sampling, self.engine.config.preprocess, v["start"][local],
                                v["end"][local])
        except VideoDecodeError as exc:
            raise UsageError(f"video '{video_id}': its source {exc.path} cannot be decoded ({exc.reason})") from None
        frames = decoded.frames[decoded.mask]
        if count < 1 or len(frames) == 0:
            return frames[:0]
        pick = np.unique(np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int))
        return np.ascontiguousarray(frames[pick])

    def close(self) -> None:
        """Release the stage-1 index; later calls raise :class:`UsageError`."""
        self._index = None
        self._closed = True

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------- search
    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"library {self.root} was closed; open it again")

    def _search(self, emb: np.ndarray, top_k: int, top_m: int, text_ms: float) -> list[dict[str, Any]]:
        if not isinstance(top_k, numbers.Integral) or not isinstance(top_m, numbers.Integral) or top_k < 1 \
                or top_m < 0:
            raise UsageError(f"top must be >= 1 and top-m >= 0, got {top_k} and {top_m}")
        top_k, top_m = int(top_k), int(top_m)
        self._check_rerank_memory(min(top_m, len(self)) if self._rerank else 0)
        k1 = min(max(top_k, top_m), len(self))
        st = self.manifest["stage1"]
        t0 = time.perf_counter()
        # the index holds its live rows and its tombstones; removed rows of kept shards that a rebuild left out are
        # excluded too, but take no place in HNSW's candidate list
        held = max(0, int(self._index.ntotal) - len(self))
        scores, ids = stage1.search(self._index, st["type"], emb, k1, st.get("effort"), self._removed, held)
        stage1_ms = (time.perf_counter() - t0) * 1000 / len(emb)
        out = []
        for q in range(len(emb)):
            keep = ids[q] >= 0
            out.append(self._rank_one(emb[q:q + 1], ids[q][keep], scores[q][keep], top_k, top_m, text_ms,
                                      stage1_ms))
        return out

    def _check_rerank_memory(self, m: int) -> None:
        """Refuse (:class:`UsageError`) a re-rank of ``m`` candidates whose rows, gathered a block at a time for the
        engine (:meth:`_rerank_block`), would not fit in memory: ``top_m`` is bounded by the library only, and an
        engine without a ``video_block`` is handed all of them at once (20,000 ViT-B/32 candidates are 29 GiB)."""
        if m == 0:
            return
        from rap_deploy.bounds import check_memory

        shapes = self.manifest["tensor_shapes"]
        row = sum(math.prod(shapes[n]) * np.dtype(tensor_dtype(n)).itemsize for n in self._rerank)
        block = self._rerank_block(m)
        try:
            check_memory(block * row, f"re-ranking {m:,} candidates ({block:,} at a time) of {row / 2**20:.2f} MiB",
                         "pass a smaller --top-m (top_m)")
        except UsageError as exc:
            exc.field = "top_m"  # type: ignore[attr-defined]  # the request field a server names (422)
            raise

    def _rank_one(self, emb: np.ndarray, ids: np.ndarray, scores: np.ndarray, top_k: int, top_m: int,
                  text_ms: float, stage1_ms: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        m = min(top_m, len(ids)) if self._rerank else 0
        order = np.arange(len(ids))
        final = scores.astype(np.float64)
        read_ms = 0.0
        if m:
            asa, read_ms = self._rerank_scores(emb, ids[:m])
            final = final.copy()
            final[:m] = asa
            # candidates by ASA score (ties keep their stage-1 order), then the rest in stage-1 order
            order = np.concatenate([np.argsort(-asa, kind="stable"), np.arange(m, len(ids))])
        rerank_ms = (time.perf_counter() - t0) * 1000
        results = []
        for rank, j in enumerate(order[:top_k], 1):
            row = int(ids[j])
            shard, local = self._locate(row)
            results.append({"rank": rank, "video_id": shard.videos["video_id"][local],
                            "path": shard.videos["path"][local], "score": float(final[j]),
                            "stage1_rank": int(j) + 1, "stage1_score": float(scores[j]), "reranked": bool(j < m)})
        return {"results": results,
                "timings_ms": {"text": round(text_ms, 3), "stage1": round(stage1_ms, 3), "rerank": round(rerank_ms, 3),
                               "total": round(text_ms + stage1_ms + rerank_ms, 3),
                               "rerank_read": round(read_ms, 3)}}

    def _rerank_scores(self, emb: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """ASA scores of global ``rows`` for one query, and the milliseconds spent reading their tensors; the engine
        gets the rows in ascending order and the stored dtypes (it casts what it needs), one block of
        :meth:`_rerank_block` rows at a time, each read into the same buffers."""
        sort = np.argsort(rows, kind="stable")
        sorted_rows = rows[sort]
        block = self._rerank_block(len(rows))
        shapes = self.manifest["tensor_shapes"]
        buffers = [np.empty((block, *shapes[name]), dtype=tensor_dtype(name)) for name in self._rerank]
        sims = np.empty(len(rows), dtype=np.float64)
        read_s = 0.0
        for start in range(0, len(rows), block):
            part = sorted_rows[start:start + block]
            t0 = time.perf_counter()
            tensors = [self._gather(name, part, buf[:len(part)]) for name, buf in zip(self._rerank, buffers,
                                                                                      strict=True)]
            read_s += time.perf_counter() - t0
            sims[start:start + len(part)] = np.asarray(self.engine.asa_similarity(emb, *tensors), dtype=np.float64)[0]
        out = np.empty(len(rows), dtype=np.float64)
        out[sort] = sims
        return out, read_s * 1000

    def _rerank_block(self, m: int) -> int:
        """Candidates per engine call when re-ranking ``m``: the engine's ``video_block``, all ``m`` for an engine
        that publishes none. The engine scores at most that many videos per graph call anyway, so the rows of all
        ``m`` gathered at once were held for nothing (131.9 MiB a query at top-M 100 on the demo's library, against
        84 MiB for ONNX Runtime's 64 and 21 for the PyTorch reference's 16), and handing it exactly its blocks keeps
        every graph call, and so every score, what it was."""
        block = getattr(self.engine, "video_block", None)
        return max(1, min(m, block)) if isinstance(block, numbers.Integral) and block >= 1 else max(1, m)

    def _gather(self, name: str, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The stored ``name`` rows of global ``rows`` (ascending) read into ``out``, which is returned."""
        which = np.searchsorted(self._offsets, rows, side="right") - 1
        pos = 0
        for s in np.unique(which):
            shard = self._shards[int(s)]
            local = rows[which == s] - shard.row_offset
            shard.tensors[name].read_rows(local, out[pos:pos + len(local)])
            pos += len(local)
        return out

    def _locate(self, row: int) -> tuple[_Shard, int]:
        s = int(np.searchsorted(self._offsets, row, side="right")) - 1
        shard = self._shards[s] if s >= 0 else None
        if shard is None or not 0 <= row - shard.row_offset < shard.rows:
            raise DamagedArtifactError(f"library {self.root}: stage 1 returned row {row}, which no shard holds; the "
                                       "stage-1 index does not match the shards: re-index the library")
        return shard, row - shard.row_offset

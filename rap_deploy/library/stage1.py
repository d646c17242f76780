"""Stage 1: a FAISS inner-product index over ``video_emb`` (exact by default, HNSW or IVF for large libraries).

FAISS ids are the library's global row ids (stable: a shard's rows keep theirs for the library's life), so a search
result maps straight to a shard row. Removed videos stay in an ANN graph as tombstones and are filtered during the
search with an ``IDSelector`` (HNSW cannot delete); an index whose tombstones pass a quarter of it is rebuilt.

An ANN index's search effort (HNSW ``efSearch``, IVF ``nprobe``) is tuned at build time: the smallest setting on a
fixed ladder whose recall@M against exact search reaches the target (default 0.95) is kept, and that recall is what
the manifest records.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.errors import DamagedArtifactError, UsageError
from rap_deploy.library.manifest import MAX_STAGE1_EFFORT

ANN_TYPES = ("exact", "hnsw", "ivf")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 100
EF_LADDER = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 2048)
NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
REBUILD_TOMBSTONE_FRACTION = 0.25
# Below this many vectors FAISS (1.15) scans for one query on one thread whatever its thread count: the threads it
# wakes do nothing but map a few result ids (IndexIDMap), so :func:`search` runs such a query on one OpenMP thread.
# From 10,000 vectors up it splits one query's exact scan over its threads, with scores that differ in the last bit.
ONE_THREAD_BELOW = 10_000


def check_ann(kind: str) -> str:
    """Return ``kind`` if it is a known stage-1 type, else raise :class:`UsageError`."""
    if kind not in ANN_TYPES:
        raise UsageError(f"stage-1 index '{kind}' is unknown; use one of {', '.join(ANN_TYPES)}")
    return kind


def ivf_lists(n: int) -> int:
    """IVF list count for ``n`` vectors: about 4·√n, with at least 39 training points per list."""
    return int(max(1, min(round(4 * np.sqrt(max(n, 1))), n // 39)))


def new_index(kind: str, dim: int, train: np.ndarray | None = None, seed: int = 0) -> Any:
    """An empty inner-product index of ``kind`` for ``dim``-d vectors, ids supplied by the caller.

    IVF needs ``train`` vectors for its coarse quantiser (``ivf_lists(len(train))`` lists, k-means seeded).
    """
    import faiss

    check_ann(kind)
    if kind == "exact":
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return faiss.IndexIDMap(inner)
    if train is None or len(train) == 0:
        raise UsageError("an IVF stage-1 index needs vectors to train on; the library is empty: use --ann exact")
    nlist = ivf_lists(len(train))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    # ivf_lists keeps >= 39 points per list except below 39 vectors, where one list is exact and FAISS's
    # "please provide at least 39 training points" warning is noise on stderr.
    index.cp.min_points_per_centroid = min(39, len(train))
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    return index


def add(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add ``vectors`` ``[n, d]`` with global row ``ids`` ``[n]``."""
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def search_params(kind: str, effort: int | None, exclude: np.ndarray | None, k: int,
                  tombstones: int | None = None) -> Any:
    """FAISS search parameters: the tuned effort (``efSearch`` ≥ k + tombstones for HNSW, ``nprobe`` for IVF) and an
    ``IDSelector`` that skips ``exclude`` (removed rows). ``tombstones``: how many of ``exclude`` the index holds
    (default: all of them); rows it does not hold take no place in HNSW's candidate list."""
    import faiss

    sel = inner = None
    if exclude is not None and len(exclude):
        inner = faiss.IDSelectorBatch(np.ascontiguousarray(exclude, dtype=np.int64))
        sel = faiss.IDSelectorNot(inner)
    if kind == "hnsw":
        # tombstones take places in the candidate list: without room for them, k results could not be found
        held = tombstones if tombstones is not None else (len(exclude) if exclude is not None else 0)
        room = k + held
        params = faiss.SearchParametersHNSW(efSearch=min(max(int(effort or 64), room), MAX_STAGE1_EFFORT))
    elif kind == "ivf":
        params = faiss.SearchParametersIVF(nprobe=int(effort or 8))
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
        params._keep = (sel, inner)  # SWIG proxies do not own what they point to: keep both alive with the params
    return params


def search(index: Any, kind: str, queries: np.ndarray, k: int, effort: int | None = None,
           exclude: np.ndarray | None = None, tombstones: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores [Q,k] float32, ids [Q,k] int64)``; ids are ``-1`` only where fewer than ``k`` remain.
    ``exclude`` and ``tombstones`` as :func:`search_params` takes them.

    An IVF query whose ``effort`` probed lists hold fewer than ``k`` vectors (a ``k`` above the M the effort was
    tuned for) probes twice the lists, up to all of them, until ``k`` are found: probing more lists only adds
    candidates, so the recall recorded for ``effort`` still bounds it from below.

    Tied scores rank in id order (the library's row order, as a brute-force stable sort ranks them; FAISS leaves
    ties in its heap's order). Exact and IVF searches also keep the lowest ids of a tie that straddles ``k`` (they
    fetch past ``k`` while the tie goes on; the vectors scanned stay the same). HNSW, whose graph walk depends on
    ``k``, keeps the ties it found; a walk that finds fewer than ``k`` is answered exactly (:func:`_fill_hnsw`)."""
    want, total = k, int(index.ntotal)
    k = min(k + 1, total) if kind != "hnsw" and k > 0 else k
    with one_thread_for(len(queries), total):
        scores, ids = _search_ties(index, kind, queries, k, want, total, effort, exclude, tombstones)
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores.astype(np.float64)), axis=-1)
    order = order[:, :want]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


@contextlib.contextmanager
def one_thread_for(queries: int, vectors: int) -> Iterator[None]:
    """Run FAISS on one OpenMP thread in this thread (OpenMP's thread count is per calling thread) while searching
    one query over fewer than :data:`ONE_THREAD_BELOW` vectors: the results are the same, and a server's search no
    longer waits for FAISS's other threads to wake on a busy CPU (3 ms of a 0.1 ms search measured on 2 cores),
    nor do they spin afterwards beside the re-rank. Otherwise nothing changes."""
    if queries != 1 or vectors >= ONE_THREAD_BELOW:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _search_ties(index: Any, kind: str, queries: np.ndarray, k: int, want: int, total: int, effort: int | None,
                 exclude: np.ndarray | None, tombstones: int | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search`'s fetch: ``k`` results (filled for IVF and HNSW), deeper while a tie straddles ``want``."""
    while True:
        scores, ids = search_once(index, kind, queries, k, effort, exclude, tombstones)
        if kind == "ivf" and ids.size:
            _fill_ivf(index, np.ascontiguousarray(queries, dtype=np.float32), want, int(effort or 8), exclude,
                      scores, ids)
        elif kind == "hnsw" and ids.size:
            _fill_hnsw(index, np.ascontiguousarray(queries, dtype=np.float32), want, exclude, scores, ids)
        if k <= want or k >= total or not _tie_at_end(scores, ids, want):
            break
        k = min(2 * k, total)  # the tie goes on past what was fetched: fetch deeper, then keep the lowest ids
    return scores, ids


def _tie_at_end(scores: np.ndarray, ids: np.ndarray, k: int) -> bool:
    """Whether some query's last fetched result ties its ``k``-th (the tie may hold more results than fetched)."""
    if ids.shape[1] <= k or k < 1:
        return False
    return bool(((ids[:, -1] >= 0) & (scores[:, -1] == scores[:, k - 1])).any())


def search_once(index: Any, kind: str, queries: np.ndarray, k: int, effort: int | None = None,
                exclude: np.ndarray | None = None, tombstones: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` at exactly ``effort`` (what :func:`tune` measures): an IVF query may find fewer than ``k``."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if k <= 0 or index.ntotal == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    scores, ids = index.search(q, k, params=search_params(kind, effort, exclude, k, tombstones))
    return scores, ids


def _fill_ivf(index: Any, queries: np.ndarray, need: int, nprobe: int, exclude: np.ndarray | None,
              scores: np.ndarray, ids: np.ndarray) -> None:
    """Search the queries of ``ids`` with fewer than ``need`` results again with doubled ``nprobe`` (in place)."""
    short = (ids[:, :need] < 0).any(axis=1)
    while short.any() and nprobe < int(index.nlist):
        nprobe = min(2 * nprobe, int(index.nlist))
        scores[short], ids[short] = search_once(index, "ivf", queries[short], ids.shape[1], nprobe, exclude)
        short = (ids[:, :need] < 0).any(axis=1)


def _fill_hnsw(index: Any, queries: np.ndarray, need: int, exclude: np.ndarray | None, scores: np.ndarray,
               ids: np.ndarray) -> None:
    """Answer the queries of ``ids`` with fewer than ``need`` results by exact search over the vectors the HNSW
    index stores (in place): its graph walk cannot reach every vector when many are identical (30 % duplicates
    left a search for 300 of 3,000 with 171)."""
    import faiss

    short = (ids[:, :need] < 0).any(axis=1)
    if not short.any():
        return
    outer = faiss.downcast_index(index)
    storage = faiss.downcast_index(faiss.downcast_index(outer.index).storage)
    id_map = faiss.vector_to_array(outer.id_map)
    hidden = np.flatnonzero(np.isin(id_map, exclude)) if exclude is not None and len(exclude) else None
    s, i = storage.search(queries[short], ids.shape[1], params=search_params("exact", None, hidden, need))
    scores[short], ids[short] = s, np.where(i >= 0, id_map[np.maximum(i, 0)], -1)


def exact_top(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` ids ``[Q, k]`` of ``queries`` over ``vectors`` (the reference for recall)."""
    ref = new_index("exact", vectors.shape[1])
    add(ref, vectors, ids)
    return search_once(ref, "exact", queries, k)[1]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids ``-1`` ignored)."""
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


@dataclass
class Tuning:
    """The chosen search effort and the recall@M measured with it (and every rung tried)."""

    effort: int | None
    recall: float
    m: int
    queries: int
    tried: list[dict[str, float]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"effort": self.effort, "recall": round(self.recall, 5), "m": self.m, "queries": self.queries,
                "tried": self.tried, "seconds": round(self.seconds, 3)}


def tune(index: Any, kind: str, queries: np.ndarray, truth: np.ndarray, m: int, target: float,
         exclude: np.ndarray | None = None) -> Tuning:
    """Walk the effort ladder of ``kind`` until recall@``m`` against ``truth`` reaches ``target``.

    Exact search needs no tuning (recall 1). When no rung reaches the target, the best one is kept (the caller
    reports it).
    """
    t0 = time.perf_counter()
    if kind == "exact" or len(queries) == 0 or m == 0:
        return Tuning(None, 1.0, m, len(queries), [], time.perf_counter() - t0)
    ladder = EF_LADDER if kind == "hnsw" else tuple(p for p in NPROBE_LADDER if p <= index.nlist) or (1,)
    if kind == "hnsw":
        ladder = tuple(sorted({max(e, m) for e in ladder}))
    tried, best = [], None
    for effort in ladder:
        t1 = time.perf_counter()
        found = search_once(index, kind, queries, m, effort, exclude)[1]
        ms = (time.perf_counter() - t1) * 1000 / len(queries)
        r = recall_at(found, truth)
        tried.append({"effort": effort, "recall": round(r, 5), "ms_per_query": round(ms, 4)})
        if best is None or r > best[1]:
            best = (effort, r)
        if r >= target:
            best = (effort, r)
            break
    return Tuning(best[0], best[1], m, len(queries), tried, time.perf_counter() - t0)


def save(index: Any, path: Path) -> None:
    """Write ``index`` to ``path`` atomically."""
    import faiss

    from rap_deploy.atomic import save_with

    save_with(path, lambda tmp: faiss.write_index(index, str(tmp)))


def load(path: Path, kind: str, fix: str = "re-index the library") -> Any:
    """Read an index of ``kind`` written by :func:`save` (the caller checks its sha256 first). Raises
    :class:`DamagedArtifactError` (ending with ``fix``) when FAISS cannot read it, when a size in it claims more
    memory than there is (FAISS allocates what a vector's size field says before reading it), or when it is not an
    inner-product index of ``kind`` (the manifest's type is not hashed; searching with another type's parameters
    is a FAISS error)."""
    import faiss

    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:
        reason = "a size in it claims more memory than there is" if isinstance(exc, MemoryError) else str(exc)[:120]
        raise DamagedArtifactError(f"library stage-1 index {path} cannot be read ({reason}); {fix}") from None
    found = kind_of(index)
    if found != kind or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        what = f"an {found} index" if found else f"a {type(faiss.downcast_index(index)).__name__}"
        raise DamagedArtifactError(f"library stage-1 index {path} is {what} (metric {index.metric_type}), the manifest "
                                   f"records an inner-product {kind} index; {fix}")
    return index


def kind_of(index: Any) -> str | None:
    """The stage-1 type of a FAISS index as :func:`new_index` makes them (``None`` for any other index)."""
    import faiss

    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIVFFlat):
        return "ivf"
    if not isinstance(outer, faiss.IndexIDMap):
        return None
    inner = faiss.downcast_index(outer.index)
    if isinstance(inner, faiss.IndexHNSWFlat):
        return "hnsw"
    return "exact" if isinstance(inner, faiss.IndexFlat) else None

"""TEST DOUBLE of ``rap_deploy.library.Library`` for the serving tests, until the library package lands.

It implements exactly the library API the server codes against (``/work/notes/library_api.md``: ``__len__``,
``describe``, ``search``, ``search_embeddings``, ``thumbnail_frames``, ``close``) with a real computation: the videos
are encoded by the engine it is given into a :class:`rap_deploy.retrieval.VideoIndex`, and search is
:func:`rap_deploy.retrieval.two_stage_similarity` (stage 1 meanP, stage 2 the ASA head on the top M). It is not the
library (no FAISS, no shards, no manifest); the serving tests switch to ``open_library`` when the library merges.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rap_deploy.errors import UsageError
from rap_deploy.retrieval import _RERANK_OFFSET, encode_texts, encode_videos, meanp_similarity, sampling_for
from rap_deploy.retrieval import two_stage_similarity as _two_stage

MAX_QUERY_CHARS = 1000


class IndexLibraryDouble:
    """A library over the videos of ``split`` encoded by ``engine`` (see the module docstring)."""

    def __init__(self, engine: Any, split: Any, cache: Any) -> None:
        self.engine, self.split, self.cache = engine, split, cache
        self.index = encode_videos(engine, split, cache, batch_size=8, progress=False)
        self.paths = {v.video_id: str(v.path) for v in split.videos}
        self.closed = False

    def __len__(self) -> int:
        return len(self.index)

    def describe(self) -> dict[str, Any]:
        info = self.engine.describe()
        return {"size": len(self), "model": {k: v for k, v in self.engine.config.to_dict().items()
                                             if k != "preprocess"},
                "engine": info.to_dict() if hasattr(info, "to_dict") else dict(info),
                "stage1": {"index": "exact inner product (test double)", "recall_at_m": 1.0},
                "bytes_per_video": int(self.index.video_emb[0].nbytes + self.index.frame_emb[0].nbytes
                                       + self.index.patch_tokens[0].nbytes)}

    def search(self, queries: list[str], top_k: int = 10, top_m: int = 100) -> list[dict[str, Any]]:
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise UsageError("a query must be non-empty text")
            if len(q) > MAX_QUERY_CHARS:
                raise UsageError(f"a query is longer than {MAX_QUERY_CHARS} characters")
        t0 = time.perf_counter()
        emb = encode_texts(self.engine, list(queries))
        text_ms = (time.perf_counter() - t0) * 1e3
        out = self.search_embeddings(emb, top_k, top_m)
        for q, r in zip(queries, out, strict=True):
            r["timings_ms"]["text"] = text_ms / len(queries)
            r["timings_ms"]["total"] += text_ms / len(queries)
            r["query"] = q
        return [{"query": r.pop("query"), **r} for r in out]

    def search_embeddings(self, text_emb: np.ndarray, top_k: int = 10, top_m: int = 100) -> list[dict[str, Any]]:
        emb = np.asarray(text_emb, dtype=np.float32)
        t0 = time.perf_counter()
        stage1 = meanp_similarity(emb, self.index)
        t1 = time.perf_counter()
        scores = _two_stage(self.engine, emb, self.index, top_m, progress=False)
        t2 = time.perf_counter()
        out = []
        for q in range(len(emb)):
            order = np.argsort(-scores[q], kind="stable")[:top_k]
            s1_rank = np.empty(len(self.index), dtype=np.int64)
            s1_rank[np.argsort(-stage1[q], kind="stable")] = np.arange(1, len(self.index) + 1)
            results = []
            for rank, v in enumerate(order, 1):
                s = float(scores[q, v])
                vid = self.index.video_ids[v]
                results.append({"rank": rank, "video_id": vid, "path": self.paths[vid],
                                "score": s - _RERANK_OFFSET if s >= _RERANK_OFFSET / 2 else s,
                                "stage1_rank": int(s1_rank[v])})
            out.append({"results": results, "timings_ms": {"text": 0.0, "stage1": (t1 - t0) * 1e3 / len(emb),
                                                           "rerank": (t2 - t1) * 1e3 / len(emb),
                                                           "total": (t2 - t0) * 1e3 / len(emb)}})
        return out

    def thumbnail_frames(self, video_id: str, count: int = 4) -> np.ndarray:
        entry = next((v for v in self.split.videos if v.video_id == video_id), None)
        if entry is None:
            raise KeyError(video_id)
        video = self.cache.get(entry.path, sampling_for(self.engine.config, self.split.sampling),
                               self.engine.config.preprocess, entry.start, entry.end)
        valid = np.flatnonzero(video.mask)
        pick = valid[np.linspace(0, len(valid) - 1, min(count, len(valid))).round().astype(int)]
        return np.asarray(video.frames[pick], dtype=np.uint8)

    def close(self) -> None:
        self.closed = True

"""The bench's video index and two-stage search: a random index with realistic re-rank tensors, its size per video,
one search call, and the search / video-encoder latency ratio of issue 11."""

from __future__ import annotations

from typing import Any

import numpy as np

SEARCH_TOP = 10


def random_index(videos: int, frames: int, patches: int, dim: int, seed: int = 0, chunk: int = 64,
                 asa: Any = None) -> Any:
    """A :class:`~rap_deploy.retrieval.VideoIndex` of ``videos`` entries of random unit vectors, each tensor in its
    ``INDEX_DTYPES`` dtype (patch tokens fp16, as a real index stores them). With ``asa`` (the model's
    :class:`~rap_deploy.model.asa.AsynchronousSelfAttention`) the index also holds the ``asa_tokens`` that module
    computes from those stored patch tokens (every frame valid), so the re-rank reads realistic values."""
    import torch

    from rap_deploy.graphs import INDEX_DTYPES
    from rap_deploy.retrieval import VideoIndex

    rng = np.random.default_rng(seed)
    patch = np.empty((videos, frames, patches, dim), dtype=INDEX_DTYPES["patch_tokens"])
    tokens = None if asa is None else np.empty((videos, frames, patches, asa.token_width),
                                               dtype=INDEX_DTYPES["asa_tokens"])
    # The tokens are computed where and in the precision the head runs (CUDA, fp16), then stored as an index does.
    weight = None if asa is None else asa.q_proj.weight
    for i in range(0, videos, chunk):
        x = rng.standard_normal((min(chunk, videos - i), frames, patches, dim), dtype=np.float32)
        patch[i:i + chunk] = x / np.linalg.norm(x, axis=-1, keepdims=True)
        if tokens is not None:
            stored = torch.from_numpy(patch[i:i + chunk].astype(np.float32)).to(weight.device, weight.dtype)
            with torch.no_grad():
                out = asa.video_tokens(stored, torch.ones(stored.shape[:2], device=weight.device))
            tokens[i:i + chunk] = out.float().cpu().numpy()
    frame = rng.standard_normal((videos, frames, dim), dtype=np.float32)
    frame /= np.linalg.norm(frame, axis=-1, keepdims=True)
    video = frame.sum(1)
    video /= np.linalg.norm(video, axis=-1, keepdims=True)
    return VideoIndex([f"random{i}" for i in range(videos)], video.astype(INDEX_DTYPES["video_emb"]),
                      frame.astype(INDEX_DTYPES["frame_emb"]), patch, tokens)


def index_bytes_per_video(index: Any) -> dict[str, int]:
    """Bytes one video takes in ``index``, per stored tensor and in total (``total``)."""
    from rap_deploy.graphs import video_outputs

    sizes = {n: int(getattr(index, n)[0].nbytes) for n in video_outputs(index.has_asa)}
    return {**sizes, "total": sum(sizes.values())}


def search_vs_video(results: list[dict[str, Any]]) -> dict[str, float]:
    """Per engine: the two-stage search's p50 at batch 1 over the video encoder's batch-1 p50 of the same run (the
    issue-11 target is <= 0.1). Engines without both rows are left out."""
    p50 = {(r["engine"], r["graph"]): r["p50_ms"] for r in results if r["batch_size"] == 1}
    return {engine: p50[(engine, "search")] / p50[(engine, "video")] for engine, graph in p50
            if graph == "search" and (engine, "video") in p50 and p50[(engine, "video")] > 0}


def search(engine: Any, input_ids: np.ndarray, eot: np.ndarray, index: Any, top_m: int,
           top: int = SEARCH_TOP) -> np.ndarray:
    """Two-stage search of a batch of tokenised queries; returns the top ``top`` video indices ``[B, top]``."""
    from rap_deploy.retrieval import two_stage_similarity

    text_emb = engine.encode_text(input_ids, eot)
    scores = two_stage_similarity(engine, text_emb, index, top_m, progress=False)
    k = min(top, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1)
    return np.take_along_axis(best, order, axis=1)

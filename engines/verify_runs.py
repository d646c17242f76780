"""The two evaluations :func:`rap_deploy.engines.verify.verify` compares, and the errors of their outputs.

The reference (PyTorch eager) and the engine go through :func:`rap_deploy.retrieval.evaluate` on the same frames
(:func:`evaluate_both`; :class:`ReferenceRuns` keeps the reference's run across calls); :func:`output_errors` then
measures how far the engine's stored outputs are from the reference's, and :func:`graph_errors` which graph the
difference comes from.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rap_deploy.engines.verify_rules import vector_error
from rap_deploy.errors import CheckFailedError
from rap_deploy.graphs import INDEX_DTYPES


# ---------------------------------------------------------------------------------------------------- evaluations
@dataclass
class Evaluations:
    """Both evaluations on the same decoded videos (``used``: the split without undecodable videos)."""

    ref_eval: dict[str, Any]
    eng_eval: dict[str, Any]
    used: Any
    ref_seconds: float
    eng_seconds: float
    ref_reused: bool = False


@dataclass
class ReferenceRuns:
    """The reference's evaluations, kept by the caller across :func:`~rap_deploy.engines.verify.verify` calls of one
    process.

    Verifying several engines built from one checkpoint evaluates the same PyTorch model on the same frames each
    time; with one of these passed to every call the reference runs once. An entry is reused only for the same
    checkpoint (sha256), data, split, video limit, top-M, batch size and reference device; the engine's evaluation
    must still see the same videos (:func:`evaluate_both` checks).
    """

    runs: dict[tuple, tuple[dict[str, Any], float]] = field(default_factory=dict)


def evaluate_both(reference: Any, engine: Any, data: Any, cache: Any, top_m: int, batch_size: int,
                  progress: bool, reference_runs: ReferenceRuns | None = None, key: tuple = ()) -> Evaluations:
    """Run :func:`rap_deploy.retrieval.evaluate` for the reference (or reuse its run from ``reference_runs`` under
    ``key``), then the engine, on the same frames; raises :class:`CheckFailedError` when they saw different videos
    or none decoded."""
    from rap_deploy.data.progress import progress_label
    from rap_deploy.retrieval import evaluate

    t0 = time.perf_counter()
    kept = reference_runs.runs.get(key) if reference_runs is not None else None
    if kept is None:
        with _finite_scores("reference"), progress_label("PyTorch reference"):
            ref_eval = evaluate(reference, data, cache, top_m=top_m, batch_size=batch_size, progress=progress,
                                return_scores=True)
        if reference_runs is not None:
            reference_runs.runs[key] = (ref_eval, time.perf_counter() - t0)
    else:
        ref_eval = kept[0]
    t1 = time.perf_counter()
    with _finite_scores("engine"), progress_label("engine"):
        eng_eval = evaluate(engine, data, cache, top_m=top_m, batch_size=batch_size, progress=progress,
                            return_scores=True)
    t2 = time.perf_counter()
    used = ref_eval["scores"]["split"]
    if [v.video_id for v in used.videos] != [v.video_id for v in eng_eval["scores"]["split"].videos]:
        raise CheckFailedError("the reference and the engine saw different videos (the frame cache changed during "
                               "the run); rerun verify")
    if not used.num_captions:
        raise CheckFailedError(f"no test video could be decoded ({len(ref_eval['skipped'])} skipped); run "
                               "`rapdeploy data-check`")
    if kept is not None:  # the seconds the reference took when it ran
        return Evaluations(ref_eval, eng_eval, used, kept[1], t2 - t1, ref_reused=True)
    return Evaluations(ref_eval, eng_eval, used, t1 - t0, t2 - t1)


@contextlib.contextmanager
def _finite_scores(who: str) -> Iterator[None]:
    """Turn NaN/inf similarities into a failed check (exit 1) naming ``who`` computed them."""
    from rap_deploy.metrics import NonFiniteScoresError

    try:
        yield
    except NonFiniteScoresError as exc:
        fix = "rebuild the engine from an export that passes its parity check" if who == "engine" else \
            "the checkpoint's weights hold NaN or overflow: retrain or restore it"
        raise CheckFailedError(f"the {who}'s {exc}; {fix}") from None


def output_errors(reference: Any, engine: Any, run: Evaluations, cache: Any, batch_size: int
                  ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Embedding errors of every stored output (and of the first batch in fp32), and the error of each graph on
    identical inputs (:func:`graph_errors`)."""
    ref_index, eng_index = run.ref_eval["scores"]["index"], run.eng_eval["scores"]["index"]
    embedding_error: dict[str, Any] = {
        "video_emb": vector_error(ref_index.video_emb, eng_index.video_emb),
        "frame_emb": vector_error(ref_index.frame_emb, eng_index.frame_emb),
        "patch_tokens": {**vector_error(ref_index.patch_tokens, eng_index.patch_tokens, chunk=16),
                         "stored": INDEX_DTYPES["patch_tokens"]},
        **({"asa_tokens": {**vector_error(ref_index.asa_tokens, eng_index.asa_tokens, chunk=16),
                           "stored": INDEX_DTYPES["asa_tokens"]}} if ref_index.has_asa and eng_index.has_asa else {}),
        "text_emb": vector_error(run.ref_eval["scores"]["text_emb"], run.eng_eval["scores"]["text_emb"]),
        "first_batch_fp32": _first_batch_error(reference, engine, run.used, cache, batch_size),
    }
    per_graph = graph_errors(reference, engine, embedding_error, run.ref_eval["scores"]["text_emb"], ref_index)
    return embedding_error, per_graph


# ---------------------------------------------------------------------------------------------------- errors
def _first_batch_error(reference: Any, engine: Any, split: Any, cache: Any, batch_size: int) -> dict[str, Any]:
    """Errors of every video output in float32 (the index keeps patch tokens in fp16) on the first videos."""
    from rap_deploy.graphs import video_outputs
    from rap_deploy.retrieval import has_asa_head, load_video_batch

    idx = list(range(min(batch_size, split.num_videos)))
    frames, mask = load_video_batch(split, idx, cache, reference.config)
    ref = reference.encode_video(frames, mask)
    eng = engine.encode_video(frames, mask)
    names = video_outputs(has_asa_head(engine))
    return {n: vector_error(r, e) for n, r, e in zip(names, ref, eng, strict=True)}


def graph_errors(reference: Any, engine: Any, embedding_error: dict[str, Any], text_emb: np.ndarray, index: Any,
                 queries: int = 32, videos: int = 64) -> dict[str, dict[str, Any]]:
    """Error of each graph on identical inputs, so a failure points at the graph that causes it.

    The video and text encoders already saw identical frames and tokens (their output errors are in
    ``embedding_error``); the ASA head is run here by both on the *reference's* embeddings of the first ``queries``
    texts and ``videos`` videos.
    """
    video = list(embedding_error["first_batch_fp32"].values())
    out: dict[str, dict[str, Any]] = {
        "video_encoder": {"max_abs": max(e["max_abs"] for e in video),
                          "min_cosine": min(e["min_cosine"] for e in video)},
        "text_encoder": {k: embedding_error["text_emb"][k] for k in ("max_abs", "min_cosine")},
    }
    q = np.asarray(text_emb[:queries], dtype=np.float32)
    rerank = index.rerank(slice(0, videos)) or (index.frame_emb[:videos],)  # meanP engines: frame_emb
    ref = reference.asa_similarity(q, *rerank)
    eng = engine.asa_similarity(q, *rerank)
    out["asa_head" if getattr(engine, "has_asa", True) else "meanp_head"] = {
        "max_abs": float(np.abs(ref - eng).max()), "min_cosine": None, "pairs": int(ref.size)}
    return out

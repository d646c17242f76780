"""Retrieval of one checkpoint's ASA head with its top-k chosen by the caption and by frame saliency.

The same weights, two selections, and how much each lifts a query's own video against the videos that compete with
it.

For every test caption of a synthetic split, three similarities to every test video: ``meanp`` (the checkpoint's
stage 1, the frames' mean alone), ``text`` (the full ASA similarity with each frame's top-k patches chosen by the
caption, RAP's selection) and ``saliency`` (chosen by each frame's own embedding). For each: t2v R@1, and the mean
*lift* (the similarity minus ``meanp``'s) of the caption's own video, of every other video, and of the other video
``meanp`` ranks highest (the hardest negative before the ASA term: one fixed video per caption, so the two
selections are compared on the same videos); ``margin`` is the mean of own video minus best other video.
``crossed`` gives t2v R@1 with the caption's own video scored under one selection and every other video under the
other: it says whether a selection gains or loses on the right video or on the wrong ones. ``evidence`` gives
t2v R@1 of the selection's own scores alone (:func:`selection_evidence`: how much the caption's cosine with the
patches each selection keeps says about which video it describes), without the ASA head.

Text selection picks, in every video, the patches most like the query, so it can lift a wrong video that shares
the query's objects along with the right one; saliency selection does not adapt to the query. The lifts say which
videos each selection moves, and by how much.

Run: ``python -m rap_deploy.data.selection_lift --checkpoint RUN/best.pt --data-root DIR [--cache DIR]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rap_deploy.model.asa import AsynchronousSelfAttention

SELECTIONS = ("text", "saliency")


def _paired_similarities(a: np.ndarray, b: np.ndarray, caption_video: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float64 ``[Q,V]`` and ``caption_video`` as int64 ``[Q]``. Raises ``ValueError`` unless both
    matrices have one row per caption, the same shape and at least two videos."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    caption_video = np.asarray(caption_video, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] != len(caption_video) or a.shape[1] < 2:
        raise ValueError(f"similarities {a.shape} and {b.shape} do not match {len(caption_video)} captions "
                         "and at least two videos")
    return a, b, caption_video


def lift_summary(sim: np.ndarray, base: np.ndarray, caption_video: np.ndarray) -> dict[str, float]:
    """Lifts of ``sim [Q,V]`` over ``base [Q,V]`` (same shape; row ``q``'s own video is ``caption_video[q]``):
    ``own``, ``others`` (mean over every other video), ``hardest_base_other`` (the other video ``base`` scores
    highest), and ``margin`` (own minus best other, under ``sim``). Raises ``ValueError`` for mismatched shapes or
    fewer than two videos."""
    sim, base, caption_video = _paired_similarities(sim, base, caption_video)
    rows = np.arange(len(caption_video))
    lift = sim - base
    own = lift[rows, caption_video]
    others = (lift.sum(1) - own) / (lift.shape[1] - 1)
    masked_base, masked_sim = base.copy(), sim.copy()
    masked_base[rows, caption_video] = -np.inf
    masked_sim[rows, caption_video] = -np.inf
    hardest = masked_base.argmax(1)
    return {"own": round(float(own.mean()), 4), "others": round(float(others.mean()), 4),
            "hardest_base_other": round(float(lift[rows, hardest].mean()), 4),
            "margin": round(float((sim[rows, caption_video] - masked_sim.max(1)).mean()), 4)}


def t2v_r1(sim: np.ndarray, caption_video: np.ndarray) -> float:
    """t2v R@1 of ``sim [Q,V]`` in percent (:func:`rap_deploy.metrics.retrieval_metrics`)."""
    from rap_deploy.metrics import retrieval_metrics

    return retrieval_metrics(sim, caption_video)["t2v"]["R1"]


def crossed_r1(own: np.ndarray, others: np.ndarray, caption_video: np.ndarray) -> float:
    """t2v R@1 (percent, :func:`rap_deploy.metrics.retrieval_metrics`) of the similarity that takes row ``q``'s own
    video (``caption_video[q]``) from ``own [Q,V]`` and every other video from ``others [Q,V]``. Raises
    ``ValueError`` for mismatched shapes or fewer than two videos."""
    own, others, caption_video = _paired_similarities(own, others, caption_video)
    rows = np.arange(len(caption_video))
    mixed = others.copy()
    mixed[rows, caption_video] = own[rows, caption_video]
    return t2v_r1(mixed, caption_video)


def selection_evidence(asa: AsynchronousSelfAttention, text_emb: np.ndarray, frame_emb: np.ndarray,
                       patch_tokens: np.ndarray, video_block: int = 32) -> np.ndarray:
    """The selection's own scores ``[Q, V]``: for each caption and video, the mean over the video's valid frames of
    the mean cosine of the caption with the ``k`` patches ``asa``'s selection keeps in that frame (its
    ``selection`` setting: by the caption, or by the frame's own embedding).

    ``text_emb [Q,d]`` and ``patch_tokens [V,T,P,d]`` L2-normalised, ``frame_emb [V,T,d]`` with zero rows for padded
    frames. The selection is :meth:`AsynchronousSelfAttention.select` itself, ``video_block`` videos at a time.
    """
    import torch

    from rap_deploy.model.asa import valid_frames

    text = torch.from_numpy(np.asarray(text_emb, dtype=np.float32))
    out = np.empty((len(text), len(frame_emb)), dtype=np.float32)
    with torch.no_grad():
        for v0 in range(0, len(frame_emb), video_block):
            frames = torch.from_numpy(np.asarray(frame_emb[v0:v0 + video_block], dtype=np.float32))
            tokens = torch.from_numpy(np.asarray(patch_tokens[v0:v0 + video_block], dtype=np.float32))
            query = frames if asa.selection == "saliency" else text
            idx = asa.select(query, tokens)  # [Q|1, V, T, k]
            scores = torch.einsum("qd,vtpd->qvtp", text, tokens)
            kept = scores.gather(3, idx.expand(len(text), -1, -1, -1)).mean(-1)  # [Q, V, T]
            valid = valid_frames(frames).float()
            out[:, v0:v0 + len(frames)] = ((kept * valid).sum(-1) / valid.sum(-1).clamp_min(1.0)).numpy()
    return out


def checkpoint_selection_lift(checkpoint: str | Path, data_root: str | Path, cache_dir: str | Path | None = None,
                              progress: bool = True) -> dict[str, Any]:
    """Evaluate ``checkpoint``'s ASA head on the synthetic test split at ``data_root`` with both selections (see the
    module docstring). Returns ``{"trained_selection", "queries", "meanp": {"R1"}, "text": {...}, "saliency":
    {...}, "crossed": {...}, "evidence": {...}}``, each selection with ``R1`` and :func:`lift_summary`,
    ``crossed`` with :func:`crossed_r1` both ways round, ``evidence`` the R@1 of :func:`selection_evidence` for
    each selection. The head's own setting is restored afterwards.
    Raises :class:`UsageError` for a model without an ASA head or data not written by ``rapdeploy synth``."""
    from rap_deploy.data.synth_errors import encode_test_split
    from rap_deploy.retrieval import full_similarity, meanp_similarity

    enc = encode_test_split(checkpoint, data_root, cache_dir, progress, require_asa=True)
    asa, caption_video = enc.model.asa, np.asarray(enc.split.caption_video)
    trained = asa.selection
    base = meanp_similarity(enc.text_emb, enc.index)
    out: dict[str, Any] = {"trained_selection": trained, "queries": len(caption_video),
                           "meanp": {"R1": t2v_r1(base, caption_video)}}
    sims, evidence = {}, {}
    try:
        for mode in SELECTIONS:
            asa.selection = mode
            sims[mode] = sim = full_similarity(enc.encoder, enc.text_emb, enc.index, progress=progress)
            out[mode] = {"R1": t2v_r1(sim, caption_video),
                         **lift_summary(sim, base, caption_video)}
            scores = selection_evidence(asa, enc.text_emb, enc.index.frame_emb, enc.index.patch_tokens)
            evidence[mode] = t2v_r1(scores, caption_video)
    finally:
        asa.selection = trained
    out["crossed"] = {"own_text_others_saliency": crossed_r1(sims["text"], sims["saliency"], caption_video),
                      "own_saliency_others_text": crossed_r1(sims["saliency"], sims["text"], caption_video)}
    out["evidence"] = evidence
    return out


def main(argv: list[str] | None = None) -> None:
    """Print :func:`checkpoint_selection_lift` as JSON."""
    from rap_deploy.data.synth_errors import checkpoint_report_main

    checkpoint_report_main(__doc__.splitlines()[0], checkpoint_selection_lift, argv)


if __name__ == "__main__":
    main()

"""The training loss: symmetric InfoNCE over the (global) batch, with RAP's text-conditioned similarity.

For ``rap`` every (text, video) pair of the batch is scored with the text-conditioned ASA similarity
(``RAPModel.asa_similarity`` works in bounded chunks); for ``rap_light`` and ``--no-asa`` it is meanP.
``loss = (CE(s·sim) + CE(s·simᵀ)) / 2`` with the frozen CLIP logit scale ``s``.

With ``selection_loss_weight`` w > 0 and an ASA head, ``w`` times the same InfoNCE of :func:`patch_alignment` is
added. ASA's top-k selection is discrete, so the contrastive loss never reaches the scores it ranks patches by (the
cosine of the caption with each patch token); this term does, through LoRM's modulation of the patch tokens: a
caption's best patch per frame should match its own video better than the other videos of the batch.

Several captions of one video in a batch: the other copies of the video (and the other captions of it) are not
negatives. Their logits are masked out of the softmax, so a duplicate never pushes a caption away from its own video.
(The default sampler already draws one caption per video per epoch, so duplicates only occur with
``epoch_unit="caption"``.)

Distributed (``world_size > 1``): each rank encodes its local share, the video and text embeddings are gathered with
gradient, and rank ``r`` computes the rows of its local texts and the columns of its local videos, each divided by the
global batch size. The per-rank losses sum to the single-process loss over the global batch, so summing the gradients
over ranks (``all_reduce_gradients``) reproduces the single-process gradient exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rap_deploy.model.asa import valid_frames
from rap_deploy.train.distributed import DistContext, gather_with_grad


def duplicate_mask(video_ids: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` bool: True where two different batch positions hold the same video (excluded as negatives)."""
    same = video_ids.view(-1, 1) == video_ids.view(1, -1)
    return same & ~torch.eye(len(video_ids), dtype=torch.bool, device=video_ids.device)


def symmetric_info_nce(sim: torch.Tensor, logit_scale: torch.Tensor | float,
                       video_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE of a square ``[B_text, B_video]`` similarity whose diagonal holds the positive pairs.

    ``video_ids`` (``[B]``, optional) marks batch positions that share a video; those off-diagonal pairs are masked.
    Returns the scalar ``(CE_t2v + CE_v2t) / 2`` (mean over the batch).
    """
    logits = sim.float() * logit_scale
    if video_ids is not None:
        logits = logits.masked_fill(duplicate_mask(video_ids), float("-inf"))
    target = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def patch_alignment(text_emb: torch.Tensor, frame_emb: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
    """Fine-grained similarity ``[Q, V]`` of L2-normalised ``text_emb [Q,d]`` with each video: the mean over the
    video's valid frames (``frame_emb [V,T,d]``, zero rows for padded frames) of the cosine of the text with the
    frame's best patch of ``patch_tokens [V,T,P,d]`` (L2-normalised, as the ASA selection reads them)."""
    v, t, p, d = patch_tokens.shape
    valid = valid_frames(frame_emb).to(text_emb.dtype)  # [V,T]
    best = (text_emb @ patch_tokens.reshape(v * t * p, d).to(text_emb.dtype).T).view(-1, v, t, p).amax(-1)
    return (best * valid).sum(-1) / valid.sum(-1).clamp_min(1.0)


def batch_loss(model: torch.nn.Module, frames: torch.Tensor, frame_mask: torch.Tensor, ids: torch.Tensor,
               eot: torch.Tensor, video_ids: torch.Tensor, ctx: DistContext | None = None,
               selection_loss_weight: float = 0.0) -> torch.Tensor:
    """This rank's share of the contrastive loss of a global batch (the full loss for a single process).

    ``frames [b,T,3,S,S]``, ``frame_mask [b,T]``, ``ids [b,L]``, ``eot [b]`` are the local share (``b`` = global
    batch / world size, equal on every rank, in rank order); ``video_ids [B_global]`` the video index of every
    position of the global batch. The sum of the returned values over ranks is the symmetric InfoNCE over the global
    batch (``all_reduce_sum`` it for logging), plus ``selection_loss_weight`` times that of :func:`patch_alignment`
    for a model with an ASA head (see the module docstring).
    """
    ctx = ctx or DistContext()
    rerank = model.encode_video(frames, frame_mask)[1:]  # the re-rank tensors (rap_deploy.graphs.rerank_tensors)
    text_emb = model.encode_text(ids, eot)
    scale = model.logit_scale
    aligned = bool(selection_loss_weight) and getattr(model, "asa", None) is not None
    if not ctx.distributed:
        sim = model.asa_similarity(text_emb, *rerank)
        loss = symmetric_info_nce(sim, scale, video_ids)
        if aligned:
            loss = loss + selection_loss_weight * symmetric_info_nce(patch_alignment(text_emb, *rerank[:2]), scale,
                                                                     video_ids)
        return loss

    b = frames.shape[0]
    shapes = [text_emb.shape[1:], *(x.shape[1:] for x in rerank)]
    sizes = [s.numel() for s in shapes]
    dtype = rerank[0].dtype
    packed = torch.cat([text_emb.to(dtype).reshape(b, -1), *(x.to(dtype).reshape(b, -1) for x in rerank)], 1)
    gathered = gather_with_grad(packed, ctx)  # one collective for every tensor
    n = gathered.shape[0]
    parts = [x.reshape(n, *s) for x, s in zip(torch.split(gathered, sizes, dim=1), shapes, strict=True)]
    t_all, rerank_all = parts[0].to(text_emb.dtype), parts[1:]

    lo = ctx.rank * b
    target = torch.arange(lo, lo + b, device=frames.device)
    dup = duplicate_mask(video_ids.to(frames.device))[lo:lo + b]  # [b, B]; symmetric, so rows serve both ways

    def share(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """This rank's share of one symmetric InfoNCE: ``rows`` local texts vs all videos ``[b, B]``, ``cols`` local
        videos vs all texts ``[b, B]``."""
        t2v = F.cross_entropy((rows.float() * scale).masked_fill(dup, float("-inf")), target, reduction="sum")
        v2t = F.cross_entropy((cols.float() * scale).masked_fill(dup, float("-inf")), target, reduction="sum")
        return (t2v + v2t) / (2 * n)

    loss = share(model.asa_similarity(text_emb, *rerank_all), model.asa_similarity(t_all, *rerank).T)
    if aligned:
        loss = loss + selection_loss_weight * share(patch_alignment(text_emb, *rerank_all[:2]),
                                                    patch_alignment(t_all, *rerank[:2]).T)
    return loss

"""The all-tokens ASA head (the formulation before issue 11), kept as the reference the split one is checked against.

Per (query block, video block) it projects EVERY patch token to queries, keys and values, warps the whole key/value
volumes, then gathers the selected rows — what ``asa_head`` computed before the query-independent part moved into
the video encoder. The only change from the old code is issue 14's fix, done here independently of the production
code path: each video's volume is warped on its own valid frames only (a truncated copy, clamped to ``[0, T_v - 1]``
by the static-bound warp), so padded frames cannot leak into a real frame's keys and values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rap_deploy.model.asa import trilinear_warp


def _warp_on_valid_frames(volume: torch.Tensor, asa, n_valid: torch.Tensor) -> torch.Tensor:
    """Warp ``volume [V,H,T,Hp,Wp,C]`` video by video on its first ``n_valid[v]`` frames (the rest stay zero)."""
    out = torch.zeros_like(volume)
    for v in range(volume.shape[0]):
        n = max(int(n_valid[v]), 1)
        out[v:v + 1, :, :n] = trilinear_warp(volume[v:v + 1, :, :n], asa.patch_offset, asa.time_offset)
    return out


@torch.no_grad()
def reference_similarity(asa, text_emb: torch.Tensor, frame_emb: torch.Tensor,
                         patch_tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[Q, V]`` of the all-tokens formulation (float32 throughout).

    ``asa`` is an :class:`~rap_deploy.model.asa.AsynchronousSelfAttention` (its weights and offsets are used),
    ``patch_tokens [V,T,P,d]`` float (an fp16 index is cast to float32 first, as the old pipeline did).
    """
    text_emb, frame_emb = text_emb.float(), frame_emb.float()
    patch_tokens = patch_tokens.float()
    v, t, p, _ = patch_tokens.shape
    h, dh, k = asa.heads, asa.attn_dim // asa.heads, asa.topk
    valid = (frame_emb.pow(2).sum(-1) > 0.5).float()
    n_valid = valid.sum(-1).clamp_min(1.0)

    query = frame_emb if asa.selection == "saliency" else text_emb
    idx = reference_selection(asa, query, patch_tokens)
    qn = idx.shape[0]
    offs = (torch.arange(v).view(1, v, 1, 1) * (t * p) + torch.arange(t).view(1, 1, t, 1) * p)
    flat_idx = (idx + offs).reshape(-1)

    queries = asa.q_proj(patch_tokens).reshape(v * t * p, asa.attn_dim).index_select(0, flat_idx)
    kv_grid = (v, t, asa.grid[0], asa.grid[1], h, dh)
    keys = asa.k_proj(patch_tokens).view(kv_grid).permute(0, 4, 1, 2, 3, 5)
    vals = asa.v_proj(patch_tokens).view(kv_grid).permute(0, 4, 1, 2, 3, 5)
    keys = _warp_on_valid_frames(keys, asa, valid.sum(-1))
    vals = _warp_on_valid_frames(vals, asa, valid.sum(-1))
    keys = keys.permute(0, 2, 3, 4, 1, 5).reshape(v * t * p, h * dh).index_select(0, flat_idx)
    vals = vals.permute(0, 2, 3, 4, 1, 5).reshape(v * t * p, h * dh).index_select(0, flat_idx)

    shape = (qn, v, t * k, h, dh)
    queries = queries.view(shape).transpose(2, 3)
    keys = keys.view(shape).transpose(2, 3)
    vals = vals.view(shape).transpose(2, 3)
    logits = queries @ keys.transpose(-1, -2) / math.sqrt(dh)
    key_valid = valid.unsqueeze(-1).expand(v, t, k).reshape(v, t * k)
    logits = logits + (1.0 - key_valid).view(1, v, 1, 1, t * k) * -1e4
    out = torch.softmax(logits, dim=-1) @ vals
    out = out.transpose(2, 3).reshape(qn, v, t, k, h * dh).mean(dim=3)
    pooled = (out * valid.view(1, v, t, 1)).sum(2) / n_valid.view(1, v, 1)
    mean_frames = frame_emb.sum(1) / n_valid.view(v, 1)
    cond = F.normalize(mean_frames.unsqueeze(0) + asa.out_proj(pooled), dim=-1)
    if cond.shape[0] == 1 and text_emb.shape[0] != 1:
        return text_emb @ cond[0].T
    return (cond * text_emb.unsqueeze(1)).sum(-1)


@torch.no_grad()
def reference_selection(asa, query: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
    """Top-k patch indices ``[Q', V, T, k]`` of the all-tokens formulation (cosine of the query with every token)."""
    patch_tokens = patch_tokens.float()
    if query.dim() == 2:
        scores = torch.einsum("qd,vtpd->qvtp", query.float(), patch_tokens)
    else:
        scores = torch.einsum("vtd,vtpd->vtp", query.float(), patch_tokens).unsqueeze(0)
    return torch.topk(scores, asa.topk, dim=-1).indices

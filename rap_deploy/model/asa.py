"""ASA: text-conditioned sparse patch selection, offset warping and asynchronous self-attention (DESIGN.md §3).

The head is split where the query enters (the contract of DESIGN.md §4, route 2 of issue 11, "index-time
precompute"):

- :meth:`AsynchronousSelfAttention.video_tokens` runs once per video, inside the video encoder: it projects every
  patch token to attention queries (``q_proj``) and to keys and values (``k_proj``, ``v_proj``), warps the keys and
  values by the per-head offsets (γ, δ) and returns them as one ``asa_tokens [V,T,P,3·d_a]`` tensor for the index.
  None of this depends on the query: γ and δ are parameters, so the warp is a fixed interpolation of each video's
  token volume.
- :meth:`AsynchronousSelfAttention.forward` runs per query over candidate videos: the top-k selection needs every
  patch token (cosine with the text), the attention only the ``k`` selected rows per frame of ``asa_tokens``, which
  are gathered *before* anything else touches them (and cast to the compute dtype after the gather, so an fp16
  index is never converted whole).

All sampling is index arithmetic, clamping and ``index_select`` (ONNX ``Gather``): no ``grid_sample``, no
data-dependent shapes, a constant top-k. Frames are valid as a prefix (the decoder pads short videos at the end,
``rap_deploy.data.video.decode_video``), so the temporal warp clamps each video's samples to ``[0, n_valid - 1]``:
padded frames never leak into a real frame's key or value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Padded-frame keys get this logit offset: exp(-1e4) is exactly 0 in fp32, so they take no attention weight.
_MASKED_LOGIT = -1e4


def _shift_along_axis(x: torch.Tensor, offset: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
    """Linearly sample ``x`` ``[G, H, N, R]`` at position ``n + offset[h]`` along axis 2, clamped to ``[0, last]``.

    ``G`` is a batch of groups, ``H`` heads (each with its own offset), ``N`` the sampled axis, ``R`` the rest.
    ``last`` (int64 ``[G]``, optional) is each group's last valid position (default ``N - 1`` for every group).
    Written as two ``index_select`` gathers and a weighted sum: without ``last`` over the flattened (head, position)
    axis at constant positions, with ``last`` over the flattened (group, head, position) axis at computed positions.
    """
    g, h, n, r = x.shape
    base = torch.floor(offset)  # [H]
    frac = (offset - base).view(1, h, 1, 1)  # gradient reaches the offset through the interpolation weight
    pos = torch.arange(n, device=x.device, dtype=torch.int64).view(1, n) + base.to(torch.int64).view(h, 1)  # [H, N]
    if last is None:  # one static bound: the gather positions are constants of the graph
        head = torch.arange(h, device=x.device, dtype=torch.int64).view(h, 1) * n
        flat = x.reshape(g, h * n, r)
        x0 = flat.index_select(1, (head + pos.clamp(0, n - 1)).reshape(-1)).view(g, h, n, r)
        x1 = flat.index_select(1, (head + (pos + 1).clamp(0, n - 1)).reshape(-1)).view(g, h, n, r)
        return x0 * (1.0 - frac) + x1 * frac
    upper = last.to(torch.int64).view(g, 1, 1)  # each group's own bound: still plain index arithmetic
    rows = (torch.arange(g, device=x.device, dtype=torch.int64).view(g, 1, 1) * h
            + torch.arange(h, device=x.device, dtype=torch.int64).view(1, h, 1)) * n
    flat = x.reshape(g * h * n, r)
    i0 = torch.minimum(pos.clamp_min(0).view(1, h, n), upper)  # [G, H, N]
    i1 = torch.minimum((pos + 1).clamp_min(0).view(1, h, n), upper)
    x0 = flat.index_select(0, (rows + i0).reshape(-1)).view(g, h, n, r)
    x1 = flat.index_select(0, (rows + i1).reshape(-1)).view(g, h, n, r)
    return x0 * (1.0 - frac) + x1 * frac


def trilinear_warp(volume: torch.Tensor, patch_offset: torch.Tensor, time_offset: torch.Tensor,
                   last_frame: torch.Tensor | None = None) -> torch.Tensor:
    """Sample a per-head token volume at (t + δ_h, row + γ_h,y, col + γ_h,x) with clamped borders.

    Args:
        volume: ``[V, H, T, Hp, Wp, C]`` token features per head.
        patch_offset: ``[H, 2]`` offsets (y, x) in patch units.
        time_offset: ``[H]`` offsets in frames.
        last_frame: int64 ``[V]``, each video's last valid frame (``n_valid - 1``); time is clamped to
            ``[0, last_frame[v]]`` so padded frames never leak in. ``None`` clamps to ``[0, T - 1]``.

    Returns:
        ``[V, H, T, Hp, Wp, C]``: trilinear interpolation (separable, so three linear passes are exact).
    """
    v, h, t, hp, wp, c = volume.shape
    x = _shift_along_axis(volume.reshape(v, h, t, hp * wp * c), time_offset, last_frame).view(v, h, t, hp, wp, c)
    x = x.permute(0, 2, 1, 3, 4, 5).reshape(v * t, h, hp, wp * c)  # rows
    x = _shift_along_axis(x, patch_offset[:, 0]).view(v, t, h, hp, wp, c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(v * t * hp, h, wp, c)  # cols
    x = _shift_along_axis(x, patch_offset[:, 1]).view(v, t, hp, h, wp, c)
    return x.permute(0, 3, 1, 2, 4, 5).contiguous()


def _in_export() -> bool:
    """Whether the code is being traced or compiled (ONNX export): then graphs get one op, not a Python loop."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def token_scores(query: torch.Tensor, tokens: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """``query [Q,d] @ tokens [N,d]ᵀ`` in ``query``'s dtype: the selection scores of every token.

    One GEMM with the tokens as the transposed right operand (ONNX Runtime's single-query kernel streams them once:
    measured 1.5x faster than ``tokens @ query.T`` and ~20x faster than an ONNX Einsum). Eagerly the fp16 → fp32
    cast and the product run ``chunk`` tokens at a time, so the fp32 copy stays in cache instead of going through
    memory (2x faster on 16 ViT-B/32 videos, identical values); traced, it is one Cast and one MatMul.
    """
    if _in_export():
        return query @ tokens.to(query.dtype).T
    out = query.new_empty(query.shape[0], tokens.shape[0])
    for i in range(0, tokens.shape[0], chunk):
        out[:, i:i + chunk] = query @ tokens[i:i + chunk].to(query.dtype).T
    return out


def stored_token_scores(query: torch.Tensor, store: torch.Tensor, video_rows: torch.Tensor) -> torch.Tensor:
    """:func:`token_scores` of the videos ``video_rows`` of a whole ``store [N,T,P,d]``: ``[Q, V, T, P]``.

    Eager only. Each video's block is cast and multiplied where it lies (one video at a time, so its fp32 copy stays
    in cache), instead of first copying every candidate's block out of the index.
    """
    _, t, p, d = store.shape
    out = query.new_empty(query.shape[0], len(video_rows), t * p)
    block = query.new_empty(t * p, d)  # one cast buffer for every video: no per-video allocation
    for i, row in enumerate(video_rows.tolist()):
        block.copy_(store[row].reshape(t * p, d))
        out[:, i] = query @ block.T
    return out.view(query.shape[0], len(video_rows), t, p)


# Below this many (query, video) pairs per block the fused kernel does not pay on a 2-core CPU: one query against
# 16 videos (a search's re-rank block) took 1.00-1.16x the written-out time with two threads (five A/Bs), 32 x 16
# pairs (an evaluation's block) 0.51-0.61x.
FUSED_MIN_PAIRS = 256


def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_bias: torch.Tensor,
           fused: bool = True) -> torch.Tensor:
    """Scaled dot-product attention of ``queries``, ``keys``, ``values`` ``[Q',V,H,Tk,d_h]`` with the additive logit
    ``key_bias [V,Tk]`` of each video's keys (``_MASKED_LOGIT`` on padded frames); returns ``[Q',V,H,Tk,d_h]``.

    Recorded for a gradient or an export, it is written out (matmul, in-place bias, softmax, matmul): training keeps
    its exact arithmetic and the graphs their node pattern, which the engines' precision plan reads. Without
    gradient (evaluation, ``verify``'s PyTorch reference) a block of at least :data:`FUSED_MIN_PAIRS` (query, video)
    pairs is one fused ``scaled_dot_product_attention`` call, which never writes the ``[Q',V,H,Tk,Tk]`` logits to
    memory: the same values up to float rounding (about 1e-6), in 0.54 to 0.66 of the time on a 2-core CPU (README,
    "The ASA re-rank: what a query costs"). ``fused=False`` always writes it out (``python -m
    rap_deploy.model.asa_cost`` times the two).
    """
    qn, v, h, n, dh = queries.shape
    scale = 1.0 / math.sqrt(dh)
    if not fused or torch.is_grad_enabled() or _in_export() or qn * v < FUSED_MIN_PAIRS:
        # The 1/sqrt(d_h) scale goes on the queries ([.., Tk, d_h]) rather than the logits ([.., Tk, Tk]).
        logits = (queries * scale) @ keys.transpose(-1, -2)  # [Q',V,H,Tk,Tk]
        logits.add_(key_bias.view(1, v, 1, 1, n))  # in place: matmul's backward needs its inputs, not its
        # output, and the largest tensor of the head is not allocated twice
        return torch.softmax(logits, dim=-1) @ values
    bias = key_bias.to(queries.dtype).view(1, v, 1, 1, n).expand(qn, v, 1, 1, n).reshape(qn * v, 1, 1, n)
    out = F.scaled_dot_product_attention(queries.reshape(qn * v, h, n, dh), keys.reshape(qn * v, h, n, dh),
                                         values.reshape(qn * v, h, n, dh), attn_mask=bias, scale=scale)
    return out.view(qn, v, h, n, dh)


def valid_frames(frame_emb: torch.Tensor) -> torch.Tensor:
    """Bool ``[V,T]``: which frames of ``frame_emb [V,T,d]`` are real. Real frames are L2-normalised, padded frames
    are zero rows, so a squared norm over 0.5 tells them apart (exported graphs read validity this way too)."""
    return frame_emb.pow(2).sum(-1) > 0.5


def in_score_precision(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` in float32 when they are in a half precision, else unchanged (an fp32 trace gains no node).

    The last reduction of a retrieval score (the cosine of a text with a video) runs in fp32 whatever precision the
    model runs in: an fp16 score has 1,024 steps between 0.5 and 1, so many candidates tie with the ground truth
    and DESIGN.md §6 ranks a tie in its favour; measured on an H200, the PyTorch fp16 engine had 186 of 200 queries
    more tied than the fp32 reference, and read 3 points of v2t R@5 too high. The exported graphs keep that
    reduction in fp32 by the precision plan (every reduction is fp32)."""
    if all(t.dtype == torch.float32 for t in tensors):
        return tensors
    return tuple(t.float() for t in tensors)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=-1)`` computed in float32 when ``x`` is in a half precision, returned in ``x``'s dtype
    (an fp32 ``x`` gives the same graph as ``F.normalize``).

    A zero vector (a video without a real frame) stays zero: in fp16 ``F.normalize``'s eps of 1e-12 rounds to 0, so
    it divided 0 by 0 and returned NaN."""
    if x.dtype == torch.float32:
        return F.normalize(x, dim=-1)
    return F.normalize(x.float(), dim=-1).to(x.dtype)


def last_valid_frame(frame_mask: torch.Tensor) -> torch.Tensor:
    """Each video's last valid frame index, int64 ``[V]``, from ``frame_mask [V,T]`` (1 = real frame).

    Frames are valid as a prefix (how ``decode_video`` pads), so it is ``n_valid - 1``; a video with no valid frame
    gets 0.
    """
    return (frame_mask.sum(-1) - 1.0).clamp_min(0.0).to(torch.int64)


def off_integers(x: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """A copy of ``x`` with each value that lies within ``margin`` of an integer moved up by ``2·margin``, away from
    linear interpolation's kinks (the initial offsets' reason in :func:`initial_offsets`); other values unchanged,
    same shape and dtype. Raises nothing of its own."""
    near = (x - torch.round(x)).abs() < margin
    return torch.where(near, x + 2 * margin, x)


def initial_offsets(heads: int, radius: float = 1.0, max_shift: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head initial offsets: ``γ [H, 2]`` (patch units) and ``δ [H]`` (frames), deterministic.

    Each head's γ points in its own direction on a circle of ``radius`` patches and δ spreads over
    ``[-max_shift, max_shift]`` frames, as deformable attention spreads its heads' sampling offsets. No value is
    zero or near an integer: there linear interpolation has a kink, the gradient's sign flips around it, Adam's
    momentum cancels and the offset never moves (measured: ≤ 2e-5 after training from zero). The output projection
    starts at zero, so the head still equals mean pooling at initialisation whatever the offsets.

    The spread (γ on a 1-patch circle, δ over ±2.5 frames: ±0.625 and ±1.875 for 4 heads) is measured on the
    synthetic benchmark: started at 0.6 patch / ±0.75 frame, the learned δ drifted to +1.2 … +2.0 frames within 93
    to 186 steps, and starting at the wider spread gave a higher t2v+v2t RSum after one epoch (240.5 vs 230).
    """
    h = torch.arange(heads, dtype=torch.float64)
    angle = 2 * math.pi * (h + 0.5) / heads + 0.3
    gamma = radius * torch.stack([torch.sin(angle), torch.cos(angle)], dim=1)
    delta = max_shift * (2 * (h + 0.5) / heads - 1) if heads > 1 else torch.full((1,), max_shift / 2)
    return off_integers(gamma).float(), off_integers(delta).float()


class AsynchronousSelfAttention(nn.Module):
    """The ASA head: select top-k patches per frame, warp, attend across frames, pool into a video embedding.

    Per video (:meth:`video_tokens`, in the video encoder): ``asa_tokens [V,T,P,3·d_a]``, per patch token the
    concatenation ``[q_proj(Z) | warp(k_proj(Z)) | warp(v_proj(Z))]`` (each ``d_a`` wide, head-major: channel
    ``h·d_h + j``), zero rows for padded frames. Per query (:meth:`forward`): L2-normalised ``text_emb [Q,d]``,
    ``frame_emb [V,T,d]`` (zero rows for padded frames), ``patch_tokens [V,T,P,d]`` and ``asa_tokens``. At
    initialisation (zero output projection) the conditioned video embedding equals mean pooling over valid frames.
    """

    #: Whether evaluation may use the fused attention kernel (:func:`attend`); False only to measure against it.
    fused_attention: bool = True

    def __init__(self, dim: int, grid: tuple[int, int], topk: int = 8, heads: int = 4, attn_dim: int = 128,
                 selection: str = "text") -> None:
        super().__init__()
        if attn_dim % heads:
            raise ValueError(f"attn_dim {attn_dim} is not divisible by heads {heads}")
        self.dim, self.grid, self.heads, self.attn_dim = dim, tuple(grid), heads, attn_dim
        self.topk = min(topk, grid[0] * grid[1])
        self.selection = selection
        self.q_proj = nn.Linear(dim, attn_dim)
        self.k_proj = nn.Linear(dim, attn_dim)
        self.v_proj = nn.Linear(dim, attn_dim)
        self.out_proj = nn.Linear(attn_dim, dim)
        # The key bias adds q·b to every logit of a query: softmax ignores it, so its gradient is zero up to rounding,
        # and Adam would turn that rounding noise into learning-rate-sized random steps. It stays a parameter (the
        # checkpoints and graphs keep it) but never trains, and the trainable-parameter count leaves it out.
        self.k_proj.bias.requires_grad_(False)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        gamma, delta = initial_offsets(heads)
        self.patch_offset = nn.Parameter(gamma)  # γ_h (y, x), patch units
        self.time_offset = nn.Parameter(delta)  # δ_h, frames

    @property
    def token_width(self) -> int:
        """Width of one ``asa_tokens`` row: ``3·d_a`` (queries, warped keys, warped values)."""
        return 3 * self.attn_dim

    # ------------------------------------------------------------------ per video (index time)
    def video_tokens(self, patch_tokens: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """The query-independent ASA tensors of each video: ``asa_tokens [V,T,P,3·d_a]`` (see the class docstring).

        ``patch_tokens [V,T,P,d]`` as the index stores them, ``frame_mask [V,T]`` (1 = real frame; valid frames are
        a prefix). The warp clamps time to each video's own valid frames. Returns the dtype of ``patch_tokens``.
        """
        v, t, p, _ = patch_tokens.shape
        h, dh, da = self.heads, self.attn_dim // self.heads, self.attn_dim
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # one GEMM for all three
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        qkv = F.linear(patch_tokens, weight, bias)  # [V,T,P,3·d_a]
        queries = qkv[..., :da]
        # Keys and values share each head's offsets: warp them as one volume [V,H,T,Hp,Wp,2·d_h].
        kv = qkv[..., da:].reshape(v, t, self.grid[0], self.grid[1], 2, h, dh).permute(0, 5, 1, 2, 3, 4, 6)
        kv = trilinear_warp(kv.reshape(v, h, t, self.grid[0], self.grid[1], 2 * dh), self.patch_offset,
                            self.time_offset, last_valid_frame(frame_mask))
        kv = kv.view(v, h, t, self.grid[0], self.grid[1], 2, dh).permute(0, 2, 3, 4, 5, 1, 6).reshape(v, t, p, 2 * da)
        tokens = torch.cat([queries, kv], dim=-1)
        return tokens * frame_mask.to(tokens.dtype).view(v, t, 1, 1)

    # ------------------------------------------------------------------ per query (re-rank time)
    @torch.no_grad()  # the selection is discrete (top-k indices): no gradient flows through its scores
    def select(self, query: torch.Tensor, patch_tokens: torch.Tensor,
               video_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Top-k patch indices ``[Q, V, T, k]`` by cosine of ``query [Q,d]`` (or ``[V,T,d]`` for saliency).

        ``patch_tokens`` may be in the index's dtype (fp16): they are cast to ``query``'s dtype for the scores. With
        ``video_rows`` (int64 ``[V]``, eager only) ``patch_tokens`` is a whole store ``[N,T,P,d]`` read in place at
        those rows.
        """
        if video_rows is not None:
            if query.dim() == 2:
                return torch.topk(stored_token_scores(query, patch_tokens, video_rows), self.topk, dim=-1).indices
            patch_tokens = patch_tokens.index_select(0, video_rows)
        v, t, p, d = patch_tokens.shape
        tokens = patch_tokens.reshape(v * t * p, d)
        if query.dim() == 2:
            scores = token_scores(query, tokens).view(-1, v, t, p)
        else:
            tokens = tokens.to(query.dtype)
            scores = (tokens.view(v * t, p, d) @ query.reshape(v * t, d, 1)).view(1, v, t, p)
        return torch.topk(scores, self.topk, dim=-1).indices

    def conditioned_embedding(self, text_emb: torch.Tensor, frame_emb: torch.Tensor, patch_tokens: torch.Tensor,
                              asa_tokens: torch.Tensor, video_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Return the L2-normalised text-conditioned video embeddings ``[Q, V, d]``.

        With ``selection == "saliency"`` the selection uses each frame's own embedding, so Q collapses to 1. Only the
        ``k`` selected rows per frame of ``asa_tokens`` are read; they are cast to ``text_emb``'s dtype after the
        gather. With ``video_rows`` (int64 ``[V]``, eager only) the three tensors are whole index stores
        (``[N,T,...]``) and the videos at those rows are scored without copying their blocks out first: the
        selection streams each video's patch tokens and the gather reads only the selected ``asa_tokens`` rows.
        """
        if video_rows is not None:
            frame_emb = frame_emb.index_select(0, video_rows)
            base = video_rows
        else:
            base = torch.arange(frame_emb.shape[0], device=frame_emb.device)
        v = frame_emb.shape[0]
        t, p = patch_tokens.shape[1:3]
        h, dh, k = self.heads, self.attn_dim // self.heads, self.topk
        dtype = text_emb.dtype
        valid = valid_frames(frame_emb).to(dtype)  # [V,T]
        count = valid.sum(-1)  # [V]
        n_valid = count.clamp_min(1.0)

        query = frame_emb if self.selection == "saliency" else text_emb
        idx = self.select(query, patch_tokens, video_rows)  # [Q', V, T, k]
        qn = idx.shape[0]
        # Flat gather index into the [N*T*P] token axis: row*T*P + t*P + p.
        offs = base.view(1, v, 1, 1) * (t * p) + torch.arange(t, device=idx.device).view(1, 1, t, 1) * p
        rows = asa_tokens.reshape(-1, self.token_width).index_select(0, (idx + offs).reshape(-1))
        rows = rows.to(dtype).view(qn, v, t * k, 3, h, dh).permute(3, 0, 1, 4, 2, 5)  # [3,Q',V,H,Tk,dh]
        # unbind when training: each of rows[0], rows[1], rows[2]'s backward zero-fills a gradient of all three and
        # adds into it (4.5 % of a demo training step), unbind's writes the three once. Exported graphs keep the three
        # scalar Gathers: unbind's Split would lead the precision plan to read the token gather as a sampling blend.
        queries, keys, vals = (rows[0], rows[1], rows[2]) if _in_export() else rows.unbind(0)

        key_valid = valid.unsqueeze(-1).expand(v, t, k).reshape(v, t * k)  # [V, Tk]
        out = attend(queries, keys, vals, (1.0 - key_valid) * _MASKED_LOGIT, self.fused_attention)  # [Q',V,H,Tk,dh]
        out = out.transpose(2, 3).reshape(qn, v, t, k, h * dh).mean(dim=3)  # mean over a frame's tokens
        pooled = (out * valid.view(1, v, t, 1)).sum(2) / n_valid.view(1, v, 1)  # [Q',V,d_a]
        mean_frames = frame_emb.sum(1) / n_valid.view(v, 1)  # [V, d]
        cond = l2_normalize(mean_frames.unsqueeze(0) + self.out_proj(pooled))
        # A video without a real frame gets a zero embedding (it scores 0, as in stage 1 and meanP): its pooled term
        # is 0, but out_proj's trained bias is not, and it scored text · bias/|bias|. A select, not a product: an fp16
        # graph's normalisation of a zero vector gives NaN, which a product by 0 would keep.
        return torch.where((count > 0).view(1, v, 1), cond, 0.0)

    def forward(self, text_emb: torch.Tensor, frame_emb: torch.Tensor, patch_tokens: torch.Tensor,
                asa_tokens: torch.Tensor, video_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine similarity ``[Q, V]`` between each text and its conditioned embedding of each video (with
        ``video_rows``, of the videos at those rows of whole stores, see :meth:`conditioned_embedding`)."""
        cond = self.conditioned_embedding(text_emb, frame_emb, patch_tokens, asa_tokens, video_rows)  # [Q|1, V, d]
        cond, text_emb = in_score_precision(cond, text_emb)
        if cond.shape[0] == 1 and text_emb.shape[0] != 1:
            return text_emb @ cond[0].T
        return (cond * text_emb.unsqueeze(1)).sum(-1)

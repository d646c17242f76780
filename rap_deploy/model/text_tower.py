"""The frozen CLIP text tower as a function of however many tokens a query has.

open_clip's ``encode_text`` runs ``nn.MultiheadAttention`` with a causal mask. Traced for ONNX (torch 2.14.1,
TorchScript exporter, the token axis declared dynamic), that module bakes the example's token count into its reshapes:
measured, a graph traced at 32 tokens fails on 21 in the first block's attention ``Reshape``, whose target shape holds
the constant 32. So an exported text graph would only take ``[B, L]`` at the full context length ``L`` and every
query would pay for ``L`` tokens. Here the same blocks run with the same weights through an
explicit causal attention whose shapes follow the input, so the text graph has a dynamic ``tokens`` axis.

Why that is exact: with the causal mask, the output at position ``i`` depends only on tokens ``0…i``. The text
embedding is read at the EOT position, so running only the first ``max(eot) + 1`` tokens gives the same embedding as
running all ``L`` (up to float rounding: the GEMMs see fewer rows);
:func:`rap_deploy.engines.blocks.trim_tokens` is that cut (numpy, so search never needs torch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Self-attention of ``x [B, L, D]`` (batch first) with ``attn``'s weights and an additive ``mask [L, L]``.

    Computes what ``attn(x, x, x, attn_mask=mask, need_weights=False)[0]`` computes, with every shape taken from
    ``x`` at run time (no reshape to a traced constant). Returns ``[B, L, D]``.
    """
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)          # [B, L, 3D]
    q, k, v = qkv.unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)  # each [B, h, L, D/h]
    scale = q.shape[-1] ** -0.5
    weights = torch.softmax((q * scale) @ k.transpose(-1, -2) + mask, dim=-1)
    out = (weights @ v).transpose(1, 2).flatten(2)                     # [B, L, D]
    return attn.out_proj(out)


def positions(tokens: torch.Tensor) -> torch.Tensor:
    """The positions ``0 … L-1`` of ``tokens [B, L]`` as an int64 tensor whose length follows the input when traced."""
    return torch.ones_like(tokens[0], dtype=torch.long).cumsum(0) - 1


def text_tower(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Run open_clip ``clip``'s text transformer on ``tokens [B, L]`` (any ``1 <= L <=`` its context).

    Returns the ``ln_final`` output ``[B, L, width]`` (before pooling and projection), equal to open_clip's own
    computation up to float rounding. The positional embedding and the causal mask are gathered for the ``L``
    positions (``Gather`` ops, TensorRT-safe), and each ``ResidualAttentionBlock`` is applied as open_clip defines it:
    ``x + ls_1(attn(ln_1(x)))``, then ``x + ls_2(mlp(ln_2(x)))``.
    """
    pos = positions(tokens)
    x = clip.token_embedding(tokens.long()) + clip.positional_embedding.index_select(0, pos)
    mask = clip.attn_mask
    mask = (mask.index_select(0, pos).index_select(1, pos).to(x.dtype) if mask is not None
            else torch.zeros((), dtype=x.dtype, device=x.device))
    for blk in clip.transformer.resblocks:
        x = x + blk.ls_1(causal_self_attention(blk.attn, blk.ln_1(x), mask))
        x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return clip.ln_final(x)


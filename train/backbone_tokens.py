"""Cheaper pre-training steps for the offline backbone: fewer image tokens, shorter captions.

Backbone pre-training is the largest single step of ``rapdeploy demo`` after RAP itself, and a ViT's cost grows with
its token count. Two exact-or-bounded savings live here:

* :func:`object_first_tokens` keeps a fraction of each still's patch tokens, the patches that show an object first,
  then random background patches (FLIP's token dropping, Li et al. 2023, with the synthetic world's plain background
  telling which patches carry nothing but "empty here"). Random dropping would hide a whole object from the image
  tower while its caption still names it; keeping the object patches keeps every caption true of what the tower
  sees. Kept tokens carry their own position embeddings, so where an object is stays visible.
* :func:`compact_token_embedding` trains only the token-embedding rows the training captions use. The rap-tiny
  text tower has open_clip's 49,408-token vocabulary (6.3M of its 8.0M parameters) and the synthetic captions use
  about a hundred of those tokens; every other row gets a zero gradient, so back-propagating into the dense table
  and stepping AdamW over it was most of the optimizer's time (74 ms of a step, 21 ms without it; 2 threads). The
  used rows train exactly as before; the unused ones are no longer shrunk by weight decay.
* :func:`encode_captions` runs the text tower on the batch's longest caption instead of the full context: exact,
  because open_clip's text tower is causal and pools at the end-of-text token, so the padding after it never reaches
  the pooled embedding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from rap_deploy.errors import UsageError


def check_token_dropping(model: torch.nn.Module, clip: str) -> None:
    """Raise :class:`UsageError` unless ``model.visual`` is a plain open_clip ViT (class token pooling, no attention
    pool), the only tower :func:`object_first_tokens` knows how to run on a subset of its tokens."""
    visual = model.visual
    plain = (getattr(visual, "attn_pool", None) is None and getattr(visual, "pool_type", "tok") == "tok"
             and not getattr(visual, "final_ln_after_pool", False) and hasattr(visual, "conv1")
             and getattr(visual, "class_embedding", None) is not None)
    if not plain:
        raise UsageError(f"patch token dropping needs a ViT with class-token pooling; {clip} is not one: "
                         f"pass patch_keep 1.0 (--patch-keep 1)")


def keep_count(patches: int, keep: float) -> int:
    """How many of ``patches`` patch tokens a still keeps at fraction ``keep`` (at least one)."""
    return max(1, min(patches, round(patches * keep)))


def object_first_tokens(on_object: torch.Tensor, keep: float, gen: torch.Generator) -> torch.Tensor:
    """``[B, k]`` indices of the patch tokens each still keeps: its object patches first (in random order, all of
    them when they fit in ``k``), then random background patches; ``k`` is :func:`keep_count`. Deterministic for a
    seeded ``gen``."""
    b, p = on_object.shape
    score = torch.rand(b, p, generator=gen) + on_object.to(torch.float32)
    return score.topk(keep_count(p, keep), dim=1).indices


def image_and_kept_patches(model: torch.nn.Module, images: torch.Tensor, kept: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The vision tower on the class token plus the patch tokens ``kept`` ``[B, k]`` of each image: L2-normalised
    image embeddings ``[B, d]`` and kept patch tokens in the joint space ``[B, k, d]``.

    The same modules and order as open_clip's ``VisionTransformer.forward`` (patch embedding, class token, position
    table, ``ln_pre``, transformer, ``ln_post``, projection); with every index kept it equals
    :func:`rap_deploy.train.backbone_eval.image_and_patches`.
    """
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2) + visual.positional_embedding[1:].to(images.dtype)
    x = torch.gather(x, 1, kept[..., None].expand(-1, -1, x.shape[2]))
    cls = (visual.class_embedding + visual.positional_embedding[0]).to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_post(visual.transformer(visual.ln_pre(torch.cat([cls, x], dim=1))))
    pooled, tokens = x[:, 0], x[:, 1:]
    if visual.proj is not None:
        pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
    return F.normalize(pooled, dim=-1), F.normalize(tokens, dim=-1)


def encode_captions(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(ids, normalize=True)`` computed on the first ``L`` positions only, ``L`` the batch's
    longest caption (up to its end-of-text token, the largest id). Returns ``[B, d]`` L2-normalised embeddings."""
    eot = ids.argmax(dim=-1)
    length = int(eot.max()) + 1
    if (length >= ids.shape[1] or getattr(model, "attn_mask", None) is None
            or getattr(model, "text_pool_type", "argmax") != "argmax"):
        return model.encode_text(ids, normalize=True)
    trimmed = ids[:, :length]
    x = model.token_embedding(trimmed) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = x[torch.arange(x.shape[0]), eot]
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return F.normalize(x, dim=-1)


@contextmanager
def compact_token_embedding(model: torch.nn.Module, ids: torch.Tensor) -> Iterator[torch.Tensor]:
    """Swap ``model.token_embedding`` for a table of only the rows that ``ids`` use; yields ``ids`` renumbered into
    it. On exit (also on an exception) the rows are written back into the full table, which is put back.

    Create the optimizer inside the block, so that it steps the small table. The renumbering keeps the order of
    the ids, so the end-of-text token (the largest id) is still where ``argmax`` pools.
    """
    full = model.token_embedding
    used = torch.unique(ids)
    small = torch.nn.Embedding(len(used), full.embedding_dim)
    with torch.no_grad():
        small.weight.copy_(full.weight[used])
    model.token_embedding = small
    try:
        yield torch.searchsorted(used, ids)
    finally:
        with torch.no_grad():
            full.weight[used] = small.weight
        model.token_embedding = full

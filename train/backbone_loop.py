"""The optimisation of a backbone pre-training run (:func:`rap_deploy.train.backbone.pretrain_backbone`).

AdamW with linear warm-up and cosine decay over shuffled batches of stills (:class:`Stills`); each step's loss is
CLIP's contrastive loss plus the weighted localisation and text terms (:func:`batch_loss`), and the temperature is
capped at 100 (:func:`optimizer_step`). :mod:`rap_deploy.train.backbone_cost` times the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from rap_deploy.train.backbone_eval import image_and_patches
from rap_deploy.train.backbone_losses import clip_loss, localisation_loss
from rap_deploy.train.backbone_tokens import (
    compact_token_embedding,
    encode_captions,
    image_and_kept_patches,
    object_first_tokens,
)

if TYPE_CHECKING:
    from rap_deploy.config import PreprocessConfig, TokenizerConfig


@dataclass(frozen=True)
class Stills:
    """One split of stills ready for the model: pixels, token ids, captions and the object-patch masks."""

    images: torch.Tensor
    ids: torch.Tensor
    captions: list[str]
    on_object: torch.Tensor
    named: torch.Tensor  # the patches of the objects the caption names (a distractor's are not)


@dataclass(frozen=True)
class Schedule:
    """How a pre-training run is batched: batch size, steps per epoch, total and warm-up steps."""

    n_train: int
    batch: int
    steps_per_epoch: int
    total: int
    warm: int

    @classmethod
    def of(cls, n_train: int, batch_size: int, epochs: int, warmup: float) -> Schedule:
        """The schedule of ``epochs`` passes over ``n_train`` stills in batches of up to ``batch_size``."""
        from rap_deploy.train.schedule import warmup_steps_for

        batch = min(batch_size, n_train)
        steps_per_epoch = n_train // batch
        total = epochs * steps_per_epoch
        return cls(n_train=n_train, batch=batch, steps_per_epoch=steps_per_epoch, total=total,
                   warm=warmup_steps_for(warmup, total))


@dataclass(frozen=True)
class Recipe:
    """The optimisation settings of a pre-training run (see :func:`~rap_deploy.train.backbone.pretrain_backbone`)."""

    seed: int
    epochs: int
    lr: float
    patch_weight: float
    text_weight: float
    text_batch: int
    position_twins: bool
    patch_keep: float = 1.0
    masked_epochs: int = 0


def shuffled_order(n: int, gen: torch.Generator, pairs: bool) -> torch.Tensor:
    """A random order of ``range(n)``; with ``pairs`` the stills ``2k, 2k+1`` stay adjacent (so a batch of even size
    holds a still and its position twin)."""
    if not pairs:
        return torch.randperm(n, generator=gen)
    first = 2 * torch.randperm(n // 2, generator=gen)
    return torch.stack([first, first + 1], dim=1).reshape(-1)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (never on biases, norms or the temperature)."""
    decay = [p for p in model.parameters() if p.ndim >= 2 and p is not model.logit_scale]
    no_decay = [p for p in model.parameters() if p.ndim < 2 or p is model.logit_scale]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)


def optimise(model: torch.nn.Module, train: Stills, schedule: Schedule, recipe: Recipe, weight_decay: float,
             cfg: PreprocessConfig, tok: TokenizerConfig, progress: bool) -> list[float]:
    """AdamW over ``model`` for the whole schedule; returns the loss of every step. Without the text loss (whose
    captions are made on the fly) only the token-embedding rows of the training captions are trained
    (:func:`compact_token_embedding`)."""
    if recipe.text_weight > 0:
        return _train_epochs(model, adamw(model, recipe.lr, weight_decay), train, schedule, recipe, cfg, tok,
                             progress)
    with compact_token_embedding(model, train.ids) as ids:
        opt = adamw(model, recipe.lr, weight_decay)
        return _train_epochs(model, opt, replace(train, ids=ids), schedule, recipe, cfg, tok, progress)


def _train_epochs(model: torch.nn.Module, opt: torch.optim.Optimizer, train: Stills, schedule: Schedule,
                  recipe: Recipe, cfg: PreprocessConfig, tok: TokenizerConfig, progress: bool
                  ) -> list[float]:
    """Train ``model`` for ``recipe.epochs`` shuffled passes over ``train``; returns the loss of every step."""
    from rap_deploy.data.progress import progress_bar
    from rap_deploy.train.schedule import cosine_lr

    gen = torch.Generator().manual_seed(recipe.seed)
    token_gen = torch.Generator().manual_seed(recipe.seed + 7)
    text_rng = np.random.default_rng([recipe.seed, 13])
    losses: list[float] = []
    step = 0
    model.train()
    with progress_bar(schedule.total, "pre-training backbone", progress) as advance:
        for epoch in range(recipe.epochs):
            keep = recipe.patch_keep if epoch < recipe.masked_epochs else 1.0
            perm = shuffled_order(schedule.n_train, gen, recipe.position_twins)
            for i in range(schedule.steps_per_epoch):
                idx = perm[i * schedule.batch:(i + 1) * schedule.batch]
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, schedule.total, recipe.lr, schedule.warm)
                loss = batch_loss(model, train, idx, recipe, cfg, tok, text_rng, keep, token_gen)
                optimizer_step(model, opt, loss)
                losses.append(float(loss.detach()))
                step += 1
                advance(1)
    return losses


def batch_loss(model: torch.nn.Module, train: Stills, idx: torch.Tensor, recipe: Recipe, cfg: PreprocessConfig,
               tok: TokenizerConfig, text_rng: np.random.Generator, keep: float = 1.0,
               token_gen: torch.Generator | None = None, trim_captions: bool = True) -> torch.Tensor:
    """The loss of the stills ``idx``: CLIP's contrastive loss plus the weighted localisation and text terms; with
    ``keep < 1`` the image tower sees only :func:`object_first_tokens` (and the localisation term those tokens).
    ``trim_captions=False`` runs the text tower on the whole context (the same result, slower: for measuring)."""
    from rap_deploy.preprocess import normalize
    from rap_deploy.tokenizer import tokenize
    from rap_deploy.train.captions import caption_pair_batch
    from rap_deploy.train.losses import symmetric_info_nce

    on_object, named = train.on_object[idx], train.named[idx]
    if keep < 1.0:
        kept = object_first_tokens(on_object, keep, token_gen or torch.Generator().manual_seed(recipe.seed))
        img, patches = image_and_kept_patches(model, normalize(train.images[idx], cfg), kept)
        named = torch.gather(named, 1, kept)
    else:
        img, patches = image_and_patches(model, normalize(train.images[idx], cfg))
    ids = train.ids[idx]
    txt = encode_captions(model, ids) if trim_captions else model.encode_text(ids, normalize=True)
    scale = model.logit_scale.exp()
    loss = clip_loss(scale * img @ txt.T)
    if recipe.patch_weight > 0:
        loss = loss + recipe.patch_weight * localisation_loss(patches, txt, named, scale)
    if recipe.text_weight > 0:
        cap_a, cap_b, same = caption_pair_batch(text_rng, recipe.text_batch)
        ta = model.encode_text(torch.from_numpy(tokenize(cap_a, tok)[0]).long(), normalize=True)
        tb = model.encode_text(torch.from_numpy(tokenize(cap_b, tok)[0]).long(), normalize=True)
        loss = loss + recipe.text_weight * symmetric_info_nce(ta @ tb.T, scale, torch.from_numpy(same))
    return loss


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Back-propagate ``loss``, clip the gradient norm at 1, step, and cap the temperature at 100."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100.0))

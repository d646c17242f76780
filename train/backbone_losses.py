"""The pre-training objectives of the offline default backbone (:mod:`rap_deploy.train.backbone`): CLIP's contrastive
loss, and the patch-localisation loss with the object patches of the synthetic stills it is measured on."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss of an image-caption ``logits`` matrix whose diagonal holds the pairs."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def object_patches(images: np.ndarray, grid: tuple[int, int], min_fraction: float = 0.05) -> np.ndarray:
    """``[N, P]`` bool: the patches of uint8 stills ``[N,S,S,3]`` where over ``min_fraction`` of the pixels differ
    from the synthetic world's plain background colour (i.e. the patches that show an object): every pixel off the
    background belongs to some world colour, so this is :func:`~rap_deploy.data.synth_stills.colour_patches` of all
    of them."""
    from rap_deploy.data.synth import COLOURS
    from rap_deploy.data.synth_stills import colour_patches

    return colour_patches(images, [set(COLOURS)] * len(images), grid, min_fraction)


def named_object_patches(images: np.ndarray, captions: list[str], grid: tuple[int, int],
                         min_fraction: float = 0.05) -> np.ndarray:
    """``[N, P]`` bool: the patches of uint8 stills ``[N,S,S,3]`` that show an object the still's caption names.

    :func:`rap_deploy.data.synth_stills.colour_patches` of each caption's colours
    (:func:`rap_deploy.data.synth_stills.named_colours`). A distractor has a colour of its own, so its patches are not
    named; without distractors this equals :func:`object_patches`.
    """
    from rap_deploy.data.synth_stills import colour_patches, named_colours

    return colour_patches(images, [named_colours(c) for c in captions], grid, min_fraction)


def localisation_loss(patches: torch.Tensor, text: torch.Tensor, on_object: torch.Tensor,
                      scale: torch.Tensor) -> torch.Tensor:
    """Text-conditioned patch selection loss: ``-log`` of the softmax mass (over an image's patches, of
    ``scale · cos(caption, patch)``) that falls on the object patches. Images without object patches are ignored."""
    logp = torch.log_softmax(scale * torch.einsum("bpd,bd->bp", patches, text), dim=1)
    mass = torch.logsumexp(logp.masked_fill(~on_object, float("-inf")), dim=1)
    keep = on_object.any(dim=1)
    return -(mass[keep]).mean() if bool(keep.any()) else patches.sum() * 0.0

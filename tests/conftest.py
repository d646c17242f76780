"""Shared fixtures: a tiny RAP model on the ``rap-micro`` open_clip config, deterministic (fixed seeds)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)

MICRO_KW = {"clip": "rap-micro", "frames": 4, "asa_topk": 4, "asa_heads": 2, "asa_dim": 16, "lorm_rank": 2}


def micro_config(**changes):
    """A :class:`RAPConfig` for the tiny test backbone (4 frames, 32 px, 16 patches)."""
    from rap_deploy.config import PreprocessConfig, RAPConfig

    kw = {**MICRO_KW, **changes}
    return RAPConfig(preprocess=PreprocessConfig(image_size=32), **kw)


def randomize_adapters(model, seed: int = 0, std: float = 0.2) -> None:
    """Give every adapter weight a random non-zero value (identity adapters would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("clip."):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory):
    """Path of an untrained rap-micro checkpoint with randomised (non-identity) adapters."""
    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    save_checkpoint(checkpoint_from_model(model, ckpt), path)
    return path


@pytest.fixture
def micro_model():
    """A fresh rap-micro RAP model with identity adapters (seed 0)."""
    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    _, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    return model

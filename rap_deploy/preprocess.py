"""The one CLIP preprocessing function, used by training, export parity, verify and bench.

It is split in two so the frame cache can store the geometric part as uint8: ``resize_crop`` (bicubic resize of the
short side to ``image_size``, center crop) and ``normalize`` (to float, CLIP mean/std, channels first). A silent
preprocessing mismatch is the most common cause of recall loss in deployed CLIP, so nothing else in the project
resizes or normalises frames.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from rap_deploy.config import PreprocessConfig


def resize_crop(frames: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize the short side of uint8 frames ``[T,H,W,3]`` to ``cfg.image_size`` (bicubic) and center-crop.

    Returns uint8 ``[T,S,S,3]``. Raises ``ValueError`` for a wrong shape or dtype.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T,H,W,3], got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        return np.zeros((0, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # T,3,H,W uint8
    size = cfg.image_size
    h, w = x.shape[-2:]
    if min(h, w) != size:
        mode = TF.InterpolationMode[cfg.interpolation.upper()]
        x = TF.resize(x, [size], interpolation=mode, antialias=cfg.antialias)
    x = TF.center_crop(x, [size, size])
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def normalize(frames: np.ndarray | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Turn uint8 frames ``[..., S, S, 3]`` into float32 ``[..., 3, S, S]`` with CLIP mean/std."""
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {x.dtype}")
    x = x.to(torch.float32).div_(255.0).movedim(-1, -3)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def preprocess_frames(frames: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """Full preprocessing of uint8 frames ``[T,H,W,3]`` into the model input ``[T,3,S,S]`` float32."""
    return normalize(resize_crop(frames, cfg), cfg)

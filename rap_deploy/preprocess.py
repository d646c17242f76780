"""The one CLIP preprocessing function, used by training, export parity, verify and bench.

It is split in two so the frame cache can store the geometric part as uint8: ``resize_crop`` (bicubic resize of the
short side to ``image_size``, center crop; both sides and no crop for ``squash`` tags) and ``normalize`` (to float,
CLIP mean/std, channels first). A silent preprocessing mismatch is the most common cause of recall loss in deployed
CLIP, so nothing else in the project resizes or normalises frames.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from rap_deploy.config import PreprocessConfig

# The resize scales the short side to image_size before the crop, so the long side grows with the aspect ratio: a
# 4096x8 frame (a 2 KB file) became 224x114688 (77 MB a frame, 619 MiB peak for one video), and 65535x2 would take
# 4.9 GB a frame. No video is this elongated (cinema's widest is 2.76:1); such frames are refused before resizing.
MAX_ASPECT_RATIO = 16


def resize_crop(frames: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize the short side of uint8 frames ``[T,H,W,3]`` to ``cfg.image_size`` (bicubic) and center-crop (with
    ``cfg.resize_mode`` ``squash``: resize both sides to ``cfg.image_size``, no crop).

    Returns uint8 ``[T,S,S,3]``. Raises ``ValueError`` for a wrong shape or dtype, frames without pixels, or frames
    more elongated than :data:`MAX_ASPECT_RATIO` to 1 (before anything is resized).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T,H,W,3], got {frames.dtype} {tuple(frames.shape)}")
    _check_frame_size(frames.shape[1], frames.shape[2])
    if frames.shape[0] == 0:
        return np.zeros((0, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # T,3,H,W uint8
    size = cfg.image_size
    h, w = x.shape[-2:]
    mode = TF.InterpolationMode[cfg.interpolation.upper()]
    if cfg.resize_mode == "squash":
        if (h, w) != (size, size):
            x = TF.resize(x, [size, size], interpolation=mode, antialias=cfg.antialias)
    else:
        if min(h, w) != size:
            x = TF.resize(x, [size], interpolation=mode, antialias=cfg.antialias)
        x = TF.center_crop(x, [size, size])
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def _check_frame_size(height: int, width: int) -> None:
    """``ValueError`` for frames without pixels or more elongated than :data:`MAX_ASPECT_RATIO` to 1."""
    if min(height, width) < 1:
        raise ValueError(f"frames of {width}x{height} pixels have no picture")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ValueError(f"frames of {width}x{height} pixels are over {MAX_ASPECT_RATIO}:1; no video is this "
                         "elongated (resizing their short side would allocate without bound)")


def normalize(frames: np.ndarray | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """Turn uint8 frames ``[..., S, S, 3]`` (``S`` = ``cfg.image_size``, as :func:`resize_crop` gives them) into
    float32 ``[..., 3, S, S]`` with CLIP mean/std. Raises ``ValueError`` for another dtype or shape (one channel was
    broadcast into three, silently)."""
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {x.dtype}")
    size = cfg.image_size
    if x.ndim < 3 or tuple(x.shape[-3:]) != (size, size, 3):
        raise ValueError(f"expected uint8 frames [..., {size}, {size}, 3] (resize_crop's output), got "
                         f"{tuple(x.shape)}")
    x = x.to(torch.float32).div_(255.0).movedim(-1, -3)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def preprocess_frames(frames: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """Full preprocessing of uint8 frames ``[T,H,W,3]`` into the model input ``[T,3,S,S]`` float32."""
    return normalize(resize_crop(frames, cfg), cfg)

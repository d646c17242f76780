"""The one CLIP preprocessing function against open_clip's own evaluation transform (what CLIP was trained and is
evaluated with): PIL bicubic resize of the short side, center crop, CLIP mean/std. Every other test compares a
path that preprocesses with this function against another path that does too (engine vs PyTorch, export parity),
so a wrong crop, channel order or normalisation would pass all of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rap_deploy.config import CLIP_STD, PreprocessConfig
from rap_deploy.preprocess import normalize, preprocess_frames, resize_crop

ONE_LEVEL = 1.0 / 255 / min(CLIP_STD)  # one uint8 step after normalisation: PIL and torchvision may round apart


def _smooth_frame(height: int, width: int, phase: float) -> np.ndarray:
    """A frame whose three channels differ and vary along both axes (a crop or channel mix-up shows), smooth enough
    that PIL's and torchvision's bicubic kernels agree to within a rounding step."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 127.5 + 127.5 * np.sin(2 * np.pi * (1.5 * xx / width + phase))
    green = 255.0 * yy / (height - 1)
    blue = 127.5 + 127.5 * np.cos(2 * np.pi * (yy / height + xx / width + phase))
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


@pytest.mark.parametrize("height, width", [(48, 80), (90, 40), (24, 40), (32, 32)])
def test_preprocessing_equals_open_clips_eval_transform(height, width):
    from open_clip.transform import image_transform

    cfg = PreprocessConfig(image_size=32)
    frames = np.stack([_smooth_frame(height, width, phase) for phase in (0.0, 0.3)])
    reference = image_transform(cfg.image_size, is_train=False, mean=cfg.mean, std=cfg.std)
    want = torch.stack([reference(Image.fromarray(frame)) for frame in frames])
    got = preprocess_frames(frames, cfg)
    assert got.dtype == torch.float32 and got.shape == want.shape == (2, 3, 32, 32)
    assert float((got - want).abs().max()) <= ONE_LEVEL + 1e-6
    assert float((got - want).abs().mean()) < 0.05 * ONE_LEVEL  # the rounding steps are rare, not a shift
    # the cached half (uint8 after resize and crop) and the normalising half compose to the same tensor
    assert torch.equal(normalize(resize_crop(frames, cfg), cfg), got)


@pytest.mark.parametrize("height, width", [(48, 80), (90, 40), (32, 32)])
def test_squash_preprocessing_equals_open_clips_squash_transform(height, width):
    """Tags trained with open_clip's resize_mode 'squash' (ViT-H-14 dfn5b) were centre-cropped: a frame's edges,
    which those weights saw, were cut off. ``resize_mode="squash"`` resizes both sides to the square, no crop, as
    open_clip's own transform for such a tag does, and differs from the crop wherever the frame is not square."""
    from open_clip.transform import image_transform

    cfg = PreprocessConfig(image_size=32, resize_mode="squash")
    frames = np.stack([_smooth_frame(height, width, phase) for phase in (0.0, 0.3)])
    reference = image_transform(32, is_train=False, mean=cfg.mean, std=cfg.std, resize_mode="squash")
    want = torch.stack([reference(Image.fromarray(frame)) for frame in frames])
    got = preprocess_frames(frames, cfg)
    assert got.shape == want.shape == (2, 3, 32, 32)
    assert float((got - want).abs().max()) <= ONE_LEVEL + 1e-6
    cropped = preprocess_frames(frames, PreprocessConfig(image_size=32))
    assert torch.equal(got, cropped) == (height == width)


def test_resize_mode_is_stored_only_when_not_the_default_and_checked():
    """Artifacts and frame-cache keys written before the field stay byte-identical (``shortest`` is not written); a
    ``squash`` config round-trips, and a mode the preprocessing does not do is refused (open_clip's 'longest')."""
    from rap_deploy.config import RAPConfig
    from rap_deploy.errors import UsageError
    from rap_deploy.model.clip_loader import BackboneSpec, pretrained_preprocess

    assert "resize_mode" not in PreprocessConfig().to_dict()
    squash = PreprocessConfig(resize_mode="squash")
    assert squash.to_dict()["resize_mode"] == "squash"
    assert PreprocessConfig.from_dict(squash.to_dict()) == squash
    assert pretrained_preprocess(BackboneSpec("ViT-H-14", "tag", "dfn5b"))["resize_mode"] == "squash"
    assert pretrained_preprocess(BackboneSpec("ViT-B-32", "tag", "openai"))["resize_mode"] == "shortest"
    with pytest.raises(UsageError, match="resize_mode must be one of shortest, squash"):
        RAPConfig(preprocess=PreprocessConfig(resize_mode="longest")).validate()

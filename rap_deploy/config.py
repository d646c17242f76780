"""The RAP model configuration: one dataclass, stored with every checkpoint and every exported graph.

Everything that decides what the model computes lives here (backbone, variant, adapter sizes, frames, text length)
together with the preprocessing and tokenizer settings, so an artifact carries the exact recipe that produced it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rap_deploy.errors import UsageError

VARIANTS = ("rap", "rap_light")
SELECTION_MODES = ("text", "saliency")
PRESETS = ("default", "paper")

# CLIP's normalisation constants (OpenAI CLIP, also open_clip's default).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """CLIP preprocessing: bicubic resize of the short side, center crop, mean/std normalisation."""

    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    antialias: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        d = dict(d)
        d["mean"] = tuple(d["mean"])
        d["std"] = tuple(d["std"])
        return cls(**d)


@dataclass(frozen=True)
class FrameSamplingConfig:
    """How frames are taken from a video: ``fps`` frames per second, then ``max_frames`` picked uniformly."""

    max_frames: int = 12
    fps: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameSamplingConfig:
        return cls(**d)


@dataclass(frozen=True)
class TokenizerConfig:
    """open_clip's BPE tokenizer (its vocabulary ships with the package), truncated/padded to ``context_length``."""

    name: str = "open_clip.SimpleTokenizer"
    context_length: int = 32

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        return cls(**d)


@dataclass(frozen=True)
class RAPConfig:
    """Everything that defines a RAP model.

    ``clip`` is an open_clip model name; ``pretrained`` is an open_clip tag, a weights file path, or ``"none"``
    (random backbone). ``variant`` ``rap`` is LoRM + text-conditioned ASA, ``rap_light`` is LoRM only.
    """

    clip: str = "ViT-B-32"
    pretrained: str = "none"
    variant: str = "rap"
    frames: int = 12
    context_length: int = 32
    use_lorm: bool = True
    use_asa: bool = True
    lorm_rank: int = 4
    asa_topk: int = 8
    asa_heads: int = 4
    asa_dim: int = 128
    asa_selection: str = "text"
    quick_gelu: bool = False
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def has_asa(self) -> bool:
        """True when the model has the ASA head (``rap`` variant with ASA enabled)."""
        return self.variant == "rap" and self.use_asa

    @property
    def tokenizer(self) -> TokenizerConfig:
        return TokenizerConfig(context_length=self.context_length)

    @property
    def sampling(self) -> FrameSamplingConfig:
        return FrameSamplingConfig(max_frames=self.frames)

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the bad value and the allowed ones."""
        if self.variant not in VARIANTS:
            raise UsageError(f"variant '{self.variant}' is unknown; use one of {', '.join(VARIANTS)}")
        if self.asa_selection not in SELECTION_MODES:
            raise UsageError(f"ASA selection '{self.asa_selection}' is unknown; "
                             f"use one of {', '.join(SELECTION_MODES)}")
        for name in ("frames", "context_length", "lorm_rank", "asa_topk", "asa_heads", "asa_dim"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.asa_dim % self.asa_heads:
            raise UsageError(f"asa_dim ({self.asa_dim}) must be divisible by asa_heads ({self.asa_heads})")

    def replace(self, **changes: Any) -> RAPConfig:
        """Return a copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RAPConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error that names them."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown RAP config keys {unknown}; this rapdeploy knows {sorted(known)}")
        if isinstance(d.get("preprocess"), dict):
            d["preprocess"] = PreprocessConfig.from_dict(d["preprocess"])
        return cls(**d)


def preset_changes(preset: str, embed_dim: int) -> dict[str, Any]:
    """The :class:`RAPConfig` values that ``preset`` sets on a backbone whose joint embedding width is ``embed_dim``.

    ``default`` sets nothing (the dataclass defaults: LoRM rank 4, ASA width ``asa_dim`` 128; on ViT-B/32 412,812
    trainable parameters). ``paper`` sizes the adapters like the paper's 1.06M: the ASA attention runs at the joint
    width (``asa_dim = embed_dim``) and LoRM keeps rank 2 in every block's two branches. On ViT-B/32 with 12 frames
    that is 1,050,636 (ASA) + 74,880 (LoRM) = 1,125,516 trainable parameters, +6.2 % of 1.06M. This placement changes
    sizes only, not where the adapters sit. Explicit options given beside a preset win over it.
    Raises :class:`UsageError` for an unknown preset.
    """
    if preset == "default":
        return {}
    if preset == "paper":
        return {"asa_dim": int(embed_dim), "lorm_rank": 2}
    raise UsageError(f"preset '{preset}' is unknown; use one of {', '.join(PRESETS)}")

"""The RAP model configuration: one dataclass, stored with every checkpoint and every exported graph.

Everything that decides what the model computes lives here (backbone, variant, adapter sizes, frames, text length)
together with the preprocessing and tokenizer settings, so an artifact carries the exact recipe that produced it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from rap_deploy.errors import UsageError
from rap_deploy.name_lists import short_repr

VARIANTS = ("rap", "rap_light")
SELECTION_MODES = ("text", "saliency")
# The adapter-size presets (preset_changes sets them) and what each sets, for every --preset help and the README
PRESET_SIZES = {"default": "LoRM rank 4, ASA width 128",
                "paper": "ASA at the joint width, LoRM rank 2: about the paper's 1.06M on ViT-B/32"}
PRESETS = tuple(PRESET_SIZES)
DEFAULT_CLIP = "ViT-B-32"  # the backbone when neither --clip nor a backbone file names one

# CLIP's normalisation constants (OpenAI CLIP, also open_clip's default).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """CLIP preprocessing: bicubic resize of the short side, center crop, mean/std normalisation.

    ``resize_mode`` ``squash`` resizes both sides to ``image_size`` without a crop instead, as open_clip's
    ``resize_mode='squash'`` tags (e.g. ViT-H-14's ``dfn5b``) were trained: centre-cropping their frames would drop
    the edges those weights expect to see.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    antialias: bool = True
    resize_mode: str = "shortest"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with every artifact. ``resize_mode`` is left out when it is ``shortest``: artifacts
        and frame caches written before the field read (and hash) the same, and a ``squash`` artifact is refused by
        a rapdeploy that does not know the key, rather than centre-cropped silently."""
        d = {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}
        if self.resize_mode == "shortest":
            del d["resize_mode"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Build from :meth:`to_dict` output; raises :class:`UsageError` for unknown keys or non-list mean/std."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise UsageError(f"unknown preprocess keys {sorted(set(d) - known)}; this rapdeploy knows {sorted(known)}")
        for name in ("mean", "std"):
            if name in d:
                if not isinstance(d[name], (list, tuple)):
                    raise UsageError(f"preprocess {name} must be a list of three numbers, got {short_repr(d[name])}")
                d[name] = tuple(d[name])
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


def _validate_preprocess(pre: Any) -> None:
    """Raise :class:`UsageError` unless ``pre`` is a :class:`PreprocessConfig` with a bounded size and sane mean/std."""
    from rap_deploy import bounds

    if not isinstance(pre, PreprocessConfig):
        raise UsageError(f"preprocess must be a preprocessing config, got {type(pre).__name__}")
    if isinstance(pre.image_size, bool) or not isinstance(pre.image_size, numbers.Integral):
        raise UsageError(f"preprocess image_size must be an integer, got {short_repr(pre.image_size)}")
    bounds.check_int(int(pre.image_size), "preprocess image_size", bounds.MIN_IMAGE_SIZE, bounds.MAX_IMAGE_SIZE)
    for name in ("mean", "std"):
        values = getattr(pre, name)
        if (len(values) != 3 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
                or not all(_finite_float(v) for v in values)):
            raise UsageError(f"preprocess {name} must be three finite numbers, got {short_repr(list(values), 120)}")
    if not isinstance(pre.interpolation, str) or not isinstance(pre.antialias, bool):
        raise UsageError("preprocess interpolation must be a string and antialias true or false")
    if not isinstance(pre.resize_mode, str) or pre.resize_mode not in RESIZE_MODES:
        raise UsageError(f"preprocess resize_mode must be one of {', '.join(RESIZE_MODES)}, got "
                         f"{short_repr(pre.resize_mode)}")
    if pre.interpolation.lower() not in INTERPOLATIONS:
        raise UsageError(f"preprocess interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                         f"{short_repr(pre.interpolation)}")
    if min(pre.std) < 1e-6:  # a std near 0 scales pixels past any float: training would only diverge
        raise UsageError(f"preprocess std must be >= 1e-6, got {list(pre.std)}")


def _finite_float(value: numbers.Real) -> bool:
    """Whether ``value`` converts to a finite float (an integer past float's range, 10**400, does not)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


# The resize modes the preprocessing can use on tensors (torchvision InterpolationMode names, lower case).
INTERPOLATIONS = ("nearest", "nearest_exact", "bilinear", "bicubic")
# How a frame reaches image_size x image_size (open_clip's resize_mode names): ``shortest`` resizes the short side
# and centre-crops, ``squash`` resizes both sides (no crop). open_clip's ``longest`` (pad) no CLIP-tokenizer tag uses.
RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class RAPConfig:
    """Everything that defines a RAP model.

    ``clip`` is an open_clip model name; ``pretrained`` is an open_clip tag, a weights file path, or ``"none"``
    (random backbone). ``variant`` ``rap`` is LoRM + text-conditioned ASA, ``rap_light`` is LoRM only.
    """

    clip: str = DEFAULT_CLIP
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
    def adapters(self) -> str:
        """The adapters the model has, in words (``LoRM + ASA``, ``LoRM only``, ``ASA only``, ``none (meanP)``):
        ``variant`` alone does not say it, as ``rap`` with ``use_asa`` off is ``rap_light``'s model."""
        parts = [name for name, has in (("LoRM", self.use_lorm), ("ASA", self.has_asa)) if has]
        if not parts:
            return "none (meanP)"
        return " + ".join(parts) if len(parts) == 2 else f"{parts[0]} only"

    @property
    def tokenizer(self) -> TokenizerConfig:
        return TokenizerConfig(context_length=self.context_length)

    @property
    def sampling(self) -> FrameSamplingConfig:
        return FrameSamplingConfig(max_frames=self.frames)

    def validate(self) -> None:
        """Raise :class:`UsageError` naming the bad value and the allowed ones.

        Types are checked as well as ranges (a config can come from an untrusted file), and every size has an upper
        bound (:mod:`rap_deploy.bounds`) so no value can make model construction allocate without limit.
        """
        from rap_deploy import bounds

        for name in ("clip", "pretrained", "variant", "asa_selection"):
            if not isinstance(getattr(self, name), str):
                raise UsageError(f"{name} must be a string, got {short_repr(getattr(self, name))}")
        for name in ("use_lorm", "use_asa", "quick_gelu"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be true or false, got {short_repr(getattr(self, name))}")
        if self.variant not in VARIANTS:
            raise UsageError(f"variant {short_repr(self.variant)} is unknown; use one of {', '.join(VARIANTS)}")
        if self.asa_selection not in SELECTION_MODES:
            raise UsageError(f"ASA selection {short_repr(self.asa_selection)} is unknown; "
                             f"use one of {', '.join(SELECTION_MODES)}")
        limits = {"frames": bounds.MAX_FRAMES, "context_length": bounds.MAX_CONTEXT_LENGTH,
                  "lorm_rank": bounds.MAX_LORM_RANK, "asa_topk": bounds.MAX_ASA_TOPK,
                  "asa_heads": bounds.MAX_ASA_HEADS, "asa_dim": bounds.MAX_ASA_DIM}
        for name, high in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise UsageError(f"{name} must be an integer, got {short_repr(value)}")
            # a text needs its start and end tokens: a context of 1 was written by init, then failed every use
            bounds.check_int(int(value), name, 2 if name == "context_length" else 1, high)
        if self.asa_dim % self.asa_heads:
            raise UsageError(f"asa_dim ({self.asa_dim}) must be divisible by asa_heads ({self.asa_heads})")
        _validate_preprocess(self.preprocess)

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
        return cls(**d)  # __post_init__ validates types and bounds


def preset_help() -> str:
    """Every preset with the sizes it sets, ``default (LoRM rank 4, ...), paper (...)``: the ``--preset`` help of
    each command that takes one, so none of them lists the presets by hand."""
    return ", ".join(f"{name} ({sizes})" for name, sizes in PRESET_SIZES.items())


def preset_changes(preset: str, embed_dim: int) -> dict[str, Any]:
    """The :class:`RAPConfig` values that ``preset`` sets on a backbone whose joint embedding width is ``embed_dim``.

    ``default`` sets nothing (the dataclass defaults: LoRM rank 4, ASA width ``asa_dim`` 128; on ViT-B/32 412,684
    trainable parameters). ``paper`` sizes the adapters like the paper's 1.06M: the ASA attention runs at the joint
    width (``asa_dim = embed_dim``) and LoRM keeps rank 2 in every block's two branches. On ViT-B/32 with 12 frames
    that is 1,050,124 (ASA) + 74,880 (LoRM) = 1,125,004 trainable parameters, +6.1 % of 1.06M (the ASA key bias, which
    never trains, not counted). This placement changes sizes only, not where the adapters sit. Explicit options
    given beside a preset win over it.
    Raises :class:`UsageError` for an unknown preset.
    """
    if preset == "default":
        return {}
    if preset == "paper":
        return {"asa_dim": int(embed_dim), "lorm_rank": 2}
    raise UsageError(f"preset '{preset}' is unknown; use one of {', '.join(PRESETS)}")

"""The model a new training run starts from: a RAP checkpoint to fine-tune, or identity adapters on an open_clip
model, with the dataset's frame count and context length, and the refusals of options that contradict it."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rap_deploy.errors import UsageError

if TYPE_CHECKING:
    from rap_deploy.checkpoint_model import Checkpoint
    from rap_deploy.model.rap import RAPModel
    from rap_deploy.train.loop import TrainOptions

# Options that define the model when it is built from --clip (ignored with --checkpoint unless they conflict).
MODEL_OPTIONS = ("variant", "use_lorm", "use_asa", "lorm_rank", "asa_topk", "asa_heads", "asa_dim", "asa_selection",
                 "frames", "context_length")


def source_checkpoint(options: TrainOptions, frames: int, context_length: int,
                      given: Mapping[str, Any] | None = None) -> tuple[Checkpoint, RAPModel]:
    """The checkpoint to fine-tune and its model: ``options.checkpoint``, or identity adapters on ``options.clip``.

    ``given`` (the options the user passed; see :func:`~rap_deploy.train.option_use.check_options_apply`) is checked
    against the model's config before any weights are loaded or downloaded, so the refusal of an option that acts on
    a missing part is not hidden by a download error and does not wait for a full CLIP to load. Raises
    :class:`UsageError` for such options and for model options that conflict with ``options.checkpoint``."""
    from rap_deploy.checkpoint import load_checkpoint, new_checkpoint
    from rap_deploy.config import DEFAULT_CLIP, PreprocessConfig, RAPConfig
    from rap_deploy.model.clip_loader import BackboneSpec, clip_model_config
    from rap_deploy.model_summary import preset_changes_for
    from rap_deploy.train.option_use import check_options_apply

    if options.checkpoint:
        ckpt = load_checkpoint(options.checkpoint)
        check_options_apply(ckpt.config, given)  # first: "lacks an ASA head" says more than "conflicts"
        _check_model_options(options, ckpt.config, _preset_sizes(options.preset, ckpt.config.clip))
        check_paragraph_protocol(options, ckpt.config)
        return ckpt, ckpt.build_model()
    clip = options.clip or DEFAULT_CLIP
    pretrained = options.pretrained
    if pretrained is None:
        import open_clip

        from rap_deploy.model.clip_loader import register_packaged_configs

        register_packaged_configs()
        pretrained = "openai" if "openai" in open_clip.list_pretrained_tags_by_model(clip) else "none"
    spec = BackboneSpec.parse(clip, pretrained)
    size = clip_model_config(clip)["vision_cfg"]["image_size"]
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    defaults = RAPConfig()
    kw = preset_changes_for(options.preset, clip) if options.preset else {}
    kw.update({name: getattr(options, name) for name in MODEL_OPTIONS if getattr(options, name) is not None})
    kw.update(frames=frames, context_length=context_length)
    config = defaults.replace(clip=clip, preprocess=PreprocessConfig(image_size=size), **kw)
    check_options_apply(config, given)
    embed = options.embed_backbone if options.embed_backbone is not None else spec.kind == "none"
    return new_checkpoint(config, spec, embed_backbone=embed, seed=options.seed)


def _preset_sizes(preset: str | None, clip: str) -> dict[str, Any]:
    """The adapter sizes ``--preset`` sets on a model on ``clip`` (none without ``--preset``), ``default``'s included:
    :func:`preset_changes_for` leaves those unset, as they are the :class:`RAPConfig` defaults, so ``--preset default``
    beside a checkpoint of other sizes was never compared with it."""
    if not preset:
        return {}
    from rap_deploy.config import PRESETS, RAPConfig
    from rap_deploy.model_summary import preset_changes_for

    defaults = RAPConfig()
    decided = {name for other in PRESETS for name in preset_changes_for(other, clip)}
    return {**{name: getattr(defaults, name) for name in decided}, **preset_changes_for(preset, clip)}


def _check_model_options(options: TrainOptions, config: Any, preset: dict[str, Any]) -> None:
    """Raise :class:`UsageError` when a model option given with ``--checkpoint``, or a size ``--preset`` sets
    (``preset``: its config fields), differs from the checkpoint's ``config``; the message names the option as it is
    typed (``--rank 3``, ``--no-asa``) or the preset that set the value."""
    from rap_deploy.train.option_flags import option_text

    for name in MODEL_OPTIONS:
        given = getattr(options, name)
        wanted = preset.get(name) if given is None else given
        have = getattr(config, name)
        if wanted is None or wanted == have:
            continue
        source = option_text(name, wanted) if given is not None else f"--preset {options.preset} ({name} = {wanted})"
        drop = "the option" if given is not None else "--preset"
        raise UsageError(f"{source} conflicts with checkpoint {options.checkpoint} ({name} = {have}); drop {drop} "
                         "or start from --clip")


def check_paragraph_protocol(options: TrainOptions, config: Any) -> None:
    """Refuse to fine-tune a checkpoint of ``rapdeploy init``'s defaults (12 frames, 32 tokens) on DiDeMo or
    ActivityNet without being told: their protocol is 64 frames and 64 tokens (tokens capped at the backbone's text
    positions: rap-micro and rap-tiny have 32, and init refuses more), and a checkpoint's frame count and context
    length are fixed by its weights. Passing ``--frames`` / ``--context-length`` equal to the checkpoint's says it is
    meant. Raises :class:`UsageError` naming every option that differs, in one refusal, and the fix."""
    from rap_deploy.data.datasets import dataset_defaults

    if options.dataset not in ("didemo", "activitynet"):
        return
    sampling, paragraph_tokens = dataset_defaults(options.dataset)
    positions = _text_positions(config.clip)
    ctx_len = min(paragraph_tokens, positions)
    options_checked = (("frames", config.frames, sampling.max_frames, options.frames),
                       ("context-length", config.context_length, ctx_len, options.context_length))
    unsaid = [(name, have, protocol) for name, have, protocol, given in options_checked
              if given is None and have != protocol]
    if not unsaid:
        return
    has = " and ".join(f"{name} {have}" for name, have, _ in unsaid)
    uses = " and ".join(str(protocol) for _, _, protocol in unsaid)
    keep = " ".join(f"--{name} {have}" for name, have, _ in unsaid)
    capped = f" ({config.clip} has {positions} text positions, fewer than the protocol's {paragraph_tokens})" \
        if ctx_len < paragraph_tokens else ""
    raise UsageError(f"checkpoint {options.checkpoint} has {has}, but {options.dataset}'s protocol uses {uses}: "
                     f"create it with `rapdeploy init --clip {shlex.quote(config.clip)} --frames {sampling.max_frames} "
                     f"--context-length {ctx_len} ...`{capped}, or pass {keep} to train at the checkpoint's")


def _text_positions(clip: str) -> int:
    """The text positions of open_clip model ``clip`` (its config's ``text_cfg.context_length``; open_clip's default,
    77, when the config does not set it): the most tokens a RAP model on it takes (:class:`~rap_deploy.model.rap.
    RAPModel` refuses more)."""
    from rap_deploy.model.clip_loader import clip_model_config

    return int((clip_model_config(clip).get("text_cfg") or {}).get("context_length") or 77)


def fresh_model(options: TrainOptions, given: Mapping[str, Any] | None = None) -> tuple[Checkpoint, RAPModel]:
    """Template checkpoint and model of a new run, with the dataset's frame count and context length by default;
    ``given`` is checked as in :func:`source_checkpoint` (before any weights load)."""
    from rap_deploy.data.datasets import dataset_defaults

    sampling, ctx_len = dataset_defaults(options.dataset)
    frames = sampling.max_frames if options.frames is None else options.frames
    return source_checkpoint(options, frames, ctx_len if options.context_length is None else options.context_length,
                             given)

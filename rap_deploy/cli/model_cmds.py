"""``rapdeploy init`` and ``rapdeploy info``."""

from __future__ import annotations

from pathlib import Path

import typer

from rap_deploy import bounds
from rap_deploy.atomic import json_text
from rap_deploy.cli.app import command
from rap_deploy.config import DEFAULT_CLIP, SELECTION_MODES, VARIANTS, RAPConfig, preset_help
from rap_deploy.errors import UsageError


def build_config(clip: str, variant: str, frames: int, context_length: int, lorm: bool, asa: bool,
                 rank: int | None, topk: int | None, heads: int | None, asa_dim: int | None, selection: str,
                 preset: str = "default") -> RAPConfig:
    """The :class:`RAPConfig` from CLI options: the dataclass defaults, then ``preset``'s values for ``clip``, then
    every adapter size that is not ``None`` (validated; raises :class:`UsageError` naming the option)."""
    _check_size_options({"--frames": frames, "--context-length": context_length, "--rank": rank, "--topk": topk,
                         "--heads": heads, "--asa-dim": asa_dim})
    sizes = preset_sizes(clip, preset, rank, topk, heads, asa_dim)
    _check_heads_divide_width(sizes, heads, asa_dim, preset)
    return RAPConfig(clip=clip, variant=variant, frames=frames, context_length=context_length, use_lorm=lorm,
                     use_asa=asa, asa_selection=selection, **sizes)


def preset_sizes(clip: str, preset: str, rank: int | None, topk: int | None, heads: int | None,
                 asa_dim: int | None) -> dict[str, int]:
    """The adapter sizes a model on ``clip`` gets: ``preset``'s, then every size option given (config field names)."""
    from rap_deploy.model_summary import preset_changes_for

    given = {"lorm_rank": rank, "asa_topk": topk, "asa_heads": heads, "asa_dim": asa_dim}
    return {**preset_changes_for(preset, clip), **{k: v for k, v in given.items() if v is not None}}


def check_heads_option(clip: str, preset: str, heads: int | None, asa_dim: int | None) -> None:
    """Raise :class:`UsageError` naming ``--heads``/``--asa-dim`` when the ASA heads of a model on ``clip`` with
    ``preset`` and these options would not divide its width (train's check, before the model config's own)."""
    _check_heads_divide_width(preset_sizes(clip, preset, None, None, heads, asa_dim), heads, asa_dim, preset)


# Each size option's range (RAPConfig checks the same under its field's name: lorm_rank, asa_topk, ...)
SIZE_OPTION_RANGES = {"--frames": (1, bounds.MAX_FRAMES), "--context-length": (2, bounds.MAX_CONTEXT_LENGTH),
                      "--rank": (1, bounds.MAX_LORM_RANK), "--topk": (1, bounds.MAX_ASA_TOPK),
                      "--heads": (1, bounds.MAX_ASA_HEADS), "--asa-dim": (1, bounds.MAX_ASA_DIM)}


def _check_size_options(values: dict[str, int | None]) -> None:
    """Check each given size option under the name the user typed; raises :class:`UsageError`."""
    for option, value in values.items():
        if value is not None:
            bounds.check_int(value, option, *SIZE_OPTION_RANGES[option])


def _check_heads_divide_width(sizes: dict[str, int], heads: int | None, asa_dim: int | None, preset: str) -> None:
    """Raise :class:`UsageError` naming ``--heads``/``--asa-dim`` (and where a value not given came from) when the
    ASA heads do not divide its width."""
    width = sizes.get("asa_dim", RAPConfig.asa_dim)
    count = sizes.get("asa_heads", RAPConfig.asa_heads)
    if width % count == 0:
        return

    def origin(given: int | None, field: str) -> str:
        return "" if given is not None else f" (the {preset} preset's)" if field in sizes else " (the default)"

    divisors = ", ".join(str(d) for d in range(1, min(width, 64) + 1) if width % d == 0)
    raise UsageError(f"--heads {count}{origin(heads, 'asa_heads')} does not divide the ASA width --asa-dim "
                     f"{width}{origin(asa_dim, 'asa_dim')}; pass --heads {divisors}, or an --asa-dim that {count} "
                     "divides")


def _clip_name(clip: str | None, backbone: Path | None) -> str:
    """``--clip``, else the model stored in the ``--backbone`` file, else ViT-B-32 (:class:`UsageError` when
    ``--clip`` contradicts the file)."""
    if backbone is not None:
        from rap_deploy.backbone_file import backbone_clip

        clip = backbone_clip(backbone, clip)
    return clip or DEFAULT_CLIP


@command("init")
def init(
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (.pt or .safetensors)."),
    clip: str | None = typer.Option(None, "--clip", help="open_clip model name (default ViT-B-32, or the name "
                                       "stored in --backbone)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="open_clip pretrained tag (e.g. openai; must be "
                                          "in the local cache), a local weights file, or 'none' for a random "
                                          "backbone (the default without --backbone)."),
    backbone: Path | None = typer.Option(None, "--backbone", help="Backbone weights file from `rapdeploy "
                                            "pretrain-backbone` (sets --clip and the weights; not with --pretrained)."),
    variant: str = typer.Option("rap", "--variant", help=f"One of {', '.join(VARIANTS)}."),
    frames: int = typer.Option(12, "--frames", help="Frames per video T (12 for MSR-VTT/MSVD, "
                        "64 for DiDeMo/ActivityNet)."),
    context_length: int = typer.Option(32, "--context-length", help="Text tokens L (32; 64 for paragraph datasets)."),
    lorm: bool = typer.Option(True, "--lorm/--no-lorm", help="LoRM in every visual block."),
    asa: bool = typer.Option(True, "--asa/--no-asa", help="The ASA head (ignored for rap_light)."),
    preset: str = typer.Option("default", "--preset", help=f"Adapter sizes: {preset_help()}; explicit --rank, "
                               "--topk, --heads, --asa-dim win."),
    rank: int | None = typer.Option(None, "--rank", help="LoRM rank r (default 4)."),
    topk: int | None = typer.Option(None, "--topk", help="ASA patches kept per frame k (default 8)."),
    heads: int | None = typer.Option(None, "--heads", help="ASA heads (default 4)."),
    asa_dim: int | None = typer.Option(None, "--asa-dim", help="ASA attention width d_a (default 128)."),
    selection: str = typer.Option("text", "--selection", help=f"ASA patch selection: {', '.join(SELECTION_MODES)}."),
    embed_backbone: bool = typer.Option(True, "--embed-backbone/--reference-backbone", help="Store the backbone "
                                        "weights in the checkpoint, or only reference the tag/file by sha256 (a "
                                        "random backbone, --pretrained none, is always stored: nothing could "
                                        "rebuild it)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the adapters' random init."),
    json_out: bool = typer.Option(False, "--json", help="Print the model summary as JSON."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
) -> None:
    """Create an untrained RAP checkpoint (identity adapters: exactly frozen CLIP with mean pooling)."""
    from rap_deploy.backbone_file import check_one_backbone_source
    from rap_deploy.checkpoint import check_checkpoint_name
    from rap_deploy.model_summary import init_checkpoint

    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; pass a checkpoint file path such as {out / 'init.pt'}")
    check_checkpoint_name(out)  # before the CLIP loads: a name that verify, index and serve would not take
    _check_out_parent(out)
    if (out.exists() or out.is_symlink()) and not force:  # it may be a trained checkpoint: never replaced unasked
        raise UsageError(f"--out {out} exists; pass --force to replace it, or another --out")
    bounds.check_int(seed, "--seed", 0, bounds.MAX_SEED)
    check_one_backbone_source(backbone, pretrained)

    summary = init_checkpoint(out, clip=clip, pretrained=pretrained or "none", backbone_file=backbone,
                              config=build_config(_clip_name(clip, backbone), variant, frames, context_length, lorm,
                                                  asa, rank, topk, heads, asa_dim, selection, preset),
                              embed_backbone=embed_backbone, seed=seed)
    _print_summary(summary, json_out, f"wrote {out}")


def _check_out_parent(out: Path) -> None:
    """Refuse (:class:`UsageError`) an ``--out`` under a file, before the CLIP loads: saving it failed only at the
    end, as 'cannot access PARENT: File exists'."""
    parent = next((p for p in out.absolute().parents if p.exists() or p.is_symlink()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder; pass another --out")


@command("info")
def info(
    checkpoint: Path | None = typer.Argument(None, help="A RAP checkpoint; omit to describe --clip with defaults."),
    clip: str | None = typer.Option(None, "--clip", help="open_clip model name when no checkpoint is given "
                                    "(default ViT-B-32)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Backbone weights when no checkpoint is given "
                                          "(default none)."),
    variant: str | None = typer.Option(None, "--variant", help=f"One of {', '.join(VARIANTS)} (default rap), when no "
                                       "checkpoint is given."),
    frames: int | None = typer.Option(None, "--frames", help="Frames per video T (default 12), when no checkpoint "
                                      "is given."),
    preset: str | None = typer.Option(None, "--preset", help=f"Adapter sizes when no checkpoint is given: "
                                      f"{preset_help()} (default default)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (keys: variant, clip, frames, trainable_params, "
                                  "total_params, asa_offsets, lorm_modulation, ...)."),
) -> None:
    """Summarise a RAP model: variant, backbone, adapter sizes, trainable and total parameters, the learned ASA
    offsets γ (patch units) and δ (frames) per head, and how far LoRM is from the identity."""
    from rap_deploy.model_summary import describe

    given = [name for name, value in (("--clip", clip), ("--pretrained", pretrained), ("--variant", variant),
                                      ("--frames", frames), ("--preset", preset)) if value is not None]
    if checkpoint is not None and given:
        verb = "describe" if len(given) > 1 else "describes"
        raise UsageError(f"{', '.join(given)} {verb} a model built from a CLIP when no checkpoint is given; a "
                         f"checkpoint is described as it was saved (its own frames, variant and backbone): drop "
                         f"{'them' if len(given) > 1 else 'it'}, or omit {checkpoint}")
    config = build_config(clip or DEFAULT_CLIP, variant or "rap", 12 if frames is None else frames, 32, True, True,
                          None, None, None, None, "text", preset or "default")
    summary = describe(checkpoint, config, pretrained or "none")
    _print_summary(summary, json_out, None)


def _print_summary(summary: dict, json_out: bool, header: str | None) -> None:
    if json_out:
        typer.echo(json_text(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header or "RAP model", show_header=False)
    for key in ("variant", "adapters", "clip", "backbone", "frames", "context_length", "trainable_params",
                "total_params", "trainable_percent", "lorm_params", "asa_params"):
        if key in summary:
            value = summary[key]
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    offsets = summary.get("asa_offsets")
    if offsets:
        table.add_row("γ per head (patch y, x)", "  ".join(f"({y:+.3f}, {x:+.3f})" for y, x in offsets["gamma"]))
        table.add_row("δ per head (frames)", "  ".join(f"{d:+.3f}" for d in offsets["delta"]))
    lorm = summary.get("lorm_modulation")
    if lorm:
        table.add_row("LoRM max |scale − 1|, max |shift|", f"{lorm['max_scale_change']:.4f}, {lorm['max_shift']:.4f}")
    epoch = _run_epoch(summary.get("extra") or {})
    if epoch is not None:
        table.add_row("training run epoch", "0: the starting weights, untrained" if epoch == 0 else str(epoch))
    Console().print(table)


def _run_epoch(extra: dict) -> int | None:
    """The epoch of a training run's checkpoint (``best.pt``/``last.pt`` store ``epoch`` and ``step``); ``None`` for
    any other checkpoint (``rapdeploy init``'s store neither)."""
    epoch, step = extra.get("epoch"), extra.get("step")
    if isinstance(epoch, int) and isinstance(step, int) and not isinstance(epoch, bool) and epoch >= 0:
        return epoch
    return None

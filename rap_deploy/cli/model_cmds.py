"""``rapdeploy init`` and ``rapdeploy info``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rap_deploy.cli.app import command
from rap_deploy.config import SELECTION_MODES, VARIANTS, RAPConfig
from rap_deploy.errors import UsageError


def build_config(clip: str, variant: str, frames: int, context_length: int, lorm: bool, asa: bool, rank: int,
                 topk: int, heads: int, asa_dim: int, selection: str) -> RAPConfig:
    """The :class:`RAPConfig` from CLI options (validated; raises :class:`UsageError`)."""
    return RAPConfig(clip=clip, variant=variant, frames=frames, context_length=context_length, use_lorm=lorm,
                     use_asa=asa, lorm_rank=rank, asa_topk=topk, asa_heads=heads, asa_dim=asa_dim,
                     asa_selection=selection)


@command("init")
def init(
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (.pt or .safetensors)."),
    clip: str | None = typer.Option(None, "--clip", help="open_clip model name (default ViT-B-32, or the name "
                                       "stored in --backbone)."),
    pretrained: str = typer.Option("none", "--pretrained", help="open_clip pretrained tag (e.g. openai; must be in the "
                                   "local cache), a local weights file, or 'none' for a random backbone."),
    backbone: Path | None = typer.Option(None, "--backbone", help="Backbone weights file from `rapdeploy "
                                            "pretrain-backbone` (sets --clip and --pretrained)."),
    variant: str = typer.Option("rap", "--variant", help=f"One of {', '.join(VARIANTS)}."),
    frames: int = typer.Option(12, "--frames", help="Frames per video T (12 for MSR-VTT/MSVD, "
                        "64 for DiDeMo/ActivityNet)."),
    context_length: int = typer.Option(32, "--context-length", help="Text tokens L (32; 64 for paragraph datasets)."),
    lorm: bool = typer.Option(True, "--lorm/--no-lorm", help="LoRM in every visual block."),
    asa: bool = typer.Option(True, "--asa/--no-asa", help="The ASA head (ignored for rap_light)."),
    rank: int = typer.Option(4, "--rank", help="LoRM rank r."),
    topk: int = typer.Option(8, "--topk", help="ASA patches kept per frame k."),
    heads: int = typer.Option(4, "--heads", help="ASA heads."),
    asa_dim: int = typer.Option(128, "--asa-dim", help="ASA attention width d_a."),
    selection: str = typer.Option("text", "--selection", help=f"ASA patch selection: {', '.join(SELECTION_MODES)}."),
    embed_backbone: bool = typer.Option(True, "--embed-backbone/--reference-backbone", help="Store the backbone "
                                        "weights in the checkpoint, or only reference the tag/file by sha256."),
    seed: int = typer.Option(0, "--seed", help="Seed for the adapters' random init."),
    json_out: bool = typer.Option(False, "--json", help="Print the model summary as JSON."),
) -> None:
    """Create an untrained RAP checkpoint (identity adapters: exactly frozen CLIP with mean pooling)."""
    from rap_deploy.model_summary import init_checkpoint

    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; pass a checkpoint file path such as {out / 'init.pt'}")

    summary = init_checkpoint(out, clip=clip, pretrained=pretrained, backbone_file=backbone,
                              config=build_config(clip or "ViT-B-32", variant, frames, context_length, lorm, asa, rank,
                                                  topk, heads, asa_dim, selection),
                              embed_backbone=embed_backbone, seed=seed)
    _print_summary(summary, json_out, f"wrote {out}")


@command("info")
def info(
    checkpoint: Path | None = typer.Argument(None, help="A RAP checkpoint; omit to describe --clip with defaults."),
    clip: str = typer.Option("ViT-B-32", "--clip", help="open_clip model name when no checkpoint is given."),
    pretrained: str = typer.Option("none", "--pretrained", help="Backbone weights when no checkpoint is given."),
    variant: str = typer.Option("rap", "--variant", help=f"One of {', '.join(VARIANTS)}."),
    frames: int = typer.Option(12, "--frames", help="Frames per video T."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (keys: variant, clip, frames, trainable_params, "
                                  "total_params, ...)."),
) -> None:
    """Summarise a RAP model: variant, backbone, adapter sizes, trainable and total parameters."""
    from rap_deploy.model_summary import describe

    if checkpoint is None and clip is None:
        raise UsageError("pass a checkpoint or --clip NAME")
    summary = describe(checkpoint, RAPConfig(clip=clip, variant=variant, frames=frames), pretrained)
    _print_summary(summary, json_out, None)


def _print_summary(summary: dict, json_out: bool, header: str | None) -> None:
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=header or "RAP model", show_header=False)
    for key in ("variant", "clip", "backbone", "frames", "context_length", "trainable_params", "total_params",
                "trainable_percent", "lorm_params", "asa_params"):
        if key in summary:
            value = summary[key]
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)

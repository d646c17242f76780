"""``rapdeploy export``: a checkpoint to the three ONNX graphs, checked (DESIGN.md §4, §7, §11)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rap_deploy.atomic import json_text
from rap_deploy.cli.app import WORKSPACE_DEFAULT, command
from rap_deploy.data import DATASET_NAMES, DEFAULT_DATASET
from rap_deploy.errors import UsageError


@command("export")
def export(
    checkpoint: Path = typer.Argument(..., help="RAP checkpoint (.pt or .safetensors) from `rapdeploy init` or "
                                      "`rapdeploy train`."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: <workspace>/onnx)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset: 17 (default), 18 or 19."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write <graph>.fp16.onnx for GPU runtimes (LayerNorm, "
                              "Softmax, reductions, normalisation and sampling arithmetic stay fp32; I/O fp32)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing, non-empty output folder."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Dataset folder whose first test videos and "
                                          "captions feed the parity check (default: rendered synthetic videos)."),
    dataset: str | None = typer.Option(None, "--dataset", help=f"Dataset layout of --data-root ({DATASET_NAMES}; "
                                       f"default {DEFAULT_DATASET})."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT}); used "
                                          "when --out is not given."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Export ONNX graphs (video_encoder, text_encoder, asa_head), check them and compare them with PyTorch.

    Writes the graphs, parity.json and manifest.json; exits 1 when a check or the fp32 parity fails.
    """
    from rap_deploy.export.onnx_export import export_checkpoint
    from rap_deploy.workspace import subdir

    if dataset is not None and data_root is None:
        raise UsageError(f"--dataset {dataset} names the layout of --data-root; pass --data-root too (without it the "
                         "parity check renders synthetic videos)")
    out_dir = out if out is not None else subdir("onnx", workspace)
    manifest = export_checkpoint(checkpoint, out_dir, opset=opset, fp16=fp16, force=force, data_root=data_root,
                                 progress=not quiet and not json_out, dataset=dataset or DEFAULT_DATASET)
    if json_out:
        typer.echo(json_text(manifest))
        return
    _print_table(out_dir, manifest)


def _print_table(out_dir: Path, manifest: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    parity = json.loads((out_dir / manifest["parity"]["file"]).read_text())
    table = Table(title=escape(f"exported to {out_dir} ({manifest['exporter']['name']}, opset {manifest['opset']})"))
    for col in ("graph", "file", "MB", "max_abs", "min_cosine", "top-k"):
        table.add_column(col, justify="right" if col in ("MB", "max_abs", "min_cosine") else "left")
    sections = [(manifest["graphs"], parity["graphs"], ""),
                (manifest.get("fp16_graphs") or {}, (parity.get("fp16") or {}).get("graphs", {}), " (fp16)")]
    for records, figures, tag in sections:
        for name, rec in records.items():
            fig = figures.get(name, {})
            size = rec["bytes"] + rec.get("external_data", {}).get("bytes", 0)
            table.add_row(name + tag, rec["file"], f"{size / 1e6:.1f}", _fmt(fig.get("max_abs"), ".2e"),
                          _fmt(fig.get("min_cosine"), ".7f"), "same" if fig.get("topk_match") else "DIFFERENT")
    console = Console()
    console.print(table)
    console.print(f"parity passed (fp32 graphs: max abs ≤ {parity['tolerances']['max_abs']:g}, cosine ≥ "
                  f"{parity['tolerances']['min_cosine']}); {manifest['seconds']['total']:.1f} s; "
                  f"inputs: {escape(parity['inputs']['source'])}")
    if manifest.get("fp16_graphs"):
        console.print("the (fp16) rows are informational: no threshold here, an engine built from them is held to "
                      "its recall tolerance by `rapdeploy verify`")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)

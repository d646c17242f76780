"""``rapdeploy build-engine``."""

from __future__ import annotations

from pathlib import Path

import typer

from rap_deploy.atomic import json_text
from rap_deploy.cli.app import WORKSPACE_DEFAULT, command


@command("build-engine")
def build_engine_cmd(
    export_dir: Path | None = typer.Argument(None, help="Export folder (from `rapdeploy export`); default: the "
                                             "workspace's latest export."),
    backend: str | None = typer.Option(None, "--backend", help="tensorrt or onnxruntime. Default: tensorrt with "
                                       "--fp16, else onnxruntime."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 engine (TensorRT by default; ONNX Runtime needs --device "
                              "cuda). LayerNorm, Softmax, reductions and the ASA sampling stay FP32."),
    int8: bool = typer.Option(False, "--int8", help="ONNX Runtime CPU engine with dynamically quantised int8 "
                              "MatMul/Gemm weights (final projections and the ASA head stay fp32)."),
    out: Path | None = typer.Option(None, "--out", help="Engine folder to write; default: "
                                    "<workspace>/engines/<backend>-<precision>."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda. Default: cuda for TensorRT and fp16, "
                                      "cpu otherwise."),
    min_batch: int | None = typer.Option(None, "--min-batch", help="TensorRT profile: smallest video/text batch "
                                         "(default 1)."),
    opt_batch: int | None = typer.Option(None, "--opt-batch", help="TensorRT profile: batch to tune for (default 8 "
                                         "videos, 32 texts)."),
    max_batch: int | None = typer.Option(None, "--max-batch", help="TensorRT profile: largest batch (default 32 "
                                         "videos, 128 texts); bigger inputs are split."),
    query_block: int | None = typer.Option(None, "--query-block", help="Texts per ASA-head call (default 32; a CPU "
                                           "engine feeds fewer when a call would not fit in half the memory "
                                           "available)."),
    video_block: int | None = typer.Option(None, "--video-block", help="Videos per ASA-head call (default 64; a CPU "
                                           "engine feeds fewer when a call would not fit in half the memory "
                                           "available)."),
    threads: int | None = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads, recorded in the "
                                       "engine: a command that loads it without its own --threads runs it with "
                                       "them (default: none recorded, ONNX Runtime's own: one per physical core)."),
    inter_threads: int | None = typer.Option(None, "--inter-threads", help="ONNX Runtime inter-op threads."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    force: bool = typer.Option(False, "--force", help="Replace an existing engine folder."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Compare the new engine with the PyTorch "
                                  "reference before keeping it."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the engine manifest as JSON."),
) -> None:
    """Build a TensorRT or ONNX Runtime engine folder (engine files + manifest.json) from an export folder.

    Exits 1 when the new engine does not match the PyTorch reference (--validate; the previous engine folder is kept)
    or the export folder is damaged; 2 for bad usage or a backend this machine lacks (TensorRT, a CUDA provider).
    """
    from rap_deploy import bounds
    from rap_deploy.engines.build import build_engine
    from rap_deploy.engines.trt_plan import ProfileOptions

    for option, value in (("--min-batch", min_batch), ("--opt-batch", opt_batch), ("--max-batch", max_batch),
                          ("--query-block", query_block), ("--video-block", video_block)):
        if value is not None:
            bounds.check_int(value, option, 1, bounds.MAX_BATCH_SIZE)
    bounds.check_threads(threads)
    bounds.check_threads(inter_threads, "--inter-threads")

    manifest = build_engine(export_dir, backend=backend, fp16=fp16, int8=int8, out=out, device=device,
                            profiles=ProfileOptions(min_batch, opt_batch, max_batch, query_block, video_block),
                            threads=threads, inter_threads=inter_threads, workspace=workspace, force=force,
                            validate=validate, progress=not quiet)
    if json_out:
        typer.echo(json_text(manifest, default=str))
        return
    _print_summary(manifest)


def _print_summary(manifest: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"engine {manifest['dir']}"))
    for col in ("graph", "file", "MiB", "max abs err", "min cosine"):
        table.add_column(col)
    val = manifest.get("validation") or {}
    outputs = {"video_encoder": "video_emb", "text_encoder": "text_emb", "asa_head": "similarity"}
    for name, entry in manifest["graphs"].items():
        m = val.get(outputs.get(name, ""), {})
        table.add_row(name, entry["file"], f"{entry.get('bytes', 0) / 2**20:.1f}",
                      f"{m['max_abs']:.2e}" if m else "-",
                      f"{m['min_cosine']:.6f}" if m and isinstance(m.get("min_cosine"), float) else "-")
    console = Console()
    console.print(table)
    console.print(f"{manifest['backend']} {manifest['precision']} on {manifest['device']}"
                  + (f" ({manifest['provider']})" if manifest.get("provider") else "")
                  + (f"; validated against {val['reference']}" if val else "; not validated"), markup=False)

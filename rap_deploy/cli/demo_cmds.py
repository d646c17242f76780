"""``rapdeploy demo``: the whole pipeline on the offline default, ending with one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from rap_deploy.atomic import json_text
from rap_deploy.cli.app import WORKSPACE_DEFAULT, command
from rap_deploy.cli.demo_steps import DEMO_SUMMARY


@command("demo", resume="re-run the same command to resume: finished steps are kept")
def demo(
    out: Path | None = typer.Option(None, "--out", help="Folder for everything the demo writes (default: the "
                                       f"workspace, --workspace, else {WORKSPACE_DEFAULT.removeprefix('default: ')}, "
                                       "so later bare commands find its artifacts)."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    tiny: bool = typer.Option(False, "--tiny", help="A reduced demo (a few videos, micro backbone, one epoch) that "
                              "checks the plumbing in about a minute."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads for PyTorch and ONNX Runtime "
                                       "(default: the libraries' own); recorded in the demo's engines, as "
                                       "`build-engine --threads` records them."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    json_out: bool = typer.Option(False, "--json", help=f"Print {DEMO_SUMMARY} instead of the table."),
) -> None:
    """Run synth → backbone → init → train → export → build-engine → verify → bench → library on the offline default.

    A step whose files (and the files it read) are unchanged since it ran is skipped, so a second run resumes; a
    deleted or damaged output is made again, with every step after it (DIR/demo-steps.json records the files).
    Writes DIR/summary.json. Exit 1 when an engine fails its parity check (the summary is still written) or a step
    fails; 2 for bad usage or a folder of another recipe.
    """
    from rap_deploy import bounds
    from rap_deploy.cli.demo_recipe import DemoSizes
    from rap_deploy.cli.pipeline import ParityFailedError, run_demo
    from rap_deploy.workspace import workspace_root

    bounds.check_threads(threads)
    target = out or workspace_root(workspace)
    sizes = DemoSizes.tiny() if tiny else DemoSizes()
    log = (lambda msg: None) if json_out else (lambda msg: typer.echo(msg, err=True))
    try:
        summary = run_demo(target, sizes, progress=not quiet, threads=threads, log=log)
    except ParityFailedError:  # the summary of this run was written: print it, then exit 1
        summary = json.loads((Path(target) / DEMO_SUMMARY).read_text())
        _print(summary, json_out, target)
        raise
    _print(summary, json_out, target)


def search_command(library: str) -> str:
    """The ``rapdeploy search`` command line that searches the demo's ``library``: bare when the library is where a
    bare command looks (the default workspace's ``index/``), else with ``--library``."""
    from rap_deploy.library.manifest import find_library

    found = find_library(None, None, required=False)
    bare = found is not None and found.resolve() == Path(library).resolve()
    return 'rapdeploy search "..."' + ("" if bare else f" --library {library}")


def _print(summary: dict[str, Any], json_out: bool, target: Path) -> None:
    """Print the demo's summary: as JSON, or as its tables (retrieval, parity, throughput, the library search)."""
    if json_out:
        typer.echo(json_text(summary))
        return
    from rich.console import Console

    from rap_deploy.cli.pipeline import rap_initial_note

    console = Console(width=max(Console().width, 110))
    console.print(_retrieval_table(summary))
    initial = rap_initial_note(summary)  # RAP's best.pt is its untrained starting model: said, not silent
    if initial:
        console.print(initial, style="yellow", markup=False, soft_wrap=True)
    console.print(_parity_table(summary["engines"]))
    console.print(_throughput_table(summary))
    load = summary.get("bench_load") or {}
    if load and not load.get("clean", True):
        console.print("WARNING: the machine was not quiet during bench; ratios are unreliable: "
                      + "; ".join(load.get("reasons", [])), style="bold red", markup=False)
    _print_library(console, summary.get("library"))
    console.print(f"demo finished in {summary['seconds']:.0f}s (all steps: {summary['pipeline_seconds']:.0f}s); "
                  f"summary: {Path(target) / DEMO_SUMMARY}", markup=False)


def _retrieval_table(summary: dict[str, Any]) -> Any:
    """The rich table of zero-shot, RAP and RAP two-stage recall on the test split (rows the summary has)."""
    from rich.table import Table

    table = Table(title="Retrieval on the synthetic test split (full ASA similarity)")
    for col in ("model", "t2v R@1", "R@5", "R@10", "MnR", "v2t R@1", "R@5", "R@10", "MnR"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, key in (("zero-shot (frozen CLIP, meanP)", "zero_shot"), ("RAP", "rap"),
                      ("RAP two-stage", "rap_two_stage")):
        m = summary.get(key)
        if m:
            table.add_row(name, *(f"{m[d][k]:.1f}" for d in ("t2v", "v2t") for k in ("R1", "R5", "R10", "MnR")))
    return table


def _parity_table(engines: list[dict[str, Any]]) -> Any:
    """The rich table of each engine's verify verdict, tolerance, recall deltas and rank changes."""
    from rich.table import Table

    table = Table(title="Engines: recall parity vs PyTorch")
    for col in ("engine", "verdict", "tolerance", "ΔR@1 t2v", "ΔR@5 t2v", "ΔR@1 v2t", "rank changes"):
        table.add_column(col)
    for e in engines:
        d = e["delta"]
        rc, tied = e.get("rank_changes"), e.get("rank_changes_within_ties") or {}
        rc_text = " / ".join(f"{d} {n}" + (f" (+{tied[d]} tied)" if tied.get(d) else "") for d, n in rc.items()) \
            if isinstance(rc, dict) else str(rc)
        tol = e.get("tolerance")
        table.add_row(e["name"], "[green]pass[/green]" if e["passed"] else "[red]FAIL[/red]",
                      "0 rank changes" if e["precision"] == "fp32" else f"{tol:g} pts" if tol is not None else "-",
                      f"{d['t2v']['R1']:+.2f}", f"{d['t2v']['R5']:+.2f}", f"{d['v2t']['R1']:+.2f}", rc_text)
    return table


def _throughput_table(summary: dict[str, Any]) -> Any:
    """The rich table of each backend, precision and graph at its largest benchmarked batch."""
    from rich.markup import escape
    from rich.table import Table

    device = summary.get("device") or {}
    where = f"{device.get('cpu', 'CPU')}, {device.get('cores', '?')} cores" if isinstance(device, dict) else device
    table = Table(title=escape(f"Throughput at the largest benchmarked batch ({where})"))
    for col in ("backend", "precision", "graph", "batch", "throughput", "p50 ms", "vs PyTorch"):
        table.add_column(col)
    largest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in summary["bench"]:
        key = (r["backend"], r["precision"], r["graph"])
        if key not in largest or r["batch_size"] > largest[key]["batch_size"]:
            largest[key] = r
    for r in largest.values():
        ratio = r.get("ratio_vs_torch")
        mark = "" if r.get("ratio_reliable", True) else " (unreliable)"
        table.add_row(r["backend"], r["precision"], r["graph"], str(r["batch_size"]),
                      f"{r['throughput']:.1f} {r['unit']}", f"{r['p50_ms']:.1f}",
                      f"{ratio:.2f}x{mark}" if isinstance(ratio, (int, float)) else "-")
    return table


def _print_library(console: Any, library: dict[str, Any] | None) -> None:
    """The library step: the test split indexed, one query's top 5."""
    if not library:
        return
    from rich.markup import escape
    from rich.table import Table

    t = library["timings_ms"]
    table = Table(title=f"Library search: “{escape(library['query'])}” over {library['videos']} test videos",
                  caption=f"text {t['text']:.1f} ms · stage 1 {t['stage1']:.2f} ms · re-rank {t['rerank']:.1f} ms; "
                  f"library {escape(library['library'])}; search it with {escape(search_command(library['library']))}")
    for col in ("rank", "video", "score", "stage-1 rank"):
        table.add_column(col)
    for hit in library["top5"]:
        table.add_row(str(hit["rank"]), escape(hit["video_id"]), f"{hit['score']:.4f}", str(hit["stage1_rank"]))
    console.print(table)

"""``rapdeploy bench``'s report text: table rows, the load, pause, adapter-cost and search lines, ``bench.md`` and
``bench.png`` (matplotlib Agg).

Everything here formats the bench.json that :mod:`rap_deploy.engines.bench` computed; the printed table is
:mod:`rap_deploy.engines.bench_table`, the files are written by :mod:`rap_deploy.engines.bench_report`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rap_deploy.engines.report_env import describe_device
from rap_deploy.engines.report_format import format_value, md_table, ms_cell, pyplot, save_png


def backend_labels(results: list[dict[str, Any]]) -> dict[int, str]:
    """Each row's backend label (by position): the backend, and the engine folder's name too when two engines of one
    backend and precision were benched (an export and its engine, say), so their rows and plot lines stay apart."""
    engines: dict[tuple[str, str], set[str]] = {}
    for r in results:
        engines.setdefault((r["backend"], r["precision"]), set()).add(str(r.get("engine", "")))
    names = {key: _unique_suffixes(group) for key, group in engines.items() if len(group) > 1}
    return {i: r["backend"] + (f" [{names[key][str(r.get('engine', ''))]}]"
                               if (key := (r["backend"], r["precision"])) in names else "")
            for i, r in enumerate(results)}


def _unique_suffixes(paths: set[str]) -> dict[str, str]:
    """Each path's shortest trailing part (folder name, then parent/name, ...) that no other path of ``paths`` ends
    with: two engines both called ``onnxruntime-fp32`` in other folders keep their own labels."""
    parts = {p: Path(p).parts or (p,) for p in paths}
    for depth in range(1, max(len(v) for v in parts.values()) + 1):
        tails = {p: "/".join(v[-depth:]) for p, v in parts.items()}
        if len(set(tails.values())) == len(tails):
            return tails
    return {p: p for p in paths}


def bench_rows(result: dict[str, Any]) -> list[list[str]]:
    """Rows ``[backend, precision, graph, batch, throughput, unit, min, p50, p90, p99, ×torch (mean latencies: the
    throughput ratio), ×torch (fastest calls), GFLOP/s]``."""
    rows = []
    labels = backend_labels(result["results"])
    for i, r in enumerate(result["results"]):
        ratio, best = r.get("ratio_vs_torch"), r.get("ratio_vs_torch_best")
        mark = "" if r.get("ratio_reliable", True) else " (unreliable)"
        rows.append([labels[i], r["precision"], r["graph"], str(r["batch_size"]),
                     format_value(r["throughput"], 2), r["unit"], ms_cell(r.get("min_ms")), ms_cell(r["p50_ms"]),
                     ms_cell(r["p90_ms"]), ms_cell(r["p99_ms"]), "-" if ratio is None else f"{ratio:.2f}x{mark}",
                     "-" if best is None else f"{best:.2f}x{mark}", format_value(r.get("gflops_per_s"), 1)])
    return rows


BENCH_HEADER = ("backend", "precision", "graph", "batch", "throughput", "unit", "min ms", "p50 ms", "p90 ms",
                "p99 ms", "vs torch (mean)", "vs torch (min)", "GFLOP/s")


def adapter_line(cost: dict[str, Any]) -> str:
    """The report's one line comparing the RAP and meanP video encoders' cost (bench's ``adapter_cost``): p50 times,
    their ratio and, when ``cost`` has ``ratio_min``, the best calls'. Raises KeyError when ``cost`` lacks a p50
    time or the ratio."""
    line = (f"RAP vs meanP video encoder (PyTorch eager, batch 1, {cost.get('frames')} frames): p50 "
            f"{format_value(cost['rap_p50_ms'])} vs {format_value(cost['meanp_p50_ms'])} ms, ratio {cost['ratio']:.3f}")
    if "ratio_min" in cost:
        line += (f" (best call: {format_value(cost['rap_min_ms'])} vs {format_value(cost['meanp_min_ms'])} ms, "
                 f"{cost['ratio_min']:.3f})")
    return line


# bench.json's note on an unquiet run: the printed table leaves it out, as its load line says the same
UNQUIET_NOTE = "the machine was not quiet, so every ratio is unreliable: "


def load_line(result: dict[str, Any]) -> str:
    """One line on the machine's load during the run: clean, or a warning with the reasons."""
    load = result.get("load")
    if not load:
        return "load: not measured"
    run = load["run"]
    measured = (f"other processes {run['other_cores']:.2f} cores, steal {run['steal_cores']:.2f} cores, "
                f"load average {load.get('loadavg_1min_start')} on {load['usable_cores']} cores")
    if load["clean"]:
        return f"load: clean ({measured})"
    return f"WARNING: the machine was not quiet; every ratio is unreliable ({'; '.join(load['reasons'])})"


def pauses_line(result: dict[str, Any]) -> str | None:
    """One line on the pauses before timed calls that follow another backend's (``load.pauses``; none for an older
    bench.json or a run that made none)."""
    pauses = (result.get("load") or {}).get("pauses") or {}
    if not pauses.get("count"):
        return None
    return (f"pauses: {pauses['count']} before a call that follows another backend's ({pauses['rule']}): median "
            f"{pauses['median_ms']:g} ms, longest {pauses['max_ms']:g} ms, {pauses['capped']} at the cap")


def search_lines(result: dict[str, Any]) -> list[str]:
    """The two-stage search against the video encoder (issue 11's ratio, target <= 0.1) and the index size."""
    lines = []
    ratios = result.get("search_vs_video_p50") or {}
    index = result.get("index") or {}
    if ratios:
        lines.append(f"two-stage search p50 (batch 1, {index.get('videos')} videos, top {index.get('rerank_top')}) / "
                     "video encoder p50 (batch 1): " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    per_video = index.get("bytes_per_video")
    if per_video:
        lines.append("index bytes per video: " + ", ".join(f"{k} {v:,}" for k, v in per_video.items()))
    return lines


def _settings_lines(settings: dict[str, Any]) -> list[str]:
    """bench.md's lines on what a timed call covers and how the ratios are formed (none for an older bench.json)."""
    return [f"- {label}: {settings[key]}" for label, key in (("timed", "timed_call"), ("ratios", "ratios"))
            if settings.get(key)]


def bench_markdown(result: dict[str, Any]) -> str:
    """A Markdown version of the bench table (for READMEs and CI logs)."""
    pauses = pauses_line(result)
    lines = ["# rapdeploy bench", "", f"- device: {describe_device(result['device'])}", f"- {load_line(result)}",
             *([f"- {pauses}"] if pauses else []),
             f"- inputs: {result.get('inputs')}", *_settings_lines(result.get("settings", {})),
             f"- model: {result.get('model', {}).get('clip')}, "
             f"{result.get('model', {}).get('frames')} frames", ""]
    flops = result.get("gflops", {})
    if flops:
        lines += ["GFLOPs: " + ", ".join(f"{k} {format_value(v, 3)}" for k, v in flops.items()), ""]
    lines += [md_table(BENCH_HEADER, bench_rows(result)), ""]
    meanp = result.get("adapter_cost")
    if meanp:
        lines += [adapter_line(meanp), ""]
    lines += [f"{line}\n" for line in search_lines(result)]
    lines += [f"- note: {note}" for note in result.get("notes", [])]  # why rows are missing, as the table prints them
    return "\n".join(lines)


def plot_bench(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``bench.png``: throughput vs batch size per backend, one panel per graph (log-scaled batch axis)."""
    plt = pyplot()
    graphs = list(dict.fromkeys(r["graph"] for r in result["results"]))
    n = max(1, len(graphs))
    ncols = min(n, 2)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    labels = backend_labels(result["results"])
    named = [(f"{labels[i]} {r['precision']}", r) for i, r in enumerate(result["results"])]
    for ax, graph in zip(axes.flat, graphs, strict=False):
        rows = [(label, r) for label, r in named if r["graph"] == graph]
        sizes = sorted({r["batch_size"] for _, r in rows})
        for label in dict.fromkeys(label for label, _ in rows):
            series = sorted((r["batch_size"], r["throughput"]) for name, r in rows if name == label)
            ax.plot([s[0] for s in series], [s[1] for s in series], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("batch size")
        ax.set_ylabel(rows[0][1]["unit"] if rows else "")
        ax.set_title(graph)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"throughput — {describe_device(result['device'])}", fontsize=9)
    return save_png(plt, fig, path)

"""Reports of ``verify`` and ``bench``: rich tables, Markdown and PNG plots (matplotlib Agg).

Everything here formats results that :mod:`rap_deploy.engines.verify` and :mod:`rap_deploy.engines.bench` computed;
the run environment they record (machine, library versions) is :mod:`rap_deploy.engines.report_env`, whose functions
are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rap_deploy.atomic import save_with
from rap_deploy.engines.report_env import (  # noqa: F401 - re-exported: verify and bench call reports.*
    cpu_model,
    describe_device,
    device_info,
    library_versions,
)

METRIC_ROWS = ("R1", "R5", "R10", "MdR", "MnR", "RSum", "ties")
MODE_TITLES = {"asa": "full ASA", "two_stage": "two-stage", "meanp": "meanP stage 1"}


# ---------------------------------------------------------------------------------------------------- helpers
def format_value(value: Any, digits: int = 2) -> str:
    """A report cell's text for ``value``: ``-`` for None, yes/no for a bool, an int as is, a float with ``digits``
    decimals (scientific notation when it is non-zero and below ``10**-digits`` or at least 1e6), anything else as
    ``str``. Raises nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _ms(value: float | None) -> str:
    """Milliseconds with 3-4 significant digits."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _signed(value: float | int | None, digits: int = 2) -> str:
    """A delta with its sign; a count (the tied queries) as a whole number, not ``+2.00``."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return "0" if value == 0 else f"{value:+d}"
    return "0" if value == 0 else f"{value:+.{digits}f}"


def _md_cell(value: Any) -> str:
    """``value`` as one Markdown table cell: its ``|`` escaped and line breaks made spaces (captions are data)."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def _md_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _check_index(result: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Checks keyed by (mode, direction, metric)."""
    return {(c["mode"], c["direction"], c["metric"]): c for c in result.get("checks", [])}


DIRECTIONS = ("t2v", "v2t")


def verify_header(directions: tuple[str, ...] = DIRECTIONS) -> tuple[str, ...]:
    """The verify table's column names for ``directions``: mode, metric, then PyTorch / engine / Δ per direction,
    then limit and status."""
    per_direction = tuple(f"{d} {col}" for d in directions for col in ("PyTorch", "engine", "Δ"))
    return ("mode", "metric", *per_direction, "limit", "status")


VERIFY_HEADER = verify_header()


def _mode_section(result: dict[str, Any], mode: str) -> dict[str, Any] | None:
    if mode == "asa":
        return {k: result[k] for k in ("reference", "engine", "delta")}
    return result.get(mode)


def verify_rows(result: dict[str, Any], directions: tuple[str, ...] = DIRECTIONS) -> list[list[str]]:
    """Rows ``[mode, metric, t2v ref, t2v engine, t2v Δ, v2t ref, v2t engine, v2t Δ, limit, status]`` of the
    verify table (the ref / engine / Δ cells of ``directions`` only, and the status of their checks); a Δ that
    breaks its limit is marked with ``!``, one over its limit that flips of near-tied candidates explain
    (:func:`~rap_deploy.engines.verify_rules.within_flip_noise`) with its lost / gained counts."""
    checks = _check_index(result)
    rows = []
    for mode in ("asa", "two_stage", "meanp"):
        section = _mode_section(result, mode)
        if not section:
            continue
        changes = result.get("rank_changes_detail", {}).get(mode, {})
        for metric in (*METRIC_ROWS, "rank_changes"):
            cells: list[str] = []
            found = [checks.get((mode, d, metric)) for d in directions]
            for direction, check in zip(directions, found, strict=True):
                if metric == "rank_changes":
                    detail = changes.get(direction, {"beyond_ties": 0, "within_ties": 0})
                    delta = str(detail["beyond_ties"])
                    if detail["within_ties"]:
                        delta += f" (+{detail['within_ties']} tied)"
                    cells += ["", "", delta]
                else:
                    cells += [format_value(section["reference"][direction][metric]),
                              format_value(section["engine"][direction][metric]),
                              _signed(section["delta"][direction][metric])]
                if check is not None and not check["passed"]:
                    cells[-1] += " !"
                elif check is not None and _forgiven(check):
                    cells[-1] += f" ({check['lost']} lost / {check['gained']} gained)"
            present = [c for c in found if c is not None]
            limit = f"<= {format_value(present[0]['limit'])}" if present else ""
            status = ("ok" if all(c["passed"] for c in present) else "FAIL") if present else ""
            if status == "ok" and any(_forgiven(c) for c in present):
                status = "ok: flip noise"
            rows.append([MODE_TITLES[mode], metric.replace("_", " "), *cells, limit, status])
    return rows


def _forgiven(check: dict[str, Any]) -> bool:
    """A check whose Δ is over its limit but that passed as flips of near-tied candidates."""
    return bool(check.get("flip_noise")) and abs(float(check["value"])) > float(check["limit"]) + 1e-9


def _error_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, err in result.get("embedding_error", {}).items():
        if isinstance(err, dict) and "max_abs" in err:
            rows.append([name, format_value(err["max_abs"], 6), format_value(err.get("min_cosine"), 6)])
    for name, err in result.get("embedding_error", {}).get("first_batch_fp32", {}).items():
        rows.append([f"{name} (fp32, first batch)", format_value(err["max_abs"], 6),
                     format_value(err.get("min_cosine"), 6)])
    for name, err in result.get("similarity_error", {}).items():
        rows.append([f"similarity {MODE_TITLES.get(name, name)}", format_value(err["max_abs"], 6), "-"])
    for name, err in result.get("graph_error", {}).items():
        rows.append([f"graph {name} (identical inputs)", format_value(err["max_abs"], 6),
                     format_value(err.get("min_cosine"), 6)])
    return rows


def wide_console() -> Any:
    """A rich console on stdout, returned; 130 columns when stdout is not a terminal (logs, pipes) so tables are not
    wrapped."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=130)


# ---------------------------------------------------------------------------------------------------- verify
def verify_markdown(result: dict[str, Any]) -> str:
    """The ``verify.md`` summary: verdict, rule, metric table with deltas and limits, rank changes, numeric errors."""
    info = result.get("engine_info", {})
    verdict = "PASSED" if result["passed"] else "FAILED"
    lines = [
        f"# rapdeploy verify: {verdict}",
        "",
        f"- engine: `{result.get('engine_path')}` ({info.get('backend')}, {info.get('precision')}, "
        f"{info.get('device')})",
        f"- reference: PyTorch eager, checkpoint `{result.get('reference_info', {}).get('checkpoint')}`",
        f"- data: {result.get('dataset')} / {result.get('split')}: {result['counts']['videos']} videos, "
        f"{result['counts']['captions']} captions, {result['counts']['skipped']} skipped",
        f"- rule: {result.get('rule')}",
        f"- device: {describe_device(result.get('device', {}))}",
        "",
    ]
    if result.get("failures"):
        lines += ["## Failures", ""] + [f"- {f}" for f in result["failures"]] + [""]
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    lines += ["## Retrieval metrics (engine − reference)", "",
              _md_table(VERIFY_HEADER, verify_rows(result)),
              ""]
    examples = []
    for mode, per_dir in result.get("rank_changes_detail", {}).items():
        for direction, detail in per_dir.items():
            for ex in detail.get("examples", [])[:5]:
                examples.append([MODE_TITLES[mode], direction, ex["query"], ex.get("id", ""), ex["reference_rank"],
                                 ex["engine_rank"], "yes" if ex["within_ties"] else "no"])
    if examples:
        lines += ["## Queries whose rank changed (largest changes first)", "",
                  _md_table(("mode", "dir", "query", "id", "reference rank", "engine rank", "within ties"), examples),
                  ""]
    lines += ["## Numeric error (engine vs reference)", "",
              _md_table(("output", "max abs", "min cosine"), _error_rows(result)), ""]
    if result.get("skipped"):
        lines += ["## Skipped videos", ""] + [f"- {s['video_id']}: {s['reason']}" for s in result["skipped"]] + [""]
    lines += ["## Settings", "", "```", *(f"{k}: {v}" for k, v in result.get("settings", {}).items()), "```", ""]
    return "\n".join(lines)


def skipped_line(result: dict[str, Any], shown: int = 10) -> str | None:
    """One line naming the test videos verify left out (missing or undecodable, with the reason) and how many the
    figures are over; ``None`` when none was left out. verify.md lists them all; the terminal said only the count
    of the videos used."""
    skipped = result.get("skipped") or []
    if not skipped:
        return None
    named = "; ".join(f"{s.get('video_id')}: {s.get('reason')}" for s in skipped[:shown])
    more = f"; and {len(skipped) - shown} more (verify.md lists them)" if len(skipped) > shown else ""
    return (f"{len(skipped)} test video(s) missing or undecodable, left out of both sides (the figures are over "
            f"{result['counts']['videos']} videos): {named}{more}; `rapdeploy data-check` names every one")


def _verify_table(result: dict[str, Any], directions: tuple[str, ...]) -> Any:
    """The rich verify table of ``directions`` (both: one table; one: its own table, titled by it)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    info = result.get("engine_info", {})
    title = (f"verify {info.get('backend')} {info.get('precision')} vs PyTorch — {result.get('dataset')} "
             f"{result.get('split')} ({result['counts']['videos']} videos, {result['counts']['captions']} captions)")
    if directions != DIRECTIONS:
        title += f", {' and '.join(directions)}"
    table = Table(box=box.SIMPLE_HEAD, title=escape(title))
    for col in verify_header(directions):
        table.add_column(col, justify="left" if col in ("mode", "metric", "status") else "right")
    previous = None
    for row in verify_rows(result, directions):
        if previous is not None and row[0] != previous:
            table.add_section()
        mode, previous = ("" if row[0] == previous else row[0]), row[0]
        table.add_row(mode, *row[1:], style="bold red" if row[-1] == "FAIL" else None)
    return table


def natural_width(console: Any, table: Any) -> int:
    """The columns (an int) ``table`` takes on ``console`` when nothing in it is wrapped or cut."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def print_verify(result: dict[str, Any], console: Any = None) -> None:
    """Print the verify table and the verdict with rich; on a console too narrow for both directions side by side
    (an 80-column terminal), one table per direction, so no number is cut short."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    console = console or wide_console()
    table = _verify_table(result, DIRECTIONS)
    if natural_width(console, table) <= console.width:
        console.print(table)
    else:
        for direction in DIRECTIONS:
            console.print(_verify_table(result, (direction,)))
    errors = Table(box=box.SIMPLE_HEAD, title="numeric error (engine vs PyTorch)")
    for col in ("output", "max abs", "min cosine"):
        errors.add_column(col, justify="left" if col == "output" else "right")
    for row in _error_rows(result):
        errors.add_row(*row)
    console.print(errors)
    for failure in result.get("failures", []):
        console.print(f"[red]FAIL[/red] {escape(failure)}")
    for note in result.get("notes", []):
        console.print(f"note: {escape(note)}")
    skipped = skipped_line(result)
    if skipped:
        console.print(f"[yellow]{escape(skipped)}[/yellow]")
    verdict = "[green]PASSED[/green]" if result["passed"] else "[bold red]FAILED[/bold red]"
    console.print(f"verify {verdict} ({escape(verdict_reason(result))}); reports in {escape(str(result.get('out')))}")


def verdict_reason(result: dict[str, Any]) -> str:
    """What the verdict of ``result`` (verify.json) rests on: the parity rule, or, where parity held but verify
    failed (test videos left out without --allow-skipped), that parity held over the videos that decode only."""
    rule = str(result.get("rule"))
    if result["passed"] or not result.get("parity_passed"):
        return rule
    counts = result["counts"]
    return (f"parity held ({rule}) over the {counts['videos']} test videos that decode, but {counts['skipped']} "
            "asked for were missing or undecodable; --allow-skipped accepts that")


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (the reports are drawn without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(plt: Any, fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay ``fig`` out, write it to ``path`` as a 110-dpi PNG (atomically) and close it; returns the path."""
    try:
        fig.tight_layout()
        return save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def plot_verify(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``verify.png``: R@K curves of reference and engine (full ASA and two-stage) for t2v and v2t, and
    the ΔR@K per K underneath. Returns the path."""
    plt = _pyplot()
    curves = result["recall_curves"]
    ks = curves["ks"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    colours = {"asa": "tab:blue", "two_stage": "tab:orange", "meanp": "tab:green"}
    for col, direction in enumerate(("t2v", "v2t")):
        ax, dax = axes[0, col], axes[1, col]
        for mode in ("asa", "two_stage", "meanp"):
            if mode not in curves:
                continue
            ref = curves[mode]["reference"][direction]
            eng = curves[mode]["engine"][direction]
            # PyTorch as a wide translucent band, the engine as a thin line on top: parity = the line sits inside.
            ax.plot(ks, ref, "-", color=colours[mode], linewidth=5, alpha=0.3, label=f"PyTorch {MODE_TITLES[mode]}")
            ax.plot(ks, eng, "-", color=colours[mode], linewidth=1.2, marker="o", markersize=2.5,
                    label=f"engine {MODE_TITLES[mode]}")
            dax.plot(ks, [e - r for e, r in zip(eng, ref, strict=True)], "-", color=colours[mode], marker="o",
                     markersize=2.5, label=MODE_TITLES[mode])
        tol = result.get("tolerance")
        if tol is not None and any(c["metric"] != "rank_changes" for c in result.get("checks", [])):  # held to it
            for sign in (-1, 1):
                dax.axhline(sign * tol, color="red", linewidth=0.8, linestyle=":")
        dax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(f"{'text→video' if direction == 't2v' else 'video→text'} R@K")
        ax.set_ylabel("recall (%)")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        dax.set_xlabel("K")
        dax.set_ylabel("Δ engine − PyTorch")
        dax.grid(alpha=0.3)
        if col == 0:
            ax.legend(fontsize=7, loc="lower right")
            dax.legend(fontsize=7, loc="best")
    info = result.get("engine_info", {})
    fig.suptitle(f"recall parity: {info.get('backend')} {info.get('precision')} vs PyTorch — "
                 f"{result.get('dataset')} ({'PASSED' if result['passed'] else 'FAILED'})")
    return _save_png(plt, fig, path)


# ---------------------------------------------------------------------------------------------------- bench
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
                     format_value(r["throughput"], 2), r["unit"], _ms(r.get("min_ms")), _ms(r["p50_ms"]),
                     _ms(r["p90_ms"]), _ms(r["p99_ms"]), "-" if ratio is None else f"{ratio:.2f}x{mark}",
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
    lines += [_md_table(BENCH_HEADER, bench_rows(result)), ""]
    meanp = result.get("adapter_cost")
    if meanp:
        lines += [adapter_line(meanp), ""]
    lines += [f"{line}\n" for line in search_lines(result)]
    lines += [f"- note: {note}" for note in result.get("notes", [])]  # why rows are missing, as the table prints them
    return "\n".join(lines)


def plot_bench(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``bench.png``: throughput vs batch size per backend, one panel per graph (log-scaled batch axis)."""
    plt = _pyplot()
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
    return _save_png(plt, fig, path)

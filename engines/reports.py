"""``rapdeploy verify``'s reports: the rich tables, ``verify.md`` and ``verify.png`` (matplotlib Agg).

Everything here formats results that :mod:`rap_deploy.engines.verify` computed; bench's report text is
:mod:`rap_deploy.engines.bench_format`, the cell formats both use :mod:`rap_deploy.engines.report_format`, and the run
environment both record (machine, library versions) :mod:`rap_deploy.engines.report_env`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rap_deploy.engines.report_env import describe_device
from rap_deploy.engines.report_format import (
    format_value,
    md_table,
    natural_width,
    pyplot,
    save_png,
    signed_cell,
    wide_console,
)

METRIC_ROWS = ("R1", "R5", "R10", "MdR", "MnR", "RSum", "ties")
MODE_TITLES = {"asa": "full ASA", "two_stage": "two-stage", "meanp": "meanP stage 1"}


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
                              signed_cell(section["delta"][direction][metric])]
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
              md_table(VERIFY_HEADER, verify_rows(result)),
              ""]
    examples = []
    for mode, per_dir in result.get("rank_changes_detail", {}).items():
        for direction, detail in per_dir.items():
            for ex in detail.get("examples", [])[:5]:
                examples.append([MODE_TITLES[mode], direction, ex["query"], ex.get("id", ""), ex["reference_rank"],
                                 ex["engine_rank"], "yes" if ex["within_ties"] else "no"])
    if examples:
        lines += ["## Queries whose rank changed (largest changes first)", "",
                  md_table(("mode", "dir", "query", "id", "reference rank", "engine rank", "within ties"), examples),
                  ""]
    lines += ["## Numeric error (engine vs reference)", "",
              md_table(("output", "max abs", "min cosine"), _error_rows(result)), ""]
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


def plot_verify(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``verify.png``: R@K curves of reference and engine (full ASA and two-stage) for t2v and v2t, and
    the ΔR@K per K underneath. Returns the path."""
    plt = pyplot()
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
    return save_png(plt, fig, path)


# ---------------------------------------------------------------------------------------------------- bench

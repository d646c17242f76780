"""``rapdeploy bench``'s printed table: one table where it fits the console, else two (the rows' timings, then their
ratios to PyTorch eager), so no number is cut short or folded onto a second line."""

from __future__ import annotations

from typing import Any

from rap_deploy.engines.bench_format import UNQUIET_NOTE, adapter_line, bench_rows, load_line, search_lines
from rap_deploy.engines.report_env import describe_device
from rap_deploy.engines.report_format import format_value, natural_width, wide_console

#: The printed columns: backend and precision, throughput and unit merged to keep the table narrow.
BENCH_COLUMNS = ("backend", "graph", "batch", "throughput", "min ms", "p50 ms", "p90 ms", "p99 ms", "vs torch",
                 "(min)", "GFLOP/s")
#: Where all of them do not fit (an 80-column terminal): the same rows in two tables of these columns.
NARROW_TABLES = (("backend", "graph", "batch", "throughput", "p50 ms", "p90 ms", "p99 ms"),
                 ("backend", "graph", "batch", "min ms", "vs torch", "(min)", "GFLOP/s"))
UNRELIABLE_CAPTION = "* unreliable: the machine was not quiet"


def bench_cells(result: dict[str, Any]) -> list[dict[str, str]]:
    """Each row of :func:`~rap_deploy.engines.bench_format.bench_rows` as the printed cells, by column name; an
    unreliable ratio is marked ``*`` (explained under the table)."""
    cells = []
    for row in bench_rows(result):
        ratios = [cell.replace(" (unreliable)", "*") for cell in row[10:12]]
        values = (f"{row[0]} {row[1]}", row[2], row[3], f"{row[4]} {row[5]}", *row[6:10], *ratios, row[12])
        cells.append(dict(zip(BENCH_COLUMNS, values, strict=True)))
    return cells


def bench_table(result: dict[str, Any], columns: tuple[str, ...], caption: bool) -> Any:
    """The rich table of ``columns``; ``caption``: explain the ``*`` under it (when a ratio is marked)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = bench_cells(result)
    marked = caption and any("*" in row["vs torch"] + row["(min)"] for row in rows)
    table = Table(box=box.SIMPLE_HEAD, title=escape(f"bench — {describe_device(result['device'])}"),
                  caption=UNRELIABLE_CAPTION if marked else None)
    for col in columns:
        # Only the backend label wraps (at its spaces) to make room; fold, not cut: a cell that still does not fit (a
        # very narrow terminal) goes on over the next line instead of ending in …
        table.add_column(col, justify="left" if col in ("backend", "graph") else "right", overflow="fold",
                         no_wrap=col != "backend")
    for row in rows:
        table.add_row(*(escape(row[col]) for col in columns))  # escape: a label's [folder] is no markup tag
    return table


def print_bench(result: dict[str, Any], console: Any = None) -> None:
    """Print the bench table and its notes with rich: one table where every column fits the console (a log's 130
    columns), else the timings and the ratios as two tables of the same rows."""
    console = console or wide_console()
    table = bench_table(result, BENCH_COLUMNS, caption=True)
    if natural_width(console, table) <= console.width:
        console.print(table)
    else:
        console.print(bench_table(result, NARROW_TABLES[0], caption=False))
        console.print(bench_table(result, NARROW_TABLES[1], caption=True))
    flops = result.get("gflops", {})
    if flops:
        console.print("GFLOPs: " + ", ".join(f"{k} {format_value(v, 3)}" for k, v in flops.items()))
    meanp = result.get("adapter_cost")
    if meanp:
        console.print(adapter_line(meanp))
    for line in search_lines(result):
        console.print(line, markup=False)
    for note in result.get("notes", []):
        if not note.startswith(UNQUIET_NOTE):  # load_line, next, gives the same reasons
            console.print(f"note: {note}", markup=False)
    console.print(load_line(result), style=None if result.get("clean", True) else "bold red", markup=False)
    console.print(f"reports in {result.get('out')}", markup=False)

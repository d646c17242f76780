"""What the reports of ``verify`` and ``bench`` share: cell formats, Markdown tables, the rich console, PNG saving.

:mod:`rap_deploy.engines.reports` draws verify's reports and :mod:`rap_deploy.engines.bench_format` bench's, both
with these.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rap_deploy.atomic import save_with


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


def ms_cell(value: float | None) -> str:
    """Milliseconds with 3-4 significant digits."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def signed_cell(value: float | int | None, digits: int = 2) -> str:
    """A delta with its sign; a count (the tied queries) as a whole number, not ``+2.00``."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return "0" if value == 0 else f"{value:+d}"
    return "0" if value == 0 else f"{value:+.{digits}f}"


def md_cell(value: Any) -> str:
    """``value`` as one Markdown table cell: its ``|`` escaped and line breaks made spaces (captions are data)."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def md_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """A Markdown table (a str) with ``header`` and one line per row, each cell through :func:`md_cell`."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def wide_console() -> Any:
    """A rich console on stdout, returned; 130 columns when stdout is not a terminal (logs, pipes) so tables are not
    wrapped."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=130)


def natural_width(console: Any, table: Any) -> int:
    """The columns (an int) ``table`` takes on ``console`` when nothing in it is wrapped or cut."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (the reports are drawn without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(plt: Any, fig: Any, path: str | os.PathLike[str]) -> Path:
    """Lay ``fig`` out, write it to ``path`` as a 110-dpi PNG (atomically) and close it; returns the path."""
    try:
        fig.tight_layout()
        return save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)

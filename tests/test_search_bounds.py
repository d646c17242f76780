"""``rapdeploy search --top`` and ``--top-m`` have the bounds of serve's ``/search`` ``top_k`` and ``top_m`` (one
constant each, bounds.MAX_TOP_K and bounds.MAX_TOP_M): a larger value is a one-line usage error (exit 2) naming the
option, the value and the limit, before any library is opened, and ``--help`` says the bound."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rap_deploy.bounds import MAX_TOP_K, MAX_TOP_M
from rap_deploy.cli import app

runner = CliRunner()
# (option, its bound, the ServeOptions field with serve's bound, the lowest value search's --help gives)
BOUNDS = [("--top", MAX_TOP_K, "max_top_k", 1), ("--top-m", MAX_TOP_M, "max_top_m", 0)]


@pytest.mark.parametrize(("option", "bound", "field", "low"), BOUNDS)
def test_search_past_the_bound_is_a_usage_error_naming_it(tmp_path, option, bound, field, low):
    res = runner.invoke(app, ["search", "a red circle", option, "100000", "--workspace", str(tmp_path)])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert line.startswith(f"error: {option} ") and "100,000" in line and f"{bound:,}" in line, line
    assert len(line.splitlines()) == 1


@pytest.mark.parametrize(("option", "bound", "field", "low"), BOUNDS)
def test_search_at_the_bound_passes_the_check(tmp_path, option, bound, field, low):
    res = runner.invoke(app, ["search", "a red circle", option, str(bound), "--workspace", str(tmp_path)])
    assert f"{option} " not in res.stderr, res.stderr  # refused later, for the empty workspace's missing library


@pytest.mark.parametrize(("option", "bound", "field", "low"), BOUNDS)
def test_serve_and_search_share_the_bound_and_help_says_it(option, bound, field, low):
    from rap_deploy.engines.serving.service import ServeOptions

    assert getattr(ServeOptions(), field) == bound
    res = runner.invoke(app, ["search", "--help"])
    assert f"{low} to {bound}" in " ".join(res.output.replace("│", " ").split()), res.output  # Rich's box rules

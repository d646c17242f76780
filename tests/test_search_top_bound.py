"""``rapdeploy search --top`` has the bound of serve's ``/search`` ``top_k`` (one constant, bounds.MAX_TOP_K): a
larger value is a one-line usage error (exit 2) naming the option, the value and the limit, before any library is
opened, and ``--help`` says the bound."""

from __future__ import annotations

from typer.testing import CliRunner

from rap_deploy.bounds import MAX_TOP_K
from rap_deploy.cli import app

runner = CliRunner()


def test_search_top_past_the_bound_is_a_usage_error_naming_it(tmp_path):
    res = runner.invoke(app, ["search", "a red circle", "--top", "100000", "--workspace", str(tmp_path)])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert line.startswith("error: --top ") and "100,000" in line and f"{MAX_TOP_K:,}" in line, line
    assert len(line.splitlines()) == 1


def test_search_top_at_the_bound_passes_the_check(tmp_path):
    res = runner.invoke(app, ["search", "a red circle", "--top", str(MAX_TOP_K), "--workspace", str(tmp_path)])
    assert "--top " not in res.stderr, res.stderr  # refused later, for the empty workspace's missing library


def test_serve_and_search_share_the_bound_and_help_says_it():
    from rap_deploy.engines.serving.service import ServeOptions

    assert ServeOptions().max_top_k == MAX_TOP_K
    res = runner.invoke(app, ["search", "--help"])
    assert f"1 to {MAX_TOP_K}" in " ".join(res.output.replace("│", " ").split()), res.output  # Rich's box rules

"""A command declares where it is registered (``cli.app.command(..., own_url_refusals=...)``) which URLs typed as a
Path option it refuses in its own words; the general refusal leaves those to it. A declaration on an option the
command does not have (one renamed since) is refused when the command is registered, not left to drift."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rap_deploy.errors import UsageError
from rap_deploy.library.typed_urls import SERVER_SCHEMES, URL_SCHEMES

cli_app = importlib.import_module("rap_deploy.cli.app")  # the module: rap_deploy.cli.app is the Typer app itself

OWN_WORDS = "probe writes into a folder; it uploads nothing"


def probe(out: Path = typer.Option(..., "--out"), name: str = typer.Option("x", "--name")) -> None:
    """A command with one Path option that refuses a server's URL there itself."""
    if str(out).startswith("http"):
        raise UsageError(f"--out {out}: {OWN_WORDS}")


@pytest.fixture
def fresh_app(monkeypatch) -> typer.Typer:
    """A Typer app of its own for :func:`command` to register on, so the probe never joins rapdeploy's."""
    own = typer.Typer()
    monkeypatch.setattr(cli_app, "app", own)
    return own


@pytest.mark.parametrize("key", ["--output", "--name", "NAME"])
def test_a_refusal_declared_on_an_option_the_command_has_no_path_for_is_refused_at_registration(fresh_app, key):
    """--output: a renamed option; --name: a str option (never a Path, so never checked); NAME: no such argument."""
    with pytest.raises(ValueError, match=f"command 'probe' .*own_url_refusals names {key}, which is not one of its "
                                         r"Path options \(--out\)"):
        cli_app.command("probe", own_url_refusals={key: URL_SCHEMES})(probe)
    assert not fresh_app.registered_commands


def test_a_declared_refusal_leaves_its_schemes_to_the_command_and_others_to_the_general_one(fresh_app):
    cli_app.command("probe", own_url_refusals={"--out": SERVER_SCHEMES})(probe)
    runner = CliRunner()
    own = runner.invoke(fresh_app, ["--out", "http://h:1/x"])
    general = runner.invoke(fresh_app, ["--out", "s3://bucket/x"])
    assert own.exit_code == 2 and OWN_WORDS in own.output and "takes a path" not in own.output, own.output
    assert general.exit_code == 2 and "--out s3://bucket/x is a URL, but --out takes a path" in general.output, \
        general.output

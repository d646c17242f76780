"""Every command's ``--help``: it runs, and its description reads as paragraphs, not as the docstring's source
lines (Typer keeps single line breaks, which showed as ragged lines at 80 columns)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app, reflowed_help

COMMANDS = sorted(c.name for c in app.registered_commands if c.name)


def test_reflowed_help_joins_paragraph_lines_and_keeps_lists():
    doc = """First line of the summary
    wrapped in the source.

    A paragraph that goes on
    and on.

    - a list item
    - another
    """
    assert reflowed_help(doc) == ("First line of the summary wrapped in the source.\n\nA paragraph that goes on and "
                                  "on.\n\n- a list item\n- another")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_is_reflowed(name):
    command = next(c for c in app.registered_commands if c.name == name)
    paragraphs = (command.help or "").split("\n\n")
    assert command.help and all("\n" not in p for p in paragraphs if not p.lstrip().startswith(("-", "|"))), name
    result = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Usage: rapdeploy" in result.output, result.output
    assert " ".join(paragraphs[0].split()) in " ".join(result.output.split())

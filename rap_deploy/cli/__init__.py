"""The ``rapdeploy`` command line: a thin layer that parses options and calls one function per command.

Each ``*_cmds`` module registers its commands on :data:`rap_deploy.cli.app.app`; importing them here builds the CLI.
"""

from __future__ import annotations

from rap_deploy.cli import model_cmds  # noqa: F401  (registers init, info)
from rap_deploy.cli.app import app


def main() -> None:
    """Entry point of the ``rapdeploy`` console script."""
    app()


__all__ = ["app", "main"]

"""The ``rapdeploy`` command line: a thin layer that parses options and calls one function per command.

Each ``*_cmds`` module registers its commands on :data:`rap_deploy.cli.app.app`; importing them here builds the CLI.
"""

from __future__ import annotations

from rap_deploy.cli import (
    data_cmds,  # noqa: F401  (registers synth, data-check)
    demo_cmds,  # noqa: F401  (registers demo)
    engine_cmds,  # noqa: F401  (registers build-engine)
    eval_cmds,  # noqa: F401  (registers verify, bench)
    export_cmds,  # noqa: F401  (registers export)
    library_cmds,  # noqa: F401  (registers index, search)
    model_cmds,  # noqa: F401  (registers init, info)
    train_cmds,  # noqa: F401  (registers train, pretrain-backbone)
)
from rap_deploy.cli.app import app


def main() -> None:
    """Entry point of the ``rapdeploy`` console script."""
    app()


__all__ = ["app", "main"]

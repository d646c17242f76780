"""The ``rapdeploy`` command line: a thin layer that parses options and calls one function per command.

Each ``*_cmds`` module registers its commands on :data:`rap_deploy.cli.app.app`; importing them here builds the CLI.
"""

from __future__ import annotations

import importlib

from rap_deploy.cli import (
    data_cmds,  # noqa: F401  (registers synth, data-check)
    demo_cmds,  # noqa: F401  (registers demo)
    engine_cmds,  # noqa: F401  (registers build-engine)
    eval_cmds,  # noqa: F401  (registers verify, bench)
    export_cmds,  # noqa: F401  (registers export)
    library_cmds,  # noqa: F401  (registers index, search)
    model_cmds,  # noqa: F401  (registers init, info)
    serve_cmds,  # noqa: F401  (registers serve, triton-repo)
    train_cmds,  # noqa: F401  (registers train)
)
from rap_deploy.cli.app import app

# registered after train, as `rapdeploy --help` has listed them: pretrain-backbone, then ablate last
importlib.import_module("rap_deploy.cli.backbone_cmds")
importlib.import_module("rap_deploy.cli.ablate_cmds")


def main() -> None:
    """Entry point of the ``rapdeploy`` console script.

    Option-parsing errors (a value that is not an integer, an unknown option) are printed as one ``error:`` line, like
    every other failure, with exit code 2; help output is unchanged. PyTorch's CPU tensors use huge pages unless
    ``THP_MEM_ALLOC_ENABLE`` says otherwise, and freed memory is kept for reuse unless ``RAPDEPLOY_KEEP_FREED_MEMORY=0``
    or glibc's own malloc variables are set (:mod:`rap_deploy.cpu_memory`).
    """
    import sys

    import typer

    from rap_deploy.cpu_memory import prefer_huge_pages, reuse_freed_memory

    prefer_huge_pages()
    reuse_freed_memory()
    stdout_was_pipe = _stdout_is_pipe()
    try:
        code = app(standalone_mode=False)
    except SystemExit as exc:
        if exc.code == 1 and _output_pipe_closed(stdout_was_pipe):
            sys.exit(141)  # as a command's own output does (app._os_error_exit), not 1: a failed check
        raise
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as exc:  # typer's (vendored) click exceptions: usage and parameter errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help(), file=sys.stderr)
        else:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            hint = ""
            if hasattr(exc, "ctx"):  # a usage error (a FileError has none)
                command = ctx.command_path if ctx is not None else _named_command(sys.argv[1:])
                hint = f" (see `{command} --help`)"
            print(f"error: {' '.join(message.split())}{hint}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


def _stdout_is_pipe() -> bool:
    """Whether standard output (file descriptor 1) is a pipe (``rapdeploy ... | head``)."""
    import os
    import stat

    try:
        return stat.S_ISFIFO(os.fstat(1).st_mode)
    except OSError:
        return False


def _output_pipe_closed(stdout_was_pipe: bool) -> bool:
    """Whether the run was ended (exit 1) because standard output's reader went away (``rapdeploy verify --help |
    head``): help is printed by rich, which then points stdout at /dev/null and exits 1 (so stdout, a pipe at the
    start, is none now), or by click, which wraps stdout in its flush-pacifying wrapper and exits 1. The exit codes
    reserve 1 for a failed check."""
    import sys

    return (stdout_was_pipe and not _stdout_is_pipe()) or "PacifyFlushWrapper" in type(sys.stdout).__name__


def _named_command(args: list[str]) -> str:
    """``rapdeploy <command>`` for the command ``args`` name, or ``rapdeploy`` when they name none: for the parser's
    usage errors that carry no context (an option missing its value, a flag given one), whose hint would else be
    missing."""
    import typer.main

    group = typer.main.get_command(app)
    commands = getattr(group, "commands", {})
    name = next((a for a in args if not a.startswith("-")), None)
    return f"rapdeploy {name}" if name in commands else "rapdeploy"


__all__ = ["app", "main"]

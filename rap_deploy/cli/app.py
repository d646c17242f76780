"""The Typer application and the error contract shared by every command.

Commands register with :func:`command`, which turns a :class:`RapDeployError` into one line on stderr and the
exit code of DESIGN.md §11 (1 a check failed, 2 bad usage or unavailable backend), with no traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from rap_deploy.errors import RapDeployError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="rapdeploy",
    help="RAP text-video retrieval: train on frozen CLIP, export ONNX, build TensorRT / ONNX Runtime engines, "
    "verify recall parity and benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str, code: int) -> typer.Exit:
    """Print ``error: message`` on stderr and return the ``typer.Exit`` to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Register a command on :data:`app`, with the exit-code contract applied."""

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return func(*a, **kw)
            except RapDeployError as exc:
                raise fail(str(exc), exc.exit_code) from None
            except FileNotFoundError as exc:
                raise fail(f"{exc.strerror or 'not found'}: {exc.filename or exc}", 2) from None
            except KeyboardInterrupt:
                raise fail("interrupted", 130) from None

        app.command(*args, **kwargs)(wrapper)
        return func

    return decorator

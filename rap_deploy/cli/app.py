"""The Typer application and the error contract shared by every command.

Commands register with :func:`command`, which turns a :class:`RapDeployError` (and operating-system errors, Ctrl-C
and SIGTERM) into one line on stderr and the exit code of DESIGN.md §11 (1 a check failed or an artifact is damaged,
2 bad usage or unavailable backend), with no traceback.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import typer

from rap_deploy.errors import RapDeployError, resume_note
from rap_deploy.library.typed_urls import url_typed_as_path

F = TypeVar("F", bound=Callable[..., Any])
# Where every command's --workspace defaults to (workspace.workspace_root), for its help
WORKSPACE_DEFAULT = "default: $RAPDEPLOY_HOME, else ./rapdeploy-out"
# What a --threads left out means for an engine (engines/loader.py reads the threads its manifest records)
ENGINE_THREADS_DEFAULT = "an ONNX Runtime engine built with `build-engine --threads N` runs with N"

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


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so ``finally`` blocks (temporary files, locks, staging folders) run."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_unwinds():
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only; restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: what failed on which path."""
    where = exc.filename or ""
    if exc.filename2:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"{reason}: {where}"
    if not where:
        return f"{reason}; check the paths and their permissions"
    return f"cannot access {where}: {reason}; check the path and its permissions (or pass another --out or --workspace)"


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (``rapdeploy search ... | head -1``)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is no file (a test runner)
        return False


def _os_error_exit(exc: OSError) -> typer.Exit:
    """The exit for an operating-system error: one ``error:`` line and exit 2, except a write to a standard output
    whose reader went away (``| head``), which ends quietly with 141 (128 + SIGPIPE), as shell tools do."""
    if not (isinstance(exc, BrokenPipeError) and _stdout_reader_gone()):
        return fail(_os_error_message(exc), 2)
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)  # so the interpreter's last flush of stdout does not fail again
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return typer.Exit(141)


def command(*args: Any, resume: str | None = None,
            own_url_refusals: Mapping[str, tuple[str, ...]] | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register a command on :data:`app`, with the exit-code contract applied.

    Every path a command is given typed starting with ``~`` has it expanded first (:func:`_with_home_expanded`;
    ``./~/x`` stays the folder named ``~``, :func:`_paths_read_as_typed`), and one typed as a URL is refused
    (:func:`_refuse_urls_typed_as_paths`), except the URLs ``own_url_refusals`` leaves to the command: it maps a Path
    option of the command, as typed (``--out``), to the URL schemes the command refuses there itself, with a fix of
    its own. Errors become one line on stderr: :class:`RapDeployError` with its exit code,
    operating-system errors (permissions, a file where a folder is expected, a full disk) with exit 2, Ctrl-C with 130
    and SIGTERM with 143 (after unwinding, so no temporary file is left behind; ``resume``, when given, says how to
    carry on and ends their line, else the step that was stopped may say it: :func:`~rap_deploy.errors.resume_note`);
    a closed output pipe (``| head``) ends quietly with 141.

    Raises :class:`ValueError` when the command is registered if an ``own_url_refusals`` key is not a Path option or
    argument of the command: a renamed option would otherwise leave its entry behind without a word.
    """

    def decorator(func: F) -> F:
        labels = _path_labels(func)
        own_refusals = _checked_own_url_refusals(func, args[0] if args else func.__name__, labels,
                                                 own_url_refusals or {})

        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                with sigterm_unwinds():
                    _refuse_urls_typed_as_paths(kw, labels, own_refusals)
                    return func(*a, **_with_home_expanded(kw, labels))
            except RapDeployError as exc:
                raise fail(str(exc), exc.exit_code) from None
            except OSError as exc:
                raise _os_error_exit(exc) from None
            except KeyboardInterrupt as exc:
                raise fail(_stopped_message("interrupted (Ctrl-C)", resume or resume_note(exc)), 130) from None
            except Terminated as exc:
                raise fail(_stopped_message("terminated (SIGTERM)", resume or resume_note(exc)), 143) from None

        if "help" not in kwargs and func.__doc__:
            kwargs["help"] = reflowed_help(func.__doc__)
        kwargs.setdefault("cls", _paths_read_as_typed(labels))
        app.command(*args, **kwargs)(wrapper)
        return func

    return decorator


def _checked_own_url_refusals(func: Callable[..., Any], name: str, labels: dict[str, str],
                              own_refusals: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """``own_refusals`` (:func:`command`'s ``own_url_refusals``) as a dict, once each key is shown to be a Path
    option (or argument) of the command ``func``, registered as ``name``, as ``labels`` (:func:`_path_labels`) types
    it.

    Raises :class:`ValueError` naming the command, the keys that are not and the command's Path options.
    """
    if not own_refusals:
        return {}
    import typing

    hints = typing.get_type_hints(func)
    path_options = [label for param, label in labels.items() if _takes_paths(hints.get(param))]
    unknown = [key for key in own_refusals if key not in path_options]
    if unknown:
        raise ValueError(f"command {name!r} ({func.__module__}.{func.__qualname__}): own_url_refusals names "
                         f"{', '.join(unknown)}, which is not one of its Path options ({', '.join(path_options)}); "
                         "key each entry by the option as the command declares it, or drop the entry")
    return dict(own_refusals)


def _takes_paths(hint: Any) -> bool:
    """Whether the type hint ``hint`` is :class:`~pathlib.Path` or holds it (``Path | None``, ``list[Path]``)."""
    import typing
    from pathlib import Path

    return hint is Path or any(_takes_paths(arg) for arg in typing.get_args(hint))


def _path_labels(func: Callable[..., Any]) -> dict[str, str]:
    """Each parameter of the command ``func`` named as the user types it: an option by its long name (``--out``), an
    argument by its metavar or upper-case name (``CHECKPOINT``)."""
    import inspect

    from typer.models import ArgumentInfo, OptionInfo

    labels = {}
    for name, param in inspect.signature(func).parameters.items():
        info = param.default
        if isinstance(info, OptionInfo):
            long = [d for d in info.param_decls or () if d.startswith("--")]
            labels[name] = long[0].split("/")[0] if long else "--" + name.replace("_", "-")
        elif isinstance(info, ArgumentInfo):
            labels[name] = info.metavar or name.upper()
    return labels


def _refuse_urls_typed_as_paths(kw: dict[str, Any], labels: dict[str, str],
                                own_refusals: dict[str, tuple[str, ...]]) -> None:
    """Raise :class:`UsageError` (exit 2) for a :class:`Path` value among ``kw`` (alone or in a list) that was typed
    as a URL (``--out http://h:1/x``), naming the option as ``labels`` has it, the URL and the fix; a URL of a scheme
    ``own_refusals`` gives for the option (:func:`command`'s ``own_url_refusals``) is left to the command, which
    words its own refusal.

    A Path folds ``http://h:1/x`` into the relative folders ``http:/h:1/x``, so such a value was read from, or written
    into, ``./http:/...`` without a word. Only Path parameters are checked: an option that takes a URL (``--engine
    http://HOST:PORT``) is a string.
    """
    from pathlib import Path

    from rap_deploy.errors import UsageError

    for name, label in labels.items():
        value = kw.get(name)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            url = url_typed_as_path(item) if isinstance(item, Path) else None
            if url is not None and url.split(":", 1)[0].lower() not in own_refusals.get(label, ()):
                raise UsageError(f"{label} {url} is a URL, but {label} takes a path on this machine (it would be "
                                 f"read as the folder ./{item}); pass a file or folder here: download what a URL "
                                 "serves first, or copy the output there afterwards")


_RAW_VALUES = "rapdeploy.raw_values"  # the Context.meta key of the strings a command line gave its parameters


def _paths_read_as_typed(labels: dict[str, str]) -> type:
    """A :class:`typer.core.TyperCommand` that reads each :class:`Path` parameter as the command line typed it, before
    the command runs: it refuses (exit 2) one given as an empty string (:func:`_refuse_empty_paths`) and keeps
    ``./~/x`` the folder named ``~`` (:func:`_folded_tilde_kept`), naming parameters by ``labels``
    (:func:`_path_labels`).

    By the time the command runs, a Path has folded what was typed (``""`` reads as ``.``, ``./~/x`` as ``~/x``), so
    the class keeps the strings the parser read in ``Context.meta``.
    """
    from typer.core import TyperCommand

    class PathsReadAsTyped(TyperCommand):
        def make_parser(self, ctx: Any) -> Any:
            parser = super().make_parser(ctx)
            parse = parser.parse_args

            def parse_and_keep(args: list[str]) -> Any:
                opts, rest, order = parse(args=args)
                ctx.meta[_RAW_VALUES] = dict(opts)
                return opts, rest, order

            parser.parse_args = parse_and_keep
            return parser

        def invoke(self, ctx: Any) -> Any:
            raw = ctx.meta.get(_RAW_VALUES, {})
            _refuse_empty_paths(ctx.params, raw, labels)
            ctx.params.update({name: _folded_tilde_kept(value, raw.get(name)) for name, value in ctx.params.items()})
            return super().invoke(ctx)

    return PathsReadAsTyped


def _refuse_empty_paths(params: dict[str, Any], raw: dict[str, Any], labels: dict[str, str]) -> None:
    """Raise ``typer.Exit`` (exit 2, one line) for a :class:`Path` parameter among ``params`` that the command line
    (``raw``, the strings it gave) gave as an empty string (``--library ""``, an unset shell variable), naming it by
    ``labels``.

    A Path reads ``""`` as ``.``, so the command ran on the current folder (``search --library ""`` then said to build
    a library with ``--out .``). No command takes an empty path on purpose.
    """
    from pathlib import Path

    for name, value in params.items():
        given = raw.get(name)
        typed = given if isinstance(given, (list, tuple)) else [given]
        paths = value if isinstance(value, (list, tuple)) else [value]
        if "" in typed and any(isinstance(p, Path) for p in paths):
            label = labels.get(name, name)
            current = f" (for the current folder, {label} . says so)" if label.startswith("--") else ""
            raise fail(f'{label} is empty (""), which a path would read as the current folder; pass the '
                       f"file or folder{current}", 2)


def _folded_tilde_kept(value: Any, typed: Any) -> Any:
    """``value`` (a parameter's) with each :class:`Path` the command line typed as ``./~...`` made absolute
    (``$PWD/~/x``); ``typed`` is the string, or strings of a repeated option, the command line gave (``None``: it gave
    none, as for a default, which is left as it is).

    ``./~/x`` names the folder ``~`` under the current one, where older versions wrote ``--out=~/x``, but a Path folds
    it to ``~/x``, which :func:`_with_home_expanded` and the functions a command calls (they expand a leading ``~``
    themselves) took for ``$HOME/x``. Only a value typed starting with ``~`` is the home folder.
    """
    from pathlib import Path

    from rap_deploy.workspace import tilde_folded

    def one(path: Path, given: Any) -> Path:
        return path.absolute() if isinstance(given, str) and tilde_folded(given, path) else path

    if isinstance(value, Path):
        return one(value, typed)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Path) for v in value):
        # the strings of a repeated option or an nargs argument, in order; any other shape: left as it is
        given = typed if isinstance(typed, (list, tuple)) and len(typed) == len(value) else [None] * len(value)
        return type(value)(one(v, g) for v, g in zip(value, given, strict=True))
    return value


def _with_home_expanded(kw: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """``kw`` with each :class:`Path` value (alone or in a list) ``~``-expanded by
    :func:`~rap_deploy.workspace.user_path`, named by ``labels`` (:func:`_path_labels`).

    The shell leaves ``--out=~/ckpt.pt`` (and a quoted ``~``) as it is, and a command that used the path as given
    wrote into a folder named ``~`` under the current one. A value typed ``./~/x`` (that folder, named on purpose) no
    longer starts with ``~`` here: :func:`_paths_read_as_typed` has made it absolute. Raises :class:`UsageError` for a
    ``~user`` of no user.
    """
    from pathlib import Path

    from rap_deploy.workspace import user_path

    def expanded(name: str, value: Any) -> Any:
        label = labels.get(name, name)
        if isinstance(value, Path):
            return user_path(value, label)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, Path) for v in value):
            return type(value)(user_path(v, label) for v in value)
        return value

    return {name: expanded(name, value) for name, value in kw.items()}


def _stopped_message(stopped: str, resume: str | None) -> str:
    """The line for a command stopped by a signal: how, that the unwinding kept finished files and removed
    half-written ones, and ``resume`` (how to carry on) when the command has one."""
    message = f"{stopped}; finished files are kept, nothing half-written is left"
    return f"{message}; {resume}" if resume else message


def reflowed_help(doc: str) -> str:
    """``doc`` with each paragraph's line breaks made spaces (lists and tables kept as written): Typer keeps a
    docstring's single line breaks, so source lines wrapped at 120 columns showed as ragged lines in ``--help``."""
    import inspect

    paragraphs = [p for p in inspect.cleandoc(doc).split("\n\n") if p.strip()]
    return "\n\n".join(p if any(line.lstrip()[:1] in ("-", "*", "|") or line.startswith(" ")
                                  for line in p.splitlines()) else " ".join(p.split())
                         for p in paragraphs)

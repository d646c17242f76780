"""Ablation runs in worker processes (``rapdeploy ablate --jobs N``): one spawned process per run, N at a time.

Each worker sends back its run's record or its error through a pipe; a worker that dies without one (killed, out of
memory) is an error naming its run, not a wait without end. Workers ignore SIGINT (Ctrl-C in a terminal reaches the
whole process group): the parent gets it and stops them, and every worker still running when the parent leaves,
for whatever reason, is terminated; on Linux a worker also stops when its parent dies without a word (SIGKILL).
A run stopped that way resumes from its ``last.pt`` on the next call.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from rap_deploy.errors import CheckFailedError

Work = Callable[..., dict[str, Any]]
_PR_SET_PDEATHSIG = 1  # prctl(2)
_EXIT_WAIT_S = 10.0  # how long a worker that sent its error gets to exit before it is terminated


def run_in_processes(work: Work, tasks: dict[str, tuple[Any, ...]], jobs: int,
                     on_done: Callable[[str, dict[str, Any]], None] = lambda key, record: None
                     ) -> dict[str, dict[str, Any]]:
    """``work(*tasks[key])`` for every key, ``jobs`` at a time, each in a spawned process; returns the records by
    key. ``work`` must be a module-level function (spawn pickles it by name); ``on_done`` sees each record as it
    arrives. The first error a worker raises is raised here (its class kept when it pickles, with notes naming its key
    and holding the worker's traceback, which a traceback printed here would otherwise lack); a worker that exits
    without a result raises :class:`CheckFailedError` naming its key and exit code."""
    ctx = multiprocessing.get_context("spawn")
    pending = list(tasks)
    running: dict[str, tuple[Any, Connection]] = {}
    records: dict[str, dict[str, Any]] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                key = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(work, tasks[key], send), daemon=True)
                proc.start()
                send.close()  # the parent keeps only the reading end: EOF when the worker is gone
                running[key] = (proc, receive)
            wait([r for _, r in running.values()] + [p.sentinel for p, _ in running.values()], timeout=5.0)
            for key, (proc, receive) in list(running.items()):
                try:
                    result = _result(key, proc, receive)
                except BaseException:
                    _forget_ended(running, key)  # not terminated on the way out: it sent its error and exited
                    raise
                if result is not None:
                    del running[key]
                    receive.close()
                    proc.join()
                    records[key] = result
                    on_done(key, result)
    finally:
        _stop(running)
    return records


def _result(key: str, proc: Any, receive: Connection) -> dict[str, Any] | None:
    """The worker's record once it sent one, ``None`` while it runs; raises its error, or for a worker gone
    without a word."""
    if receive.poll():
        try:
            ok, payload = receive.recv()
        except (EOFError, OSError):
            ok, payload = False, None
        except Exception as exc:  # noqa: BLE001 - an error that pickled but does not unpickle
            ok, payload = False, f"its error could not be read back ({type(exc).__name__}: {exc})"
        if ok:
            return payload
        proc.join(_EXIT_WAIT_S)  # it exits once its error is sent: joined, never sent SIGTERM while it exits
        if isinstance(payload, BaseException):
            payload.add_note(f"raised in the worker process of the run {key}")  # shown with a traceback
            raise payload
        if payload is not None:
            raise CheckFailedError(f"the run {key} failed: {payload}")
    elif proc.is_alive():
        return None
    proc.join()
    raise CheckFailedError(f"the run {key} stopped without a result: its worker process exited with code "
                           f"{proc.exitcode} (killed, or out of memory?); run the command again to resume it, with "
                           "fewer --jobs if memory is short")


def _forget_ended(running: dict[str, tuple[Any, Connection]], key: str) -> None:
    """Drop the worker of ``key`` from ``running`` (its pipe closed) once it has exited; one still alive stays, for
    :func:`_stop` to terminate."""
    proc, receive = running[key]
    if not proc.is_alive():
        del running[key]
        receive.close()


def _worker(work: Work, args: tuple[Any, ...], send: Connection) -> None:
    from rap_deploy.cpu_memory import reuse_freed_memory

    reuse_freed_memory()  # a spawned interpreter: the parent's malloc settings did not come with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)  # the parent stops it: cleanup (temporary files) still runs
    _stop_with_parent()
    try:
        message: tuple[bool, Any] = (True, work(*args))
    except Exception as exc:  # noqa: BLE001 - the parent raises it
        exc.add_note(f"in the worker process: {traceback.format_exc().rstrip()}")  # the parent's has none of it
        message = (False, exc if _round_trips(exc) else f"{type(exc).__name__}: {exc}")
    finally:
        # Its work is over: nothing left to clean up, and a SIGTERM from here on (the parent leaving, or dying)
        # ends it quietly. _exit_on_term's SystemExit raised inside the interpreter's exit (an atexit callback)
        # printed "Exception ignored in atexit callback" with a traceback.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        send.send(message)
    except Exception as exc:  # noqa: BLE001 - what does not pickle goes back as text
        what = f"its record could not be sent ({exc})" if message[0] else \
            f"{type(message[1]).__name__}: {message[1]}"
        send.send((False, what))
    finally:
        send.close()


def _stop_with_parent() -> None:
    """Have the kernel send this worker SIGTERM when its parent dies (Linux): a parent killed with SIGKILL stops
    nothing itself, and its workers would go on training, holding their run folders' locks, so the next call found
    those runs busy. Exits at once when the parent is already gone."""
    import ctypes
    import os

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl here (not Linux): the parent's own stop is all there is
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        raise SystemExit(128 + signal.SIGTERM)


def _exit_on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _round_trips(exc: BaseException) -> bool:
    """Whether ``exc`` survives pickling both ways (an exception whose ``__init__`` takes other arguments than its
    ``args`` pickles but does not unpickle)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure: send its text instead
        return False
    return True


def _stop(running: dict[str, tuple[Any, Connection]]) -> None:
    """Terminate every worker still running (SIGTERM, then SIGKILL after 10 s) and close its pipe."""
    for proc, _ in running.values():
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 10.0
    for proc, receive in running.values():
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
        receive.close()

"""`rapdeploy ablate --jobs N`: a worker whose run failed exits on its own, without a traceback on stderr."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import atexit, os, signal, sys
from rap_deploy.errors import UsageError
from rap_deploy.train.ablate_jobs import run_in_processes

def late_sigterm(fail):
    # A SIGTERM sent from here on is held until the interpreter's exit (an atexit callback), where it arrived
    # when the parent terminated a worker that was already exiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    atexit.register(signal.pthread_sigmask, signal.SIG_UNBLOCK, {signal.SIGTERM})
    if fail:
        raise UsageError("the run folder is being written by another process")
    os.kill(os.getpid(), signal.SIGTERM)  # the parent leaving (or dying) once this worker's work returned
    return {"done": True}

if __name__ == "__main__":
    fail = sys.argv[1] == "fail"
    try:
        print(run_in_processes(late_sigterm, {"rap/seed0": (fail,)}, 2))
    except UsageError as exc:
        print("error:", str(exc).splitlines()[0], file=sys.stderr)
        raise SystemExit(2)
"""


def _run(tmp_path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "jobs.py"
    script.write_text(_SCRIPT)
    return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120)


def test_a_failed_worker_is_joined_not_terminated_while_it_exits(tmp_path):
    """The parent raised a worker's error while the worker was still listed as running, then sent SIGTERM to a
    worker already exiting: its handler raised SystemExit inside an atexit callback, and 'Exception ignored in atexit
    callback ... SystemExit: 143' leaked to stderr (2 of 6 `ablate --jobs 2` calls on a busy run folder). The
    finished worker is joined and dropped first now, and a worker whose work returned takes SIGTERM quietly."""
    done = _run(tmp_path, "fail")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: the run folder is being written by another process", done.stderr


def test_a_worker_whose_work_returned_takes_sigterm_quietly(tmp_path):
    """SIGTERM reaching a worker after its work returned (its record sent) raised SystemExit in its exit, with the
    same traceback on stderr; the worker restores the default SIGTERM once its work is over."""
    done = _run(tmp_path, "ok")
    assert done.returncode == 0 and done.stdout.strip() == "{'rap/seed0': {'done': True}}", done.stdout + done.stderr
    assert done.stderr == "", done.stderr

"""Signals at the edges of ``rapdeploy serve`` and its load test (found by a reviewer's probes).

- ``python -m rap_deploy.engines.serving.loadtest --spawn``: SIGTERM killed the load test (-15) and left the
  ``rapdeploy serve`` it had spawned running, with its ``rapdeploy-loadtest-*`` folder; Ctrl-C printed a
  KeyboardInterrupt traceback. Either now stops the clients and the server, removes the folder and ends with one
  ``error:`` line, exit 143 / 130.
- A second Ctrl-C while serve waited for a stalled request (``--shutdown-timeout 30``) took uvicorn's force-exit
  path: a ``CancelledError`` traceback of the app's lifespan, and a log line saying the request ran past
  ``--shutdown-timeout`` a second after the stop began. It now ends at once: one line saying a Ctrl-C during the stop
  forced it, the client answered 503, "rapdeploy serve stopped", exit 130 (also after a SIGTERM began the stop).
- A SIGTERM or Ctrl-C while serve imported its modules or checked its options (before ``serve()``) ended as the other
  commands' ``error: terminated (SIGTERM); ...`` (exit 143) or ``error: interrupted ...``; it is now serve's stop
  whenever it comes: "rapdeploy serve stopped", exit 0 / 130.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

import psutil
import pytest
from test_serve_stop_answers_cancelled import read_answer, stall_a_request

from rap_deploy.engines.serving.loadtest import SpawnedServer

STOPPED = "rapdeploy serve stopped"
# Run a module with Python's own Ctrl-C handling: a shell running commands in the background (CI's `.ci/run` under
# nohup, `cmd &` in a script) starts them with SIGINT ignored, which Python then keeps, and a Ctrl-C test would see
# its signal ignored.
WITH_CTRL_C = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "runpy.run_module('{module}', run_name='__main__', alter_sys=True)")


def _wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll ``condition()`` until true; fail naming ``what`` after ``timeout`` s or when ``proc`` exited first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            pytest.fail(f"{what} (after {timeout:g} s; exit code {proc.poll() if proc else None})")
        time.sleep(0.05)


def _kill(*procs) -> None:
    """Kill what a failed test left running (by process object, never by name)."""
    for proc in procs:
        try:
            if proc is not None and proc.is_running():
                proc.kill()
        except psutil.NoSuchProcess:
            pass


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    """Every process ``proc`` started that still runs (before ``proc`` is killed, which would orphan them)."""
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _text_rows(url: str) -> int:
    """Texts the server's text encoder has encoded (``GET /stats``); 0 when it does not answer."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        conn.request("GET", "/stats")
        return int(json.loads(conn.getresponse().read())["text_batcher"]["rows"])
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


@pytest.mark.parametrize(("sig", "code", "how"), [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                 (signal.SIGINT, 130, "interrupted (Ctrl-C)")],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_load_test_and_the_server_it_spawned(micro_ort_engines, tmp_path, sig, code, how):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cmd = [sys.executable, "-c", WITH_CTRL_C.format(module="rap_deploy.engines.serving.loadtest"), "--spawn",
           "--engine", str(micro_ort_engines["fp32"]), "--threads", "1", "--clients", "2", "--seconds", "30",
           "--warmup-seconds", "0", "--target", "text"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "TMPDIR": str(tmp)})
    loadtest, child = psutil.Process(proc.pid), None
    try:
        _wait_until(lambda: list(tmp.glob("rapdeploy-loadtest-*/url")), 60, "the spawned server wrote no URL", proc)
        (url_file,) = tmp.glob("rapdeploy-loadtest-*/url")
        (child,) = loadtest.children()
        # the clients are sending (where Ctrl-C printed a traceback from Thread.join)
        _wait_until(lambda: _text_rows(url_file.read_text().strip()) > 0, 30, "the load test sent nothing", proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:  # a failed run's servers too: the second one --spawn starts was left running when only the first was
        _kill(*_descendants(loadtest), loadtest, child)
    assert proc.returncode == code, (proc.returncode, err[-3000:])
    assert err.strip().splitlines() == [f"error: {how}; the load test stopped without a report and the servers it "
                                        "started are stopped"], err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    assert not child.is_running(), "the spawned rapdeploy serve outlived the load test"
    assert not list(tmp.glob("rapdeploy-loadtest-*")), "the spawned server's temporary folder was left behind"


def _refused(host: str, port: int) -> bool:
    """Whether ``host:port`` refuses a connection (the server stopped listening: its graceful stop began)."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["after-SIGINT", "after-SIGTERM"])
def test_a_second_ctrl_c_stops_serve_at_once_with_one_accurate_line(micro_ort_engines, first):
    s = SpawnedServer(["--engine", str(micro_ort_engines["fp32"]), "--threads", "1", "--no-library",
                       "--shutdown-timeout", "30"])
    u = urllib.parse.urlsplit(s.url)
    stalled = stall_a_request(s.url, 100, b'{"in')
    try:
        s.proc.send_signal(first)
        _wait_until(lambda: _refused(u.hostname, u.port), 10, f"serve kept listening after {first.name}", s.proc)
        second = time.monotonic()
        s.proc.send_signal(signal.SIGINT)
        try:
            code = s.proc.wait(20)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - second
        answer = read_answer(stalled)
    finally:
        stalled.close()
        s.stop()
    assert code == 130 and took < 10, (code, took, s.output[-3000:])
    assert "Traceback" not in s.output and "CancelledError" not in s.output, s.output[-3000:]
    assert "ran past --shutdown-timeout" not in s.output, s.output[-3000:]
    assert "POST /v2/models/text_encoder/infer cancelled: a Ctrl-C while the server stopped forced the stop before " \
           "--shutdown-timeout; answered 503" in s.output, s.output[-3000:]
    assert s.output.count(STOPPED) == 1, s.output[-3000:]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"connection: close" in head.lower(), answer[:500]
    assert b"x-content-type-options: nosniff" in head.lower(), head
    doc = json.loads(body)
    assert "Ctrl-C while it stopped" in doc["error"] and doc["field"] is None, doc


# Runs `rapdeploy serve ARGS...` in this process after arranging for it to send itself SIG at POINT: while it imports
# the serve module (the first import of rap_deploy.engines.serving.server), while it checks its options
# (bounds.check_threads), or inside serve() before any engine is loaded (check_library_choice).
_SIGNAL_AT = r"""
import importlib.abc, os, signal, sys

sig, point = getattr(signal, sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the test runs with SIGINT ignored


def fire(*args, **kwargs):
    os.kill(os.getpid(), sig)


class FireOnImport(importlib.abc.MetaPathFinder):
    fired = False

    def find_spec(self, name, path, target=None):
        if name == "rap_deploy.engines.serving.server" and not FireOnImport.fired:
            FireOnImport.fired = True
            fire()
        return None


if point == "import":
    assert "rap_deploy.engines.serving.server" not in sys.modules
    sys.meta_path.insert(0, FireOnImport())
elif point == "checks":
    import rap_deploy.bounds

    rap_deploy.bounds.check_threads = fire
else:
    import rap_deploy.engines.serving.server

    rap_deploy.engines.serving.server.check_library_choice = fire
sys.argv = ["rapdeploy", *sys.argv[3:]]
from rap_deploy.cli import main

main()
"""


@pytest.mark.parametrize("point", ["import", "checks", "serve"])
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_before_the_server_runs_is_serves_stop(tmp_path, point, sig, code):
    """Whenever the signal comes, the outcome is serve's stop; the engine named does not exist, so a signal that did
    not arrive would end in a usage error (exit 2) instead."""
    cmd = [sys.executable, "-c", _SIGNAL_AT, sig.name, point, "serve", "--no-library", "--port", "0",
           "--engine", str(tmp_path / "no-such-engine")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert res.stderr.strip() == STOPPED and not res.stdout.strip(), res.stderr[-3000:]
    assert not list(tmp_path.iterdir()), "serve left files behind"

"""``rapdeploy serve --url-file`` announces that the server accepts requests; the file outlived the server, so a
script that starts it again and waits for the file read the stopped server's URL at once. It is now removed when
the server stops (SIGTERM or Ctrl-C), unless it no longer holds this server's URL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest


def _serve(engine, url_file, *options, port=0, replacing=None):
    """``rapdeploy serve`` writing ``url_file``, once it has (a file other than ``replacing``, the identity of one
    that is there already)."""
    cmd = [sys.executable, "-m", "rap_deploy.cli", "serve", "--engine", str(engine), "--threads", "1", "--no-library",
           "--host", "127.0.0.1", "--port", str(port), "--url-file", str(url_file), *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not url_file.is_file() or (replacing is not None and _identity(url_file) == replacing):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"rapdeploy serve did not start: {proc.communicate()[0][-2000:]!r}")
        time.sleep(0.1)
    return proc


def _identity(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _stopped(*procs):
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_url_file_is_removed_when_the_server_stops(micro_ort_engines, tmp_path, stop):
    url_file = tmp_path / "url.txt"
    proc = _serve(micro_ort_engines["fp32"], url_file)
    try:
        url = url_file.read_text()
        assert url.startswith("http://127.0.0.1:") and url.endswith("\n"), url
        proc.send_signal(stop)
        out = proc.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        _stopped(proc)
    assert proc.returncode == (0 if stop == signal.SIGTERM else 130), out[-2000:]
    assert not url_file.exists(), out[-2000:]


def test_a_url_file_another_process_rewrote_is_kept(micro_ort_engines, tmp_path):
    url_file = tmp_path / "url.txt"
    proc = _serve(micro_ort_engines["fp32"], url_file)
    try:
        url_file.write_text("http://127.0.0.1:1\n")  # a newer server's, say
        proc.terminate()
        proc.communicate(timeout=120)
    finally:
        _stopped(proc)
    assert url_file.read_text() == "http://127.0.0.1:1\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _until_refused(port: int) -> None:
    """Wait until nothing listens on ``port`` (a stopping server closes its socket first), 60 s at most."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.1)
    pytest.fail(f"port {port} still listens 60 s after SIGTERM")


def test_a_server_started_again_on_the_same_port_keeps_its_url_file(micro_ort_engines, tmp_path):
    """A restart on a fixed --port: the stopping server closes its socket at once and finishes its requests for up
    to --shutdown-timeout; a server started meanwhile writes the same URL to the same file, and the stopping one,
    once finished, removed that file as its own while the new server ran."""
    engine, url_file, port = micro_ort_engines["fp32"], tmp_path / "url.txt", _free_port()
    old = _serve(engine, url_file, "--shutdown-timeout", "120", "--body-timeout", "120", "--idle-timeout", "120",
                 port=port)
    new = None
    stalled = socket.create_connection(("127.0.0.1", port))
    try:
        stalled.sendall(b"POST /v2/models/text_encoder/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")  # keeps it stopping
        probe = socket.create_connection(("127.0.0.1", port))  # once answered, the stalled request's head is read
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        probe.settimeout(60)
        assert probe.recv(100).startswith(b"HTTP/1.1 200")
        probe.close()
        first = _identity(url_file)
        old.terminate()
        _until_refused(port)
        new = _serve(engine, url_file, port=port, replacing=first)
        assert url_file.read_text() == f"http://127.0.0.1:{port}\n" and old.poll() is None
        stalled.close()  # the old server's last request ends: it stops
        out = old.communicate(timeout=120)[0].decode(errors="replace")
        assert old.returncode == 0 and "rapdeploy serve stopped" in out, out[-2000:]
        assert new.poll() is None and url_file.read_text() == f"http://127.0.0.1:{port}\n"  # the new one's, kept
        new.terminate()
        out = new.communicate(timeout=120)[0].decode(errors="replace")
        assert new.returncode == 0 and not url_file.exists(), out[-2000:]  # which it removes when it stops
    finally:
        stalled.close()
        _stopped(old, new)

"""``rapdeploy serve --url-file`` announces that the server accepts requests; the file outlived the server, so a
script that starts it again and waits for the file read the stopped server's URL at once. It is now removed when
the server stops (SIGTERM or Ctrl-C), unless it no longer holds this server's URL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest


def _serve(engine, url_file):
    cmd = [sys.executable, "-m", "rap_deploy.cli", "serve", "--engine", str(engine), "--threads", "1", "--no-library",
           "--host", "127.0.0.1", "--port", "0", "--url-file", str(url_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not url_file.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"rapdeploy serve did not start: {proc.communicate()[0][-2000:]!r}")
        time.sleep(0.1)
    return proc


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
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
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
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert url_file.read_text() == "http://127.0.0.1:1\n"

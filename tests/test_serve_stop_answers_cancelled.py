"""A request that a stopping ``rapdeploy serve`` cancels (it ran past ``--shutdown-timeout``) gets a 503 JSON answer,
and the server log holds no traceback: before, uvicorn logged "Exception in ASGI application" with a 60-line
traceback and sent the client a plain-text 500."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse

from rap_deploy.engines.serving.loadtest import SpawnedServer


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes the connection (30 s at most)."""
    sock.settimeout(30)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk


def test_a_request_cancelled_at_shutdown_gets_a_503_and_no_traceback(micro_ort_engines):
    s = SpawnedServer(["--engine", str(micro_ort_engines["fp32"]), "--threads", "1", "--no-library",
                       "--shutdown-timeout", "1"])
    u = urllib.parse.urlsplit(s.url)
    stalled = socket.create_connection((u.hostname, u.port))
    try:
        stalled.sendall(b"POST /v2/models/text_encoder/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        probe = socket.create_connection((u.hostname, u.port))  # the server has read the stalled request's head
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert _read_answer(probe).startswith(b"HTTP/1.1 200")
        probe.close()
        s.proc.terminate()
        answer = _read_answer(stalled)
        try:
            code = s.proc.wait(120)
        except subprocess.TimeoutExpired:
            code = None
        s.stop()
    finally:
        stalled.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer[:500]
    assert b"application/json" in head.lower() and b"connection: close" in head.lower(), head
    doc = json.loads(body)
    assert "--shutdown-timeout" in doc["error"] and doc["field"] is None, doc
    assert code == 0 and "rapdeploy serve stopped" in s.output, (code, s.output[-2000:])
    assert "Traceback" not in s.output and "Exception in ASGI application" not in s.output, s.output[-3000:]
    assert "POST /v2/models/text_encoder/infer cancelled" in s.output, s.output[-2000:]

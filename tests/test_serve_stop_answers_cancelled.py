"""A request that a stopping ``rapdeploy serve`` cancels (it ran past ``--shutdown-timeout``) gets a 503 JSON answer,
and the server log holds no traceback: before, uvicorn logged "Exception in ASGI application" with a 60-line
traceback and sent the client a plain-text 500."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import urllib.parse

import pytest

from rap_deploy.engines.serving.loadtest import SpawnedServer


def read_answer(sock: socket.socket) -> bytes:
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


def stall_a_request(url: str, content_length: int, body_start: bytes) -> socket.socket:
    """A connection to the server at ``url`` holding an infer request whose body stops after ``body_start`` (of
    ``content_length`` bytes announced), returned once the server has read its head: a /healthz probe sent after
    it has been answered 200."""
    u = urllib.parse.urlsplit(url)
    stalled = socket.create_connection((u.hostname, u.port))
    stalled.sendall(b"POST /v2/models/text_encoder/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (content_length, body_start))
    try:
        with socket.create_connection((u.hostname, u.port)) as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert read_answer(probe).startswith(b"HTTP/1.1 200")
    except BaseException:
        stalled.close()
        raise
    return stalled


def test_a_request_cancelled_at_shutdown_gets_a_503_and_no_traceback(micro_ort_engines):
    """A client that sent half a request body and went quiet must not keep a SIGTERM'd server alive: after the
    graceful-shutdown timeout the request is cancelled and answered 503, the service closed, and serve exits 0
    (this test took over test_serving_server's SIGTERM-while-a-client-stalls test, which checked the exit only)."""
    s = SpawnedServer(["--engine", str(micro_ort_engines["fp32"]), "--threads", "1", "--no-library",
                       "--shutdown-timeout", "1"])
    stalled = stall_a_request(s.url, 1000, b"{")
    try:
        s.proc.terminate()
        answer = read_answer(stalled)
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
    assert "POST /v2/models/text_encoder/infer cancelled: the server stopped and it ran past --shutdown-timeout; " \
           "answered 503" in s.output, s.output[-2000:]


def _run_middleware(stopping: bool, how: str) -> tuple[str, list[dict]]:
    """Run :class:`AnswerWhenStopped` (``stopping()`` answering ``stopping``) over an app that waits, then: ``task``:
    its task is cancelled (uvicorn's stop, or anyone's); ``started``: the same after the app began its answer;
    ``inner``: an inner future is cancelled while the task is not. Returns ``(returned | cancelled, messages sent)``."""
    from rap_deploy.engines.serving.middleware import AnswerWhenStopped

    sent: list[dict] = []

    async def app(scope, receive, send):
        if how == "started":
            await send({"type": "http.response.start", "status": 200, "headers": []})
        if how == "inner":
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        await asyncio.Event().wait()

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def main() -> str:
        scope = {"type": "http", "method": "POST", "path": "/v2/models/text_encoder/infer\nERROR: forged",
                 "headers": [], "query_string": b""}
        task = asyncio.ensure_future(AnswerWhenStopped(app, stopping=lambda: stopping)(scope, receive, send))
        for _ in range(3):
            await asyncio.sleep(0)
        if how != "inner":
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "returned"

    return asyncio.run(main()), sent


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() tells whose cancellation it is (3.11+)")
def test_only_a_stopping_servers_cancellation_of_the_request_is_answered(caplog):
    caplog.set_level(logging.WARNING, logger="rapdeploy.serve")
    # while the server runs, a cancelled request propagates: no 503, no "the server stopped" line
    assert _run_middleware(False, "task") == ("cancelled", [])
    assert _run_middleware(True, "inner") == ("cancelled", [])  # not the request's own: left alone while stopping
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    outcome, sent = _run_middleware(True, "task")
    assert outcome == "returned" and sent[0]["status"] == 503, sent
    assert (b"connection", b"close") in sent[0]["headers"] and json.loads(sent[1]["body"])["field"] is None, sent
    outcome, sent = _run_middleware(True, "started")
    assert outcome == "returned" and [m["type"] for m in sent] == ["http.response.start"], sent  # no second answer
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"POST /v2/models/text_encoder/infer\\nERROR: forged cancelled: the server stopped and it ran "
                     f"past --shutdown-timeout; {end}" for end in ("answered 503", "its answer had begun, so the "
                                                                   "connection is closed mid-answer")], lines

"""The remote engine (``load_engine("http://…")``, ``--engine http://…``) against servers that misbehave at the
transport level: every failure is one line and an exit code, never a traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.engines.loader import load_engine
from rap_deploy.errors import BackendUnavailableError

runner = CliRunner()


@contextmanager
def raw_server(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A TCP server on 127.0.0.1 (a free port) that reads each request's first bytes and calls ``answer`` with the
    connection, then closes it; yields its ``http://`` URL and stops when the block ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # accept() wakes up to see the stop event
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    conn.recv(65536)
                    answer(conn)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        listener.close()


ANSWERS = {"closes the connection": lambda conn: None,
           "answers something that is not HTTP": lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
           "closes inside its answer": lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")}


@pytest.mark.parametrize("behaviour", list(ANSWERS))
def test_a_server_that_gives_no_http_answer_is_one_line(behaviour):
    """A server that closed the connection without answering (Triton or serve crashing or killed mid-request) or
    answered something that is not HTTP made geventhttpclient raise http.client.HTTPException, which nothing
    caught: a traceback and exit 1 from verify / bench / search. It is now BackendUnavailableError (exit 2)."""
    with raw_server(ANSWERS[behaviour]) as url:
        with pytest.raises(BackendUnavailableError, match="no HTTP answer"):
            load_engine(url)
        res = runner.invoke(app, ["bench", "--engine", url])
    assert res.exit_code == 2 and not isinstance(res.exception, AssertionError), res.output
    assert "no HTTP answer" in res.output and "Traceback" not in res.output, res.output

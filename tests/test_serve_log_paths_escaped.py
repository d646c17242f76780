"""``rapdeploy serve`` logs a request's path escaped (the inside of its repr, as the stop's line does since a3d52b5):
a path whose percent-escapes decode to control characters (``%0A``, ``%1B``, ``%0B``, ``%C2%85``) wrote them raw
into the server log, where they start lines of their own or drive the terminal showing it (a forged line)."""

from __future__ import annotations

import asyncio
import logging

from test_serving_app import bare_service, request

from rap_deploy.engines.serving.app import create_app
from rap_deploy.engines.serving.bodies import PacedResponse
from rap_deploy.engines.serving.server import ServerThread
from rap_deploy.errors import RapDeployError

HOSTILE = "/v2/models/a%0AERROR:%20forged%1B[2K%0B%C2%85x"  # as sent
ESCAPED = "/v2/models/a\\nERROR: forged\\x1b[2K\\x0b\\x85x"  # as logged


def _messages(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records]
    assert all(line.isprintable() for line in lines), lines  # each one line, no control character
    return lines


def test_a_failing_requests_path_is_logged_escaped(caplog):
    """The 500 lines of app._add_error_handlers: a RapDeployError and an unexpected exception."""
    caplog.set_level(logging.WARNING, logger="rapdeploy.serve")
    service = bare_service()
    faults = iter([RapDeployError("engine gone"), RuntimeError("disk on fire")])

    def model(name: str) -> None:
        raise next(faults)

    service.model = model
    with ServerThread(create_app(service)) as server:
        assert request(server.url, "GET", HOSTILE)[0] == 500
        assert request(server.url, "GET", HOSTILE)[0] == 500
    assert _messages(caplog) == [f"RapDeployError on GET {ESCAPED}: engine gone",
                                 f"internal error on GET {ESCAPED}"]


def test_an_abandoned_answers_path_is_logged_escaped(caplog):
    """bodies.PacedResponse's line when its client reads nothing for the idle timeout."""
    caplog.set_level(logging.WARNING, logger="rapdeploy.serve")
    scope = {"type": "http", "method": "POST", "path": "/v2/models/a\nERROR: forged\x1b[2K\x0b\x85x",
             "headers": [], "query_string": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # a client that reads nothing: the piece never drains

    asyncio.run(PacedResponse(b"x" * 10, 0.05)(scope, receive, send))
    assert _messages(caplog) == [f"POST {ESCAPED}: the client read nothing of its response for 0.05 s "
                                 "(--idle-timeout) after 0 of 10 bytes; closing the connection"]

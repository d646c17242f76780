"""``rapdeploy serve`` answered a failing request with its exception's text whole (app._add_error_handlers: the
400 of a UsageError, the 503 of a LibraryChangedError, the 500 "server error: ..." of another RapDeployError, and
/readyz's ``library_changed``), while the log line beside it was bounded since b9f6c37 (middleware.log_text): an
exception whose message carries a megabyte value made a megabyte answer. A 404's or 405's path was echoed whole as
well (up to h11's 16 KiB request line). The answer now shows the text bounded as the log does
(middleware.answer_text), still naming the error; the JSON answer escapes control characters itself."""

from __future__ import annotations

import json

from test_serving_app import bare_service, request

from rap_deploy.engines.serving.app import create_app
from rap_deploy.engines.serving.middleware import LOG_TEXT_CHARS, answer_text
from rap_deploy.engines.serving.server import ServerThread
from rap_deploy.errors import LibraryChangedError, RapDeployError, UsageError

HOSTILE = "value 'a\nERROR: forged line\x1b[2K" + "x" * 1_000_000 + "'"
BOUND = LOG_TEXT_CHARS + 200  # the text, "... (N characters)", the JSON around it


def test_an_exceptions_text_is_answered_bounded():
    service = bare_service()
    faults = iter([UsageError(HOSTILE), RapDeployError(HOSTILE), LibraryChangedError(HOSTILE)])

    def model(name: str) -> None:
        raise next(faults)

    service.model = model
    with ServerThread(create_app(service)) as server:
        answers = [request(server.url, "GET", "/v2/models/a") for _ in range(3)]
        ready = request(server.url, "GET", "/readyz")
    assert [status for status, _, _ in answers] == [400, 500, 503]
    for _, _, body in answers:
        assert len(body) < BOUND, len(body)
        error = json.loads(body)["error"]
        assert "value 'a\nERROR: forged line\x1b[2K" in error  # still names the error (JSON escaped it)
        assert error.endswith(f"... ({len(HOSTILE)} characters)"), error[-60:]
    assert json.loads(answers[1][2])["error"].startswith("server error: value 'a\n")
    assert ready[0] == 503 and len(ready[2]) < BOUND, (ready[0], len(ready[2]))
    assert json.loads(ready[2])["library_changed"].startswith("value 'a\n")


def test_a_long_path_is_answered_bounded():
    path = "/" + "p" * 12_000
    with ServerThread(create_app(bare_service())) as server:
        missing = request(server.url, "GET", path)
        not_allowed = request(server.url, "DELETE", "/healthz" + path[1:])  # no such route either: 404
        wrong_method = request(server.url, "DELETE", "/healthz")
    for status, _, body in (missing, not_allowed):
        assert status == 404 and len(body) < BOUND, (status, len(body))
        assert json.loads(body)["error"].startswith("no route ")
    assert wrong_method[0] == 405 and "/healthz" in json.loads(wrong_method[2])["error"]


def test_answer_text():
    assert answer_text("plain words\n") == "plain words\n"  # not escaped: JSON does that
    long = answer_text("y" * (LOG_TEXT_CHARS + 5))
    assert long == "y" * LOG_TEXT_CHARS + f"... ({LOG_TEXT_CHARS + 5} characters)"
    assert answer_text(None) == "None"

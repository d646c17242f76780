"""``rapdeploy serve`` logged a failing request's exception text raw (app._add_error_handlers: the 500 line of a
RapDeployError, the library-changed line), while the path beside it was escaped (bodies.log_path). An exception's
message can carry what the client sent: a newline in it started a forged line of the server log, a control
character reached the terminal showing it, and a megabyte value became a megabyte log line. The text is now logged
as the inside of its repr, bounded (middleware.log_text)."""

from __future__ import annotations

import logging

from test_serving_app import bare_service, request

from rap_deploy.engines.serving.app import create_app
from rap_deploy.engines.serving.server import ServerThread
from rap_deploy.errors import LibraryChangedError, RapDeployError

HOSTILE = "value 'a\nERROR: forged line\x1b[2K" + "x" * 1_000_000 + "'"


def test_an_exceptions_text_is_logged_on_one_bounded_line(caplog):
    caplog.set_level(logging.WARNING, logger="rapdeploy.serve")
    service = bare_service()
    faults = iter([RapDeployError(HOSTILE), LibraryChangedError(HOSTILE)])

    def model(name: str) -> None:
        raise next(faults)

    service.model = model
    with ServerThread(create_app(service)) as server:
        assert request(server.url, "GET", "/v2/models/a")[0] == 500
        assert request(server.url, "GET", "/v2/models/a")[0] == 503
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, [line[:200] for line in lines]
    for line in lines:
        assert line.isprintable() and len(line) < 4000, (len(line), line[:300])
        assert "a\\nERROR: forged line\\x1b[2K" in line  # escaped, not dropped
    assert lines[0].startswith("RapDeployError on GET /v2/models/a: value 'a\\nERROR: forged line")
    assert lines[1].startswith("the library changed since it was opened: value 'a\\nERROR")


def test_log_text():
    from rap_deploy.engines.serving.middleware import LOG_TEXT_CHARS, log_text

    assert log_text("plain words") == "plain words"
    assert log_text("it's \"quoted\"\r\n\x00") == "it\\'s \"quoted\"\\r\\n\\x00"
    long = log_text("y" * (LOG_TEXT_CHARS + 5))
    assert long.startswith("y" * LOG_TEXT_CHARS) and long.endswith(f"({LOG_TEXT_CHARS + 5} characters)")
    assert log_text(None) == "None"

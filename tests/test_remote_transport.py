"""The remote engine's bounded answers against ``tritonclient`` clients of another shape (another version).

rapdeploy bounds the size of every answer by wrapping ``InferenceServerClient._client_stub``, a private attribute
(tritonclient 2.73.0 offers no public way). A client that keeps its connection elsewhere, in another shape, or
reads answers around it must be refused in one line (exit 2) naming the version found and the versions checked,
not fail with an AttributeError or read answers without a bound. The stand-in clients below send nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.engines.serving import remote_transport
from rap_deploy.engines.serving.remote import RemoteEngine
from rap_deploy.errors import BackendUnavailableError

URL = "http://127.0.0.1:9"  # never contacted: the stand-in clients send nothing
FOUND = "3.0.0"  # the version the stand-ins pretend to be


class Answer:
    """An HTTP answer of the shape geventhttpclient gives: 200, no headers, an empty body."""

    status_code = 200

    def get(self, name: str, default: Any = None) -> Any:
        return default

    def read(self, length: int = -1) -> bytes:
        return b""

    def release(self) -> None:
        pass


class Connection:
    """A connection of the checked shape (get, post, close); ``answer`` makes what it answers."""

    def __init__(self, answer: Any = Answer) -> None:
        self.answer = answer

    def get(self, request_uri: str, *args: Any, **kwargs: Any) -> Any:
        return self.answer()

    def post(self, request_uri: str, *args: Any, **kwargs: Any) -> Any:
        return self.answer()

    def close(self) -> None:
        pass


class StandIn:
    """What RemoteEngine uses of ``InferenceServerClient``: a readiness check through ``_client_stub``."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._client_stub: Any = Connection()

    def is_server_ready(self) -> bool:
        return self._client_stub.get("v2/health/ready").status_code == 200

    def close(self) -> None:
        pass


class ElsewhereClient(StandIn):
    """Keeps its connection under another name."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._transport = Connection()

    def is_server_ready(self) -> bool:
        return self._transport.get("v2/health/ready").status_code == 200


class OtherConnectionClient(StandIn):
    """Keeps in ``_client_stub`` a connection of another kind (``request(method, uri)``)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._client_stub = type("Pool", (), {"request": lambda self, method, uri: Answer()})()


class AroundClient(StandIn):
    """Keeps the checked connection but reads its answers through another one (unbounded)."""

    def is_server_ready(self) -> bool:
        return Connection().get("v2/health/ready").status_code == 200


class OtherAnswerClient(StandIn):
    """Whose connection answers with the body's bytes rather than an HTTP answer."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._client_stub = Connection(answer=lambda: b"{}")


CLIENTS = {
    "keeps its connection elsewhere": (ElsewhereClient, "keeps no HTTP connection with get, post and close in "
                                                        "InferenceServerClient._client_stub (found none)"),
    "keeps a connection of another kind": (OtherConnectionClient, "_client_stub (found Pool)"),
    "reads answers around it": (AroundClient, "answered a request without going through"),
    "answers with something else": (OtherAnswerClient, "answered with a bytes, not an HTTP answer"),
}


@pytest.mark.parametrize("case", list(CLIENTS))
def test_a_tritonclient_of_another_shape_is_refused_in_one_line_naming_the_versions(case, monkeypatch):
    """Before, a client without ``_client_stub`` failed with an AttributeError traceback (exit 1), and one that read
    its answers around it (or kept a connection of another kind until its first request) went on unbounded."""
    import tritonclient.http as httpclient

    client, how = CLIENTS[case]
    monkeypatch.setattr(httpclient, "InferenceServerClient", client)
    monkeypatch.setattr(remote_transport, "tritonclient_version", lambda: FOUND)
    with pytest.raises(BackendUnavailableError) as err:
        RemoteEngine(URL)
    message = str(err.value)
    assert "\n" not in message and message.startswith(URL) and f": tritonclient {FOUND} " in message, message
    assert how in message and "checked with tritonclient 2.73.0" in message, message
    res = CliRunner().invoke(app, ["bench", "--engine", URL])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and f"tritonclient {FOUND}" in res.output, res.output


def test_the_installed_tritonclient_is_a_checked_version_and_keeps_the_connection_rapdeploy_bounds():
    """The pin in pyproject.toml and CHECKED_TRITONCLIENT move together: a new version is added there only once its
    InferenceServerClient is checked to keep its connection in ``_client_stub`` (the remote tests then run it)."""
    import tritonclient.http as httpclient

    assert remote_transport.tritonclient_version() in remote_transport.CHECKED_TRITONCLIENT
    client = httpclient.InferenceServerClient("127.0.0.1:9")  # connects at its first request: none is sent
    try:
        transport = remote_transport.bound_answers(client, URL)
        assert remote_transport.bounded_transport(client, URL) is transport and transport.answers == 0
    finally:
        client.close()

"""Request bodies of ``rapdeploy serve`` arriving slowly: the whole-body pace (``--body-timeout``,
``--body-min-rate``) on every route that reads a body, through the real app and uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from test_serving_app import DIMS, bare_service

from rap_deploy.engines.serving.app import create_app
from rap_deploy.engines.serving.bodies import BodyPace
from rap_deploy.engines.serving.contract import BatchLimits, served_models
from rap_deploy.engines.serving.server import ServerThread
from rap_deploy.engines.serving.service import ServeOptions, ServingService
from rap_deploy.errors import UsageError
from rap_deploy.export.export_config import graph_specs

TRICKLE_GAP_S = 0.05  # far inside the idle timeout (30 s): only the body's pace can refuse the trickle
TRICKLE_BYTES = 400  # 20 s of trickling: without a pace, no answer ever comes


def _service(**options: float) -> ServingService:
    """A bare service (a library stand-in, the micro contract's models, 64 videos a call) with ``options``."""
    service = bare_service(library=object())
    service.options = ServeOptions(**options)
    service.models = served_models(graph_specs(DIMS, True), BatchLimits(64, 8, 8, 8))
    return service


def _served(service: ServingService) -> ServerThread:
    """The app of ``service`` in a server thread; a refused body's rest is discarded for at most 0.5 s
    (``header_timeout``) before its connection is closed."""
    return ServerThread(create_app(service), header_timeout=0.5)


def _trickle(sock: socket.socket, piece: bytes) -> tuple[bytes, bool]:
    """Send ``piece`` every :data:`TRICKLE_GAP_S` seconds, on after an answer, until the server closes ``sock`` or
    :data:`TRICKLE_BYTES` pieces went out: ``(what the server sent, whether it closed the connection)``."""
    sock.settimeout(TRICKLE_GAP_S)
    received = b""
    for _ in range(TRICKLE_BYTES):
        try:
            sock.sendall(piece)
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


@pytest.mark.parametrize("path, head, piece", [
    ("/search", b"Content-Type: application/json\r\nContent-Length: 10000", b" "),
    ("/v2/models/text_encoder/infer", b"Content-Length: 10000", b" "),
    ("/v2/models/video_encoder/versions/1/infer", b"Content-Length: 1000000", b" "),  # large: takes a read slot
    ("/v2/models/video_encoder/infer", b"Transfer-Encoding: chunked", b"1\r\n \r\n"),  # streamed: a slot too
])
def test_a_body_trickled_within_the_idle_timeout_is_refused_for_its_pace(path, head, piece):
    """A client sending a byte every 50 ms never tripped the idle timeout (30 s between chunks) nor the header
    timeout (headers only), so it held its request and its connection (and on a large inference request one of
    the few read slots) for as long as it liked; reproduced: no answer after 20 s of trickling. Now a body that
    arrives slower than --body-timeout plus 1 s per --body-min-rate bytes is a 408 naming both, and the connection
    of a client that sends on is closed (the rest of a refused body is discarded for --header-timeout). With one
    read slot, a second trickler gets its own 408: the first freed the slot."""
    with _served(_service(body_timeout_s=0.3, body_min_rate=1000, max_infer_inflight=1)) as server:
        for _ in range(2):
            with socket.create_connection(server.sock.getsockname()[:2]) as client:
                client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + head + b"\r\n\r\n")
                answer, closed = _trickle(client, piece)
                assert answer.startswith(b"HTTP/1.1 408") and closed, answer[:300]
                error = json.loads(answer.split(b"\r\n\r\n", 1)[1])
                assert error["field"] == "body" and "arrived too slowly" in error["error"], error
                assert "--body-timeout" in error["error"] and "--body-min-rate" in error["error"], error


def test_a_body_timeout_without_a_rate_bounds_the_whole_body():
    """--body-min-rate 0: --body-timeout is a deadline for the whole body, whatever arrived, and the 408 names only
    that option."""
    with _served(_service(body_timeout_s=0.3, body_min_rate=0)) as server, \
            socket.create_connection(server.sock.getsockname()[:2]) as client:
        client.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n")
        answer, closed = _trickle(client, b" " * 100)  # 2 KB/s: no rate would refuse it
        assert answer.startswith(b"HTTP/1.1 408") and closed and b"--body-timeout" in answer, answer[:300]
        assert b"--body-min-rate" not in answer


def test_a_large_body_at_a_normal_rate_takes_as_long_as_it_needs(monkeypatch):
    """The pace only refuses slow bodies: a 3 MiB inference body sent in eight pieces over 2 s, longer than its
    --body-timeout (1 s) but far faster than --body-min-rate (each piece earns 6 s more), is read whole and
    answered 200."""
    frames = np.zeros((64, 4, 3, 32, 32), np.float32)
    mask = np.ones((64, 4), np.float32)
    head = json.dumps({"inputs": [{"name": "frames", "datatype": "FP32", "shape": list(frames.shape),
                                   "parameters": {"binary_data_size": frames.nbytes}},
                                  {"name": "frame_mask", "datatype": "FP32", "shape": list(mask.shape),
                                   "parameters": {"binary_data_size": mask.nbytes}}],
                       "outputs": [{"name": "video_emb", "parameters": {"binary_data": True}}]}).encode()
    body = head + frames.tobytes() + mask.tobytes()
    service = _service(body_timeout_s=1.0, body_min_rate=64 * 1024)
    emb = np.zeros((64, DIMS.embed_dim), np.float32)
    monkeypatch.setattr(service, "infer", lambda model, req: {n: emb for n in model.output_names})
    with _served(service) as server, socket.create_connection(server.sock.getsockname()[:2]) as client:
        client.sendall(b"POST /v2/models/video_encoder/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: "
                       + str(len(head)).encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        pieces = np.array_split(np.frombuffer(body, np.uint8), 8)
        for piece in pieces:
            client.sendall(piece.tobytes())
            time.sleep(0.25)
        client.settimeout(30)
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_the_pace_grants_one_second_per_min_rate_bytes():
    """Apache's body=20,MinRate=500: 20 s, and 1 s more for every 500 bytes that arrived; rate 0 adds nothing."""
    assert BodyPace().seconds_for(0) == 20 and BodyPace().seconds_for(1000) == 22
    assert BodyPace(5, 0).seconds_for(10**9) == 5


@pytest.mark.parametrize("changes, option", [({"body_timeout_s": 0}, "--body-timeout"),
                                             ({"body_timeout_s": float("nan")}, "--body-timeout"),
                                             ({"body_min_rate": -1}, "--body-min-rate"),
                                             ({"body_min_rate": float("inf")}, "--body-min-rate")])
def test_body_pace_options_out_of_range_are_usage_errors(changes, option):
    with pytest.raises(UsageError, match=option):
        ServeOptions(**changes)


def test_the_body_pace_is_a_serve_option(monkeypatch):
    """--body-timeout and --body-min-rate reach the server's options, and --help names them."""
    from typer.testing import CliRunner

    import rap_deploy.engines.serving.server as server_module
    from rap_deploy.cli import app

    seen = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: seen.append(kwargs["options"]))
    res = CliRunner().invoke(app, ["serve", "--no-library", "--body-timeout", "7", "--body-min-rate", "0"])
    assert res.exit_code == 0 and len(seen) == 1, res.output
    assert (seen[0].body_timeout_s, seen[0].body_min_rate) == (7, 0)
    assert ServeOptions().body_pace == BodyPace(20, 500)
    help_text = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    assert "--body-timeout" in help_text and "--body-min-rate" in help_text

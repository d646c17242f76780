"""The HTTP layer of ``rapdeploy serve`` without an engine: the real app and :class:`ServingService` methods over a
service built without its engine (only the attributes the tested routes read), served by uvicorn on 127.0.0.1 and a
free port in a thread."""

from __future__ import annotations

import collections
import http.client
import json
import logging
import socket
import threading
import time
import types
import urllib.parse
from typing import Any

import numpy as np
import pytest

from rap_deploy.engines.serving.app import create_app
from rap_deploy.engines.serving.contract import BatchLimits, served_models
from rap_deploy.engines.serving.server import ServerThread
from rap_deploy.engines.serving.service import ServeOptions, ServingService
from rap_deploy.export.export_config import ModelDims, graph_specs

DIMS = ModelDims(frames=4, image_size=32, grid=(4, 4), embed_dim=32, context_length=32, asa_token_width=3 * 16)


def bare_service(library: Any = None) -> ServingService:
    """A :class:`ServingService` without engine, models or batcher thread: what health, readiness, statistics and
    thumbnails read."""
    service = ServingService.__new__(ServingService)
    service.library, service.library_changed, service.options = library, None, ServeOptions()
    service.config = None  # what the text encoder's checks read
    service.models = {}
    service.batcher = types.SimpleNamespace(alive=True)
    service._lock, service._counts = threading.Lock(), collections.Counter()
    service._thumbs = collections.OrderedDict()
    return service


@pytest.fixture()
def serve():
    """``serve(service) -> url``: the app of ``service`` in a server thread, stopped after the test."""
    servers: list[ServerThread] = []

    def start(service: ServingService) -> str:
        servers.append(ServerThread(create_app(service)).__enter__())
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


def request(url: str, method: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of one request."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_health_and_readiness_answer_head(serve):
    """Load balancers and ``curl -I`` probe with HEAD; every GET route answered it 405."""
    url = serve(bare_service())
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"):
        get_status, get_headers, body = request(url, "GET", path)
        status, headers, empty = request(url, "HEAD", path)
        assert (status, empty) == (get_status, b""), (path, status)
        assert headers["content-type"] == get_headers["content-type"] and body


def test_a_method_not_allowed_says_which_are_allowed(serve):
    """A 405 must carry ``Allow`` (RFC 9110) and said "no route", as for a path that does not exist."""
    url = serve(bare_service())
    status, headers, body = request(url, "POST", "/healthz")
    assert status == 405 and headers.get("allow") == "GET, HEAD", headers  # sorted: starlette's order varies
    assert json.loads(body)["error"] == "POST is not allowed on /healthz; it takes GET, HEAD"
    status, headers, body = request(url, "GET", "/v2/models/text_encoder/infer")
    assert status == 405 and headers.get("allow") == "POST" and "not allowed" in json.loads(body)["error"]
    assert request(url, "GET", "/nowhere")[0] == 404


class UndecodableLibrary:
    """A library holding video ``v1`` whose source file can no longer be decoded: ``thumbnail_frames`` raises what
    :meth:`rap_deploy.library.search.Library.thumbnail_frames` raises then (and ``KeyError`` for unknown ids)."""

    def thumbnail_frames(self, video_id: str, count: int = 4) -> Any:
        from rap_deploy.errors import UsageError

        if video_id != "v1":
            raise KeyError(video_id)
        raise UsageError("video 'v1': its source /srv/videos/v1.mp4 cannot be decoded (missing)")


def test_thumbnails_of_a_video_whose_file_cannot_be_decoded_are_a_404_naming_the_video(serve):
    """It was a 400 (the client did nothing wrong) with the server's file path in it; now a 404 naming the video
    (its frames are gone), the path only in the server log."""
    url = serve(bare_service(UndecodableLibrary()))
    status, headers, body = request(url, "GET", "/thumbnails?video_id=v1&count=2")
    doc = json.loads(body)
    assert status == 404 and headers["content-type"] == "application/json", (status, doc)
    assert "'v1'" in doc["error"] and "cannot be decoded" in doc["error"] and doc["field"] == "video_id"
    assert "/srv/videos" not in doc["error"]
    assert request(url, "GET", "/thumbnails?video_id=v2")[0] == 404
    assert request(url, "GET", "/healthz")[0] == 200


class GreyLibrary:
    """A library whose videos ``v1`` and ``v2`` have frames of different greys."""

    def thumbnail_frames(self, video_id: str, count: int = 4) -> Any:
        if video_id not in ("v1", "v2"):
            raise KeyError(video_id)
        return np.full((count, 8, 8, 3), 64 if video_id == "v1" else 192, np.uint8)


def test_thumbnails_have_a_strong_etag_and_answer_if_none_match_with_304(serve):
    """Thumbnails (Cache-Control: no-cache) had no validator, so the page's browser fetched every strip whole again
    on each search; now a strong ETag of the JPEG, and a matching If-None-Match is a 304 without a body."""
    url = serve(bare_service(GreyLibrary()))
    status, headers, jpeg = request(url, "GET", "/thumbnails?video_id=v1&count=2")
    etag = headers.get("etag", "")
    assert status == 200 and jpeg.startswith(b"\xff\xd8") and headers.get("cache-control") == "no-cache", headers
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2, etag  # strong: no W/
    others = {request(url, "GET", path)[1]["etag"] for path in ("/thumbnails?video_id=v1&count=3",
                                                               "/thumbnails?video_id=v2&count=2")}
    assert etag not in others and len(others) == 2  # another strip, another tag
    for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        for method in ("GET", "HEAD"):
            status, headers, body = request(url, method, "/thumbnails?video_id=v1&count=2", {"If-None-Match": match})
            assert (status, body, headers.get("etag")) == (304, b"", etag), (match, method, status, headers)
            assert headers.get("cache-control") == "no-cache" and headers.get("x-content-type-options") == "nosniff"
    status, headers, body = request(url, "GET", "/thumbnails?video_id=v1&count=2", {"If-None-Match": '"other"'})
    assert (status, body, headers["etag"]) == (200, jpeg, etag)
    assert request(url, "GET", "/thumbnails?video_id=v3", {"If-None-Match": "*"})[0] == 404  # no such video


def test_a_client_that_leaves_mid_body_is_not_a_server_fault(serve, caplog):
    """A client closing its connection before its whole body arrived was a 500: a logged traceback and a server
    fault in /stats. It is counted as 499 (client closed request) and logs nothing."""
    service = bare_service()
    service.models = served_models(graph_specs(DIMS, True), BatchLimits(8, 8, 8, 8))
    url = serve(service)
    u = urllib.parse.urlsplit(url)
    caplog.set_level(logging.WARNING, logger="rapdeploy.serve")
    with socket.create_connection((u.hostname, u.port)) as c:
        c.sendall(b"POST /v2/models/video_encoder/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                  + b"x" * 1000)
        c.shutdown(socket.SHUT_RDWR)
    for _ in range(500):  # the server sees the disconnect asynchronously
        if service._counts:
            break
        time.sleep(0.02)
    assert dict(service._counts) == {"/v2/infer 499": 1}
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_response_its_client_does_not_read_is_given_up_not_kept(monkeypatch):
    """uvicorn buffers a body sent in one piece whole and never times out a client that reads nothing, so such a
    client kept its whole response in server memory for as long as it held the connection (measured: a 64 MiB
    response, 61 MiB buffered, still there after the keep-alive close). Now the response goes out in pieces and is
    given up when the client reads nothing for the idle timeout: the connection is closed and at most about one
    piece stays buffered."""
    from rap_deploy.engines.serving.bodies import SEND_CHUNK

    service = bare_service()
    service.options = ServeOptions(body_idle_timeout_s=0.2)
    service.models = served_models(graph_specs(DIMS, True), BatchLimits(8, 8, 8, 8))
    big = np.zeros((32 << 20) // 4, dtype=np.float32)  # 32 MiB, whatever the declared shape: a stub engine
    monkeypatch.setattr(service, "infer", lambda model, req: {n: big for n in model.output_names})
    doc = {"inputs": [{"name": "frames", "datatype": "FP32", "shape": [1, 4, 3, 32, 32], "data": [0] * 12288},
                      {"name": "frame_mask", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}],
           "outputs": [{"name": "video_emb", "parameters": {"binary_data": True}}]}
    body = json.dumps(doc).encode()
    with ServerThread(create_app(service)) as server, socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(server.sock.getsockname()[:2])
        client.sendall(b"POST /v2/models/video_encoder/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                       + str(len(body)).encode() + b"\r\n\r\n" + body)  # and never reads
        for _ in range(1500):  # until the server gives the response up (or uvicorn's keep-alive closes it)
            conns = [c for c in server.server.server_state.connections if c.transport is not None]
            if conns and conns[0].transport.is_closing():
                break
            time.sleep(0.02)
        assert conns and conns[0].transport.is_closing()
        assert conns[0].transport.get_write_buffer_size() <= 2 * SEND_CHUNK


def test_open_inference_protocol_readiness_is_false_as_a_4xx():
    """The protocol's health and model-ready answers are 200 for true and a 4xx for false (Triton: 400); a not-ready
    server answered 503, which a client of the protocol reads as a server error rather than "not ready"."""
    service = bare_service()
    service.models = served_models(graph_specs(DIMS, True), BatchLimits(8, 8, 8, 8))
    service.batcher = types.SimpleNamespace(alive=False)
    with ServerThread(create_app(service)) as server:
        for path in ("/v2/health/ready", "/v2/models/text_encoder/ready", "/v2/models/asa_head/versions/1/ready"):
            status, _, body = request(server.url, "GET", path)
            assert status == 400 and json.loads(body)["ready"] is False, (path, status)
        assert request(server.url, "GET", "/readyz")[0] == 503  # Kubernetes-style readiness keeps 503


def _post(url: str, path: str, body: bytes) -> tuple[int, Any]:
    """``(status, JSON answer)`` of one POST."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_repository_index_reads_its_request_as_triton_does():
    """``POST /v2/repository/index`` ignored its body: text that is not JSON (``not json``), a list, or
    ``{"ready": "yes"}`` were answered 200 with the index, where Triton answers 400 (it parses a non-empty body as
    JSON and reads ``ready`` as a boolean); ``{"ready": true}`` listed the models of a server that is not ready.
    An empty body (what tritonclient sends) keeps Triton's defaults."""
    import tritonclient.http as hc

    service = bare_service()
    service.models = served_models(graph_specs(DIMS, True), BatchLimits(8, 8, 8, 8))
    with ServerThread(create_app(service)) as server:
        for body, field in ((b"not json", "body"), (b"[1]", "body"), (b'{"ready": "yes"}', "ready")):
            status, doc = _post(server.url, "/v2/repository/index", body)
            assert (status, doc["field"]) == (400, field), (body, doc)
        names = sorted(service.models)
        for body in (b"", b"{}", b'{"ready": true}', b'{"ready": false}'):
            status, doc = _post(server.url, "/v2/repository/index", body)
            assert status == 200 and sorted(m["name"] for m in doc) == names, (body, doc)
            assert {m["state"] for m in doc} == {"READY"}, doc
        client = hc.InferenceServerClient(urllib.parse.urlsplit(server.url).netloc)
        assert sorted(m["name"] for m in client.get_model_repository_index()) == names
        client.close()
        service.batcher = types.SimpleNamespace(alive=False)
        assert _post(server.url, "/v2/repository/index", b'{"ready": true}') == (200, [])
        status, doc = _post(server.url, "/v2/repository/index", b"")
        assert status == 200 and {m["state"] for m in doc} == {"UNAVAILABLE"}, doc

def test_a_server_that_fails_to_start_leaves_no_thread_behind(monkeypatch):
    """The thread that announces the URL once uvicorn accepts requests waited for ever (polling) when uvicorn failed
    before starting, in every process that called serve()."""
    import uvicorn

    import rap_deploy.engines.serving.server as server_module

    service = bare_service()
    closed = []
    service.close = lambda: closed.append(True)
    monkeypatch.setattr(server_module, "build_service", lambda *args: service)

    def failing_run(self, sockets=None):
        raise RuntimeError("uvicorn could not start")

    monkeypatch.setattr(uvicorn.Server, "run", failing_run)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="could not start"):
        server_module.serve(port=0, echo=lambda message: None)
    assert closed and threading.active_count() == before


def _wait_closed(sock: socket.socket, seconds: float = 10.0) -> bytes:
    """What the server sent on ``sock`` until it closed it (``sock`` times out after ``seconds``)."""
    sock.settimeout(seconds)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_connections_are_bounded_in_number_and_in_header_time():
    """uvicorn kept every connection it accepted, and one that sent part of its headers (or nothing) and stalled for
    ever (slow-loris; reproduced: 500 such connections all still open after 40 s, past the keep-alive timeout), until
    the file descriptors ran out and the server accepted nothing. Now a connection past --max-connections gets 503
    and is closed, and one whose headers have not arrived within --header-timeout is closed (408 when part came)."""
    with ServerThread(create_app(bare_service()), max_connections=3, header_timeout=0.5) as server:
        addr = server.sock.getsockname()[:2]
        with socket.create_connection(addr) as silent, socket.create_connection(addr) as partial, \
                socket.create_connection(addr) as keep:
            partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            keep.settimeout(10)
            assert keep.recv(65536).startswith(b"HTTP/1.1 200")  # served; the connection stays open (keep-alive)
            with socket.create_connection(addr) as fourth:
                refused = _wait_closed(fourth)
            assert refused.startswith(b"HTTP/1.1 503") and b"--max-connections" in refused, refused
            assert _wait_closed(silent) == b""  # nothing came: closed without an answer
            late = _wait_closed(partial)
            assert late.startswith(b"HTTP/1.1 408") and b"--header-timeout" in late, late
            keep.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request on a kept-alive connection is bounded too
            assert b"HTTP/1.1 408" in _wait_closed(keep)  # after the rest of the first answer
        assert request(server.url, "GET", "/healthz")[0] == 200  # the closed ones freed their places


def _head_fields(raw: bytes) -> dict[str, str]:
    """The header fields of a raw HTTP response, names lower-cased."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}


def test_connections_refused_by_the_limits_carry_the_security_headers_and_count_in_stats():
    """The 503 past --max-connections and the 408 past --header-timeout are written on the socket, outside the app:
    they carried none of the security headers every other response carries, and /stats never counted them."""
    from rap_deploy.engines.serving.headers import SECURE_HEADERS

    service = bare_service()
    with ServerThread(create_app(service), max_connections=1, header_timeout=0.5, count=service.count) as server:
        addr = server.sock.getsockname()[:2]
        with socket.create_connection(addr) as partial:
            partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            with socket.create_connection(addr) as second:
                busy = _wait_closed(second)
            late = _wait_closed(partial)
        normal = request(server.url, "GET", "/healthz")[1]
    assert busy.startswith(b"HTTP/1.1 503") and late.startswith(b"HTTP/1.1 408"), (busy, late)
    for raw in (busy, late):
        fields = _head_fields(raw)
        for name, value in SECURE_HEADERS.items():
            assert fields.get(name) == value == {k.lower(): v for k, v in normal.items()}[name], (name, raw)
    assert dict(service._counts) == {"connection 503": 1, "connection 408": 1, "/healthz 200": 1}


def test_a_request_that_is_not_http_is_a_json_400_with_the_security_headers_and_counted():
    """uvicorn answers a request line or header it cannot parse itself, outside the app: a text/plain 400 with none
    of the security headers, not the JSON {"error", "field"} of every other refusal, and not counted in /stats."""
    from rap_deploy.engines.serving.headers import SECURE_HEADERS

    service = bare_service()
    with ServerThread(create_app(service), count=service.count) as server:
        for raw in (b"GARBAGE\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"):
            with socket.create_connection(server.sock.getsockname()[:2]) as c:
                c.sendall(raw)
                answer = _wait_closed(c)
            head, body = answer.split(b"\r\n\r\n", 1)
            fields = _head_fields(answer)
            assert head.startswith(b"HTTP/1.1 400") and fields["content-type"] == "application/json", answer
            assert {k: fields.get(k) for k in SECURE_HEADERS} == SECURE_HEADERS, answer
            assert json.loads(body) == {"error": "the request is not valid HTTP/1.1 (its request line or headers "
                                                 "could not be parsed)", "field": None}
        assert request(server.url, "GET", "/healthz")[0] == 200
    assert dict(service._counts) == {"connection 400": 2, "/healthz 200": 1}


def test_max_connections_beyond_the_open_files_limit_is_a_usage_error(monkeypatch):
    """Past the open-files limit uvicorn's accept loop fails and the server takes no connection at all: the soft
    limit is raised as far as the hard one allows, and a --max-connections beyond that is refused."""
    import resource

    from rap_deploy.engines.serving.connections import FD_RESERVE, check_open_files
    from rap_deploy.errors import UsageError

    raised = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda kind, limits: raised.append(limits))
    check_open_files(512)
    assert raised == []
    check_open_files(2000)
    assert raised == [(2000 + FD_RESERVE, 4096)]
    with pytest.raises(UsageError, match=f"--max-connections {1024 - FD_RESERVE} or less"):
        check_open_files(4096)

    def refused(kind, limits):
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refused)  # a cap below the hard limit: a ValueError traceback
    with pytest.raises(UsageError, match="may open 1024"):
        check_open_files(2000)


def test_a_stalled_search_body_is_refused_not_held():
    """``POST /search`` read its body with no idle timeout (only inference bodies had one), so a client that sent
    part of its body and then nothing held its connection and the request for ever."""
    service = bare_service(library=object())
    service.options = ServeOptions(body_idle_timeout_s=0.3)
    with ServerThread(create_app(service)) as server, socket.create_connection(server.sock.getsockname()[:2]) as c:
        c.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                  b'{"query": ')
        answer = _wait_closed(c)
        assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer, answer
        assert dict(service._counts) == {"/search 408": 1}


def test_the_idle_window_is_a_serve_option(monkeypatch):
    """Stalled bodies (408) and unread responses (given up) used a 30 s window that no option or --help named."""
    from typer.testing import CliRunner

    import rap_deploy.engines.serving.server as server_module
    from rap_deploy.cli import app

    seen = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: seen.append(kwargs["options"]))
    res = CliRunner().invoke(app, ["serve", "--no-library", "--idle-timeout", "5", "--max-connections", "64",
                                   "--header-timeout", "2"])
    assert res.exit_code == 0 and len(seen) == 1, res.output
    assert (seen[0].body_idle_timeout_s, seen[0].max_connections, seen[0].header_timeout_s) == (5, 64, 2)
    assert "--idle-timeout" in CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output



def test_the_rest_of_a_refused_body_is_discarded_for_a_while_without_a_second_answer():
    """A body refused before it was read whole (413) must keep its connection for a while: uvicorn reads and discards
    the rest, so a client still sending it gets to read its 413 (closing at once made its send fail with EPIPE /
    ECONNRESET: test_serving_search's 1 MB query). The header deadline then took that rest for the next request's
    headers and wrote a stray 408 after the 413; the connection is now closed without one."""
    service = bare_service(library=object())
    with ServerThread(create_app(service), header_timeout=0.5) as server, \
            socket.create_connection(server.sock.getsockname()[:2]) as c:
        c.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 10)
        c.settimeout(10)
        answer = b""
        while not answer.endswith(b'"field":"body"}'):  # the whole 413
            answer += c.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413")
        c.sendall(b"x" * 10)  # more of the refused body, then nothing
        assert _wait_closed(c) == b""  # closed (after --header-timeout), without a second answer

def test_json_nested_deeply_is_a_400_through_the_server():
    """Through the whole ASGI stack (a deeper Python stack than the parser alone): a body nested 100,000 levels, and
    tensor data nested just within what the parser takes, are 400s naming the body or the data, never a 500."""
    service = bare_service()
    service.models = served_models(graph_specs(DIMS, True), BatchLimits(8, 8, 8, 8))
    deep = "[" * 900 + "1" + "]" * 900
    bodies = {b"[" * 100_000: "nested too deeply",
              ('{"inputs": [{"name": "frame_mask", "datatype": "FP32", "shape": [1, 4], "data": ' + deep + "}]}"
               ).encode(): "inputs[0]"}
    with ServerThread(create_app(service)) as server:
        u = urllib.parse.urlsplit(server.url)
        for body, expected in bodies.items():
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
            try:
                conn.request("POST", "/v2/models/video_encoder/infer", body=body)
                resp = conn.getresponse()
                doc = json.loads(resp.read())
            finally:
                conn.close()
            assert resp.status == 400 and expected in json.dumps(doc), doc
    assert dict(service._counts) == {"/v2/infer 400": 2}


class HostileLibrary:
    """A library whose one video's id holds HTML and script (a user's file ``<img src=x onerror=alert(1)>.mp4``);
    ``boom`` is a server fault (a 500)."""

    VIDEO = "<img src=x onerror=alert(1)>"

    def thumbnail_frames(self, video_id: str, count: int = 4) -> Any:
        if video_id == "boom":
            raise RuntimeError("disk on fire")
        if video_id != self.VIDEO:
            raise KeyError(video_id)
        return np.full((count, 8, 8, 3), 128, np.uint8)


def test_every_response_forbids_sniffing_and_framing_and_the_page_runs_only_its_own_script(serve):
    """No response had X-Content-Type-Options, a Content-Security-Policy or X-Frame-Options: a JSON error echoing a
    hostile video id could be sniffed as HTML, any site could frame the page, and an injected script would run."""
    import base64
    import hashlib
    import re

    url = serve(bare_service(HostileLibrary()))
    vid = urllib.parse.quote(HostileLibrary.VIDEO, safe="")
    paths = ["/", "/healthz", "/nowhere", f"/thumbnails?video_id={vid}", f"/thumbnails?video_id={vid}x",
             "/thumbnails?video_id=boom"]
    for path in paths:
        status, headers, body = request(url, "GET", path)
        assert headers.get("x-content-type-options") == "nosniff", (path, status, headers)
        assert headers.get("x-frame-options") == "DENY" and "frame-ancestors 'none'" in headers[
            "content-security-policy"], (path, headers)
        # another site's <img src=".../thumbnails?video_id=guess"> loaded or not as the library held the video
        assert headers.get("cross-origin-resource-policy") == "same-origin", (path, headers)
        if path != "/":  # nothing but the page runs anything
            assert "default-src 'none'" in headers["content-security-policy"] and "script-src" not in headers[
                "content-security-policy"], (path, headers)
    assert request(url, "GET", "/thumbnails?video_id=boom")[0] == 500
    status, headers, page = request(url, "GET", "/")
    html, policy = page.decode(), headers["content-security-policy"]
    assert headers["content-type"] == "text/html; charset=utf-8"
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        allowed = re.search(rf"{directive} ([^;]*)", policy).group(1).split()
        assert allowed == [f"'sha256-{digest}'"], policy  # no 'unsafe-inline', no other source
    for directive in ("default-src 'none'", "img-src 'self'", "connect-src 'self'", "base-uri 'none'"):
        assert directive in policy, policy


def host_request(url: str, host: str) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` of ``GET /healthz`` sent with the ``Host`` header ``host``."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("GET", "/healthz", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_loopback_server_answers_only_its_own_host_names(serve):
    """A loopback server answered any Host, so a web page at attacker.example rebinding its name to 127.0.0.1 read
    the library (ids, paths, frames) as its own origin; now a Host other than loopback names and --allow-host is
    a 403 naming the option."""
    from rap_deploy.engines.serving.server import ServerThread

    service = bare_service()
    with ServerThread(create_app(service, allowed_hosts=["search.example"])) as server:
        port = urllib.parse.urlsplit(server.url).port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "app.localhost:80",
                     f"search.example:{port}", "Search.Example"):
            assert host_request(server.url, host)[0] == 200, host
        for host in (f"attacker.example:{port}", "127.0.0.1.attacker.example", "localhost.attacker.example", "",
                     f"[::ffff:8.8.8.8]:{port}"):
            status, doc = host_request(server.url, host)
            assert status == 403 and doc["field"] == "Host" and "--allow-host" in doc["error"], (host, doc)
    assert service._counts["/healthz 403"] == 5  # refusals show in /stats
    assert host_request(serve(service), f"attacker.example:{port}")[0] == 200  # no check asked for


def test_only_a_loopback_listener_checks_hosts_unless_told_otherwise():
    from rap_deploy.engines.serving.listen_socket import bind_socket, hosts_to_check
    from rap_deploy.errors import UsageError

    class EveryInterface:  # what hosts_to_check reads of a listener on 0.0.0.0 (tests bind loopback only)
        def getsockname(self) -> tuple:
            return ("0.0.0.0", 8080)

    anywhere = EveryInterface()
    with bind_socket("127.0.0.1", 0) as loopback:
        assert hosts_to_check(loopback) == frozenset() and hosts_to_check(loopback, ["a.example"]) == {"a.example"}
        assert hosts_to_check(loopback, ["*"]) is None and hosts_to_check(anywhere, ["a.example"]) is None
        for bad in ("", "a b", "http://a.example/", "user@a.example"):
            with pytest.raises(UsageError, match="--allow-host"):
                hosts_to_check(loopback, [bad])
    from typer.testing import CliRunner

    from rap_deploy.cli import app

    res = CliRunner().invoke(app, ["serve", "--engine", "/no/such/engine", "--port", "0", "--allow-host", "a b"])
    assert res.exit_code == 2 and "--allow-host 'a b'" in res.output, res.output


def test_served_connections_send_without_waiting_for_acks():
    """The listening socket was made with protocol 0, so asyncio (which uvicorn accepts with) left Nagle on for every
    connection: uvicorn writes a response's headers and body apart, and on a kept-alive connection the body then
    waited for the client's delayed ACK (reproduced: GET /healthz took 44 ms from the second request on, 0.8 ms on a
    new connection). Connections accepted from bind_socket's socket now have TCP_NODELAY."""
    import asyncio

    from rap_deploy.engines.serving.listen_socket import bind_socket

    async def accepted_nodelay(sock: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                seen.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, sock=sock)  # as uvicorn.Server.run(sockets=[sock]) serves it
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            try:
                return await asyncio.wait_for(seen, 10)
            finally:
                writer.close()

    with bind_socket("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert asyncio.run(accepted_nodelay(sock)) != 0


def test_serve_host_that_is_not_this_machines_is_a_one_line_error_naming_host():
    """serve --host with an address this machine does not have said 'pass another --port' (no port helps); a name
    that does not resolve is refused naming --host too, and (it said only 'Name or service not known') what to pass
    instead. Both before the engine is loaded (it does not exist)."""
    from typer.testing import CliRunner

    from rap_deploy.cli import app

    for host in ("192.0.2.1", "no-such-host.invalid"):  # TEST-NET-1 (RFC 5737); a reserved TLD (RFC 6761)
        res = CliRunner().invoke(app, ["serve", "--engine", "/no/such/engine", "--port", "0", "--host", host])
        assert res.exit_code == 2 and f"--host {host}" in res.output, res.output
        assert "--port" not in res.output and "Traceback" not in res.output and "engine" not in res.output, res.output
        assert "127.0.0.1 (this machine only)" in res.output and res.output.count("\n") == 1, res.output


@pytest.mark.parametrize("option, value", [("--max-queue", "0"), ("--max-queue", "2000000"),
                                           ("--max-connections", "2000000")])
def test_serve_max_queue_and_connections_bounds_are_named_in_whole_numbers(option, value):
    """--max-queue (the text requests that may wait; more get 503) out of range said 'must be in [1, 1.04858e+06],
    got 2e+06': the bound and the value given printed as floats, rounded."""
    from typer.testing import CliRunner

    from rap_deploy.cli import app

    res = CliRunner().invoke(app, ["serve", "--engine", "/no/such/engine", "--port", "0", option, value])
    assert res.exit_code == 2 and f"{option} must be in [1, 1048576], got {value}" in res.output, res.output


def test_a_page_of_another_site_cannot_make_a_loopback_server_work_for_it(serve):
    """Any web page could POST searches and inference bodies (up to --max-body-mb) as text/plain, which needs no
    CORS preflight, to http://127.0.0.1:8080: unreadable to it, but run all the same. A browser's Origin (and
    Sec-Fetch-Site, which no page can forge) now say whose page asks."""
    from rap_deploy.engines.serving.server import ServerThread

    def ask(url: str, origin: str, fetch_site: str | None = None) -> tuple[int, dict[str, Any]]:
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            headers = {"Origin": origin, "Content-Type": "text/plain",
                       **({"Sec-Fetch-Site": fetch_site} if fetch_site else {})}
            conn.request("POST", "/search", body=b'{"query": "a red circle"}', headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    with ServerThread(create_app(bare_service(), allowed_hosts=["search.example"])) as server:
        port = urllib.parse.urlsplit(server.url).port
        for origin, fetch_site in (("https://attacker.example", None), ("https://attacker.example", "cross-site"),
                                   ("null", None), ("http://[::1", None)):
            status, doc = ask(server.url, origin, fetch_site)
            assert status == 403 and doc["field"] == "Origin" and "--allow-host" in doc["error"], (origin, doc)
        # its own page (a 404: this bare server has no library), behind a gateway that rewrites Host too
        for origin, fetch_site in ((f"http://127.0.0.1:{port}", None), (f"http://localhost:{port}", "same-origin"),
                                   ("https://search.example", None), ("https://gateway.example", "same-origin")):
            assert ask(server.url, origin, fetch_site)[0] == 404, origin
    assert ask(serve(bare_service()), "https://attacker.example")[0] == 404  # no check asked for

"""The remote engine (``load_engine("http://…")``, ``--engine http://…``) against servers that misbehave at the
transport level: every failure is one line and an exit code, never a traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.engines.loader import load_engine
from rap_deploy.errors import BackendUnavailableError, UsageError

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


@contextmanager
def serving(handler: type) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) answering with ``handler`` (a ``BaseHTTPRequestHandler`` class) in a
    thread; yields its URL and stops it when the block ends."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def answering_server(answer: Callable[[str], tuple[int, str, bytes]]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) answering GET ``path`` with ``answer(path)`` (status, content type,
    body); yields its URL."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            code, kind, data = answer(self.path)
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url


@contextmanager
def http_server(status: int, content_type: str, body: bytes) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port): ready at ``/v2/health/ready``, server metadata at ``/v2``, and
    ``status`` with ``body`` for every other path; yields its URL."""
    known = {"/v2/health/ready": (200, "application/json", b""),
             "/v2": (200, "application/json", b'{"name": "other", "version": "1"}')}
    with answering_server(lambda path: known.get(path, (status, content_type, body))) as url:
        yield url


def test_an_error_page_that_is_not_a_kserve_error_is_one_short_line():
    """A server that answers the model-config request with an HTML error page (a reverse proxy's 404, a server
    without Triton's model-configuration extension): tritonclient put the whole page, every line of it, into its
    error message, which load_engine and the CLI printed as is; now one line naming the status and the page's start,
    and asking whether it is a KServe v2 server."""
    page = b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<h1>404</h1>\r\n</body></html>\r\n" * 50
    with http_server(404, "text/html", page) as url:
        with pytest.raises(UsageError) as err:
            load_engine(url)
        res = runner.invoke(app, ["bench", "--engine", url])
    message = str(err.value)
    assert "\n" not in message and len(message) < 600 and "HTTP 404" in message and "KServe v2" in message, message
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "HTTP 404" in res.output, res.output


def test_a_kserve_error_message_is_kept_on_one_line():
    """A KServe v2 error ({"error": "..."}) keeps its message, its line breaks folded into one line."""
    with http_server(400, "application/json", b'{"error": "unknown model\\n  text_encoder"}') as url:
        with pytest.raises(UsageError, match="config: unknown model text_encoder$"):
            load_engine(url)


def test_an_answer_without_an_output_or_with_the_wrong_rows_is_refused(micro_ort_engines, monkeypatch):
    """tritonclient's as_numpy gives None for an output the answer lacks, and np.asarray(None, float32) is one NaN:
    encode_text returned a NaN scalar instead of failing; an answer whose rows are not the request's batch passed
    on too. Both are now a one-line usage error naming the output."""
    import numpy as np

    from rap_deploy.engines.serving import app as app_module
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService

    path = micro_ort_engines["fp32"]
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path))
    encode = app_module.encode_infer_response
    ids, eot = np.zeros((2, service.engine.config.context_length), np.int32), np.array([3, 4], np.int32)
    ids[:, :5] = [49406, 320, 1929, 49407, 0][:5]
    try:
        with ServerThread(app_module.create_app(service)) as server:
            remote = load_engine(server.url)
            try:
                assert remote.encode_text(ids, eot).shape == (2, remote.encode_text(ids[:1], eot[:1]).shape[1])
                for change, message in ((lambda outs: {}, "no such output"),
                                        (lambda outs: {k: v[:1] for k, v in outs.items()}, "for a batch of 2")):
                    monkeypatch.setattr(app_module, "encode_infer_response",
                                        lambda model, req, outs, change=change: encode(
                                            model, type(req)(req.inputs, {} if not change(outs) else req.outputs,
                                                             req.id, req.parameters), change(outs)))
                    with pytest.raises(UsageError, match=f"output text_emb is missing or malformed.*{message}"):
                        remote.encode_text(ids, eot)
            finally:
                remote.close()
    finally:
        service.close()


def test_requests_stay_within_tritons_default_input_size(micro_ort_engines, monkeypatch):
    """Triton publishes the repository's max_batch_size (32 videos) and ASA blocks (64 videos) whatever its
    --http-max-input-size, 64 MiB by default: 32 videos of ViT-B/32 frames are 220 MiB, 64 videos' re-rank tensors
    ~100 MiB, so verify/bench/index against a tritonserver started as the repository README says got 400 on the
    first video batch. No request now carries more than MAX_REQUEST_BYTES of tensors (here lowered to 200 KiB for
    the micro model: 4 videos' frames, 11 videos' re-rank tensors), and the answers are the same."""
    import numpy as np

    from rap_deploy.engines.serving import remote as remote_module
    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService

    limit = 200 << 10
    monkeypatch.setattr(remote_module, "MAX_REQUEST_BYTES", limit)
    path = micro_ort_engines["fp32"]
    local = load_engine(path, threads=1)
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path))
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((40, 4, 3, 32, 32)).astype(np.float32)  # 48 KiB a video
    mask = np.ones((40, 4), np.float32)
    try:
        with ServerThread(create_app(service)) as server:
            remote = load_engine(server.url)
            sent: list[int] = []  # the tensor bytes of each request, in the server's datatypes
            infer, numpy_dtypes = remote._infer, remote_module.NUMPY_DTYPES

            def recorded(graph, arrays):
                sent.append(sum(np.asarray(a, numpy_dtypes[remote.datatypes[graph][n]]).nbytes
                                for n, a in zip(remote.io[graph][0], arrays, strict=True)))
                return infer(graph, arrays)

            monkeypatch.setattr(remote, "_infer", recorded)
            try:
                assert remote.max_batch["video_encoder"] == 32 and remote.video_block == 64  # what the server says
                got, want = remote.encode_video(frames, mask), local.encode_video(frames, mask)
                text = local.encode_text(np.ones((3, 32), np.int32), np.full(3, 5, np.int32))
                similarity = remote.asa_similarity(text, *want[1:])
            finally:
                remote.close()
    finally:
        service.close()
        local_similarity = local.asa_similarity(text, *want[1:])
        local.close()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(similarity, local_similarity, rtol=1e-5, atol=1e-5)
    assert len(sent) > 10 and max(sent) <= limit, sent


def test_a_server_that_never_answers_fails_the_checks_in_the_connection_timeout(micro_ort_engines, monkeypatch):
    """The connection checks (ready, metadata, configs) ran on the client made for inference, whose network
    timeout is 600 s: a server that takes the connection and never answers (a stopped process, a paused VM) held
    load_engine and every --engine http:// command for ten minutes before one line. The checks now run on a client
    whose network timeout is the connection timeout; inference still gets the long one."""
    import numpy as np
    import tritonclient.http as httpclient

    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.remote import RemoteEngine
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService

    timeouts: list[float] = []  # the network timeout of each client, in the order they are made

    class Recorded(httpclient.InferenceServerClient):
        def __init__(self, *args, **kwargs):
            timeouts.append(kwargs["network_timeout"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(httpclient, "InferenceServerClient", Recorded)
    path = micro_ort_engines["fp32"]
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path))
    try:
        with ServerThread(create_app(service)) as server:
            remote = RemoteEngine(server.url, connection_timeout=2.0, network_timeout=3600.0)
            try:
                remote.describe()
                remote.encode_text(np.ones((2, remote.config.context_length), np.int32), np.full(2, 5, np.int32))
            finally:
                remote.close()
    finally:
        service.close()
    assert timeouts == [2.0, 3600.0], timeouts
    with raw_server(lambda conn: conn.recv(1)) as url:  # reads, never answers (until the client gives up)
        with pytest.raises(BackendUnavailableError, match="cannot reach"):
            RemoteEngine(url, connection_timeout=0.5, network_timeout=3600.0)


def test_a_datatype_that_is_not_a_string_is_a_one_line_usage_error(micro_ort_engines, monkeypatch):
    """Model metadata whose input datatype is a JSON list or object ("datatype": ["FP32"]) ended load_engine in a
    TypeError (unhashable type) traceback; it is the usage error naming the unsupported datatypes."""
    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService

    path = micro_ort_engines["fp32"]
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path))
    metadata = service.metadata

    def listed(model):
        doc = metadata(model)
        doc["inputs"] = [{**t, "datatype": [t["datatype"]]} for t in doc["inputs"]]
        return doc

    monkeypatch.setattr(service, "metadata", listed)
    try:
        with ServerThread(create_app(service)) as server:
            with pytest.raises(UsageError, match="unsupported datatypes"):
                load_engine(server.url)
    finally:
        service.close()


@pytest.mark.parametrize("url", ["http://alice:s3cret@127.0.0.1:9", "https://alice:s3cret@[::1]:8000/triton",
                                 "http://alice:s3cret@127.0.0.1:port"])
def test_an_engine_url_with_credentials_is_refused_without_repeating_the_password(url):
    """http://USER:PASSWORD@HOST:PORT was taken: the credentials were never sent (the client does not authenticate),
    and every later message (not ready, cannot reach, bad answers) printed the password. It is refused at once now,
    with the URL shown redacted; a bad port after credentials too."""
    with pytest.raises(UsageError) as err:
        load_engine(url)
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value)
    assert "***@" in str(err.value)
    res = runner.invoke(app, ["bench", "--engine", url, "--json"])
    assert res.exit_code == 2 and "s3cret" not in res.output


@pytest.mark.parametrize("url", ["http://", "https://", "http:///", "http://:8000/"])
def test_a_malformed_engine_url_is_quoted_as_typed(url):
    """The URL lost its trailing slashes before it was checked, so ``--engine http://`` was refused as
    "engine URL 'http:' must look like ..." (a URL the user never typed); the refusal quotes it as given now."""
    with pytest.raises(UsageError) as err:
        load_engine(url)
    assert str(err.value) == f"engine URL {url!r} must look like http://HOST:PORT"


@contextmanager
def forwarding_server(backend: str, answer: Callable[[Any], None]) -> Iterator[str]:
    """A tiny HTTP server on 127.0.0.1 (a free port) that forwards every GET to ``backend`` (a real server: health,
    metadata, configs) and answers every POST (inference) with ``answer(handler)``; yields its URL and stops when the
    block ends."""
    import http.server
    import urllib.request

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            with urllib.request.urlopen(backend + self.path, timeout=30) as got:
                status, data = got.status, got.read()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                answer(self)
            except OSError:  # the client stopped reading and closed the connection
                pass

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url


@pytest.fixture(scope="module")
def served_micro(micro_ort_engines) -> Iterator[str]:
    """The URL of ``rapdeploy serve``'s app on the micro fp32 engine (no library), stopped after the module."""
    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService

    path = micro_ort_engines["fp32"]
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path))
    try:
        with ServerThread(create_app(service)) as server:
            yield server.url
    finally:
        service.close()


def answer_with(body: bytes, headers: dict[str, str]) -> Callable[[Any], None]:
    """An ``answer`` for :func:`forwarding_server`: status 200, ``headers``, then ``body``."""
    def answer(handler: Any) -> None:
        handler.send_response(200)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def text_inputs(remote: Any) -> tuple[Any, Any]:
    """Two token-id rows and their EOT positions for ``remote``'s text encoder."""
    import numpy as np

    ids = np.zeros((2, remote.config.context_length), np.int32)
    ids[:, :4] = [49406, 320, 1929, 49407]
    return ids, np.array([3, 3], np.int32)


UNREADABLE = {
    # tritonclient's as_numpy calls parameters.get(...): an AttributeError
    "parameters that are not an object": (b'{"outputs": [{"name": "text_emb", "datatype": "FP32", "shape": [2, 1], '
                                          b'"parameters": "binary", "data": [1, 2]}]}', {}),
    # InferResult reads result["outputs"] of the JSON header: a TypeError for a list
    "a JSON header that is a list": (b'[1, 2]' + bytes(8), {"Inference-Header-Content-Length": "6"}),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_answer_whose_output_cannot_be_read_is_one_line_naming_server_model_and_output(served_micro, case):
    """An inference answer tritonclient cannot read (as_numpy raising AttributeError, InferResult a TypeError) ended
    encode_text, and verify / bench / search with --engine http://…, in a traceback. It is a one-line usage error
    naming the server's URL, the model and its output."""
    body, headers = UNREADABLE[case]
    with forwarding_server(served_micro, answer_with(body, {"Content-Length": str(len(body)), **headers})) as url:
        remote = load_engine(url)
        try:
            with pytest.raises(UsageError) as err:
                remote.encode_text(*text_inputs(remote))
        finally:
            remote.close()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{url} model text_encoder: ") and "text_emb" in message, message
    assert "cannot be read" in message, message


def endless_answer(handler: Any) -> None:
    """An answer of no declared length (HTTP/1.0: it ends when the connection closes) that sends 128 MiB."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.end_headers()
    piece = b"x" * (1 << 20)
    for _ in range(128):
        handler.wfile.write(piece)


OVERSIZED = {
    "declares a terabyte": answer_with(b'{"outputs": []}', {"Content-Length": str(1 << 40)}),
    "sends 128 MiB of no declared length": endless_answer,
}


@pytest.mark.parametrize("case", list(OVERSIZED))
def test_an_answer_larger_than_its_request_can_take_is_refused_before_it_is_read(served_micro, case):
    """tritonclient reads an answer's body whole, whatever its size (and asks the socket for the declared
    Inference-Header-Content-Length in one buffer): a misbehaving server made the client allocate without limit
    (here 128 MiB for two text embeddings, then a 'not JSON' error). An answer is now read in pieces and refused,
    one line, exit 2, as soon as it declares or passes the outputs' size (the server's metadata shapes for the
    request's rows) plus a margin; the client's memory stays near that bound."""
    import tracemalloc

    with forwarding_server(served_micro, OVERSIZED[case]) as url:
        remote = load_engine(url)
        try:
            tracemalloc.start()
            with pytest.raises(UsageError) as err:
                remote.encode_text(*text_inputs(remote))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            remote.close()
        res = runner.invoke(app, ["bench", "--engine", url])
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{url} POST /v2/models/text_encoder/infer: "), message
    assert ("declares 1,099,511,627,776 bytes" if "declares" in case else "passed") in message, message
    assert peak < 16 << 20, f"{peak / 2**20:.1f} MiB held reading a refused answer"
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output


@contextmanager
def routes_server(routes: dict[str, tuple[int, bytes]]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) answering GET ``path`` with ``routes[path]`` (status, JSON body)
    and every other path with 404 and an HTML page; yields its URL."""
    not_found = (404, "text/html", b"<html><body><h1>Not Found</h1></body></html>")

    def answer(path: str) -> tuple[int, str, bytes]:
        return (routes[path][0], "application/json", routes[path][1]) if path in routes else not_found

    with answering_server(answer) as url:
        yield url


OIP_ROOT = {"/v2/health/ready": (200, b'{"ready": true}'), "/v2": (200, b'{"name": "s", "version": "1"}')}


def test_a_server_of_another_kind_or_a_url_with_a_path_is_not_told_to_wait():
    """tritonclient reads any status of GET /v2/health/ready but 200 as 'not ready', so a web server of another kind,
    or a KServe server given as http://HOST:PORT/v2 (GET /v2/v2/health/ready: 404), was refused with 'is not ready;
    wait for it to load its models', which no wait cures. The server metadata now decides: a server that answers
    neither is named as no KServe v2 server (and a URL with a path gets the URL without it), exit 2; one that answers
    the metadata but is not ready is still told to wait."""
    with routes_server({}) as url:
        with pytest.raises(UsageError, match="HTTP 404 .*KServe v2") as other:
            load_engine(url)
        res = runner.invoke(app, ["bench", "--engine", url])
    assert res.exit_code == 2 and "not ready" not in res.output and "KServe v2" in res.output, res.output
    assert "not ready" not in str(other.value) and "path" not in str(other.value)
    with routes_server(OIP_ROOT) as root:
        with pytest.raises(UsageError) as with_path:
            load_engine(f"{root}/v2")
    message = str(with_path.value)
    assert "not ready" not in message and f"if the server is at {root}, pass that URL" in message, message
    not_ready = {"/v2/health/ready": (400, b'{"error": "models loading"}'), "/v2": OIP_ROOT["/v2"]}
    with routes_server(not_ready) as url:
        with pytest.raises(BackendUnavailableError, match="is not ready .*wait for it"):
            load_engine(url)

"""``rapdeploy serve`` in a subprocess on 127.0.0.1 (a free port) over the micro model's fp32 ONNX Runtime engine:
tritonclient inference equals the local engine bit for bit, malformed requests get a 4xx naming the field and the
server keeps answering, and ``verify`` / ``bench`` / ``load_engine`` work against ``http://…``."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import numpy as np
import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.engines.loader import load_engine
from rap_deploy.engines.serving.app import create_app
from rap_deploy.engines.serving.loadtest import SpawnedServer
from rap_deploy.errors import BackendUnavailableError, UsageError
from rap_deploy.graphs import rerank_tensors, video_outputs

runner = CliRunner()


@pytest.fixture(scope="module")
def server(micro_ort_engines):
    """The real CLI: ``rapdeploy serve --engine <fp32 engine> --port 0``; stopped after the module."""
    s = SpawnedServer(["--engine", str(micro_ort_engines["fp32"]), "--threads", "1", "--max-batch", "8",
                       "--no-library"])  # graphs only, whatever library the session workspace holds
    try:
        yield s
    finally:
        s.stop()
    # SIGTERM: uvicorn shuts down gracefully (the service closes), then re-raises the signal
    assert s.proc.returncode in (0, -15) and "rapdeploy serve stopped" in s.output, s.output[-2000:]


@pytest.fixture(scope="module")
def local(micro_ort_engines):
    engine = load_engine(micro_ort_engines["fp32"], threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.http as hc

    c = hc.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def _request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _inputs(local, synth_root, videos=3):
    from rap_deploy.data.datasets import load_split
    from rap_deploy.data.video import decode_video
    from rap_deploy.preprocess import normalize
    from rap_deploy.tokenizer import tokenize

    cfg = local.config
    split = load_split("msrvtt", synth_root, "test", max_frames=cfg.frames)
    decoded = [decode_video(v.path, split.sampling, cfg.preprocess) for v in split.videos[:videos]]
    frames = np.stack([normalize(d.frames, cfg.preprocess).numpy() for d in decoded])
    mask = np.stack([d.mask.astype(np.float32) for d in decoded])
    ids, eot = tokenize(split.captions[:videos], cfg.tokenizer)
    return frames, mask, ids, eot


def _infer(client, model, arrays, binary, outputs=None):
    import tritonclient.http as hc

    from rap_deploy.engines.serving.contract import NUMPY_DTYPES

    meta = {t["name"]: t["datatype"] for t in client.get_model_metadata(model)["inputs"]}
    items = []
    for name, arr in arrays.items():  # in the datatypes the server declares (the index's fp16 ones included)
        item = hc.InferInput(name, list(arr.shape), meta[name])
        item.set_data_from_numpy(np.asarray(arr, dtype=NUMPY_DTYPES[meta[name]]), binary_data=binary)
        items.append(item)
    wanted = None if outputs is None else [hc.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    return client.infer(model, items, outputs=wanted)


def test_tritonclient_inference_equals_the_local_engine(client, local, synth_root):
    assert client.is_server_live() and client.is_server_ready()
    assert all(client.is_model_ready(g) for g in ("video_encoder", "text_encoder", "asa_head"))
    frames, mask, ids, eot = _inputs(local, synth_root)
    video = local.encode_video(frames, mask)
    text = local.encode_text(ids, eot)
    rerank = dict(zip(rerank_tensors(True), video[1:], strict=True))  # the video outputs after video_emb
    sim = local.asa_similarity(text, *rerank.values())
    for binary in (True, False):  # tritonclient's default (binary) and JSON tensors
        out = _infer(client, "video_encoder", {"frames": frames, "frame_mask": mask}, binary)
        for name, ref in zip(video_outputs(True), video, strict=True):
            assert np.array_equal(out.as_numpy(name), ref), (name, binary)
        out = _infer(client, "text_encoder", {"input_ids": ids, "eot": eot}, binary, ["text_emb"])
        assert np.array_equal(out.as_numpy("text_emb"), text)
        short = ids[:, :int(eot.max()) + 1]  # the tokens axis is dynamic ([-1, -1] in the metadata)
        out = _infer(client, "text_encoder", {"input_ids": short, "eot": eot}, binary, ["text_emb"])
        assert np.array_equal(out.as_numpy("text_emb"), text)
        out = _infer(client, "asa_head", {"text_emb": text, **rerank}, binary)
        assert np.array_equal(out.as_numpy("similarity"), sim)
    meta = client.get_model_metadata("video_encoder")
    assert [t["name"] for t in meta["outputs"]] == list(video_outputs(True))
    assert meta["inputs"][0] == {"name": "frames", "datatype": "FP32", "shape": [-1, 4, 3, 32, 32]}


def test_model_config_is_tritons_schema(client):
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc

    for name, batch in (("video_encoder", 32), ("text_encoder", 8), ("asa_head", 0)):
        cfg = json_format.ParseDict(client.get_model_config(name), mc.ModelConfig())
        assert cfg.name == name and cfg.max_batch_size == batch
        assert json.loads(cfg.parameters["rapdeploy.config"].string_value)["clip"] == "rap-micro"
    text = client.get_model_config("text_encoder")
    assert text["dynamic_batching"]["max_queue_delay_microseconds"] == 2000


def test_remote_engine_runs_the_graphs(server, local, synth_root):
    frames, mask, ids, eot = _inputs(local, synth_root, videos=2)
    remote = load_engine(server.url)
    try:
        info = remote.describe().to_dict()
        assert info["backend"] == "remote" and info["precision"] == "fp32" and info["path"] == server.url
        assert remote.config == local.config and remote.max_batch["text_encoder"] == 8
        assert (remote.query_block, remote.video_block) == (1024, 64)  # the server re-blocks queries itself
        ids20 = np.repeat(ids, 10, axis=0)  # more texts than the server's max batch: split into requests
        eot20 = np.repeat(eot, 10)
        assert np.array_equal(remote.encode_text(ids20, eot20), local.encode_text(ids20, eot20))
        v = remote.encode_video(frames, mask)
        remote.query_block, remote.video_block = 1, 1  # one ASA request per (query, video) pair
        assert np.array_equal(remote.asa_similarity(remote.encode_text(ids, eot), *v[1:]),
                              local.asa_similarity(local.encode_text(ids, eot), *v[1:]))
        assert remote.manifest()["checkpoint"]["sha256"]
        # Triton lists a batch-only input (eot, config dims [1] reshaped to none) as [-1, 1]: the client follows the
        # rank the server's metadata gives (this server's is [-1], so nothing changes here)
        assert remote.ranks["text_encoder"] == {"input_ids": 2, "eot": 1}
        sent = []
        remote.ranks["text_encoder"]["eot"] = 2
        remote._call = lambda fn, graph, inputs, **kw: sent.append({i.name(): i.shape() for i in inputs})
        with pytest.raises(UsageError, match="cannot be read"):  # the captured call returns no answer to read
            remote.encode_text(ids, eot)
        assert sent[0]["eot"] == [len(eot), 1] and sent[0]["input_ids"] == list(ids.shape[:1]) + [32]
    finally:
        remote.close()


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server, client):
    import tritonclient.http as hc
    from tritonclient.utils import InferenceServerException

    url = server.url
    infer = "/v2/models/text_encoder/infer"
    good_ids = [1] * 32
    cases = [
        ("POST", infer, b"{not json", {}, 400, "body"),
        ("POST", infer, json.dumps({"inputs": [{"name": "input_ids", "datatype": "FP32", "shape": [1, 32],
                                                "data": good_ids}]}).encode(), {}, 400, "inputs[0].datatype"),
        ("POST", infer, json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, 33],
                                                "data": good_ids + [1]}]}).encode(), {}, 400, "inputs[0].shape"),
        ("POST", infer, json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, 32],
                                                "data": [60000] * 32},
                                               {"name": "eot", "datatype": "INT32", "shape": [1], "data": [3]}]}
                                   ).encode(), {}, 400, "inputs.input_ids"),
        ("POST", infer, b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
        ("POST", "/v2/models/nope/infer", b"{}", {}, 404, "model"),
        ("GET", "/v2/models/text_encoder/versions/2", None, {}, 404, "version"),
        ("POST", "/search", b"{}", {}, 404, "library"),  # no library on this server
        ("GET", "/nowhere", None, {}, 404, None),
    ]
    for method, path, body, headers, status, field in cases:
        got, data = _request(url, method, path, body, headers)
        doc = json.loads(data)
        assert (got, doc["field"]) == (status, field), (path, data)
        assert doc["error"] and "Traceback" not in doc["error"]
    # a declared huge body is refused before it is read; a body streamed past the limit is cut off
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/v2/models/video_encoder/infer")
    conn.putheader("Content-Length", str(10**12))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["field"] == "body"
    conn.close()
    # NaN frames through tritonclient (binary): a 400 tritonclient reports
    frames = np.zeros((1, 4, 3, 32, 32), np.float32)
    frames[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(InferenceServerException) as err:
        _infer(client, "video_encoder", {"frames": frames, "frame_mask": np.ones((1, 4), np.float32)}, True)
    assert err.value.status() == "400" and "NaN" in err.value.message()
    with pytest.raises(InferenceServerException) as err:  # batch above max_batch_size 8
        _infer(client, "text_encoder", {"input_ids": np.ones((9, 32), np.int32), "eot": np.ones(9, np.int32)}, True)
    assert err.value.status() == "400" and "[1, 8]" in err.value.message()
    item = hc.InferInput("input_ids", [1, 32], "INT32")
    item.set_data_from_numpy(np.ones((1, 32), np.int32))
    with pytest.raises(InferenceServerException):  # eot missing
        client.infer("text_encoder", [item])
    assert _request(url, "GET", "/readyz")[0] == 200
    stats = json.loads(_request(url, "GET", "/stats")[1])
    assert stats["requests"].get("/v2/infer 400", 0) >= 3 and "/v2/infer 500" not in stats["requests"]


def test_verify_and_bench_run_against_the_live_server(server, micro_checkpoint, synth_root, tmp_path):
    out = tmp_path / "verify"
    res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                              server.url, "--out", str(out), "--cache-dir", str(tmp_path / "frames"),
                              "--rerank-top", "5", "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] is True and report["precision"] == "fp32"
    assert report["rank_changes"] == {"t2v": 0, "v2t": 0}
    assert report["two_stage"]["rank_changes"] == {"t2v": 0, "v2t": 0}
    assert report["engine_info"]["backend"] == "remote" and report["engine_path"] == server.url
    assert report["reference_info"]["matches_engine_source"] is True  # the server named its checkpoint
    res = runner.invoke(app, ["bench", "--engine", server.url, "--batch-sizes", "1,2", "--repeats", "1",
                              "--warmup", "0", "--graphs", "text,search", "--index-size", "8", "--rerank-top", "4",
                              "--no-compare-meanp", "--out", str(tmp_path / "bench"), "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    rows = report["results"]
    remote = [r for r in rows if r["backend"] == "remote"]
    # the server's threads run in another process, which the pauses cannot watch: each one lasts its whole cap
    pauses = report["load"]["pauses"]
    assert pauses["count"] > 0 and pauses["capped"] == pauses["count"] and "not watched" in pauses["rule"]
    assert {(r["graph"], r["batch_size"]) for r in remote} == {("text", 1), ("text", 2), ("search", 1), ("search", 2)}
    assert all(r["throughput"] > 0 for r in remote)


def test_remote_engine_refusals(tmp_path):
    from rap_deploy.engines.serving.listen_socket import bind_socket

    sock = bind_socket("127.0.0.1", 0)  # a port that accepts nothing: bound, then closed
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        load_engine(f"http://127.0.0.1:{port}")
    with pytest.raises(UsageError):
        load_engine("http://")
    with pytest.raises(UsageError, match="is not a URL"):  # urlsplit's ValueError was a traceback
        load_engine("http://[::1")
    res = runner.invoke(app, ["serve", "--engine", "http://127.0.0.1:1", "--port", "0"])
    assert res.exit_code == 2 and "is a server" in res.output


@pytest.mark.parametrize("answer", [b"<html>a web page</html>", b"[1, 2]",
                                    b'{"parameters": {"rapdeploy.config": {"string_value": "not json"}}}'])
def test_a_web_server_of_another_kind_is_a_one_line_usage_error(answer, monkeypatch):
    """A URL of an HTTP server that answers 200 with something other than the protocol's JSON objects (a web page, a
    JSON list, a config that is not a RAP config) crashed load_engine with a JSONDecodeError / AttributeError
    traceback; the HTTP client it had made was left open."""
    import http.server
    import threading
    import weakref

    import tritonclient.http as hc

    made = []  # weak references: a client kept alive to the test's teardown is finalised there, which gevent fails
    monkeypatch.setattr(hc.InferenceServerClient, "__init__", lambda self, *a, _init=hc.InferenceServerClient.__init__,
                        **kw: (made.append(weakref.ref(self)), _init(self, *a, **kw))[1])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_POST = do_GET

        def log_message(self, *args) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(UsageError, match="Open Inference Protocol server|not a RAP config") as err:
            load_engine(f"http://127.0.0.1:{web.server_address[1]}")
        assert made and all(ref() is None or ref()._closed for ref in made)  # the traceback keeps them alive
        del err
    finally:
        web.shutdown()
        web.server_close()
        thread.join(10)


def test_published_batch_sizes_fit_the_body_limit(local, micro_ort_engines):
    """A client that sends the video batch and ASA block the server publishes must not get 413: with a body limit
    smaller than 32 videos' frames (or 64 videos' re-rank tensors) the server publishes what fits, and the remote
    engine (verify, bench) splits its calls accordingly."""
    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.contract import NUMPY_DTYPES, read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread, warm_up
    from rap_deploy.engines.serving.service import MiB, ServeOptions, ServingService

    rng = np.random.default_rng(0)
    videos = 70  # more than the engine's ASA block (64) and its video batch (32)
    frames = rng.standard_normal((videos, 4, 3, 32, 32)).astype(np.float32)  # 48 KiB a video: 21 fit in 1 MiB
    mask = np.ones((videos, 4), np.float32)
    path = micro_ort_engines["fp32"]
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path), None,
                             ServeOptions(max_infer_body=MiB))
    warm_up(service)
    try:
        with ServerThread(create_app(service)) as server:
            remote = load_engine(server.url)
            try:
                got = remote.encode_video(frames, mask)
                want = local.encode_video(frames, mask)
                for g, w in zip(got, want, strict=True):
                    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
                text = local.encode_text(np.ones((2, 32), np.int32), np.full(2, 5, np.int32))
                np.testing.assert_allclose(remote.asa_similarity(text, *want[1:]),
                                           local.asa_similarity(text, *want[1:]), rtol=1e-5, atol=1e-5)
                assert remote.max_batch["video_encoder"] * frames[0].nbytes < MiB
                sent = remote.datatypes["asa_head"]  # the re-rank tensors travel in the server's dtypes (fp16)
                row = sum(np.dtype(NUMPY_DTYPES[sent[n]]).itemsize * w[0].size
                          for n, w in zip(rerank_tensors(True), want[1:], strict=True))
                assert remote.video_block * row < MiB
            finally:
                remote.close()
    finally:
        service.close()


def _large_video_body() -> tuple[bytes, bytes]:
    """``(JSON head, whole body)`` of a binary video_encoder request of two 4-frame 32-px videos (96 KiB: a large
    body)."""
    frames = np.zeros((2, 4, 3, 32, 32), np.float32)
    head = json.dumps({"inputs": [{"name": "frames", "datatype": "FP32", "shape": list(frames.shape),
                                   "parameters": {"binary_data_size": frames.nbytes}},
                                  {"name": "frame_mask", "datatype": "FP32", "shape": [2, 4],
                                   "parameters": {"binary_data_size": 32}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head, head + frames.tobytes() + np.ones((2, 4), np.float32).tobytes()


def test_large_inference_bodies_are_held_a_few_at_a_time(micro_ort_engines, monkeypatch):
    """Each large inference request read its whole body (up to --max-body-mb) and then waited for the engine, so
    concurrent clients could make the server hold any number of bodies at once; now at most max_infer_inflight
    large requests are read and run at a time, the others wait unread, and every one is answered."""
    import threading
    import time

    import rap_deploy.engines.serving.app as app_module
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread, warm_up
    from rap_deploy.engines.serving.service import ServeOptions, ServingService

    path = micro_ort_engines["fp32"]
    engine = SerialEngine(load_engine(path, threads=1))
    service = ServingService(engine, read_source(path), None, ServeOptions(max_infer_inflight=2))
    warm_up(service)
    gate, entered, bodies = threading.Event(), [], []
    encode, model, read = engine.inner.encode_video, service.model, app_module.read_body
    monkeypatch.setattr(engine.inner, "encode_video", lambda *a: (gate.wait(60), encode(*a))[1])
    monkeypatch.setattr(service, "model", lambda name: (entered.append(name), model(name))[1])

    async def counting_read(request, *args):
        bodies.append(request.url.path)
        return await read(request, *args)

    monkeypatch.setattr(app_module, "read_body", counting_read)
    head, body = _large_video_body()
    statuses: list[int] = []
    try:
        with ServerThread(create_app(service)) as server:
            def one() -> None:
                statuses.append(_request(server.url, "POST", "/v2/models/video_encoder/infer", body,
                                         {"Inference-Header-Content-Length": str(len(head))})[0])

            threads = [threading.Thread(target=one) for _ in range(6)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while len(entered) < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            held = len(bodies)
            gate.set()
            for t in threads:
                t.join(60)
    finally:
        gate.set()
        service.close()
    assert len(entered) == 6 and held == 2, (len(entered), held)
    assert statuses == [200] * 6


def test_a_url_file_that_cannot_be_written_is_a_one_line_error(micro_ort_engines, tmp_path):
    """--url-file under a path that is a file: the URL cannot be announced, so serve stops with exit 2 and one line
    naming it, instead of a thread's traceback and a server nobody can find running on."""
    import subprocess
    import sys

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cmd = [sys.executable, "-m", "rap_deploy.cli", "serve", "--engine", str(micro_ort_engines["fp32"]), "--threads",
           "1", "--no-library", "--port", "0", "--url-file", str(blocker / "url")]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"serve kept running: {exc.stderr!r}")
    assert res.returncode == 2 and "--url-file" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_stalled_body_cannot_hold_a_slot_for_ever(micro_ort_engines):
    """Large inference requests take one of max_infer_inflight slots while their body is read: a client that sends
    the head of one and then nothing gets 408 once no byte came for body_idle_timeout_s, and frees its slot for
    the others (else a few stalled clients would block every large request)."""
    import socket

    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread, warm_up
    from rap_deploy.engines.serving.service import ServeOptions, ServingService

    path = micro_ort_engines["fp32"]
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path), None,
                             ServeOptions(max_infer_inflight=1, body_idle_timeout_s=0.5))
    warm_up(service)
    head, body = _large_video_body()
    try:
        with ServerThread(create_app(service)) as server:
            u = urllib.parse.urlsplit(server.url)
            with socket.create_connection((u.hostname, u.port), timeout=120) as stalled:
                stalled.sendall(b"POST /v2/models/video_encoder/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body[:100])
                assert _request(server.url, "GET", "/healthz")[0] == 200  # its head has been read
                status = _request(server.url, "POST", "/v2/models/video_encoder/infer", body,
                                  {"Inference-Header-Content-Length": str(len(head))})[0]
                answer = stalled.recv(4096)
    finally:
        service.close()
    assert status == 200
    assert answer.startswith(b"HTTP/1.1 408") and b'"field":"body"' in answer, answer[:300]


def test_sizes_a_server_publishes_that_are_not_sizes_are_a_one_line_usage_error(micro_ort_engines, monkeypatch):
    """load_engine("http://…") read the ASA blocks and batch sizes a server publishes unchecked: an asa_blocks
    parameter that is not JSON was a JSONDecodeError traceback, one that is a list an AttributeError, a word a
    ValueError, and a negative max_batch_size an IndexError at the first encode_video; parameters as a list crashed
    reading them. Each is now a one-line usage error when connecting; so is model metadata whose tensors are not
    objects with a name and datatype (a TypeError / KeyError traceback), and a checkpoint parameter that is not
    JSON (verify's reference: a JSONDecodeError traceback) is no checkpoint named."""
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService

    path = micro_ort_engines["fp32"]
    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path))
    config = service.model_config
    cases = [("asa_blocks", "not json", "not a JSON object"), ("asa_blocks", "[1]", "not a JSON object"),
             ("asa_blocks", '{"queries": "many"}', "queries is 'many'"), ("asa_blocks", '{"videos": -1}', "videos"),
             ("max_batch_size", -3, "video_encoder max_batch_size is '-3'"), ("parameters", [1], "no rapdeploy.config")]
    metadata = service.metadata
    try:
        with ServerThread(create_app(service)) as server:
            for key, value, message in cases:
                def edited(model, key=key, value=value):
                    doc = config(model)
                    if key == "asa_blocks":
                        doc["parameters"]["rapdeploy.asa_blocks"] = {"string_value": value}
                    elif model.name == "video_encoder" or key == "parameters":
                        doc[key] = value
                    return doc

                monkeypatch.setattr(service, "model_config", edited)
                with pytest.raises(UsageError, match=message):
                    load_engine(server.url)
            monkeypatch.setattr(service, "model_config", config)
            for tensors in ([1, 2], [{"name": "frames"}], {"name": "frames"}):  # a TypeError / KeyError traceback
                monkeypatch.setattr(service, "metadata", lambda model, t=tensors: {**metadata(model), "inputs": t})
                with pytest.raises(UsageError, match="not lists of tensors"):
                    load_engine(server.url)
            monkeypatch.setattr(service, "metadata", metadata)
            service.parameters["rapdeploy.checkpoint"] = "not json"  # verify's reference: a JSONDecodeError traceback
            remote = load_engine(server.url)
            try:
                assert remote.manifest()["checkpoint"] == {}
            finally:
                remote.close()
    finally:
        service.close()


def test_serve_host_and_max_queue_reach_the_running_server(micro_ort_engines, tmp_path, monkeypatch):
    """The CLI's --host and --max-queue, through a running server: it listens where --host says (a loopback
    address, so it checks Host), and with --max-queue 1 a text request finding one queued already gets 503 naming
    the queue, the others their answer. The text encoder is held by a gate, so the queue fills deterministically."""
    import threading
    import time

    import uvicorn
    from test_serving_app import host_request

    from rap_deploy.engines.serving.service import ServingService

    servers, gate, url_file = [], threading.Event(), tmp_path / "url"
    gate.set()  # open for the warm-up
    encode = ServingService._encode_text

    class Recorded(uvicorn.Server):
        def __init__(self, config):
            super().__init__(config)
            servers.append(self)

    def gated(self, *inputs):
        assert gate.wait(60), "the test never opened the gate"
        return encode(self, *inputs)

    monkeypatch.setattr(uvicorn, "Server", Recorded)
    monkeypatch.setattr(ServingService, "_encode_text", gated)
    body = json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]},
                                  {"name": "eot", "datatype": "INT32", "shape": [1], "data": [2]}]}).encode()
    seen: dict = {}

    def drive() -> None:
        try:
            deadline = time.monotonic() + 120
            while not url_file.is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
            url = seen["url"] = url_file.read_text().strip()
            seen["foreign"] = host_request(url, "attacker.example")[0]

            def text(key: str) -> threading.Thread:
                t = threading.Thread(target=lambda: seen.__setitem__(key, _request(
                    url, "POST", "/v2/models/text_encoder/infer", body)), daemon=True)
                t.start()
                return t

            def wait_queue(requests: int, queued: int) -> None:  # the batcher's counters, until they say so
                while time.monotonic() < deadline:
                    batcher = json.loads(_request(url, "GET", "/stats")[1])["text_batcher"]
                    if (batcher["requests"], batcher["queued"]) == (requests, queued):
                        return
                    time.sleep(0.05)

            base = json.loads(_request(url, "GET", "/stats")[1])["text_batcher"]["requests"]  # the warm-up's
            gate.clear()
            first = text("first")
            wait_queue(base + 1, 0)  # taken by the batcher, held at the gate
            second = text("second")
            wait_queue(base + 2, 1)  # waiting: the queue is full
            seen["third"] = _request(url, "POST", "/v2/models/text_encoder/infer", body)
            gate.set()
            first.join(60)
            second.join(60)
        finally:
            gate.set()
            for server in servers:
                server.should_exit = True

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    res = runner.invoke(app, ["serve", "--engine", str(micro_ort_engines["fp32"]), "--no-library", "--threads", "1",
                              "--host", "127.0.0.1", "--port", "0", "--url-file", str(url_file), "--max-batch", "1",
                              "--max-queue", "1", "--shutdown-timeout", "10"])
    driver.join(60)
    assert res.exit_code == 0 and len(servers) == 1, res.output
    assert seen["url"].startswith("http://127.0.0.1:") and seen["foreign"] == 403, seen
    status, answer = seen["third"]
    assert status == 503 and json.loads(answer)["field"] == "queue" and "limit 1" in json.loads(answer)["error"]
    assert seen["first"][0] == seen["second"][0] == 200, seen




def ipv6_loopback_missing() -> str | None:
    """Why this machine cannot listen on the IPv6 loopback ``::1``, or ``None`` when it can."""
    import socket

    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"::1 cannot be bound here ({exc.strerror})"
    return None


def test_serve_listens_on_the_ipv6_loopback_written_with_or_without_brackets(micro_ort_engines):
    """`serve --host [::1]` (an IPv6 address as URLs write it) was refused: getaddrinfo knows no brackets ("--host
    [::1]: Name or service not known"). Both spellings now listen on ::1; the URL written and printed is bracketed,
    and the Host check (a loopback listener) answers the loopback names, not another site's."""
    from test_serving_app import host_request

    from rap_deploy.engines.serving.listen_socket import bind_socket, hosts_to_check, socket_url

    missing = ipv6_loopback_missing()
    if missing:
        print(f"skipped: this machine has no IPv6 loopback: {missing}")
        pytest.skip(f"this machine has no IPv6 loopback: {missing}")
    for host in ("::1", "[::1]", " [::1] "):
        with bind_socket(host, 0) as sock:
            assert socket_url(sock) == f"http://[::1]:{sock.getsockname()[1]}" and hosts_to_check(sock) == set()
    s = SpawnedServer(["--engine", str(micro_ort_engines["fp32"]), "--threads", "1", "--no-library",
                       "--host", "[::1]"])
    try:
        port = urllib.parse.urlsplit(s.url).port
        statuses = [host_request(s.url, h)[0] for h in (f"[::1]:{port}", f"localhost:{port}",
                                                        f"attacker.example:{port}")]
    finally:
        s.stop()
    assert s.url == f"http://[::1]:{port}" and statuses == [200, 200, 403], (s.url, statuses)
    assert f"rapdeploy serve: http://[::1]:{port} (" in s.output and f"Page: http://[::1]:{port}/ " in s.output, \
        s.output[-2000:]


class BoundAt:
    """What ``socket_url`` and ``banner`` read of a bound socket (a listener on every interface is not opened here:
    the tests bind loopback addresses only)."""

    def __init__(self, family: int, *name: object) -> None:
        self.family, self.name = family, name

    def getsockname(self) -> tuple:
        return self.name


@pytest.mark.parametrize(("where", "url"), [(("0.0.0.0", 8080), "http://127.0.0.1:8080"),
                                            (("::", 8080, 0, 0), "http://[::1]:8080")])
def test_a_server_on_every_interface_announces_an_address_a_browser_can_open(where, url):
    """`serve --host 0.0.0.0` printed (and wrote to --url-file) http://0.0.0.0:PORT, which browsers cannot open (and
    :: gave http://[::]:PORT). The URL is now the loopback address of the socket's family, and the banner says the
    server listens on every interface, so other machines use this one's address."""
    import socket
    import types

    from rap_deploy.engines.serving.listen_socket import listening_note, socket_url
    from rap_deploy.engines.serving.server import banner

    sock = BoundAt(socket.AF_INET6 if ":" in where[0] else socket.AF_INET, *where)
    service = types.SimpleNamespace(library=None, info={"backend": "onnxruntime", "precision": "fp32",
                                                        "device": "cpu"},
                                    batcher=types.SimpleNamespace(max_batch=32),
                                    options=types.SimpleNamespace(max_queue_delay_ms=2.0))
    line = banner(socket_url(sock), service, listening_note(sock))
    assert socket_url(sock) == url and line.startswith(f"rapdeploy serve: {url} (") and f"Page: {url}/ " in line
    assert f"listening on every interface ({where[0]})" in line and "this machine's address" in line, line
    loopback = BoundAt(socket.AF_INET, "127.0.0.1", 8080)
    assert "every interface" not in banner(socket_url(loopback), service, listening_note(loopback))


def test_serve_threads_reach_a_pytorch_engine(micro_checkpoint):
    """``serve --threads N`` set only ONNX Runtime's threads (the loader's), so a checkpoint served as the PyTorch
    engine ran on torch's default threads (every core) where ``search --threads N`` of the same engine runs N; serve
    now sets torch's too."""
    import torch

    from rap_deploy.engines.serving.server import build_service

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        service = build_service(str(micro_checkpoint), threads=1, default_library=False)
        try:
            assert torch.get_num_threads() == 1
        finally:
            service.close()
    finally:
        torch.set_num_threads(before)

"""``POST /search``, ``GET /library``, thumbnails and the page, served in a thread (uvicorn on 127.0.0.1, a free port)
over the micro fp32 ONNX Runtime engine and a real library of the synthetic test split (``rapdeploy index``)."""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.parse

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.engines.serving.app import create_app
from rap_deploy.engines.serving.server import ServerThread, warm_up
from rap_deploy.engines.serving.service import ServeOptions, ServingService


@pytest.fixture(scope="module")
def served(micro_ort_engines, synth_root, tmp_path_factory):
    """``(url, service, library, library folder)``: the app in a server thread over a library built with
    ``rapdeploy index``; the service and server are stopped afterwards."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.library import open_library

    path = micro_ort_engines["fp32"]
    frames = tmp_path_factory.mktemp("frames")
    lib_dir = tmp_path_factory.mktemp("served") / "msrvtt-test"
    res = CliRunner().invoke(app, ["index", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                                   str(path), "--out", str(lib_dir), "--cache-dir", str(frames), "--quiet"])
    assert res.exit_code == 0, res.output
    engine = SerialEngine(load_engine(path, threads=1))
    library = open_library(lib_dir, engine, cache_dir=frames)
    service = ServingService(engine, read_source(path), library, ServeOptions(max_batch=8, max_queue_delay_ms=20))
    warm_up(service)
    try:
        with ServerThread(create_app(service)) as server:
            yield server.url, service, library, lib_dir
    finally:
        service.close()
    assert not service.batcher.alive


def _request(url, method, path, body=None, headers=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def _search(url, **doc):
    status, _, data = _request(url, "POST", "/search", json.dumps(doc).encode(), {"Content-Type": "application/json"})
    return status, json.loads(data)


def test_search_equals_the_library_search(served, synth_root):
    url, service, library, _ = served
    from rap_deploy.data.datasets import load_split

    captions = load_split("msrvtt", synth_root, "test", max_frames=4).captions[:4]
    for q in captions:
        status, got = _search(url, query=q, top_k=5, top_m=6)
        assert status == 200, got
        want = library.search([q], top_k=5, top_m=6)[0]
        assert got["query"] == q and got["results"] == want["results"]
        assert [r["rank"] for r in got["results"]] == [1, 2, 3, 4, 5]
        assert {"text", "stage1", "rerank", "total"} <= set(got["timings_ms"]) and got["timings_ms"]["text"] > 0
    status, got = _search(url, query=captions[0])  # defaults: top_k 10, top_m 100
    assert status == 200 and len(got["results"]) == 10


def test_search_endpoint_equals_the_search_command(served, synth_root, micro_ort_engines):
    url, _, _, lib_dir = served
    from rap_deploy.data.datasets import load_split

    query = load_split("msrvtt", synth_root, "test", max_frames=4).captions[1]
    res = CliRunner().invoke(app, ["search", query, "--library", str(lib_dir), "--engine",
                                   str(micro_ort_engines["fp32"]), "--top", "5", "--top-m", "6", "--json"])
    assert res.exit_code == 0, res.output
    status, got = _search(url, query=query, top_k=5, top_m=6)
    assert status == 200 and got["results"] == json.loads(res.stdout)["results"]


def test_search_endpoint_warns_of_a_truncated_query_as_the_search_command_does(served, micro_ort_engines):
    """A query longer than the text context: ``rapdeploy search --json`` says so in ``warnings`` (and on stderr),
    but ``POST /search``, which the README says answers that object, dropped the warning and answered as if the
    whole query had been read; it now carries ``warnings`` too (without the CLI's query number)."""
    url, _, _, lib_dir = served
    query = " ".join(["red circle"] * 20)  # 40 tokens; the micro model reads 30
    res = CliRunner().invoke(app, ["search", query, "--library", str(lib_dir), "--engine",
                                   str(micro_ort_engines["fp32"]), "--top", "2", "--json"])
    assert res.exit_code == 0, res.output
    command = json.loads(res.stdout)
    assert command["warnings"] and "40 tokens" in command["warnings"][0], command
    status, got = _search(url, query=query, top_k=2)
    assert status == 200, got
    assert got["warnings"] == [w.replace("query 1 ", "query ", 1) for w in command["warnings"]], got
    assert got["results"] == command["results"]
    status, short = _search(url, query="a red circle", top_k=2)
    assert status == 200 and "warnings" not in short, short

def test_search_endpoint_times_as_the_search_command_does(served, micro_ort_engines):
    """``POST /search`` answered ``timings_ms.text`` and ``total`` unrounded (``3.732608001882909``) where ``rapdeploy
    search --json``, whose object the README says it answers, rounds every timing to the microsecond; both now do."""
    url, _, _, lib_dir = served
    res = CliRunner().invoke(app, ["search", "a red circle", "--library", str(lib_dir), "--engine",
                                   str(micro_ort_engines["fp32"]), "--top", "2", "--json"])
    assert res.exit_code == 0, res.output
    command = json.loads(res.stdout)["timings_ms"]
    status, got = _search(url, query="a red circle", top_k=2)
    assert status == 200, got
    assert set(got["timings_ms"]) == set(command)
    for timings in (command, got["timings_ms"]):
        assert {k: round(v, 3) for k, v in timings.items()} == timings, timings


def _floats(doc, path=""):
    """Every float in a JSON document, by its dotted path."""
    if isinstance(doc, dict):
        return {k: v for key, value in doc.items() for k, v in _floats(value, f"{path}.{key}").items()}
    return {path: doc} if isinstance(doc, float) else {}


def test_stats_rounds_seconds_and_ratios_as_search_rounds_its_timings(served):
    """``GET /stats`` answered ``uptime_s``, the batcher's ``engine_seconds``, ``mean_batch`` and
    ``rows_per_engine_second`` and the engine's seconds per graph unrounded (``uptime_s: 12.345678901234``) where
    ``/search`` rounds its timings to the microsecond (aa46ddf); seconds are now to the microsecond and ratios to
    3 decimals."""
    from rap_deploy.engines.serving.batcher import BatcherStats

    url, service, _, _ = served
    assert _search(url, query="a red circle", top_k=2)[0] == 200
    service.batcher.stats.engine_seconds += 1 / 3  # a total that is not a whole number of microseconds
    stats = json.loads(_request(url, "GET", "/stats")[2])
    service.batcher.stats.engine_seconds -= 1 / 3
    floats = {k: v for k, v in _floats(stats).items() if not k.startswith(".options.")}  # the options as given
    assert {".uptime_s", ".text_batcher.engine_seconds", ".text_batcher.mean_batch",
            ".text_batcher.rows_per_engine_second"} <= set(floats), floats
    assert any(k.startswith(".engine.") and k.endswith(".seconds") for k in floats), floats
    for key, value in floats.items():
        assert value == round(value, 3 if key.endswith(("mean_batch", "per_engine_second")) else 6), (key, value)
    counters = BatcherStats(rows=7, batches=3, engine_seconds=1 / 3).to_dict()
    assert (counters["engine_seconds"], counters["mean_batch"], counters["rows_per_engine_second"]) == \
        (0.333333, 2.333, 21.0)

def test_concurrent_searches_get_their_own_results(served):
    url, service, library, _ = served
    queries = [f"a small red circle moves {d}" for d in ("up", "left", "right", "down")] * 4
    expected = {q: library.search([q], top_k=3, top_m=4)[0]["results"] for q in set(queries)}
    before = service.batcher.stats.rows
    barrier = threading.Barrier(len(queries))
    answers: dict[int, tuple] = {}

    def one(i: int, q: str) -> None:
        barrier.wait(30)
        answers[i] = _search(url, query=q, top_k=3, top_m=4)

    threads = [threading.Thread(target=one, args=(i, q)) for i, q in enumerate(queries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == len(queries)
    for i, q in enumerate(queries):
        status, got = answers[i]
        assert status == 200 and got["results"] == expected[q]
    assert service.batcher.stats.rows - before == len(queries)
    assert service.batcher.stats.largest_batch <= 8


@pytest.mark.parametrize("body, status, field", [
    (b"{oops", 400, "body"),
    (b'"just a string"', 400, "body"),
    (json.dumps({"top_k": 3}).encode(), 422, "query"),
    (json.dumps({"query": ""}).encode(), 422, "query"),
    (json.dumps({"query": "   "}).encode(), 422, "query"),
    (json.dumps({"query": 42}).encode(), 422, "query"),
    (json.dumps({"query": "x" * 1001}).encode(), 422, "query"),
    (json.dumps({"query": "x" * (1 << 20)}).encode(), 413, "body"),  # a 1 MB query
    (json.dumps({"query": "red", "top_k": 10**9}).encode(), 422, "top_k"),
    (json.dumps({"query": "red", "top_k": 0}).encode(), 422, "top_k"),
    (json.dumps({"query": "red", "top_k": True}).encode(), 422, "top_k"),
    (json.dumps({"query": "red", "top_m": -1}).encode(), 422, "top_m"),
    (json.dumps({"query": "red", "topk": 3}).encode(), 422, "topk"),
    (json.dumps({"query": "a red\u0000circle"}).encode(), 422, "query"),  # what `rapdeploy search` refuses too
    (json.dumps({"query": "?! ..."}).encode(), 422, "query"),
])
def test_bad_searches_get_4xx_and_the_server_keeps_serving(served, body, status, field):
    url, _, _, _ = served
    got, ctype, data = _request(url, "POST", "/search", body, {"Content-Type": "application/json"})
    doc = json.loads(data)
    assert (got, doc["field"]) == (status, field), doc
    assert ctype == "application/json" and "Traceback" not in doc["error"]
    assert _request(url, "GET", "/readyz")[0] == 200
    assert _search(url, query="a red circle", top_k=1)[0] == 200


def test_library_thumbnails_and_page(served, synth_root):
    url, service, library, _ = served
    status, _, data = _request(url, "GET", "/library")
    info = json.loads(data)
    assert status == 200 and info["size"] == len(library) == 12
    assert info["server"]["engine"]["backend"] == "onnxruntime" and info["server"]["models"]["text_encoder"] == 8
    from rap_deploy.data.datasets import load_split

    vid = load_split("msrvtt", synth_root, "test", max_frames=4).videos[0].video_id
    status, ctype, img = _request(url, "GET", f"/thumbnails?count=3&video_id={urllib.parse.quote(vid)}")
    assert status == 200 and ctype == "image/jpeg" and img[:3] == b"\xff\xd8\xff"
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:  # a video re-encoded by `index --add` keeps its id: browsers must not show a cached strip
        conn.request("GET", f"/thumbnails?count=1&video_id={urllib.parse.quote(vid)}")
        assert conn.getresponse().getheader("Cache-Control") == "no-cache"
    finally:
        conn.close()
    import io

    from PIL import Image

    strip = Image.open(io.BytesIO(img))
    assert strip.height == 96 and strip.width == 3 * 96  # three square frames side by side
    assert _request(url, "GET", "/thumbnails?video_id=nope")[0] == 404
    assert _request(url, "GET", f"/thumbnails?video_id={vid}&count=99")[0] == 422
    assert _request(url, "GET", f"/thumbnails?video_id={vid}&count=x")[0] == 422
    status, ctype, page = _request(url, "GET", "/")
    html = page.decode()
    assert status == 200 and ctype.startswith("text/html")
    # the routes relative to the page's own URL (a gateway may serve it under a path prefix), never at the root
    assert 'id="query"' in html and 'fetch(base + "search"' in html and '"thumbnails?' in html
    assert not re.search(r"""["'`]/(search|library|thumbnails)""", html)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no external assets
    assert _search(url, query="a red circle", top_k=1)[0] == 200
    stats = json.loads(_request(url, "GET", "/stats")[2])
    assert stats["text_batcher"]["max_batch"] == 8 and stats["requests"]["/search 200"] >= 1


def test_a_library_updated_under_a_running_server_is_503_not_wrong_scores(served, micro_ort_engines, tmp_path):
    """`rapdeploy index` rewrote a shard after the server opened the library: /search answers 503 naming the fix
    (restart), /readyz turns not-ready; the server never mixes the new rows under the old ids."""
    import shutil

    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.library import open_library

    lib_dir = tmp_path / "lib"
    shutil.copytree(served[3], lib_dir)
    engine = SerialEngine(load_engine(micro_ort_engines["fp32"], threads=1))
    service = ServingService(engine, read_source(micro_ort_engines["fp32"]), open_library(lib_dir, engine),
                             ServeOptions(max_batch=2, max_queue_delay_ms=5))
    warm_up(service)
    try:
        with ServerThread(create_app(service)) as server:
            assert _search(server.url, query="a red circle", top_k=3)[0] == 200
            for shard in (lib_dir / "shards").iterdir():  # same bytes, new files: what a rebuild leaves behind
                for f in shard.iterdir():
                    data = f.read_bytes()
                    f.unlink()
                    f.write_bytes(data)
            status, body = _search(server.url, query="a red circle", top_k=3)
            assert status == 503 and "restart the server" in body["error"], body
            status, _, ready = _request(server.url, "GET", "/readyz")
            assert status == 503 and "replaced since this process opened" in json.loads(ready)["library_changed"]
            # the graphs do not read the library: the Open Inference Protocol side stays ready, so verify and bench
            # (load_engine("http://…")) and Triton-style readiness probes keep working
            assert _request(server.url, "GET", "/v2/health/ready")[0] == 200
            assert _request(server.url, "GET", "/v2/models/text_encoder/ready")[0] == 200
            from rap_deploy.engines.loader import load_engine as load

            load(server.url).close()
    finally:
        service.close()


def test_load_test_script_runs_against_the_server(served, tmp_path):
    from rap_deploy.engines.serving.loadtest import main

    url, _, _, _ = served
    out = tmp_path / "load.json"
    code = main(["--url", url, "--target", "search,text", "--clients", "4", "--seconds", "1.5",
                 "--warmup-seconds", "0.2", "--top-m", "4", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["target"] for r in report["runs"]] == ["search", "text"]
    for run in report["runs"]:
        assert run["errors"] == {} and run["ok"] == run["requests"] > 0
        assert run["p50_ms"] > 0 and run["p99_ms"] >= run["p50_ms"] and run["throughput_rps"] > 0
        assert run["server"]["text_rows"] >= run["ok"] and run["server"]["max_batch"] == 8
    assert main(["--url", "http://10.1.2.3:80", "--seconds", "1"]) == 2  # loopback only
    assert main(["--url", url, "--clients", "1000"]) == 2  # bounded


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A micro checkpoint of another model (top-2 selection) than the served library's."""
    from conftest import micro_config

    from rap_deploy.checkpoint import new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, _ = new_checkpoint(micro_config(asa_topk=2), BackboneSpec.parse("rap-micro", "none"), seed=0)
    path = tmp_path_factory.mktemp("other") / "other.pt"
    save_checkpoint(ckpt, path)
    return path


def test_the_workspace_library_is_served_by_default_and_can_be_left_out(served, other_model, tmp_path):
    """What the README's two commands hit in that order: `rapdeploy demo` leaves a library in the workspace, and a
    server of another model that was given no --library must say where that library came from and how to avoid it;
    --no-library serves the graphs only; --library with --no-library is refused before anything loads or listens;
    `rapdeploy search` says the same of a library it picked itself."""
    import shutil

    from rap_deploy.engines.serving.server import build_service
    from rap_deploy.errors import UsageError

    _, _, _, lib_dir = served
    workspace = tmp_path / "ws"
    shutil.copytree(lib_dir, workspace / "index" / "msrvtt-test")
    with pytest.raises(UsageError, match=r"built with another model.*No --library was given.*--no-library"):
        build_service(str(other_model), workspace=workspace, threads=1)
    service = build_service(str(other_model), workspace=workspace, threads=1, default_library=False)
    try:
        assert service.library is None
    finally:
        service.close()
    import socket

    with socket.socket() as taken:  # the contradiction is refused before serve tries to listen
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = CliRunner().invoke(app, ["serve", "--engine", str(other_model), "--library", str(lib_dir),
                                       "--no-library", "--port", str(port), "--workspace", str(workspace)])
    assert res.exit_code == 2 and "contradict" in res.output and "cannot listen" not in res.output, res.output
    res = CliRunner().invoke(app, ["search", "a red circle", "--engine", str(other_model), "--workspace",
                                   str(workspace)])
    assert res.exit_code == 2, res.output
    assert "No --library was given, so search opened the workspace's latest library" in res.output, res.output


def test_a_failed_start_stops_what_it_started(micro_ort_engines, monkeypatch):
    """A warm-up that fails closes the service it built (its batcher thread, library and engine); bad CLI values
    are usage errors before anything loads (the engine path here does not even exist)."""
    import rap_deploy.engines.serving.server as server
    from rap_deploy.engines.serving.service import ServingService

    closed = []
    monkeypatch.setattr(ServingService, "close", lambda self, _close=ServingService.close: (closed.append(self),
                                                                                           _close(self)))

    def failing_warm_up(service):
        raise RuntimeError("text encoder failed")

    def batcher_threads():
        return sum(t.name == "text-batcher" for t in threading.enumerate())

    monkeypatch.setattr(server, "warm_up", failing_warm_up)
    before = batcher_threads()  # the module's own server has one
    with pytest.raises(RuntimeError, match="text encoder failed"):
        server.build_service(str(micro_ort_engines["fp32"]), threads=1, default_library=False)
    assert len(closed) == 1 and not closed[0].batcher.alive and batcher_threads() == before
    for option, value in (("--max-body-mb", "nan"), ("--max-body-mb", "inf"), ("--max-body-mb", "0.01"),
                          ("--max-connections", "0"), ("--header-timeout", "nan"), ("--idle-timeout", "0"),
                          ("--log-level", "bogus"),
                          ("--max-queue-delay-ms", "inf"), ("--threads", "0"), ("--threads", str(10**11)),
                          ("--shutdown-timeout", "nan")):
        res = CliRunner().invoke(app, ["serve", "--engine", "/no/such/engine", "--port", "0", option, value])
        assert res.exit_code == 2 and option in res.output and "Traceback" not in res.output, res.output


def test_a_server_fault_is_a_500_without_traceback_and_counted(served, monkeypatch):
    """An unexpected exception is a one-line 500 (its traceback goes to the log) and /stats counts it: the
    catch-all handler answers from outside the counting middleware, which must count the 500 all the same."""
    url, service, library, _ = served

    def broken() -> dict:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(library, "describe", broken)
    before = service.stats()["requests"].get("/library 500", 0)
    status, ctype, data = _request(url, "GET", "/library")
    doc = json.loads(data)
    assert status == 500 and ctype == "application/json" and "RuntimeError" in doc["error"], doc
    assert "Traceback" not in doc["error"] and "disk on fire" not in doc["error"]
    assert service.stats()["requests"].get("/library 500", 0) == before + 1
    assert _request(url, "GET", "/readyz")[0] == 200


def test_load_test_out_that_cannot_be_written_is_refused_before_the_run(served, tmp_path, capsys):
    """--out under a path that is a file: exit 2 with one line before any load is sent, not a traceback after the
    whole run (its report lost)."""
    from rap_deploy.engines.serving.loadtest import main

    url, service, _, _ = served
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    before = service.batcher.stats.requests
    for out in (blocker / "load.json", tmp_path):
        assert main(["--url", url, "--target", "text", "--clients", "1", "--seconds", "0.2", "--warmup-seconds", "0",
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "Traceback" not in err
    assert service.batcher.stats.requests == before  # refused before the run


def test_a_slow_query_tokenization_does_not_hold_up_other_requests(served, monkeypatch):
    """Checking and tokenizing a query (BPE in Python: 0.2 s for a 1,000-letter word) ran on the event loop, so every
    other request waited behind it; now it runs in the thread pool and /healthz answers meanwhile."""
    url, service, _, _ = served
    entered, released, waited = threading.Event(), threading.Event(), []
    tokenize = service.tokenize

    def slow_tokenize(query):
        entered.set()
        waited.append(released.wait(10))  # True: released by the /healthz answer below, not by the timeout
        return tokenize(query)

    monkeypatch.setattr(service, "tokenize", slow_tokenize)
    statuses = []
    searching = threading.Thread(target=lambda: statuses.append(_search(url, query="a red circle", top_k=3)[0]))
    searching.start()
    try:
        assert entered.wait(30)
        health = _request(url, "GET", "/healthz")[0]
        released.set()
    finally:
        released.set()
        searching.join(60)
    assert health == 200 and waited == [True] and statuses == [200]


def test_a_compressed_search_body_is_inflated_within_the_search_limit(served):
    """A gzip ``/search`` body was read as raw bytes: "not valid JSON" (400). It is inflated, never past the search
    body limit (413), as inference bodies are."""
    import gzip

    url, _, library, _ = served
    doc = {"query": "a small red circle moves up", "top_k": 3, "top_m": 4}
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    status, _, data = _request(url, "POST", "/search", gzip.compress(json.dumps(doc).encode()), headers)
    assert status == 200, data
    assert json.loads(data)["results"] == library.search([doc["query"]], top_k=3, top_m=4)[0]["results"]
    bomb = gzip.compress(json.dumps({**doc, "pad": " " * (1 << 20)}).encode())  # 1 KiB that inflates to 1 MiB
    status, _, data = _request(url, "POST", "/search", bomb, headers)
    assert status == 413, data


def test_an_error_quoting_a_huge_header_is_bounded(served):
    """A refusal quoting what the client sent (an unknown Content-Encoding of 60,000 characters) answered with all
    of it; the answer's error is bounded as every other error answer is (answer_text)."""
    from rap_deploy.engines.serving.middleware import LOG_TEXT_CHARS

    url = served[0]
    headers = {"Content-Type": "application/json", "Content-Encoding": "x" * 60_000}
    status, _, data = _request(url, "POST", "/search", b"{}", headers)
    error = json.loads(data)["error"]
    assert status == 415 and len(error) < LOG_TEXT_CHARS + 40 and error.endswith("characters)"), (status, len(error))


def test_concurrent_searches_reach_the_re_rank_a_few_at_a_time(served, monkeypatch):
    """Each search reads its candidates' rows into a block of its own before it waits for the engine: 40
    concurrent searches held 40 blocks (2.9 GB on the demo's library). At most max_search_inflight run at once."""
    import time

    url, service, _, _ = served
    inner, running, peak, lock = service.search_embedding, [0], [0], threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)
            return inner(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(service, "search_embedding", counted)
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(_search(url, query="a red circle", top_m=4)[0]))
               for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses == [200] * 12 and peak[0] <= service.options.max_search_inflight, (statuses, peak)


def test_a_top_m_refused_for_memory_is_a_422_naming_top_m(served, monkeypatch):
    """The library refuses a re-rank deeper than memory (a UsageError about top_m); the server answered every
    library UsageError with field 'query'."""
    import psutil

    url, _, _, _ = served

    class Memory:
        available = 1024  # bytes: no candidate's rows fit

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    status, doc = _search(url, query="a red circle", top_k=3, top_m=5)
    assert (status, doc["field"]) == (422, "top_m") and "re-ranking 5 candidates" in doc["error"], doc
    monkeypatch.undo()
    assert _search(url, query="a red circle", top_k=3, top_m=5)[0] == 200


def test_the_readmes_route_table_names_every_field_search_answers(served):
    """The README's `POST /search` row listed five of a result's seven fields and four of the five timings (nor the
    echoed query): each key of an answer is now named there, so the row cannot fall behind the code unnoticed."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `POST /search` |"))
    status, doc = _search(served[0], query="a red circle", top_k=2, top_m=1)
    assert status == 200 and not doc["results"][-1]["reranked"], doc  # the second result is past top_m
    keys = {*doc, *doc["results"][0], *doc["timings_ms"]}
    assert {k for k in keys if f"`{k}`" not in row} == set(), row


@pytest.mark.parametrize("doc, says", [
    ({"query": "red", "top_k": "5"}, 'top_k must be an integer in [1, 100], got "5"'),
    ({"query": "red", "top_m": 5.0}, "top_m must be an integer in [1, 1000], got 5.0"),
    ({"query": "red", "top_k": True}, "got true"),
    ({"query": ["red"]}, 'query must be a string, got ["red"]'),
    ({"top_k": 3}, 'query is required: /search takes {"query": '),
])
def test_a_refused_search_field_is_shown_as_the_request_wrote_it(served, doc, says):
    """``"top_k": "5"`` was refused with 'top_k must be an integer in [1, 100], got 5', which reads as if 5 were out
    of range, and a body without a query with 'query must be a string'; the value is now shown as JSON and a missing
    query is named as missing."""
    status, answer = _search(served[0], **doc)
    assert status == 422 and says in answer["error"], answer


def test_serve_without_engine_runs_the_engine_that_built_the_library(served, tmp_path):
    """``rapdeploy serve --library LIB`` without ``--engine`` took the workspace's latest engine, where ``rapdeploy
    search`` takes the one that built the library: with no engine in the workspace it stopped ('no engine in …'),
    and with another model's engine built there since, it refused the library. It now serves the library with the
    engine that built it while that exists."""
    from rap_deploy.engines.serving.server import build_service

    url, running, _, lib_dir = served
    service = build_service(library=lib_dir, workspace=tmp_path / "empty-ws", threads=1)
    try:
        assert service.library is not None and len(service.library) == len(running.library)
        assert service.source.path == running.source.path  # the fp32 engine the library records
    finally:
        service.close()


def test_a_workspace_library_serve_cannot_read_still_says_where_it_came_from(served, micro_ort_engines, tmp_path):
    """Without --engine, serve reads the library's manifest for the engine that built it before the engine loads;
    a refusal there (a library of a newer rapdeploy in the workspace) lost what a refusal opening it says of a
    library nobody named: where it came from, --library and --no-library. It says them again, and a library named
    with --library is refused as before."""
    import json
    import shutil

    from rap_deploy.engines.serving.server import build_service
    from rap_deploy.errors import UsageError

    _, _, _, lib_dir = served
    workspace = tmp_path / "ws"
    shutil.copytree(micro_ort_engines["fp32"], workspace / "engines" / "onnxruntime-fp32")
    newer = workspace / "index" / "msrvtt-test"
    shutil.copytree(lib_dir, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(UsageError, match=r"has library format 99 \(written by rapdeploy .*\), newer than .*No "
                                         r"--library was given, so serve opened the workspace's latest library.*"
                                         r"--no-library") as err:
        build_service(workspace=workspace, threads=1)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match=r"has library format 99 \(written by rapdeploy .*\), newer than") as err:
        build_service(library=newer, workspace=workspace, threads=1)
    assert "No --library was given" not in str(err.value)


def test_serve_verify_quick_starts_without_hashing_the_store(served, micro_ort_engines, tmp_path):
    """The README's library integrity rules offer ``--verify quick`` for a fast start-up, but ``serve`` (the one
    command whose start-up it is) had no --verify: 'No such option', and it always hashed the whole re-rank store.
    ``serve --verify quick`` now opens the library as ``search --verify quick`` does: a changed re-rank shard is
    refused by the default full check and not read by the quick one; a bad mode is a usage error."""
    import shutil

    from rap_deploy.engines.serving.server import build_service
    from rap_deploy.errors import CheckFailedError

    copy = tmp_path / "lib"
    shutil.copytree(served[3], copy)
    tokens = next(copy.glob("shards/*/patch_tokens.npy"))
    data = bytearray(tokens.read_bytes())
    data[-1] ^= 0xFF
    tokens.write_bytes(bytes(data))
    engine = str(micro_ort_engines["fp32"])
    with pytest.raises(CheckFailedError, match="patch_tokens.npy"):
        build_service(engine, str(copy), ServeOptions(max_batch=8), threads=1)
    service = build_service(engine, str(copy), ServeOptions(max_batch=8), threads=1, verify="quick")
    try:
        assert service.library.describe()["verify"] == "quick"
    finally:
        service.close()
    res = CliRunner().invoke(app, ["serve", "--no-library", "--verify", "fast"])
    assert res.exit_code == 2 and "--verify must be one of full, quick, got 'fast'" in res.output, res.output

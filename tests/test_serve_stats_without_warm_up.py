"""``GET /stats`` counts clients' requests only: ``rapdeploy serve`` warms up the tokenizer and the text encoder before
it listens, and that warm-up showed as one text-batcher request (a batch of one row, engine seconds, an engine call
of ``text_encoder``) before any client had sent one, so a load test or a dashboard reading the counters of a fresh
server saw a request nobody made."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest


def _call(url: str, method: str, path: str, body: bytes | None = None) -> dict:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data[:500]
        return json.loads(data)
    finally:
        conn.close()


@pytest.fixture
def served(micro_ort_engines):
    """A service as ``rapdeploy serve`` builds it (engine loaded, warmed up; no library) behind a ServerThread."""
    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.server import ServerThread, build_service

    service = build_service(micro_ort_engines["fp32"], threads=1, default_library=False)
    try:
        with ServerThread(create_app(service)) as server:
            yield server.url
    finally:
        service.close()


def test_stats_of_a_fresh_server_count_no_warm_up(served):
    fresh = _call(served, "GET", "/stats")
    batcher = fresh["text_batcher"]
    assert (batcher["requests"], batcher["rows"], batcher["batches"], batcher["engine_seconds"],
            batcher["batch_sizes"]) == (0, 0, 0, 0.0, {}), batcher
    assert fresh["engine"] == {} and fresh["requests"] == {}, fresh
    body = json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]},
                                  {"name": "eot", "datatype": "INT32", "shape": [1], "data": [2]}]}).encode()
    _call(served, "POST", "/v2/models/text_encoder/infer", body)
    after = _call(served, "GET", "/stats")
    batcher = after["text_batcher"]
    assert (batcher["requests"], batcher["rows"], batcher["batches"], batcher["batch_sizes"]) == (1, 1, 1, {"1": 1})
    assert batcher["engine_seconds"] > 0 and after["engine"]["text_encoder"]["calls"] == 1, after
    assert set(after["engine"]) == {"text_encoder"}, after["engine"]
    assert after["requests"] == {"/stats 200": 1, "/v2/infer 200": 1}, after["requests"]

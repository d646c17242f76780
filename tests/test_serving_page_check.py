"""The search-page check (``python -m rap_deploy.engines.serving.page_check``) without Chromium: ``start_chromium`` is
replaced by a fake DevTools endpoint on 127.0.0.1 (``/json/list`` and a page's WebSocket) that answers the protocol
commands the check sends as Chromium does for a page of the given kind."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from rap_deploy.engines.serving import page_check

NOT_SEARCH_PAGE = "TypeError: Cannot read properties of null (reading 'textContent')"


class FakeChromium:
    """A DevTools endpoint in a thread. ``values`` maps a JavaScript expression to what it evaluates to in the open
    page; any other expression throws :data:`NOT_SEARCH_PAGE` there (the page lacks the element it reads).
    ``navigate_error`` is Chromium's ``errorText`` for a URL it cannot open."""

    def __init__(self, values: dict[str, Any], navigate_error: str | None = None) -> None:
        self.values, self.navigate_error = values, navigate_error
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def __enter__(self) -> FakeChromium:
        self.thread.start()
        assert self.started.wait(30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    def _run(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/json/list", self._targets)
        app.router.add_get("/devtools/page/1", self._page)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    async def _targets(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response([{"type": "page", "webSocketDebuggerUrl":
                                   f"ws://127.0.0.1:{self.port}/devtools/page/1"}])

    async def _page(self, request: Any) -> Any:
        from aiohttp import web

        ws = web.WebSocketResponse(max_msg_size=64 << 20)
        await ws.prepare(request)
        async for msg in ws:
            cmd = json.loads(msg.data)
            await ws.send_str(json.dumps({"id": cmd["id"], "result": self._answer(cmd)}))
            if cmd["method"] == "Page.navigate":
                await ws.send_str(json.dumps({"method": "Page.loadEventFired", "params": {}}))
        return ws

    def _answer(self, cmd: dict[str, Any]) -> dict[str, Any]:
        params = cmd.get("params", {})
        if cmd["method"] == "Page.navigate":
            return {"frameId": "1", **({"errorText": self.navigate_error} if self.navigate_error else {})}
        if cmd["method"] == "Page.captureScreenshot":
            return {"data": base64.b64encode(b"png").decode()}
        if cmd["method"] != "Runtime.evaluate":
            return {}
        if params["expression"] in self.values:
            return {"result": {"type": "object", "value": self.values[params["expression"]]}}
        return {"result": {"type": "object", "subtype": "error", "description": NOT_SEARCH_PAGE},
                "exceptionDetails": {"text": "Uncaught", "exception": {"description": NOT_SEARCH_PAGE}}}


class FakeProcess:
    """What ``start_chromium`` returns besides the port: a process the check stops."""

    def terminate(self) -> None:
        self.stopped = True

    def wait(self, timeout: float | None = None) -> int:
        return 0


def run_page_check(monkeypatch: pytest.MonkeyPatch, fake: FakeChromium, out: Path) -> int:
    monkeypatch.setattr(page_check, "start_chromium", lambda binary, profile, width, height: (FakeProcess(),
                                                                                              fake.port))
    return page_check.main(["--url", "http://127.0.0.1:9/", "--chromium", "chromium", "--out", str(out),
                            "--timeout", "10"])


def test_a_url_that_is_not_the_search_page_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    """The page's script threw (no search box, no status line) and the check died with a TypeError traceback
    (``json.loads(None)``); now exit 1 with one line saying the URL is not the search page."""
    with FakeChromium({page_check.DONE_JS: False, getattr(page_check, "FOCUS_JS", None): False}) as fake:
        assert run_page_check(monkeypatch, fake, tmp_path / "shot.png") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not the rapdeploy search page" in err, err
    assert not (tmp_path / "shot.png").exists()


def test_a_url_chromium_cannot_open_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    with FakeChromium({}, navigate_error="net::ERR_CONNECTION_REFUSED") as fake:
        assert run_page_check(monkeypatch, fake, tmp_path / "shot.png") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "net::ERR_CONNECTION_REFUSED" in err, err


def test_the_search_page_with_results_passes(monkeypatch, capsys, tmp_path):
    summary = {"results": 3, "status": "3 results", "error": False, "first": "video7"}
    with FakeChromium({page_check.FOCUS_JS: True, page_check.DONE_JS: True,
                       page_check.SUMMARY_JS: json.dumps(summary)}) as fake:
        assert run_page_check(monkeypatch, fake, tmp_path / "shot.png") == 0
    assert json.loads(capsys.readouterr().out)["first"] == "video7"
    assert (tmp_path / "shot.png").read_bytes() == b"png"


@pytest.mark.parametrize("option, value", [("--timeout", "nan"), ("--timeout", "0"), ("--width", "0"),
                                           ("--height", "100000")])
def test_out_of_range_options_are_refused_before_chromium_starts(monkeypatch, capsys, option, value):
    """``--timeout nan`` never timed out (every comparison with NaN is false): the wait for results ran forever."""
    monkeypatch.setattr(page_check, "start_chromium", lambda *a: pytest.fail("Chromium started"))
    assert page_check.main(["--url", "http://127.0.0.1:9/", "--chromium", "chromium", option, value]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and option in err, err


# ------------------------------------------------------------------------------------------------ the page's script
# The search page's script run in Node against a minimal DOM and scripted answers (tests/page_harness.js): what the
# page shows for each kind of answer, without a browser. The DOM there throws on innerHTML and document.write.
PAGE = Path(page_check.__file__).with_name("page.html")
HARNESS = Path(__file__).with_name("page_harness.js")
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js to run the page's script")
HOSTILE = "<img src=x onerror=alert(1)>/a&b?c#d"


def page_state(tmp_path: Path, search: list[dict[str, Any]], library: dict[str, Any] | None = None,
               prefix: str = "", **scenario: Any) -> dict[str, Any]:
    """What the page shows after its submits were answered with ``search`` (and ``/library`` with ``library``);
    the server's routes are under ``prefix`` (a gateway's path prefix: pass the ``page_url`` it serves too)."""
    answers = {f"{prefix}/search": search,
               f"{prefix}/library": [library or {"status": 200, "body": json.dumps({"size": 1})}]}
    spec = tmp_path / "scenario.json"
    spec.write_text(json.dumps({"answers": answers, **scenario}))
    done = subprocess.run(["node", str(HARNESS), str(PAGE), str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["errors"] == [], state["errors"]  # no uncaught exception, no HTML insertion
    return state


def results(*video_ids: str) -> dict[str, Any]:
    rows = [{"rank": i + 1, "video_id": v, "score": 0.5, "stage1_rank": i + 1} for i, v in enumerate(video_ids)]
    return {"status": 200, "body": json.dumps({"results": rows, "timings_ms": {"total": 1.0}})}


@needs_node
def test_the_page_shows_hostile_video_ids_as_text_and_encodes_them_in_urls(tmp_path):
    state = page_state(tmp_path, [results(HOSTILE)])
    assert state["results"] == [f"1{HOSTILE}score 0.5000stage-1 rank 1"] and state["state"] == "done"
    assert state["images"] == [{"src": "/thumbnails?count=4&video_id=" + urllib.parse.quote(HOSTILE, safe="()"),
                                "alt": f"frames of {HOSTILE}"}]


@needs_node
def test_an_older_search_answering_last_does_not_replace_the_newer_results(tmp_path):
    """Two searches in a row, the first answering after the second: the page showed the first query's results
    under the second query."""
    state = page_state(tmp_path, [{**results("old"), "delay_ms": 150}, {**results("new"), "delay_ms": 1}], submits=2)
    assert [r[1:4] for r in state["results"]] == ["new"] and state["status"].startswith("1 result ·"), state


@needs_node
@pytest.mark.parametrize("answer, shown", [
    # what the server says of a refused search, as it says it
    ({"status": 422, "body": json.dumps({"error": "query must not be empty", "field": "query"})},
     "query must not be empty"),
    ({"status": 503, "body": json.dumps({"error": "server busy: queue full; retry later", "field": "queue"})},
     "server busy: queue full; retry later"),
    # a gateway's own error pages (not JSON): the page said "request failed: SyntaxError: Unexpected token '<'"
    ({"status": 502, "status_text": "Bad Gateway", "body": "<html><body>Bad Gateway</body></html>"},
     "the server answered 502 Bad Gateway; retry in a moment"),
    ({"status": 413, "status_text": "Payload Too Large", "body": "<html>413</html>"},
     "the server answered 413 Payload Too Large (the query is too long)"),
    ({"status": 200, "body": "<html>a captive portal</html>"},
     "the server answered something that is not a search result"),
    ({"network_error": "Failed to fetch"}, "cannot reach the server: Failed to fetch"),
])
def test_a_refused_or_failed_search_says_why_in_one_line(tmp_path, answer, shown):
    state = page_state(tmp_path, [answer])
    assert (state["status"], state["status_error"], state["results"]) == (shown, True, []), state
    assert state["state"] != "done"


@needs_node
def test_an_empty_library_is_named_and_a_gateway_page_is_not_read_as_an_unreachable_server(tmp_path):
    """An empty library's search said '0 results · …'; a /library answered with a gateway's HTML page said
    'cannot reach the server' (the JSON parse failed, not the connection)."""
    empty = {"status": 200, "body": json.dumps({"results": [], "timings_ms": {}})}
    state = page_state(tmp_path, [empty], {"status": 502, "status_text": "Bad Gateway", "body": "<html>502</html>"})
    assert state["status"] == "no results: the library holds no videos" and not state["status_error"], state
    assert state["about"] == "the server answered 502 Bad Gateway; retry in a moment", state
    state = page_state(tmp_path, [results("v1")], {"status": 404, "body": json.dumps(
        {"error": "this server has no library; start it with `rapdeploy serve --library LIB`", "field": "library"})})
    assert state["about"].startswith("this server has no library") and state["results"], state


@needs_node
def test_a_video_without_frames_shows_a_note_not_a_broken_image(tmp_path):
    """A thumbnail answered 404 (the video's source file was deleted or cannot be decoded) left a broken-image icon,
    and page_check waited for it to load until its timeout."""
    broken = "/thumbnails?count=4&video_id=gone"
    state = page_state(tmp_path, [results("kept", "gone")], broken_images=[broken])
    assert [i["src"] for i in state["images"]] == ["/thumbnails?count=4&video_id=kept"], state
    assert state["results"][1].endswith("no frames to show (the video's file cannot be read on the server)"), state


@needs_node
def test_the_page_check_stops_waiting_once_a_search_answered_with_no_video(tmp_path):
    """Over an empty library the check waited its whole --timeout (60 s) for result rows that never come; its
    wait now ends when the page has answered, and it exits 1 (no results) at once."""
    empty = {"status": 200, "body": json.dumps({"results": [], "timings_ms": {}})}
    for answer, rows in ((empty, 0), (results("v1", "v2"), 2)):
        state = page_state(tmp_path, [answer], evaluate=[page_check.DONE_JS, page_check.SUMMARY_JS])
        done, summary = state["evaluated"]
        assert done is True and json.loads(summary)["results"] == rows, state


def test_the_page_names_no_route_at_the_hosts_root():
    """The page asked /library, /search and /thumbnails: behind a gateway serving it under a path prefix those
    missed the server. Its script names the routes relative to the page's own URL."""
    import re

    script = re.search(r"<script>(.*?)</script>", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL).group(1)
    assert re.findall(r"""["'`]/(?:search|library|thumbnails|stats|healthz|readyz|v2)""", script) == []


@needs_node
@pytest.mark.parametrize("page_url", ["https://gateway.example/rap/", "https://gateway.example/rap",
                                      "https://gateway.example/rap/?q=x", "http://127.0.0.1:8080/"])
def test_the_page_asks_its_own_server_under_a_gateways_path_prefix(tmp_path, page_url):
    """Behind a gateway serving the page under /rap/, its requests went to /library, /search and /thumbnails at the
    gateway's root (another application, or 404s: the page said the server answered 404)."""
    root = page_url.split("?")[0].rstrip("/") + "/"
    prefix = urllib.parse.urlsplit(root).path.rstrip("/")
    state = page_state(tmp_path, [results("v1")], prefix=prefix, page_url=page_url)
    assert state["fetched"] == [root + "library", root + "search"], state
    assert state["image_urls"] == [root + "thumbnails?count=4&video_id=v1"], state
    assert state["about"].startswith("1 videos") and state["state"] == "done", state

"""``rapdeploy serve --url-file``: the thread announcing the URL waits for uvicorn's ``started``, then writes the file.
A stop that began meanwhile did not stop it: with ``started`` and ``should_exit`` both set it still wrote the URL of a
server that no longer took connections, and a write that ended after the stop had waited its 5 s for the thread (a
slow disk) left the file behind for good, naming a stopped server (the stop's removal had run before there was
anything to remove). Driven through ``serve`` with the engine, the app and uvicorn's run replaced by stand-ins whose
flags the test sets, so the orders of events are fixed."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

import rap_deploy.atomic
import rap_deploy.engines.serving.app as serving_app
from rap_deploy.engines.serving import server as serving_server


def _service() -> SimpleNamespace:
    """What ``serve`` and its banner touch of a ServingService."""
    return SimpleNamespace(close=lambda: None, count=lambda label: None, library=None, info={},
                           batcher=SimpleNamespace(max_batch=1), options=SimpleNamespace(max_queue_delay_ms=1.0))


@pytest.fixture
def stand_ins(monkeypatch):
    monkeypatch.setattr(serving_server, "build_service", lambda *a, **k: _service())
    monkeypatch.setattr(serving_app, "create_app", lambda *a, **k: object())
    monkeypatch.setattr(serving_server, "ANNOUNCE_JOIN_S", 0.2, raising=False)  # the stop's wait for the thread
    writes: list[str] = []
    real_write = rap_deploy.atomic.write_text_atomic

    def recording_write(path, text, *args, **kwargs):
        writes.append(text)
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(rap_deploy.atomic, "write_text_atomic", recording_write)
    return monkeypatch, writes


def _announcer() -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name == "serve-announce")


def test_no_url_file_once_a_stop_began(stand_ins, tmp_path):
    """uvicorn started and was asked to stop before the announcing thread looked: nothing is written or printed."""
    monkeypatch, writes = stand_ins
    url_file, said = tmp_path / "url.txt", []

    def run(server, sock):
        server.started = server.should_exit = True  # a Ctrl-C right as it started
        _announcer().join(10)

    monkeypatch.setattr(serving_server, "_run_until_stopped", run)
    serving_server.serve(engine="e", port=0, url_file=url_file, echo=said.append, default_library=False)
    assert writes == [] and not url_file.exists()
    assert said == [], said  # no banner either


def test_a_url_file_written_after_the_stop_is_removed(stand_ins, tmp_path):
    """The write ends after serve's stop gave up waiting for it: the file must not outlive the server."""
    monkeypatch, writes = stand_ins
    url_file = tmp_path / "url.txt"
    writing, release = threading.Event(), threading.Event()
    real_write = rap_deploy.atomic.write_text_atomic

    def slow_write(path, text, *args, **kwargs):  # a disk that takes its time
        writing.set()
        assert release.wait(30)
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(rap_deploy.atomic, "write_text_atomic", slow_write)

    def run(server, sock):
        server.started = True
        assert writing.wait(30)  # the thread is inside the write; now the server stops
        run.announcer = _announcer()

    monkeypatch.setattr(serving_server, "_run_until_stopped", run)
    serving_server.serve(engine="e", port=0, url_file=url_file, echo=lambda m: None, default_library=False)
    release.set()  # the write ends after serve returned
    run.announcer.join(10)
    assert not run.announcer.is_alive()
    assert not url_file.exists(), url_file.read_text()


def test_a_running_server_still_writes_its_url_file_and_removes_it_on_stop(stand_ins, tmp_path):
    monkeypatch, writes = stand_ins
    url_file, seen, said = tmp_path / "url.txt", [], []

    def run(server, sock):
        server.started = True
        _announcer().join(10)
        seen.append(url_file.read_text())

    monkeypatch.setattr(serving_server, "_run_until_stopped", run)
    serving_server.serve(engine="e", port=0, url_file=url_file, echo=said.append, default_library=False)
    assert len(seen) == 1 and seen[0].startswith("http://127.0.0.1:") and seen == writes
    assert said and said[0].startswith("rapdeploy serve: http://127.0.0.1:")
    assert not url_file.exists()


def test_a_stop_right_after_the_write_leaves_the_banner_whole(stand_ins, tmp_path):
    """The stop closes the socket just as the thread is about to print its banner: the socket's part of the banner
    (listening_note) is read before the server runs, so the thread does not die on the closed socket."""
    monkeypatch, writes = stand_ins
    url_file, said, died = tmp_path / "url.txt", [], []
    stopped = threading.Event()
    real_banner = serving_server.banner

    def late_banner(url, service, note=""):
        if threading.current_thread().name == "serve-announce":
            assert stopped.wait(30)  # serve returned meanwhile: its socket is closed
        return real_banner(url, service, note)

    monkeypatch.setattr(serving_server, "banner", late_banner)
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))

    def run(server, sock):
        run.announcer = _announcer()
        server.started = True
        deadline = time.monotonic() + 30
        while not url_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    monkeypatch.setattr(serving_server, "_run_until_stopped", run)
    serving_server.serve(engine="e", port=0, url_file=url_file, echo=said.append, default_library=False)
    stopped.set()
    run.announcer.join(10)
    assert died == [] and not url_file.exists()

"""A Ctrl-C that stops ``rapdeploy serve`` before uvicorn's graceful stop (while the engine or library loads, the
long part of a start) still ends with the one line ``rapdeploy serve stopped`` and exit 130: serve's Ctrl-C has no
error line, so without it the command ended with nothing on stderr. A graceful stop says the line once."""

from __future__ import annotations

from types import SimpleNamespace

from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def test_ctrl_c_while_the_engine_loads_says_serve_stopped(monkeypatch):
    import rap_deploy.engines.serving.server as server

    def loading_until_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "build_service", loading_until_ctrl_c)
    res = runner.invoke(app, ["serve", "--no-library", "--port", "0"])
    assert res.exit_code == 130, res.output
    assert res.stderr.strip() == "rapdeploy serve stopped", res.stderr


def test_a_graceful_stop_then_ctrl_c_says_serve_stopped_once(monkeypatch):
    import rap_deploy.engines.serving.app as serving_app
    import rap_deploy.engines.serving.server as server

    closed: list[bool] = []
    service = SimpleNamespace(close=lambda: closed.append(True), count=None)
    hooks = {}

    def capturing_app(service, on_shutdown, allowed_hosts, stopping):
        hooks["shutdown"] = on_shutdown
        return object()

    def uvicorn_stopped_by_ctrl_c(srv, sock):  # uvicorn runs the shutdown hook, then re-raises SIGINT
        hooks["shutdown"]()
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "build_service", lambda *a, **k: service)
    monkeypatch.setattr(serving_app, "create_app", capturing_app)
    monkeypatch.setattr(server, "_run_until_stopped", uvicorn_stopped_by_ctrl_c)
    res = runner.invoke(app, ["serve", "--no-library", "--port", "0"])
    assert res.exit_code == 130, res.output
    assert res.stderr.strip() == "rapdeploy serve stopped", res.stderr
    assert closed


def test_sigterm_while_the_engine_loads_is_the_normal_stop_exit_0(monkeypatch):
    """README: SIGTERM is serve's normal stop, exit 0 and no error line; before uvicorn takes over its handling (while
    the engine or library loads) it was the other commands' 'error: terminated (SIGTERM); ...' and exit 143."""
    import rap_deploy.engines.serving.server as server
    from rap_deploy.cli.app import Terminated

    def loading_until_sigterm(*args, **kwargs):
        raise Terminated()  # what the CLI's SIGTERM handler raises in the main thread

    monkeypatch.setattr(server, "build_service", loading_until_sigterm)
    res = runner.invoke(app, ["serve", "--no-library", "--port", "0"])
    assert res.exit_code == 0, res.output
    assert res.stderr.strip() == "rapdeploy serve stopped", res.stderr

"""Ctrl-C on ``rapdeploy serve`` is its normal stop: exit 130 (the shell's), the server's own "rapdeploy serve stopped"
line, and no ``error: interrupted ...; nothing half-written is left`` line, which is for commands that write files."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def test_ctrl_c_stops_serve_with_130_and_no_error_line(monkeypatch):
    import rap_deploy.engines.serving.server as server

    def served_until_ctrl_c(*args, **kwargs):
        # as uvicorn does: a graceful shutdown (the service closes and says so), then SIGINT re-raised
        print("rapdeploy serve stopped", file=sys.stderr)
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "serve", served_until_ctrl_c)
    res = runner.invoke(app, ["serve", "--no-library", "--port", "0"])
    assert res.exit_code == 130, res.output
    assert "rapdeploy serve stopped" in res.stderr
    assert "error:" not in res.stderr and "half-written" not in res.stderr, res.stderr


def test_ctrl_c_on_a_file_writing_command_still_says_what_was_kept(monkeypatch):
    """The error line stays for the other commands: only serve's stop is not an error."""
    import rap_deploy.engines.serving.triton_repo as triton_repo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(triton_repo, "triton_repo", interrupted)
    res = runner.invoke(app, ["triton-repo", "--out", "repo"])
    assert res.exit_code == 130, res.output
    assert "error: interrupted (Ctrl-C); finished files are kept" in res.stderr

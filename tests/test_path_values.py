"""Path values checked for every command before it runs (``cli.app``): a URL typed where a file or folder belongs,
which a Path reads as the relative folders ``./http:/...``, is refused in one line with exit 2 naming the option as
typed, the URL and the fix; options that take a URL (``--engine http://HOST:PORT``) are strings and stay accepted."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()
GENERAL = "takes a path on this machine"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "workspace"))
    monkeypatch.delenv("RAPDEPLOY_DATA", raising=False)


def _line(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.parametrize("args, option, url", [
    (["export", "m.pt", "--out", "http://h:1/x"], "--out", "http://h:1/x"),
    (["build-engine", "--out", "http://h:1/x"], "--out", "http://h:1/x"),
    (["verify", "--dataset", "msrvtt", "--out", "https://h/report"], "--out", "https://h/report"),
    (["bench", "--out", "http://h:1/x"], "--out", "http://h:1/x"),
    (["train", "--dataset", "msrvtt", "--resume", "s3://bucket/run"], "--resume", "s3://bucket/run"),
    (["info", "gs://bucket/m.pt"], "CHECKPOINT", "gs://bucket/m.pt"),
    (["index", "--out", "s3://bucket/lib"], "--out", "s3://bucket/lib"),  # a scheme index's own check leaves
])
def test_a_url_typed_as_a_path_is_refused_naming_the_option(tmp_path, args, option, url):
    """export/build-engine/verify/bench --out URL wrote into ./http:/h:1/x (a Path folds the //), and the other
    Path options read from such a folder; now exit 2 before anything runs, and no ./http: folder."""
    result = runner.invoke(app, args)
    line = _line(result)
    assert result.exit_code == 2, line
    assert f"{option} {url} is a URL, but {option} {GENERAL}" in line and "download" in line, line
    assert not any(p.name.endswith(":") for p in tmp_path.iterdir()), list(tmp_path.iterdir())


@pytest.mark.parametrize("args, own_words", [
    (["index", "--out", "http://h:1/lib"], "is a server's URL, not a library folder"),
    (["search", "cat", "--library", "http://h:1"], "is a server's URL, not a library folder"),
    (["index", "--videos", "https://host/clips"], "is a URL; index reads video files on this machine"),
    (["triton-repo", "--out", "http://triton:8000"], "triton-repo writes the model repository into a folder"),
])
def test_commands_with_their_own_url_refusal_keep_it(args, own_words):
    result = runner.invoke(app, args)
    line = _line(result)
    assert result.exit_code == 2 and own_words in line and GENERAL not in line, line


def test_an_engine_url_is_not_taken_for_a_path(tmp_path):
    """--engine takes http://HOST:PORT (a running `rapdeploy serve`): the Path check must leave it to the command."""
    result = runner.invoke(app, ["search", "cat", "--library", str(tmp_path / "lib"), "--engine",
                                 "http://127.0.0.1:9"])
    line = _line(result)
    assert result.exit_code == 2 and GENERAL not in line and "lib does not exist" in line, line


@pytest.mark.parametrize("args, option", [
    (["search", "cat", "--library", ""], "--library"),
    (["search", "cat", "--library="], "--library"),
    (["export", "", "--out", "{tmp}/e"], "CHECKPOINT"),
    (["build-engine", "--out", ""], "--out"),
    (["train", "--dataset", "msrvtt", "--data-root", ""], "--data-root"),
])
def test_an_empty_path_is_refused_naming_the_option(tmp_path, args, option):
    """search --library "" (an unset shell variable) was read as the current folder, and the refusal then said to
    build a library with `--out .`: an empty path value is refused, exit 2, naming the option as typed."""
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    line = _line(result)
    assert result.exit_code == 2 and f'{option} is empty ("")' in line and "build one" not in line, line


def test_a_dot_is_still_the_current_folder(tmp_path):
    result = runner.invoke(app, ["search", "cat", "--library", "."])
    line = _line(result)
    assert result.exit_code == 2 and "is empty" not in line and "has no manifest.json" in line, line

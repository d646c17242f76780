"""Only a path the user typed starting with ``~`` is home-expanded (``cli.app._with_home_expanded``): ``./~/x`` is the
folder named ``~`` under the current one, where older versions wrote ``--out=~/x``. A Path folds ``./~/x`` to ``~/x``
before the command sees it, so ``./~/m.pt`` was read from, and written to, ``$HOME/m.pt``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rap_deploy.cli import app

cli_app = importlib.import_module("rap_deploy.cli.app")  # the module: rap_deploy.cli.app is the Typer app itself
runner = CliRunner()


@pytest.fixture
def home_and_cwd(tmp_path, monkeypatch) -> tuple[Path, Path]:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "workspace"))
    monkeypatch.chdir(cwd)
    return home, cwd


def _init(out: str):
    result = runner.invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", f"--out={out}"])
    assert result.exit_code == 0, (result.exception, result.output)


def test_dot_slash_tilde_is_the_folder_named_tilde_under_the_current_one(home_and_cwd):
    home, cwd = home_and_cwd
    _init(f"{cwd}/~/old.pt")  # what an older version wrote for --out=~/old.pt
    _init("./~/new.pt")
    assert (cwd / "~" / "new.pt").is_file() and not (home / "new.pt").exists()
    info = runner.invoke(app, ["info", "./~/old.pt"])
    assert info.exit_code == 0 and "does not exist" not in info.output, info.output
    _init("~/home.pt")  # typed with ~: still the home folder
    assert (home / "home.pt").is_file() and not (cwd / "~" / "home.pt").exists()


def test_a_repeated_path_option_is_expanded_item_by_item_as_typed(home_and_cwd, monkeypatch):
    home, cwd = home_and_cwd
    own = typer.Typer()
    monkeypatch.setattr(cli_app, "app", own)  # the probe joins an app of its own, not rapdeploy's
    seen: list[Path] = []

    def probe(video: list[Path] = typer.Option(..., "--video")) -> None:
        seen.extend(video)

    cli_app.command("probe")(probe)
    result = runner.invoke(own, ["--video", "./~/a.mp4", "--video", "~/b.mp4", "--video", "c.mp4"])
    assert result.exit_code == 0, (result.exception, result.output)
    assert seen == [cwd / "~" / "a.mp4", home / "b.mp4", Path("c.mp4")]


def test_a_list_files_dot_slash_tilde_line_is_the_folder_named_tilde_beside_the_list(home_and_cwd):
    """A list file's line went through user_path as a string, which a Path folds from ./~/v.mp4 to ~/v.mp4: it was
    read from $HOME/v.mp4. Only a line written starting with ~ is under the home folder."""
    from rap_deploy.library.sources import list_source

    home, cwd = home_and_cwd
    lists = cwd / "lists"
    (lists / "~").mkdir(parents=True)
    (lists / "videos.txt").write_text("./~/v.mp4\n~/w.mp4\n", encoding="utf-8")
    paths = {v.video_id: v.path for v in list_source("lists/videos.txt").videos}
    assert paths == {"~/v": (lists / "~" / "v.mp4").resolve(), "~/w": (home / "w.mp4").resolve()}


@pytest.mark.parametrize("variable", ["RAPDEPLOY_HOME", "RAPDEPLOY_DATA"])
def test_an_environment_variables_dot_slash_tilde_is_the_folder_named_tilde(home_and_cwd, monkeypatch, variable):
    """RAPDEPLOY_HOME=./~/ws and RAPDEPLOY_DATA=./~/data (strings, expanded by user_path) were read as $HOME/ws and
    $HOME/data; the folder is now ./~/ws (absolute, so no later step takes it for the home folder again)."""
    from rap_deploy.data.datasets import load_split
    from rap_deploy.workspace import data_root, workspace_root

    home, cwd = home_and_cwd
    (home / "x").mkdir()
    (cwd / "~" / "x").mkdir(parents=True)
    monkeypatch.setenv(variable, "./~/x")
    if variable == "RAPDEPLOY_HOME":
        assert workspace_root() == (cwd / "~" / "x").resolve()
        return
    assert data_root(None) == cwd / "~" / "x"
    with pytest.raises(Exception, match=r"~/x") as raised:  # an empty folder: no annotation files
        load_split("msrvtt", data_root(None), "test")
    assert str(home) + "/x" not in str(raised.value), str(raised.value)

"""Paths the user types with ``~``: a ``~user`` that names no user here (the shell leaves such a word as it is, so
it reaches rapdeploy) is refused in one line with exit 2 naming the option and the value, never a traceback
(``Path.expanduser`` raises a bare RuntimeError there)."""

from __future__ import annotations

import pwd

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.errors import UsageError
from rap_deploy.workspace import user_path

NO_USER = "rapdeploy_no_such_user"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_such_user():
    try:
        pwd.getpwnam(NO_USER)
    except KeyError:
        return
    pytest.skip(f"this machine has a user named {NO_USER}")


def _refused_naming(result, option: str, value: str) -> None:
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and not isinstance(result.exception, RuntimeError), (result.exception, text)
    assert f"{option} {value}: ~{NO_USER} names no user on this machine" in text, text
    assert "write the full path" in text and "Traceback" not in text, text


@pytest.mark.parametrize("args, option", [
    (["info", "--clip", "rap-micro", "--pretrained", f"~{NO_USER}/clip.pt"], "--pretrained"),
    (["init", "--clip", "rap-micro", "--pretrained", f"~{NO_USER}/clip.pt", "--out", "{tmp}/m.pt"], "--pretrained"),
    (["train", "--dataset", "msrvtt", "--data-root", "{tmp}", "--clip", "rap-micro", "--pretrained",
      f"~{NO_USER}/clip.pt", "--out", "{tmp}/run", "--quiet"], "--pretrained"),
    (["train", "--dataset", "msrvtt", "--data-root", f"~{NO_USER}/data", "--clip", "rap-micro", "--out",
      "{tmp}/run", "--quiet"], "--data-root"),
    (["data-check", "--dataset", "msrvtt", "--data-root", f"~{NO_USER}/data"], "--data-root"),
    (["search", "hello", "--library", f"~{NO_USER}/lib"], "--library"),
    (["index", "--videos", f"~{NO_USER}/videos", "--out", "{tmp}/lib"], "--videos"),
    (["bench", "--engine", f"~{NO_USER}/engine"], "--engine"),
])
def test_a_tilde_user_that_names_no_user_is_a_usage_error_naming_the_option(args, option, tmp_path):
    """Each of these ended in RuntimeError('Could not determine home directory.') and a traceback (exit 1)."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    value = args[args.index(option) + 1]
    _refused_naming(runner.invoke(app, args), option, value)


def test_a_list_file_line_with_an_unknown_tilde_user_names_the_file_and_line(tmp_path):
    from rap_deploy.library.sources import list_source

    listed = tmp_path / "videos.txt"
    listed.write_text(f"# videos\n~{NO_USER}/a.mp4\n")
    with pytest.raises(UsageError, match=f"list file {listed} line 2: ~{NO_USER}/a.mp4: ~{NO_USER} names no user"):
        list_source(listed)


def test_tilde_without_a_known_home_is_a_usage_error(monkeypatch):
    """``~`` alone: with HOME unset and no user database entry, Path.expanduser raises the same RuntimeError."""
    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(UsageError, match="--workspace ~/out: no home folder is known for ~ here .*set HOME"):
        user_path("~/out", "--workspace")


def test_a_known_tilde_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_path("~/clip.pt", "--pretrained") == tmp_path / "clip.pt"
    assert user_path("plain/clip.pt", "--pretrained").as_posix() == "plain/clip.pt"


def test_a_path_option_given_as_option_equals_tilde_is_written_under_home_not_a_folder_named_tilde(tmp_path,
                                                                                                 monkeypatch):
    """The shell leaves ``--out=~/m.pt`` as it is; init used the path as given and wrote ./~/m.pt. Every path a
    command is given now has its ~ expanded (cli.app.command), an unknown ~user refused naming the option."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    result = runner.invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--out=~/m.pt"])
    assert result.exit_code == 0, (result.exception, result.output)
    assert (home / "m.pt").is_file() and not (cwd / "~").exists()
    _refused_naming(runner.invoke(app, ["info", f"~{NO_USER}/m.pt"]), "CHECKPOINT", f"~{NO_USER}/m.pt")
    _refused_naming(runner.invoke(app, ["init", "--clip", "rap-micro", f"--out=~{NO_USER}/m.pt"]), "--out",
                    f"~{NO_USER}/m.pt")
    assert not (cwd / f"~{NO_USER}").exists()

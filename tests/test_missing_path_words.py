"""A path that a symbolic link hides was reported as missing: `rapdeploy info a.pt` with a.pt a link loop said
"checkpoint a.pt does not exist" (Path.exists() is False for a loop and for a dangling link), sending the user to
look for a file that is there. Every command's missing-path message now says which it is; and
`pretrain-backbone --data-root FILE` said "cannot access FILE/stills: Not a directory ... (or pass another --out)",
an option that was not the problem."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.safe_paths import absent


@pytest.fixture()
def links(tmp_path):
    os.symlink("b.pt", tmp_path / "a.pt")
    os.symlink("a.pt", tmp_path / "b.pt")
    os.symlink("nowhere.pt", tmp_path / "dangling.pt")
    os.symlink("d2", tmp_path / "d1")
    os.symlink("d1", tmp_path / "d2")
    return tmp_path


def test_absent_says_how_a_path_is_missing(links):
    assert absent(links / "missing.pt") == "does not exist"
    assert absent(links / "dangling.pt") == "is a symbolic link to nowhere.pt, which does not exist"
    loop = "cannot be reached: a symbolic link on its way leads back to itself"
    assert absent(links / "a.pt") == loop
    assert absent(links / "d1" / "inside.pt") == loop  # the loop is a folder above it
    assert absent("bad\0name") == "does not exist"


@pytest.mark.parametrize("args", [
    ["info", "{root}/a.pt"],
    ["export", "{root}/a.pt", "--out", "{root}/exported"],
    ["data-check", "--dataset", "msrvtt", "--data-root", "{root}/d1"],
    ["bench", "--engine", "{root}/d1"],
    ["search", "--library", "{root}/d1", "a red circle"],
], ids=["info", "export", "data-check", "bench", "search"])
def test_commands_say_a_link_loop_rather_than_does_not_exist(links, args):
    res = CliRunner().invoke(app, [a.format(root=links) for a in args])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, text
    assert "a symbolic link on its way leads back to itself" in text and "does not exist" not in text, text


def test_a_dangling_checkpoint_link_names_its_target(links):
    res = CliRunner().invoke(app, ["info", str(links / "dangling.pt")])
    assert res.exit_code == 2 and "is a symbolic link to nowhere.pt, which does not exist" in res.output, res.output


def test_pretrain_backbone_refuses_a_file_as_its_stills_folder_before_any_work(tmp_path):
    data_root = tmp_path / "afile"
    data_root.write_text("x")
    out = tmp_path / "bb.safetensors"
    res = CliRunner().invoke(app, ["pretrain-backbone", "--data-root", str(data_root), "--epochs", "1",
                                   "--train-stills", "4", "--test-stills", "2", "--out", str(out), "--quiet"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and f"--data-root {data_root} is a file; pass a folder" in text, text
    assert "--out" not in text and not out.exists()

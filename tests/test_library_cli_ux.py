"""``rapdeploy index`` / ``search`` as a user meets them: paths of the wrong kind, the engine an update runs with,
and what an interrupted build says (each a one-line message with its exit code, driven through the CLI)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


@pytest.mark.parametrize("option", ["--videos", "--list"])
def test_a_path_of_the_other_kind_is_named_as_such(tmp_path, micro_checkpoint, option):
    """``--videos clip.mp4`` said 'video folder clip.mp4 does not exist' and ``--list DIR`` 'list file DIR does not
    exist', though both exist: the message now says what the path is and which option takes it."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00")
    given, other = (clip, "--list FILE") if option == "--videos" else (tmp_path, "--videos DIR")
    res = runner.invoke(app, ["index", option, str(given), "--out", str(tmp_path / "lib"), "--engine",
                              str(micro_checkpoint)])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert "\n" not in line and "does not exist" not in line, line
    assert f"{option} {given} is a {'file' if option == '--videos' else 'folder'}" in line and other in line

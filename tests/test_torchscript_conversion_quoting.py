"""The conversion command printed for a TorchScript --pretrained file (99d5328) works when pasted into a shell,
whatever the file's path holds."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.cli import app


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to run the printed command")
def test_the_printed_conversion_runs_in_a_shell_for_a_path_with_quotes_and_dollars(tmp_path):
    """The command put the path into '...' inside a shell's "...": for a folder named o'brien $HOME (a quote, a $ and
    a space) the pasted line failed with a Python syntax error and the shell expanded $HOME, and --pretrained PATH
    was given unquoted. Now each special character is a \\u escape in the Python literal and --pretrained is
    shell-quoted: bash runs the line as printed and writes the state dict where --pretrained then points."""
    folder = tmp_path / "o'brien $HOME `x` \"q\" !"
    folder.mkdir()
    weights = folder / "ViT-B-32.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated; OpenAI's file is one such archive all the same
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(weights))
    result = CliRunner().invoke(app, ["init", "--clip", "rap-micro", "--pretrained", str(weights),
                                      "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split("\n", 1)[0].split())
    command = said.split("convert it once: ", 1)[1].split(" and pass --pretrained ", 1)[0]
    assert command.startswith('python -c "')
    subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -W ignore {command[len('python '):]}"], check=True,
                   cwd=tmp_path)
    pretrained = shlex.split(said.split(" and pass --pretrained ", 1)[1])[0]
    assert pretrained == str(folder / "ViT-B-32.state_dict.pt")
    state = torch.load(pretrained, weights_only=True)
    assert sorted(state) == ["bias", "weight"]

"""bceb7f0's refusal of CLIP weights held under a prefix named the command's output file by the prefix itself
(``path.with_name(f"{name}.{prefix}.pt")``) and passed the prefix to the command as a Path: a prefix holding a '/'
(names are any text: 'encoder/clip.') made with_name raise ValueError, so init ended in a traceback (exit 1, nothing
on stderr) instead of its one line, and './x.' was both a ValueError and, as a Path, 'x.', a filter matching no
name. The file is now named for the prefix in file-name characters, and the filter is the prefix as stored."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.model.clip_loader import BackboneSpec, load_clip


@pytest.mark.parametrize(("prefix", "tag"), [("encoder/clip.", "encoder_clip"), ("./x.", "_x"),
                                             ("it's $HOME `x`.", "it_s_HOME_x_")])
def test_a_prefix_of_any_text_is_refused_with_a_conversion_that_loads(tmp_path, prefix, tag):
    clip = load_clip(BackboneSpec.parse("rap-micro", "none")).state_dict()
    weights = tmp_path / "run" / "pytorch_model.bin"
    weights.parent.mkdir()
    torch.save({f"{prefix}{k}": v for k, v in clip.items()}, weights)
    args = ["init", "--clip", "rap-micro", "--frames", "4", "--out", str(tmp_path / "m.pt"), "--pretrained"]
    result = CliRunner().invoke(app, [*args, str(weights)])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"holds every tensor of rap-micro under the prefix {prefix!r}" in lines[0], lines
    converted = weights.with_name(f"pytorch_model.bin.{tag}.pt")
    assert lines[0].endswith(f" and pass --pretrained {converted}"), lines[0]
    conversion = lines[0].split('python -c "', 1)[1].split('" and pass', 1)[0]
    subprocess.run(["bash", "-c", f'"$0" -W ignore -c "{conversion}"', sys.executable], check=True)
    assert set(torch.load(converted, weights_only=True)) == set(clip)
    assert CliRunner().invoke(app, [*args, str(converted)]).exit_code == 0

"""A checkpoint of a model built on CLIP (CLIP4Clip's pytorch_model.bin.N holds CLIP's tensors as 'clip.<name>') given
to ``train --checkpoint`` is refused with 'make a checkpoint on them with `rapdeploy init --clip NAME --pretrained
FILE`'; that init then said only that the weights lack every key of the model and hold as many it does not have:
'pass that model's weights, or the --clip they were trained for', a dead end, though the model's every tensor is in
the file. The refusal now names the prefix and the one-line command that saves the tensors without it, and the file
that command writes loads."""

from __future__ import annotations

import torch
from conftest import follow_suggested_conversion
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.model.clip_loader import BackboneSpec, load_clip


def test_clip_weights_under_a_prefix_are_refused_with_the_conversion_that_loads(tmp_path):
    clip = load_clip(BackboneSpec.parse("rap-micro", "none")).state_dict()
    weights = tmp_path / "clip4clip run" / "pytorch_model.bin.2"
    weights.parent.mkdir()
    torch.save({**{f"clip.{k}": v for k, v in clip.items()}, "frame_position_embeddings.weight": torch.zeros(12, 32)},
               weights)
    result = CliRunner().invoke(app, ["init", "--clip", "rap-micro", "--pretrained", str(weights), "--frames", "4",
                                      "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: backbone weights file {weights} "), result.stderr
    said = lines[0]
    converted = weights.with_name("pytorch_model.bin.2.clip.pt")
    assert "holds every tensor of rap-micro under the prefix 'clip.'" in said, said
    assert said.endswith(f" and pass --pretrained '{converted}'"), said
    assert not (tmp_path / "m.pt").exists()
    follow_suggested_conversion(said, converted, tmp_path / "m.pt")

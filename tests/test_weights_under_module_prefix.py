"""A checkpoint saved from a ``DistributedDataParallel`` model built on CLIP holds CLIP's tensors as
'module.clip.<name>'. open_clip (and the shape read behind init's refusal) takes off 'module.', so init advised
saving the tensors under 'clip.' without that prefix, with a command whose key filter (``k.startswith('clip.')``)
matched none of the file's names: it saved an empty file. The refusal now names the prefix as stored and its
command saves every tensor, which init then loads."""

from __future__ import annotations

import torch
from conftest import run_suggested_conversion
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.model.clip_loader import BackboneSpec, load_clip


def test_clip_weights_under_module_and_a_prefix_get_a_conversion_that_loads(tmp_path):
    clip = load_clip(BackboneSpec.parse("rap-micro", "none")).state_dict()
    weights = tmp_path / "ddp run" / "pytorch_model.bin.0"
    weights.parent.mkdir()
    torch.save({"state_dict": {**{f"module.clip.{k}": v for k, v in clip.items()},
                               "module.frame_position_embeddings.weight": torch.zeros(12, 32)}}, weights)
    out = tmp_path / "m.pt"
    init = ["init", "--clip", "rap-micro", "--frames", "4", "--out", str(out), "--pretrained"]
    result = CliRunner().invoke(app, [*init, str(weights)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "holds every tensor of rap-micro under the prefix 'module.clip.'" in lines[0], lines
    converted = weights.with_name("pytorch_model.bin.0.module.clip.pt")
    assert lines[0].endswith(f" and pass --pretrained '{converted}'"), lines[0]
    run_suggested_conversion(lines[0])
    saved = torch.load(converted, weights_only=True)
    assert sorted(saved) == sorted(clip) and all(torch.equal(saved[k], clip[k]) for k in clip)
    made = CliRunner().invoke(app, [*init, str(converted)])
    assert made.exit_code == 0, made.output

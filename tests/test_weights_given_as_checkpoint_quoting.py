"""The `rapdeploy init --pretrained FILE` a refusal of CLIP weights given as a checkpoint names (33aec89) pastes as
one command whatever the file's path holds."""

from __future__ import annotations

import shlex

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from rap_deploy.cli import app


@pytest.mark.parametrize("name", ["my weights.safetensors", "o'brien weights.pt"])
def test_the_suggested_init_names_the_weights_file_as_one_argument(tmp_path, name):
    """'rapdeploy init --clip NAME --pretrained /x/my weights.safetensors --out ckpt.pt' pasted gave init
    --pretrained /x/my and an extra argument; the path is now shell-quoted."""
    weights = tmp_path / name
    tensors = {"positional_embedding": torch.zeros(4, 8), "text_projection": torch.zeros(8, 8)}
    if weights.suffix == ".safetensors":
        save_file(tensors, str(weights))
    else:
        torch.save(tensors, weights)
    res = CliRunner().invoke(app, ["info", str(weights)])
    assert res.exit_code == 2, res.output
    line = " ".join(res.stderr.split())
    command = line.split("`rapdeploy init ", 1)[1].split("`", 1)[0]
    args = shlex.split(command)
    assert args[args.index("--pretrained") + 1] == str(weights), line

"""The README's "real user" path driven through the CLI with a user's own files: a CLIP weights file and a dataset
folder of their own, and the mistakes such a user makes with them (each refused with one line naming the file, the
value and the fix)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.cli.app import app


def _one_error_line(result) -> str:
    """The command's stderr, asserted to be a single ``error:`` line (no warning or traceback beside it)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(("clip", "quickgelu"), [("rap-micro", None), ("ViT-B-32", "ViT-B-32-quickgelu")])
def test_openai_torchscript_weights_file_is_refused_with_the_conversion_that_works(tmp_path, clip, quickgelu):
    """OpenAI's original CLIP release (the ViT-B-32.pt CLIP4Clip downloads) is a TorchScript archive. Given as
    ``--pretrained``, torch warned on stderr ('dispatching to torch.jit.load') and the error said it holds pickled
    Python objects: 're-save it with tensors and plain data only', not how. It is now refused before anything loads
    it (no warning): the one line names the file as a TorchScript archive, the state-dict file open_clip publishes,
    and the one-line conversion (its state_dict, without the three non-tensor entries) with the QuickGELU --clip."""
    weights = tmp_path / "ViT-B-32.pt"
    _save_traced_micro_clip(weights)
    result = CliRunner().invoke(app, ["init", "--clip", clip, "--pretrained", str(weights),
                                      "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    said = _one_error_line(result)
    assert str(weights) in said and "TorchScript" in said and "open_clip_pytorch_model.bin" in said, said
    converted = tmp_path / "ViT-B-32.state_dict.pt"
    assert "torch.jit.load" in said and f"--pretrained {converted}" in said, said
    assert (f"--clip {quickgelu}" in said) if quickgelu else ("quickgelu" not in said), said
    assert not (tmp_path / "m.pt").exists()
    conversion = said.split('python -c "', 1)[1].split('"', 1)[0]
    subprocess.run([sys.executable, "-W", "ignore", "-c", conversion], check=True)
    made = CliRunner().invoke(app, ["init", "--clip", "rap-micro", "--pretrained", str(converted), "--frames", "4",
                                    "--out", str(tmp_path / "m.pt")])
    assert made.exit_code == 0, made.output


def _save_traced_micro_clip(path) -> None:
    """Write the rap-micro CLIP as OpenAI released theirs: a traced TorchScript archive of the whole model."""
    import warnings

    import open_clip

    from rap_deploy.model.clip_loader import _register_packaged_configs

    _register_packaged_configs()
    model = open_clip.create_model("rap-micro", pretrained=None).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, dtype=torch.long)),
                                 strict=False, check_trace=False)
        torch.jit.save(traced, str(path))

"""The refusal of CLIP weights held under a prefix (CLIP4Clip's pytorch_model.bin) suggested a converted file named
``f"{path.name}.{tag}.pt"`` (tag up to 40 characters): for a weights file whose name was already long (250 bytes,
or fewer characters of a multibyte script) the suggested name was over the 255 bytes a file name may have, so the
one-line command it printed failed with "File name too long". The name is now cut in its stem (whole characters)
to at most 255 bytes, its extension and the ``.{tag}.pt`` ending kept; a short name is unchanged."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch
from conftest import run_suggested_conversion

from rap_deploy.errors import UsageError
from rap_deploy.model.clip_loader import BackboneSpec, load_clip

PREFIX = "clip."  # CLIP4Clip's is 'clip.'; tag 'clip'
CLIP = "rap-micro"


def _suggested(said: str) -> Path:
    """The file the refusal ``said`` asks to pass to --pretrained."""
    return Path(shlex.split(said.rsplit(" and pass --pretrained ", 1)[1])[0])


def _micro_state() -> dict[str, torch.Tensor]:
    return load_clip(BackboneSpec.parse(CLIP, "none")).state_dict()


def _weights(folder: Path, name: str, prefix: str = PREFIX) -> Path:
    """Every tensor of the rap-micro CLIP saved under ``prefix`` in ``folder/name`` (as CLIP4Clip saves ViT-B/32's)."""
    path = folder / name
    torch.save({f"{prefix}{k}": v for k, v in _micro_state().items()}, path)
    return path


def _refusal(path: Path) -> str:
    """The one-line refusal loading ``path`` as rap-micro's weights gives (the public path: load_clip)."""
    with pytest.raises(UsageError) as refused:
        load_clip(BackboneSpec.parse(CLIP, str(path)))
    return str(refused.value)


def test_a_short_name_is_unchanged(tmp_path):
    path = _weights(tmp_path, "pytorch_model.bin")
    assert _suggested(_refusal(path)) == tmp_path / "pytorch_model.bin.clip.pt"
    long_tag = "x" * 60 + "."
    path = _weights(tmp_path, "pytorch_model.bin", long_tag)
    assert _suggested(_refusal(path)).name == f"pytorch_model.bin.{'x' * 40}.pt"


@pytest.mark.parametrize("name", ["a" * 246 + ".bin",  # 250 ASCII bytes
                                  "模型权重" * 20 + "模型.bin",  # 86 characters, 250 bytes in UTF-8
                                  "é" * 120 + "🙂.pth",  # a 4-byte character where the cut falls
                                  "w." + "b" * 248],  # an extension too long to keep: the name is cut as a whole
                         ids=["ascii", "cjk", "mixed", "long-extension"])
def test_a_long_name_is_cut_to_255_bytes_and_the_conversion_runs(tmp_path, name):
    assert len(os.fsencode(name)) <= 255
    path = _weights(tmp_path, name)
    said = _refusal(path)
    converted = _suggested(said)
    assert converted.parent == tmp_path
    assert len(os.fsencode(converted.name)) <= 255 and converted.name.endswith(".clip.pt"), converted.name
    assert len(os.fsencode(converted.name)) > 255 - 4  # cut no more than a character's bytes below the limit
    suffix = Path(name).suffix
    if len(suffix) < 20:
        assert converted.name.endswith(f"{suffix}.clip.pt") and name.startswith(converted.name[:-len(suffix) - 8])
    else:
        assert name.startswith(converted.name[:-len(".clip.pt")])
    run_suggested_conversion(said)
    assert set(torch.load(converted, weights_only=True)) == set(_micro_state())

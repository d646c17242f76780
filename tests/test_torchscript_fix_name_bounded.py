"""The refusal of a TorchScript weights file (OpenAI's ViT-B-32.pt) suggests converting it to
``<stem>.state_dict.pt``: for a file whose name was already long (about 242 bytes or more) that name was over the 255
bytes a file name may have, and the printed command failed with "File name too long". It is now cut in the stem
(:func:`~rap_deploy.bounded_names.bounded_file_name`), as the prefix refusal's name is."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch

from rap_deploy.errors import UsageError
from rap_deploy.model.clip_loader import BackboneSpec, load_clip


def _suggested(said: str) -> Path:
    """The file the refusal ``said`` asks to pass to --pretrained."""
    command = said.rsplit(" and pass --pretrained ", 1)[1].split(" with --clip ")[0]  # then the QuickGELU model
    return Path(shlex.split(command)[0])


def _refusal(path: Path) -> str:
    """The refusal of a TorchScript archive at ``path`` given as rap-micro's weights (through the public load_clip)."""
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UsageError) as refused:
        load_clip(BackboneSpec.parse("rap-micro", str(path)))
    return str(refused.value)


def test_a_short_name_is_unchanged(tmp_path):
    said = _refusal(tmp_path / "ViT-B-32.pt")
    assert "TorchScript archive" in said
    assert _suggested(said) == tmp_path / "ViT-B-32.state_dict.pt"


@pytest.mark.parametrize("stem", ["w" * 250, "重" * 84, "model." + "v" * 240])
def test_a_long_name_stays_within_255_bytes(tmp_path, stem):
    said = _refusal(tmp_path / f"{stem}.pt")
    name = _suggested(said).name
    assert len(os.fsencode(name)) <= 255 and name.endswith(".state_dict.pt"), name
    assert _suggested(said).parent == tmp_path and name[:4] == stem[:4]
    assert f"{stem}.pt" in said  # the file to convert is still named whole


def test_a_cut_never_leaves_a_letter_without_its_accent(tmp_path):
    """Decomposed "é" ("e" + U+0301, 3 bytes): the cut would keep an "e" whose accent did not fit; it drops both."""
    stem = "e\u0301" * 84
    said = _refusal(tmp_path / f"{stem}.pt")
    name = _suggested(said).name
    cut = name[:-len(".state_dict.pt")]
    assert len(os.fsencode(name)) <= 255 and cut and cut == "e\u0301" * (len(cut) // 2), ascii(name)


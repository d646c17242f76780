"""A checkpoint whose embedded backbone weights do not fit the CLIP it names (a small file naming a large CLIP) is
refused from the tensor names and shapes alone, before load_clip builds and randomly initialises the whole model
(ViT-bigG-14: 67 s and 10.8 GB for a 312 KB file). Checked here on rap-micro with load_clip made to fail if called."""

from __future__ import annotations

import pytest
import torch

from rap_deploy.errors import CheckFailedError


def _with_backbone_state(micro_checkpoint, tmp_path, edit):
    payload = torch.load(micro_checkpoint, weights_only=True)
    assert payload["backbone"]["kind"] == "none" and payload["backbone_state"]
    edit(payload["backbone_state"])
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


def _never_built(*args, **kwargs):
    raise AssertionError("load_clip was called: the model was built before the weights were compared")


def _only_x(state):
    state.clear()
    state["x"] = torch.zeros(1)


def _wider_first(state):
    name = next(iter(state))
    state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1) if state[name].dim() \
        else torch.zeros(2)


@pytest.mark.parametrize("edit, said", [
    (_only_x, "1 key the model does not have: x"),
    (_wider_first, "in the file"),
], ids=["foreign-key", "wrong-shape"])
def test_embedded_weights_that_do_not_fit_are_refused_before_the_model_is_built(micro_checkpoint, tmp_path,
                                                                                  monkeypatch, edit, said):
    from rap_deploy import checkpoint_model
    from rap_deploy.checkpoint import load_checkpoint

    path = _with_backbone_state(micro_checkpoint, tmp_path, edit)
    ckpt = load_checkpoint(path)
    monkeypatch.setattr(checkpoint_model, "load_clip", _never_built)
    with pytest.raises(CheckFailedError, match="embedded backbone weights do not fit rap-micro") as err:
        ckpt.build_model()
    assert said in str(err.value) and str(path) in str(err.value)


def test_fitting_embedded_weights_still_build(micro_checkpoint):
    from rap_deploy.checkpoint import load_checkpoint

    model = load_checkpoint(micro_checkpoint).build_model()
    assert model.config.clip == "rap-micro"

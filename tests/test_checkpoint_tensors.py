"""Tensors a checkpoint file may hold as weights: dense ones only."""

from __future__ import annotations

import pytest
import torch

from rap_deploy.errors import CheckFailedError


def _first_matrix(state: dict[str, torch.Tensor]) -> str:
    return next(name for name, tensor in state.items() if tensor.dim() == 2)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("field", ["adapter_state", "backbone_state"])
@pytest.mark.parametrize("kind, make", [
    ("a sparse_coo tensor", lambda t: t.to_sparse()),
    ("a sparse_csr tensor", lambda t: t.to_sparse_csr()),
    ("a meta tensor (a shape without values)", lambda t: torch.empty(t.shape, device="meta")),
    ("a nested tensor (tensors of several shapes)", lambda t: torch.nested.nested_tensor([t[0], t[0][:1]])),
])
def test_a_sparse_or_meta_weight_is_refused_naming_it(field, kind, make, micro_checkpoint, tmp_path):
    """A sparse or meta tensor in place of a weight loaded, then failed in load_state_dict with a message that named
    no key: 'embedded backbone weights do not fit rap-micro: ;' for the backbone, torch's 'While copying the parameter
    named ...' cut mid-sentence for an adapter. The file is now refused as it is read, naming the entry."""
    from rap_deploy.checkpoint import load_checkpoint

    payload = torch.load(micro_checkpoint, map_location="cpu", weights_only=True)
    name = _first_matrix(payload[field])
    payload[field][name] = make(payload[field][name])
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    with pytest.raises(CheckFailedError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path} is damaged: '{field}' entry '{name}' is {kind}, not dense "
                               "weights; re-create it with `rapdeploy init` or `rapdeploy train`")


@pytest.mark.filterwarnings("ignore")
def test_a_nested_backbone_weight_is_refused_through_the_cli_not_a_traceback(micro_checkpoint, tmp_path):
    """A nested tensor (strided layout, so not refused as sparse) in the embedded backbone reached load_state_dict,
    whose RuntimeError ('NestedTensorImpl doesn't support sizes') names no state-dict key: load_clip re-raises it, and
    since 6e10af7 removed build_model's RuntimeError branch, `rapdeploy info` ended in a traceback."""
    from typer.testing import CliRunner

    from rap_deploy.cli import app

    payload = torch.load(micro_checkpoint, map_location="cpu", weights_only=True)
    payload["backbone_state"]["logit_scale"] = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    path = tmp_path / "nested.pt"
    torch.save(payload, path)
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 1 and not isinstance(result.exception, RuntimeError), result.exception
    assert "'backbone_state' entry 'logit_scale' is a nested tensor" in result.output


def test_an_unlisted_load_state_dict_error_of_the_backbone_is_one_line_naming_the_file(micro_checkpoint,
                                                                                        monkeypatch):
    """A RuntimeError of load_state_dict on the embedded backbone that is not torch's listing of keys (here one a
    future torch or an odd tensor might raise) was re-raised bare by load_clip: `rapdeploy info` ended in a
    traceback. It is now refused as the other embedded-weights errors are: one line naming the checkpoint, torch's
    message, exit 1."""
    from typer.testing import CliRunner

    from rap_deploy.cli import app

    real = torch.nn.Module.load_state_dict

    def failing(self, *args, **kwargs):
        if type(self).__module__.startswith("open_clip"):  # the backbone only; the adapters load as ever
            raise RuntimeError("copying a param with an unusual storage:\n  not supported here")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", failing)
    result = CliRunner().invoke(app, ["info", str(micro_checkpoint)])
    assert result.exit_code == 1 and not isinstance(result.exception, RuntimeError), result.exception
    assert " ".join(result.stderr.split()) == (
        f"error: checkpoint {micro_checkpoint}: embedded backbone weights cannot be loaded into rap-micro (torch: "
        "copying a param with an unusual storage: not supported here); the file is damaged or was edited")

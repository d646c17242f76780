"""The JSON metadata of safetensors weights files (a checkpoint's ``rapdeploy``, a backbone file's
``rapdeploy_backbone``): one parser, each refusal naming the file, what is wrong and what to do."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from rap_deploy.errors import CheckFailedError


def _backbone_file(path, info_text: str):
    save_file({"w": torch.zeros(2)}, str(path), metadata={"clip": "rap-micro", "rapdeploy_backbone": info_text})
    return path


def _checkpoint_file(path, payload_text: str):
    save_file({"adapter.w": torch.zeros(2)}, str(path), metadata={"rapdeploy": payload_text})
    return path


def _refusal(read, path) -> str:
    """The message of the :class:`CheckFailedError` that ``read(path)`` raises."""
    with pytest.raises(CheckFailedError) as info:
        read(path)
    return str(info.value)


def test_both_readers_parse_metadata_with_the_one_function():
    """checkpoint_read and backbone_file each parsed their JSON metadata with its own copy of the same checks."""
    from rap_deploy import backbone_file, checkpoint_read, file_kinds

    assert checkpoint_read.metadata_object is file_kinds.metadata_object
    assert backbone_file.metadata_object is file_kinds.metadata_object


@pytest.mark.parametrize("text, what", [
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ("[1, 2]", "is a list, not an object"),
    ("7" * 5000, "is not valid JSON (Exceeds the limit (4300 digits) for integer string conversion"),
])
def test_a_backbone_file_with_damaged_info_says_what_and_how_to_re_create_it(tmp_path, text, what):
    """The backbone file's refusal said 'not an object' without the type, and no file's refusal said what to do; it
    now names the file, what its metadata is and `rapdeploy pretrain-backbone`."""
    from rap_deploy.backbone_file import read_backbone_info

    path = _backbone_file(tmp_path / "backbone.safetensors", text)
    message = _refusal(read_backbone_info, path)
    assert message.startswith(f"backbone file {path}: its rapdeploy_backbone metadata {what}"), message
    assert message.endswith("; the file is damaged; re-create it with `rapdeploy pretrain-backbone`"), message


def test_a_backbone_file_with_an_info_object_reads_it(tmp_path):
    from rap_deploy.backbone_file import read_backbone_info

    assert read_backbone_info(_backbone_file(tmp_path / "b.safetensors", '{"epochs": 2}')) == {"epochs": 2}


@pytest.mark.parametrize("text, what", [
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ('"text"', "is a str, not an object"),
    ("[" * 100_000, "is not valid JSON (maximum recursion depth exceeded"),
])
def test_a_checkpoint_with_damaged_metadata_names_the_file_and_what_it_holds(tmp_path, text, what):
    from rap_deploy.checkpoint import load_checkpoint

    path = _checkpoint_file(tmp_path / "ckpt.safetensors", text)
    message = _refusal(load_checkpoint, path)
    assert message.startswith(f"checkpoint {path}: its rapdeploy metadata {what}"), message
    assert message.endswith("; the file is damaged or was edited"), message


def test_a_backbone_file_s_metadata_keys_are_written_in_sorted_order(tmp_path):
    """safetensors writes ``__metadata__`` from a hash map whose order changes from process to process (three of six
    processes put ``rapdeploy_backbone`` before ``clip``), so one pre-training's weights and metadata made files of
    different sha256, and a run knows its backbone by sha256. A header written in the other order comes out sorted,
    the same bytes as one written sorted, and still loads."""
    import json

    from safetensors.torch import load_file

    from rap_deploy.backbone_file import _sort_metadata_keys, read_backbone_clip_name, read_backbone_info

    def written(path, metadata):  # a safetensors file whose header holds the metadata in the order given
        data = torch.arange(6, dtype=torch.float32).numpy().tobytes()
        header = {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, len(data)]}}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(len(text).to_bytes(8, "little") + text + data)
        return path

    info = json.dumps({"epochs": 2, "note": "é"}, ensure_ascii=False)
    late = written(tmp_path / "late.safetensors", {"rapdeploy_backbone": info, "clip": "rap-micro"})
    early = written(tmp_path / "early.safetensors", {"clip": "rap-micro", "rapdeploy_backbone": info})
    before = late.read_bytes()
    _sort_metadata_keys(late)
    _sort_metadata_keys(early)
    assert late.read_bytes() != before and late.read_bytes() == early.read_bytes()
    assert len(late.read_bytes()) == len(before)
    assert read_backbone_clip_name(late) == "rap-micro" and read_backbone_info(late) == {"epochs": 2, "note": "é"}
    assert load_file(str(late))["w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]

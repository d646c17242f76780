"""A checkpoint holding a value nested thousands deep, or a format_version no rapdeploy writes, is refused as damaged
in one line naming the file (exit 1), not with a RecursionError traceback from building a message's repr."""

from __future__ import annotations

import sys

import pytest
import torch

from rap_deploy.checkpoint import load_checkpoint
from rap_deploy.errors import CheckFailedError

DEPTH = 5000


def _deep() -> list:
    value: list = [1]
    for _ in range(DEPTH):
        value = [value]
    return value


def _edited(micro_checkpoint, tmp_path, edit) -> object:
    """A copy of the micro checkpoint with ``edit(payload)`` applied (saved under a raised recursion limit, as an
    attacker's script would)."""
    payload = torch.load(micro_checkpoint, weights_only=True)
    edit(payload)
    path = tmp_path / "edited.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        torch.save(payload, path)
    finally:
        sys.setrecursionlimit(limit)
    return path


def _set(*keys):
    def edit(payload):
        for key in keys[:-1]:
            payload = payload[key]
        payload[keys[-1]] = _deep()
    return edit


def _deep_config_key(payload):
    key: tuple = (1,)
    for _ in range(DEPTH):
        key = (key,)
    payload["config"][key] = 1


@pytest.mark.parametrize("edit", [
    _set("format_version"), _set("backbone", "kind"), _set("config", "frames"), _set("config", "variant"),
    _set("config", "preprocess", "mean"), _set("config", "preprocess", "resize_mode"), _deep_config_key,
], ids=["format_version", "kind", "frames", "variant", "mean", "resize_mode", "config_key"])
def test_deeply_nested_value_is_damage_in_one_line(micro_checkpoint, tmp_path, edit) -> None:
    path = _edited(micro_checkpoint, tmp_path, edit)
    with pytest.raises(CheckFailedError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and len(message) < 400 and "\n" not in message


@pytest.mark.parametrize("version", [-5, 0, "1", None, True])
def test_format_version_must_be_one_rapdeploy_writes(micro_checkpoint, tmp_path, version) -> None:
    def edit(payload):
        if version is None:
            del payload["format_version"]
        else:
            payload["format_version"] = version
    path = _edited(micro_checkpoint, tmp_path, edit)
    with pytest.raises(CheckFailedError, match="format_version") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_deep_value_through_the_cli_exits_1(micro_checkpoint, tmp_path) -> None:
    from typer.testing import CliRunner

    from rap_deploy.cli.app import app

    path = _edited(micro_checkpoint, tmp_path, _set("config", "frames"))
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 1, result.output
    assert "RecursionError" not in result.output and "frames must be an integer" in result.output

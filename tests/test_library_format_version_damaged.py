"""A library manifest whose format_version is no integer was told to upgrade rapdeploy (exit 2); every library
rapdeploy writes records an integer, so the manifest is damaged: exit 1, naming the file, the value (bounded) and the
fix (rebuild it with `rapdeploy index ... --force`, or restore the file). A newer version still asks for an upgrade."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.errors import DamagedArtifactError, UsageError
from rap_deploy.library.manifest import read_manifest

runner = CliRunner()


def _library(tmp_path: Path, version) -> Path:
    lib = tmp_path / "my libs" / "clips"
    lib.mkdir(parents=True)
    (lib / "manifest.json").write_text(json.dumps({"format": "rapdeploy.library", "format_version": version}))
    return lib


@pytest.mark.parametrize("version,shown", [
    ("x", "'x'"), (1.5, "1.5"), ([1] * 100_000, "[1, 1, 1, 1, 1, 1, ...]"), (True, "True"), ("9" * 100_000, "'999"),
], ids=["text", "float", "long-list", "bool", "padded-digits"])
def test_a_non_integer_format_version_is_damage(tmp_path: Path, version, shown: str) -> None:
    lib = _library(tmp_path, version)
    with pytest.raises(DamagedArtifactError) as err:
        read_manifest(lib)
    message = str(err.value)
    assert message.startswith(f"{lib / 'manifest.json'}: library format version {shown}"), message[:300]
    assert message.endswith(f"is not an integer; the library manifest is damaged: rebuild the library (`rapdeploy "
                            f"index ... --out {shlex.quote(str(lib))} --force`) or restore the file from a copy")
    assert "upgrade" not in message and len(message) < 300 + 2 * len(str(lib)), len(message)


def test_search_exits_1_for_a_damaged_format_version_and_2_for_a_newer_one(tmp_path: Path) -> None:
    res = runner.invoke(app, ["search", "a red circle", "--library", str(_library(tmp_path / "a", "x"))])
    assert res.exit_code == 1 and "the library manifest is damaged" in " ".join(res.stderr.split()), res.output
    res = runner.invoke(app, ["search", "a red circle", "--library", str(_library(tmp_path / "b", 99))])
    line = " ".join(res.stderr.split())
    assert res.exit_code == 2 and "has library format version 99; this rapdeploy reads up to 1: upgrade" in line, line


def test_a_newer_format_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="format version 99; this rapdeploy reads up to 1: upgrade rapdeploy$"):
        read_manifest(_library(tmp_path, 99))

"""An engine's manifest.json is untrusted: the export folder it records, which the fp16-on-CPU refusal of an ONNX
Runtime engine puts in the build-engine commands it suggests, is read bounded
(engines.rebuild_commands.recorded_export_dir); a padded one made a 3,000,000-character line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import micro_config

from rap_deploy.engines.manifest import MAX_PATH_CHARS
from rap_deploy.engines.ort_backend import OrtEngine, graphs_export_folder
from rap_deploy.errors import UsageError

GRAPHS = ("video_encoder", "text_encoder", "asa_head")


def _engine_folder(tmp_path: Path, export_dir: str) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "rapdeploy.engine", "export_dir": export_dir}))
    return folder, {g: folder / f"{g}.onnx" for g in GRAPHS}


def _fp16_refusal(folder: Path, graphs: dict[str, Path]) -> str:
    with pytest.raises(UsageError) as err:  # refused before any graph is read
        OrtEngine(graphs, micro_config(), precision="fp16", path=folder)
    return str(err.value)


def test_a_padded_recorded_export_folder_is_not_put_in_the_commands(tmp_path: Path) -> None:
    folder, graphs = _engine_folder(tmp_path, "/w/" + "x" * 1_000_000)
    assert graphs_export_folder(graphs, folder) is None
    message = _fp16_refusal(folder, graphs)
    assert "(`rapdeploy build-engine <export folder>`, or `rapdeploy build-engine <export folder> --int8`)" in message
    assert "(<export folder> is the folder `rapdeploy export` wrote from this engine's checkpoint" in message
    assert len(message) < 700 + len(str(folder)), len(message)


def test_a_real_recorded_export_folder_is_named_whole(tmp_path: Path) -> None:
    export = "/w/my exports/" + "d" * (MAX_PATH_CHARS - 20)  # a long path, within Linux's PATH_MAX: kept
    folder, graphs = _engine_folder(tmp_path, export)
    assert graphs_export_folder(graphs, folder) == Path(export)
    assert f"`rapdeploy build-engine {shlex.quote(export)} --int8`" in _fp16_refusal(folder, graphs)

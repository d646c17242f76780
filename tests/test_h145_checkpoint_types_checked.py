"""An engine manifest's source checkpoint record (``checkpoint: {path, sha256}``) was checked to be an object, not
the types inside it (manifest._check_structure); only verify and bench refused a non-text one (ee569b3). An edited
``"sha256": 5`` (mirrored in ``export.checkpoint``, so the export-record check agrees) or ``"path": ["x"]`` loaded,
and ``rapdeploy triton-repo`` published it to Triton with exit 0, for a later remote verify to blame the server.
read_manifest now refuses it (exit 1, one line naming the manifest and 'rebuild it'), as verify does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.errors import CheckFailedError

runner = CliRunner()
EDITS = {"sha256 a number": {"sha256": 5}, "sha256 an object": {"sha256": {"a": 1}},
         "path a list": {"path": ["x"]}}


def _edited(micro_ort_engines, tmp_path: Path, record: dict) -> Path:
    """A copy of the micro fp32 engine whose manifest's checkpoint record (and its export record's) has ``record``."""
    engine = tmp_path / "engine"
    shutil.copytree(micro_ort_engines["fp32"], engine)
    path = engine / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["checkpoint"].update(record)
    manifest["export"]["checkpoint"].update(record)
    path.write_text(json.dumps(manifest))
    return engine


def _expect_refusal(line: str, engine: Path, record: dict) -> None:
    key = next(iter(record))
    assert f"{engine / 'manifest.json'}: checkpoint {key} " in line and "is not text" in line, line
    assert "the engine folder is damaged or was edited, rebuild it" in line, line


@pytest.mark.parametrize("case", list(EDITS))
def test_triton_repo_refuses_a_wrong_typed_checkpoint_record(micro_ort_engines, tmp_path, case):
    engine = _edited(micro_ort_engines, tmp_path, EDITS[case])
    out = tmp_path / "repo"
    result = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    _expect_refusal(lines[0], engine, EDITS[case])
    assert not list(out.rglob("config.pbtxt")), "a damaged record was published"


@pytest.mark.parametrize("case", list(EDITS))
def test_the_loader_refuses_a_wrong_typed_checkpoint_record(micro_ort_engines, tmp_path, case):
    from rap_deploy.engines.loader import load_engine

    engine = _edited(micro_ort_engines, tmp_path, EDITS[case])
    with pytest.raises(CheckFailedError) as info:
        load_engine(engine)
    _expect_refusal(str(info.value), engine, EDITS[case])


def test_a_text_record_still_loads(micro_ort_engines, tmp_path):
    from rap_deploy.engines.loader import load_engine

    engine = _edited(micro_ort_engines, tmp_path, {})
    assert load_engine(engine).describe().extra["checkpoint_sha256"]

"""An export folder's source checkpoint record (``checkpoint: {path, sha256}`` in its manifest.json) was checked to be
an object, not the values inside it: an edited ``"sha256": 5`` (or an object, or ``"path": ["x"]``) passed
read_export_manifest, and ``rapdeploy triton-repo --engine <export folder>`` exited 0 publishing it into
config.pbtxt. read_export_manifest now refuses it (exit 1, one line naming the manifest and the re-export command),
as read_manifest does for engine folders (a37e362). A recorded path longer than any path (MAX_PATH_CHARS) is refused
in both kinds of folder, as damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.engines.manifest import MAX_PATH_CHARS, checkpoint_record_problem
from rap_deploy.errors import CheckFailedError

runner = CliRunner()
LONG_PATH = "/" + "a" * MAX_PATH_CHARS + ".pt"
EDITS = {"sha256 a number": ({"sha256": 5}, "is not text"),
         "sha256 an object": ({"sha256": {"a": 1}}, "is not text"),
         "path a list": ({"path": ["x"]}, "is not text"),
         "path too long": ({"path": LONG_PATH}, f"is longer than {MAX_PATH_CHARS:,} characters")}


def _edited_copy(folder: Path, tmp_path: Path, record: dict, *, engine: bool = False) -> Path:
    """A copy of ``folder`` whose manifest's checkpoint record (an engine's: and its export record's) has ``record``."""
    out = tmp_path / ("engine" if engine else "export")
    shutil.copytree(folder, out)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["checkpoint"].update(record)
    if engine:
        manifest["export"]["checkpoint"].update(record)
    path.write_text(json.dumps(manifest))
    return out


def _refusal_line(result, out: Path) -> str:
    """The one error line of a refused CLI run that wrote nothing into ``out``."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.exists() or not list(out.rglob("config.pbtxt")), "a damaged record was published"
    return lines[0]


@pytest.mark.parametrize("case", list(EDITS))
def test_triton_repo_refuses_an_export_with_a_damaged_checkpoint_record(micro_ort_engines, tmp_path, case):
    record, why = EDITS[case]
    export = _edited_copy(micro_ort_engines["export"], tmp_path, record)
    out = tmp_path / "repo"
    result = runner.invoke(app, ["triton-repo", "--engine", str(export), "--out", str(out)])
    line = _refusal_line(result, out)
    key = next(iter(record))
    assert f"{export / 'manifest.json'}: checkpoint {key} " in line and why in line, line
    assert "the manifest was edited, re-run `rapdeploy export " in line, line
    assert len(line) < 2 * MAX_PATH_CHARS // 4, "the message printed the long path whole"


@pytest.mark.parametrize("case", ["sha256 a number", "path too long"])
def test_readers_of_export_folders_refuse_it(micro_ort_engines, tmp_path, case):
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.export import read_export_manifest

    record, why = EDITS[case]
    export = _edited_copy(micro_ort_engines["export"], tmp_path, record)
    for read in (read_export_manifest, load_engine):
        with pytest.raises(CheckFailedError) as info:
            read(export)
        assert f"{export / 'manifest.json'}: checkpoint " in str(info.value) and why in str(info.value)


def test_triton_repo_refuses_an_engine_with_a_too_long_checkpoint_path(micro_ort_engines, tmp_path):
    engine = _edited_copy(micro_ort_engines["fp32"], tmp_path, {"path": LONG_PATH}, engine=True)
    out = tmp_path / "repo"
    result = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(out)])
    line = _refusal_line(result, out)
    assert f"{engine / 'manifest.json'}: checkpoint path " in line, line
    assert "the engine folder is damaged or was edited, rebuild it" in line, line


def test_the_check_keeps_text_records_and_bounds_them():
    assert checkpoint_record_problem({"path": "/x/model.pt", "sha256": "ab" * 32}) is None
    assert checkpoint_record_problem({"path": None, "sha256": None}) is None
    assert checkpoint_record_problem({}) is None
    assert checkpoint_record_problem({"path": "/" + "a" * (MAX_PATH_CHARS - 1)}) is None
    assert "is longer than" in checkpoint_record_problem({"path": LONG_PATH})
    assert "is longer than" in checkpoint_record_problem({"sha256": "f" * 1_000_000})


def test_a_valid_export_is_still_published(micro_ort_engines, tmp_path):
    export = _edited_copy(micro_ort_engines["export"], tmp_path, {})
    out = tmp_path / "repo"
    result = runner.invoke(app, ["triton-repo", "--engine", str(export), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert list(out.rglob("config.pbtxt"))

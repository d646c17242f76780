"""verify and bench read the source checkpoint an engine folder's manifest records (engine_refs.resolve_reference)
before the engine is loaded and its manifest checked, taking the record's ``sha256`` and ``path`` for text. An
edited manifest with a number there stopped ``rapdeploy verify --checkpoint`` with a TypeError traceback ('int'
object is not subscriptable), and without ``--checkpoint`` it was refused as a checkpoint that changed since export
(exit 2), which it had not. Such a record is now refused as a damaged engine folder (exit 1, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()
EDITS = {"sha256 a number": {"sha256": 5}, "sha256 an object": {"sha256": {"a": 1}},
         "path a number": {"path": 7}}


def _engine(tmp_path: Path, **checkpoint: object) -> tuple[Path, Path]:
    """A folder whose manifest records ``checkpoint`` over a real file's path and a text sha256, and that file."""
    ckpt = tmp_path / "micro.pt"
    ckpt.write_bytes(b"a checkpoint")
    engine = tmp_path / "engine"
    engine.mkdir()
    record = {"path": str(ckpt), "sha256": "0" * 64, **checkpoint}
    (engine / "manifest.json").write_text(json.dumps({"format": "rapdeploy.engine", "checkpoint": record}))
    return engine, ckpt


def _one_line(args: list[str], code: int) -> str:
    result = runner.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("case", list(EDITS))
@pytest.mark.parametrize("command", ["verify --checkpoint", "verify", "bench"])
def test_a_wrong_typed_checkpoint_record_is_a_damaged_engine(tmp_path, case, command):
    engine, ckpt = _engine(tmp_path, **EDITS[case])
    args = ["verify", "--dataset", "msrvtt"] if command.startswith("verify") else ["bench"]
    args += ["--engine", str(engine), "--workspace", str(tmp_path / "ws")]
    args += ["--checkpoint", str(ckpt)] if command.endswith("--checkpoint") else []
    line = _one_line(args, 1)
    key = next(iter(EDITS[case]))
    assert f"manifest.json: checkpoint {key} " in line and "is not text" in line, line
    assert "the engine folder is damaged or was edited, rebuild it" in line, line


def test_a_text_sha256_that_differs_still_says_the_checkpoint_changed(tmp_path):
    engine, _ = _engine(tmp_path)
    line = _one_line(["bench", "--engine", str(engine), "--workspace", str(tmp_path / "ws")], 2)
    assert "is not the file the engine was built from" in line, line

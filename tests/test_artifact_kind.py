"""rap_deploy.artifact_kind: the one place a folder's manifest.json format says which rapdeploy artifact it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rap_deploy import bounds
from rap_deploy.artifact_kind import artifact_kind, manifest_kind, written_by


def _folder(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "manifest.json").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("fmt, kind", [("rapdeploy.library", "library"), ("rapdeploy.engine", "engine"),
                                       ("rapdeploy.export", "export"), ("rapdeploy.future", "rapdeploy"),
                                       ("webapp", "foreign"), (None, "foreign"), (7, "foreign")])
def test_kind_by_format(tmp_path: Path, fmt: object, kind: str) -> None:
    assert artifact_kind(_folder(tmp_path, json.dumps({"format": fmt}))) == kind


def test_not_an_object_is_foreign(tmp_path: Path) -> None:
    assert manifest_kind(["rapdeploy.library"]) == "foreign"
    assert artifact_kind(_folder(tmp_path, "[1, 2]")) == "foreign"


def test_absent_or_unreadable_manifest_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert artifact_kind(tmp_path / "missing") is None
    assert artifact_kind(tmp_path) is None  # a folder without manifest.json
    assert artifact_kind(_folder(tmp_path, '{"format": "rapdeploy.libr')) is None  # truncated write
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").mkdir()  # not a file
    assert artifact_kind(tmp_path / "d") is None
    big = tmp_path / "big"
    big.mkdir()
    (big / "manifest.json").write_text('{"format": "rapdeploy.library"}', encoding="utf-8")
    monkeypatch.setattr(bounds, "MAX_MANIFEST_BYTES", 10)
    assert artifact_kind(big) is None  # oversized: never read whole


def test_written_by_names_the_command() -> None:
    assert written_by("library") == "a video library (`rapdeploy index` wrote it)"
    assert written_by("engine") == "an engine folder (`rapdeploy build-engine` wrote it)"
    assert written_by("export") == "an export folder (`rapdeploy export` wrote it)"

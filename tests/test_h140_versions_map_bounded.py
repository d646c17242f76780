"""An engine manifest is untrusted: its ``versions`` map was read key by key (each key shortened for a message that
might follow) whatever its size, so a padded map of a million keys cost seconds of checks before any refusal. The
number of entries is now bounded first (engines.manifest.MAX_VERSIONS), naming the count and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rap_deploy.engines import manifest as M
from rap_deploy.errors import CheckFailedError


def _engine(tmp_path: Path, versions: dict[str, str]) -> Path:
    doc = {"format": "rapdeploy.engine", "format_version": 1, "backend": "onnxruntime", "precision": "fp32",
           "provider": "CPUExecutionProvider", "graphs": {"video_encoder": {"file": "v.onnx", "sha256": "0"}},
           "versions": versions}
    (tmp_path / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")
    return tmp_path


def test_a_padded_versions_map_is_refused_by_its_count(tmp_path: Path) -> None:
    engine = _engine(tmp_path, {f"lib{i:06d}": "1.0" for i in range(10_000)})
    with pytest.raises(CheckFailedError) as err:
        M.read_manifest(engine)
    assert str(err.value) == (f"{engine / 'manifest.json'}: 'versions' lists 10,000 libraries; no build records more "
                              f"than {M.MAX_VERSIONS}; the engine folder is damaged or was edited, rebuild it")


def test_a_built_versions_map_is_read(tmp_path: Path) -> None:
    versions = {"rapdeploy": "0.1.0", "onnx": "1.17.0", "onnxruntime": "1.20.0", "torch": "2.5.0", "tensorrt": "10.7"}
    assert M.read_manifest(_engine(tmp_path, versions))["versions"] == versions

"""An engine or export manifest recording no checkpoint sha256 (written before rapdeploy recorded it) made an engine
say none, so the library weights check fell back to its one-side-unknown warning, though every exported graph
carries ``rapdeploy.checkpoint_sha256``. The loader now reads it from the graphs (their metadata only, no weights)
when the manifest records none, and takes it only when every graph carries the same valid sha256.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rap_deploy.atomic import sha256_file
from rap_deploy.cli import app

runner = CliRunner()
UNKNOWN = "warning: source checkpoint sha256 unknown"
KEY = "rapdeploy.checkpoint_sha256"


def _strip_checkpoint(folder: Path) -> None:
    """Remove the checkpoint sha256 from the folder's manifest (and its export record), as older manifests lack it."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for record in (manifest, manifest.get("export") or {}):
        if isinstance(record.get("checkpoint"), dict):
            record["checkpoint"].pop("sha256", None)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", ["export", "fp32"])
def test_a_manifest_without_the_sha256_takes_the_graphs(micro_ort_engines, micro_checkpoint, tmp_path, kind):
    """Before: the engine said None."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library.manifest import engine_checkpoint_sha256

    folder = shutil.copytree(micro_ort_engines[kind], tmp_path / kind)
    _strip_checkpoint(folder)
    engine = load_engine(folder, threads=1, lazy=True)
    try:
        assert engine_checkpoint_sha256(engine) == sha256_file(micro_checkpoint)
    finally:
        engine.close()


def test_search_with_such_an_export_is_compared_not_warned(micro_ort_engines, synth_root, tmp_path):
    """Before: the search warned that the engine says no sha256."""
    videos = sorted((synth_root / "videos").glob("*.mp4"))[:3]
    listing, lib = tmp_path / "videos.txt", tmp_path / "lib"
    listing.write_text("\n".join(str(p) for p in videos) + "\n")
    res = runner.invoke(app, ["index", "--list", str(listing), "--engine", str(micro_ort_engines["fp32"]), "--out",
                              str(lib), "--cache-dir", str(tmp_path / "frames"), "--quiet"])
    assert res.exit_code == 0, res.output
    export = shutil.copytree(micro_ort_engines["export"], tmp_path / "old-export")
    _strip_checkpoint(export)
    res = runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--engine", str(export), "--json"])
    assert res.exit_code == 0, res.output
    assert UNKNOWN not in res.stderr, res.stderr


def _graph(path: Path, metadata: dict[str, str], weights: int = 0) -> Path:
    """A one-node ONNX file with ``metadata`` props after an inline initializer of ``weights`` floats."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    init = numpy_helper.from_array(np.ones(max(weights, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [max(weights, 1)])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [max(weights, 1)])], [init])
    model = helper.make_model(graph)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_graphs_must_all_carry_one_valid_sha256(tmp_path):
    from rap_deploy.export.metadata_scan import graphs_checkpoint_sha256

    good, other = "a" * 64, "b" * 64
    a = _graph(tmp_path / "a.onnx", {"rapdeploy.graph": "x", KEY: good})
    b = _graph(tmp_path / "b.onnx", {KEY: good, "rapdeploy.opset": "17"})
    assert graphs_checkpoint_sha256([a, b]) == good
    assert graphs_checkpoint_sha256([a, _graph(tmp_path / "c.onnx", {KEY: other})]) is None  # a mix
    assert graphs_checkpoint_sha256([a, _graph(tmp_path / "d.onnx", {})]) is None  # one records none
    assert graphs_checkpoint_sha256([_graph(tmp_path / "e.onnx", {KEY: "A" * 64})]) is None  # not as sha256 writes
    assert graphs_checkpoint_sha256([_graph(tmp_path / "f.onnx", {KEY: "none"})]) is None
    assert graphs_checkpoint_sha256([]) is None


def test_the_scan_reads_the_metadata_not_the_weights(tmp_path):
    """A graph with 4 MB of inline weights before its metadata: a few hundred bytes are read; a truncated or foreign
    file gives None."""
    from rap_deploy.export.metadata_scan import _entries, metadata_value

    path = _graph(tmp_path / "big.onnx", {KEY: "c" * 64}, weights=1 << 20)
    data = path.read_bytes()

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n: int | None = -1) -> bytes:
            out = super().read(n)
            Counting.read_bytes += len(out)
            return out

    assert list(_entries(Counting(data), len(data), KEY)) == ["c" * 64]
    assert 0 < Counting.read_bytes < 1024, Counting.read_bytes
    assert metadata_value(path, KEY) == "c" * 64
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("not a protobuf message at all\n")
    assert metadata_value(tmp_path / "cut.onnx", KEY) is None
    assert metadata_value(tmp_path / "text.onnx", KEY) is None
    assert metadata_value(tmp_path / "missing.onnx", KEY) is None


def test_the_scan_stops_at_a_second_value_of_the_key(tmp_path, monkeypatch):
    """The values of the key were all kept until the end of the file, so a graph repeating it with other values held
    every one in memory (up to the file's size, 64 KiB each) to answer None; the scan now stops at the second."""
    import onnx

    from rap_deploy.export import metadata_scan

    path = _graph(tmp_path / "many.onnx", {f"pad{i}": "x" for i in range(3)})
    model = onnx.load(str(path))
    for i in range(50):
        model.metadata_props.add(key=KEY, value=f"{i:064x}")
    onnx.save(model, str(path))
    parsed = []
    real = metadata_scan._key_value
    monkeypatch.setattr(metadata_scan, "_key_value", lambda data: parsed.append(1) or real(data))
    assert metadata_scan.metadata_value(path, KEY) is None
    assert len(parsed) == 3 + 2, len(parsed)  # the three other entries, then the key's first two values

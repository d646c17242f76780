"""``rapdeploy serve`` publishes the graphs' shapes and batch limits of the engine it loaded.

The server read the engine folder's manifest.json itself (``read_source``) and then loaded the engine, which read it
again: a ``build-engine --force`` / ``export --force`` between the two reads had it publish the shapes and batch
limits of one build while it ran the other. Both now come from the manifest the engine was loaded from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rap_deploy.errors import UsageError


def rebuild_before_the_load(monkeypatch, folder: Path, asa_blocks: dict[str, int]) -> None:
    """Have the next ``load_engine`` of ``folder`` find it rebuilt (its manifest rewritten with ``asa_blocks``) just
    before it reads it, as a ``build-engine --force`` finishing between serve's two reads would."""
    import rap_deploy.engines.loader as loader

    load = loader.load_engine

    def rebuilt_then_load(path, *args, **kwargs):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["asa_blocks"] = dict(asa_blocks)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(loader, "load_engine", rebuilt_then_load)


def test_serve_publishes_the_batch_limits_of_the_build_it_loaded(micro_ort_engines, tmp_path, monkeypatch):
    from rap_deploy.engines.serving.model_config import PARAM_PREFIX
    from rap_deploy.engines.serving.server import build_service

    folder = shutil.copytree(micro_ort_engines["fp32"], tmp_path / "engine")
    before = json.loads((folder / "manifest.json").read_text()).get("asa_blocks")
    rebuilt = {"queries": 3, "videos": 5}
    assert before != rebuilt
    rebuild_before_the_load(monkeypatch, folder, rebuilt)
    service = build_service(folder, threads=1, default_library=False)
    try:
        inner = service.engine.inner
        assert (inner.query_block, inner.video_block) == (3, 5)  # the engine runs the rebuilt folder
        assert service.source.manifest == inner.source_manifest
        assert service.describe()["batch_limits"]["asa_queries"] == 3, service.describe()["batch_limits"]
        assert service.describe()["batch_limits"]["asa_videos"] == 5
        # clients may send more queries (the server re-blocks them), never more videos than the engine's block
        assert json.loads(service.parameters[PARAM_PREFIX + "asa_blocks"])["videos"] == 5
    finally:
        service.close()


@pytest.mark.parametrize("kind", ["fp32", "export"])
def test_a_loaded_folder_engine_keeps_the_manifest_it_was_opened_from(micro_ort_engines, tmp_path, kind):
    """The manifest the loader validated stays with the engine; a rewrite of the folder's file afterwards does not
    reach it."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.contract import loaded_source

    folder = shutil.copytree(micro_ort_engines[kind], tmp_path / kind)
    loaded = json.loads((folder / "manifest.json").read_text())
    engine = load_engine(folder, threads=1)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["asa_blocks"] = {"queries": 3, "videos": 5}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        source = loaded_source(folder, engine)
        assert source.kind == ("engine" if kind == "fp32" else "export")
        assert {k: v for k, v in source.manifest.items() if k != "dir"} == loaded  # read_export_manifest adds dir
    finally:
        engine.close()


def test_a_checkpoint_engine_is_its_own_source_and_a_stray_engine_is_refused(micro_checkpoint, micro_ort_engines):
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.contract import loaded_source

    assert loaded_source(micro_checkpoint, load_engine(micro_checkpoint)).kind == "checkpoint"

    class Stray:  # an engine made without the loader says no manifest
        source_manifest = None

    with pytest.raises(UsageError, match="does not say which engine or export manifest"):
        loaded_source(micro_ort_engines["fp32"], Stray())

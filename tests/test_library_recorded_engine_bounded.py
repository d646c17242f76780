"""A library's manifest records the engine that built it (path, checkpoint); the manifest is untrusted (up to 64 MB),
and two refusals printed those values whole: a padded path made an error line of any length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rap_deploy.errors import UsageError
from rap_deploy.name_lists import PATH_CHARS

HUGE = 100_000


def test_a_library_given_as_engine_names_a_padded_builder_path_cut(tmp_path: Path) -> None:
    from rap_deploy.engines.engine_refs import resolve_engine

    lib = tmp_path / "lib"
    lib.mkdir()
    built = "/engines/" + "e" * HUGE
    (lib / "manifest.json").write_text(json.dumps({"format": "rapdeploy.library", "format_version": 1,
                                                   "engine": {"path": built}}), encoding="utf-8")
    with pytest.raises(UsageError) as err:
        resolve_engine(lib)
    message = str(err.value)
    assert f"--engine {lib} is a video library" in message and "pass the engine that built it, --engine" in message
    assert len(message) < 2 * PATH_CHARS and "…" in message, len(message)


def test_a_library_of_another_model_names_a_padded_builder_cut(micro_checkpoint) -> None:
    from rap_deploy.config import FrameSamplingConfig
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library.manifest import check_model, model_identity

    engine = load_engine(micro_checkpoint)
    recorded = model_identity(engine, FrameSamplingConfig(max_frames=engine.config.frames, fps=1.0))
    recorded["config_sha256"] = "0" * 64
    built_by = {"path": "/engines/" + "e" * HUGE, "checkpoint": "/ckpt/" + "c" * HUGE}
    with pytest.raises(UsageError) as err:
        check_model(recorded, engine, "lib", built_by=built_by)
    message = str(err.value)
    assert "the library was indexed with engine /engines/eee" in message and " from checkpoint /ckpt/ccc" in message
    assert len(message) < 4 * PATH_CHARS and message.count("…") == 2, len(message)

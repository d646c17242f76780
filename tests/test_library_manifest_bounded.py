"""A library's manifest.json is untrusted (up to 64 MB): its stored-tensor list and row shapes are bounded when it is
read, and the values its refusals echo are shown short (a padded one made an error line of any length)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rap_deploy.errors import CheckFailedError, DamagedArtifactError, UsageError
from rap_deploy.library.manifest import check_model, model_identity, read_manifest

HUGE = 100_000


@pytest.fixture(scope="module")
def engine(micro_checkpoint):
    from rap_deploy.engines.loader import load_engine

    return load_engine(micro_checkpoint)


def _manifest(engine) -> dict[str, Any]:
    """A structurally valid manifest of an empty library of ``engine``'s model."""
    from rap_deploy.config import FrameSamplingConfig

    model = model_identity(engine, FrameSamplingConfig(max_frames=engine.config.frames, fps=1.0))
    frames, asa_dim, d, p = engine.config.frames, model["config"].get("asa_dim"), 32, 4
    shapes = {"video_emb": [d], "frame_emb": [frames, d], "patch_tokens": [frames, p, d],
              "asa_tokens": [frames, p, 3 * (asa_dim or 0)]}
    return {"format": "rapdeploy.library", "format_version": 1, "model": model,
            "tensor_shapes": {t: shapes[t] for t in model["tensors"]}, "shards": [], "next_shard": 1,
            "next_row": 0, "removed": [], "videos": 0,
            "stage1": {"file": "stage1/index-0000.faiss", "sha256": "0" * 64, "type": "exact",
                       "recall_at_m": {"recall": 1.0, "m": 1, "queries": 1}, "build_seconds": 0.0}}


def _read(tmp_path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return read_manifest(tmp_path)


def test_the_valid_manifest_reads(engine, tmp_path: Path) -> None:
    assert _read(tmp_path, _manifest(engine))["model"]["tensors"][0] == "video_emb"


def test_a_padded_tensor_list_is_refused_when_read(engine, tmp_path: Path) -> None:
    manifest = _manifest(engine)
    manifest["model"]["tensors"] = ["video_emb"] * HUGE  # one known name, so every shape lookup succeeded
    with pytest.raises(DamagedArtifactError) as err:
        _read(tmp_path, manifest)
    assert "'model.tensors' is malformed" in str(err.value) and len(str(err.value)) < 400, len(str(err.value))


def test_a_padded_row_shape_is_refused_when_read(engine, tmp_path: Path) -> None:
    manifest = _manifest(engine)
    manifest["tensor_shapes"]["video_emb"] = [1] * HUGE
    with pytest.raises(DamagedArtifactError) as err:
        _read(tmp_path, manifest)
    assert "'tensor_shapes.video_emb' is malformed" in str(err.value) and len(str(err.value)) < 400


def test_another_model_names_a_padded_tensor_list_short(engine) -> None:
    recorded = _manifest(engine)["model"]
    recorded["tensors"] = ["video_emb", "x" * HUGE, *["frame_emb"] * HUGE]
    with pytest.raises(UsageError) as err:
        check_model(recorded, engine, Path("lib"))
    message = str(err.value)
    assert "stored tensors ['video_emb', 'xxx" in message and "vs the engine's ['video_emb'" in message
    assert len(message) < 2000, len(message)


@pytest.mark.parametrize("where,key,named", [
    (None, "format", "format 'xxx"), (None, "format_version", "format_version 'xxx"),
    (None, "next_shard", "'next_shard' 'xxx"), ("stage1", "type", "'stage1.type' 'xxx"),
    ("stage1", "effort", "'stage1.effort' 'xxx"), ("stage1", "build_seconds", "'stage1.build_seconds' 'xxx")])
def test_padded_values_are_named_short(engine, tmp_path: Path, where: str | None, key: str, named: str) -> None:
    manifest = _manifest(engine)
    (manifest[where] if where else manifest)[key] = "x" * HUGE
    with pytest.raises((UsageError, CheckFailedError)) as err:  # another format / version, or damaged
        _read(tmp_path, manifest)
    message = str(err.value)
    assert named in message and len(message) < 600, (len(message), message[:300])


@pytest.mark.parametrize("key", ["next_row", "next_shard"])
def test_a_huge_counter_is_named_short(engine, tmp_path: Path, key: str) -> None:
    """next_row / next_shard past the int64 row ids were printed whole: a 4,000-digit one (json reads up to 4,300)
    made a line of over 4,000 characters. They go through name_lists.int_text, as bounds' limits do."""
    from rap_deploy.library import manifest_checks
    from rap_deploy.name_lists import int_text

    manifest = _manifest(engine)
    manifest[key] = int("9" * 4000)
    with pytest.raises(DamagedArtifactError) as err:
        _read(tmp_path, manifest)
    message = str(err.value)
    assert "or 'next_shard' " in message and f"is past {2 ** 62}; the library manifest is damaged" in message
    assert len(message) < 300 + len(str(tmp_path)), (len(message), message[:300])
    assert manifest_checks.int_text is int_text

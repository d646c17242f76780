"""A library and the engine searching it must come from the same weights, not only the same config.

``check_model`` compares the source checkpoint's sha256 of the library with the engine's. A remote engine (``--engine
http://...``) said none, though ``rapdeploy serve`` and ``rapdeploy triton-repo`` publish it (``rapdeploy.checkpoint``),
so a server of other weights of the same config searched any library and ranked garbage without a word. It now
reads it: other weights are refused (exit 2); where one side still does not know its sha256, the search goes on with
a one-line warning on stderr naming that side.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.atomic import sha256_file
from rap_deploy.cli import app
from rap_deploy.errors import UsageError

runner = CliRunner()
WARNING = "warning: source checkpoint sha256 unknown"


@pytest.fixture(scope="module")
def ort_library(micro_ort_engines, synth_root, tmp_path_factory) -> Path:
    """A library of the synthetic test split indexed with the micro fp32 ONNX Runtime engine."""
    lib = tmp_path_factory.mktemp("weights_lib") / "msrvtt-test"
    res = runner.invoke(app, ["index", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                              str(micro_ort_engines["fp32"]), "--out", str(lib), "--cache-dir",
                              str(tmp_path_factory.mktemp("weights_frames")), "--quiet"])
    assert res.exit_code == 0, res.output
    return lib


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> Path:
    """A micro checkpoint of the library's config with other adapter weights (another training seed)."""
    from conftest import micro_config, randomize_adapters

    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=7)
    path = tmp_path_factory.mktemp("other_weights") / "seed7.pt"
    save_checkpoint(checkpoint_from_model(model, ckpt), path)
    return path


@contextmanager
def served(path: Path) -> Iterator[tuple[str, object]]:
    """``rapdeploy serve``'s app (graphs only) on the engine or checkpoint ``path``, on 127.0.0.1: its URL and its
    service, stopped when the block ends."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService

    service = ServingService(SerialEngine(load_engine(path, threads=1)), read_source(path))
    try:
        with ServerThread(create_app(service)) as server:
            yield server.url, service
    finally:
        service.close()


def _search(library: Path, engine: object):
    return runner.invoke(app, ["search", "a red circle", "--library", str(library), "--engine", str(engine),
                               "--json"])


def test_a_served_engine_publishes_the_export_records_checkpoint(micro_ort_engines, micro_checkpoint):
    """The remote engine said no sha256 (engine_checkpoint_sha256 gave None); it is the export record's, which is
    the checkpoint's the export was made from."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library.manifest import engine_checkpoint_sha256

    engine_manifest = json.loads((micro_ort_engines["fp32"] / "manifest.json").read_text())
    assert engine_manifest["export"]["checkpoint"]["sha256"] == sha256_file(micro_checkpoint)
    with served(micro_ort_engines["fp32"]) as (url, _):
        remote = load_engine(url)
        try:
            assert engine_checkpoint_sha256(remote) == sha256_file(micro_checkpoint)
        finally:
            remote.close()


def test_a_server_of_other_weights_is_refused_and_of_the_same_searches_quietly(ort_library, other_weights,
                                                                              micro_ort_engines):
    with served(other_weights) as (url, _):
        refused = _search(ort_library, url)
    assert refused.exit_code == 2, refused.output
    assert "another model" in refused.stderr and "source checkpoint sha256" in refused.stderr, refused.stderr
    with served(micro_ort_engines["fp32"]) as (url, _):
        same = _search(ort_library, url)
    assert same.exit_code == 0, same.output
    assert WARNING not in same.stderr and json.loads(same.stdout.splitlines()[0])["results"]


def test_a_server_publishing_no_checkpoint_searches_with_a_warning(ort_library, other_weights):
    """A server that publishes no rapdeploy.checkpoint (a repository of another tool) cannot be compared: the
    search goes on (its weights may well be the library's) and says so on one line of stderr."""
    with served(other_weights) as (url, service):
        service.parameters["rapdeploy.checkpoint"] = "{}"
        res = _search(ort_library, url)
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if WARNING in line]
    assert len(lines) == 1, res.stderr
    assert f"engine {url} says none (the server publishes no rapdeploy.checkpoint" in lines[0], lines[0]
    assert f"library {ort_library} records " in lines[0] and "rebuild the engine from a current export" in lines[0]


def test_a_library_recording_no_checkpoint_searches_with_a_warning(ort_library, micro_ort_engines, tmp_path):
    """A library indexed before the sha256 was recorded (or by an engine that did not say) searches with a warning
    naming it and saying to re-index it."""
    lib = shutil.copytree(ort_library, tmp_path / "old-lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    manifest["model"]["checkpoint_sha256"] = None
    (lib / "manifest.json").write_text(json.dumps(manifest))
    res = _search(lib, micro_ort_engines["fp32"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if WARNING in line]
    assert len(lines) == 1 and f"library {lib} records none" in lines[0], res.stderr
    assert "re-index the library" in lines[0] and "rebuild the engine" not in lines[0], lines[0]


def test_a_server_mixing_models_of_other_weights_is_refused(micro_ort_engines, monkeypatch):
    """index encodes videos with video_encoder, search encodes text with text_encoder: a server whose models
    publish other checkpoints is refused when the remote engine connects."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.contract import VIDEO_GRAPH

    with served(micro_ort_engines["fp32"]) as (url, service):
        answer = service.model_config

        def other_video_weights(model):
            cfg = answer(model)
            if model.name == VIDEO_GRAPH:
                cfg["parameters"]["rapdeploy.checkpoint"] = {"string_value": json.dumps({"sha256": "1" * 64})}
            return cfg

        monkeypatch.setattr(service, "model_config", other_video_weights)
        with pytest.raises(UsageError, match="model video_encoder was built from other weights than text_encoder"):
            load_engine(url)


def test_an_update_keeps_the_weights_the_library_recorded(micro_ort_engines, other_weights, synth_root, tmp_path):
    """index --add with an engine that says no sha256 erased the library's (the update recorded the engine's
    None), so from then on other weights searched it without a word. The library keeps what it recorded (the
    update warns that the new rows' weights could not be compared), and other weights are still refused."""
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    listing, lib, cache = tmp_path / "videos.txt", tmp_path / "lib", tmp_path / "frames"
    listing.write_text("\n".join(str(p) for p in videos[:3]) + "\n")
    first = runner.invoke(app, ["index", "--list", str(listing), "--engine", str(micro_ort_engines["fp32"]), "--out",
                                str(lib), "--cache-dir", str(cache), "--quiet"])
    assert first.exit_code == 0, first.output
    recorded = json.loads((lib / "manifest.json").read_text())["model"]["checkpoint_sha256"]
    assert recorded == json.loads((micro_ort_engines["fp32"] / "manifest.json").read_text())["checkpoint"]["sha256"]
    listing.write_text("\n".join(str(p) for p in videos[:5]) + "\n")
    with served(micro_ort_engines["fp32"]) as (url, service):
        service.parameters["rapdeploy.checkpoint"] = "{}"
        added = runner.invoke(app, ["index", "--list", str(listing), "--engine", url, "--out", str(lib),
                                    "--cache-dir", str(cache), "--add", "--quiet"])
    assert added.exit_code == 0, added.output
    assert WARNING in added.stderr and f"engine {url} says none" in added.stderr, added.stderr
    manifest = json.loads((lib / "manifest.json").read_text())
    assert manifest["videos"] == 5 and manifest["model"]["checkpoint_sha256"] == recorded
    with served(other_weights) as (url, _):
        refused = _search(lib, url)
    assert refused.exit_code == 2 and "source checkpoint sha256" in refused.stderr, refused.output


@pytest.mark.parametrize("kind", ["fp32", "export"])
def test_a_local_engine_says_the_checkpoint_of_the_manifest_it_loaded(micro_ort_engines, micro_checkpoint, tmp_path,
                                                                      kind):
    """engine_checkpoint_sha256 read the folder's manifest.json again when a library was opened, so after a
    `build-engine --force` / `export --force` of other weights into that folder, an engine still running the old
    graphs said the new checkpoint. It now says the one of the manifest it was loaded from."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library.manifest import engine_checkpoint_sha256

    folder = shutil.copytree(micro_ort_engines[kind], tmp_path / kind)
    engine = load_engine(folder, threads=1)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checkpoint"]["sha256"] = "1" * 64  # what a folder rebuilt from other weights records
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert engine_checkpoint_sha256(engine) == sha256_file(micro_checkpoint)


def test_an_engine_made_without_the_loader_says_no_checkpoint_not_its_folders_manifest(micro_ort_engines, tmp_path):
    """engine_checkpoint_sha256 fell back to reading the manifest.json of the folder an engine's describe() names
    when it gave no checkpoint_sha256 (an engine made without the loader), at check time: a rebuild of that folder
    after the engine was made had it claim the new build's weights. Every engine the loader makes says its own;
    one that does not is now unknown (the library check warns), its folder unread."""
    from rap_deploy.config import RAPConfig
    from rap_deploy.engines.ort_backend import OrtEngine
    from rap_deploy.library.manifest import engine_checkpoint_sha256

    folder = shutil.copytree(micro_ort_engines["fp32"], tmp_path / "engine")
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {name: folder / entry["file"] for name, entry in manifest["graphs"].items()}
    engine = OrtEngine(files, RAPConfig.from_dict(manifest["config"]), threads=1, path=folder)
    try:
        manifest["checkpoint"]["sha256"] = "1" * 64  # what a folder rebuilt from other weights records
        (folder / "manifest.json").write_text(json.dumps(manifest))
        assert "checkpoint_sha256" not in engine.describe().to_dict()
        assert engine_checkpoint_sha256(engine) is None
    finally:
        engine.close()


def test_serve_warns_on_stderr_once_of_a_library_recording_no_checkpoint(ort_library, micro_ort_engines, tmp_path,
                                                                        capsys):
    """``check_model`` had a ``warn`` parameter that no caller passed, as if ``serve`` logged the warning elsewhere;
    it prints it on stderr (where ``serve`` says its other start-up lines), once, for every command alike."""
    from rap_deploy.engines.serving.server import build_service

    lib = shutil.copytree(ort_library, tmp_path / "old-lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    manifest["model"]["checkpoint_sha256"] = None
    (lib / "manifest.json").write_text(json.dumps(manifest))
    service = build_service(micro_ort_engines["fp32"], lib, threads=1)
    try:
        captured = capsys.readouterr()
    finally:
        service.close()
    lines = [line for line in captured.err.splitlines() if WARNING in line]
    assert len(lines) == 1 and f"library {lib} records none" in lines[0], captured.err
    assert WARNING not in captured.out


@pytest.mark.parametrize("replace", ["renamed over", "written in place"])
def test_a_torch_engine_says_the_checkpoint_it_loaded_not_the_file_now_there(micro_checkpoint, other_weights,
                                                                             tmp_path, replace):
    """A PyTorch engine named its checkpoint file, hashed when a library was checked: once another checkpoint was
    put at that path (a training run writing best.pt again), an engine still holding the old weights said the new
    file's sha256 and searched a library of the new weights. It now says the hash of the bytes it loaded."""
    import os

    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library.manifest import engine_checkpoint_sha256

    path = tmp_path / "best.pt"
    shutil.copyfile(micro_checkpoint, path)
    engine = load_engine(path)
    if replace == "renamed over":
        shutil.copyfile(other_weights, tmp_path / "next.pt")
        os.replace(tmp_path / "next.pt", path)
    else:
        path.write_bytes(other_weights.read_bytes())
    assert sha256_file(path) == sha256_file(other_weights) != sha256_file(micro_checkpoint)
    assert engine_checkpoint_sha256(engine) == sha256_file(micro_checkpoint)
    assert engine.describe().to_dict()["checkpoint_sha256"] == sha256_file(micro_checkpoint)


def test_a_checkpoint_written_while_a_torch_engine_loads_it_is_refused(micro_checkpoint, other_weights, tmp_path,
                                                                      monkeypatch):
    """The hash and the load are two reads of the file: one that changed between them is refused, as the hash may
    not be of the weights loaded."""
    import rap_deploy.checkpoint as checkpoint_module
    from rap_deploy.engines.loader import load_engine

    path = tmp_path / "best.pt"
    shutil.copyfile(micro_checkpoint, path)
    load = checkpoint_module.load_checkpoint

    def load_then_overwrite(p):
        loaded = load(p)
        path.write_bytes(other_weights.read_bytes())
        return loaded

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", load_then_overwrite)
    with pytest.raises(UsageError, match=f"checkpoint {path} changed while it was loaded"):
        load_engine(path)


@pytest.mark.parametrize("kind", ["engine", "checkpoint"])
def test_serve_publishes_the_checkpoint_of_the_engine_it_loaded(micro_ort_engines, micro_checkpoint, other_weights,
                                                                tmp_path, kind):
    """``serve`` published rapdeploy.checkpoint from its own read of the engine path (the EngineSource: the
    manifest read again, or a checkpoint file hashed again), not from the read the engine was loaded from, so a
    rebuild or a new best.pt between the two had a server of the old weights publish the new sha256, and remote
    index/search compared libraries with weights it does not run. It now publishes what the loaded engine says."""
    import os

    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.model_config import PARAM_PREFIX
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.service import ServingService

    if kind == "engine":
        path = shutil.copytree(micro_ort_engines["fp32"], tmp_path / "engine")
        engine = load_engine(path, threads=1)
        manifest = json.loads((path / "manifest.json").read_text())
        recorded = dict(manifest["checkpoint"])
        manifest["checkpoint"]["sha256"] = "1" * 64  # what a folder rebuilt from other weights records
        (path / "manifest.json").write_text(json.dumps(manifest))
    else:
        path = tmp_path / "best.pt"
        shutil.copyfile(micro_checkpoint, path)
        engine = load_engine(path)
        recorded = {"path": str(path.resolve()), "sha256": sha256_file(micro_checkpoint)}
        shutil.copyfile(other_weights, tmp_path / "next.pt")
        os.replace(tmp_path / "next.pt", path)  # a training run writing best.pt again
    service = ServingService(SerialEngine(engine), read_source(path))
    try:
        published = json.loads(service.parameters[PARAM_PREFIX + "checkpoint"])
    finally:
        service.close()
    assert published == {"path": recorded["path"], "sha256": sha256_file(micro_checkpoint)}, published


def test_serve_publishes_a_relative_checkpoint_path_absolute(tmp_path, monkeypatch):
    """A PyTorch engine describes its checkpoint as given (``best.pt``); the server's clients (verify's reference)
    do not know the server's working folder, so it publishes the path absolute, as it did before."""
    from rap_deploy.engines.serving.model_config import engine_checkpoint

    (tmp_path / "best.pt").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    info = {"checkpoint": "best.pt", "checkpoint_sha256": "2" * 64}
    assert engine_checkpoint(info) == {"path": str(tmp_path.resolve() / "best.pt"), "sha256": "2" * 64}
    assert engine_checkpoint({"checkpoint_sha256": None}) == {"path": None, "sha256": None}

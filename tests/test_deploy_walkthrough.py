"""The deployment half walked through as a new user follows the README: index a folder of videos into the
workspace, search it, keep it up to date, each through the real command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def _indexed_clips_workspace(work: Path, engine: Path, synth_root: Path) -> Path:
    """``work`` made a workspace whose only engine is ``engine``, with a folder ``clips/`` of three of the synthetic
    videos indexed into ``index/clips`` by ``rapdeploy index --videos clips --name clips`` (the README's command,
    with the workspace's engine)."""
    shutil.copytree(engine, work / "engines" / "onnxruntime-fp32")
    clips = work / "clips"
    clips.mkdir()
    for name in ("video20", "video21", "video22"):
        shutil.copy(synth_root / "videos" / f"{name}.mp4", clips / f"{name}.mp4")
    res = runner.invoke(app, ["index", "--videos", str(clips), "--name", "clips", "--workspace", str(work),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    return work


@pytest.fixture(scope="module")
def clips_workspace(micro_ort_engines, synth_root, tmp_path_factory) -> Path:
    """A workspace of :func:`_indexed_clips_workspace` on the micro fp32 ONNX Runtime engine."""
    return _indexed_clips_workspace(tmp_path_factory.mktemp("walkthrough"), micro_ort_engines["fp32"], synth_root)


def _copy_workspace(work: Path, tmp_path: Path) -> Path:
    """A copy of the module's workspace that a test may change."""
    return shutil.copytree(work, tmp_path / "ws", symlinks=True)


def test_a_refusal_of_another_model_names_the_engine_and_what_built_the_library(clips_workspace, tmp_path):
    """After `build-engine --force` of other weights into the engine folder that built a library, `rapdeploy search`
    (no --engine: it takes that folder) said 'built with another model than this engine' without naming the engine
    it had picked, nor the checkpoint the library was built from: the user could not tell which engine to rebuild or
    pass. It now names the engine, and what the library's manifest records of the engine and checkpoint that built
    it."""
    work = _copy_workspace(clips_workspace, tmp_path)
    lib = work / "index" / "clips"
    manifest = json.loads((lib / "manifest.json").read_text())
    built_by = manifest["engine"]["path"]
    built_from = manifest["engine"]["checkpoint"]
    manifest["engine"]["path"] = str(work / "engines" / "onnxruntime-fp32")  # the copy's own engine folder
    manifest["model"]["checkpoint_sha256"] = "2" * 64  # as if the engine folder was rebuilt from other weights since
    (lib / "manifest.json").write_text(json.dumps(manifest))
    assert Path(built_by).name == "onnxruntime-fp32" and built_from

    res = runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--workspace", str(work)])

    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1, res.stderr
    engine = work / "engines" / "onnxruntime-fp32"
    assert f"another model than engine {engine} " in line, line
    assert f"indexed with engine {engine} from checkpoint {built_from}" in line, line
    assert "(that engine folder holds another model now)" in line, line


def test_add_over_a_folder_whose_video_was_deleted_names_it_and_the_remove_that_drops_it(micro_ort_engines,
                                                                                        synth_root, tmp_path):
    """After `rm clips/video21.mp4`, `rapdeploy index --videos clips --name clips --add` said 'up to date: ... holds 3
    videos' and nothing else, while search kept returning video21 at a path that no longer exists (its thumbnails a
    404). --add keeps such rows (a folder on an unmounted disk must not empty a library), and now says so on stderr:
    the id, the path, and the --remove command that drops it; --json lists them under "gone"."""
    work = _indexed_clips_workspace(tmp_path, micro_ort_engines["fp32"], synth_root)
    lib = work / "index" / "clips"
    deleted = work / "clips" / "video21.mp4"
    deleted.unlink()
    args = ["index", "--videos", str(work / "clips"), "--name", "clips", "--add", "--workspace", str(work)]

    res = runner.invoke(app, args)
    as_json = runner.invoke(app, [*args, "--json"])

    assert res.exit_code == 0, res.output
    gone = [line for line in res.stderr.splitlines() if "no longer exists" in line]
    assert len(gone) == 1, res.stderr
    assert f"video21 ({deleted})" in gone[0], gone[0]
    assert f"rapdeploy index --out {lib} --remove video21" in gone[0], gone[0]
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["gone"] == [{"video_id": "video21", "path": str(deleted)}], as_json.stdout


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_serve_refuses_a_url_file_it_cannot_write_before_loading_anything(micro_ort_engines, tmp_path, where):
    """`serve --url-file blocker/url.txt` (blocker a file) loaded the engine and the library, bound the port and
    started the server, then stopped with 'cannot write --url-file blocker/url.txt (File exists)': after the whole
    start-up (minutes for a large library with --verify full) and naming the wrong cause. A --url-file that is a
    folder, or whose folder is a file, is now refused before anything is loaded or bound, naming the path in the way."""
    import subprocess
    import sys

    blocker = tmp_path / "blocker"
    if where == "a folder":
        blocker.mkdir()
        url_file, in_the_way = blocker, f"--url-file {blocker} is a folder"
    else:
        blocker.write_text("")
        url_file, in_the_way = blocker / "url.txt", f"{blocker} is a file, not a folder"
    cmd = [sys.executable, "-m", "rap_deploy.cli", "serve", "--engine", str(micro_ort_engines["fp32"]), "--threads",
           "1", "--no-library", "--host", "127.0.0.1", "--port", "0", "--url-file", str(url_file)]

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and in_the_way in res.stderr, res.stderr
    assert "rapdeploy serve" not in res.stderr + res.stdout, res.stderr  # neither started nor stopped


@pytest.mark.parametrize("command", [["verify", "--dataset", "msrvtt"], ["bench", "--batch-sizes", "1"],
                                     ["search", "a red circle"], ["triton-repo", "--out", "repo"]])
def test_a_library_given_as_engine_is_named_a_library_with_the_engine_that_built_it(clips_workspace, synth_root,
                                                                                   tmp_path, command):
    """A library folder given as --engine (the two folders mixed up) was refused with 'LIB/manifest.json names no
    source checkpoint; pass --checkpoint CKPT' (verify, bench: a --checkpoint does not help) or 'is not an engine
    manifest (format 'rapdeploy.library', ...)' (search, index, serve, triton-repo), neither saying what to pass.
    Every command now says it is a library and names the engine that built it, as --engine."""
    lib = clips_workspace / "index" / "clips"
    built_by = json.loads((lib / "manifest.json").read_text())["engine"]["path"]
    extra = ["--data-root", str(synth_root)] if command[0] == "verify" else []
    if command[0] == "search":
        extra = ["--library", str(lib)]
    if command[0] == "triton-repo":
        command = ["triton-repo", "--out", str(tmp_path / "repo")]

    res = runner.invoke(app, [*command, *extra, "--engine", str(lib), "--workspace", str(clips_workspace)])

    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1, res.stderr
    assert f"--engine {lib} is a video library (`rapdeploy index` wrote it), not an engine" in res.stderr, res.stderr
    assert f"pass the engine that built it, --engine {built_by}" in res.stderr, res.stderr


@pytest.mark.parametrize("kind", ["export", "fp32"])
def test_index_force_into_an_export_or_engine_folder_refuses_and_keeps_it(micro_ort_engines, clips_workspace,
                                                                           tmp_path, kind):
    """`rapdeploy index --videos clips --out rapdeploy-out/onnx --force` (a wrong --out) read the export's
    manifest.json, found it no library, took it for a damaged one and wiped it: the export folder's manifest was
    replaced by a library's, its graphs left without one (exit 0). --force replaces a library (or a damaged one)
    only: another rapdeploy artifact is refused (exit 2) naming it, and left as it was."""
    folder = shutil.copytree(micro_ort_engines[kind], tmp_path / kind)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    fmt = json.loads(before["manifest.json"])["format"]

    res = runner.invoke(app, ["index", "--videos", str(clips_workspace / "clips"), "--out", str(folder), "--force",
                              "--engine", str(micro_ort_engines["fp32"]), "--quiet"])

    assert res.exit_code == 2, res.output
    assert f"{folder} holds a {fmt} folder (its manifest.json), not a library" in res.stderr, res.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("kind", ["export", "fp32"])
@pytest.mark.parametrize("command", ["search", "index"])
def test_an_engine_or_export_folder_given_as_library_says_what_it_is(micro_ort_engines, clips_workspace, kind,
                                                                      command):
    """`search --library ENGINE` (the two folders mixed up) and `index --out ENGINE` were refused with
    'ENGINE/manifest.json is not a library manifest (format 'rapdeploy.engine', expected 'rapdeploy.library')':
    the file and the value, but not what the folder is nor what to pass. They now say it and the fix."""
    folder = micro_ort_engines[kind]
    what = {"export": "an export folder (`rapdeploy export` wrote it)",
            "fp32": "an engine folder (`rapdeploy build-engine` wrote it)"}[kind]
    args = (["search", "a red circle", "--library", str(folder)] if command == "search" else
            ["index", "--videos", str(clips_workspace / "clips"), "--out", str(folder), "--engine", str(folder)])

    res = runner.invoke(app, [*args, "--workspace", str(clips_workspace)])

    assert res.exit_code == 2, res.output
    assert f"{folder} is {what}, not a library" in res.stderr, res.stderr
    assert "pass it as --engine, and as --library the folder of a library" in res.stderr, res.stderr


def test_the_readmes_serve_commands_name_a_library_its_steps_create():
    """The README's serve commands (the command table's and "Serve it"'s, which a reader pastes) served `--library
    lib`, a folder no step of the README writes: pasted after `rapdeploy demo` they stopped with 'library lib does
    not exist'. They now name the demo's library, rapdeploy-out/index/msrvtt-test, which `rapdeploy demo` (the
    README's first command) builds, beside the engine folder they already named."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    import re

    libraries = re.findall(r"rapdeploy serve --library (\S+)", readme)
    assert libraries, "the README has no `rapdeploy serve --library` command"
    assert set(libraries) == {"rapdeploy-out/index/msrvtt-test"}, libraries


def test_add_to_a_library_with_a_truncated_shard_file_is_refused_not_up_to_date(micro_ort_engines, synth_root,
                                                                                tmp_path):
    """`rapdeploy index --videos clips --name clips --add` over a library whose shard file was truncated said 'up to
    date: ... holds 3 videos' (exit 0), while `rapdeploy search` refused the same library (exit 1); with new videos
    it encoded them all before failing on the damaged file. --add and --remove now check every shard file's presence
    and size first (no file is read) and refuse a damaged library as search does: exit 1, naming the file."""
    work = _indexed_clips_workspace(tmp_path, micro_ort_engines["fp32"], synth_root)
    lib = work / "index" / "clips"
    damaged = next((lib / "shards").glob("*/video_emb.npy"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    manifest_before = (lib / "manifest.json").read_bytes()

    res = runner.invoke(app, ["index", "--videos", str(work / "clips"), "--name", "clips", "--add", "--workspace",
                              str(work)])

    assert res.exit_code == 1, res.output
    assert f"library shard file {damaged}" in res.stderr and "re-index the library" in res.stderr, res.stderr
    assert "up to date" not in res.output
    assert (lib / "manifest.json").read_bytes() == manifest_before


def test_a_refusal_of_a_server_now_serving_other_weights_says_server_not_engine_folder(clips_workspace, tmp_path):
    """A library indexed through a server (`index --engine http://HOST:PORT`) records the URL as the engine that
    built it; searched through the same URL once that server serves other weights, the refusal's note said '(that
    engine folder holds another model now)', a folder the user never had. It says the server serves another model."""
    from conftest import micro_config, randomize_adapters

    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.contract import read_source
    from rap_deploy.engines.serving.serial import SerialEngine
    from rap_deploy.engines.serving.server import ServerThread
    from rap_deploy.engines.serving.service import ServingService
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=7)
    other = tmp_path / "seed7.pt"
    save_checkpoint(checkpoint_from_model(model, ckpt), other)
    lib = shutil.copytree(clips_workspace / "index" / "clips", tmp_path / "lib")
    service = ServingService(SerialEngine(load_engine(other, threads=1)), read_source(other))
    try:
        with ServerThread(create_app(service)) as server:
            manifest = json.loads((lib / "manifest.json").read_text())
            manifest["engine"] = {**manifest["engine"], "path": server.url, "checkpoint": None}
            (lib / "manifest.json").write_text(json.dumps(manifest))
            res = runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--engine", server.url])
    finally:
        service.close()

    assert res.exit_code == 2, res.output
    assert f"indexed with engine {server.url} (that server serves another model now)" in res.stderr, res.stderr

"""A library indexed through a server (``index --engine http://...``) records the server's URL as its engine.

``search``, an ``index`` update and ``serve`` without ``--engine`` took the workspace's latest local engine then,
without a word (a path that does not exist, or a URL skipped), though the library's own engine was the server. They
still do not contact a URL read from a manifest; the workspace's latest engine stands in only when its weights are
shown to be the library's (the same source checkpoint sha256 on both sides), with one stderr line naming the URL and
``--engine URL``; else they refuse (exit 2), naming the URL. An explicit ``--engine`` is taken as before.

The libraries are indexed with the micro ONNX Runtime engine, their manifest's ``engine`` then rewritten to what
indexing through ``rapdeploy serve`` of that engine records (``RemoteEngine.describe()``): no server runs here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()
URL = "http://127.0.0.1:9"  # the discard port: never contacted
NOTE = f"was indexed through the server {URL}"
UNKNOWN = "warning: source checkpoint sha256 unknown"


def _indexed_through_url(lib: Path, library_sha: str | None = "recorded") -> None:
    """Rewrite the library's manifest as indexing through a server at :data:`URL` records it; ``library_sha``:
    ``"recorded"`` keeps the recorded checkpoint sha256, else it is replaced (``None``: records none)."""
    manifest = json.loads((lib / "manifest.json").read_text())
    sha = manifest["model"]["checkpoint_sha256"]
    manifest["engine"] = {"backend": "remote", "precision": "fp32", "device": f"remote {URL}", "provider": None,
                          "versions": {"server": "rapdeploy 0"}, "path": URL, "url": URL, "served_engine": {},
                          "checkpoint_sha256": sha}
    if library_sha != "recorded":
        manifest["model"]["checkpoint_sha256"] = library_sha
    (lib / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def videos(synth_root) -> list[Path]:
    return sorted((synth_root / "videos").glob("*.mp4"))


@pytest.fixture(scope="module")
def base_library(micro_ort_engines, videos, tmp_path_factory) -> Path:
    """Three synthetic videos indexed with the micro fp32 ONNX Runtime engine (through a local path)."""
    work = tmp_path_factory.mktemp("url_lib")
    listing, lib = work / "videos.txt", work / "lib"
    listing.write_text("\n".join(str(p) for p in videos[:3]) + "\n")
    res = runner.invoke(app, ["index", "--list", str(listing), "--engine", str(micro_ort_engines["fp32"]), "--out",
                              str(lib), "--cache-dir", str(work / "frames"), "--quiet"])
    assert res.exit_code == 0, res.output
    return lib


@pytest.fixture(scope="module")
def workspace(micro_ort_engines, tmp_path_factory) -> Path:
    """A workspace whose latest (only) engine is a copy of the micro fp32 engine: the library's weights."""
    ws = tmp_path_factory.mktemp("url_ws")
    shutil.copytree(micro_ort_engines["fp32"], ws / "engines" / "onnxruntime-fp32")
    return ws


def _library(base: Path, tmp_path: Path, library_sha: str | None = "recorded") -> Path:
    lib = shutil.copytree(base, tmp_path / "lib")
    _indexed_through_url(lib, library_sha)
    return lib


def _search(lib: Path, workspace: Path, *extra: str):
    return runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--workspace", str(workspace),
                               "--json", *extra])


def test_search_names_the_server_when_a_local_engine_of_the_same_weights_stands_in(base_library, workspace,
                                                                                    tmp_path):
    """Before: exit 0 and nothing said that the workspace's engine, not the server, searched."""
    lib = _library(base_library, tmp_path)
    res = _search(lib, workspace)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[0])["results"]
    lines = [line for line in res.stderr.splitlines() if NOTE in line]
    assert len(lines) == 1, res.stderr
    assert f"--engine {URL}" in lines[0] and str(workspace / "engines" / "onnxruntime-fp32") in lines[0], lines[0]
    assert UNKNOWN not in res.stderr


@pytest.mark.parametrize("library_sha", [None, "1" * 64], ids=["library-records-none", "other-weights"])
def test_search_refuses_a_stand_in_whose_weights_are_not_shown_to_be_the_librarys(base_library, workspace, tmp_path,
                                                                                  library_sha):
    """Before: a library recording no sha256 was searched by whatever engine the workspace built last (a warning
    only); now exit 2 naming the URL and --engine URL."""
    lib = _library(base_library, tmp_path, library_sha)
    res = _search(lib, workspace)
    assert res.exit_code == 2, res.output
    assert NOTE in res.stderr and f"--engine {URL}" in res.stderr, res.stderr
    assert ("cannot be compared" if library_sha is None else "other weights") in res.stderr, res.stderr


def test_an_explicit_engine_is_taken_as_before(base_library, workspace, micro_ort_engines, tmp_path):
    """--engine is the user's choice: no note, no refusal (the usual weights check and warning)."""
    lib = _library(base_library, tmp_path, None)
    res = _search(lib, workspace, "--engine", str(micro_ort_engines["fp32"]))
    assert res.exit_code == 0, res.output
    assert NOTE not in res.stderr and UNKNOWN in res.stderr, res.stderr


def test_search_without_a_local_engine_names_the_server(base_library, tmp_path):
    lib = _library(base_library, tmp_path)
    res = _search(lib, tmp_path / "empty-ws")
    assert res.exit_code == 2, res.output
    assert "no engine in" in res.stderr and NOTE in res.stderr and f"--engine {URL}" in res.stderr, res.stderr


def test_index_add_names_the_server_or_refuses(base_library, workspace, videos, tmp_path):
    """index --add without --engine: the stand-in encodes the new rows with one note line; a library recording no
    sha256 is refused (exit 2) and left as it was."""
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(str(p) for p in videos[:4]) + "\n")
    lib = _library(base_library, tmp_path)

    def add(target: Path):
        return runner.invoke(app, ["index", "--list", str(listing), "--out", str(target), "--add", "--workspace",
                                   str(workspace), "--cache-dir", str(tmp_path / "frames"), "--quiet"])

    res = add(lib)
    assert res.exit_code == 0, res.output
    assert len([line for line in res.stderr.splitlines() if NOTE in line]) == 1, res.stderr
    assert json.loads((lib / "manifest.json").read_text())["videos"] == 4
    unknown = shutil.copytree(base_library, tmp_path / "unknown")
    _indexed_through_url(unknown, None)
    before = (unknown / "manifest.json").read_bytes()
    res = add(unknown)
    assert res.exit_code == 2 and NOTE in res.stderr and "cannot be compared" in res.stderr, res.output
    assert (unknown / "manifest.json").read_bytes() == before


def test_serve_refuses_a_stand_in_whose_weights_cannot_be_compared(base_library, workspace, tmp_path, capsys):
    from rap_deploy.engines.serving.server import build_service
    from rap_deploy.errors import UsageError

    lib = _library(base_library, tmp_path, None)
    with pytest.raises(UsageError, match="was indexed through the server http://127.0.0.1:9 .*cannot be compared"):
        build_service(library=lib, workspace=workspace, threads=1)
    ok = _library(base_library, tmp_path / "ok")
    service = build_service(library=ok, workspace=workspace, threads=1)
    service.close()
    assert len([line for line in capsys.readouterr().err.splitlines() if NOTE in line]) == 1

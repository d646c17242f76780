"""``rapdeploy serve --cache-dir``: index, search's library builder and train take the decoded-frame cache's folder
(``--cache-dir``), serve had no such option and read thumbnails from ``<workspace>/cache/frames`` only. A library
indexed with ``--cache-dir`` elsewhere then had every first thumbnail decoded again (torch imported for it) and a
second cache written into the workspace. serve now takes ``--cache-dir`` with the same meaning and default."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def _entries(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*.npz"))


def _started(cmd, url_file):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not url_file.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"rapdeploy serve did not start: {proc.communicate()[0][-2000:]!r}")
        time.sleep(0.1)
    return proc


def test_serve_reads_thumbnails_from_the_cache_dir_given(tmp_path, synth_root, micro_ort_engines):
    clips, workspace, cache = tmp_path / "clips", tmp_path / "ws", tmp_path / "my frames"
    clips.mkdir()
    for name in ("video30", "video31"):
        shutil.copy(synth_root / "videos" / f"{name}.mp4", clips / f"{name}.mp4")
    engine = micro_ort_engines["fp32"]
    res = runner.invoke(app, ["index", "--videos", str(clips), "--engine", str(engine), "--workspace", str(workspace),
                              "--cache-dir", str(cache), "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    cached = _entries(cache)
    assert cached and not (workspace / "cache" / "frames").exists()
    url_file = tmp_path / "url.txt"
    proc = _started([sys.executable, "-m", "rap_deploy.cli", "serve", "--engine", str(engine), "--workspace",
                     str(workspace), "--cache-dir", str(cache), "--threads", "1", "--verify", "quick", "--host",
                     "127.0.0.1", "--port", "0", "--url-file", str(url_file)], url_file)
    try:
        url = url_file.read_text().strip()
        with urllib.request.urlopen(f"{url}/thumbnails?video_id=video30&count=4", timeout=120) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
            assert resp.read()[:2] == b"\xff\xd8"
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out[-2000:]
    assert _entries(cache) == cached  # read from the cache given: nothing decoded and stored anew
    assert not (workspace / "cache" / "frames").exists()  # and no second cache in the workspace


def test_serve_refuses_a_cache_dir_that_is_a_file(tmp_path):
    a_file = tmp_path / "frames"
    a_file.write_text("x")
    res = runner.invoke(app, ["serve", "--no-library", "--cache-dir", str(a_file), "--port", "0"])
    assert res.exit_code == 2, res.output
    assert f"--cache-dir {a_file} is a file" in res.output


def test_serve_refuses_a_cache_dir_under_a_file(tmp_path):
    """A --cache-dir under a file started the server, and every /thumbnails request answered 500 ('Not a
    directory'); it is refused before anything loads."""
    a_file = tmp_path / "frames"
    a_file.write_text("x")
    res = runner.invoke(app, ["serve", "--no-library", "--cache-dir", str(a_file / "sub"), "--port", "0"])
    assert res.exit_code == 2, res.output
    assert f"lies under {a_file}, a file" in " ".join(res.output.split())

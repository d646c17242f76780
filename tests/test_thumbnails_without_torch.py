"""The search page's thumbnails come from the decoded-frame cache; reading a cached video must not import torch.

``rap_deploy.data.video`` imported :mod:`rap_deploy.preprocess` (torch and torchvision) at module level, so the first
``GET /thumbnails`` of a ``rapdeploy serve`` over an ONNX Runtime engine imported torch: 16 s for that request on a
busy 2-core machine (a 15 s client timeout gave up on it) and ~700 MiB more resident memory in a server whose search
path is kept free of torch (the README's 10k-library memory figures)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def test_a_cached_thumbnail_is_read_without_torch(tmp_path, synth_root, micro_ort_engines):
    clips = tmp_path / "clips"
    (clips / "a b").mkdir(parents=True)
    for name in ("video30", "video31"):
        shutil.copy(synth_root / "videos" / f"{name}.mp4", clips / "a b" / f"{name}.mp4")
    lib, cache, engine = tmp_path / "lib", tmp_path / "cache", micro_ort_engines["fp32"]
    res = runner.invoke(app, ["index", "--videos", str(clips), "--engine", str(engine), "--out", str(lib),
                              "--cache-dir", str(cache), "--threads", "1"])
    assert res.exit_code == 0, res.output
    code = ("import json, sys\n"
            "from rap_deploy.engines import load_engine\n"
            "from rap_deploy.engines.serving.service import jpeg_strip\n"
            "from rap_deploy.library import open_library\n"
            f"with open_library({str(lib)!r}, load_engine({str(engine)!r}, threads=1), cache_dir={str(cache)!r}) "
            "as lib:\n"
            "    frames = lib.thumbnail_frames('a b/video30', 4)\n"
            "    jpeg = jpeg_strip(frames)\n"
            "print(json.dumps({'shape': list(frames.shape), 'jpeg': jpeg[:2].hex(),\n"
            "                  'loaded': sorted(m for m in ('torch', 'torchvision') if m in sys.modules)}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["shape"][0] == 4 and out["shape"][-1] == 3 and out["jpeg"] == "ffd8", out
    assert out["loaded"] == [], out

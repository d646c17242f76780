"""``rapdeploy serve --workspace W`` showed thumbnails from the frame cache of the default workspace (``rapdeploy-out``
in the current folder), not from ``W/cache/frames`` where ``rapdeploy index --workspace W`` put the library's frames:
every first ``GET /thumbnails`` re-decoded its video, imported torch and torchvision for it (the 16 s first
thumbnail 625a35a removed, back for such a server), and wrote a second cache into whatever folder the server was
started from. The served library now reads the workspace's cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def test_serve_reads_thumbnails_from_its_workspaces_frame_cache(tmp_path, synth_root, micro_ort_engines):
    clips, workspace, elsewhere = tmp_path / "clips", tmp_path / "my workspace", tmp_path / "started here"
    clips.mkdir()
    elsewhere.mkdir()
    for name in ("video30", "video31"):
        shutil.copy(synth_root / "videos" / f"{name}.mp4", clips / f"{name}.mp4")
    engine = micro_ort_engines["fp32"]
    res = runner.invoke(app, ["index", "--videos", str(clips), "--engine", str(engine), "--workspace", str(workspace),
                              "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (workspace / "cache" / "frames").is_dir()
    code = ("import json, sys\n"
            "from rap_deploy.engines.serving.server import build_service\n"
            f"service = build_service({str(engine)!r}, workspace={str(workspace)!r}, threads=1)\n"
            "try:\n"
            "    jpeg = service.thumbnail_jpeg('video30', 4)\n"
            "finally:\n"
            "    service.close()\n"
            "print(json.dumps({'jpeg': jpeg[:2].hex(),\n"
            "                  'loaded': sorted(m for m in ('torch', 'torchvision') if m in sys.modules)}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out == {"jpeg": "ffd8", "loaded": []}, out  # read from the cache: nothing decoded
    assert list(elsewhere.iterdir()) == [], list(elsewhere.iterdir())  # no second cache where it was started

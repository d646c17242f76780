"""bench --data-root over annotation files without their videos says where the videos were looked for, as export,
verify and data-check do."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from rap_deploy.cli import app


def test_bench_names_the_videos_folder_that_does_not_exist(micro_checkpoint, synth_root, tmp_path):
    """bench ended 'no msrvtt test video under DATA could be decoded (12 skipped: ...); run `rapdeploy data-check`'
    where export and verify over the same folder (and data-check since f678172) also say 'DATA/videos does not exist;
    put the videos there ... or pass the --data-root that holds them'."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv"):
        shutil.copy2(synth_root / name, data)
    res = CliRunner().invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", "video",
                                   "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--no-compare-meanp",
                                   "--data-root", str(data), "--out", str(tmp_path / "b"),
                                   "--workspace", str(tmp_path / "w")])
    assert res.exit_code == 1, res.output
    line = " ".join(res.stderr.split())
    assert line.startswith(f"error: no msrvtt test video under {data} could be decoded (12 skipped: "), line
    assert line.endswith(f"): {data / 'videos'} does not exist; put the videos there (<video_id>.<ext>, any "
                         "sub-folder) or pass the --data-root that holds them; run `rapdeploy data-check`"), line

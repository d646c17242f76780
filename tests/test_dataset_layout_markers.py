"""check_dataset_layout (a862412) must not refuse a dataset folder that holds what the split it reads needs."""

from __future__ import annotations

import shutil

from rap_deploy.data.datasets import load_split


def test_a_test_only_msrvtt_folder_inside_a_full_one_is_read(synth_root, tmp_path):
    """MSR-VTT's test split reads MSRVTT_JSFUSION_test.csv alone, but the layout check knew MSR-VTT's folder only by
    MSRVTT_data.json (training's file): a test-only folder (the test csv and videos/) inside a folder that
    holds MSRVTT_data.json was refused, 'holds no MSRVTT_data.json (msrvtt's annotation file): the folder above it
    holds it ...: pass --data-root PARENT', though the split reads fine from it."""
    full = tmp_path / "msrvtt"
    shutil.copytree(synth_root, full)
    test_only = full / "test-1k"
    test_only.mkdir()
    shutil.copy2(full / "MSRVTT_JSFUSION_test.csv", test_only)
    shutil.copytree(full / "videos", test_only / "videos")
    split = load_split("msrvtt", test_only, "test")
    assert split.num_videos == 12 and all(str(v.path).startswith(str(test_only)) for v in split.videos)

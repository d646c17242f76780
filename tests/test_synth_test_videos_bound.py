"""``synth --test-videos`` beyond the scenes the generator can tell apart drew scenes silently for hours (every test
caption must be unique: ~1e5 meanings, drawn at random). Such a count is refused at once, naming the most allowed."""

from __future__ import annotations

import time

from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.data.synth_dataset import TEST_SHARE_OF_SCENES, distinct_scene_keys


def test_more_test_videos_than_distinct_scenes_are_refused_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPDEPLOY_HOME", str(tmp_path / "ws"))
    assert 100_000 < distinct_scene_keys() < 120_000  # 6 colours x 4 shapes x 2 sizes x 8 actions, 1-2 events
    most = int(distinct_scene_keys() * TEST_SHARE_OF_SCENES)
    for test_videos in (9_999_999, most + 1):
        started = time.perf_counter()
        result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "sb"), "--videos", "10000000",
                                          "--test-videos", str(test_videos), "--quiet"])
        assert result.exit_code == 2, result.output
        assert time.perf_counter() - started < 10
        assert f"--test-videos {test_videos:,} is more than synth can draw" in result.stderr
        assert f"at most {distinct_scene_keys():,} distinct scenes" in result.stderr
        assert f"pass --test-videos {most:,} or fewer" in result.stderr
        assert not (tmp_path / "sb").exists()


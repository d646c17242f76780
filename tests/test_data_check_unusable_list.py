"""data-check's error line lists the first 20 unusable videos, then how many more (it joined and counted them by
hand; it now words the list with name_lists.some_names, as the other lists of names are): the same line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rap_deploy.cli.app import app


def test_the_first_20_unusable_videos_are_named_then_how_many_more(tmp_path):
    root = tmp_path / "msrvtt"
    (root / "videos").mkdir(parents=True)
    ids = [f"video{i}" for i in range(23)]
    rows = "".join(f"ret{i},msr{i},{vid},a clip {i}\n" for i, vid in enumerate(ids))
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + rows)
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n")
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": []}))
    (root / "videos" / "other.mp4").write_bytes(b"")
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    named = "; ".join(f"{root / 'videos' / vid}.mp4 (missing)" for vid in ids[:20])
    assert result.stderr.strip() == (
        f"error: 23 of 23 videos unusable: {named}; and 3 more: {root / 'videos'} holds none of them; put them there "
        "or pass the --data-root that holds them"), result.stderr

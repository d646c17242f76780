"""The README's exit-code rule says which command fails (exit 1) over a dataset whose videos are missing, and at how
many; it is pinned here to what export's real inputs do."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
from conftest import micro_config

from rap_deploy.errors import CheckFailedError
from rap_deploy.export.inputs import dataset_inputs

README = Path(__file__).resolve().parents[1] / "README.md"


def _rule_paragraph() -> str:
    text = " ".join(README.read_text().split())
    start = text.index("Which of 1 and 2:")
    return text[start:text.index("CPU memory:", start)]


def _test_videos(root: Path) -> list[str]:
    with open(root / "MSRVTT_JSFUSION_test.csv", newline="") as fh:
        return [row["video_id"] for row in csv.DictReader(fh)]


def test_readme_says_export_fails_only_when_fewer_than_3_test_videos_decode(synth_root, tmp_path):
    """The paragraph said a dataset whose captions name missing videos fails a check (exit 1) in `export
    --data-root` and `bench --data-root`, and two lines on that they pass over such videos: export with one of 12 test
    videos gone exits 0 (checked through the CLI), and fails only when fewer than 3 decode."""
    rule = _rule_paragraph()
    assert "in `export --data-root` when fewer than 3 test videos decode" in rule
    assert "in `bench --data-root`, `train` and `index` when not one does" in rule
    assert not re.search(r"`data-check`, `verify`, `export --data-root` and `bench --data-root`", rule)

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    videos = _test_videos(root)
    (root / "videos" / f"{videos[0]}.mp4").unlink()
    inputs = dataset_inputs(micro_config(), root, count=3)
    assert len(inputs.video_ids) == 3 and inputs.skipped == [{"video_id": videos[0], "reason": "missing"}]
    for vid in videos[3:]:
        (root / "videos" / f"{vid}.mp4").unlink()
    with pytest.raises(CheckFailedError, match="only 2 test videos of msrvtt .* could be decoded \\(need 3"):
        dataset_inputs(micro_config(), root, count=3)


def test_readme_troubleshooting_row_says_verify_fails_over_missing_videos():
    """The data-check row said 'evaluation drops them and reports them', which since ae689c1 verify (an evaluation)
    does only with --allow-skipped: without it, it exits 1 naming them."""
    text = " ".join(README.read_text().split())
    row = text[text.index("| `data-check` exits 1 and lists videos |"):].split(" |\n", 1)[0][:400]
    assert "evaluation drops them and reports them" not in row
    assert "`verify` exits 1 naming them (`--allow-skipped` accepts parity over the others)" in row

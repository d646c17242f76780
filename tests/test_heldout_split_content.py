"""The held-out split's files are checked against its heldout.json; each cached score names the content it scored."""

from __future__ import annotations

import hashlib
import json

from rap_deploy.data.synth_dataset import generate_synthetic_dataset
from rap_deploy.data.synth_heldout import CONTENT, HeldoutSplit, prepare_heldout, split_digest


def test_an_edited_heldout_split_is_written_again_and_its_scores_name_its_content(tmp_path):
    """Editing the split's captions (or a video) was never noticed: heldout.json matched the world's settings, so a
    run whose cached score was deleted was scored on the edited split while the others kept scores of the original
    (one table, two data sets). heldout.json records a sha256 of the split's files now: a split whose files changed
    is written again, and a cached score of other split content is scored again."""
    from rap_deploy.train.heldout_eval import heldout_metrics

    world = tmp_path / "world" / "data"
    generate_synthetic_dataset(world, videos=30, test_videos=6, seed=3, size=32, progress=False)
    folder = tmp_path / "held"
    held = prepare_heldout(world, folder, 6, progress=False)
    assert held.record[CONTENT] == split_digest(held.data)
    assert json.loads((folder / "heldout.json").read_text()) == held.record
    csv = held.data / "MSRVTT_JSFUSION_test.csv"
    original = csv.read_text()
    csv.write_text(original.replace("a ", "an edited ", 1))
    again = prepare_heldout(world, folder, 6, progress=False)
    assert csv.read_text() == original and again.record == held.record  # the split as it was written
    video = sorted((held.data / "videos").glob("*.mp4"))[-1]
    video.write_bytes(video.read_bytes()[:-10])  # a truncated video: also other content
    assert split_digest(held.data) != held.record[CONTENT]
    assert prepare_heldout(world, folder, 6, progress=False).record == held.record
    assert split_digest(held.data) == held.record[CONTENT]
    # a cached score names the split content it scored: read back for that content only
    run = tmp_path / "rap" / "seed0"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"a finished run's best.pt")
    scores = {d: {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MnR": 1.5} for d in ("t2v", "v2t")}
    (run / f"{held.tag}.json").write_text(json.dumps({
        **scores, "videos": 6, "seconds": 1.0, "split": held.record, "gallery": 0, "top_m": 4,
        "checkpoint_sha256": hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()}))
    assert heldout_metrics(run, held, 4, progress=False, cached_only=True)["t2v"] == scores["t2v"]
    other = HeldoutSplit(held.data, held.cache, {**held.record, CONTENT: "0" * 64})
    assert heldout_metrics(run, other, 4, progress=False, cached_only=True) is None

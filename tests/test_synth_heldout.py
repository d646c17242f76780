"""The held-out split of a synthetic world: the world's settings, another seed, none of the world's scenes."""

import csv
import json

import pytest

from rap_deploy.data.synth import reverse_scene, scene_key
from rap_deploy.data.synth_dataset import generate_synthetic_dataset, load_scenes
from rap_deploy.data.synth_heldout import HELDOUT_SEED_OFFSET, prepare_heldout
from rap_deploy.errors import UsageError


def _keys(data_root):
    scenes, _ = load_scenes(data_root)
    return scenes, {scene_key(s) for s in scenes.values()}


def test_heldout_split_avoids_every_world_scene_and_is_reused(tmp_path):
    world = tmp_path / "world" / "data"
    generate_synthetic_dataset(world, videos=40, test_videos=10, seed=3, size=32, progress=False)
    held = prepare_heldout(world, tmp_path / "held", 12, progress=False)
    _, world_keys = _keys(world)
    scenes, _ = _keys(held.data)
    with open(held.data / "MSRVTT_JSFUSION_test.csv", newline="") as f:
        test_ids = [row["video_id"] for row in csv.DictReader(f)]
    assert len(test_ids) == 12
    for vid in test_ids:
        assert scene_key(scenes[vid]) not in world_keys
        assert scene_key(reverse_scene(scenes[vid])) not in world_keys
    record = json.loads((tmp_path / "held" / "heldout.json").read_text())
    assert record == held.record and record["seed"] == 3 + HELDOUT_SEED_OFFSET and record["world_seed"] == 3
    assert record["size"] == 32 and record["world_scenes"] == len(world_keys)
    assert held.tag == f"heldout12-s{3 + HELDOUT_SEED_OFFSET}"
    stamp = (held.data / "MSRVTT_data.json").stat().st_mtime_ns
    assert prepare_heldout(world, tmp_path / "held", 12, progress=False).record == record  # reused as it is
    assert (held.data / "MSRVTT_data.json").stat().st_mtime_ns == stamp
    (tmp_path / "held" / "heldout.json").write_text("{\"videos\": 12}")  # a record that does not match: rewritten
    assert prepare_heldout(world, tmp_path / "held", 12, progress=False).record == record
    assert json.loads((tmp_path / "held" / "heldout.json").read_text()) == record


def test_heldout_split_refuses_bad_counts_and_foreign_folders(tmp_path):
    world = tmp_path / "world"
    generate_synthetic_dataset(world, videos=8, test_videos=2, seed=0, size=32, progress=False)
    with pytest.raises(UsageError, match="2 to 5000 videos, got 1"):
        prepare_heldout(world, tmp_path / "held", 1, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "MSRVTT_data.json").write_text(json.dumps({"info": {}, "videos": [], "sentences": []}))
    with pytest.raises(UsageError, match="not a rapdeploy synthetic dataset"):
        prepare_heldout(tmp_path / "other", tmp_path / "held", 4, progress=False)


def test_a_record_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    """read_record checked only the size (a FIFO's is 0), then read_text blocked forever waiting for a writer;
    anything but a regular file is now refused unread. (The thread and its generous join only keep a regression
    from hanging the run; a writer is opened afterwards to release a blocked read.)"""
    import os
    import threading

    from rap_deploy.data.synth_heldout import read_record

    fifo = tmp_path / "result.json"
    os.mkfifo(fifo)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(read_record(fifo)), daemon=True)
    reader.start()
    reader.join(60)
    blocked = reader.is_alive()
    if blocked:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a reader waits: this open succeeds and ends it
        reader.join(60)
    assert not blocked and got == [None]
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "ok.json").write_text('{"seed": 1}')
    assert read_record(tmp_path / "folder.json") is None and read_record(tmp_path / "ok.json") == {"seed": 1}
    assert read_record(tmp_path / "ok.json", max_bytes=4) is None and read_record(tmp_path / "none.json") is None

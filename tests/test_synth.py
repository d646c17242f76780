"""The synthetic dataset: layout, captions, time-reversed pairs, determinism, stills, and the reference baselines."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import decord
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.config import PreprocessConfig
from rap_deploy.data import synth, synth_dataset, synth_stills
from rap_deploy.data.cache import FrameCache
from rap_deploy.data.datasets import load_split
from rap_deploy.data.synth_baselines import oracle_similarity, order_blind_baseline
from rap_deploy.errors import UsageError

MOTION_WORDS = {"moves", "slides", "goes", "rises", "sinks", "grows", "shrinks", "appears", "disappears", "fades",
                "vanishes", "expands", "contracts", "then", "bigger", "smaller", "view"}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_and_captions(synth_root):
    data = json.loads((synth_root / "MSRVTT_data.json").read_text())
    assert len(data["videos"]) == 36 and data["info"]["size"] == 64
    with open(synth_root / "MSRVTT_train.9k.csv") as fh:
        train_ids = [r["video_id"] for r in csv.DictReader(fh)]
    with open(synth_root / "MSRVTT_JSFUSION_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["key", "vid_key", "video_id", "sentence"]
    assert len(train_ids) == 24 and len(rows) == 12
    assert set(train_ids).isdisjoint(r["video_id"] for r in rows)
    assert all((synth_root / "videos" / f"video{i}.mp4").is_file() for i in range(36))
    per_video = {}
    for s in data["sentences"]:
        per_video.setdefault(s["video_id"], []).append(s["caption"])
    assert all(len(set(caps)) == len(caps) >= 3 for caps in per_video.values())  # several distinct paraphrases

    scenes, _ = synth_dataset.load_scenes(synth_root)
    test_captions = [r["sentence"] for r in rows]
    assert len(set(test_captions)) == 12  # unique in the split
    keys = [synth.scene_key(scenes[r["video_id"]]) for r in rows]
    assert len(set(keys)) == 12
    for r in rows:
        scene = scenes[r["video_id"]]
        # every paraphrase means the same scene
        assert {synth.parse_caption(c) for c in per_video[r["video_id"]]} == {synth.scene_key(scene)}
        # and the time-reversed scene is also in the test split
        assert synth.scene_key(synth.reverse_scene(scene)) in keys
    train_keys = {synth.scene_key(scenes[v]) for v in train_ids}
    assert train_keys.isdisjoint(keys)


def test_videos_decode_with_decord(synth_root):
    reader = decord.VideoReader(str(synth_root / "videos" / "video30.mp4"))
    assert len(reader) == 48 and reader.get_avg_fps() == pytest.approx(4.0)
    frame = reader[0].asnumpy()
    assert frame.shape == (64, 64, 3)
    assert np.abs(frame.astype(int) - synth.BACKGROUND).max(axis=-1).min() < 8  # plain background somewhere


def test_deterministic_for_a_seed(tmp_path):
    write = synth_dataset.generate_synthetic_dataset
    a = write(tmp_path / "a", videos=6, test_videos=2, seed=3, size=32, progress=False)
    write(tmp_path / "b", videos=6, test_videos=2, seed=3, size=32, progress=False)
    write(tmp_path / "c", videos=6, test_videos=2, seed=4, size=32, progress=False)
    assert a["test_reverse_pairs"] == 1
    for name in ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv", "videos/video5.mp4"):
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "b" / name)
    assert _sha(tmp_path / "a" / "MSRVTT_data.json") != _sha(tmp_path / "c" / "MSRVTT_data.json")
    # ... and in another process, whose string hashes (set and dict-of-set order) differ: the demo's and the
    # ablation's worlds are remade by other processes
    code = ("import sys; from rap_deploy.data.synth_dataset import generate_synthetic_dataset as w; "
            "w(sys.argv[1], videos=6, test_videos=2, seed=3, size=32, progress=False)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "e")], check=True, timeout=300,
                   env={**os.environ, "PYTHONHASHSEED": "12345"})
    for name in ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv", "videos/video5.mp4"):
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "e" / name), name
    with pytest.raises(UsageError):
        synth_dataset.generate_synthetic_dataset(tmp_path / "d", videos=4, test_videos=4, progress=False)


def test_reverse_scene_shows_the_same_frames_backwards():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = synth.random_scene(rng, 12, distractors=0.5)
        rev = synth.reverse_scene(scene)
        assert synth.scene_key(rev) != synth.scene_key(scene)
        assert synth.scene_key(synth.reverse_scene(rev)) == synth.scene_key(scene)
        t = np.arange(12.0)
        fwd = synth.render_scene(scene, t, 48, 12)
        bwd = synth.render_scene(rev, t, 48, 12)
        assert np.array_equal(fwd, bwd[::-1])
        assert not np.array_equal(fwd, bwd)


def test_distractors_are_static_unnamed_and_apart():
    rng = np.random.default_rng(1)
    t = np.arange(12.0)
    for _ in range(20):
        scene = synth.random_scene(rng, 12, distractors=1.0)
        owners = {e.obj for e in scene.events}
        [extra] = [i for i in range(len(scene.objects)) if i not in owners]
        distractor = scene.objects[extra]
        assert distractor.colour not in {scene.objects[i].colour for i in owners}
        for caption in synth.paraphrases(scene, rng, 5):
            assert distractor.colour not in caption.split()
        assert synth.scene_key(scene) == synth.scene_key(synth.SceneSpec(
            tuple(o for i, o in enumerate(scene.objects) if i != extra),
            tuple(synth.SynthEvent(e.obj - (e.obj > extra), e.action, e.amount) for e in scene.events)))
        state = synth.scene_state(scene, t, 12)
        assert synth._apart(state)
        for k in ("x", "y", "r", "alpha"):
            assert np.ptp(state[k][extra]) == 0.0  # it does nothing
        assert state["alpha"][extra, 0] == 1.0  # and is always in view
    plain = synth.random_scene(np.random.default_rng(1), 12, distractors=0.0)
    assert len(plain.objects) == len({e.obj for e in plain.events})


def test_distractor_share_is_an_option(tmp_path, synth_root):
    scenes, info = synth_dataset.load_scenes(synth_root)
    assert info["distractors"] == 0.0  # the default world: every object in view is in the caption
    assert all(len(s.objects) == len({e.obj for e in s.events}) for s in scenes.values())
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "all"), "--videos", "8", "--test-videos",
                                      "4", "--size", "32", "--seconds", "4", "--distractors", "1", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["distractors"] == 1.0
    scenes, info = synth_dataset.load_scenes(tmp_path / "all")
    assert info["distractors"] == 1.0
    assert all(len(s.objects) == len({e.obj for e in s.events}) + 1 for s in scenes.values())
    bad = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "bad"), "--distractors", "1.5"])
    assert bad.exit_code == 2 and "--distractors" in bad.output
    with pytest.raises(UsageError, match="distractors"):
        synth_dataset.generate_synthetic_dataset(tmp_path / "x", videos=4, test_videos=2, size=32, distractors=-0.1,
                                         progress=False)


def test_a_world_of_an_earlier_format_is_refused_with_the_fix(tmp_path, synth_root):
    _, info = synth_dataset.load_scenes(synth_root)
    assert info["format"] == synth_dataset.FORMAT and info["object_radius"] == synth.SIZE_RADIUS
    data = json.loads((synth_root / "MSRVTT_data.json").read_text())
    old = tmp_path / "old" / "data"  # a world folder as `rapdeploy demo` / `ablate` lay it out
    old.mkdir(parents=True)
    data["info"]["format"] = "rapdeploy-synth-1"  # written before the objects grew: its scenes render otherwise
    (old / "MSRVTT_data.json").write_text(json.dumps(data))
    earlier = r"earlier rapdeploy \(rapdeploy-synth-1\): its objects are smaller.*synth --out"
    with pytest.raises(UsageError, match=earlier):
        synth_dataset.load_scenes(old)
    # the demo's and ablate's world step refuses it before anything is trained, instead of skipping synth
    result = CliRunner().invoke(app, ["ablate", "--tiny", "--world", str(old.parent), "--rows", "zero_shot",
                                      "--seeds", "0", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "rapdeploy-synth-1" in result.output and "NEW_FOLDER" in result.output
    assert not (old.parent / "cache").exists() and not (tmp_path / "runs" / "zero_shot").exists()
    # ... and so is a cached backbone pre-trained on the earlier stills (its record has no object radius)
    from rap_deploy.backbone_file import save_backbone
    from rap_deploy.cli.demo_recipe import DemoSizes
    from rap_deploy.cli.demo_world import world_backbone

    shutil.copytree(synth_root, tmp_path / "new" / "data")  # the tests' world: 12 test videos, not the tiny 8
    other = CliRunner().invoke(app, ["ablate", "--tiny", "--world", str(tmp_path / "new"), "--rows", "zero_shot",
                                     "--seeds", "0", "--out", str(tmp_path / "runs")])
    assert other.exit_code == 2 and "another recipe's world" in other.output and "(this run: 8)" in other.output
    shutil.rmtree(tmp_path / "new" / "data")  # no dataset yet: the cached backbone is checked before synth runs
    stale = save_backbone({"w": torch.zeros(1)}, "rap-micro", world_backbone(tmp_path / "new", DemoSizes.tiny()),
                          {"clip": "rap-micro"})
    result = CliRunner().invoke(app, ["ablate", "--tiny", "--world", str(tmp_path / "new"), "--rows", "zero_shot",
                                      "--seeds", "0", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and str(stale) in result.output and "the earlier 0.10 / 0.16" in result.output
    assert not (tmp_path / "runs" / "zero_shot").exists()
    data["info"]["format"] = "someone-else"
    (old / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match="not a rapdeploy synthetic dataset"):
        synth_dataset.load_scenes(old)


def test_parse_caption():
    assert synth.parse_caption("A small red circle moves to the left, then a big blue square appears.") == (
        ("red", "circle", "small", "left"),
        ("blue", "square", "big", "appear"),
    )
    assert synth.parse_caption("first a little green diamond rises, then the large green diamond vanishes") == (
        ("green", "diamond", "small", "up"),
        ("green", "diamond", "big", "disappear"),
    )
    with pytest.raises(ValueError):
        synth.parse_caption("a man is talking")


def test_stills_same_world_no_motion():
    images, captions = synth_stills.generate_stills(40, seed=1, size=48)
    again, captions2 = synth_stills.generate_stills(40, seed=1, size=48)
    assert images.shape == (40, 48, 48, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and captions == captions2
    words = {w for c in captions for w in c.split()}
    assert not words & MOTION_WORDS
    assert words & set(synth.COLOURS) and words & set(synth.SHAPES)
    # a one-object still: its colour sits in the grid cell the caption names
    cells = {phrase: cell for cell, phrase in synth_stills.POSITIONS.items()}
    for img, cap in zip(images, captions, strict=True):
        if " and " in cap:
            continue
        colour = next(c for c in synth.COLOURS if f" {c} " in cap)
        col, row = next(cell for phrase, cell in cells.items() if cap.endswith(phrase))
        hit = np.abs(img.astype(int) - synth.COLOURS[colour]).sum(-1) < 30
        ys, xs = np.nonzero(hit)
        assert int(xs.mean() * 3 / 48) == col and int(ys.mean() * 3 / 48) == row


def test_stills_distractor_is_unnamed_and_stays_with_its_twin():
    images, captions = synth_stills.generate_stills(24, seed=4, size=48, position_twins=True, distractors=1.0)
    plain, plain_captions = synth_stills.generate_stills(24, seed=4, size=48, position_twins=True)
    assert images.shape == plain.shape
    for img, cap in zip(images, captions, strict=True):
        unnamed = [c for c in synth.COLOURS if c not in synth_stills.named_colours(cap)
                   and (np.abs(img.astype(int) - synth.COLOURS[c]).sum(-1) < 30).sum() > 4]
        assert len(unnamed) == 1  # one object the caption does not name
    for a, b in zip(captions[0::2], captions[1::2], strict=True):
        assert synth_stills.named_colours(a) == synth_stills.named_colours(b)  # a twin names the same objects
    with pytest.raises(UsageError, match="distractors"):
        synth_stills.generate_stills(2, seed=0, size=32, distractors=2.0)


def test_oracle_perfect_and_order_blind_fails(synth_root, tmp_path):
    split = load_split("msrvtt", synth_root, "test")
    sim = oracle_similarity(split)
    assert sim.sum() == split.num_captions  # each caption matches exactly one video
    result = order_blind_baseline(split, FrameCache(tmp_path / "cache"), PreprocessConfig(image_size=32))
    assert result["reverse_pairs"] == 6
    for d in ("t2v", "v2t"):
        assert result["oracle"][d]["R1"] == 100.0 and result["oracle"][d]["ties"] == 0
        assert result["order_aware_pixels"][d]["R1"] == 100.0
        assert result["order_blind_pixels"][d]["R5"] == 100.0
        assert result["order_blind_pixels_ties_broken"][d]["R1"] <= 75.0
    # The time-reversed partner shows the same frames: averaged over time, each caption of a pair scores both videos
    # alike up to codec noise, so exactly one of the two captions finds its video first ...
    blind = result["order_blind_pixels"]
    assert blind["t2v"]["R1"] == pytest.approx(50.0) and blind["t2v"]["ties"] == 0
    # ... and every video query ties its own caption with its partner's (identical averaged text features).
    assert blind["v2t"]["ties"] == 12


def test_synth_cli_json(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "d"), "--videos", "8", "--test-videos", "4",
                                      "--size", "32", "--seconds", "4", "--fps", "2", "--seed", "5", "--distractors",
                                      "0.25", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["test_videos"] == 4 and summary["train_videos"] == 4 and summary["test_reverse_pairs"] == 2
    assert len(list((tmp_path / "d" / "videos").glob("*.mp4"))) == 8
    reader = decord.VideoReader(str(tmp_path / "d" / "videos" / "video7.mp4"))
    assert len(reader) == 8 and reader.get_avg_fps() == pytest.approx(2.0) and reader[0].shape == (32, 32, 3)
    # every option reached the generator: the same call through the API writes the same files
    synth_dataset.generate_synthetic_dataset(tmp_path / "api", videos=8, test_videos=4, seed=5, size=32, fps=2,
                                             seconds=4, distractors=0.25, progress=False)
    for name in ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv", "videos/video7.mp4"):
        assert _sha(tmp_path / "d" / name) == _sha(tmp_path / "api" / name), name
    bad = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "e"), "--videos", "3", "--test-videos", "5"])
    assert bad.exit_code == 2 and "test videos" in bad.stderr


def _reverse_video(scenes):
    """Index of every video's time reverse among ``scenes`` (-1 when absent)."""
    keys = [synth.scene_key(s) for s in scenes]
    return [keys.index(synth.scene_key(synth.reverse_scene(s))) if synth.scene_key(synth.reverse_scene(s)) in keys
            else -1 for s in scenes]


def test_mistake_breakdown_of_the_oracle_and_of_a_time_blind_ranker(synth_root):
    from rap_deploy.data.synth_errors import KINDS, split_scenes, top1_mistakes

    split = load_split("msrvtt", synth_root, "test")
    scenes = split_scenes(split)
    oracle = top1_mistakes(oracle_similarity(split), split.caption_video, scenes)
    assert oracle["kinds"] == {k: (100.0 if k == "correct" else 0.0) for k in KINDS}
    assert oracle["queries"] == split.num_captions and oracle["with_reverse"] == 12
    assert oracle["beats_time_reverse"] == 100.0
    # A ranker that always puts the time reverse first: every query is that mistake, none beats its reverse.
    reverse = _reverse_video(scenes)
    assert all(r >= 0 for r in reverse)
    sim = np.zeros((split.num_captions, split.num_videos), np.float32)
    for c, v in enumerate(split.caption_video):
        sim[c, reverse[v]] = 1.0
    flipped = top1_mistakes(sim, split.caption_video, scenes)
    assert flipped["kinds"]["time_reverse"] == 100.0 and flipped["beats_time_reverse"] == 0.0
    with pytest.raises(ValueError, match="does not match"):
        top1_mistakes(sim[:, :-1], split.caption_video, scenes)
    assert oracle["by_distractor"] == {"with_distractor": {"queries": 0, "R1": None},
                                       "without_distractor": {"queries": split.num_captions, "R1": 100.0}}


def test_top1_split_by_distractor():
    from rap_deploy.data.synth import SceneSpec, SynthEvent, SynthObject
    from rap_deploy.data.synth_errors import top1_by_distractor

    obj = SynthObject("red", "circle", "small", 0.3, 0.3, 1.0)
    still = SynthObject("blue", "square", "big", 0.7, 0.7, 1.0)
    clean = SceneSpec((obj,), (SynthEvent(0, "grow", 0.0),))
    with_distractor = SceneSpec((obj, still), (SynthEvent(0, "grow", 0.0),))
    assert with_distractor.has_distractor and not clean.has_distractor
    scenes = [clean, with_distractor]
    # queries 0, 1 describe video 0; queries 2, 3, 4 video 1 (its distractor named by none of them)
    correct = np.array([True, False, True, False, False])
    out = top1_by_distractor(correct, np.array([0, 0, 1, 1, 1]), scenes)
    assert out == {"with_distractor": {"queries": 3, "R1": 33.33}, "without_distractor": {"queries": 2, "R1": 50.0}}


def test_mistake_kinds_name_what_differs():
    from rap_deploy.data.synth_errors import mistake_kind

    query = (("red", "circle", "small", "left"), ("blue", "square", "big", "appear"))
    reverse = (("blue", "square", "big", "disappear"), ("red", "circle", "small", "right"))
    assert mistake_kind(query, query, reverse) == "correct"
    assert mistake_kind(query, reverse, reverse) == "time_reverse"
    assert mistake_kind(query, (("blue", "square", "big", "grow"), ("red", "circle", "small", "up")),
                        reverse) == "same_objects"
    assert mistake_kind(query, (("red", "triangle", "small", "up"), ("blue", "diamond", "big", "grow")),
                        reverse) == "other_shapes"
    assert mistake_kind(query, (("green", "circle", "small", "left"), ("blue", "triangle", "big", "appear")),
                        reverse) == "same_actions"
    assert mistake_kind(query, (("red", "circle", "small", "left"),), reverse) == "other_event_count"
    assert mistake_kind(query, (("green", "diamond", "small", "down"), ("white", "square", "big", "grow")),
                        reverse) == "other"


def test_mistake_breakdown_module_run_on_a_checkpoint(synth_root, micro_checkpoint, tmp_path, capsys):
    from rap_deploy.data import synth_errors

    synth_errors.main(["--checkpoint", str(micro_checkpoint), "--data-root", str(synth_root),
                       "--cache", str(tmp_path / "frames")])
    out = json.loads(capsys.readouterr().out)
    for name in ("full", "meanp"):
        kinds = out[name]["kinds"]
        assert set(kinds) == set(synth_errors.KINDS) and sum(kinds.values()) == pytest.approx(100.0, abs=0.05)
        assert kinds["correct"] == pytest.approx(out[name]["R1"], abs=0.01)
        assert out[name]["with_reverse"] == 12


def test_selection_sorting_names_the_distractor_patches(tmp_path, micro_checkpoint, capsys):
    from rap_deploy.data import synth_selection

    scene = synth.random_scene(np.random.default_rng(3), 12, distractors=1.0)
    named, distractor = synth_selection.patch_roles(scene, np.arange(0.0, 12.0, 3.0), 32, 12, (4, 4))
    assert named.shape == distractor.shape == (4, 16) and distractor.any(axis=1).all()
    assert synth_selection.selection_shares(np.array([[0, 1]]), np.array([[True, False, False]]),
                                            np.array([[False, True, False]])) == {
        "named": 50.0, "distractor": 50.0, "background": 0.0}
    assert synth_selection.jaccard(np.array([[0, 1], [2, 3]]), np.array([[1, 0], [3, 4]])) == pytest.approx(
        (1.0 + 1 / 3) / 2)

    root = tmp_path / "distracted"
    synth_dataset.generate_synthetic_dataset(root, videos=8, test_videos=4, seed=1, size=32, seconds=4, distractors=1.0,
                                     progress=False)
    synth_selection.main(["--checkpoint", str(micro_checkpoint), "--data-root", str(root)])
    report = json.loads(capsys.readouterr().out)
    assert report["all"]["captions"] == report["with_distractor"]["captions"] == 4
    assert report["without_distractor"] == {"captions": 0}
    for mode in ("text", "saliency"):
        assert sum(report["all"][mode].values()) == pytest.approx(100.0, abs=0.05)
    assert 0.0 <= report["all"]["overlap"] <= 1.0

    from conftest import micro_config

    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, model = new_checkpoint(micro_config(use_asa=False), BackboneSpec.parse("rap-micro", "none"), seed=0)
    save_checkpoint(checkpoint_from_model(model, ckpt), tmp_path / "no_asa.pt")
    with pytest.raises(SystemExit) as refused:
        synth_selection.main(["--checkpoint", str(tmp_path / "no_asa.pt"), "--data-root", str(root)])
    assert refused.value.code == 2 and "has no ASA head" in capsys.readouterr().err


def test_selection_evidence_averages_the_kept_patches_cosines_over_valid_frames():
    from rap_deploy.data.selection_lift import selection_evidence
    from rap_deploy.model.asa import AsynchronousSelfAttention

    asa = AsynchronousSelfAttention(dim=2, grid=(1, 3), topk=2, heads=1, attn_dim=2)
    text = np.array([[1.0, 0.0]], dtype=np.float32)
    diag = np.float32(np.sqrt(0.5))
    # Video 0, frame 0: patches along x, along y, diagonal; frame 1 is padding (zero frame row).
    # Video 1, frame 0: patches along -x, y, diagonal; frame 1: x, x, y. Every frame embedding is along y.
    patches = np.array([[[[1, 0], [0, 1], [diag, diag]], [[0, 0], [0, 0], [0, 0]]],
                        [[[-1, 0], [0, 1], [diag, diag]], [[1, 0], [1, 0], [0, 1]]]], dtype=np.float32)
    frames = np.array([[[0, 1], [0, 0]], [[0, 1], [0, 1]]], dtype=np.float32)
    # By the caption (x): video 0 keeps x and the diagonal in its one valid frame; video 1 keeps the diagonal and
    # y in frame 0, x and x in frame 1.
    asa.selection = "text"
    np.testing.assert_allclose(selection_evidence(asa, text, frames, patches, video_block=1),
                               [[(1 + diag) / 2, (diag / 2 + 1) / 2]], atol=1e-6)
    # By each frame's own embedding (y): y and the diagonal in frame 0 of both videos, y and an x in video 1's
    # frame 1. The caption's cosine with them is the score either way.
    asa.selection = "saliency"
    np.testing.assert_allclose(selection_evidence(asa, text, frames, patches),
                               [[diag / 2, (diag / 2 + 0.5) / 2]], atol=1e-6)


def test_selection_lift_compares_both_selections_on_the_same_weights(micro_checkpoint, synth_root, capsys):
    from rap_deploy.data import selection_lift

    base = np.array([[0.5, 0.4, 0.1], [0.2, 0.3, 0.6]])
    sim = base + np.array([[0.1, 0.3, 0.0], [0.0, 0.2, 0.0]])
    lifts = selection_lift.lift_summary(sim, base, np.array([0, 1]))
    # Row 0: own +0.1, others (0.3 + 0) / 2, hardest other by base = video 1 (+0.3), margin 0.6 - 0.7.
    # Row 1: own +0.2, others 0, hardest other by base = video 2 (+0.0), margin 0.5 - 0.6.
    assert lifts == pytest.approx({"own": 0.15, "others": 0.075, "hardest_base_other": 0.15, "margin": -0.1})
    with pytest.raises(ValueError, match="do not match"):
        selection_lift.lift_summary(sim, base[:, :2], np.array([0, 1]))

    # Own videos from `sim`, rivals from `base`: row 0 0.6 vs 0.4, row 1 0.5 vs 0.6 (a tie would count as found).
    assert selection_lift.crossed_r1(sim, base, np.array([0, 1])) == 50.0
    assert selection_lift.crossed_r1(base, sim, np.array([0, 1])) == 0.0
    assert selection_lift.crossed_r1(base, base, np.array([0, 2])) == 100.0
    from rap_deploy.metrics import retrieval_metrics
    assert selection_lift.crossed_r1(sim, sim, np.array([0, 1])) == retrieval_metrics(sim, [0, 1])["t2v"]["R1"]
    with pytest.raises(ValueError, match="do not match"):
        selection_lift.crossed_r1(sim, base[:, :2], np.array([0, 1]))

    selection_lift.main(["--checkpoint", str(micro_checkpoint), "--data-root", str(synth_root)])
    report = json.loads(capsys.readouterr().out)
    assert report["trained_selection"] == "text" and report["queries"] == 12
    assert set(report) == {"trained_selection", "queries", "meanp", "text", "saliency", "crossed", "evidence"}
    assert set(report["evidence"]) == set(selection_lift.SELECTIONS)
    assert all(0.0 <= r <= 100.0 for r in report["evidence"].values())
    assert set(report["crossed"]) == {"own_text_others_saliency", "own_saliency_others_text"}
    assert all(0.0 <= r <= 100.0 for r in report["crossed"].values())
    for mode in selection_lift.SELECTIONS:
        assert set(report[mode]) == {"R1", "own", "others", "hardest_base_other", "margin"}
    # The randomised head's term is not zero, and the two selections read different patches.
    assert report["text"]["own"] != 0.0 and report["text"] != report["saliency"]

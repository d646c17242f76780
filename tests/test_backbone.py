"""Pre-training of the offline default backbone: held-out metrics by meaning, and a file `init --backbone` accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.backbone_file import read_backbone_clip_name, read_backbone_info
from rap_deploy.checkpoint import load_checkpoint
from rap_deploy.cli.app import app
from rap_deploy.train.backbone_eval import heldout_metrics, still_meaning
from rap_deploy.train.backbone_losses import localisation_loss, object_patches


def test_still_meaning_ignores_paraphrase():
    a = still_meaning("a little red circle at the top left and a big blue square in the center")
    b = still_meaning("there is a large blue square in the center and a small red circle at the top left")
    assert a == b == frozenset({("small", "red", "circle", "0,0"), ("big", "blue", "square", "1,1")})
    assert still_meaning("a small red circle on the left") != still_meaning("a small red circle on the right")
    with pytest.raises(ValueError):
        still_meaning("a red circle moves to the left")


def test_heldout_metrics_count_same_meaning_as_correct():
    captions = ["a small red circle on the left", "a little red circle on the left",  # same meaning
                "a big blue square at the top", "a small green diamond at the bottom"]
    emb = np.eye(4, dtype=np.float32)
    # Image 1 matches caption 0 best (a paraphrase of its own caption): still correct.
    image_emb = emb[[0, 0, 2, 3]]
    m = heldout_metrics(image_emb, emb, captions)
    assert m["i2t"]["R1"] == 100.0 and m["t2i"]["R1"] == 100.0
    assert m["attributes"] == {"size": 100.0, "colour": 100.0, "shape": 100.0, "position": 100.0}
    # Swap two images of different meaning: both are wrong now.
    m = heldout_metrics(emb[[0, 0, 3, 2]], emb, captions)
    assert m["i2t"]["R1"] == 50.0 and m["attributes"]["colour"] == 50.0 and m["attributes"]["shape"] == 50.0


def test_heldout_metrics_hold_one_score_matrix_and_huge_held_out_sets_are_refused_before_training(monkeypatch):
    """The held-out metrics compared meanings in N x N Python lists of bools (8 bytes per pair, plus the arrays made
    of them: measured 2.5 times the N x N float32 score matrix, 7 s for 6,000 stills, growing with N squared), and
    nothing bounded --test-stills, so a large held-out set ran out of memory after the whole pre-training. Meanings
    are now integer ids compared a block of rows at a time (the same ranks); a held-out set whose score matrix does
    not fit is refused before anything is trained."""
    import tracemalloc

    from rap_deploy.data.synth_stills import generate_stills
    from rap_deploy.errors import UsageError
    from rap_deploy.train import backbone

    n = 3000
    _, captions = generate_stills(n, 0, 16)
    rng = np.random.default_rng(0)
    image_emb, text_emb = (rng.standard_normal((n, 8)).astype(np.float32) for _ in range(2))
    tracemalloc.start()
    try:
        m = heldout_metrics(image_emb, text_emb, captions)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 4 * n * n and m["t2i"]["queries"] == n
    assert m["i2t"]["queries"] == n and m["distinct_captions"] == len(set(captions))

    def not_reached(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(backbone, "_create_model", not_reached)
    with pytest.raises(UsageError, match="scoring 10,000,000 held-out stills.*--test-stills"):
        backbone.pretrain_backbone("b.safetensors", n_test=10_000_000, progress=False)


def test_localisation_loss_rewards_text_on_object_patches():
    text = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    patches = torch.nn.functional.normalize(torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    on_object = torch.tensor([[True, False, False, False], [False, False, True, False]])
    aligned = patches.clone()
    aligned[0, 0], aligned[1, 2] = text[0], text[1]  # the object patches now match their caption
    scale = torch.tensor(10.0)
    assert localisation_loss(aligned, text, on_object, scale) < localisation_loss(patches, text, on_object, scale)
    images = np.full((1, 16, 16, 3), 40, dtype=np.uint8)
    images[0, 0:4, 8:12] = (230, 45, 45)  # a red object in the top row, third patch of a 4x4 grid
    assert object_patches(images, (4, 4))[0].tolist() == [False, False, True] + [False] * 13


def test_named_patches_leave_out_the_distractor_and_equal_object_patches_without_one():
    from rap_deploy.data.synth import COLOURS
    from rap_deploy.data.synth_stills import generate_stills, named_colours
    from rap_deploy.train.backbone_losses import named_object_patches

    plain, plain_captions = generate_stills(40, 2, 32)
    assert np.array_equal(named_object_patches(plain, plain_captions, (4, 4)), object_patches(plain, (4, 4)))
    images, captions = generate_stills(40, 2, 32, distractors=1.0)
    named, shown = named_object_patches(images, captions, (4, 4)), object_patches(images, (4, 4))
    assert not (named & ~shown).any() and (shown & ~named).any(axis=1).all()  # every still has unnamed patches
    for img, cap, row in zip(images, captions, named, strict=True):
        others = [c for c in COLOURS if c not in named_colours(cap)
                  and (np.abs(img.astype(int) - COLOURS[c]).sum(-1) < 30).sum() > 4]
        assert len(others) == 1  # exactly one object in a colour the caption does not name: the distractor
        cells = (np.abs(img.astype(int) - COLOURS[others[0]]).sum(-1) < 30).reshape(4, 8, 4, 8).any(axis=(1, 3))
        assert not (row.reshape(4, 4) & cells & ~_named_cells(img, cap)).any()


def _named_cells(img, caption):
    """The 8 px cells holding a pixel of a named object: its colour blended with the background (anti-aliased edges
    included: a cell can hold only a faint edge row of a large object), off the background by over 30 (L1)."""
    from rap_deploy.data.synth import BACKGROUND, COLOURS
    from rap_deploy.data.synth_stills import named_colours

    away = img.astype(float) - np.asarray(BACKGROUND, float)
    near = np.zeros(img.shape[:2], dtype=bool)
    for c in named_colours(caption):
        full = np.asarray(COLOURS[c], float) - np.asarray(BACKGROUND, float)
        alpha = np.clip(away @ full / (full @ full), 0.0, 1.0)
        blend = np.abs(away - alpha[..., None] * full).max(-1) < 8  # on the colour's line from the background
        near |= blend & (np.abs(away).sum(-1) > 30)
    return near.reshape(4, 8, 4, 8).any(axis=(1, 3))


def test_caption_pairs_are_paraphrases_with_hard_variants():
    from rap_deploy.data.synth import parse_caption
    from rap_deploy.train.captions import caption_pair_batch

    a, b, ids = caption_pair_batch(np.random.default_rng(0), 12)
    assert len(a) == len(b) == len(ids) == 12
    for x, y in zip(a, b, strict=True):
        assert parse_caption(x) == parse_caption(y)  # the two sides are paraphrases of one scene
    assert not any(w in " ".join(a) for w in (" at the top", " on the left", " in the center"))  # no still phrasing
    # The first group is a scene and its time reverse: different meanings, so they are negatives of each other.
    assert ids[0] != ids[1] and parse_caption(a[1]) != parse_caption(a[0])
    assert all(ids[i] == ids[j] for i in range(12) for j in range(12) if parse_caption(a[i]) == parse_caption(a[j]))


def test_pretrain_backbone_cli_writes_a_file_init_accepts(tmp_path):
    runner = CliRunner()
    out = tmp_path / "micro-backbone.safetensors"
    args = ["pretrain-backbone", "--data-root", str(tmp_path / "stills"), "--out", str(out), "--clip", "rap-micro",
            "--size", "32", "--train-stills", "64", "--test-stills", "16", "--epochs", "1", "--batch-size", "16",
            "--text-weight", "0.5", "--quiet", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["steps"] == 4 and info["clip"] == "rap-micro" and info["text_weight"] == 0.5  # the opt-in text loss
    assert info["position_init"] == "sincos" and info["position_twins"] is False  # the defaults
    assert {"i2t", "t2i", "attributes", "patch_selection", "text"} <= info["heldout"].keys() and info["seconds"] > 0
    assert read_backbone_clip_name(out) == "rap-micro"
    assert read_backbone_info(out)["heldout"] == info["heldout"]
    assert len(list((tmp_path / "stills" / "stills").glob("*.npz"))) == 2  # train and held-out stills cached
    # The file holds no wall or CPU seconds: pre-trained again with the same settings it is the same file, byte for
    # byte. Four demo worlds' backbones had the same weights but four sha256s (their timings differed), and `ablate`,
    # which knows a backbone by its sha256, would not read back one world's runs beside another's.
    assert not {"seconds", "cpu_seconds", "data_seconds", "train_seconds"} & read_backbone_info(out).keys()
    first = out.read_bytes()
    again = runner.invoke(app, [*args, "--force"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["seconds"] > 0 and out.read_bytes() == first

    ckpt_path = tmp_path / "ckpt.pt"
    init = runner.invoke(app, ["init", "--backbone", str(out), "--frames", "4", "--topk", "4", "--heads", "2",
                               "--asa-dim", "16", "--rank", "2", "--out", str(ckpt_path), "--json"])
    assert init.exit_code == 0, init.output
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.config.clip == "rap-micro" and ckpt.config.preprocess.image_size == 32
    model = ckpt.build_model()
    from safetensors.torch import load_file

    weights = load_file(str(out))
    assert torch.equal(model.clip.visual.conv1.weight, weights["visual.conv1.weight"])
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_position_twins_move_every_object_and_share_a_batch():
    from rap_deploy.data.synth_stills import generate_stills
    from rap_deploy.train.backbone_loop import shuffled_order

    images, captions = generate_stills(12, 3, 32, position_twins=True)
    plain_images, plain_captions = generate_stills(12, 3, 32)
    assert images.shape == plain_images.shape and len(captions) == 12
    for a, b in zip(captions[0::2], captions[1::2], strict=True):
        ma, mb = still_meaning(a), still_meaning(b)
        looks = lambda m: sorted((s, c, h) for s, c, h, _ in m)  # noqa: E731
        assert looks(ma) == looks(mb)  # the same objects ...
        pos_a = {(c, h): p for _, c, h, p in ma}
        assert all(pos_a[(c, h)] != p for _, c, h, p in mb)  # ... each in another cell
    with pytest.raises(Exception, match="even"):
        generate_stills(3, 0, 32, position_twins=True)
    order = shuffled_order(12, torch.Generator().manual_seed(0), pairs=True).tolist()
    assert sorted(order) == list(range(12)) and all(order[i] // 2 == order[i + 1] // 2 for i in range(0, 12, 2))


def test_sincos_position_table_tells_every_patch_apart():
    from rap_deploy.train.backbone import sincos_position_embedding

    table = sincos_position_embedding((4, 4), 32)
    assert table.shape == (17, 32) and torch.equal(table[0], torch.zeros(32))
    assert torch.cdist(table[1:], table[1:]).add(torch.eye(16)).min() > 0.1  # distinct rows for distinct patches


def test_pretrain_backbone_cli_rejects_an_unknown_position_init(tmp_path):
    result = CliRunner().invoke(app, ["pretrain-backbone", "--out", str(tmp_path / "b.safetensors"), "--clip",
                                      "rap-micro", "--size", "32", "--train-stills", "8", "--test-stills", "4",
                                      "--position-init", "spiral", "--quiet"])
    assert result.exit_code == 2 and "position_init" in result.output and not (tmp_path / "b.safetensors").exists()


def test_pretrain_backbone_unmasked_epochs_over_epochs_says_why(tmp_path):
    """--unmasked-epochs 5 --epochs 1 was refused as '--unmasked-epochs must be <= 1 ... (the limit guards memory
    and time)', which is not why; the message names --epochs now."""
    result = CliRunner().invoke(app, ["pretrain-backbone", "--out", str(tmp_path / "b.safetensors"), "--clip",
                                      "rap-micro", "--epochs", "1", "--unmasked-epochs", "5", "--quiet"])
    assert result.exit_code == 2 and "--epochs 1" in result.stderr and "memory" not in result.stderr, result.output


def _micro_clip():
    from rap_deploy.train.backbone import _create_model, _init_position_table

    model = _create_model("rap-micro", 0)
    _init_position_table(model, "rap-micro", "sincos")
    return model.eval()


def test_kept_token_tower_equals_open_clip_when_every_token_is_kept_and_captions_trim_exactly():
    from rap_deploy.data.synth_stills import generate_stills
    from rap_deploy.tokenizer import tokenize
    from rap_deploy.train.backbone_eval import image_and_patches
    from rap_deploy.train.backbone_tokens import encode_captions, image_and_kept_patches

    model = _micro_clip()
    grid = tuple(model.visual.grid_size)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    every = torch.arange(grid[0] * grid[1]).expand(3, -1)
    with torch.no_grad():
        pooled, patches = image_and_patches(model, images)
        kept_pooled, kept_patches = image_and_kept_patches(model, images, every)
        assert torch.allclose(pooled, kept_pooled, atol=1e-6) and torch.allclose(patches, kept_patches, atol=1e-6)
        # a subset: each kept token is the tower's output for that patch index, in the order asked for
        subset = torch.tensor([[3, 0], [1, 2], [0, 3]])
        _, sub = image_and_kept_patches(model, images, subset)
        assert sub.shape == (3, 2, patches.shape[2])
        assert not torch.allclose(sub[0, 0], patches[0, 3], atol=1e-3)  # other tokens attended: not the same
        from rap_deploy.config import TokenizerConfig

        _, captions = generate_stills(6, 0, 32)
        ids = torch.from_numpy(tokenize(captions, TokenizerConfig(context_length=32))[0]).long()
        assert int(ids.argmax(-1).max()) + 1 < ids.shape[1]  # the captions are shorter than the context
        assert torch.allclose(encode_captions(model, ids), model.encode_text(ids, normalize=True), atol=1e-6)


def test_object_first_tokens_keep_every_object_patch_that_fits():
    from rap_deploy.train.backbone_tokens import keep_count, object_first_tokens

    on_object = torch.zeros(4, 16, dtype=torch.bool)
    on_object[0, [1, 5, 9]] = True
    on_object[1, :] = True  # more object patches than fit: a random subset of them
    on_object[3, [15]] = True
    kept = object_first_tokens(on_object, 0.25, torch.Generator().manual_seed(0))
    assert kept.shape == (4, keep_count(16, 0.25)) == (4, 4)
    assert {1, 5, 9} <= set(kept[0].tolist()) and 15 in kept[3].tolist()
    assert all(len(set(row.tolist())) == 4 for row in kept)  # no patch twice
    again = object_first_tokens(on_object, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)  # seeded
    assert keep_count(64, 0.01) == 1 and keep_count(64, 1.0) == 64


def test_pretrain_backbone_with_token_dropping_records_it_and_refuses_bad_fractions(tmp_path):
    runner = CliRunner()
    out = tmp_path / "kept.safetensors"
    args = ["pretrain-backbone", "--out", str(out), "--clip", "rap-micro", "--size", "32", "--train-stills", "32",
            "--test-stills", "8", "--epochs", "2", "--batch-size", "16", "--quiet"]
    result = runner.invoke(app, [*args, "--patch-keep", "0.5", "--unmasked-epochs", "1", "--distractors", "0.5",
                                 "--patch-weight", "0.25", "--position-twins", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["patch_keep"] == 0.5 and info["masked_epochs"] == 1 and info["steps"] == 4
    assert info["distractors"] == 0.5 and info["patch_weight"] == 0.25 and info["position_twins"] is True
    stored = read_backbone_info(out)
    assert np.isfinite(info["final_loss"]) and stored["patch_keep"] == 0.5
    assert stored["patch_weight"] == 0.25 and stored["position_twins"] is True
    for flag, value in (("--patch-keep", "0"), ("--patch-keep", "1.5"), ("--unmasked-epochs", "3")):
        bad = runner.invoke(app, [*args, flag, value])
        assert bad.exit_code == 2 and flag in bad.output, bad.output
    stamp = out.stat().st_mtime_ns  # runs name a backbone file by path and sha256: never replaced unasked
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output and out.stat().st_mtime_ns == stamp
    huge = runner.invoke(app, [*args[:-1], "--train-stills", "10000000", "--size", "1024", "--force"])
    assert huge.exit_code == 2 and "GiB" in huge.output and "--train-stills" in huge.output, huge.output


def test_compact_token_embedding_trains_only_used_rows_and_writes_them_back():
    from rap_deploy.train.backbone_tokens import compact_token_embedding

    model = _micro_clip()
    full = model.token_embedding
    before = full.weight.detach().clone()
    ids = torch.nn.functional.pad(torch.tensor([[49406, 320, 1746, 49407], [49406, 2102, 49407, 0]]), (0, 28))
    reference = model.encode_text(ids, normalize=True).detach()
    with compact_token_embedding(model, ids) as compact:
        assert model.token_embedding.weight.shape[0] == 6 and compact.max() == 5
        assert compact.argmax(-1).tolist() == [3, 2]  # the end-of-text token is still the largest id
        assert torch.allclose(model.encode_text(compact, normalize=True), reference, atol=1e-6)  # same function
        with torch.no_grad():
            model.token_embedding.weight.add_(1.0)  # "training"
    assert model.token_embedding is full
    used = torch.tensor([0, 320, 1746, 2102, 49406, 49407])
    assert torch.allclose(full.weight[used], before[used] + 1.0)
    untouched = torch.ones(before.shape[0], dtype=torch.bool)
    untouched[used] = False
    assert torch.equal(full.weight[untouched], before[untouched])


def test_backbone_cost_script_times_every_variant(capsys):
    from rap_deploy.train.backbone_cost import main

    main(["--clip", "rap-micro", "--batch", "8", "--repeats", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert list(result["steps"]) == ["every token, full caption context", "every token, captions trimmed",
                                     "half the tokens, captions trimmed", "a quarter of the tokens, captions trimmed"]
    assert all(ms > 0 for ms in result["steps"].values())
    assert set(result["optimizer"]) == {"caption rows only", "whole embedding table"} and result["cpu"]


def test_cached_stills_with_a_lying_header_are_regenerated_not_allocated(tmp_path):
    """The stills cache is read by its .npy headers first: a file claiming 10^9 images is made again, never loaded."""
    import io
    import zipfile

    from rap_deploy.train.backbone import load_or_make_stills

    images, captions = load_or_make_stills(8, 0, 32, tmp_path)
    cached = next((tmp_path / "stills").glob("*.npz"))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10 ** 9, 32, 32, 3)})
    with zipfile.ZipFile(cached, "w") as zf:
        zf.writestr("images.npy", header.getvalue())
        zf.writestr("captions.npy", b"")
    again, again_captions = load_or_make_stills(8, 0, 32, tmp_path)
    assert np.array_equal(again, images) and again_captions == captions
    assert load_or_make_stills(8, 0, 32, tmp_path)[0].shape == (8, 32, 32, 3)  # the rewritten cache reads back


def test_cached_stills_of_another_object_size_are_not_reused(tmp_path, monkeypatch):
    """The stills cache is keyed by the object sizes it was drawn with: a cache an earlier version wrote (smaller
    objects) is not read back as this version's stills, which the backbone file would then record as this size."""
    from rap_deploy.data.synth import SIZE_RADIUS
    from rap_deploy.train.backbone import load_or_make_stills

    current, _ = load_or_make_stills(8, 0, 32, None)
    with monkeypatch.context() as earlier_version:
        earlier_version.setitem(SIZE_RADIUS, "small", 0.10)
        earlier_version.setitem(SIZE_RADIUS, "big", 0.16)
        earlier, _ = load_or_make_stills(8, 0, 32, tmp_path)
    assert not np.array_equal(earlier, current)
    images, _ = load_or_make_stills(8, 0, 32, tmp_path)
    assert np.array_equal(images, current)


@pytest.mark.parametrize("command", ["init", "train"])
def test_a_clip_the_backbone_file_was_not_made_for_is_refused(tmp_path, command):
    """init and train each checked --clip against the backbone file's CLIP with their own copy of the check; both
    call backbone_file.backbone_clip: a contradicting --clip is exit 2 naming both, before any work."""
    from rap_deploy.backbone_file import backbone_clip, save_backbone

    made = save_backbone({"w": torch.zeros(1)}, "rap-micro", tmp_path / "b.safetensors")
    assert backbone_clip(made, None) == "rap-micro" == backbone_clip(made, "rap-micro")
    args = {"init": ["init", "--out", str(tmp_path / "c.pt")],
            "train": ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")]}
    res = CliRunner().invoke(app, [*args[command], "--clip", "ViT-B-32", "--backbone", str(made)])
    assert res.exit_code == 2, res.output
    assert f"--clip ViT-B-32 does not match the backbone file {made} (made for rap-micro)" in res.stderr
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "run").exists()

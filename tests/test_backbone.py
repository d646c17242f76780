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
from rap_deploy.train.backbone import localisation_loss, object_patches
from rap_deploy.train.backbone_eval import heldout_metrics, still_meaning


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
    result = runner.invoke(app, ["pretrain-backbone", "--data-root", str(tmp_path / "stills"), "--out", str(out),
                                 "--clip", "rap-micro", "--size", "32", "--train-stills", "64", "--test-stills", "16",
                                 "--epochs", "1", "--batch-size", "16", "--text-weight", "0.5", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["steps"] == 4 and info["clip"] == "rap-micro" and info["text_weight"] == 0.5  # the opt-in text loss
    assert info["position_init"] == "sincos" and info["position_twins"] is False  # the defaults
    assert {"i2t", "t2i", "attributes", "patch_selection", "text"} <= info["heldout"].keys() and info["seconds"] > 0
    assert read_backbone_clip_name(out) == "rap-micro"
    assert read_backbone_info(out)["heldout"] == info["heldout"]
    assert len(list((tmp_path / "stills" / "stills").glob("*.npz"))) == 2  # train and held-out stills cached

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
    from rap_deploy.train.backbone import _shuffled_order

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
    order = _shuffled_order(12, torch.Generator().manual_seed(0), pairs=True).tolist()
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

"""A checkpoint is untrusted, and the backbone file it references is a path it chooses. ``info`` of a checkpoint
naming another file with any sha256 quoted that file's own sha256 prefix (a checkpoint could learn the hash of any
file the user can read), and one naming a file without a sha256 had it loaded as weights, so the error quoted its
first bytes. Now the file's hash is never told, and a referenced file without its sha256 is a damaged checkpoint."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from rap_deploy.atomic import sha256_file
from rap_deploy.cli.app import app


def _referencing(micro_checkpoint, tmp_path, target, sha256):
    payload = torch.load(micro_checkpoint, weights_only=True)
    payload["backbone"] = {**payload["backbone"], "kind": "file", "value": str(target), "sha256": sha256}
    payload["backbone_state"] = None
    path = tmp_path / "forged.pt"
    torch.save(payload, path)
    return path


def test_info_never_tells_the_hash_or_bytes_of_a_file_a_checkpoint_names(micro_checkpoint, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the first bytes of a private file\n")
    runner = CliRunner()
    wrong_hash = runner.invoke(app, ["info", str(_referencing(micro_checkpoint, tmp_path, secret, "0" * 64))])
    text = " ".join(wrong_hash.output.split())
    assert wrong_hash.exit_code == 2 and "which is not the file it was made with" in text, text
    assert sha256_file(secret)[:8] not in text and "root:x" not in text

    no_hash = runner.invoke(app, ["info", str(_referencing(micro_checkpoint, tmp_path, secret, None))])
    text = " ".join(no_hash.output.split())
    assert no_hash.exit_code == 1, text
    assert "references its backbone weights file by path alone, without the file's sha256" in text, text
    assert sha256_file(secret)[:8] not in text and "root:x" not in text


def test_options_name_only_the_part_they_act_on():
    from rap_deploy.config import RAPConfig
    from rap_deploy.errors import UsageError
    from rap_deploy.train.option_use import check_options_apply

    try:
        check_options_apply(RAPConfig(use_asa=False, use_lorm=False), {"lorm_rank": 2})
    except UsageError as exc:
        assert "(LoRM; its adapters: none (meanP))" in str(exc), str(exc)
    else:
        raise AssertionError("--rank with --no-lorm was accepted")


def test_bench_says_a_fifo_checkpoint_is_not_a_regular_file(tmp_path):
    import os

    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    res = CliRunner().invoke(app, ["bench", "--checkpoint", str(fifo)])
    assert res.exit_code == 2 and "is not a regular file" in res.output and "does not exist" not in res.output, \
        res.output


def test_pretrain_backbone_refuses_a_stills_folder_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    under = str(tmp_path / "afile" / "sub")
    res = CliRunner().invoke(app, ["pretrain-backbone", "--data-root", under, "--epochs", "1", "--train-stills", "4",
                                   "--test-stills", "2", "--out", str(tmp_path / "b.safetensors")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "which is a file; pass a folder" in text and "--out" not in text, text

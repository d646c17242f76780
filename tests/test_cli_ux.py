"""The commands as a user meets them: a wrong value is refused in one line with exit 2, before any work, and what a
command leaves out of its figures is said on the terminal, not only in its report files."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def test_bench_refuses_an_unknown_dataset_and_one_without_data_root(micro_checkpoint, tmp_path):
    args = ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", "text", "--batch-sizes", "1",
            "--repeats", "1", "--warmup", "0", "--no-compare-meanp", "--quiet", "--out", str(tmp_path / "b")]
    res = runner.invoke(app, [*args, "--dataset", "msrvt"])
    assert res.exit_code == 2 and "dataset 'msrvt' is unknown" in res.output
    res = runner.invoke(app, [*args, "--dataset", "msvd"])  # timed on random frames: the name would be ignored
    assert res.exit_code == 2 and "pass --data-root too" in res.output
    assert not (tmp_path / "b").exists()


def _first_test_video(root) -> str:
    import csv

    with open(root / "MSRVTT_JSFUSION_test.csv", newline="") as fh:
        return next(csv.DictReader(fh))["video_id"]


def test_train_names_the_test_videos_its_evaluations_left_out(micro_checkpoint, synth_root, tmp_path):
    import json
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    gone = _first_test_video(root)
    (root / "videos" / f"{gone}.mp4").unlink()
    args = ["train", "--dataset", "msrvtt", "--data-root", str(root), "--checkpoint", str(micro_checkpoint),
            "--epochs", "1", "--batch-size", "8", "--max-train-videos", "8", "--max-test-videos", "4", "--top-m", "4",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert f"1 test video missing or undecodable, left out of every evaluation (the recalls above are over 3 test " \
           f"videos): {gone};" in said
    assert "rapdeploy data-check --dataset msrvtt --split test" in said
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "run2"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["test_skipped_videos"] == [gone]


def _verify_with_one_test_video_gone(engines, synth_root, tmp_path) -> tuple[str, list[str]]:
    """A copy of the synthetic set without its first test video: that video's id, and verify's arguments (the fp32
    engine over 4 test videos) without --out."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    gone = _first_test_video(root)
    (root / "videos" / f"{gone}.mp4").unlink()
    return gone, ["verify", "--dataset", "msrvtt", "--data-root", str(root), "--engine", str(engines["fp32"]),
                  "--max-videos", "4", "--rerank-top", "4", "--cache-dir", str(tmp_path / "cache")]


def test_verify_names_the_test_videos_it_left_out(micro_ort_engines, synth_root, tmp_path):
    gone, args = _verify_with_one_test_video_gone(micro_ort_engines, synth_root, tmp_path)
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "v"), "--allow-skipped"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.stdout.split())
    assert f"1 test video(s) missing or undecodable, left out of both sides (the figures are over 3 videos): " \
           f"{gone}: missing" in said
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "q"), "--quiet", "--allow-skipped"])
    assert res.exit_code == 0 and f"left out of both sides (the figures are over 3 videos): {gone}: missing" in \
        " ".join(res.stdout.split())
    report = json.loads((tmp_path / "q" / "verify.json").read_text())
    assert report["passed"] is report["parity_passed"] is True and report["settings"]["allow_skipped"] is True
    assert report["counts"]["skipped"] == 1 and report["skipped"] == [{"video_id": gone, "reason": "missing"}]


def test_verify_over_fewer_test_videos_than_asked_is_no_pass(micro_ort_engines, synth_root, tmp_path):
    """verify exited 0 when test videos were missing (parity over 3 of the 4 asked for, or over 3 of 1,000): a
    `verify && deploy` gate passed on a gutted dataset. It now exits 1 naming them and --allow-skipped, after writing
    its reports (passed false, parity_passed true, the reason among the failures); --allow-skipped passes."""
    gone, args = _verify_with_one_test_video_gone(micro_ort_engines, synth_root, tmp_path)
    reason = (f"1 of the 4 test videos asked for are missing or undecodable ({gone}: missing), so parity covers only "
              "3; restore them (`rapdeploy data-check` names every one) or pass --allow-skipped to accept parity over "
              "the 3 that decode")
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "v"), "--quiet"])
    assert res.exit_code == 1, res.output
    assert f"verify FAILED: {tmp_path / 'v'}" in res.stdout
    assert " ".join(res.stderr.split()) == (f"error: verify of {micro_ort_engines['fp32']} did not pass: {reason} "
                                            f"(see {tmp_path / 'v' / 'verify.md'})")
    report = json.loads((tmp_path / "v" / "verify.json").read_text())
    assert report["passed"] is False and report["parity_passed"] is True and report["failures"] == [reason]
    assert report["settings"]["allow_skipped"] is False
    assert (tmp_path / "v" / "verify.md").read_text().startswith("# rapdeploy verify: FAILED")


def test_a_graph_file_or_manifest_given_as_engine_is_named_as_such(micro_ort_engines, tmp_path):
    engine = micro_ort_engines["fp32"]
    graph = next(engine.glob("*.onnx"))
    res = runner.invoke(app, ["bench", "--engine", str(graph), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2, res.output
    assert f"--engine {graph} is a file, not an engine folder or a checkpoint" in res.output
    assert f"wrote: --engine {engine}" in " ".join(res.output.split())  # not 'is not a checkpoint'
    res = runner.invoke(app, ["bench", "--engine", str(engine / "manifest.json"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and f"pass its folder: --engine {engine}" in " ".join(res.output.split())
    assert not (tmp_path / "b").exists()


def test_init_and_info_name_the_option_a_wrong_size_came_from(tmp_path):
    out = tmp_path / "c.pt"
    base = ["init", "--clip", "rap-micro", "--out", str(out)]
    for args, said in ((["--rank", "-1"], "--rank must be >= 1, got -1"),
                       (["--topk", "0"], "--topk must be >= 1, got 0"),
                       (["--frames", "-2"], "--frames must be >= 1, got -2"),
                       (["--heads", "3"], "--heads 3 does not divide the ASA width --asa-dim 128 (the default); "
                                          "pass --heads 1, 2, 4, 8, 16, 32, 64, or an --asa-dim that 3 divides"),
                       (["--asa-dim", "30"], "--heads 4 (the default) does not divide the ASA width --asa-dim 30")):
        res = runner.invoke(app, [*base, *args])
        assert res.exit_code == 2 and said in " ".join(res.output.split()), (args, res.output)
        assert not out.exists()
    res = runner.invoke(app, ["info", "--clip", "rap-micro", "--frames", "0"])
    assert res.exit_code == 2 and "--frames must be >= 1, got 0" in res.output  # was "'frames' must be >= 1"


def test_train_names_heads_that_do_not_divide_the_asa_width(synth_root, tmp_path):
    res = runner.invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--clip", "rap-micro",
                              "--heads", "3", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "--heads 3 does not divide the ASA width --asa-dim 128 (the default)" in " ".join(res.output.split())
    assert not (tmp_path / "run").exists()


def test_a_rap_checkpoint_given_as_backbone_weights_is_named_as_one(micro_checkpoint, synth_root, tmp_path):
    said = f"backbone weights file {micro_checkpoint} is a RAP checkpoint (from `rapdeploy init` or `rapdeploy " \
           f"train`), not a CLIP's weights: fine-tune it with `rapdeploy train --checkpoint {micro_checkpoint}`"
    out = ["--out", str(tmp_path / "a.pt")]
    for args in (["init", *out, "--backbone", str(micro_checkpoint)],
                 ["init", *out, "--clip", "rap-micro", "--pretrained", str(micro_checkpoint)],
                 ["train", "--dataset", "msrvtt", "--data-root", str(synth_root), "--backbone", str(micro_checkpoint),
                  "--out", str(tmp_path / "run")]):
        res = runner.invoke(app, args)  # was: "does not fit open_clip model ViT-B-32 ... pass ... the --clip"
        assert res.exit_code == 2 and said in " ".join(res.output.split()), (args, res.output)
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "run").exists()


def test_an_engine_export_or_run_folder_given_as_checkpoint_names_the_checkpoint(micro_ort_engines, micro_checkpoint,
                                                                                   tmp_path):
    engine = micro_ort_engines["fp32"]
    res = runner.invoke(app, ["info", str(engine)])  # was: "is a folder; pass the .pt or .safetensors file inside it"
    assert res.exit_code == 2, res.output
    assert f"checkpoint {engine} is an engine folder, which holds no checkpoint; pass the one it was made from: " \
           f"{micro_checkpoint}" in " ".join(res.output.split())
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(micro_checkpoint.read_bytes())
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "onnx")])
    assert res.exit_code == 2 and f"pass the checkpoint inside it: {run / 'best.pt'}" in " ".join(res.output.split())
    assert not (tmp_path / "onnx").exists()


def test_a_training_run_folder_given_as_engine_names_its_checkpoint(micro_checkpoint, synth_root, tmp_path):
    """verify, bench, index and search took a run folder as --engine for an engine folder without its manifest ('RUN
    has no manifest.json: not an engine folder; build one with `rapdeploy build-engine`', and for index 'not an
    engine folder, an export folder or a checkpoint'), though the run's best.pt is the PyTorch engine they all take.
    They now say it is a run folder and name its checkpoint, and the commands that build an engine from it."""
    run = tmp_path / "my run"
    run.mkdir()
    (run / "best.pt").write_bytes(micro_checkpoint.read_bytes())
    quoted = f"'{run / 'best.pt'}'"
    said = (f"{run} is a training run folder (it holds best.pt), not an engine folder; pass its checkpoint for the "
            f"PyTorch engine, --engine {quoted}, or build an engine from it: `rapdeploy export {quoted}`, then "
            "`rapdeploy build-engine`")
    commands = {"verify": ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--out",
                           str(tmp_path / "v")],
                "bench": ["bench", "--out", str(tmp_path / "b")],
                "index": ["index", "--videos", str(synth_root / "videos"), "--out", str(tmp_path / "lib")]}
    for name, args in commands.items():
        res = runner.invoke(app, [*args, "--engine", str(run)])
        assert res.exit_code == 2, (name, res.output)
        assert said in " ".join(res.output.split()), (name, res.output)
    assert not any((tmp_path / d).exists() for d in ("v", "b", "lib"))


def test_build_engine_given_a_checkpoint_says_to_export_it_first(micro_checkpoint, tmp_path):
    """`rapdeploy build-engine runs/x/best.pt` said only 'is a file, not an export folder; pass the folder `rapdeploy
    export` wrote', and with --fp16 on a machine without TensorRT it advised `rapdeploy build-engine <the checkpoint>
    --backend onnxruntime`, a command refused in turn. Both now name the export that makes the folder from it."""
    ckpt = tmp_path / "run x" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(micro_checkpoint.read_bytes())
    said = (f"{ckpt} is a checkpoint, not an export folder: an engine is built from the ONNX graphs `rapdeploy "
            f"export` makes of it; run `rapdeploy export '{ckpt}'`, then `rapdeploy build-engine` (it builds the "
            "workspace's latest export)")
    for extra in ([], ["--fp16"], ["--int8"]):
        res = runner.invoke(app, ["build-engine", str(ckpt), "--out", str(tmp_path / "e"), *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert said in " ".join(res.output.split()), (extra, res.output)
    assert not (tmp_path / "e").exists()


def test_build_engine_given_an_engine_folder_names_its_export_folder(micro_ort_engines, tmp_path):
    engine = micro_ort_engines["fp32"]
    res = runner.invoke(app, ["build-engine", str(engine), "--out", str(tmp_path / "e")])
    assert res.exit_code == 2, res.output  # was: "... is not a rapdeploy export manifest (no 'rapdeploy.export' ...)"
    said = " ".join(res.output.split())
    assert f"{engine} is an engine folder (`rapdeploy build-engine` wrote it), not an export folder; pass the " \
           f"export folder it was built from: {micro_ort_engines['export']}" in said, said
    assert not (tmp_path / "e").exists()


def test_a_backbone_file_given_as_checkpoint_says_how_to_make_one(tmp_path):
    import torch

    from rap_deploy.backbone_file import save_backbone

    backbone = save_backbone({"w": torch.zeros(2)}, "rap-micro", tmp_path / "bb.safetensors")
    res = runner.invoke(app, ["info", str(backbone)])  # was: "... without rapdeploy metadata; not a RAP checkpoint"
    assert res.exit_code == 2, res.output
    assert f"{backbone} is a backbone file (`rapdeploy pretrain-backbone`), not a RAP checkpoint; make one on it " \
           f"with `rapdeploy init --backbone {backbone} --out ckpt.pt`" in " ".join(res.output.split())


def test_init_refuses_an_out_under_a_file_before_any_work(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    res = runner.invoke(app, ["init", "--clip", "rap-micro", "--out", str(blocker / "sub" / "c.pt")])
    assert res.exit_code == 2, res.output  # was: "cannot access .../notes.txt: File exists; check the path ..."
    assert f"--out {blocker / 'sub' / 'c.pt'}: {blocker} is a file, not a folder; pass another --out" in \
        " ".join(res.output.split())


def test_ablate_says_a_negative_seed_is_out_of_range(tmp_path):
    res = runner.invoke(app, ["ablate", "--tiny", "--seeds", "-1", "--world", str(tmp_path / "w")])
    assert res.exit_code == 2, res.output  # was: "--seeds must be comma-separated integers, got '-1'"
    assert "--seeds must be comma-separated integers >= 0 (e.g. 0,1,2), got '-1'" in res.output
    assert not (tmp_path / "w").exists()


def test_bench_passes_over_missing_test_videos_to_fill_its_batch(micro_checkpoint, synth_root, tmp_path):
    import json
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    gone = _first_test_video(root)
    (root / "videos" / f"{gone}.mp4").unlink()
    res = runner.invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--data-root", str(root), "--graphs",
                              "video", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--no-compare-meanp",
                              "--quiet", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output  # with --batch-sizes 1 alone it was exit 1: 'none of the 1 videos ...'
    inputs = json.loads((tmp_path / "b" / "bench.json").read_text())["inputs"]
    # was: 1 video, its copy filling the batch of 2
    assert inputs == f"real frames: 2 msrvtt test videos from {root}; 1 missing or undecodable passed over ({gone})"


def test_a_plain_state_dict_given_as_checkpoint_says_how_to_make_one(tmp_path):
    import torch

    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"visual.conv1.weight": torch.zeros(2), "logit_scale": torch.ones(())}, weights)
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, nested)
    for command in (["info", str(weights)], ["export", str(weights), "--out", str(tmp_path / "onnx")]):
        res = runner.invoke(app, command)  # was: "... is not a rapdeploy checkpoint (no '...' format tag)"
        said = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert f"{weights} is a PyTorch state_dict (2 tensors, the first 'visual.conv1.weight'), not a rapdeploy " \
               f"checkpoint; if these are CLIP weights, make a checkpoint on them with `rapdeploy init --clip NAME " \
               f"--pretrained {weights} --out ckpt.pt`" in said, said
    res = runner.invoke(app, ["info", str(nested)])
    assert res.exit_code == 2, res.output
    assert f"{nested} is not a rapdeploy checkpoint: it holds a dict with keys 'model' and no 'rapdeploy.checkpoint' " \
           "format tag; pass a checkpoint from `rapdeploy init` or `rapdeploy train`" in " ".join(res.output.split())
    assert not (tmp_path / "onnx").exists()


def test_a_truncated_checkpoint_gives_the_reason_without_torchs_advice_cut_mid_sentence(micro_checkpoint, tmp_path):
    truncated = tmp_path / "best.pt"
    truncated.write_bytes(micro_checkpoint.read_bytes()[: micro_checkpoint.stat().st_size // 2])
    res = runner.invoke(app, ["info", str(truncated)])
    assert res.exit_code == 1, res.output
    line = " ".join(res.stderr.split())  # was: "(... This is an internal miniz error. If you are seeing ... file is)"
    assert line == f"error: checkpoint {truncated} is a damaged or truncated PyTorch archive (PytorchStreamReader " \
                   "failed reading zip archive: failed finding central directory); copy it again or re-create it " \
                   "with `rapdeploy init` or `rapdeploy train`", line


def test_truncated_backbone_weights_say_what_to_do_once(micro_checkpoint, tmp_path):
    weights = tmp_path / "open_clip_pytorch_model.bin"  # a truncated zip archive, as a cut-off download leaves it
    weights.write_bytes(micro_checkpoint.read_bytes()[: micro_checkpoint.stat().st_size // 2])
    res = runner.invoke(app, ["init", "--clip", "rap-micro", "--pretrained", str(weights), "--out",
                              str(tmp_path / "c.pt")])
    assert res.exit_code == 1, res.output
    line = " ".join(res.stderr.split())  # was: "...; copy it again or download or copy it again"
    assert line.endswith(f"{weights} is a damaged or truncated PyTorch archive (PytorchStreamReader failed reading "
                         "zip archive: failed finding central directory); copy it again or download it again"), line
    assert not (tmp_path / "c.pt").exists()


def test_info_with_a_checkpoint_and_model_options_says_which_to_drop(micro_checkpoint):
    one = runner.invoke(app, ["info", str(micro_checkpoint), "--clip", "ViT-B-32"])
    assert one.exit_code == 2 and "--clip describes a model built from a CLIP when no checkpoint is given" in \
        " ".join(one.stderr.split()) and "drop it" in one.stderr, one.output  # was: "--clip describe a model"
    two = runner.invoke(app, ["info", str(micro_checkpoint), "--clip", "ViT-B-32", "--frames", "8"])
    assert two.exit_code == 2 and "--clip, --frames describe a model" in " ".join(two.stderr.split()), two.output


def test_parser_errors_all_say_where_the_help_is(monkeypatch, capsys):
    """`rapdeploy index --remove` (no id) printed "error: Option '--remove' requires an argument." without the
    "(see `rapdeploy index --help`)" every other usage error carries: the parser raises that one, and a flag given a
    value, without a context. Both now name the command's help, as an unknown option does."""
    import sys

    import pytest

    from rap_deploy.cli import main

    cases = {("index", "--remove"): "error: Option '--remove' requires an argument. (see `rapdeploy index --help`)",
             ("index", "--force=1"): "error: Option '--force' does not take a value. (see `rapdeploy index --help`)",
             ("search", "--query"): " search --help`)",  # click's program name: under pytest not `rapdeploy`
             ("--bogus",): " --help`)"}
    for args, said in cases.items():
        monkeypatch.setattr(sys, "argv", ["rapdeploy", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and said in err, (args, err)

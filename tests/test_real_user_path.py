"""The README's "real user" path driven through the CLI with a user's own files: a CLIP weights file and a dataset
folder of their own, and the mistakes such a user makes with them (each refused with one line naming the file, the
value and the fix)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import follow_suggested_conversion
from typer.testing import CliRunner

from rap_deploy.cli.app import app


def _one_error_line(result) -> str:
    """The command's stderr, asserted to be a single ``error:`` line (no warning or traceback beside it)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(("clip", "quickgelu"), [("rap-micro", None), ("ViT-B-32", "ViT-B-32-quickgelu")])
def test_openai_torchscript_weights_file_is_refused_with_the_conversion_that_works(tmp_path, clip, quickgelu):
    """OpenAI's original CLIP release (the ViT-B-32.pt CLIP4Clip downloads) is a TorchScript archive. Given as
    ``--pretrained``, torch warned on stderr ('dispatching to torch.jit.load') and the error said it holds pickled
    Python objects: 're-save it with tensors and plain data only', not how. It is now refused before anything loads
    it (no warning): the one line names the file as a TorchScript archive, the state-dict file open_clip publishes,
    and the one-line conversion (its state_dict, without the three non-tensor entries) with the QuickGELU --clip."""
    weights = tmp_path / "ViT-B-32.pt"
    _save_traced_micro_clip(weights)
    result = CliRunner().invoke(app, ["init", "--clip", clip, "--pretrained", str(weights),
                                      "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    said = _one_error_line(result)
    assert str(weights) in said and "TorchScript" in said and "open_clip_pytorch_model.bin" in said, said
    converted = tmp_path / "ViT-B-32.state_dict.pt"
    assert "torch.jit.load" in said and f"--pretrained {converted}" in said, said
    assert (f"--clip {quickgelu}" in said) if quickgelu else ("quickgelu" not in said), said
    assert not (tmp_path / "m.pt").exists()
    follow_suggested_conversion(said, converted, tmp_path / "m.pt")


def _save_traced_micro_clip(path) -> None:
    """Write the rap-micro CLIP as OpenAI released theirs: a traced TorchScript archive of the whole model."""
    import warnings

    from rap_deploy.model.clip_loader import BackboneSpec, load_clip

    model = load_clip(BackboneSpec.parse("rap-micro", "none"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, dtype=torch.long)),
                                 strict=False, check_trace=False)
        torch.jit.save(traced, str(path))


def test_data_check_says_the_videos_folder_is_absent_when_every_video_is_missing(tmp_path):
    """CLIP4Clip's MSR-VTT download keeps the annotation files (msrvtt_data/) apart from the videos. data-check, the
    README's first step, given the annotation folder listed every video as missing and ended 'N of N videos
    unusable: <each path> (missing)', never saying that the folder it looked in does not exist (train, export and
    verify say so). Its error line now ends with where the videos were looked for and the fix."""
    root = _msrvtt_annotations(tmp_path / "msrvtt_data", ["video7", "video8"])
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    said = _one_error_line(result)
    assert "2 of 2 videos unusable" in said, said
    assert f"{root / 'videos'} does not exist; put the videos there" in said and "--data-root" in said, said
    (root / "videos").mkdir()
    result = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(root), "--no-cache",
                                      "--quiet"])
    assert result.exit_code == 1 and f"{root / 'videos'} holds none of them" in _one_error_line(result)


@pytest.mark.parametrize("command", ["info", "export", "train"])
def test_clip_weights_given_as_a_checkpoint_name_init_for_safetensors_as_for_pt(tmp_path, command):
    """A user's own CLIP weights passed where a RAP checkpoint goes: as a PyTorch state_dict (.bin/.pt) the refusal
    names `rapdeploy init --clip NAME --pretrained FILE`; as open_clip's .safetensors it said only 'a safetensors
    file without rapdeploy metadata ... pass a checkpoint from `rapdeploy init` or `rapdeploy train`'. It now says
    what it holds and names the same init command."""
    from safetensors.torch import save_file

    weights = tmp_path / "open_clip_model.safetensors"
    save_file({"positional_embedding": torch.zeros(4, 8), "text_projection": torch.zeros(8, 8)}, str(weights))
    args = {"info": ["info", str(weights)], "export": ["export", str(weights), "--out", str(tmp_path / "onnx")],
            "train": ["train", "--checkpoint", str(weights), "--dataset", "msrvtt", "--data-root", str(tmp_path),
                      "--out", str(tmp_path / "run"), "--quiet"]}[command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    said = _one_error_line(result)
    assert "(2 tensors, the first 'positional_embedding')" in said, said
    assert f"`rapdeploy init --clip NAME --pretrained {weights} --out ckpt.pt`" in said, said


def test_a_data_root_next_to_the_dataset_folder_names_the_one_to_pass(tmp_path):
    """A --data-root one folder off (the folder above the dataset, its videos folder) or another dataset's folder
    (a wrong --dataset) was refused with 'annotation file X is missing; is --data-root the right dataset folder?',
    leaving the user to guess which. The refusal (exit 2, one line) now names the folder or the --dataset to pass."""
    data = tmp_path / "data"
    msrvtt, msvd = data / "msrvtt", data / "msvd"
    (msrvtt / "MSRVTT_Videos").mkdir(parents=True)
    msvd.mkdir()
    (msrvtt / "MSRVTT_data.json").write_text("{}", encoding="utf-8")
    (msvd / "raw-captions.pkl").write_bytes(b"")
    cases = [(data, "msrvtt", f"{msrvtt} holds it: pass --data-root {msrvtt}"),
             (msrvtt / "MSRVTT_Videos", "msrvtt", f"the folder above it holds it (--data-root names a folder inside "
                                                  f"the dataset's): pass --data-root {msrvtt}"),
             (msvd, "msrvtt", "it holds raw-captions.pkl, msvd's: pass --dataset msvd for it, or --data-root with "
                              "msrvtt's folder"),
             (msrvtt, "msvd", "it holds MSRVTT_data.json, msrvtt's: pass --dataset msrvtt for it, or --data-root "
                              "with msvd's folder")]
    for root, dataset, fix in cases:
        for args in (["data-check", "--no-cache"], ["train", "--clip", "rap-micro", "--pretrained", "none", "--out",
                                                    str(tmp_path / "run")]):
            result = CliRunner().invoke(app, [*args, "--dataset", dataset, "--data-root", str(root), "--quiet"])
            said = _one_error_line(result)
            assert result.exit_code == 2 and f"--data-root {root} holds no " in said and said.endswith(fix), said


def test_a_didemo_folder_of_the_test_split_alone_is_not_refused_as_another_folder(tmp_path):
    """A DiDeMo folder kept for evaluation holds only test_list.txt and test_data.json: the folder check takes it for
    DiDeMo's (the readers then read it), not for a folder without DiDeMo's annotation."""
    import json

    (tmp_path / "test_list.txt").write_text("v1.mp4\n", encoding="utf-8")
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "v1.mp4", "description": "a dog runs",
                                                          "times": [[0, 1]]}]), encoding="utf-8")
    result = CliRunner().invoke(app, ["data-check", "--dataset", "didemo", "--data-root", str(tmp_path),
                                      "--no-cache", "--quiet", "--json"])
    assert result.exit_code == 1 and '"missing": [\n    "v1.mp4"' in result.stdout, result.output


@pytest.mark.parametrize("args", [["build-engine", "--help"], ["--help"]])
def test_help_piped_into_a_reader_that_stopped_ends_with_141_not_1(args):
    """`rapdeploy build-engine --help | head -1` exited 1, the code of a failed check, where the README promises
    141 for output piped into a reader that stopped reading (what a command's own output gets): rich, which prints
    the help, exits 1 on the broken pipe. It now ends quietly with 141."""
    proc = subprocess.Popen([sys.executable, "-m", "rap_deploy.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the help is written (the interpreter takes far longer to start)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and not stderr.strip(), stderr


def test_didemo_tokens_beyond_a_clips_text_positions_name_the_context_length_to_pass(tmp_path):
    """DiDeMo and ActivityNet ask for 64 text tokens by default; on a CLIP with fewer text positions training was
    refused with 'context_length 64 exceeds rap-micro's 32 text positions' and no fix. It now names the
    --context-length that fits."""
    import json

    for split in ("train", "val", "test"):
        (tmp_path / f"{split}_list.txt").write_text("v1.mp4\n", encoding="utf-8")
        (tmp_path / f"{split}_data.json").write_text(json.dumps([{"video": "v1.mp4", "description": "a dog runs",
                                                                  "times": [[0, 1]]}]), encoding="utf-8")
    fix = "pass --context-length 32 or less (text past it is cut), or a --clip with more"
    for args in (["init", "--clip", "rap-micro", "--pretrained", "none", "--context-length", "64", "--out",
                  str(tmp_path / "c.pt")],
                 ["train", "--dataset", "didemo", "--data-root", str(tmp_path), "--clip", "rap-micro", "--pretrained",
                  "none", "--frames", "4", "--out", str(tmp_path / "run"), "--quiet"]):
        result = CliRunner().invoke(app, args)
        said = _one_error_line(result)
        assert result.exit_code == 2 and "context_length 64 exceeds rap-micro's 32 text positions" in said, said
        assert said.endswith(fix), said


@pytest.mark.parametrize("command", ["info", "export"])
def test_a_checkpoint_of_a_newer_format_names_the_formats_and_this_version(tmp_path, micro_checkpoint, command):
    """A checkpoint written by a newer rapdeploy was refused with 'X has checkpoint format 2; upgrade rapdeploy':
    neither which format this rapdeploy reads nor its version (as engine and export manifests of a newer format
    say). Both are named now, with the same fix (exit 2, one line)."""
    from rap_deploy import __version__
    from rap_deploy.checkpoint import FORMAT_VERSION

    payload = torch.load(micro_checkpoint, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    args = {"info": ["info", str(newer)], "export": ["export", str(newer), "--out", str(tmp_path / "onnx")]}[command]
    result = CliRunner().invoke(app, args)
    said = _one_error_line(result)
    assert result.exit_code == 2, result.output
    assert said == (f"error: checkpoint {newer} has format {FORMAT_VERSION + 1}, newer than the format "
                    f"{FORMAT_VERSION} this rapdeploy {__version__} reads (it was written by a newer rapdeploy); "
                    "upgrade rapdeploy"), said


def _msrvtt_annotations(root, ids: list[str], captions: dict[str, str] | None = None):
    """Write MSR-VTT's three annotation files (no videos) into ``root`` for the test videos ``ids`` (their captions
    ``a clip <id>`` unless ``captions`` gives the test CSV's text as written); return ``root``."""
    import json

    root.mkdir(parents=True)
    (root / "MSRVTT_data.json").write_text(json.dumps({
        "videos": [{"video_id": v} for v in ids],
        "sentences": [{"video_id": v, "caption": f"a clip {v}"} for v in ids]}), encoding="utf-8")
    (root / "MSRVTT_train.9k.csv").write_text(f"video_id\n{ids[0]}\n", encoding="utf-8")
    text = captions or {v: f"a clip {v}" for v in ids}
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(f"ret{i},msr{i},{v},{text[v]}\n" for i, v in enumerate(ids)),
        encoding="utf-8")
    return root


def test_a_caption_line_with_an_unclosed_quote_is_refused_not_merged_with_the_lines_after_it(tmp_path):
    """A test CSV line whose caption opens a quote it never closes (`ret1,msr1,video2,"a dog runs`) made one caption
    of it and every line up to the next quote: data-check counted 2 of 4 test videos and passed (exit 0), the other
    two silently gone from training's evaluation and verify. It is now a damaged annotation file (exit 1) naming the
    file, the row, the lines the value runs over and the quote to close."""
    ids = ["video1", "video2", "video3", "video4"]
    captions = {"video1": "a cat sits", "video2": '"a dog runs', "video3": "a car turns",
                "video4": '"a bird, then a plane, flies"'}
    root = _msrvtt_annotations(tmp_path / "msrvtt", ids, captions)
    for args in (["data-check", "--no-cache"], ["train", "--clip", "rap-micro", "--pretrained", "none", "--out",
                                               str(tmp_path / "run")]):
        result = CliRunner().invoke(app, [*args, "--dataset", "msrvtt", "--data-root", str(root), "--quiet"])
        said = _one_error_line(result)
        assert result.exit_code == 1, result.output
        assert f"{root / 'MSRVTT_JSFUSION_test.csv'} row 3 has a 'sentence' value running over lines 3-5 " \
               "('a dog runs'...): a '\"' opened on line 3 is not closed there; close or remove it" in said, said


def test_train_from_a_checkpoint_with_a_weights_file_names_the_option_to_drop(tmp_path, micro_checkpoint):
    """`train --checkpoint ckpt.pt --pretrained FILE` was refused with 'pass either --checkpoint or --clip/--backbone,
    not both', naming neither --pretrained (what was given) nor the file. It now names the options given, to drop,
    and the way to train on other weights."""
    weights = tmp_path / "clip.safetensors"
    cases = (["--pretrained", str(weights)], f"drop --pretrained {weights},"), \
        (["--clip", "rap-micro", "--pretrained", "none"], "drop --clip rap-micro and --pretrained none,")
    for extra, drop in cases:
        result = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--checkpoint",
                                          str(micro_checkpoint), *extra, "--out", str(tmp_path / "run"), "--quiet"])
        said = _one_error_line(result)
        assert result.exit_code == 2 and f"--checkpoint {micro_checkpoint} brings its own backbone: {drop}" in said, \
            said
        assert "`rapdeploy init --clip NAME --pretrained FILE --out ckpt.pt`" in said, said


def test_a_hub_snapshot_folder_given_as_pretrained_names_the_weights_file_in_it(tmp_path):
    """A model downloaded from the Hugging Face hub is a folder holding open_clip_model.safetensors (and
    open_clip_pytorch_model.bin). Given as --pretrained it was refused as 'not a regular file (a folder, FIFO or
    device); pass the weights file itself', without naming the file right there. It now names it."""
    snapshot = tmp_path / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"")
    for args in (["init", "--clip", "rap-micro", "--pretrained", str(snapshot), "--out", str(tmp_path / "c.pt")],
                 ["info", "--clip", "rap-micro", "--pretrained", str(snapshot)]):
        result = CliRunner().invoke(app, args)
        said = _one_error_line(result)
        assert result.exit_code == 2, result.output
        assert said.endswith(f"it holds open_clip's weights file: pass --pretrained "
                             f"{snapshot / 'open_clip_model.safetensors'}"), said


def test_build_engine_given_a_dataset_folder_says_it_is_no_export_instead_of_exporting_into_it(tmp_path):
    """`rapdeploy build-engine DATA_ROOT` (a dataset folder for the export folder) was answered 'DIR has no
    manifest.json; run `rapdeploy export CKPT --out DIR`': advice to write the ONNX graphs into the dataset folder
    (which export then refuses, the folder not being empty). It now says the folder is no export and which to pass."""
    root = _msrvtt_annotations(tmp_path / "msrvtt", ["video1", "video2"])
    result = CliRunner().invoke(app, ["build-engine", str(root), "--backend", "onnxruntime"])
    said = _one_error_line(result)
    assert result.exit_code == 2 and f"{root} is not an export folder (no manifest.json, no .onnx graph)" in said, said
    assert "--out" not in said.replace("unless given --out", ""), said

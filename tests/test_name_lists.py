"""Lists of names in messages say how many were left out ("a, b, c and 2 more"): the shared helper
(rap_deploy.name_lists.some_names) and the messages that cut their lists without a count before."""

from __future__ import annotations

import types

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import some_names

runner = CliRunner()


def test_some_names_counts_what_it_leaves_out():
    names = [f"n{i}" for i in range(7)]
    assert some_names(names) == "n0, n1, n2, n3, n4 and 2 more"
    assert some_names(names, 7) == some_names(names, 9) == ", ".join(names)
    assert some_names(names[:1]) == "n0" and some_names([]) == ""
    # items that hold commas are joined by "; ", and the count stands as an item of its own
    assert some_names(["a: x, y", "b: z", "c: w"], 2, sep="; ") == "a: x, y; b: z; and 1 more"


def test_short_repr_bounds_any_value_a_message_shows():
    """Values from untrusted files are shown at most 40 characters long, whatever their size or type."""
    from rap_deploy.name_lists import short_repr, shortened

    assert short_repr(7) == "7" and short_repr("a b") == "'a b'" and shortened("abc", 3) == "abc"
    for value in ("x" * 100_000, ["y" * 100] * 10, {str(i): i for i in range(1000)}, 10 ** 5000, [10 ** 5000]):
        shown = short_repr(value)
        assert len(shown) <= 40, shown
    assert short_repr(["y" * 100] * 10).endswith("…") and short_repr(10 ** 5000) == "<int too large to show>"


def test_the_clip_loader_and_checkpoint_use_the_one_helper():
    """One source of truth: the model code's lists come from rap_deploy.name_lists, not a copy."""
    from rap_deploy import checkpoint_model, checkpoint_read
    from rap_deploy.model import clip_loader

    assert clip_loader.some_names is some_names and checkpoint_model.some_names is some_names
    assert checkpoint_read.some_names is some_names


def test_a_split_without_scenes_names_how_many_videos_lack_one(monkeypatch, tmp_path):
    """The refusal showed a list repr of 3 ids (``has no scene for ['v0', 'v1', 'v2']``) whatever their number."""
    from rap_deploy.data import synth_errors

    monkeypatch.setattr(synth_errors, "synthetic_scenes", lambda split: ({}, None))
    split = types.SimpleNamespace(data_root=str(tmp_path), videos=[types.SimpleNamespace(video_id=f"v{i}")
                                                                    for i in range(5)])
    with pytest.raises(UsageError) as err:
        synth_errors.split_scenes(split)
    assert "has no scene for 5 videos (v0, v1, v2 and 2 more); regenerate" in str(err.value), err.value


def test_pinned_fp32_violations_say_how_many_were_left_out():
    """Past 4 layers the list ended in a bare ' …'."""
    from rap_deploy.engines.trt_plan import require_pinned_fp32

    bad = [{"layer": f"L{i}", "type": "Softmax", "tensor": f"t{i}", "dtype": "HALF", "nodes": ["a", "b"]}
           for i in range(6)]
    with pytest.raises(CheckFailedError) as err:
        require_pinned_fp32("video_encoder", {"violations": bad})
    message = str(err.value)
    assert "L3 (Softmax) -> t3 is HALF [a, b]; and 2 more. TensorRT dropped" in message, message
    assert "L4" not in message and "…" not in message


def test_no_training_video_says_how_many_reasons_were_left_out(tmp_path):
    """Past 3 videos the reasons ended in '; …' (the count of all was there, not of those left out)."""
    from rap_deploy.train.run_data import _no_training_video

    options = types.SimpleNamespace(dataset="msrvtt", data_root=tmp_path)
    dataset = types.SimpleNamespace(split=None, bad_videos=[{"video_id": f"v{i}", "reason": "cannot decode"}
                                                             for i in range(5)])
    message = str(_no_training_video(options, dataset))
    assert "(5 missing or undecodable: v0: cannot decode; v1: cannot decode; v2: cannot decode; and 2 more)" \
        in message, message


def test_unwritten_shards_are_counted(monkeypatch, tmp_path):
    """'shards s0, s1, s2, s3, s4 of ROOT were not written' named 5 of any number of shards, without a count."""
    from rap_deploy.library import builder

    monkeypatch.setattr(builder, "_committed", lambda root, shard, verify_hash=True: None)
    plan = {"shards": [{"name": f"shard-{i:06d}"} for i in range(8)]}
    with pytest.raises(CheckFailedError) as err:
        builder._wait_for_shards(tmp_path, plan, types.SimpleNamespace(world_size=1))
    assert f"8 of the 8 shards of {tmp_path} were not written (shard-000000, shard-000001, shard-000002, " \
        "shard-000003, shard-000004 and 3 more); re-run" in str(err.value), err.value


def test_index_of_undecodable_videos_counts_those_it_does_not_name(micro_checkpoint, tmp_path):
    """'no video could be decoded' named the first 5 videos and reasons of any number, without a count."""
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(7):
        (folder / f"x{i}.mp4").write_bytes(b"junk")
    res = runner.invoke(app, ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out",
                              str(tmp_path / "lib"), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 1 and "no video could be decoded" in res.output, res.output
    assert " and 2 more" in " ".join(res.output.split()), res.output


class Foreign0:
    """Arbitrary Python objects in a pickle (loading them needs weights_only=False)."""


class Foreign1(Foreign0):
    pass


class Foreign2(Foreign0):
    pass


class Foreign3(Foreign0):
    pass


class Foreign4(Foreign0):
    pass


def test_checkpoint_refusals_count_the_names_they_leave_out(micro_checkpoint, tmp_path):
    """A pickle of 5 foreign classes named 3 with no count, a foreign dict's keys ended ', …', a newer
    rapdeploy's settings named 5 of any number, an open_clip config's differing keys ended ' …'."""
    import torch

    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.checkpoint_model import _check_same_architecture

    objects = tmp_path / "objects.pt"
    torch.save([cls() for cls in (Foreign0, Foreign1, Foreign2, Foreign3, Foreign4)], objects)
    with pytest.raises(UsageError, match=r"Foreign2 and 2 more\) that need weights_only=False"):
        load_checkpoint(objects)
    foreign = tmp_path / "foreign.pt"
    torch.save({f"k{i}": i for i in range(5)}, foreign)
    with pytest.raises(UsageError, match="a dict with keys 'k0', 'k1', 'k2' and 2 more"):
        load_checkpoint(foreign)
    payload = torch.load(micro_checkpoint, map_location="cpu", weights_only=True)
    payload["config"].update({f"new_{i}": i for i in range(7)})
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    with pytest.raises(UsageError, match=r"\(new_0, new_1, new_2, new_3, new_4 and 2 more\): it was written by a "
                                         "newer rapdeploy"):
        load_checkpoint(newer)
    stored = {f"key{i}": 1 for i in range(6)}
    with pytest.raises(UsageError, match=r"\(in key0, key1, key2, key3 and 2 more\): the network"):
        _check_same_architecture("ckpt.pt", "rap-micro", stored, {k: 2 for k in stored})


def test_train_summaries_count_the_videos_they_leave_out(capsys, monkeypatch):
    """train's summary named 10 skipped training videos of any number with no count, and the test videos left out
    of every evaluation ended their 10 ids in ' …'."""
    from rap_deploy.cli.train_cmds import _print_train_summary

    monkeypatch.setenv("COLUMNS", "1000")
    recall = {"R1": 1.0, "R5": 2.0, "R10": 3.0, "MnR": 4.0}
    _print_train_summary({"run_dir": "/w/run", "best": {"epoch": 1, "t2v": recall, "v2t": recall},
                          "variant": "rap", "clip": "rap-micro", "trainable_params": 1, "total_params": 2, "steps": 3,
                          "batch_size": 4, "train_seconds": 1.0, "wall_seconds": 2.0, "world_size": 1,
                          "device": "cpu", "skipped_videos": [{"video_id": f"tr{i:02d}"} for i in range(12)],
                          "test_skipped_videos": [f"te{i:02d}" for i in range(13)], "dataset": "msrvtt",
                          "complete": False, "epochs_done": 1, "epochs": 2})
    text = " ".join(capsys.readouterr().out.split())
    assert "12 undecodable training video(s) skipped: tr00, tr01," in text and "tr09 and 2 more" in text, text
    assert "te09 and 3 more; `rapdeploy data-check" in text and "…" not in text, text


def test_a_library_whose_model_differs_in_many_settings_counts_those_it_does_not_show(micro_checkpoint):
    """A library of another model listed 4 differing settings then '; ...' with no count."""
    from rap_deploy.config import FrameSamplingConfig
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library.manifest import check_model, model_identity

    engine = load_engine(micro_checkpoint)
    recorded = model_identity(engine, FrameSamplingConfig(max_frames=engine.config.frames, fps=1.0))
    recorded["config"] = {**recorded["config"], **{f"setting{i}": i for i in range(6)}}
    recorded["config_sha256"] = "0" * 64
    with pytest.raises(UsageError) as err:
        check_model(recorded, engine, "lib")
    message = " ".join(str(err.value).split())
    assert "setting3 3 vs null; and 2 more)" in message and "; ...)" not in message, message


def test_the_scale_bench_counts_the_files_of_a_foreign_folder(tmp_path, capsys):
    """--folder holding other files than a library named 5 of them of any number, without a count."""
    from rap_deploy.library import scale_bench

    for i in range(7):
        (tmp_path / f"f{i}.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        scale_bench.main(["library", "--engine", "e", "--folder", str(tmp_path)])
    err = " ".join(capsys.readouterr().err.split())
    assert stop.value.code == 2 and "(f0.txt, f1.txt, f2.txt, f3.txt, f4.txt and 2 more)" in err, err


def _skipped(count: int) -> list[dict[str, str]]:
    return [{"video_id": f"v{i}", "reason": "cannot decode"} for i in range(count)]


def test_evaluation_refusals_count_the_videos_they_leave_out(monkeypatch):
    """A split none of whose videos decodes, and one whose captioned videos were all skipped, ended their 3 reasons
    in '; …'."""
    from rap_deploy import retrieval

    monkeypatch.setattr(retrieval, "decodable_videos", lambda *a, **k: ([], _skipped(5)))
    split = types.SimpleNamespace(split="test", num_videos=5, num_captions=5)
    with pytest.raises(CheckFailedError) as err:
        retrieval.usable_videos(split, None, None, False)
    assert "decodes (v0: cannot decode; v1: cannot decode; v2: cannot decode; and 2 more); check" in str(err.value)
    kept = types.SimpleNamespace(num_videos=2, num_captions=0)
    with pytest.raises(CheckFailedError) as err:
        retrieval._check_captions(split, kept, _skipped(4))
    assert "skipped (v0: cannot decode; v1: cannot decode; v2: cannot decode; and 1 more): no caption" in \
        str(err.value), err.value


def test_bench_real_frames_count_the_videos_they_pass_over(monkeypatch, tmp_path):
    """bench's real frames named 3 undecodable videos of any number with no count, and the videos it passed over
    ended their 5 ids in ', …'."""
    import numpy as np

    from rap_deploy import retrieval
    from rap_deploy.data import datasets
    from rap_deploy.engines import bench_inputs

    config = types.SimpleNamespace(frames=4)
    monkeypatch.setattr(datasets, "load_split", lambda *a, **k: None)
    monkeypatch.setattr(bench_inputs, "first_decodable",
                        lambda *a: (types.SimpleNamespace(num_videos=0, num_captions=0), _skipped(5)))
    with pytest.raises(CheckFailedError) as err:
        bench_inputs.real_frames("msrvtt", tmp_path, config, 2, None, False)
    assert "(5 skipped: v0: cannot decode; v1: cannot decode; v2: cannot decode; and 2 more)" in str(err.value)
    split = types.SimpleNamespace(num_videos=1, num_captions=1, captions=["a caption"])
    monkeypatch.setattr(bench_inputs, "first_decodable", lambda *a: (split, _skipped(7)))
    monkeypatch.setattr(retrieval, "load_video_batch", lambda *a: (np.zeros(1), np.zeros(1)))
    described = bench_inputs.real_frames("msrvtt", tmp_path, config, 2, None, False)[3]
    assert "7 missing or undecodable passed over (v0, v1, v2, v3, v4 and 2 more)" in described, described


def test_fp16_graph_violations_are_counted(monkeypatch, tmp_path):
    """An fp16 graph's nodes that must stay fp32 were cut at 8 without a count."""
    import onnx

    from rap_deploy.engines import trt_build, trt_plan

    monkeypatch.setattr(onnx, "load", lambda *a, **k: None)
    monkeypatch.setattr(trt_plan, "fp16_graph_violations",
                        lambda *a: {"fp16_nodes": 3, "violations": [f"n{i}" for i in range(11)]})
    with pytest.raises(CheckFailedError) as err:
        trt_build._fp16_source(types.SimpleNamespace(__version__="11.0"), tmp_path, "video_encoder",
                               {"video_encoder": {"file": "v.onnx"}}, None)
    assert "n6, n7 and 3 more; re-export with --fp16" in str(err.value), err.value


def test_unreadable_training_videos_are_counted():
    """A batch's unreadable videos ended their 2 reasons in '; …'."""
    from rap_deploy.train.batches import UNREADABLE, check_readable

    with pytest.raises(CheckFailedError) as err:
        check_readable({UNREADABLE: ["v0: gone", "v1: gone", "v2: gone"]}, 3, lambda: "resume")
    assert "in epoch 3 (v0: gone; v1: gone; and 1 more); it decoded" in str(err.value), err.value


def test_one_way_to_show_a_path_or_an_int_from_an_untrusted_file():
    """ablate_runs (a run's recorded paths) and bounds (an int a limit refuses) each had a private copy of how to show
    such a value; both use rap_deploy.name_lists' now."""
    from rap_deploy import bounds
    from rap_deploy.name_lists import PATH_CHARS, int_text, text_repr
    from rap_deploy.train import ablate_runs

    real = "/w/" + "deep/" * 150 + "backbone.safetensors"  # 773 characters: named whole
    assert text_repr(real) == repr(real) and text_repr("/w/a b") == "'/w/a b'"
    padded = text_repr("x" * 100_000)
    assert len(padded) == PATH_CHARS + 2 and padded.startswith("'xxx") and padded.endswith("…"), padded[-5:]
    assert text_repr([0] * 100_000) == "[0, 0, 0, 0, 0, 0, ...]"
    assert int_text(70_000, ",") == "70,000" and int_text(-1000) == "-1000" and int_text(10 ** 38) == str(10 ** 38)
    assert int_text(10 ** 5000) == "<int too large to show>" and len(int_text(10 ** 4000, ",")) <= 40
    assert ablate_runs.text_repr is text_repr and bounds.int_text is int_text

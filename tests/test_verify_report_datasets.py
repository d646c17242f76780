"""verify's report folder names the dataset: one engine verified on MSR-VTT and on MSVD (or ActivityNet) keeps two
reports, and MSR-VTT's (the default dataset's) keep the folders they had."""

from __future__ import annotations

import itertools
import json

from test_verify_cli import _msvd_from_synth
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.data import DATASETS, DEFAULT_DATASET
from rap_deploy.engines.report_labels import engine_label, report_folder_name
from rap_deploy.engines.verify import default_report_dir


def test_two_datasets_of_one_engine_report_to_two_folders(micro_checkpoint, synth_root, tmp_path):
    """verify --dataset msrvtt and then --dataset msvd of one engine both wrote <workspace>/verify/<engine>, the
    later replacing the earlier without a word. A dataset other than the default now follows '+' in the folder name
    (verify/<engine>+msvd); MSR-VTT's test split keeps verify/<engine>."""
    ws, cache = tmp_path / "ws", tmp_path / "frames"
    msvd = _msvd_from_synth(synth_root, tmp_path / "msvd")
    for dataset, root in (("msrvtt", synth_root), ("msvd", msvd)):
        res = CliRunner().invoke(app, ["verify", "--dataset", dataset, "--data-root", str(root), "--engine",
                                       str(micro_checkpoint), "--workspace", str(ws), "--cache-dir", str(cache),
                                       "--rerank-top", "5", "--max-videos", "4", "--quiet"])
        assert res.exit_code == 0, res.output
    label = micro_checkpoint.stem
    folders = sorted(p.name for p in (ws / "verify").iterdir() if not p.name.startswith("."))
    assert folders == [label, f"{label}+msvd"]
    for folder, dataset in ((label, "msrvtt"), (f"{label}+msvd", "msvd")):
        assert json.loads((ws / "verify" / folder / "verify.json").read_text())["dataset"] == dataset


def test_every_dataset_and_split_has_its_folder_and_the_default_datasets_are_unchanged(tmp_path):
    """The default dataset's folders are the ones reports had (<engine>, <engine>@train); another dataset's test
    split (or a split reading its files: ActivityNet's val) goes to <engine>+<dataset>, another split after '@'."""
    assert DEFAULT_DATASET == "msrvtt"
    engine = tmp_path / "onnxruntime-int8"
    expected = {("msrvtt", "test"): "onnxruntime-int8", ("msrvtt", "val"): "onnxruntime-int8",
                ("msrvtt", "train"): "onnxruntime-int8@train", ("msvd", "test"): "onnxruntime-int8+msvd",
                ("msvd", "val"): "onnxruntime-int8+msvd@val", ("activitynet", "test"): "onnxruntime-int8+activitynet",
                ("activitynet", "val"): "onnxruntime-int8+activitynet",
                ("didemo", "train"): "onnxruntime-int8+didemo@train"}
    for (dataset, split), folder in expected.items():
        assert default_report_dir(engine, dataset, split, tmp_path / "ws") == tmp_path / "ws" / "verify" / folder


def test_no_engine_dataset_and_split_share_a_folder(tmp_path):
    """Whatever the names, two (engine, dataset, split) never share a folder: not an engine named like another's
    dataset report (X+msvd), not a split named like a dataset (X@msvd is msrvtt's split 'msvd', not MSVD's test
    split), and no folder name holds ':' or a path separator."""
    labels = [engine_label(tmp_path / n) for n in ("X", "X+msvd", "X@msvd", "X-msvd", "X+msvd@val")]
    splits = [None, "train", "val", "test", "msvd", "msvd@val", "a+b", "a:b"]
    names = [report_folder_name(label, split, dataset)
             for label, split, dataset in itertools.product(labels, splits, DATASETS)]
    assert len(set(names)) == len(names)
    assert not any(c in name for name in names for c in ':/\\')
    assert report_folder_name("X", "msvd", "msrvtt") == "X@msvd" != report_folder_name("X", None, "msvd")


def test_verify_help_and_the_readme_name_the_dataset_in_the_folder():
    """verify --help's --out and the README's verify row say where another dataset's reports go."""
    from pathlib import Path

    help_text = " ".join(CliRunner().invoke(app, ["verify", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "+<dataset>" in help_text and "<engine name>+msvd@val" in help_text, help_text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `verify` |"))
    assert "followed by `+<dataset>` for a `--dataset` other than `msrvtt`" in row, row

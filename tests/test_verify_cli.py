"""``rapdeploy verify`` end to end on the micro model and the tiny synthetic set: an ONNX Runtime fp32 engine passes
with zero rank changes, a damaged engine fails with exit 1 and a report that says where, multi-caption data works."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("frames")


def _verify(engine, data_root, out, cache, *extra):
    return runner.invoke(app, ["verify", "--dataset", extra[0] if extra else "msrvtt", "--data-root", str(data_root),
                               "--engine", str(engine), "--out", str(out), "--cache-dir", str(cache),
                               "--rerank-top", "5", *extra[1:]])


def test_verify_fp32_engine_passes(micro_ort_engines, synth_root, frame_cache, tmp_path):
    out = tmp_path / "v32"
    res = _verify(micro_ort_engines["fp32"], synth_root, out, frame_cache)
    assert res.exit_code == 0, res.output
    assert "PASSED" in res.output and "rank changes" in res.output
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] is True
    assert report["tolerance"] is None and "no ground-truth rank may change" in report["rule"]  # no ΔR@K limit applied
    assert report["rank_changes"] == {"t2v": 0, "v2t": 0}
    assert report["two_stage"]["rank_changes"] == {"t2v": 0, "v2t": 0}
    for key in ("tolerance", "reference", "engine", "delta", "two_stage", "meanp", "embedding_error", "versions",
                "device", "engine_info", "counts", "settings"):
        assert key in report, key
    for section in (report, report["two_stage"]):
        for who in ("reference", "engine", "delta"):
            assert set(section[who]) == {"t2v", "v2t"}
            assert {"R1", "R5", "R10", "MdR", "MnR", "RSum", "ties"} <= set(section[who]["t2v"])
    assert report["delta"]["t2v"]["R1"] == 0 and report["two_stage"]["delta"]["v2t"]["R5"] == 0
    assert report["engine_info"]["backend"] == "onnxruntime" and report["precision"] == "fp32"
    assert report["counts"]["videos"] == 12 and report["counts"]["skipped"] == 0
    assert report["embedding_error"]["first_batch_fp32"]["patch_tokens"]["max_abs"] < 1e-4
    assert report["embedding_error"]["video_emb"]["min_cosine"] > 0.99999
    assert report["reference_info"]["matches_engine_source"] is True
    assert report["notes"] == []
    assert (out / "verify.md").read_text().startswith("# rapdeploy verify: PASSED")
    assert (out / "verify.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_damaged_engine_fails_and_shows_where(micro_ort_engines, synth_root, frame_cache, tmp_path):
    out = tmp_path / "bad"
    res = _verify(micro_ort_engines["damaged"], synth_root, out, frame_cache, "msrvtt", "--json")
    assert res.exit_code == 1, res.output
    assert "recall parity failed" in res.output
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] is False
    failed = [c for c in report["checks"] if not c["passed"]]
    assert failed and all(c["metric"] == "rank_changes" and c["value"] > 0 for c in failed)
    assert report["rank_changes"]["t2v"] + report["rank_changes"]["v2t"] > 0
    assert report["failures"] and report["embedding_error"]["video_emb"]["max_abs"] > 1e-3
    # the damage is in the video encoder: the per-graph errors on identical inputs say so
    assert report["worst_graph"] == "video_encoder"
    assert report["graph_error"]["text_encoder"]["max_abs"] < 1e-5
    assert report["graph_error"]["asa_head"]["max_abs"] < 1e-5
    assert "video_encoder" in res.output
    md = (out / "verify.md").read_text()
    assert "FAILED" in md and "## Failures" in md and "FAIL" in md.split("## Retrieval metrics")[1]
    assert "Queries whose rank changed" in md
    assert (out / "verify.png").is_file()


def test_a_failure_with_many_failed_checks_says_how_many_it_leaves_out(micro_ort_engines, synth_root, frame_cache,
                                                                       tmp_path):
    """The error named the first 4 failed checks and ended in ' …' whatever their number; it now says how many
    more failed (verify.md lists them all)."""
    out = tmp_path / "many"
    res = _verify(micro_ort_engines["damaged"], synth_root, out, frame_cache, "msrvtt", "--tolerance", "0", "--quiet")
    assert res.exit_code == 1, res.output
    failures = json.loads((out / "verify.json").read_text())["failures"]
    checks, worst = failures[:-1], failures[-1]
    assert len(checks) > 4  # ranks changed and R@K moved in both searches and directions: more than shown
    message = " ".join(res.stderr.split())  # the console wraps long lines
    assert f"{checks[3]}; and {len(checks) - 4} more; {worst}" in message, message
    assert checks[4] not in message and "…" not in message


def test_max_videos_and_tie_eps_reach_the_rule(micro_ort_engines, synth_root, frame_cache, tmp_path):
    """--max-videos N verifies on the split's first N videos; --tie-eps is the score gap the fp32 rule forgives: at
    its largest (0.01) part of the damaged engine's rank changes are forgiven as ties, which the default gap counts
    (no test passed either option before). A gap over 0.01 is refused: --tie-eps 1 let an engine of random weights
    pass."""
    out = tmp_path / "wide-ties"
    res = _verify(micro_ort_engines["damaged"], synth_root, out, frame_cache, "msrvtt", "--max-videos", "5",
                  "--tie-eps", "0.01", "--quiet")
    report = json.loads((out / "verify.json").read_text())
    assert report["counts"]["videos"] == 5 and report["reference"]["t2v"]["queries"] == 5
    assert report["settings"]["tie_eps"] == 0.01 and report["counts"]["limited_to"] == 5
    strict = _verify(micro_ort_engines["damaged"], synth_root, tmp_path / "strict", frame_cache, "msrvtt",
                     "--max-videos", "5", "--quiet")
    assert strict.exit_code == 1 and "recall parity failed" in strict.output, strict.output
    failed = json.loads((tmp_path / "strict" / "verify.json").read_text())  # the same 5 videos at the default gap
    assert failed["passed"] is False and failed["rank_changes"]["t2v"] + failed["rank_changes"]["v2t"] > 0

    def counts(rep: dict, key: str) -> int:
        detail = rep["rank_changes_detail"]["asa"]
        return detail["t2v"][key] + detail["v2t"][key]

    assert counts(report, "within_ties") > counts(failed, "within_ties"), (report, res.output)  # forgiven at 0.01
    assert sum(report["rank_changes"].values()) < sum(failed["rank_changes"].values())
    wide = _verify(micro_ort_engines["damaged"], synth_root, tmp_path / "refused", frame_cache, "msrvtt",
                   "--tie-eps", "1", "--quiet")
    assert wide.exit_code == 2 and "--tie-eps must be <= 0.01, got 1" in wide.output, wide.output
    assert not (tmp_path / "refused").exists()


def _msvd_from_synth(synth_root: Path, dest: Path) -> Path:
    """An MSVD-format folder (every caption a query) over the synthetic test videos and all their captions."""
    import csv

    data = json.loads((synth_root / "MSRVTT_data.json").read_text())
    with open(synth_root / "MSRVTT_JSFUSION_test.csv", newline="") as fh:
        test_ids = [row["video_id"] for row in csv.DictReader(fh)][:6]
    captions: dict[str, list[list[str]]] = {v: [] for v in test_ids}
    for s in data["sentences"]:
        if s["video_id"] in captions:
            captions[s["video_id"]].append(s["caption"].split())
    (dest / "videos").mkdir(parents=True)
    for v in test_ids:
        (dest / "videos" / f"{v}.mp4").symlink_to(synth_root / "videos" / f"{v}.mp4")
    (dest / "test_list.txt").write_text("\n".join(test_ids) + "\n")
    with open(dest / "raw-captions.pkl", "wb") as fh:
        pickle.dump(captions, fh)
    return dest


def test_verify_multi_caption_split(micro_checkpoint, micro_ort_engines, synth_root, frame_cache, tmp_path):
    msvd = _msvd_from_synth(synth_root, tmp_path / "msvd")
    out = tmp_path / "msvd-out"
    res = _verify(micro_checkpoint, msvd, out, frame_cache, "msvd", "--quiet", "--tolerance", "0")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("verify passed")
    report = json.loads((out / "verify.json").read_text())
    assert report["counts"]["multi_caption"] is True
    assert report["counts"]["videos"] == 6 and report["counts"]["captions"] > 6
    assert report["reference"]["t2v"]["queries"] == report["counts"]["captions"]
    assert report["reference"]["v2t"]["queries"] == 6
    assert report["engine_info"]["backend"] == "torch"
    # 6 v2t queries: one query = 16.7 points; at --tolerance 0 no number of queries would do
    assert "one query moves R@K by 16.67 points" in report["notes"][0]
    assert "a tolerance of 0 leaves no change within it" in report["notes"][0]
    # a damaged engine on the same multi-caption split: its v2t side (each video's best caption) is compared too
    bad = _verify(micro_ort_engines["damaged"], msvd, tmp_path / "msvd-bad", frame_cache, "msvd", "--quiet")
    assert bad.exit_code == 1, bad.output
    damaged = json.loads((tmp_path / "msvd-bad" / "verify.json").read_text())
    assert damaged["counts"]["multi_caption"] is True and not damaged["passed"]
    assert damaged["rank_changes"]["t2v"] > 0 and damaged["rank_changes"]["v2t"] > 0


def test_verify_usage_errors(tmp_path, synth_root):
    res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root),
                              "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2 and "no engine in" in res.output
    res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root),
                              "--engine", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_a_reference_checkpoint_that_is_a_folder_is_named_as_such(micro_ort_engines, synth_root, tmp_path):
    """verify (and bench) --checkpoint DIR said the reference checkpoint 'does not exist'; it says it is not a file
    now (exit 2)."""
    res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                              str(micro_ort_engines["fp32"]), "--checkpoint", str(tmp_path), "--out",
                              str(tmp_path / "report")])
    assert res.exit_code == 2 and f"reference checkpoint {tmp_path} is not a file" in res.stderr, res.output


def test_reference_runs_evaluate_the_reference_once_for_several_engines(micro_ort_engines, synth_root,
                                                                         frame_cache, tmp_path):
    from rap_deploy.engines.verify import ReferenceRuns, verify

    def check(engine, out, runs=None):
        return verify("msrvtt", synth_root, engine, top_m=5, out=tmp_path / out, cache=frame_cache, progress=False,
                      raise_on_fail=False, reference_runs=runs)

    runs = ReferenceRuns()
    first = check(micro_ort_engines["fp32"], "a", runs)
    shared = check(micro_ort_engines["damaged"], "b", runs)
    alone = check(micro_ort_engines["damaged"], "c")
    assert len(runs.runs) == 1  # one checkpoint, one setting: one reference run
    assert first["seconds"]["reference_reused"] is False and shared["seconds"]["reference_reused"] is True
    assert alone["seconds"]["reference_reused"] is False
    assert shared["passed"] is alone["passed"] is False
    for key in ("reference", "engine", "delta", "rank_changes"):
        assert shared[key] == alone[key], key  # the shared reference gives the very same verdict


def _poison(folder: Path, graph: str) -> None:
    """Put NaN into the largest float weight of ``graph`` in an export or engine folder, with its manifest entry's
    sha256 and size updated, so only the numbers are wrong."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from rap_deploy.atomic import sha256_file

    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["graphs"][graph]
    path = folder / entry["file"]
    model = onnx.load(str(path))
    target = max((i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT),
                 key=lambda i: int(np.prod(i.dims)))
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) * np.float32("nan"), target.name))
    onnx.save(model, str(path))
    entry.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_nan_is_never_a_pass(micro_ort_engines, synth_root, frame_cache, tmp_path):
    """An engine or export computing NaN fails every comparison: build-engine's validation (exit 1, no engine
    written, strict JSON nowhere holding NaN) and verify (exit 1, one line), never a pass or a traceback."""
    import shutil

    import numpy as np

    from rap_deploy.engines.validate import compare_arrays
    from rap_deploy.engines.verify_rules import vector_error
    from rap_deploy.export.parity import max_abs, min_cosine

    ref, bad = np.ones((2, 4), np.float32), np.full((2, 4), np.nan, np.float32)
    assert compare_arrays(ref, bad)["max_abs"] == np.inf and compare_arrays(bad, ref)["min_cosine"] == -np.inf
    assert max_abs(ref, bad) == np.inf and min_cosine(ref, bad) == -np.inf
    assert vector_error(ref, bad)["max_abs"] == np.inf and vector_error(ref, bad)["min_cosine"] == -np.inf

    engine = shutil.copytree(micro_ort_engines["fp32"], tmp_path / "nan-engine")
    _poison(engine, "video_encoder")
    res = _verify(engine, synth_root, tmp_path / "out", frame_cache)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "NaN/inf" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr

    export = shutil.copytree(micro_ort_engines["export"], tmp_path / "nan-export")
    _poison(export, "text_encoder")
    res = runner.invoke(app, ["build-engine", str(export), "--backend", "onnxruntime", "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and "inf" in res.stderr and not (tmp_path / "e").exists(), res.output


def test_a_split_none_of_whose_videos_decodes_is_a_damaged_dataset(micro_ort_engines, synth_root, tmp_path):
    """verify said "the test split has no video to encode" (exit 2, bad usage) and named no video when every test
    video was undecodable; that is damaged data: exit 1, naming the videos and the check to run."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    test_ids = [line.split(",")[2] for line in (data / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1:]]
    for vid in set(test_ids):
        (data / "videos" / f"{vid}.mp4").write_bytes(b"not a video")
    res = _verify(micro_ort_engines["fp32"], data, tmp_path / "out", tmp_path / "frames")
    assert res.exit_code == 1, res.output
    assert "none of the" in res.output and test_ids[0] in res.output and "data-check" in res.output


def test_a_split_whose_annotations_list_no_video_is_a_damaged_dataset(micro_ort_engines, synth_root, tmp_path):
    """A test split file of a header and no row exited 2 (bad usage) in verify where data-check exits 1 for the same
    folder ("lists no videos"): what a readable dataset holds is a check, so now 1, pointing at data-check."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    test_csv = data / "MSRVTT_JSFUSION_test.csv"
    test_csv.write_text(test_csv.read_text().splitlines()[0] + "\n")
    res = _verify(micro_ort_engines["fp32"], data, tmp_path / "out", tmp_path / "frames")
    assert res.exit_code == 1, res.output
    line = " ".join(res.stderr.split())
    assert "msrvtt test split under" in line and "has no videos" in line and "data-check" in line, line
    assert runner.invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(data)]).exit_code == 1


def test_an_interrupted_verify_never_leaves_a_report_beside_an_earlier_runs(micro_ort_engines, synth_root,
                                                                           frame_cache, tmp_path, monkeypatch):
    """verify wrote verify.json first, then verify.md and verify.png over an earlier run's: killed in between
    (reproduced with RAPDEPLOY_CRASH_AT=atomic.tmp-created@2), the folder held the new fp32 engine's verify.json beside
    the old int8 engine's verify.md. The old reports are removed first and verify.json comes last now."""
    from rap_deploy.engines import reports

    out = tmp_path / "report"
    assert _verify(micro_ort_engines["damaged"], synth_root, out, frame_cache).exit_code == 1
    assert "FAILED" in (out / "verify.md").read_text() and (out / "verify.png").is_file()

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the plot is drawn

    monkeypatch.setattr(reports, "plot_verify", interrupted)
    res = _verify(micro_ort_engines["fp32"], synth_root, out, frame_cache)
    assert res.exit_code != 0
    assert not (out / "verify.json").exists() and not (out / "verify.png").exists()  # no old report remains
    assert (out / "verify.md").read_text().startswith("# rapdeploy verify: PASSED")  # the new run's own


def test_a_report_name_taken_by_a_folder_is_refused_before_the_evaluation(micro_ort_engines, synth_root, tmp_path,
                                                                          monkeypatch):
    """--out holding a folder named verify.md was found only after the whole evaluation (exit 2 then, with
    verify.json already written); it is refused first now."""
    from rap_deploy.engines import verify as verify_module

    out = tmp_path / "report"
    (out / "verify.md").mkdir(parents=True)

    def no_evaluation(*_args, **_kwargs):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(verify_module, "evaluate_both", no_evaluation)
    res = _verify(micro_ort_engines["fp32"], synth_root, out, tmp_path / "frames")
    assert res.exit_code == 2 and "verify.md is not a file" in res.stderr, res.output
    assert sorted(p.name for p in out.iterdir()) == ["verify.md"]


def test_a_reference_checkpoint_replaced_during_verify_is_refused(micro_checkpoint, micro_ort_engines, synth_root,
                                                                  frame_cache, tmp_path, monkeypatch):
    """verify hashed the reference checkpoint (matching the engine's source) and loaded it only after the engine:
    a best.pt that training replaced in between became the reference unchecked, and the engine failed parity against
    another model (reproduced: exit 1, ranks changed). It is refused now (exit 2), no report written."""
    import os
    import shutil

    import torch
    from conftest import randomize_adapters

    from rap_deploy.checkpoint import checkpoint_from_model, load_checkpoint, save_checkpoint
    from rap_deploy.engines import verify as verify_module

    best = shutil.copy(micro_checkpoint, tmp_path / "best.pt")
    ckpt = load_checkpoint(micro_checkpoint)
    model = ckpt.build_model()
    with torch.no_grad():
        randomize_adapters(model, seed=7, std=0.5)
    save_checkpoint(checkpoint_from_model(model, ckpt), tmp_path / "next.pt")
    real_load = verify_module._load_engine

    def load_while_training_writes(*args, **kwargs):
        engine = real_load(*args, **kwargs)
        os.replace(tmp_path / "next.pt", best)  # training's atomic save of a better epoch
        return engine

    monkeypatch.setattr(verify_module, "_load_engine", load_while_training_writes)
    out = tmp_path / "report"
    res = _verify(micro_ort_engines["fp32"], synth_root, out, frame_cache, "msrvtt", "--checkpoint", str(best))
    assert res.exit_code == 2 and "was replaced or rewritten while verify ran" in res.stderr, res.output
    assert not (out / "verify.json").exists()


def test_the_default_report_folder_of_a_runs_checkpoint_names_the_run(micro_checkpoint, micro_ort_engines, synth_root,
                                                                      frame_cache, tmp_path, monkeypatch):
    """verify --engine RUN/best.pt wrote its reports to <workspace>/verify/best, so verifying two runs' best.pt
    without --out left one report, the later over the earlier (reproduced: runs a and b, one verify/best). A run's
    best.pt and last.pt (train's names) report to verify/<run>-best and <run>-last; other checkpoints and engine
    folders keep their own names."""
    import shutil

    from rap_deploy.engines.report_labels import engine_label
    from rap_deploy.train.loop import BEST, LAST

    ws = tmp_path / "ws"
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        shutil.copy(micro_checkpoint, tmp_path / run / BEST)
        res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                                  str(tmp_path / run / BEST), "--workspace", str(ws), "--cache-dir", str(frame_cache),
                                  "--rerank-top", "5", "--max-videos", "4"])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (ws / "verify").iterdir() if not p.name.startswith(".")) == ["a-best", "b-best"]
    assert json.loads((ws / "verify" / "a-best" / "verify.json").read_text())["passed"] is True
    (tmp_path / "a" / LAST).write_bytes(b"")
    monkeypatch.chdir(tmp_path / "a")
    assert engine_label(Path(LAST)) == "a-last"  # a relative path too
    from rap_deploy.engines.report_labels import RUN_CHECKPOINT_NAMES

    assert set(RUN_CHECKPOINT_NAMES) == {BEST, LAST}  # train's names
    assert engine_label(micro_checkpoint) == micro_checkpoint.stem
    assert engine_label(micro_ort_engines["fp32"]) == Path(micro_ort_engines["fp32"]).resolve().name


def test_a_data_root_without_its_videos_names_the_folder_looked_in(micro_ort_engines, synth_root, tmp_path):
    """A --data-root holding the annotation files but not the videos (copied without them, or with them under
    another folder name) said only 'video24: missing; ...', not where they were looked for."""
    data = tmp_path / "data"
    data.mkdir()
    for f in synth_root.iterdir():
        if f.is_file():
            (data / f.name).write_bytes(f.read_bytes())
    for said in (f"{data / 'videos'} does not exist; put the videos there (<video_id>.<ext>, any sub-folder) or pass "
                 "the --data-root that holds them; check the videos with `rapdeploy data-check`",
                 f"{data / 'videos'} holds none of them; put them there or pass the --data-root that holds them"):
        res = _verify(micro_ort_engines["fp32"], data, tmp_path / "out", tmp_path / "frames")
        assert res.exit_code == 1, res.output
        line = " ".join(res.stderr.split())
        assert line.startswith("error: none of the") and said in line, line
        (data / "videos").mkdir(exist_ok=True)
    (data / "videos" / "clip.mp4").write_bytes(b"x")  # one missing, one not: no folder hint (data-check lists them)
    test_ids = [line.split(",")[2] for line in (data / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1:]]
    (data / "videos" / f"{test_ids[0]}.mp4").write_bytes(b"not a video")
    res = _verify(micro_ort_engines["fp32"], data, tmp_path / "out", tmp_path / "frames")
    assert res.exit_code == 1 and "holds none" not in res.output and "does not exist" not in res.output, res.output


def test_verify_names_a_servers_report_folder_in_its_help_and_the_readme():
    """``verify --engine http://HOST:PORT`` writes its reports to ``verify/remote-HOST-PORT`` (engine_label), but
    neither ``verify --help``'s --out nor the README's verify row said so: they named folders and checkpoints only."""
    from rap_deploy.engines.report_labels import engine_label

    assert engine_label("http://127.0.0.1:8080") == "remote-127.0.0.1-8080"  # remote-HOST-PORT
    # the same server typed with a trailing slash (the remote engine drops it) reported to 'remote-127.0.0.1-8080-'
    assert engine_label("http://127.0.0.1:8080/") == engine_label("http://127.0.0.1:8080//") == "remote-127.0.0.1-8080"
    res = CliRunner().invoke(app, ["verify", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "remote-HOST-PORT for http://HOST:PORT" in res.output, res.output
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `verify` |"))
    assert "`remote-HOST-PORT` for `--engine http://HOST:PORT`" in row, row


def test_a_split_other_than_the_test_split_reports_to_its_own_folder(micro_checkpoint, synth_root, frame_cache,
                                                                     tmp_path):
    """verify --split train wrote its reports to <workspace>/verify/<engine>, over the test split's report (the
    same folder whatever the split). A split that is not the dataset's test split (nor reads its files: MSR-VTT's
    val, ActivityNet's val) now reports to verify/<engine>@<split> (it was <engine>-<split>, which an engine named
    <engine>-train also reports to); the test split keeps verify/<engine>, which the README and the demo name. --help
    and the README's verify row say so."""
    from rap_deploy.engines.verify import default_report_dir

    ws = tmp_path / "ws"
    for split in ("test", "train"):
        res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                                  str(micro_checkpoint), "--split", split, "--workspace", str(ws), "--cache-dir",
                                  str(frame_cache), "--rerank-top", "5", "--max-videos", "4", "--quiet"])
        assert res.exit_code == 0, res.output
    label = micro_checkpoint.stem
    assert sorted(p.name for p in (ws / "verify").iterdir() if not p.name.startswith(".")) == [label, f"{label}@train"]
    for folder, split in ((label, "test"), (f"{label}@train", "train")):
        assert json.loads((ws / "verify" / folder / "verify.json").read_text())["split"] == split
    for dataset, split, folder in (("msrvtt", "val", label), ("activitynet", "val", f"{label}+activitynet"),
                                   ("activitynet", "test", f"{label}+activitynet"),
                                   ("msvd", "val", f"{label}+msvd@val"), ("didemo", "train", f"{label}+didemo@train"),
                                   ("didemo", "test", f"{label}+didemo")):
        assert default_report_dir(micro_checkpoint, dataset, split, ws) == ws / "verify" / folder, (dataset, split)
    help_text = " ".join(runner.invoke(app, ["verify", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "followed by @<split> for a --split other than the dataset's test split" in help_text, help_text
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `verify` |"))
    assert "followed by `@<split>` for a `--split` other than the dataset's test split" in row, row


def test_the_verify_table_on_an_80_column_terminal_shows_every_number_whole(micro_ort_engines, synth_root,
                                                                           frame_cache, tmp_path):
    """On an 80-column terminal the ten-column table (both directions side by side) did not fit, and rich cut its
    cells: R@10 and RSum read '100.…', '200.…', the header 'metr…', 'PyTo…' (34 cells cut in a real
    `rapdeploy verify` of an int8 engine). Where both directions do not fit, each now has its own table."""
    import re

    res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                              str(micro_ort_engines["fp32"]), "--out", str(tmp_path / "v"), "--cache-dir",
                              str(frame_cache), "--rerank-top", "5"],
                        env={"TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", res.stdout)
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    report = json.loads((tmp_path / "v" / "verify.json").read_text())
    for direction in ("t2v", "v2t"):
        assert f"captions), {direction}" in text, text
        rsum = f"{report['reference'][direction]['RSum']:.2f}"
        assert re.search(rf"RSum\s+{re.escape(rsum)}\s+{re.escape(rsum)}\s+0\s", text), (rsum, text)
    wide = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                               str(micro_ort_engines["fp32"]), "--out", str(tmp_path / "w"), "--cache-dir",
                               str(frame_cache), "--rerank-top", "5"])  # a log: 130 columns, one table
    assert wide.exit_code == 0 and "t2v PyTorch" in wide.stdout and "captions), t2v" not in wide.stdout, wide.output

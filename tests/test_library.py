"""The video library: ``rapdeploy index`` / ``rapdeploy search`` on the micro model and the synthetic test split.

Index → search equals ``two_stage_similarity``; kill-and-resume equals a straight run; ``--add``/``--remove``;
another model's engine is refused (exit 2); a damaged shard is named (exit 1); a folder with a broken MP4 indexes
the rest and names it; bad queries get a message; ``torchrun`` with 2 ranks equals one process; the CLI end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.errors import DamagedArtifactError, UsageError
from rap_deploy.graphs import rerank_tensors

runner = CliRunner()
SHARD = 5  # 12 test videos → 3 shards (5, 5, 2)
TOP_M = 4


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lib_frames")


@pytest.fixture(scope="module")
def engine(micro_checkpoint):
    from rap_deploy.engines.loader import load_engine

    return load_engine(micro_checkpoint)


def _index_args(synth_root, ckpt, out, cache, *extra):
    return ["index", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine", str(ckpt), "--out", str(out),
            "--cache-dir", str(cache), "--shard-size", str(SHARD), "--top-m", str(TOP_M), *extra]


@pytest.fixture(scope="module")
def library(tmp_path_factory, synth_root, micro_checkpoint, frame_cache):
    """A library of the synthetic test split built through the CLI (exact stage 1)."""
    out = tmp_path_factory.mktemp("lib") / "msrvtt-test"
    res = runner.invoke(app, _index_args(synth_root, micro_checkpoint, out, frame_cache, "--json"))
    assert res.exit_code == 0, res.output
    return out


def _files(lib: Path) -> dict[str, bytes]:
    """Every shard file and the stage-1 files, by relative path (the manifest has timestamps, so it is left out)."""
    return {p.relative_to(lib).as_posix(): p.read_bytes() for folder in ("shards", "stage1")
            for p in sorted((lib / folder).rglob("*")) if p.is_file()}


def _search_json(lib, ckpt, *args):
    res = runner.invoke(app, ["search", "--library", str(lib), "--engine", str(ckpt), "--json", *args])
    return res, [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


# ---------------------------------------------------------------------------------------------- search = reference
@pytest.mark.parametrize("top_m", [TOP_M, 100])
def test_search_ranking_equals_two_stage_similarity(library, engine, synth_root, frame_cache, top_m):
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.data.datasets import load_split
    from rap_deploy.library import open_library
    from rap_deploy.retrieval import encode_texts, encode_videos, two_stage_similarity, usable_videos

    cache = FrameCache(frame_cache)
    split, skipped = usable_videos(load_split("msrvtt", synth_root, "test", max_frames=engine.config.frames), cache,
                                   engine.config, progress=False)
    assert not skipped
    index = encode_videos(engine, split, cache, progress=False)
    sims = two_stage_similarity(engine, encode_texts(engine, split.captions), index, top_m=top_m, progress=False)
    with open_library(library, engine) as lib:
        assert len(lib) == 12
        results = lib.search(split.captions, top_k=len(lib), top_m=top_m)
    m = min(top_m, 12)
    for q, r in enumerate(results):
        want = [index.video_ids[i] for i in np.argsort(-sims[q], kind="stable")]
        assert [h["video_id"] for h in r["results"]] == want, q
        scores = np.array([h["score"] for h in r["results"]])
        np.testing.assert_allclose(scores[:m], np.sort(sims[q])[::-1][:m] - 3.0, atol=1e-5)
        assert all(h["reranked"] for h in r["results"][:m]) and not any(h["reranked"] for h in r["results"][m:])
        assert sorted(h["stage1_rank"] for h in r["results"]) == list(range(1, 13))
        assert r["query"] == split.captions[q]
        assert set(r["timings_ms"]) == {"text", "stage1", "rerank", "total", "rerank_read"}


@pytest.mark.parametrize("top_m", [0, 1, 100])
def test_tied_videos_rank_in_row_order_as_the_reference_does(synth_root, micro_checkpoint, frame_cache, tmp_path,
                                                             engine, top_m):
    """Two files of the same clip tie exactly. The reference (two_stage_similarity, stable argsort) ranks tied
    videos in row order; FAISS returned them in its heap's order (d, c, a), so search put a later-indexed copy
    first."""
    from rap_deploy.library import open_library

    videos = sorted((synth_root / "videos").glob("*.mp4"))
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, src in (("a", 0), ("b", 1), ("c", 0), ("d", 0)):
        shutil.copy(videos[src], folder / f"{name}.mp4")
    res = runner.invoke(app, ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out",
                              str(tmp_path / "lib"), "--cache-dir", str(frame_cache), "--batch-size", "1"])
    assert res.exit_code == 0, res.output
    query = np.load(tmp_path / "lib/shards/shard-000000/video_emb.npy")[:1]  # clip 0's own embedding
    with open_library(tmp_path / "lib", engine) as lib:
        ranked = [[h["video_id"] for h in lib.search_embeddings(query, k, top_m)[0]["results"]] for k in (4, 2, 1)]
    assert ranked == [["a", "c", "d", "b"], ["a", "c"], ["a"]], ranked


def test_search_embeddings_thumbnails_and_describe(library, engine, frame_cache):
    from rap_deploy.library import open_library
    from rap_deploy.retrieval import encode_texts

    with open_library(library, engine, verify="quick", cache_dir=frame_cache) as lib:
        by_text = lib.search(["a red circle moves to the left"], top_k=5, top_m=TOP_M)[0]
        by_emb = lib.search_embeddings(encode_texts(engine, ["a red circle moves to the left"]), 5, TOP_M)[0]
        assert "query" not in by_emb and by_emb["timings_ms"]["text"] == 0.0
        assert [h["video_id"] for h in by_emb["results"]] == [h["video_id"] for h in by_text["results"]]
        frames = lib.thumbnail_frames(by_text["results"][0]["video_id"], count=3)
        assert frames.dtype == np.uint8 and frames.shape == (3, 32, 32, 3) and frames.any()
        with pytest.raises(KeyError):
            lib.thumbnail_frames("no-such-video")
        d = lib.describe()
        assert d["videos"] == 12 and d["stage1"]["type"] == "exact" and d["stage1"]["recall_at_m"] == 1.0
        assert d["model"]["tensors"] == ["video_emb", *rerank_tensors(True)]
        assert d["bytes_per_video"] > 0 and d["verify"] == "quick"
        with pytest.raises(UsageError, match="float"):
            lib.search_embeddings(np.zeros((1, 7), np.float32))
    with pytest.raises(UsageError, match="closed"):
        lib.search(["x"])


def test_any_engine_of_the_same_model_searches_it(library, micro_ort_engines, micro_checkpoint):
    torch_res, torch_out = _search_json(library, micro_checkpoint, "a red circle", "--top-m", str(TOP_M))
    ort_res, ort_out = _search_json(library, micro_ort_engines["fp32"], "a red circle", "--top-m", str(TOP_M))
    assert torch_res.exit_code == 0 and ort_res.exit_code == 0, ort_res.output
    assert [h["video_id"] for h in ort_out[0]["results"]] == [h["video_id"] for h in torch_out[0]["results"]]


def test_the_readme_deploy_snippet_scores_as_search_does(library, micro_ort_engines, monkeypatch, tmp_path):
    """README's "Deploying an engine" Python block, run as written on two of the library's videos (paths and engine
    swapped in): its ASA similarities are the scores `rapdeploy search` gives those videos, so the snippet decodes,
    stores and re-ranks exactly as the library does."""
    import re

    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library import open_library

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Deploying an engine", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    query = "a red circle moves to the left"
    with open_library(library, load_engine(micro_ort_engines["fp32"])) as lib:
        hits = {h["video_id"]: h for h in lib.search([query], top_k=12, top_m=12)[0]["results"]}
    picked = sorted(hits)[:2]
    (tmp_path / "clips").mkdir()
    for name, vid in zip(("a", "b"), picked, strict=True):
        shutil.copy(hits[vid]["path"], tmp_path / "clips" / f"{name}.mp4")
    (tmp_path / "rapdeploy-out" / "engines").mkdir(parents=True)
    shutil.copytree(micro_ort_engines["fp32"], tmp_path / "rapdeploy-out" / "engines" / "onnxruntime-int8")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["sim"].shape == (1, 2)
    np.testing.assert_allclose(scope["sim"][0], [hits[v]["score"] for v in picked], atol=1e-5)


# ---------------------------------------------------------------------------------------------- queries
@pytest.mark.parametrize("query,message", [
    ("   ", "is empty"),
    ("a red\x00 circle", "control character U+0000"),
    ("x" * 1001, "at most 1000"),
    ("\u200b\u200b", "no letter, digit or symbol"),
    ("\u0301", "no letter, digit or symbol"),
])
def test_bad_queries_get_a_message_and_exit_2(library, micro_checkpoint, query, message):
    res = runner.invoke(app, ["search", query, "--library", str(library), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_long_query_is_truncated_with_a_warning_and_non_text_is_refused(library, engine, tmp_path):
    from rap_deploy.library import open_library

    long = " ".join(["red circle"] * 30)
    with open_library(library, engine, verify="quick") as lib:
        r = lib.search([long], top_k=3)[0]
        assert r["warnings"] and "the rest is ignored" in r["warnings"][0]
        with pytest.raises(UsageError, match="not text"):
            lib.search([b"bytes"])  # type: ignore[list-item]
        with pytest.raises(UsageError, match="list of strings"):
            lib.search("a string, not a list")  # type: ignore[arg-type]
    bad = tmp_path / "queries.txt"
    bad.write_bytes(b"a red circle\n\xff\xfe broken\n")
    res = runner.invoke(app, ["search", "--queries", str(bad), "--library", str(library)])
    assert res.exit_code == 2 and "line 2 is not UTF-8" in res.output


def test_a_queries_path_that_is_a_folder_is_named_as_such(tmp_path):
    """search --queries DIR (or a device) said the file 'does not exist'; it says what the path is now (exit 2)."""
    res = runner.invoke(app, ["search", "--queries", str(tmp_path), "--library", str(tmp_path / "lib")])
    assert res.exit_code == 2 and "is not a regular file" in res.stderr and "does not exist" not in res.stderr
    missing = runner.invoke(app, ["search", "--queries", str(tmp_path / "q.txt"), "--library", str(tmp_path)])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr, missing.output


def test_a_library_path_that_is_a_file_is_named_as_such(micro_checkpoint, tmp_path):
    """search --library FILE said the folder 'does not exist; build one with index --out FILE' (which cannot work);
    it says the path is not a folder now (exit 2)."""
    a_file = tmp_path / "lib"
    a_file.write_text("x")
    res = runner.invoke(app, ["search", "x", "--library", str(a_file), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 2 and "is not a folder" in res.stderr and "build one" not in res.stderr, res.output


def test_an_unknown_verify_mode_is_named_before_the_workspace_library_is_opened(library, micro_checkpoint, tmp_path):
    """search --verify bogus without --library was refused as '... No --library was given, so search opened the
    workspace's latest library (...): pass --library LIB ...', a fix for another error; the mode is checked first."""
    workspace = tmp_path / "ws"
    shutil.copytree(library, workspace / "index" / library.name)
    res = runner.invoke(app, ["search", "x", "--verify", "bogus", "--workspace", str(workspace), "--engine",
                              str(micro_checkpoint)])
    assert res.exit_code == 2 and "'bogus'" in res.stderr and "--library" not in res.stderr, res.output


def test_queries_file_prints_one_json_object_per_query(library, micro_checkpoint, tmp_path):
    qf = tmp_path / "q.txt"
    qf.write_text("a red circle moves to the left\n\na small blue square\n")
    res, out = _search_json(library, micro_checkpoint, "--queries", str(qf), "--top", "3", "--top-m", str(TOP_M))
    assert res.exit_code == 0, res.output
    assert [o["query"] for o in out] == ["a red circle moves to the left", "a small blue square"]
    for o in out:
        assert len(o["results"]) == 3
        assert set(o["results"][0]) >= {"rank", "video_id", "path", "score", "stage1_rank"}
        assert Path(o["results"][0]["path"]).is_absolute()
    table = runner.invoke(app, ["search", "a red circle", "--library", str(library), "--engine",
                                str(micro_checkpoint), "--top", "12", "--top-m", "2"])
    assert table.exit_code == 0 and "re-rank" in table.output and "not re-ranked" in table.output


def test_a_queries_file_larger_than_any_query_list_is_refused_unread(tmp_path, monkeypatch):
    """`search --queries FILE` read the whole file before any check: a video or disk image passed by mistake was
    read into memory whole (a MemoryError traceback past the memory). A file larger than the most queries a search
    takes (10,000 of 1,000 characters) is refused from its size (exit 2), before a byte is read."""
    from rap_deploy.cli.library_cmds import read_queries
    from rap_deploy.library.queries import MAX_QUERIES_FILE_BYTES

    qf = tmp_path / "clip.mp4"
    with open(qf, "wb") as fh:
        fh.truncate(MAX_QUERIES_FILE_BYTES + 1)  # sparse: no disk, and never read
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    with pytest.raises(UsageError, match=r"clip.mp4 is 67,108,865 bytes.*one query per line"):
        read_queries(None, qf)


# ---------------------------------------------------------------------------------------------- refusals
def test_library_of_another_model_is_refused(library, tmp_path):
    from conftest import micro_config, randomize_adapters

    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    def ckpt(name, seed, **cfg):
        c, model = new_checkpoint(micro_config(**cfg), BackboneSpec.parse("rap-micro", "none"), seed=0)
        randomize_adapters(model, seed=seed)
        save_checkpoint(checkpoint_from_model(model, c), tmp_path / name)
        return tmp_path / name

    other_weights = runner.invoke(app, ["search", "a red circle", "--library", str(library), "--engine",
                                        str(ckpt("w.pt", seed=7))])
    assert other_weights.exit_code == 2, other_weights.output
    assert "another model" in other_weights.output and "checkpoint sha256" in other_weights.output
    other_config = runner.invoke(app, ["search", "a red circle", "--library", str(library), "--engine",
                                       str(ckpt("c.pt", seed=1, asa_topk=2))])
    assert other_config.exit_code == 2 and "asa_topk" in other_config.output
    # the message named the keys that differ, not their values, nor the file it read them from
    assert "asa_topk 4 vs 2" in other_config.stderr and str(library / "manifest.json") in other_config.stderr


def _clip_folder(synth_root: Path, folder: Path, count: int) -> list[Path]:
    """Make ``folder`` with the first ``count`` synthetic videos as ``v0.mp4``, ``v1.mp4``...; returns every
    synthetic video (sorted), for tests that copy more in later."""
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    folder.mkdir()
    for i in range(count):
        shutil.copy(videos[i], folder / f"v{i}.mp4")
    return videos


def _copy(library: Path, dest: Path) -> Path:
    shutil.copytree(library, dest)
    return dest


def test_damaged_shard_is_named_with_exit_1(library, micro_checkpoint, tmp_path):
    patch = "shards/shard-000001/patch_tokens.npy"
    flipped = _copy(library, tmp_path / "flipped")
    data = bytearray((flipped / patch).read_bytes())
    data[-100] ^= 0x40
    (flipped / patch).write_bytes(bytes(data))
    res = runner.invoke(app, ["search", "a red circle", "--library", str(flipped), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 1, res.output
    assert patch in res.output and "sha256" in res.output

    truncated = _copy(library, tmp_path / "truncated")
    with open(truncated / patch, "r+b") as fh:
        fh.truncate(len(data) - 64)
    res = runner.invoke(app, ["search", "a red circle", "--library", str(truncated), "--engine",
                              str(micro_checkpoint), "--verify", "quick"])
    assert res.exit_code == 1 and patch in res.output and "truncated" in res.output

    header = _copy(library, tmp_path / "header")
    raw = bytearray((header / patch).read_bytes())
    raw[:6] = b"NOTNPY"
    (header / patch).write_bytes(bytes(raw))
    res = runner.invoke(app, ["search", "x", "--library", str(header), "--engine", str(micro_checkpoint),
                              "--verify", "quick"])
    assert res.exit_code == 1 and "no valid .npy header" in res.output

    escaped = _copy(library, tmp_path / "escaped")
    manifest = json.loads((escaped / "manifest.json").read_text())
    manifest["shards"][0]["files"]["frame_emb"]["file"] = "shards/shard-000000/../../../../etc/passwd"
    (escaped / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["search", "x", "--library", str(escaped), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 1 and "points outside its folder" in res.output
    manifest["shards"][0]["files"]["frame_emb"]["file"] = "shards/shard-000001/frame_emb.npy"  # another shard's file
    (escaped / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["search", "x", "--library", str(escaped), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 1 and "names files outside shards/shard-000000/" in res.output


def _set_sampling_frames(m):
    from rap_deploy.library.manifest import digest

    m["model"]["sampling"]["max_frames"] = "four"
    m["model"]["sampling_sha256"] = digest(m["model"]["sampling"])


def _swap_first_shards(m):  # names and files trade places, each row_offset stays: the rows would carry other ids
    a, b = m["shards"][0], m["shards"][1]
    a["name"], b["name"], a["files"], b["files"] = b["name"], a["name"], b["files"], a["files"]


MANIFEST_TAMPERING = {
    "next_shard reused": (lambda m: m.update(next_shard=0), "'next_shard' 0 is not past every shard"),
    "next_shard missing": (lambda m: m.pop("next_shard"), "'next_shard' None"),
    "next_row inside a shard": (lambda m: m.update(next_row=1), "'next_row' 1 is not past"),
    "removed row out of range": (lambda m: m.update(removed=[2 ** 70]), "'removed' is malformed"),
    # the next build's rows went past int64: an OverflowError traceback once they reached numpy / FAISS
    "next_row past int64": (lambda m: m.update(next_row=2 ** 70), "'next_row' 1180591620717411303424"),
    "videos missing": (lambda m: m.pop("videos"), "'videos' is malformed"),
    "sampling frames not a number": (_set_sampling_frames, "'model.sampling.max_frames' 'four'"),
    "engine not an object": (lambda m: m.update(engine="x"), "'engine' is malformed"),
    "sources not a list": (lambda m: m.update(sources=5), "'sources' is malformed"),
    "builds not a list": (lambda m: m.update(builds=5), "'builds' is malformed"),  # index: a TypeError traceback
    "effort not a number": (lambda m: m["stage1"].update(effort="lots"), "'stage1.effort' 'lots'"),
    "effort out of range": (lambda m: m["stage1"].update(effort=10 ** 30), "'stage1.effort'"),
    "top_m not a number": (lambda m: m["stage1"].update(top_m="x"), "'stage1.top_m' 'x'"),
    "recall missing": (lambda m: m["stage1"].pop("recall_at_m"), "'stage1.recall_at_m' is missing"),
    # read by every index report (an up-to-date `index` ended in a KeyError traceback)
    "recall not a number": (lambda m: m["stage1"]["recall_at_m"].update(recall="high"),
                            "'stage1.recall_at_m' is malformed"),
    "recall without its m": (lambda m: m["stage1"]["recall_at_m"].pop("m"), "'stage1.recall_at_m' is malformed"),
    "build seconds missing": (lambda m: m["stage1"].pop("build_seconds"), "'stage1.build_seconds' None"),
    "stage-1 type unknown": (lambda m: m["stage1"].update(type="flat"), "'stage1.type' 'flat'"),  # was exit 2
    "shards swapped": (_swap_first_shards, "the manifest puts shard shard-000001 at row 0"),
    # neither was checked: a hand-edited count opened and searched, and true passed as a row count
    "videos not the live rows": (lambda m: m.update(videos=999), "'videos' 999 is not the number of its shards' rows"),
    "rows a boolean": (lambda m: m["shards"][0].update(rows=True), "shard entry 0 is malformed"),
    "moved not an object": (lambda m: m.update(moved=[]), "'moved' is malformed"),
    "moved path not a string": (lambda m: m.update(moved={"0": {"path": 5, "bytes": 1, "mtime_ns": 1, "ctime_ns": 1,
                                                                "inode": 1}}), "'moved' entry '0' is malformed"),
}


@pytest.mark.parametrize("case", list(MANIFEST_TAMPERING))
def test_a_tampered_manifest_is_one_line_exit_1_and_index_writes_nothing(library, micro_checkpoint, tmp_path, case):
    """Each edit gets a one-line exit 1 from search and from index (which must not write a shard over a committed
    one, as a reused next_shard/next_row would make it do); the library's files stay as they were."""
    tamper, message = MANIFEST_TAMPERING[case]
    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    tamper(manifest)
    (lib / "manifest.json").write_text(json.dumps(manifest))
    before = _files(lib)
    res = runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 1 and message in " ".join(res.stderr.split()), res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    res = runner.invoke(app, ["index", "--out", str(lib), "--remove", "video30"])
    assert res.exit_code == 1, res.output
    assert _files(lib) == before


@pytest.mark.parametrize("tensor", ["patch_tokens", "asa_tokens"])
def test_a_rerank_width_edited_with_its_files_is_the_library_s_fault(library, micro_checkpoint, tmp_path, tensor):
    """A re-rank tensor widened in the manifest and in every shard file (headers, sizes and sha256 consistent): the
    re-rank ended in a RuntimeError traceback from the model's matmul (an ONNX Runtime engine: exit 2 naming the
    ASA graph's input, as if the search were wrong); the row shapes are now checked against the model's config at
    open, exit 1 naming manifest.json."""
    import hashlib

    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    manifest["tensor_shapes"][tensor][-1] += 8
    for shard in manifest["shards"]:
        f = shard["files"][tensor]
        rows = np.load(lib / f["file"])
        wide = np.zeros((*rows.shape[:-1], rows.shape[-1] + 8), rows.dtype)
        wide[..., :rows.shape[-1]] = rows
        np.save(lib / f["file"], wide)
        data = (lib / f["file"]).read_bytes()
        f.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), shape=list(wide.shape))
    (lib / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 1 and "'tensor_shapes'" in res.stderr and "are not the model's" in res.stderr, res.output
    assert "manifest.json" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option,value", [("--top-m", "-5"), ("--top-m", "1001"), ("--target-recall", "7"),
                                          ("--target-recall", "nan"),
                                          ("--batch-size", "0"), ("--shard-size", "0")])
def test_index_options_out_of_range_exit_2(library, micro_checkpoint, tmp_path, option, value):
    res = runner.invoke(app, ["index", "--out", str(tmp_path / "lib"), "--list", str(tmp_path / "none.txt"),
                              "--engine", str(micro_checkpoint), option, value])
    assert res.exit_code == 2 and option in res.stderr, res.output


def test_stored_recall_queries_with_a_lying_header_are_damaged_not_allocated(library, tmp_path):
    """A queries .npy whose header claims 10^12 rows (sha256 and size updated to match): exit 1 naming the file,
    before anything of that size is allocated."""
    import hashlib

    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    entry = manifest["stage1"]["queries"]
    path = lib / entry["file"]
    raw = path.read_bytes()
    header_end = raw.index(b"\n") + 1
    header = raw[:header_end].decode("latin1")
    rows = header.split("'shape': (", 1)[1].split(",", 1)[0]
    fake = header.replace(f"'shape': ({rows},", "'shape': (1000000000000,").encode("latin1")
    data = fake[:-1].ljust(header_end - 1 + len(fake) - len(header), b" ")[:header_end - 1] + b"\n"
    path.write_bytes(data + raw[header_end:])
    entry.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (lib / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["index", "--out", str(lib), "--remove", "video30"])
    assert res.exit_code == 1 and entry["file"] in res.stderr and "not a valid .npy" in res.stderr, res.output


@pytest.mark.parametrize("content, message", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),  # was a RecursionError traceback
    (b" " * (3 << 20) + b"{}", "more than the 5 videos"),  # refused from its size, unread
], ids=["deep", "padded"])
def test_a_videos_json_nested_deep_or_padded_is_named_not_a_traceback(library, micro_checkpoint, tmp_path, content,
                                                                       message):
    """videos.json (sha256 and size updated in the manifest) is read whole at every open and every update: a file
    nested past Python's recursion limit ended search and index with a RecursionError traceback, and a padded one was
    read whole whatever its size. Both exit 1, one line naming the file."""
    import hashlib

    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    entry = manifest["shards"][0]["files"]["videos"]
    (lib / entry["file"]).write_bytes(content)
    entry.update(bytes=len(content), sha256=hashlib.sha256(content).hexdigest())
    (lib / "manifest.json").write_text(json.dumps(manifest))
    for args in (["search", "a circle", "--library", str(lib), "--engine", str(micro_checkpoint)],
                 ["index", "--out", str(lib), "--remove", "video30"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and entry["file"] in res.stderr and message in res.stderr, res.output
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_committed_shard_record_nested_deep_is_encoded_again(tmp_path):
    """A resume read each committed shard's shard.json with no bound: one nested past the recursion limit ended the
    build with a RecursionError traceback; like any damaged shard it is taken as not committed (encoded again)."""
    from rap_deploy.library.shards import committed_shard

    folder = tmp_path / "shards" / "shard-000000"
    folder.mkdir(parents=True)
    (folder / "shard.json").write_text("[" * 100_000 + "]" * 100_000)
    assert committed_shard(tmp_path, "shard-000000", "0" * 64) is None


@pytest.mark.parametrize("tamper", [
    lambda e: e.update(skipped="abc"),  # was a TypeError traceback after the resume
    lambda e: e.update(skipped=[{"video_id": 7, "path": "/v.mp4", "reason": "x"}]),
    lambda e: e["files"]["video_emb"].update(shape="4"),  # the library's tensor shapes come from it
    lambda e: e["files"]["video_emb"].update(shape=[2, 4]),  # not its rows
], ids=["skipped not a list", "skipped id not text", "shape not a list", "shape of other rows"])
def test_a_committed_shard_record_with_malformed_fields_is_encoded_again(tmp_path, tamper):
    """A resume took a committed shard's skipped list and tensor shapes from its shard.json unchecked: a damaged one
    ended the build with a traceback after encoding. Like any damaged shard it is taken as not committed."""
    from rap_deploy.library.shards import committed_shard, write_shard

    videos = {"video_id": ["a"], "path": ["/v/a.mp4"], "start": [None], "end": [None], "sha256": ["0" * 64]}
    write_shard(tmp_path, "shard-000000", 0, {"video_emb": np.zeros((1, 4), np.float32)}, videos, [], "p" * 64)
    assert committed_shard(tmp_path, "shard-000000", "p" * 64) is not None
    record = tmp_path / "shards/shard-000000/shard.json"
    entry = json.loads(record.read_text())
    tamper(entry)
    record.write_text(json.dumps(entry))
    assert committed_shard(tmp_path, "shard-000000", "p" * 64) is None


def _inflate_last_shard_rows(m):  # next_row and videos moved along, so the counters still look consistent
    shard = m["shards"][-1]
    m["videos"] += 10 ** 12 - shard["rows"]
    shard["rows"] = 10 ** 12
    m["next_row"] = shard["row_offset"] + 10 ** 12


def _set_embedding_width(m, d):  # every tensor's, so the shapes still fit the model's together
    shapes = m["tensor_shapes"]
    shapes.update(video_emb=[d], frame_emb=[*shapes["frame_emb"][:-1], d],
                  patch_tokens=[*shapes["patch_tokens"][:-1], d])


@pytest.mark.parametrize("tamper,message", [
    (_inflate_last_shard_rows, "does not list 1000000000000 videos"),
    (lambda m: _set_embedding_width(m, 10 ** 12), "the manifest expects float32 [5, 1000000000000]"),
])
def test_a_manifest_inflating_rows_or_dims_is_refused_before_allocating(library, tmp_path, tamper, message):
    """A manifest claiming 10^12 rows for a shard, or 10^12-d video_emb: `index --remove` (which reads the kept
    shards to rebuild stage 1) exits 1 naming the shard file, in one line, without allocating anything of that size
    (it built a set of every claimed row, or allocated [rows, 10^12] floats: MemoryError tracebacks). Run under a
    4 GiB address-space limit so a regression fails instead of swapping."""
    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    tamper(manifest)
    (lib / "manifest.json").write_text(json.dumps(manifest))
    before = _files(lib)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
    run = f"{limit}import sys; from rap_deploy.cli import main; sys.argv[1:] = sys.argv[2:]; main()"
    res = subprocess.run([sys.executable, "-c", run, "rapdeploy", "index", "--out", str(lib), "--remove", "video30"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in res.stderr and len(errors) == 1 and message in errors[0], res.stderr[-2000:]
    assert _files(lib) == before


def test_row_shapes_whose_byte_count_wraps_int64_are_refused(library, micro_checkpoint, tmp_path):
    """A manifest and shard headers claiming patch_tokens rows of 4 x 2^60 x 32 float16 (2^68 bytes, 0 in int64
    arithmetic) over header-only files passed every size check; search then allocated that for the candidates
    (numpy 'array is too big' traceback). Row sizes are now computed exactly: exit 1 naming the file."""
    import hashlib

    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    frames, _, d = manifest["tensor_shapes"]["patch_tokens"]
    dims = [frames, 2 ** 60, d]  # 2^60 patches: 4 x 2^60 x 32 fp16 is 2^68 bytes, 0 in int64
    manifest["tensor_shapes"]["patch_tokens"] = dims
    manifest["tensor_shapes"]["asa_tokens"][1] = 2 ** 60  # the same patch count, as the model's shapes have it
    for shard in manifest["shards"]:
        f = shard["files"]["patch_tokens"]
        with open(lib / f["file"], "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f2", "fortran_order": False,
                                                      "shape": (shard["rows"], *dims)})
        f.update(bytes=(lib / f["file"]).stat().st_size, sha256=hashlib.sha256((lib / f["file"]).read_bytes())
                 .hexdigest(), shape=[shard["rows"], *dims])
    (lib / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 1 and "patch_tokens.npy" in res.output and "need" in res.output, res.output


def test_a_stage1_index_claiming_more_memory_than_there_is_is_damaged(library, tmp_path):
    """A stage-1 index file whose vector claims 2^36 floats (256 GiB): FAISS's std::bad_alloc came out of `index` (and
    search) as a MemoryError traceback; it is now the damaged file, one line, exit 1 (run under a 4 GiB
    address-space limit, so the claim is refused rather than allocated)."""
    import hashlib
    import struct

    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    path = lib / manifest["stage1"]["file"]
    data = bytearray(path.read_bytes())
    codes = data.index(b"IxFI") + 4 + 4 + 8 + 8 + 8 + 1 + 4  # header: d, ntotal, 2 dummies, is_trained, metric
    assert struct.unpack("<Q", data[codes:codes + 8])[0] == manifest["stage1"]["ntotal"] * manifest["stage1"]["dim"]
    data[codes:codes + 8] = struct.pack("<Q", 1 << 36)
    path.write_bytes(bytes(data))
    manifest["stage1"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (lib / "manifest.json").write_text(json.dumps(manifest))
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
    run = f"{limit}import sys; from rap_deploy.cli import main; sys.argv[1:] = sys.argv[2:]; main()"
    gone = json.loads((lib / "shards/shard-000000/videos.json").read_text())["video_id"][0]
    res = subprocess.run([sys.executable, "-c", run, "rapdeploy", "index", "--out", str(lib), "--remove", gone],
                         capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert len(errors) == 1 and manifest["stage1"]["file"] in errors[0], res.stderr[-2000:]


@pytest.mark.parametrize("start", ["12", float("nan"), -5.0, [1]])
def test_a_segment_that_is_not_a_time_is_refused_at_open(library, engine, frame_cache, tmp_path, start):
    """videos.json (its sha256 updated in the manifest) giving a video's segment start as text, NaN, a negative
    time or a list: the library opened, and its thumbnails (GET /thumbnail) died in the decoder with a TypeError
    (a 500). Segments are now checked at open like the other per-video fields: exit 1 naming the file."""
    import hashlib

    from rap_deploy.library import open_library

    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    f = manifest["shards"][0]["files"]["videos"]
    videos = json.loads((lib / f["file"]).read_text())
    videos["start"][0] = start
    (lib / f["file"]).write_text(json.dumps(videos))
    f.update(bytes=(lib / f["file"]).stat().st_size,
             sha256=hashlib.sha256((lib / f["file"]).read_bytes()).hexdigest())
    (lib / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedArtifactError, match="videos.json.*start"):
        with open_library(lib, engine, cache_dir=frame_cache) as opened:
            opened.thumbnail_frames(videos["video_id"][0], 2)


@pytest.mark.parametrize("ann,recorded", [("ivf", "hnsw"), ("exact", "ivf")])
def test_a_stage1_type_edited_in_the_manifest_is_damaged(library, micro_checkpoint, tmp_path, ann, recorded):
    """The manifest's stage1.type is not hashed: an IVF library's edited to 'hnsw' made every search a FAISS
    RuntimeError traceback ('IndexIVF params have incorrect type'). The index file's type is now checked against
    it when it is loaded (search and index), exit 1 naming the file."""
    lib = _copy(library, tmp_path / "lib")
    if ann != "exact":
        assert runner.invoke(app, ["index", "--out", str(lib), "--ann", ann]).exit_code == 0
    manifest = json.loads((lib / "manifest.json").read_text())
    manifest["stage1"]["type"] = recorded
    (lib / "manifest.json").write_text(json.dumps(manifest))
    before = _files(lib)
    for args in (["search", "a red circle", "--library", str(lib), "--engine", str(micro_checkpoint), "--top", "12"],
                 ["index", "--out", str(lib), "--remove", json.loads((lib / manifest["shards"][0]["files"]["videos"]
                                                                       ["file"]).read_text())["video_id"][0]]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1 and manifest["stage1"]["file"] in res.output, res.output
        assert f"records an inner-product {recorded} index" in res.output, res.output
    assert _files(lib) == before


def test_a_stage1_index_missing_live_videos_is_damaged(library, engine, tmp_path):
    """A stage-1 index file (and its sha256 in the manifest) of fewer vectors than the library's live videos: the
    library opened and every search silently missed the videos it lacked. Its vector count is now checked against
    the manifest's and the live videos at open (exit 1 naming the file)."""
    import hashlib

    from rap_deploy.library import open_library, stage1

    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    entry = manifest["stage1"]
    vectors = np.load(lib / manifest["shards"][0]["files"]["video_emb"]["file"])
    index = stage1.new_index("exact", vectors.shape[1])
    stage1.add(index, vectors, np.arange(len(vectors), dtype=np.int64))  # the first shard's videos only
    stage1.save(index, lib / entry["file"])
    data = (lib / entry["file"]).read_bytes()
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    for recorded in (entry["ntotal"], len(vectors)):  # the manifest's count kept, or edited to match
        entry["ntotal"] = recorded
        (lib / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DamagedArtifactError, match=f"{entry['file']} holds {len(vectors)} vectors"):
            open_library(lib, engine)


def test_file_truncated_after_open_raises_damaged(library, engine, tmp_path):
    from rap_deploy.library import open_library

    lib_dir = _copy(library, tmp_path / "lib")
    with open_library(lib_dir, engine, verify="quick") as lib:
        for shard in (lib_dir / "shards").iterdir():
            with open(shard / "patch_tokens.npy", "r+b") as fh:
                fh.truncate(200)
        with pytest.raises(DamagedArtifactError, match="changed size"):
            lib.search(["a red circle"], top_m=TOP_M)


def test_opening_while_an_index_update_lands_reads_the_new_library(library, engine, tmp_path, monkeypatch):
    """`rapdeploy index --remove` finishing while a search process opens the library (after it read the manifest,
    before it opened the stage-1 index the update deletes): the open read the library again instead of calling it
    damaged ("stage-1 index ... is missing; re-index the library", exit 1)."""
    import rap_deploy.library.search as search_mod
    from rap_deploy.library import BuildOptions, build_library, open_library

    lib_dir = _copy(library, tmp_path / "lib")
    gone = json.loads((lib_dir / "shards/shard-000000/videos.json").read_text())["video_id"][0]
    read = search_mod.read_manifest
    calls = []

    def read_then_update(root):
        manifest = read(root)
        if not calls:
            build_library(lib_dir, options=BuildOptions(remove=[gone]), progress=False)
        calls.append(1)
        return manifest

    monkeypatch.setattr(search_mod, "read_manifest", read_then_update)
    with open_library(lib_dir, engine) as lib:
        assert len(lib) == 11
        hits = lib.search(["a red circle"], top_k=12, top_m=TOP_M)[0]["results"]
    assert len(hits) == 11 and gone not in {h["video_id"] for h in hits}


# ---------------------------------------------------------------------------------------------- resume, add, remove
def test_kill_and_resume_equals_a_straight_run(library, synth_root, micro_checkpoint, frame_cache, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rap_deploy.cli", *_index_args(synth_root, micro_checkpoint, out, frame_cache),
           "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAPDEPLOY_CRASH_AT": "index.shard-written@2"}
    killed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "build-plan.json").is_file() and not (out / "manifest.json").exists()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-000000", "shard-000001"]
    res = runner.invoke(app, [*_index_args(synth_root, micro_checkpoint, out, frame_cache), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["shards_resumed"] == 2 and report["shards_written"] == 1 and report["videos"] == 12
    assert not (out / "build-plan.json").exists()
    assert _files(out) == _files(library)
    again = runner.invoke(app, [*_index_args(synth_root, micro_checkpoint, out, frame_cache), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["up_to_date"] is True


@pytest.mark.parametrize("damage", ["shard row moved", "shards not objects", "counters moved back"])
def test_a_damaged_build_plan_is_one_line_exit_1(synth_root, micro_checkpoint, frame_cache, tmp_path, damage):
    """The build plan a killed build left, damaged on disk: re-running the command exits 1 naming it (--force
    discards it) instead of a traceback (ValueError while assembling, AttributeError) after encoding with it. Its
    next_shard/next_row, which its request_sha256 does not cover, went into the manifest unchecked: the build
    exited 0 and every later command refused the library it wrote as damaged ('next_shard' 1 is not past every
    shard)."""
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, src in (("a", videos[0]), ("b", videos[1])):
        shutil.copy(src, folder / f"{name}.mp4")
    out = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(out), "--cache-dir",
            str(frame_cache), "--shard-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAPDEPLOY_CRASH_AT": "index.shard-written@1"}
    killed = subprocess.run([sys.executable, "-m", "rap_deploy.cli", *args, "--quiet"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    plan = json.loads((out / "build-plan.json").read_text())
    if damage == "shard row moved":
        plan["shards"][1]["row_offset"] = 0  # onto the committed shard's row, its request digest unchanged
    elif damage == "counters moved back":
        plan.update(next_shard=1, next_row=1)  # onto the last shard
    else:
        plan["shards"] = [1, 2]
    (out / "build-plan.json").write_text(json.dumps(plan))
    for extra in ([], ["--add"]):
        res = runner.invoke(app, [*args, *extra])
        assert res.exit_code == 1 and "build-plan.json" in res.stderr, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert len(res.stderr.strip().splitlines()) == 1 and not (out / "manifest.json").exists()
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


def _point_at_shard_0(entry):  # its files those of the committed shard before it
    for f in entry["files"].values():
        f["file"] = f["file"].replace("shard-000001", "shard-000000")


@pytest.mark.parametrize("tamper", [
    lambda e: e["files"]["video_emb"].update(file="../outside.npy"),  # was exit 1 blaming a manifest.json not there
    _point_at_shard_0,  # was exit 1: 'the manifest puts shard shard-000001 at row 1: the manifest was edited'
    lambda e: e.update(row_offset=0),  # the same, at every re-run
], ids=["path outside", "another shard's files", "row moved"])
def test_a_resume_over_an_edited_shard_json_encodes_that_shard_again(synth_root, micro_checkpoint, frame_cache,
                                                                     tmp_path, tamper):
    """A committed shard whose shard.json was edited (its files elsewhere, its first row moved) stopped every
    resume with an error naming no file the user could fix; it is not this plan's shard, so it is encoded again."""
    import hashlib

    videos = sorted((synth_root / "videos").glob("*.mp4"))
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(3):
        shutil.copy(videos[i], folder / f"c{i}.mp4")
    out = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(out), "--cache-dir",
            str(frame_cache), "--shard-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAPDEPLOY_CRASH_AT": "index.shard-written@2"}
    killed = subprocess.run([sys.executable, "-m", "rap_deploy.cli", *args, "--quiet"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    record = out / "shards/shard-000001/shard.json"
    entry = json.loads(record.read_text())
    tamper(entry)
    for f in entry["files"].values():
        if (out / f["file"]).is_file():  # a consistent edit: sizes and sha256 of the files it names
            data = (out / f["file"]).read_bytes()
            f.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    record.write_text(json.dumps(entry))
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["videos"], report["shards_resumed"], report["shards_written"]) == (3, 1, 2), report
    ids = json.loads((out / "shards/shard-000001/videos.json").read_text())
    assert (ids["video_id"], ids["row_offset"]) == (["c1"], 1)


def test_add_and_remove_keep_what_is_kept(library, synth_root, micro_checkpoint, frame_cache, tmp_path, engine):
    from rap_deploy.library import open_library

    videos = sorted((synth_root / "videos").glob("*.mp4"))
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(str(p) for p in videos[:6]) + "\n")
    out = tmp_path / "lib"
    first = runner.invoke(app, ["index", "--list", str(listing), "--engine", str(micro_checkpoint), "--out", str(out),
                                "--cache-dir", str(frame_cache), "--shard-size", "4", "--json"])
    assert first.exit_code == 0, first.output
    before = _files(out)
    listing.write_text("\n".join(str(p) for p in videos[:9]) + "\n")
    refused = runner.invoke(app, ["index", "--list", str(listing), "--engine", str(micro_checkpoint), "--out",
                                  str(out), "--cache-dir", str(frame_cache)])
    assert refused.exit_code == 2 and "--add" in refused.output
    added = runner.invoke(app, ["index", "--list", str(listing), "--engine", str(micro_checkpoint), "--out", str(out),
                                "--cache-dir", str(frame_cache), "--shard-size", "4", "--add", "--json"])
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["added"] == 3
    after = _files(out)
    kept = {k: v for k, v in before.items() if k.startswith("shards/")}
    assert {k: after[k] for k in kept} == kept  # --add wrote a new shard and never touched the old ones
    assert "shards/shard-000002/patch_tokens.npy" in after
    assert sorted(p.name for p in (out / "stage1").iterdir()) == ["index-0002.faiss", "queries-0002.npy"]

    ids = json.loads((out / "shards/shard-000000/videos.json").read_text())["video_id"]
    gone = ids[1]
    removed = runner.invoke(app, ["index", "--out", str(out), "--remove", gone, "--json"])
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.stdout)["removed"] == [gone] and json.loads(removed.stdout)["videos"] == 8
    assert (out / "shards/shard-000000/patch_tokens.npy").read_bytes() == after["shards/shard-000000/patch_tokens.npy"]
    with open_library(out, engine) as lib:
        assert len(lib) == 8
        hits = lib.search(["a red circle moves to the left"], top_k=20, top_m=20)[0]["results"]
        assert len(hits) == 8 and gone not in {h["video_id"] for h in hits}
    unknown = runner.invoke(app, ["index", "--out", str(out), "--remove", "no-such-id"])
    assert unknown.exit_code == 2 and "no-such-id" in unknown.output


def test_add_reencodes_a_file_changed_in_place(synth_root, micro_checkpoint, frame_cache, tmp_path, engine):
    from rap_deploy.library import open_library

    videos = sorted((synth_root / "videos").glob("*.mp4"))
    folder, same = tmp_path / "clips", tmp_path / "reference"
    for d, first in ((folder, videos[0]), (same, videos[2])):
        d.mkdir()
        shutil.copy(first, d / "a.mp4")
        shutil.copy(videos[1], d / "b.mp4")

    def index(src, out, *extra):
        return runner.invoke(app, ["index", "--videos", str(src), "--engine", str(micro_checkpoint), "--out",
                                   str(out), "--cache-dir", str(frame_cache), "--shard-size", "1", *extra])

    def scores(out):
        with open_library(out, engine) as lib:
            hits = lib.search(["a red circle moves to the left"], top_k=2, top_m=2)[0]["results"]
        return {h["video_id"]: h["score"] for h in hits}

    lib = tmp_path / "lib"
    assert index(folder, lib).exit_code == 0
    b_shard = (lib / "shards/shard-000001/videos.json").read_bytes()
    shutil.copy(videos[2], folder / "a.mp4")  # a changed in place; b only touched (same content, later mtime)
    st = os.stat(folder / "b.mp4")
    os.utime(folder / "b.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    refused = index(folder, lib)
    assert refused.exit_code == 2 and "1 changed since they were indexed" in refused.output
    added = index(folder, lib, "--add", "--json")
    assert added.exit_code == 0, added.output
    report = json.loads(added.stdout)
    assert (report["replaced"], report["added"], report["videos"]) == (["a"], 1, 2)
    assert (lib / "shards/shard-000001/videos.json").read_bytes() == b_shard  # b kept its row
    assert index(same, tmp_path / "ref").exit_code == 0
    assert scores(lib) == pytest.approx(scores(tmp_path / "ref"), abs=1e-6)  # a scores as its new content does
    again = json.loads(index(folder, lib, "--add", "--json").stdout)
    assert again["up_to_date"] and again["replaced"] == []
    before = scores(lib)
    (folder / "a.mp4").write_bytes(b"junk")  # a re-encode that cannot decode keeps the old row
    broken = json.loads(index(folder, lib, "--add", "--json").stdout)
    assert broken["replaced"] == [] and [s["video_id"] for s in broken["skipped"]] == ["a"]
    assert scores(lib) == before


def test_add_records_the_new_paths_of_a_moved_folder_without_reencoding(synth_root, micro_checkpoint, frame_cache,
                                                                        tmp_path, engine):
    from rap_deploy.library import open_library

    folder = tmp_path / "clips"
    videos = _clip_folder(synth_root, folder, 2)
    lib = tmp_path / "lib"

    def index(src, *extra):
        res = runner.invoke(app, ["index", "--videos", str(src), "--engine", str(micro_checkpoint), "--out", str(lib),
                                  "--cache-dir", str(frame_cache), "--shard-size", "1", "--json", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    def paths():  # of v0 and v1, as search results give them
        with open_library(lib, engine) as opened:
            hits = opened.search(["a red circle moves to the left"], top_k=3, top_m=3)[0]["results"]
        return {h["video_id"]: h["path"] for h in hits if h["video_id"] != "v2"}

    def kept_shards():
        return {n: b for n, b in _files(lib).items() if n.startswith(("shards/shard-000000", "shards/shard-000001"))}

    index(folder)
    shards = kept_shards()
    moved = folder.rename(tmp_path / "moved")  # same files (inode, size, times), other paths
    report = index(moved, "--add")
    assert paths() == {f"v{i}": str((moved / f"v{i}.mp4").resolve()) for i in range(2)}
    assert (report["moved"], report["added"], report["replaced"], report["videos"]) == (["v0", "v1"], 0, [], 2)
    assert kept_shards() == shards and report["shards_written"] == 0
    assert index(moved, "--add")["up_to_date"]
    copied = shutil.copytree(moved, tmp_path / "copied")  # other inodes: recognised by content
    shutil.copy(videos[2], copied / "v2.mp4")
    report = index(copied, "--add")
    assert (report["moved"], report["added"], report["videos"], report["shards_written"]) == (["v0", "v1"], 1, 3, 1)
    assert paths() == {f"v{i}": str((copied / f"v{i}.mp4").resolve()) for i in range(2)}
    assert kept_shards() == shards  # v0 and v1 were not re-encoded


def test_add_refuses_videos_sampled_at_another_frame_rate(synth_root, micro_checkpoint, frame_cache, tmp_path,
                                                         monkeypatch):
    from rap_deploy.library import sources

    folder = tmp_path / "clips"
    videos = _clip_folder(synth_root, folder, 2)
    lib = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(lib), "--cache-dir",
            str(frame_cache), "--shard-size", "1"]
    assert runner.invoke(app, args).exit_code == 0
    before = (lib / "manifest.json").read_bytes()
    shutil.copy(videos[2], folder / "v2.mp4")
    real = sources.folder_source

    def at_two_fps(path):
        source = real(path)
        source.sampling = type(source.sampling)(fps=2.0)
        return source

    monkeypatch.setattr(sources, "folder_source", at_two_fps)
    refused = runner.invoke(app, [*args, "--add"])
    assert refused.exit_code == 2, refused.output
    assert str(lib / "manifest.json") in refused.output and "fps 1.0" in refused.output
    assert "fps 2.0" in refused.output and "--force" in refused.output
    assert (lib / "manifest.json").read_bytes() == before and not (lib / "shards/shard-000002").exists()


def test_add_reencodes_a_file_replaced_with_its_size_and_mtime_kept(synth_root, micro_checkpoint, frame_cache,
                                                                   tmp_path):
    """A file replaced by other content of the same size with its modification time put back (``cp -p``, ``touch
    -r``): --add compared size and mtime only, so it kept the old row ('up to date'); the change time (and inode)
    recorded with the row now tell it, and the content hash confirms it."""
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    size = max(p.stat().st_size for p in videos[:2])  # two clips padded to one size (trailing zeros still decode)
    folder = tmp_path / "clips"
    folder.mkdir()
    padded = [p.read_bytes() + b"\0" * (size - p.stat().st_size) for p in videos[:2]]
    (folder / "a.mp4").write_bytes(padded[0])
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(tmp_path / "lib"),
            "--cache-dir", str(frame_cache), "--json"]
    assert runner.invoke(app, args).exit_code == 0
    st = os.stat(folder / "a.mp4")
    (folder / "a.mp4").write_bytes(padded[1])
    os.utime(folder / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r: the old mtime, the same size
    assert (os.stat(folder / "a.mp4").st_size, os.stat(folder / "a.mp4").st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    res = runner.invoke(app, [*args, "--add"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["replaced"], report["added"], report["up_to_date"]) == (["a"], 1, False), report
    assert json.loads(runner.invoke(app, [*args, "--add"]).stdout)["up_to_date"]


def test_changed_files_edge_cases(synth_root, micro_checkpoint, frame_cache, tmp_path, monkeypatch):
    """--add after a killed build resumes it even when an indexed file changed meanwhile (that one waits for the next
    --add); a file from before 1970 indexes; another folder's file under an indexed id is refused (not "changed");
    a file that changes while it is encoded is skipped, never stored with frames and hash of two contents."""
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, src in (("a", videos[0]), ("b", videos[1])):
        shutil.copy(src, folder / f"{name}.mp4")
    os.utime(folder / "b.mp4", ns=(0, -86_400 * 10**9))  # 31 Dec 1969
    lib = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(lib), "--cache-dir",
            str(frame_cache), "--shard-size", "1"]
    assert runner.invoke(app, args).exit_code == 0
    for name, src in (("c", videos[2]), ("d", videos[3])):
        shutil.copy(src, folder / f"{name}.mp4")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAPDEPLOY_CRASH_AT": "index.shard-written@1"}
    killed = subprocess.run([sys.executable, "-m", "rap_deploy.cli", *args, "--add", "--quiet"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert killed.returncode == -9 and (lib / "build-plan.json").is_file(), killed.stderr[-2000:]
    shutil.copy(videos[4], folder / "a.mp4")  # an indexed file changes before the resume
    resumed = runner.invoke(app, [*args, "--add", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert (json.loads(resumed.stdout)["added"], json.loads(resumed.stdout)["replaced"]) == (2, [])
    later = json.loads(runner.invoke(app, [*args, "--add", "--json"]).stdout)
    assert later["replaced"] == ["a"] and later["videos"] == 4
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(videos[5], other / "a.mp4")  # same id, another file: not a change in place
    clash = runner.invoke(app, [*args[:2], str(other), *args[3:], "--add"])
    assert clash.exit_code == 2 and str(other / "a.mp4") in clash.output and "same id" in clash.output
    import rap_deploy.retrieval as retrieval

    decode = retrieval.load_video_batch

    def decode_then_change(src, *rest, **kw):
        out = decode(src, *rest, **kw)
        path = src.videos[rest[0][0]].path
        path.write_bytes(path.read_bytes() + b"\0")  # appended while it was being read
        return out

    shutil.copy(videos[6], folder / "e.mp4")
    monkeypatch.setattr(retrieval, "load_video_batch", decode_then_change)
    raced = json.loads(runner.invoke(app, [*args, "--add", "--json"]).stdout)
    assert [(s["video_id"], s["reason"][:25]) for s in raced["skipped"]] == [("e", "changed while it was read")]


def test_stage1_rebuilds_only_for_tombstones_it_holds_and_hnsw_finds_k_past_them(synth_root, micro_checkpoint,
                                                                                   frame_cache, tmp_path, monkeypatch):
    """After a rebuild the index holds no tombstone, though the manifest still lists removed rows of kept shards: a
    later --add reuses it. HNSW's candidate list has room for the tombstones it skips. A bad --remove id is refused
    before any video is encoded."""
    from rap_deploy.library import stage1

    folder = tmp_path / "clips"
    videos = _clip_folder(synth_root, folder, 8)
    lib = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(lib), "--cache-dir",
            str(frame_cache), "--shard-size", "2", "--ann", "hnsw"]
    assert runner.invoke(app, args).exit_code == 0
    from rap_deploy.library import assemble

    built = []  # one entry per build that made a new index instead of reusing the previous one
    reusable = assemble._reusable_index

    def counting(*args):
        found = reusable(*args)
        if found is None:
            built.append(1)
        return found

    monkeypatch.setattr(assemble, "_reusable_index", counting)
    for i in (0, 2, 4):  # one video of each of three shards changes: 3 of 8 rows removed, over a quarter
        shutil.copy(videos[8 + i // 2], folder / f"v{i}.mp4")
    assert runner.invoke(app, [*args, "--add"]).exit_code == 0 and len(built) == 1  # rebuilt
    shutil.copy(videos[11], folder / "v8.mp4")
    added = runner.invoke(app, [*args, "--add", "--json"])
    assert added.exit_code == 0 and json.loads(added.stdout)["videos"] == 9 and len(built) == 1  # reused
    typo = runner.invoke(app, [*args, "--add", "--remove", "no-such-id"])
    assert typo.exit_code == 2 and "no-such-id" in typo.output and not (lib / "build-plan.json").exists()
    params = stage1.search_params("hnsw", 64, np.arange(100, dtype=np.int64), 50)
    assert params.efSearch == 150  # k + the tombstones it skips, above the tuned 64
    # removed rows the index does not hold (left out by the rebuild) take no place in the candidate list
    assert stage1.search_params("hnsw", 64, np.arange(100, dtype=np.int64), 50, tombstones=0).efSearch == 64
    held, params_of = [], stage1.search_params
    monkeypatch.setattr(stage1, "search_params", lambda *a: (held.append(a[4]), params_of(*a))[1])
    found = runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--engine", str(micro_checkpoint)])
    manifest = json.loads((lib / "manifest.json").read_text())
    assert found.exit_code == 0 and len(manifest["removed"]) == 3 and held == [0]


def test_a_build_killed_after_its_manifest_with_an_all_skipped_shard_is_not_stuck(synth_root, engine, frame_cache,
                                                                                    tmp_path, monkeypatch):
    """A build killed after writing its manifest, before deleting its plan: a plan shard whose videos were all
    skipped is in no manifest, so the plan looked unfinished and every later command (the same one re-run,
    --remove, another --add) was refused as 'an interrupted build' until --force. A plan the manifest's counters
    have moved past is finished."""
    import rap_deploy.library.builder as builder
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.library import BuildOptions, build_library
    from rap_deploy.library.sources import folder_source

    folder = tmp_path / "clips"
    _clip_folder(synth_root, folder, 1)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    out, cache = tmp_path / "lib", FrameCache(frame_cache)

    def killed(root):
        raise KeyboardInterrupt("killed after the manifest was written")

    monkeypatch.setattr(builder.plans, "drop_plan", killed)
    with pytest.raises(KeyboardInterrupt):
        build_library(out, engine, folder_source(folder), cache, BuildOptions(shard_size=1), progress=False)
    monkeypatch.undo()
    assert (out / "manifest.json").is_file() and (out / "build-plan.json").is_file()
    again = build_library(out, engine, folder_source(folder), cache, BuildOptions(shard_size=1), progress=False)
    assert again["videos"] == 1 and not (out / "build-plan.json").exists()
    assert build_library(out, options=BuildOptions(remove=["v0"]), progress=False)["videos"] == 0


def test_a_subfolder_that_cannot_be_listed_is_refused_not_left_out(tmp_path, monkeypatch):
    """os.walk skips a folder it cannot list (no read permission): its videos were silently left out of the library
    ('N added, 0 skipped'). It is now refused, named (exit 2). Root reads any folder, so the denial is simulated."""
    from rap_deploy.library.sources import folder_source

    folder = tmp_path / "clips"
    (folder / "private").mkdir(parents=True)
    (folder / "a.mp4").write_bytes(b"x")
    (folder / "private" / "b.mp4").write_bytes(b"x")
    assert [v.video_id for v in folder_source(folder).videos] == ["a", "private/b"]
    scandir = os.scandir

    def denied(path="."):
        if Path(path).name == "private":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(UsageError, match=r"cannot list the folder .*private \(Permission denied\)"):
        folder_source(folder)


def test_broken_mp4_in_a_folder_is_skipped_and_named(synth_root, micro_checkpoint, frame_cache, tmp_path, engine):
    from rap_deploy.library import open_library

    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    shutil.copy(videos[0], folder / "a.mp4")
    shutil.copy(videos[1], folder / "sub" / "b.mp4")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "lib"
    res = runner.invoke(app, ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(out),
                              "--cache-dir", str(frame_cache), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["videos"] == 2 and {s["video_id"] for s in report["skipped"]} == {"broken", "empty"}
    assert all(s["reason"] for s in report["skipped"])
    with open_library(out, engine) as lib:
        ids = {h["video_id"] for h in lib.search(["a circle"], top_k=5)[0]["results"]}
    assert ids == {"a", "sub/b"}
    text = runner.invoke(app, ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out",
                               str(tmp_path / "lib2"), "--cache-dir", str(frame_cache)])
    assert text.exit_code == 0 and "skipped broken" in text.output and "2 skipped" in text.output
    only_broken = tmp_path / "bad"
    only_broken.mkdir()
    (only_broken / "x.mp4").write_bytes(b"junk")
    none = runner.invoke(app, ["index", "--videos", str(only_broken), "--engine", str(micro_checkpoint), "--out",
                               str(tmp_path / "lib3"), "--cache-dir", str(frame_cache)])
    assert none.exit_code == 1 and "no video could be decoded" in none.output
    # the failed build's (empty) shard-000000 belongs to another plan: a new build into that folder re-encodes it
    retry = runner.invoke(app, ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out",
                                str(tmp_path / "lib3"), "--cache-dir", str(frame_cache), "--json"])
    assert retry.exit_code == 0 and json.loads(retry.stdout)["videos"] == 2


def test_undecodable_videos_are_not_stored_again_by_every_add(synth_root, micro_checkpoint, frame_cache, tmp_path):
    """Every --add retries the folder's undecodable files, and each build's record in the manifest kept their whole
    list: a folder with many broken files grew the manifest by that list at every --add that added a video, until
    it passed the manifest size bound and the library could no longer be opened (exit 1). The latest build's list
    is kept (top-level ``skipped``); earlier builds keep its count."""
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(videos[0], folder / "a.mp4")
    for i in range(3):
        (folder / f"broken{i}.mp4").write_bytes(b"junk")
    out = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(out), "--cache-dir",
            str(frame_cache), "--add"]
    for i in range(1, 4):
        assert runner.invoke(app, args).exit_code == 0
        shutil.copy(videos[i], folder / f"new{i}.mp4")
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)["skipped"]) == 3, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["builds"]) == 4 and [b["skipped"] for b in manifest["builds"]] == [3, 3, 3, 3]
    assert len(manifest["skipped"]) == 3 and (out / "manifest.json").read_text().count("broken0.mp4") == 1


@pytest.mark.parametrize("line", [".", "./", "/"])
def test_a_list_line_naming_no_file_is_refused_with_its_line_number(micro_checkpoint, tmp_path, line):
    """A --list line that names no file ('.', '/': no name to make an id of) ended in pathlib's ValueError
    traceback; it is now exit 2 naming the line."""
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# my clips\n{tmp_path / 'a.mp4'}\n{line}\n")
    res = runner.invoke(app, ["index", "--list", str(listing), "--engine", str(micro_checkpoint), "--out",
                              str(tmp_path / "lib")])
    assert res.exit_code == 2 and "line 3" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output


@pytest.mark.parametrize("name", ["../escaped", "a/b", "/abs-lib", ".hidden", "clips.tmp", "..", " "])
def test_index_name_that_is_not_one_plain_folder_name_is_refused(tmp_path, name):
    """--name promises a library under <workspace>/index/, but '../x' or an absolute path built it anywhere (here:
    beside the workspace), and a hidden or temporary-looking name built one that search never found; exit 2 now,
    before any engine is loaded or folder made."""
    workspace = tmp_path / "ws"
    videos = tmp_path / "clips"
    videos.mkdir()
    res = runner.invoke(app, ["index", "--videos", str(videos), "--name", name, "--workspace", str(workspace),
                              "--engine", str(tmp_path / "no-engine.pt")])
    assert res.exit_code == 2 and "--name" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"] and not Path("/abs-lib").exists()


def test_a_default_library_name_that_search_would_not_find_is_refused(synth_root, micro_checkpoint, tmp_path):
    """index --videos .clips (no --name) built <workspace>/index/.clips, a hidden folder that search never took for a
    library ('no library'); exit 2 now, asking for --name."""
    clips = tmp_path / ".clips"
    _clip_folder(synth_root, clips, 1)
    res = runner.invoke(app, ["index", "--videos", str(clips), "--engine", str(micro_checkpoint), "--workspace",
                              str(tmp_path / "ws"), "--quiet"])
    assert res.exit_code == 2 and "--name" in res.stderr and not (tmp_path / "ws" / "index" / ".clips").exists()


def test_index_out_and_name_together_are_refused(tmp_path):
    """index --out DIR --name NAME built the library in DIR and dropped NAME without a word; exit 2 now, first."""
    res = runner.invoke(app, ["index", "--videos", str(tmp_path), "--out", str(tmp_path / "lib"), "--name", "clips",
                              "--engine", str(tmp_path / "no-engine.pt")])
    assert res.exit_code == 2 and "not both" in res.stderr and not (tmp_path / "lib").exists(), res.output


def test_index_out_that_is_a_file_says_so(tmp_path):
    """index --out FILE said 'cannot access FILE: File exists; check the path and its permissions' after loading
    the engine; it says the path is a file now (exit 2), first, and leaves it alone."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    res = runner.invoke(app, ["index", "--videos", str(tmp_path), "--out", str(a_file), "--engine",
                              str(tmp_path / "no-engine.pt")])
    assert res.exit_code == 2 and f"--out {a_file} is a file" in res.stderr and a_file.read_text() == "x", res.output


def test_search_finds_the_engine_that_built_it_from_another_folder(synth_root, micro_checkpoint, frame_cache,
                                                                  tmp_path, monkeypatch):
    """`index --engine` given as a relative path recorded it as given, so `search` without --engine run from any
    other folder did not find the engine that built the library (it fell back to the workspace's latest: none here,
    exit 2); the manifest now records it absolute."""
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(sorted((synth_root / "videos").glob("*.mp4"))[0], folder / "a.mp4")
    monkeypatch.chdir(micro_checkpoint.parent)
    built = runner.invoke(app, ["index", "--videos", str(folder), "--engine", micro_checkpoint.name, "--out",
                                str(tmp_path / "lib"), "--cache-dir", str(frame_cache)])
    assert built.exit_code == 0, built.output
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["search", "a red circle", "--library", str(tmp_path / "lib"), "--json"])
    assert res.exit_code == 0, res.output
    assert [h["video_id"] for h in json.loads(res.stdout)["results"]] == ["a"]


def test_add_retries_a_video_that_failed_to_decode_once_it_is_fixed(synth_root, micro_checkpoint, frame_cache,
                                                                    tmp_path):
    """An --add whose new videos all failed to decode left their empty shard behind (the library was up to date, so
    no manifest was written and nothing cleaned it); the next --add planned the same shard, took it as committed and
    reported the old failure, so a fixed file was never indexed. It is encoded now."""
    videos = sorted((synth_root / "videos").glob("*.mp4"))
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(videos[0], folder / "a.mp4")
    out = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(out), "--cache-dir",
            str(frame_cache), "--add", "--json"]
    assert runner.invoke(app, args).exit_code == 0
    (folder / "b.mp4").write_bytes(b"junk")  # a copy still in progress
    failed = json.loads(runner.invoke(app, args).stdout)
    assert failed["up_to_date"] and [s["video_id"] for s in failed["skipped"]] == ["b"]
    # its shard was dropped, so none was written ("up to date: ...; 1 shards written" said otherwise: found
    # walking the README's --add)
    assert (failed["shards_written"], failed["shards_resumed"]) == (0, 0), failed
    shutil.copy(videos[1], folder / "b.mp4")  # the copy finished
    fixed = runner.invoke(app, args)
    assert fixed.exit_code == 0, fixed.output
    report = json.loads(fixed.stdout)
    assert (report["added"], report["skipped"], report["videos"]) == (1, [], 2)


def test_a_refused_force_leaves_the_library_as_it_was(library, micro_checkpoint, synth_root, tmp_path):
    """`index --force` without videos, or with --remove, was refused (exit 2, "nothing was changed") only after it
    had deleted the library; both are refused before anything is touched."""
    lib = _copy(library, tmp_path / "lib")
    before = {**_files(lib), "manifest.json": (lib / "manifest.json").read_bytes()}
    for extra in ([], ["--dataset", "msrvtt", "--data-root", str(synth_root), "--engine", str(micro_checkpoint),
                       "--remove", "video30"]):
        res = runner.invoke(app, ["index", "--out", str(lib), "--force", *extra])
        assert res.exit_code == 2 and "--force" in res.stderr, res.output
        assert {**_files(lib), "manifest.json": (lib / "manifest.json").read_bytes()} == before
    # a file of the user's beside the library: --force deleted the library, then refused the folder as foreign
    (lib / "NOTES.txt").write_text("my notes")
    res = runner.invoke(app, ["index", "--out", str(lib), "--force", "--dataset", "msrvtt", "--data-root",
                              str(synth_root), "--engine", str(micro_checkpoint), "--top-m", str(TOP_M),
                              "--shard-size", str(SHARD), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["videos"] == 12, res.output
    assert (lib / "NOTES.txt").read_text() == "my notes"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "NOTES.txt").write_text("my notes")
    res = runner.invoke(app, ["index", "--out", str(foreign), "--force", "--dataset", "msrvtt", "--data-root",
                              str(synth_root), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 2 and "not a library" in res.stderr and sorted(os.listdir(foreign)) == ["NOTES.txt"]


def test_search_during_a_force_rebuild_sees_the_old_library_whole(library, synth_root, micro_checkpoint,
                                                                  frame_cache, tmp_path, engine, monkeypatch):
    """`index --force` deleted the library first, so a search opened while it rebuilt (hours for a large library)
    was refused ('has no manifest.json: not a library', exit 2) and a killed --force left nothing. The old library
    now stays whole and searchable until the new manifest replaces it; its files go after that, and a killed
    --force resumes its own plan."""
    import rap_deploy.library.builder as builder
    from rap_deploy.library import open_library

    lib = _copy(library, tmp_path / "lib")
    old_ids = sorted(json.loads((lib / "shards/shard-000000/videos.json").read_text())["video_id"])
    args = [*_index_args(synth_root, micro_checkpoint, lib, frame_cache), "--force", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAPDEPLOY_CRASH_AT": "index.shard-written@1"}
    killed = subprocess.run([sys.executable, "-m", "rap_deploy.cli", *args, "--quiet"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    seen = []
    encode = builder.encode_shard

    def search_meanwhile(*a, **kw):  # another process searching while the rebuild encodes
        with open_library(lib, engine, verify="quick") as opened:
            hits = opened.search(["a red circle"], top_k=12, top_m=TOP_M)[0]["results"]
            seen.append((len(opened), len(hits)))
        return encode(*a, **kw)

    monkeypatch.setattr(builder, "encode_shard", search_meanwhile)
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (json.loads(res.stdout)["shards_resumed"], json.loads(res.stdout)["videos"]) == (1, 12)
    assert seen == [(12, 12), (12, 12)]  # the two shards left to encode, each time the whole old library
    assert sorted(p.name for p in (lib / "shards").iterdir()) == ["shard-000003", "shard-000004", "shard-000005"]
    assert sorted(json.loads((lib / "shards/shard-000003/videos.json").read_text())["video_id"]) == old_ids
    assert sorted(p.name for p in (lib / "stage1").iterdir()) == ["index-0002.faiss", "queries-0002.npy"]
    with open_library(lib, engine) as opened:
        assert len(opened) == 12


def test_search_reopens_a_library_replaced_between_its_open_and_its_search(library, synth_root, frame_cache,
                                                                          micro_checkpoint, tmp_path, engine,
                                                                          monkeypatch):
    """An `index --force` (or an --add dropping shards) that lands after `rapdeploy search` opened the library and
    before it read the candidates' rows made it exit 1 ('... was there when this process opened the library');
    the command opens the new library and searches again, once."""
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.library import builder
    from rap_deploy.library.search import Library
    from rap_deploy.library.sources import dataset_source

    lib = _copy(library, tmp_path / "lib")
    search = Library.search
    rebuilt = []

    def rebuild_then_search(self, *args, **kwargs):
        if not rebuilt:  # another process replaces the library under this one
            source = dataset_source("msrvtt", synth_root, "test", engine.config.frames)
            rebuilt.append(builder.build_library(lib, engine, source, FrameCache(frame_cache), builder.BuildOptions(
                force=True, shard_size=SHARD, top_m=TOP_M), progress=False))
        return search(self, *args, **kwargs)

    monkeypatch.setattr(Library, "search", rebuild_then_search)
    res, out = _search_json(lib, micro_checkpoint, "a red circle", "--top", "12", "--top-m", str(TOP_M))
    assert res.exit_code == 0, res.output
    assert rebuilt and len(out) == 1 and len(out[0]["results"]) == 12


@pytest.mark.parametrize("oversized", ["manifest.json", "build-plan.json", "no builds"])
def test_force_rebuilds_over_an_oversized_manifest_or_plan(library, synth_root, micro_checkpoint, frame_cache,
                                                           tmp_path, monkeypatch, oversized):
    """--force reads the library it replaces (to keep it searchable meanwhile): a manifest or pending plan over the
    size bound (CheckFailedError, not DamagedArtifactError) must not stop the rebuild that is its fix, nor a
    manifest without its (optional) build log (a KeyError traceback)."""
    import rap_deploy.bounds as bounds

    lib = _copy(library, tmp_path / "lib")
    if oversized == "no builds":
        manifest = json.loads((lib / "manifest.json").read_text())
        del manifest["builds"]
        (lib / "manifest.json").write_text(json.dumps(manifest))
    else:
        if oversized == "build-plan.json":
            (lib / oversized).write_text("{}")
        with open(lib / oversized, "a") as fh:
            fh.write(" " * 300_000)
        monkeypatch.setattr(bounds, "MAX_MANIFEST_BYTES", 200_000)
    res = runner.invoke(app, [*_index_args(synth_root, micro_checkpoint, lib, frame_cache), "--force", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["videos"] == 12, res.output
    assert not (lib / "build-plan.json").exists() and (lib / "manifest.json").stat().st_size < 200_000


def test_index_refuses_a_foreign_folder_and_a_live_writer(synth_root, micro_checkpoint, frame_cache, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    res = runner.invoke(app, _index_args(synth_root, micro_checkpoint, foreign, frame_cache))
    assert res.exit_code == 2 and "not a library" in res.output
    busy = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom rap_deploy.locks import folder_lock\n"
                               f"with folder_lock({str(busy)!r}, 'index', 'library folder'):\n"
                               "    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = runner.invoke(app, _index_args(synth_root, micro_checkpoint, busy, frame_cache))
        assert res.exit_code == 2 and f"process {holder.pid}" in res.output
    finally:
        holder.kill()
        holder.wait()
    res = runner.invoke(app, _index_args(synth_root, micro_checkpoint, busy, frame_cache))  # a dead writer's lock
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("folder", ["shards", "stage1"])
def test_index_refuses_a_shards_or_stage1_folder_that_links_out(library, synth_root, micro_checkpoint, frame_cache,
                                                                tmp_path, folder):
    """A library folder whose shards/ (stage1/) was a symlink to another library's: the build deleted that
    library's shard folders and wrote its own shards there (it failed afterwards, "shards ... were not written",
    and the other library no longer opened). It is refused before anything is written or deleted."""
    other = _copy(library, tmp_path / "other")
    before = _files(other)
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / folder).symlink_to(other / folder)
    res = runner.invoke(app, _index_args(synth_root, micro_checkpoint, lib, frame_cache))
    assert res.exit_code == 1 and f"{lib / folder} is a symlink" in res.output, res.output
    assert _files(other) == before
    assert sorted(p.name for p in lib.iterdir()) == [folder]


def test_index_refuses_a_library_whose_next_shard_folder_is_a_symlink(synth_root, micro_checkpoint, frame_cache,
                                                                     tmp_path):
    """shards/shard-NNNNNN a symlink (to the user's folder) where the next build writes: --add stopped with 'Cannot
    call rmtree on a symbolic link; check the paths and their permissions', naming no file. It is named, exit 1,
    and the folder it points at is left alone."""
    folder = tmp_path / "clips"
    videos = _clip_folder(synth_root, folder, 1)
    lib = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(lib), "--cache-dir",
            str(frame_cache)]
    assert runner.invoke(app, args).exit_code == 0
    shutil.copy(videos[1], folder / "v1.mp4")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    link = lib / "shards" / f"shard-{json.loads((lib / 'manifest.json').read_text())['next_shard']:06d}"
    link.symlink_to(mine)
    res = runner.invoke(app, [*args, "--add"])
    assert res.exit_code == 1 and f"{link} is a symlink" in res.stderr, res.output
    assert (mine / "notes.txt").read_text() == "keep" and link.is_symlink()


# ---------------------------------------------------------------------------------------------- ANN stage 1
@pytest.mark.parametrize("ann", ["hnsw", "ivf"])
def test_ann_stage1_records_its_measured_recall(library, micro_checkpoint, tmp_path, engine, ann):
    from rap_deploy.library import open_library

    out = _copy(library, tmp_path / ann)
    res = runner.invoke(app, ["index", "--out", str(out), "--ann", ann, "--json"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    st = manifest["stage1"]
    assert st["type"] == ann and st["recall_at_m"]["recall"] >= 0.95 and st["recall_at_m"]["m"] == TOP_M
    assert st["recall_at_m"]["query_source"] == "captions" and st["effort"] is not None
    with open_library(out, engine) as lib:
        assert lib.describe()["stage1"]["type"] == ann
        assert len(lib.search(["a red circle"], top_k=5, top_m=TOP_M)[0]["results"]) == 5


def test_an_ann_stage1_below_its_target_recall_is_reported(library, tmp_path, monkeypatch):
    """stage1.tune keeps its best effort when no rung of its ladder reaches --target-recall ("the caller reports
    it"), and nothing did: the summary printed the recall with no word that it missed the target. The report says
    so (target_recall, target_reached) and the CLI warns on stderr; the library is written (exit 0)."""
    from rap_deploy.library import stage1

    tune = stage1.tune

    def short_of_the_target(*args, **kwargs):  # an ANN index whose ladder tops out below the target
        found = tune(*args, **kwargs)
        found.recall = 0.5
        return found

    monkeypatch.setattr(stage1, "tune", short_of_the_target)
    out = _copy(library, tmp_path / "lib")
    res = runner.invoke(app, ["index", "--out", str(out), "--ann", "hnsw", "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)["stage1"]
    assert (st["recall_at_m"], st["target_recall"], st["target_reached"]) == (0.5, 0.95, False)
    res = runner.invoke(app, ["index", "--out", str(out)])  # up to date: the library's stage 1, reported again
    assert res.exit_code == 0 and "up to date" in res.stdout, res.output
    assert "warning: stage 1's recall@4 (0.500) is below --target-recall 0.95" in res.stderr, res.stderr
    monkeypatch.setattr(stage1, "tune", tune)
    res = runner.invoke(app, ["index", "--out", str(out), "--ann", "exact", "--json"])
    assert json.loads(res.stdout)["stage1"]["target_reached"] is True and "warning" not in res.stderr


def test_index_with_a_new_top_m_or_target_recall_retunes_stage1(library, tmp_path):
    """`index --out LIB --top-m 6` (or --target-recall on an ANN library) with no video to add said 'up to date'
    and kept the old M and tuning: the option was dropped without a word. It now rebuilds stage 1 with them."""
    lib = _copy(library, tmp_path / "lib")
    res = runner.invoke(app, ["index", "--out", str(lib), "--top-m", "6", "--json"])
    st = json.loads((lib / "manifest.json").read_text())["stage1"]
    assert res.exit_code == 0 and json.loads(res.stdout)["up_to_date"] is False, res.output
    assert st["top_m"] == 6 and st["recall_at_m"]["m"] == 6
    same = runner.invoke(app, ["index", "--out", str(lib), "--top-m", "6", "--target-recall", "0.5", "--json"])
    assert json.loads(same.stdout)["up_to_date"] is True  # exact: no effort to tune
    res = runner.invoke(app, ["index", "--out", str(lib), "--ann", "hnsw", "--json"])
    assert json.loads(res.stdout)["up_to_date"] is False
    res = runner.invoke(app, ["index", "--out", str(lib), "--target-recall", "0.99", "--json"])
    st = json.loads((lib / "manifest.json").read_text())["stage1"]
    assert json.loads(res.stdout)["up_to_date"] is False and st["target_recall"] == 0.99 and st["top_m"] == 6


def test_index_names_the_stage1_type_it_rebuilds_without_ann(library, tmp_path):
    """`index --top-m M` on an HNSW library logged "building the stage-1 index" with no type, where `--ann hnsw`
    logged "(hnsw)": the type was named only when --ann gave it. The log names the type built, the library's."""
    lib = _copy(library, tmp_path / "lib")
    res = runner.invoke(app, ["index", "--out", str(lib), "--top-m", "6"])
    assert res.exit_code == 0 and "building the stage-1 index (exact)\n" in res.stderr, res.output
    res = runner.invoke(app, ["index", "--out", str(lib), "--ann", "hnsw"])
    assert res.exit_code == 0 and "building the stage-1 index (hnsw)\n" in res.stderr, res.output
    res = runner.invoke(app, ["index", "--out", str(lib), "--top-m", "5"])
    assert res.exit_code == 0 and "building the stage-1 index (hnsw)\n" in res.stderr, res.output
    assert json.loads((lib / "manifest.json").read_text())["stage1"]["type"] == "hnsw"

def test_index_refusals_count_the_names_they_leave_out(library, synth_root, micro_checkpoint, frame_cache, tmp_path):
    """`--remove` of unknown ids named 10 of them with no count when videos were given (and '(+N more)' without),
    and a foreign --out folder named 5 of its files then '...'; all now end 'and N more' (name_lists.some_names)."""
    lib = _copy(library, tmp_path / "lib")
    before = _files(lib)
    gone = [f"nope{i:02d}" for i in range(12)]
    remove = [a for v in gone for a in ("--remove", v)]
    for args in (["index", "--out", str(lib), *remove], _index_args(synth_root, micro_checkpoint, lib, frame_cache,
                                                                    *remove)):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert f"--remove: {', '.join(gone[:10])} and 2 more not in the library" in " ".join(res.output.split())
    assert _files(lib) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for i in range(7):
        (foreign / f"f{i}.txt").write_text("mine")
    res = runner.invoke(app, _index_args(synth_root, micro_checkpoint, foreign, frame_cache))
    assert res.exit_code == 2 and "(it holds f0.txt, f1.txt, f2.txt, f3.txt, f4.txt and 2 more)" in \
        " ".join(res.output.split()), res.output

@pytest.mark.parametrize("ann", ["exact", "hnsw", "ivf"])
def test_removing_every_video_leaves_an_empty_library_that_searches_and_grows(synth_root, micro_checkpoint,
                                                                              frame_cache, tmp_path, engine, ann):
    """--remove of the last videos leaves a library of 0 videos of the same stage-1 type (an IVF library refused it,
    exit 2 "use --ann exact": nothing to train its lists on); it opens, answers no result, and --add fills it."""
    from rap_deploy.library import open_library

    folder = tmp_path / "clips"
    _clip_folder(synth_root, folder, 3)
    lib = tmp_path / "lib"
    args = ["index", "--videos", str(folder), "--engine", str(micro_checkpoint), "--out", str(lib), "--cache-dir",
            str(frame_cache), "--shard-size", "2"]
    assert runner.invoke(app, [*args, "--ann", ann]).exit_code == 0
    emptied = runner.invoke(app, ["index", "--out", str(lib), "--json", *(x for i in range(3)
                                                                            for x in ("--remove", f"v{i}"))])
    assert emptied.exit_code == 0, emptied.output
    assert json.loads(emptied.stdout)["videos"] == 0
    assert json.loads((lib / "manifest.json").read_text())["stage1"]["type"] == ann
    with open_library(lib, engine) as opened:
        assert len(opened) == 0 and opened.search(["a red circle"], top_k=5)[0]["results"] == []
    res, out = _search_json(lib, micro_checkpoint, "a red circle")
    assert res.exit_code == 0 and out[0]["results"] == [], res.output
    refilled = runner.invoke(app, [*args, "--add", "--json"])
    assert refilled.exit_code == 0 and json.loads(refilled.stdout)["videos"] == 3, refilled.output
    with open_library(lib, engine) as opened:
        hits = opened.search(["a red circle"], top_k=5, top_m=5)[0]["results"]
        assert sorted(h["video_id"] for h in hits) == ["v0", "v1", "v2"]
        assert opened.describe()["stage1"]["type"] == ann


def test_stage1_tuning_on_clustered_vectors_reaches_the_target():
    from rap_deploy.library import stage1
    from rap_deploy.library.scale_bench import clustered_vectors

    base = clustered_vectors(3000, 32, seed=0, clusters=30)
    queries = clustered_vectors(50, 32, seed=1, queries=True, clusters=30)
    ids = np.arange(3000, dtype=np.int64) * 3 + 7
    truth = stage1.exact_top(base, ids, queries, 20)
    for kind in ("hnsw", "ivf"):
        index = stage1.new_index(kind, 32, base)
        stage1.add(index, base, ids)
        tuning = stage1.tune(index, kind, queries, truth, 20, 0.95)
        assert tuning.recall >= 0.95 and tuning.tried[-1]["effort"] == tuning.effort
        found = stage1.search(index, kind, queries, 20, tuning.effort)[1]
        assert stage1.recall_at(found, truth) == pytest.approx(tuning.recall)
        dropped = truth[:, :3].reshape(-1)
        filtered = stage1.search(index, kind, queries, 20, tuning.effort, exclude=dropped)[1]
        assert not set(filtered.reshape(-1).tolist()) & set(dropped.tolist())


def test_an_ivf_search_deeper_than_its_tuned_m_still_finds_k():
    """An IVF index tuned for recall@100 probes few lists; `search --top 300` (or --top-m beyond the tuned M) over
    it returned only the videos those lists held (205 of 300 here) though the library holds 4000. A short query now
    probes more lists until it has k, removed rows still left out; tuning still measures its rungs as they are."""
    from rap_deploy.library import stage1
    from rap_deploy.library.scale_bench import clustered_vectors

    base = clustered_vectors(4000, 32, seed=0, clusters=20)
    ids = np.arange(4000, dtype=np.int64)
    index = stage1.new_index("ivf", 32, base)
    stage1.add(index, base, ids)
    queries = base[:20]
    assert (stage1.search_once(index, "ivf", queries, 300, 2)[1] < 0).any()  # two lists hold fewer than 300
    removed = stage1.exact_top(base, ids, queries, 5).reshape(-1)
    for k in (300, 4000 - len(set(removed.tolist()))):
        found = stage1.search(index, "ivf", queries, k, 2, exclude=removed)[1]
        assert (found >= 0).all() and not set(found.reshape(-1).tolist()) & set(removed.tolist())
        assert all(len(set(row.tolist())) == k for row in found)


def test_an_hnsw_search_over_many_identical_videos_still_finds_k():
    """30 % of a library identical (blank clips): HNSW's graph walk could not reach the rest, and a search for 300
    of 3,000 returned 171. A walk that falls short is answered by exact search over the stored vectors, removed
    rows still left out."""
    from rap_deploy.library import stage1
    from rap_deploy.library.scale_bench import clustered_vectors

    base = clustered_vectors(3000, 32, seed=0, clusters=30)
    base[:900] = base[0]
    ids = np.arange(3000, dtype=np.int64) * 2 + 1
    index = stage1.new_index("hnsw", 32)
    stage1.add(index, base, ids)
    queries = clustered_vectors(20, 32, seed=1, queries=True, clusters=30)
    assert (stage1.search_once(index, "hnsw", queries, 300, 64)[1] < 0).any()
    removed = ids[1::7]
    found = stage1.search(index, "hnsw", queries, 300, 64, exclude=removed)[1]
    assert (found >= 0).all() and not set(found.reshape(-1).tolist()) & set(removed.tolist())
    assert all(len(set(row.tolist())) == 300 for row in found)


# ---------------------------------------------------------------------------------------------- torchrun
def test_torchrun_two_ranks_equal_one_process(library, synth_root, micro_checkpoint, frame_cache, tmp_path):
    out = tmp_path / "two"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--standalone", "-m",
           "rap_deploy.cli", *_index_args(synth_root, micro_checkpoint, out, frame_cache), "--json", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["world_size"] == 2 and report["videos"] == 12
    assert report["shards_written"] == len(json.loads((library / "manifest.json").read_text())["shards"])
    assert report["shards_resumed"] == 0  # both ranks' shards, not rank 0's half
    assert _files(out) == _files(library)


def test_demo_library_step_indexes_the_test_split_and_searches_one_caption(synth_root, micro_checkpoint,
                                                                           frame_cache, tmp_path):
    from rap_deploy.cli.pipeline import DemoSizes, _library_demo

    got = _library_demo(tmp_path / "index" / "msrvtt-test", micro_checkpoint, synth_root, frame_cache,
                        DemoSizes.tiny(), progress=False)
    assert got["videos"] == 12 and len(got["top5"]) == 5 and got["query"]
    assert [h["rank"] for h in got["top5"]] == [1, 2, 3, 4, 5]
    assert (tmp_path / "index" / "msrvtt-test" / "manifest.json").is_file()


def test_remove_is_refused_while_a_build_is_pending(library, tmp_path):
    from rap_deploy.config import FrameSamplingConfig
    from rap_deploy.data.datasets import VideoEntry
    from rap_deploy.library.plan import make_plan

    lib = _copy(library, tmp_path / "lib")
    manifest = json.loads((lib / "manifest.json").read_text())
    plan = make_plan([VideoEntry("new", tmp_path / "new.mp4")], FrameSamplingConfig(max_frames=4), manifest["model"],
                     SHARD, manifest["next_shard"], manifest["next_row"])
    (lib / "build-plan.json").write_text(json.dumps(plan))
    vid = json.loads((lib / "shards/shard-000000/videos.json").read_text())["video_id"][0]
    res = runner.invoke(app, ["index", "--out", str(lib), "--remove", vid])
    assert res.exit_code == 2 and "interrupted build" in res.output


def test_a_killed_writes_temporaries_are_removed_and_another_files_kept(library, tmp_path):
    """The next build deletes the hidden temporaries a SIGKILL-ed write of manifest.json or build-plan.json left,
    under the library's lock (atomic.remove_temporaries); the old ``.manifest.json.*.tmp`` glob also deleted another
    file's (``.manifest.json.bak.*.bak.tmp``, a temporary of the user's manifest.json.bak)."""
    lib = _copy(library, tmp_path / "lib")
    ours = [lib / ".manifest.json.k2x9_a1.json.tmp", lib / ".build-plan.json.0q3z.json.tmp"]
    others = [lib / ".manifest.json.bak.k3b_c3hn.bak.tmp", lib / ".notes.tmp"]
    for path in ours + others:
        path.write_text("partial")
    vid = json.loads((lib / "shards/shard-000000/videos.json").read_text())["video_id"][0]
    res = runner.invoke(app, ["index", "--out", str(lib), "--remove", vid])
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in ours) and all(p.read_text() == "partial" for p in others)


def test_rap_light_library_stores_video_emb_only_and_ranks_by_stage1(synth_root, frame_cache, tmp_path):
    from conftest import micro_config, randomize_adapters

    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library import open_library
    from rap_deploy.model.clip_loader import BackboneSpec
    from rap_deploy.retrieval import encode_texts

    c, model = new_checkpoint(micro_config(variant="rap_light"), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=2)
    save_checkpoint(checkpoint_from_model(model, c), tmp_path / "light.pt")
    out = tmp_path / "light"
    res = runner.invoke(app, _index_args(synth_root, tmp_path / "light.pt", out, frame_cache, "--json"))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "shards/shard-000000").iterdir()) == ["shard.json", "video_emb.npy",
                                                                                "videos.json"]
    engine = load_engine(tmp_path / "light.pt")
    with open_library(out, engine) as lib:
        hits = lib.search(["a red circle"], top_k=12)[0]["results"]
        video_emb = np.concatenate([np.load(p) for p in sorted((out / "shards").glob("*/video_emb.npy"))])
    stage1 = (encode_texts(engine, ["a red circle"]) @ video_emb.T)[0]
    assert [h["stage1_rank"] for h in hits] == list(range(1, 13)) and not any(h["reranked"] for h in hits)
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(stage1)[::-1], atol=1e-6)
    # the table marked every row as a stage-1 score "beyond --top-m", which is not why: nothing can re-rank here
    res = runner.invoke(app, ["search", "a red circle", "--library", str(out), "--engine", str(tmp_path / "light.pt")])
    assert res.exit_code == 0 and "beyond --top-m" not in res.stdout and "no ASA head" in res.stdout, res.output


def test_scale_bench_runs_at_small_scale(engine, tmp_path):
    from rap_deploy.library import open_library
    from rap_deploy.library.scale_bench import bench_library, main, memory, write_synthetic_library

    out = main(["stage1", "--size", "2000", "--dim", "32", "--queries", "20", "--tune-queries", "20", "--k", "10",
                "--out", str(tmp_path / "s1.json")])
    assert [e["type"] for e in out["indexes"]] == ["exact", "hnsw", "ivf"]
    assert out["indexes"][0]["recall_at_k"] == 1.0 and all(e["p50_ms"] > 0 for e in out["indexes"])
    assert json.loads((tmp_path / "s1.json").read_text())["size"] == 2000

    manifest = write_synthetic_library(tmp_path / "lib", engine, 30, shard_size=8, log=lambda m: None)
    assert manifest["videos"] == 30 and len(manifest["shards"]) == 4
    with open_library(tmp_path / "lib", engine) as lib:  # full verification of what it wrote
        assert len(lib) == 30
    result = bench_library(tmp_path / "lib", engine, queries=3, top_k=5, top_m=10, verify="quick",
                           baseline=memory(), log=lambda m: None)
    assert result["videos"] == 30 and result["timings"]["rerank"]["p50_ms"] > 0
    assert result["bytes_per_video"] > 0 and "after_queries" in result["memory_mib"]


def test_scale_bench_library_never_deletes_a_folder_it_did_not_write(micro_checkpoint, tmp_path, capsys):
    """`scale_bench library --folder DIR` deletes the library it wrote afterwards; a DIR that already held other
    files (no manifest.json) was filled and then deleted whole, the user's files with it. It is now refused
    (exit 2) untouched; an empty DIR is kept, emptied again."""
    from rap_deploy.library.scale_bench import main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    args = ["library", "--size", "6", "--shard-size", "4", "--engine", str(micro_checkpoint), "--queries", "1",
            "--top", "2", "--top-m", "4"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--folder", str(folder)])
    assert exc.value.code == 2 and "precious.txt" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["precious.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args, "--folder", str(empty)])["videos"] == 6
    assert empty.is_dir() and not any(empty.iterdir())


def test_scale_bench_out_that_cannot_be_written_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    """--out under a file, or a folder: exit 2 naming --out before the benchmark runs (it ran for up to an hour and
    then ended in a traceback with its result lost: the JSON was printed only after the write)."""
    from rap_deploy.library import scale_bench

    ran = []
    monkeypatch.setattr(scale_bench, "bench_stage1", lambda *a, **k: ran.append(1) or {"size": 1})
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker / "s1.json", tmp_path):
        with pytest.raises(SystemExit) as exc:
            scale_bench.main(["stage1", "--size", "100", "--out", str(out)])
        assert exc.value.code == 2 and "--out" in capsys.readouterr().err
    assert not ran
    assert scale_bench.main(["stage1", "--size", "100", "--out", str(tmp_path / "new" / "s1.json")]) == {"size": 1}
    assert json.loads((tmp_path / "new" / "s1.json").read_text()) == {"size": 1}


def test_search_over_an_onnxruntime_engine_never_imports_torch(library, micro_ort_engines):
    """A search process over ONNX Runtime sessions loads neither torch nor open_clip (≈ 700 MiB resident): the
    tokenizer, the library and the lazy engine are numpy and ONNX Runtime only (the 10k-library memory target)."""
    _search_loads_no_torch(library, micro_ort_engines["fp32"])


def _search_loads_no_torch(library: Path, engine: Path, *extra: str) -> None:
    """Run ``rapdeploy search`` over ``engine`` in a fresh interpreter: it answers and imports neither torch nor
    open_clip."""
    argv = ["rapdeploy", "search", "a red circle", "--library", str(library), "--engine", str(engine), "--top", "3",
            "--json", *extra]
    code = (f"import sys\nfrom rap_deploy.cli import main\nsys.argv = {argv!r}\n"
            "try:\n    main()\nfinally:\n"
            "    print('loaded:', sorted(m for m in ('torch', 'open_clip') if m in sys.modules), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout.splitlines()[-1])["results"]) == 3
    assert "loaded: []" in done.stderr


def test_threads_option_is_checked_and_search_keeps_torch_out(library, micro_ort_engines, micro_checkpoint):
    """--threads 0 or -1 is bad usage (exit 2, one line; it was torch's RuntimeError traceback, exit 1), for search
    and index; `search --threads N` over ONNX Runtime sessions does not import torch to set its thread count."""
    for args in (["search", "x", "--library", str(library), "--engine", str(micro_checkpoint)],
                 ["index", "--out", str(library), "--remove", "video30"]):
        for bad in ("0", "-1"):
            res = runner.invoke(app, [*args, "--threads", bad])
            assert res.exit_code == 2 and "--threads" in res.stderr, res.output
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    _search_loads_no_torch(library, micro_ort_engines["fp32"], "--threads", "1")


def test_a_tiny_ivf_index_trains_without_faiss_warnings(capfd):
    """Below 39 vectors the IVF quantiser has one list; FAISS's clustering warning used to reach stderr."""
    pytest.importorskip("faiss")
    from rap_deploy.library.stage1 import new_index

    vectors = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    index = new_index("ivf", 8, vectors)
    assert index.is_trained and index.nlist == 1
    assert "WARNING" not in capfd.readouterr().err


def test_an_ivf_index_outgrown_by_its_library_is_rebuilt(tmp_path):
    """An IVF index keeps the list count it was trained with; once the library needs twice the lists, an --add
    trains a new one instead of reusing it (its lists would hold four times the vectors they were sized for)."""
    pytest.importorskip("faiss")
    from rap_deploy.atomic import sha256_file
    from rap_deploy.library import assemble, stage1

    vectors = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    index = stage1.new_index("ivf", 8, vectors)
    stage1.add(index, vectors, np.arange(2000, dtype=np.int64))
    stage1.save(index, tmp_path / "stage1.faiss")
    old = {"stage1": {"type": "ivf", "file": "stage1.faiss", "sha256": sha256_file(tmp_path / "stage1.faiss")},
           "videos": 2000, "removed": [], "next_row": 2000}
    assert index.nlist == stage1.ivf_lists(2000) == 51
    assert assemble._reusable_index(tmp_path, old, "ivf", set(), 2500) is not None  # room to grow
    assert stage1.ivf_lists(8000) >= 102 and assemble._reusable_index(tmp_path, old, "ivf", set(), 8000) is None


def test_recall_queries_sampled_from_videos_follow_the_library(tmp_path):
    """A folder library measures stage-1 recall on a sample of its own videos: drawn again from the live videos at
    each build (the first build's sample was kept forever, videos removed since included); stored caption
    embeddings are kept."""
    from rap_deploy.atomic import sha256_file
    from rap_deploy.library.assemble import Stage1Request, _recall_queries

    first = np.zeros((4, 8), np.float32)
    np.save(tmp_path / "queries.npy", first)
    now = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    for source, expected in (("videos", now), ("captions", first)):
        stored = {"file": "queries.npy", "sha256": sha256_file(tmp_path / "queries.npy"), "source": source}
        queries, got = _recall_queries(tmp_path, {"stage1": {"queries": stored}}, Stage1Request(), now)
        assert got == source and sorted(map(tuple, queries.tolist())) == sorted(map(tuple, expected.tolist()))


def test_a_video_the_engine_encodes_to_nan_is_skipped_not_stored(synth_root, engine, frame_cache, tmp_path):
    """An engine output with NaN or inf for one video (an fp16 overflow): the shard stored it, and the video was
    silently never found again (FAISS ranks a NaN score nowhere). It is now skipped and named, like an undecodable
    video, and the rest of its batch is stored."""
    from rap_deploy.config import FrameSamplingConfig
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.library.encode import encode_shard

    class Overflowing:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode_video(self, frames, mask):
            out = [np.array(x, copy=True) for x in self.inner.encode_video(frames, mask)]
            out[-1][1] = np.inf  # the second video's last output
            return out

    videos = sorted((synth_root / "videos").glob("*.mp4"))[:3]
    shard = {"name": "shard-000000", "row_offset": 0,
             "videos": [[f"v{i}", str(p), None, None] for i, p in enumerate(videos)]}
    sampling = FrameSamplingConfig(max_frames=engine.config.frames)
    entry = encode_shard(tmp_path, shard, Overflowing(engine), FrameCache(frame_cache), sampling, batch_size=8)
    assert entry["rows"] == 2 and [s["video_id"] for s in entry["skipped"]] == ["v1"]
    assert "non-finite" in entry["skipped"][0]["reason"]
    stored = json.loads((tmp_path / "shards/shard-000000/videos.json").read_text())
    assert stored["video_id"] == ["v0", "v2"] and len(stored["sha256"]) == len(stored["bytes"]) == 2
    for name in entry["files"]:
        if name != "videos":
            arr = np.load(tmp_path / entry["files"][name]["file"])
            assert len(arr) == 2 and np.isfinite(arr.astype(np.float32)).all()


def test_a_rerank_deeper_than_memory_is_refused_before_gathering(library, engine, monkeypatch):
    """search --top-m is bounded by the library only: the candidates' rows are gathered at once for the engine, so
    --top-m 20000 over a ViT-B/32 library allocated 29 GiB (a MemoryError traceback, or the OOM killer). The rows'
    size is checked against the memory available first (memory faked small here)."""
    import psutil

    from rap_deploy.library import open_library

    with open_library(library, engine, verify="quick") as lib:
        from rap_deploy.graphs import INDEX_DTYPES

        row = sum(int(np.prod(lib.manifest["tensor_shapes"][n])) * np.dtype(INDEX_DTYPES[n]).itemsize
                  for n in rerank_tensors(True))

        class Memory:
            available = int(8 * row / 0.8) + 1  # 80 % of it holds 8 candidates' rows, not 12

        monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
        assert len(lib.search(["a red circle"], top_k=12, top_m=8)[0]["results"]) == 12
        assert len(lib.search(["a red circle"], top_k=12, top_m=0)[0]["results"]) == 12  # stage 1 alone
        with pytest.raises(UsageError, match=r"re-ranking 12 candidates .*--top-m"):
            lib.search(["a red circle"], top_k=3, top_m=100)


def test_a_shard_too_large_for_memory_is_refused_after_its_first_batch(monkeypatch):
    """A shard's tensors are held whole until it is written (--shard-size up to millions): its size, measured on
    the first batch, is checked against the memory available before the rest is encoded."""
    import psutil

    from rap_deploy.errors import UsageError
    from rap_deploy.library.encode import _check_shard_memory

    parts = {"video_emb": [np.zeros((4, 256), np.float32)], "asa_tokens": [np.zeros((4, 1024), np.float32)]}

    class Memory:
        available = 1_600_000  # 80 % of it holds two copies of 125 videos of 5 KiB, not of 200

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    assert _check_shard_memory(parts, 120, "shard-00000") is True
    dropped = {name: [a[:0]] for name, a in parts.items()}  # a first batch every video of which was non-finite
    assert _check_shard_memory(dropped, 200, "shard-00001") is False  # not measured: the next batch is
    with pytest.raises(UsageError, match=r"shard-00001 \(200 videos.*--shard-size"):
        _check_shard_memory(parts, 200, "shard-00001")


def test_the_rerank_hands_the_engine_one_block_of_rows_at_a_time_with_the_same_scores(library, engine, monkeypatch):
    """The re-rank gathered the rows of all top-M candidates at once (131.9 MiB a query at top-M 100 on the demo's
    library), though the engine scores at most its video_block of them per graph call. The library now reads one
    video_block of rows at a time into one set of buffers and hands the engine exactly those blocks: every call sees
    the rows it saw before, so the scores are bit-identical to one engine call on all the candidates' rows."""
    from rap_deploy.library import open_library
    from rap_deploy.library.manifest import tensor_dtype
    from rap_deploy.retrieval import encode_texts

    monkeypatch.setattr(engine, "video_block", 5)
    score, calls = engine.asa_similarity, []

    def recorded(text_emb, *rerank):
        calls.append((len(rerank[0]), tuple(a.__array_interface__["data"][0] for a in rerank)))
        return score(text_emb, *rerank)

    with open_library(library, engine, verify="quick") as lib:
        emb = encode_texts(engine, ["a red circle moves to the left"])
        monkeypatch.setattr(engine, "asa_similarity", recorded)
        got = lib.search_embeddings(emb, top_k=12, top_m=12)[0]["results"]
        monkeypatch.setattr(engine, "asa_similarity", score)
        rows = np.sort([lib._id_to_row[r["video_id"]] for r in got])  # the previous path: all rows, one call
        shapes = lib.manifest["tensor_shapes"]
        whole = [np.empty((len(rows), *shapes[n]), tensor_dtype(n)) for n in rerank_tensors(True)]
        ids = []
        for i, row in enumerate(rows):
            shard, local = lib._locate(int(row))
            ids.append(shard.videos["video_id"][local])
            for n, out in zip(rerank_tensors(True), whole, strict=True):
                shard.tensors[n].read_rows(np.array([local]), out[i:i + 1])
        want = dict(zip(ids, score(emb, *whole)[0].astype(np.float64).tolist(), strict=True))
    assert len(got) == 12 and all(r["reranked"] for r in got)
    assert [n for n, _ in calls] == [5, 5, 2] and len({addresses for _, addresses in calls}) == 1, calls
    assert {r["video_id"]: r["score"] for r in got} == want

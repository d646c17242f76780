"""``rapdeploy bench`` on the micro model: valid bench.json with the contract keys and a PNG, FLOP counting and
latency statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.engines.bench import count_flops, latency_stats, random_index, time_interleaved
from rap_deploy.engines.bench_timing import calls_for_percentile, percentile_notes

runner = CliRunner()
RESULT_KEYS = {"backend", "precision", "graph", "batch_size", "throughput", "unit", "p50_ms", "p90_ms", "p99_ms"}


def test_bench_engine_and_torch_through_cli(micro_ort_engines, tmp_path):
    out = tmp_path / "bench"
    res = runner.invoke(app, ["bench", "--engine", str(micro_ort_engines["fp32"]), "--batch-sizes", "1,2",
                              "--repeats", "1", "--warmup", "0", "--index-size", "16", "--rerank-top", "4",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)  # a load warning, if any, goes to stderr
    report = json.loads((out / "bench.json").read_text())
    assert printed["results"] == report["results"]
    assert {"device", "results", "gflops", "threads", "versions", "model", "inputs", "adapter_cost", "clean",
            "load"} <= set(report)
    assert isinstance(report["clean"], bool) and report["load"]["clean"] == report["clean"]
    assert report["load"]["usable_cores"] >= 1 and report["load"]["blocks"]
    assert report["device"]["cpu"] and report["device"]["cores"] >= 1
    rows = report["results"]
    assert len(rows) == 2 * 4 * 2  # backends x graphs x batch sizes
    for row in rows:
        assert RESULT_KEYS <= set(row)
        assert row["throughput"] > 0 and row["p50_ms"] <= row["p99_ms"]
        assert row["ratio_vs_torch"] > 0 and row["gflops_per_s"] > 0
    assert {r["backend"] for r in rows} == {"torch", "onnxruntime"}
    assert {(r["graph"], r["unit"]) for r in rows} == {("video", "videos/s"), ("text", "texts/s"), ("asa", "pairs/s"),
                                                        ("search", "queries/s")}
    assert all(r["ratio_vs_torch"] == 1.0 for r in rows if r["backend"] == "torch")
    torch_rows = {(r["graph"], r["batch_size"]): r for r in rows if r["backend"] == "torch"}
    for r in rows:  # the engine's throughput over PyTorch's at the same graph and batch (higher = faster)
        base = torch_rows[(r["graph"], r["batch_size"])]
        assert r["ratio_vs_torch"] == pytest.approx(r["throughput"] / base["throughput"])
        assert r["ratio_vs_torch_best"] == pytest.approx(base["min_ms"] / r["min_ms"])
    video = next(r for r in rows if r["graph"] == "video" and r["backend"] == "onnxruntime" and r["batch_size"] == 2)
    assert video["frames_per_s"] == pytest.approx(video["throughput"] * 4)
    assert report["gflops"]["video_encoder_per_video"] > report["gflops"]["video_encoder_per_frame"] > 0
    assert report["adapter_cost"]["ratio"] > 0 and report["adapter_cost"]["batch_size"] == 1
    assert "random frames" in report["inputs"]
    # the text graph runs each query's own tokens (start … EOT), fewer than the context of 32
    assert len(report["query_tokens"]) == 2 and all(2 < n < 32 for n in report["query_tokens"])
    # issue 11: GFLOP per ASA pair from the counter, the search / video-encoder p50 ratio and the index size
    assert 0 < report["gflops"]["asa_head_per_pair"] and 0 < report["gflops"]["search_rerank_per_pair"]
    assert set(report["search_vs_video_p50"]) == {r["engine"] for r in rows}
    for engine, ratio in report["search_vs_video_p50"].items():
        p50 = {r["graph"]: r["p50_ms"] for r in rows if r["engine"] == engine and r["batch_size"] == 1}
        assert ratio == pytest.approx(p50["search"] / p50["video"])
    per_video = report["index"]["bytes_per_video"]
    assert per_video == {"video_emb": 32 * 4, "frame_emb": 4 * 32 * 4, "patch_tokens": 4 * 16 * 32 * 2,
                         "asa_tokens": 4 * 16 * 48 * 4, "total": sum(v for k, v in per_video.items() if k != "total")}
    assert "index bytes per video" in (out / "bench.md").read_text()
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "bench.md").read_text().startswith("# rapdeploy bench")
    assert (report["settings"]["rerank_top"], report["settings"]["rerank_top_asked"]) == (4, 4)


def test_bench_checkpoint_only_real_frames(micro_checkpoint, synth_root, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / ".bench.md.k3b_c3hn.md.tmp").write_text("a killed run's half report")  # swept under the lock
    res = runner.invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", "video,text",
                              "--batch-sizes", "2", "--repeats", "1", "--warmup", "0", "--no-compare-meanp",
                              "--data-root", str(synth_root), "--out", str(out), "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 0, res.output
    assert "videos/s" in res.output
    report = json.loads((out / "bench.json").read_text())
    assert [(r["backend"], r["graph"]) for r in report["results"]] == [("torch", "video"), ("torch", "text")]
    assert report["inputs"].startswith("real frames") and report["adapter_cost"] is None
    assert not list(out.glob(".bench.*.tmp"))
    # one timed call: its p50, p90 and p99 are that call, and every report says so
    note = "p50, p90 and p99 of 1 timed call are that call, not percentiles"
    assert any(n.startswith(note) for n in report["notes"]) and note in (out / "bench.md").read_text()
    assert note in " ".join(res.output.split())
    assert report["settings"]["percentiles"]["calls"] == 1
    assert report["settings"]["percentiles"]["calls_needed"] == {"p50": 3, "p90": 11, "p99": 101}
    # what a timed call covers and which statistic the ratios compare, in bench.json and bench.md
    markdown = (out / "bench.md").read_text()
    assert "host-to-device and device-to-host copies" in report["settings"]["timed_call"]
    assert "preprocessing" in report["settings"]["timed_call"] and "mean latency" in report["settings"]["ratios"]
    assert f"- timed: {report['settings']['timed_call']}" in markdown
    assert f"- ratios: {report['settings']['ratios']}" in markdown and "| vs torch (mean) |" in markdown


def test_percentiles_of_too_few_calls_are_named_interpolated_maxima():
    # numpy's linear interpolation puts the q-th percentile of n calls at position (n - 1)·q/100: the slowest call
    # alone moves it below 3 calls for p50, 11 for p90 and 101 for p99
    for q in (50, 90, 99):
        for n in range(1, 130):
            lat = np.arange(1, n + 1, dtype=np.float64) / 1e3
            slower = np.append(lat[:-1], 1.0)  # the slowest call made far slower
            moved = latency_stats(slower, 1)[f"p{q}_ms"] != pytest.approx(latency_stats(lat, 1)[f"p{q}_ms"])
            assert moved == (n < calls_for_percentile(q)), (q, n)
    assert percentile_notes(101) == []
    (twenty,) = percentile_notes(20)  # a p99 of 20 calls is the slowest two's interpolation
    assert twenty.startswith("p99 of 20 timed calls is interpolated between the two slowest calls") and "101" in twenty
    (ten,) = percentile_notes(10)
    assert ten.startswith("p90 and p99 of 10 timed calls are interpolated") and "p90 >= 11" in ten


def test_bench_usage_errors(tmp_path, micro_checkpoint):
    res = runner.invoke(app, ["bench", "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2 and "no engine in" in res.output
    res = runner.invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", "video,gpu"])
    assert res.exit_code == 2 and "unknown graph" in res.output
    res = runner.invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--batch-sizes", "0,4"])
    assert res.exit_code == 2 and "positive" in res.output
    res = runner.invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", ","])
    assert res.exit_code == 2 and "names no graph" in res.output
    res = runner.invoke(app, ["bench", "--engine", str(micro_checkpoint), "--engine", str(micro_checkpoint)])
    assert res.exit_code == 2 and "more than once" in res.output  # its rows and plot line would hold both
    res = runner.invoke(app, ["bench", "--checkpoint", str(tmp_path)])
    assert res.exit_code == 2 and "is a folder" in res.output


def test_count_flops_matches_matmul_arithmetic():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    assert count_flops(lambda: layer(x)) == 2 * 3 * 8 * 4
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    seq = torch.randn(1, 5, 8)
    # in-projection 3 x (5x8x8), scores and weighted sum 2 x (5x5x8), out-projection 5x8x8; multiply-add = 2 FLOPs
    expected = 2 * (3 * 5 * 8 * 8 + 2 * 5 * 5 * 8 + 5 * 8 * 8)
    assert count_flops(lambda: mha(seq, seq, seq, need_weights=False)) == expected


def test_latency_stats_and_timing():
    stats = latency_stats([0.010, 0.020, 0.030, 0.040], items=8)
    assert stats["throughput"] == pytest.approx(8 / 0.025)
    assert stats["p50_ms"] == pytest.approx(25.0) and stats["min_ms"] == pytest.approx(10.0)
    assert stats["p90_ms"] <= stats["p99_ms"] <= 40.0
    # a skewed sample: mean, median and the tail percentiles all differ (numpy's linear interpolation)
    skewed = latency_stats([0.030, 0.010, 0.100, 0.020], items=2)
    assert skewed == pytest.approx({"throughput": 2 / 0.040, "mean_ms": 40.0, "p50_ms": 25.0, "p90_ms": 79.0,
                                    "p99_ms": 97.9, "min_ms": 10.0})
    calls = []
    lat = time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], repeats=3, warmup=2)
    assert [len(x) for x in lat] == [3, 3]
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up of each
    assert calls[4:] == ["a", "b", "b", "a", "a", "b"]  # one call of each per round, order rotated


def test_random_index_is_normalised():
    index = random_index(5, frames=3, patches=4, dim=8, seed=0, chunk=2)
    assert index.patch_tokens.dtype == np.float16 and index.patch_tokens.shape == (5, 3, 4, 8)
    assert index.asa_tokens is None and len(index.rerank()) == 0
    np.testing.assert_allclose(np.linalg.norm(index.patch_tokens.astype(np.float32), axis=-1), 1.0, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(index.video_emb, axis=-1), 1.0, atol=1e-5)


def test_bench_beside_a_cpu_bound_process_is_not_clean(micro_checkpoint, tmp_path):
    """Two bounded busy loops (one per core here) run beside the bench: the report must say it was not clean."""
    loop = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"  # bounded: 60 s at most
    busy = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(max(2, len(os.sched_getaffinity(0))))]
    try:
        time.sleep(0.5)
        out = tmp_path / "bench"
        res = runner.invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", "video,text",
                                  "--batch-sizes", "2", "--repeats", "5", "--warmup", "1", "--no-compare-meanp",
                                  "--out", str(out), "--json", "--workspace", str(tmp_path / "ws")])
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert res.exit_code == 0, res.output
    report = json.loads((out / "bench.json").read_text())
    assert report["clean"] is False and report["load"]["reasons"]
    assert report["load"]["run"]["other_cores"] > 0.5
    assert all(row["ratio_reliable"] is False for row in report["results"])
    assert "not quiet" in res.stderr and "unreliable" in (out / "bench.md").read_text()
    assert "(unreliable)" in (out / "bench.md").read_text()


def test_load_judge_rules():
    from rap_deploy.engines.machine_load import LoadThresholds, judge

    quiet = {"seconds": 5.0, "other_cores": 0.05, "steal_cores": 0.0}
    limits = LoadThresholds()
    assert judge(quiet, [{"label": "video batch 1", **quiet}], [30.0, 29.0], limits) == []
    busy_block = {"label": "text batch 8", "seconds": 2.0, "other_cores": 0.9, "steal_cores": 0.0}
    short_block = {"label": "text batch 1", "seconds": 0.1, "other_cores": 3.0, "steal_cores": 0.0}
    reasons = judge(quiet, [busy_block, short_block], [30.0], limits)
    assert len(reasons) == 1 and "text batch 8" in reasons[0]  # blocks too short to measure are not judged alone
    assert any("stole" in r for r in judge({**quiet, "steal_cores": 0.5}, [], [30.0], limits))
    assert judge(quiet, [], [30.0, 20.0], limits) == []  # one slow calibration is a transient
    assert judge(quiet, [], [30.0, 31.0, 29.0, 20.0, 30.0], limits) == []
    assert any("2 of 4 calibration GEMMs" in r for r in judge(quiet, [], [30.0, 20.0, 31.0, 19.0], limits))


def test_random_index_holds_the_models_asa_tokens(micro_model):
    from conftest import randomize_adapters

    randomize_adapters(micro_model, seed=2)
    asa = micro_model.asa
    index = random_index(5, frames=4, patches=16, dim=32, seed=0, chunk=2, asa=asa)
    assert index.asa_tokens.dtype == np.float32 and index.asa_tokens.shape == (5, 4, 16, 3 * asa.attn_dim)
    with torch.no_grad():  # computed from the patch tokens as stored (fp16), every frame valid
        expected = asa.video_tokens(torch.from_numpy(index.patch_tokens).float(), torch.ones(5, 4)).numpy()
    np.testing.assert_allclose(index.asa_tokens, expected, atol=1e-6)
    assert [x.shape[0] for x in index.rerank(np.array([4, 0]))] == [2, 2, 2]


def test_random_index_runs_the_asa_head_in_the_models_own_precision(micro_model):
    """The bench of a half-precision engine (PyTorch fp16 on CUDA) hands its half ASA head to random_index: the
    tokens are computed in that precision (bfloat16 here, which the CPU runs) and stored as the index stores them."""
    from conftest import randomize_adapters

    randomize_adapters(micro_model, seed=2)
    full = random_index(3, frames=4, patches=16, dim=32, seed=0, chunk=2, asa=micro_model.asa)
    half = random_index(3, frames=4, patches=16, dim=32, seed=0, chunk=2, asa=micro_model.asa.to(torch.bfloat16))
    assert half.asa_tokens.dtype == full.asa_tokens.dtype
    np.testing.assert_allclose(half.asa_tokens, full.asa_tokens, atol=0.05)
    assert np.abs(half.asa_tokens - full.asa_tokens).max() > 0  # really computed in bfloat16


def test_running_out_of_memory_mid_bench_is_a_usage_error():
    """The input check counts buffers, not activations: an allocation failing inside a timed call is exit 2 naming
    the graph and batch, not a traceback; other runtime errors pass through."""
    from rap_deploy.engines.bench import _out_of_memory_is_usage
    from rap_deploy.errors import UsageError

    for exc in (RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"),
                MemoryError()):
        with pytest.raises(UsageError, match="out of memory at video batch 4096"), \
                _out_of_memory_is_usage("video", 4096):
            raise exc
    with pytest.raises(RuntimeError, match="shape"), _out_of_memory_is_usage("video", 1):
        raise RuntimeError("shape mismatch")


def test_two_engines_of_one_backend_and_precision_keep_apart_in_the_table():
    from rap_deploy.engines.bench_format import backend_labels, bench_rows

    rows = [{"backend": "torch", "precision": "fp32", "engine": "ckpt.pt"},
            {"backend": "onnxruntime", "precision": "fp32", "engine": "/w/onnx"},
            {"backend": "onnxruntime", "precision": "fp32", "engine": "/w/engines/onnxruntime-fp32"},
            {"backend": "onnxruntime", "precision": "int8", "engine": "/w/engines/onnxruntime-int8"}]
    assert list(backend_labels(rows).values()) == ["torch", "onnxruntime [onnx]", "onnxruntime [onnxruntime-fp32]",
                                                   "onnxruntime"]
    same_names = [{"backend": "onnxruntime", "precision": "fp32", "engine": f"/{d}/onnxruntime-fp32"} for d in "ab"]
    assert list(backend_labels(same_names).values()) == ["onnxruntime [a/onnxruntime-fp32]",
                                                         "onnxruntime [b/onnxruntime-fp32]"]
    full = [{**r, "graph": "text", "batch_size": 1, "throughput": 1.0, "unit": "texts/s", "p50_ms": 1.0,
             "p90_ms": 1.0, "p99_ms": 1.0} for r in rows]
    assert [row[0] for row in bench_rows({"results": full})][1:3] == ["onnxruntime [onnx]",
                                                                      "onnxruntime [onnxruntime-fp32]"]


def test_text_flops_per_item_count_each_batch_as_it_runs(micro_checkpoint):
    """A text batch runs trimmed to its longest query, so the text and search rows' FLOPs per item (and GFLOP/s) at
    batch B are that batch's, not the first query's: a longer query after the first was undercounted."""
    from rap_deploy.engines.bench import BenchInputs, bench_settings, count_arithmetic
    from rap_deploy.engines.torch_backend import TorchEngine
    from rap_deploy.tokenizer import tokenize

    engine = TorchEngine(micro_checkpoint)
    config, model = engine.config, engine.model
    ids, eot = tokenize(["a cat", "a big red circle moves to the left, then a small blue square grows"],
                        config.tokenizer)
    assert eot[0] < eot[1]
    frames = np.zeros((1, config.frames, 3, 32, 32), dtype=np.float32)
    index = random_index(4, config.frames, model.num_patches, model.embed_dim, asa=model.asa)
    inputs = BenchInputs(frames, np.ones((1, config.frames), dtype=np.float32), ids, eot, "test", index=index,
                         asa_rerank=index.rerank(slice(0, 2)), query_emb=engine.encode_text(ids[:1], eot[:1]))
    gflops, per_item = count_arithmetic(engine, bench_settings("text,search", [1, 2], 1, 0, 4, 2, None, 0), inputs)
    one = count_flops(lambda: engine.encode_text(ids[:1], eot[:1]))
    both = count_flops(lambda: engine.encode_text(ids, eot))
    assert per_item[("text", 1)] == one and gflops["text_encoder_per_text"] == one / 1e9
    assert per_item[("text", 2)] == both / 2 > one
    assert per_item[("search", 2)] - per_item[("search", 1)] == both / 2 - one


def test_bench_that_times_nothing_is_a_usage_error(tmp_path):
    """Only the asa graph of a model without an ASA head: nothing would be timed, so exit 2 naming why (was exit 0
    with an empty table and bench.json)."""
    from conftest import micro_config

    from rap_deploy.checkpoint import new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, _ = new_checkpoint(micro_config(variant="rap_light"), BackboneSpec.parse("rap-micro", "none"), seed=0)
    save_checkpoint(ckpt, tmp_path / "light.pt")
    out = tmp_path / "bench"
    res = runner.invoke(app, ["bench", "--checkpoint", str(tmp_path / "light.pt"), "--graphs", "asa",
                              "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--index-size", "4",
                              "--no-compare-meanp", "--out", str(out), "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2 and "nothing to benchmark" in res.output and "no ASA head" in res.output, res.output
    assert not (out / "bench.json").exists()


def test_the_first_timed_call_settles_after_another_functions_warm_up(monkeypatch):
    """Warm-up ends with the last function's calls, so the first timed call (of the first function) waits for its
    thread pools to park like every other call that follows another function's."""
    from rap_deploy.engines import bench_timing

    events: list[str] = []
    monkeypatch.setattr(bench_timing, "settle", lambda seconds=0.0: events.append("settle"))
    bench_timing.time_interleaved([lambda: events.append("a"), lambda: events.append("b")], repeats=2, warmup=1)
    assert events == ["a", "b", "settle", "a", "settle", "b", "b", "settle", "a"]
    events.clear()
    bench_timing.time_interleaved([lambda: events.append("a")], repeats=2, warmup=1)
    assert events == ["a", "a", "a"]  # one function: nothing to wait for


def test_the_printed_table_keeps_the_engine_folder_labels():
    """The label of two engines of one backend and precision is ``backend [folder]``, which rich read as a markup
    tag and dropped: the printed rows were indistinguishable."""
    from rich.console import Console

    from rap_deploy.engines.bench_table import print_bench

    rows = [{"backend": "onnxruntime", "precision": "fp32", "engine": e} for e in ("/w/onnx", "/w/[x]/engines")]
    full = [{**r, "graph": "text", "batch_size": 1, "throughput": 1.0, "unit": "texts/s", "p50_ms": 1.0,
             "p90_ms": 1.0, "p99_ms": 1.0} for r in rows]
    console = Console(record=True, width=200)
    print_bench({"results": full, "device": {"cpu": "cpu"}, "out": "/w/[x]/bench",
                 "notes": ["/w/[x]/engines: text batch 64 exceeds the engine's max batch 32; skipped"]}, console)
    text = console.export_text()
    assert "onnxruntime [onnx] fp32" in text and "onnxruntime [engines] fp32" in text, text
    assert "note: /w/[x]/engines: text batch 64" in text and "reports in /w/[x]/bench" in text


def test_the_printed_table_of_an_unquiet_run_shows_every_number_whole():
    """In a log (130 columns), two long engine labels and the "(unreliable)" mark in both ratio columns made rich
    shrink every column: latencies were printed as ``1.…`` and graphs as ``t…``."""
    from rich.console import Console

    from rap_deploy.engines.bench_table import print_bench

    engines = ("torch eager", "/w/engines/onnxruntime-fp32", "/w/onnx")
    rows = [{"backend": "torch" if e == "torch eager" else "onnxruntime", "precision": "fp32", "engine": e,
             "graph": "search", "batch_size": 32, "throughput": 1234.5678, "unit": "queries/s", "min_ms": 1.3456,
             "p50_ms": 2.3456, "p90_ms": 3.4567, "p99_ms": 4.5678, "ratio_vs_torch": 0.4123,
             "ratio_vs_torch_best": 2.1345, "gflops_per_s": 1.25, "ratio_reliable": False} for e in engines]
    console = Console(record=True, width=130)
    print_bench({"results": rows, "device": {"cpu": "AMD EPYC 7B13 64-Core Processor", "usable_cores": 2,
                                             "torch_threads": 2}, "clean": False, "out": "/w/bench"}, console)
    text = console.export_text()
    assert "…" not in text, text
    for cell in ("search", "1234.57 queries/s", "1.35", "2.35", "3.46", "4.57", "0.41x", "2.13x", "onnxruntime"):
        assert text.count(cell) >= 2, (cell, text)
    assert "unreliable" in text


def test_a_calibration_gemm_descheduled_before_its_first_timing_still_measures():
    """calibration_gemm timed GEMMs only while under min_seconds since its start: a process descheduled past that
    between the start and the loop's first check (a loaded 2-core VM) timed none and reported 0 GFLOP/s, a slow
    calibration that helps mark the run unclean. One timed GEMM always runs."""
    from rap_deploy.engines.machine_load import calibration_gemm

    assert calibration_gemm(size=64, min_seconds=0.0) > 0


def test_real_captions_without_the_video_graph_decode_no_video(micro_checkpoint, synth_root, tmp_path, monkeypatch):
    """bench --data-root with the text/asa/search graphs only decoded --batch-sizes' largest test videos into one
    [B, T, 3, S, S] array (unchecked against memory) that nothing timed; now it reads the captions alone."""
    from rap_deploy.data.datasets import load_split
    from rap_deploy.engines import bench_inputs
    from rap_deploy.engines.bench_inputs import prepare_inputs
    from rap_deploy.engines.torch_backend import TorchEngine
    from rap_deploy.tokenizer import tokenize

    decoded: list[int] = []
    real = bench_inputs.first_decodable

    def counting(*args, **kwargs):
        kept, skipped = real(*args, **kwargs)
        decoded.append(kept.num_videos)
        return kept, skipped

    monkeypatch.setattr(bench_inputs, "first_decodable", counting)
    engine = TorchEngine(micro_checkpoint)
    inputs = prepare_inputs(engine, ["text", "search"], 8, 4, 0, synth_root, "msrvtt", tmp_path / "cache", None,
                            False)
    assert decoded == [] and inputs.frames.shape[0] == 1
    split = load_split("msrvtt", synth_root, "test", max_frames=engine.config.frames).subset(list(range(8)))
    ids, eot = tokenize([split.captions[i % split.num_captions] for i in range(8)], engine.config.tokenizer)
    np.testing.assert_array_equal(inputs.ids, ids)
    assert "real captions" in inputs.description
    video = prepare_inputs(engine, ["video"], 2, 4, 0, synth_root, "msrvtt", tmp_path / "cache", None, False)
    assert decoded == [2] and video.frames.shape[0] == 2 and video.description.startswith("real frames")


def test_running_out_of_memory_while_counting_flops_is_a_usage_error(micro_checkpoint, tmp_path, monkeypatch):
    """The FLOP counter runs every graph at every batch size before the timed calls, so that is where a batch too
    large for memory first fails: the allocator's RuntimeError came out of bench as a traceback there."""
    from rap_deploy.engines.torch_backend import TorchEngine

    real = TorchEngine.encode_text

    def short_of_memory(self, ids, eot):
        if len(ids) > 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory")
        return real(self, ids, eot)

    monkeypatch.setattr(TorchEngine, "encode_text", short_of_memory)
    res = runner.invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", "text",
                              "--batch-sizes", "1,4", "--repeats", "1", "--warmup", "0", "--no-compare-meanp",
                              "--out", str(tmp_path / "bench"), "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2, res.output
    assert "out of memory at text batch 4" in res.output and not isinstance(res.exception, RuntimeError)


def test_a_local_server_that_bench_drives_is_not_load(monkeypatch):
    """bench --engine http://127.0.0.1:PORT times a server on this machine: its CPU time is the benchmark's own work,
    but it was counted as other processes' load, so such a run was never clean (fake CPU counters: the server used
    0.8 of the 1.0 busy CPU-second, bench itself 0.2)."""
    import socket
    from types import SimpleNamespace

    from rap_deploy.engines import machine_load as ml

    with socket.socket() as listener:  # this process stands in for the server
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        urls = [f"http://127.0.0.1:{port}", f"http://localhost:{port}/", "http://example.com:80", "/w/engines/x"]
        assert ml.loopback_server_pids(urls) == [os.getpid()]
    assert ml.loopback_server_pids(["http://192.0.2.1:8080", "http://[::1"]) == []

    counters = {"busy": 0.0, "bench": 0.0, "server": 0.0}

    class Proc:
        def __init__(self, pid=None):
            self.pid = pid

        def cpu_times(self):
            return SimpleNamespace(user=counters["server" if self.pid == 4242 else "bench"], system=0.0)

    monkeypatch.setattr(ml.psutil, "cpu_times", lambda percpu: [SimpleNamespace(user=counters["busy"], system=0.0)])
    monkeypatch.setattr(ml.psutil, "Process", Proc)
    before = ml.cpu_sample([0], servers=[4242])
    counters.update(busy=1.0, bench=0.2, server=0.8)
    after = ml.cpu_sample([0], servers=[4242])
    assert after.own - before.own == pytest.approx(1.0)
    assert ml.contention(before, after)["other_cores"] == 0.0


def test_cpu_load_is_read_by_cpu_number_when_a_cpu_is_offline(monkeypatch, tmp_path):
    """psutil lists the online CPUs' times in order without their numbers: with CPU 1 offline (SMT switched off) the
    list is CPUs 0, 2, 3, so reading it by the affinity's numbers took CPU 3's times for CPU 2 and none for CPU 3,
    and load on the missed CPU went unseen (fake counters: 7 busy seconds read as 5)."""
    from types import SimpleNamespace

    from rap_deploy.engines import machine_load as ml

    stat = tmp_path / "stat"
    stat.write_text("cpu  0 0 0 0\ncpu0 0 0 0 0\ncpu2 0 0 0 0\ncpu3 0 0 0 0\nintr 0\n")
    monkeypatch.setattr(ml, "_PROC_STAT", stat, raising=False)
    monkeypatch.setattr(ml.psutil, "cpu_times", lambda percpu: [SimpleNamespace(user=u, system=0.0) for u in (1, 2, 4)])
    assert ml.cpu_sample([0, 2, 3]).busy == 7.0
    assert ml.cpu_sample([2]).busy == 2.0
    stat.write_text("cpu  0 0 0 0\ncpu0 0 0 0 0\n")  # a CPU came online between the two reads: positions again
    assert ml.cpu_sample([0, 1]).busy == 3.0


def test_the_memory_check_counts_the_candidates_an_engine_gets_copied(micro_ort_engines, tmp_path, monkeypatch):
    """An engine that does not read the index in place (ONNX Runtime, TensorRT, a server) gets each query's top-M
    re-rank rows copied into buffers as large as M videos of the index; the memory check counted the index alone,
    so --rerank-top near --index-size passed it with twice its memory to come (micro model, 1000 videos: 17.0 MB
    index + 16.4 MB of candidates against 25 MB allowed)."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": int(25e6 / 0.8)})())
    args = ["bench", "--graphs", "search", "--batch-sizes", "1", "--repeats", "1", "--warmup", "0",
            "--index-size", "1000", "--no-compare-meanp", "--out", str(tmp_path / "bench"), "--quiet"]
    res = runner.invoke(app, [*args, "--engine", str(micro_ort_engines["fp32"]), "--rerank-top", "1000"])
    assert res.exit_code == 2 and "--rerank-top" in res.output, res.output
    assert not (tmp_path / "bench" / "bench.json").exists()
    res = runner.invoke(app, [*args, "--engine", str(micro_ort_engines["fp32"]), "--rerank-top", "100"])
    assert res.exit_code == 0, res.output  # a tenth of the index copied: fits


def test_bench_md_says_why_rows_are_missing():
    """The printed table ends with bench's notes (a batch over an engine's max batch skipped, a graph the model does
    not have), but bench.md left them out: its table just lacked those rows."""
    from rap_deploy.engines.bench_format import bench_markdown

    row = {"backend": "torch", "precision": "fp32", "engine": "torch eager", "graph": "text", "batch_size": 1,
           "throughput": 1.0, "unit": "texts/s", "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0}
    note = "/w/engines/tensorrt-fp16: text batch 64 exceeds the engine's max batch 32; skipped"
    text = bench_markdown({"results": [row], "device": {"cpu": "cpu"}, "notes": [note]})
    assert f"- note: {note}" in text


def test_random_frames_hold_one_copy_of_the_batch():
    """The memory check counts the frames once, but random_frames kept every clip, stacked them and then copied the
    stack with astype: three batches at the peak (two of them NumPy's, which tracemalloc sees). Now the clips are
    written into one array."""
    import tracemalloc

    from conftest import micro_config

    from rap_deploy.engines.bench_inputs import random_frames
    from rap_deploy.preprocess import normalize

    config = micro_config()
    random_frames(config, 1, seed=0)  # imports done before measuring
    tracemalloc.start()
    try:
        frames = random_frames(config, 16, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * frames.nbytes, (peak, frames.nbytes)  # was 2.0 (and a third batch in torch's memory)
    rng = np.random.default_rng(0)
    clips = [normalize(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), config.preprocess).numpy()
             for _ in range(16)]
    expected = np.stack(clips)
    assert frames.dtype == np.float32 and frames.strides == expected.strides  # the layout decoded batches have
    np.testing.assert_array_equal(frames, expected)


def test_a_local_server_pinned_to_other_cpus_is_not_counted_as_the_benchs_own(monkeypatch):
    """A server that may run outside the bench's CPUs spends CPU time their busy time does not hold: counting it as
    the bench's own hid as much of other processes' load on the bench's CPUs. Only a server held to the bench's
    CPUs counts (one not held is left to be seen as load: an unclean verdict, never a false clean one)."""
    from rap_deploy.engines import machine_load as ml

    affinity = {4242: [0, 1], 4343: [2, 3], 4444: [0, 1, 2, 3]}
    monkeypatch.setattr(ml, "_cpu_affinity", lambda pid: affinity.get(pid))
    monitor = ml.LoadMonitor(cpus=[0, 1], servers=[4242, 4343, 4444, 4545])
    assert monitor.servers == [4242]


def test_a_missing_engine_is_named_as_verify_names_it(tmp_path):
    """bench checked its --engine paths with its own copy of resolve_engine's check (a message without the
    checkpoint the PyTorch engine takes); both say it one way now (exit 2, before any work)."""
    res = runner.invoke(app, ["bench", "--engine", str(tmp_path / "gone"), "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2, res.output
    assert (f"engine {tmp_path / 'gone'} does not exist; pass --engine with an engine folder from `rapdeploy "
            "build-engine` (or a .pt checkpoint for the PyTorch engine)") in " ".join(res.stderr.split())


def test_bench_notes_an_engine_that_runs_with_other_threads_than_pytorch(micro_ort_engines, tmp_path):
    """build-engine --threads N is recorded in the engine and bench without --threads ran it with N, PyTorch eager
    with its own count, and printed the ratios with no word of it (found walking the README: an engine built with
    --threads 1 benched against PyTorch at two threads); bench.json's notes, its table and bench.md now say so."""
    from rap_deploy.engines.bench import thread_notes
    from rap_deploy.engines.build import build_engine
    from rap_deploy.engines.machine_load import usable_cpus

    # a count other than PyTorch's and within this machine's cores (a recorded count above them is held to them)
    other = 1 if torch.get_num_threads() > 1 else 2
    if other > len(usable_cpus()):
        pytest.skip("needs two usable cores: on one, every recorded thread count runs as PyTorch's one")
    engine = tmp_path / "ort-threads"
    build_engine(micro_ort_engines["export"], backend="onnxruntime", out=engine, threads=other, progress=False,
                 validate=False)
    out = tmp_path / "bench"
    res = runner.invoke(app, ["bench", "--engine", str(engine), "--batch-sizes", "1", "--repeats", "1", "--warmup",
                              "0", "--index-size", "4", "--rerank-top", "2", "--graphs", "text", "--no-compare-meanp",
                              "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    notes = [n for n in json.loads(res.stdout)["notes"] if "intra-op thread" in n]
    assert len(notes) == 1 and f"ran with {other} ONNX Runtime" in notes[0], notes
    assert notes[0] in (out / "bench.md").read_text()
    same = [{"backend": "torch", "device": "cpu", "threads": 2, "label": "torch eager"},
            {"backend": "onnxruntime", "device": "cpu", "threads": 2, "label": "e"},
            {"backend": "onnxruntime", "device": "cpu", "threads": None, "label": "default"}]
    assert thread_notes(same) == []


def test_the_printed_table_of_an_unquiet_run_gives_its_reasons_once():
    """An unquiet run printed its load reasons twice, as a note ("the machine was not quiet, so every ratio is
    unreliable: …") and again as the WARNING line under it (found walking the README's bench); bench.json keeps the
    note, the table prints the warning alone."""
    from rich.console import Console

    from rap_deploy.engines.bench_format import UNQUIET_NOTE
    from rap_deploy.engines.bench_table import print_bench

    reason = "other processes used 1.24 cores during the whole run (limit 0.25)"
    load = {"clean": False, "reasons": [reason], "usable_cores": 2, "loadavg_1min_start": 1.5,
            "run": {"other_cores": 1.24, "steal_cores": 0.0}}
    console = Console(record=True, width=200)
    print_bench({"results": [], "device": {"cpu": "cpu"}, "out": "/w/bench", "clean": False, "load": load,
                 "notes": [UNQUIET_NOTE + reason, "another note"]}, console)
    text = console.export_text()
    assert text.count(reason) == 1 and "WARNING: the machine was not quiet" in text, text
    assert "note: another note" in text


def test_the_bench_table_on_an_80_column_terminal_keeps_every_number_on_one_line(micro_ort_engines, tmp_path):
    """On an 80-column terminal the eleven columns did not fit and rich folded every cell: '161.61 videos/s' read
    '161.' over '61' and 'videos/s' on two more lines, '15.70x*' as '15.7' over '0x*', 'torch' as 'torc' over 'h' (a
    real `rapdeploy bench` of two engines). Where the columns do not all fit, the rows' timings and their ratios now
    come as two tables, each number whole on its line."""
    import re

    res = runner.invoke(app, ["bench", "--engine", str(micro_ort_engines["fp32"]), "--batch-sizes", "1,2",
                              "--repeats", "1", "--warmup", "0", "--graphs", "video,text", "--no-compare-meanp",
                              "--out", str(tmp_path / "b80")],
                        env={"TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", res.stdout)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    printed = json.loads((tmp_path / "b80" / "bench.json").read_text())["results"]
    assert len(printed) == 8  # torch and the engine x two graphs x two batch sizes
    for row in printed:  # every throughput, latency and ratio whole on one line, beside its graph and batch
        lines = [line for line in text.splitlines() if re.search(rf"\s{row['graph']}\s+{row['batch_size']}\s", line)]
        assert any(f"{row['throughput']:.2f} {row['unit']}" in line for line in lines), (row, text)
        assert any(f"{row['ratio_vs_torch']:.2f}x" in line for line in lines), (row, text)
    assert re.search(r"^\s+torch fp32\s+video\s+1\s", text, re.M), text


def _annotations_only(synth_root, dest):
    """A copy of ``synth_root``'s annotation files without its videos folder."""
    dest.mkdir()
    for f in synth_root.iterdir():
        if f.is_file():
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_a_data_root_without_its_videos_is_damaged_data_for_bench_too(micro_checkpoint, synth_root, tmp_path):
    """bench --data-root over annotation files whose videos are all missing exited 2 (bad usage) where verify, export
    and data-check exit 1 for the same dataset (it does not hold what its captions name): now 1 as well."""
    data = _annotations_only(synth_root, tmp_path / "data")
    res = runner.invoke(app, ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", "video",
                              "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--no-compare-meanp",
                              "--data-root", str(data), "--out", str(tmp_path / "b"),
                              "--workspace", str(tmp_path / "w")])
    assert res.exit_code == 1, res.output
    line = " ".join(res.stderr.split())
    assert line.startswith("error: no msrvtt test video under") and "missing" in line and "data-check" in line, line

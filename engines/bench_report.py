"""What ``rapdeploy bench`` reports (:mod:`rap_deploy.engines.bench` measures): the ratios to PyTorch eager, the notes
on unequal threads and a disturbed machine, the content of bench.json and the writing of bench.json, bench.md and
bench.png."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rap_deploy.engines.bench_index import index_bytes_per_video, search_vs_video
from rap_deploy.engines.bench_timing import PERCENTILE_METHOD, PERCENTILES, calls_for_percentile
from rap_deploy.locks import folder_lock

if TYPE_CHECKING:
    from rap_deploy.engines.bench import BenchSettings
    from rap_deploy.engines.bench_inputs import BenchInputs

# What one timed call covers and how ratios are formed (bench.json settings, bench.md): readers assume either way.
TIMED_CALL = ("one engine call from host numpy arrays to host numpy arrays: its input checks, host-to-device and "
              "device-to-host copies and, on a GPU, the wait for the device are timed; decoding, frame preprocessing "
              "(resize, crop, normalisation) and tokenisation happen before and are not")
RATIOS = ("vs torch: PyTorch eager's mean latency over the row's (= the throughput ratio) at the same graph and batch; "
          "vs torch (min): the same with each one's fastest call")
REPORT_FILES = ("bench.md", "bench.png", "bench.json")  # the order they are written in: bench.json last


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Each row's throughput over PyTorch eager's at the same graph and batch (``ratio_vs_torch``), and the ratio of
    the fastest calls (``ratio_vs_torch_best``: the least-disturbed call of each)."""
    for row in results:
        base = next((r for r in results if r["engine"] == "torch eager" and r["graph"] == row["graph"]
                     and r["batch_size"] == row["batch_size"]), None)
        row["ratio_vs_torch"] = row["throughput"] / base["throughput"] if base else None
        row["ratio_vs_torch_best"] = base["min_ms"] / row["min_ms"] if base and row["min_ms"] > 0 else None


def thread_notes(infos: list[dict[str, Any]]) -> list[str]:
    """A note per CPU ONNX Runtime engine that ran with other intra-op threads than PyTorch eager on the CPU.

    Without ``--threads`` an engine runs with the threads its manifest records (``build-engine --threads``) while
    PyTorch keeps its own, so the engine's "vs torch" ratios would silently compare unequal thread counts.
    """
    base = next((i for i in infos if i.get("backend") == "torch"), None)
    if base is None or base.get("device") != "cpu" or not isinstance(base.get("threads"), int):
        return []
    return [f"{i.get('label')} ran with {i['threads']} ONNX Runtime intra-op thread(s), recorded in the engine by "
            f"`build-engine --threads`, and PyTorch eager with {base['threads']}: its ratios compare unequal thread "
            "counts; pass --threads N to run both with N"
            for i in infos if i.get("backend") == "onnxruntime" and i.get("device") == "cpu"
            and isinstance(i.get("threads"), int) and i["threads"] != base["threads"]]


def mark_reliability(results: list[dict[str, Any]], notes: list[str], load: dict[str, Any]) -> None:
    """Mark every ratio reliable only when the run was clean; a warning note says why it was not."""
    for row in results:
        row["ratio_reliable"] = load["clean"]
    if not load["clean"]:
        from rap_deploy.engines.bench_format import UNQUIET_NOTE

        notes.insert(0, UNQUIET_NOTE + "; ".join(load["reasons"]))


def bench_report(s: BenchSettings, torch_engine: Any, ckpt_path: Path, infos: list[dict[str, Any]],
                 inputs: BenchInputs, results: list[dict[str, Any]], gflops: dict[str, float], cost: Any,
                 load: dict[str, Any], notes: list[str], torch_device: str, started: float) -> dict[str, Any]:
    """The content of bench.json."""
    import torch

    from rap_deploy.engines.report_env import device_info, library_versions

    config, model = torch_engine.config, torch_engine.model
    ort_threads = [i.get("threads") for i in infos if i.get("backend") == "onnxruntime"]
    index = inputs.index
    return {
        "device": device_info(),
        "clean": load["clean"],
        "load": load,
        "results": results,
        "gflops": gflops,
        "adapter_cost": cost,
        "threads": {"torch": torch.get_num_threads(), "requested": s.threads,
                    "onnxruntime_intra_op": (ort_threads[0] if ort_threads else None) or
                    ("onnxruntime default (one per physical core)" if ort_threads else None)},
        "versions": library_versions(),
        "engines": infos,
        "checkpoint": str(ckpt_path),
        "model": {**{k: v for k, v in config.to_dict().items() if k != "preprocess"},
                  "image_size": config.preprocess.image_size, "patches": model.num_patches,
                  "embed_dim": model.embed_dim, **model.parameter_counts()},
        "inputs": inputs.description,
        "query_tokens": [int(e) + 1 for e in inputs.eot[:max(s.sizes)]],  # what the text graph runs (trimmed)
        "index": {"videos": s.index_size, "rerank_top": s.rerank_top, "bytes_per_video": index_bytes_per_video(index),
                  "kind": "random unit-norm frame embeddings and patch tokens, every tensor in its INDEX_DTYPES dtype "
                          "(patch tokens fp16); asa_tokens computed by the model from the stored patch tokens"}
        if index is not None else None,
        "search_vs_video_p50": search_vs_video(results),
        "settings": {"batch_sizes": s.sizes, "repeats": s.repeats, "warmup": s.warmup, "graphs": s.graphs,
                     "index_size": s.index_size, "rerank_top": s.rerank_top, "rerank_top_asked": s.top_m,
                     "seed": s.seed, "torch_device": torch_device,
                     "timed_call": TIMED_CALL, "ratios": RATIOS,
                     "percentiles": {"method": PERCENTILE_METHOD, "calls": s.repeats,
                                     "calls_needed": {f"p{q}": calls_for_percentile(q) for q in PERCENTILES}},
                     "flops": "torch.utils.flop_counter on the PyTorch model: matmul, conv and attention FLOPs "
                              "(multiply-add = 2); element-wise work not counted"},
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 3),
    }


def write_bench_reports(out_dir: Path, result: dict[str, Any]) -> None:
    """Write bench.json, bench.md and bench.png into ``out_dir`` (under its lock) and set ``result["out"]``."""
    from rap_deploy.atomic import remove_temporaries, write_json_atomic, write_text_atomic
    from rap_deploy.engines.bench_format import bench_markdown, plot_bench

    with folder_lock(out_dir, "bench", "report folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out_dir, REPORT_FILES)  # a killed run's (the lock: none runs)
        markdown, plot, report = (out_dir / name for name in REPORT_FILES)
        write_text_atomic(markdown, bench_markdown(result))
        plot_bench(result, plot)
        write_json_atomic(report, result)  # last: a killed run leaves the previous bench.json
    result["out"] = str(out_dir)

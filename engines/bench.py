"""``rapdeploy bench``: throughput and latency of every engine and of PyTorch eager, per graph and batch size.

Graphs (DESIGN.md §4, §9):

- ``video``: the video encoder on ``B`` videos of ``T`` frames (videos/s, and frames/s);
- ``text``: the text encoder on ``B`` tokenised captions (texts/s);
- ``asa``: the ASA head scoring one query against ``B`` candidate videos (pairs/s), the stage-2 call of a search;
- ``search``: ``B`` queries end to end over an ``--index-size``-video index: text encoder, meanP inner product over the
  whole index, top-M, ASA re-rank of the M candidates (:func:`rap_deploy.retrieval.two_stage_similarity`), top-10
  (queries/s). The random index holds every tensor in its ``INDEX_DTYPES`` dtype, with the ``asa_tokens`` the model
  computes from its patch tokens; its bytes per video are reported, and ``search_vs_video_p50`` is each engine's
  batch-1 search p50 over its batch-1 video-encoder p50 of the same run (issue 11's target: <= 0.1).

Each (backend, graph, batch) gets ``warmup`` untimed calls, then ``repeats`` timed calls, interleaved across the
backends (one call of each per round, rotating the order) so that load from other processes on a shared machine
hits every backend alike; latency percentiles are over those calls, throughput is items / mean latency. The model's
arithmetic is counted once on the PyTorch model with ``torch.utils.flop_counter`` (matmuls, convolutions and
attention products; element-wise work is not counted), so every backend's achieved GFLOP/s is on the same footing.
Gathers do no arithmetic and count nothing: the ASA head gathers the k selected ``asa_tokens`` rows per frame instead
of projecting and warping all T×P tokens per pair, and what it still computes per pair (the selection scores over
every patch token, the (T·k)² attention, the output projection) is matmuls the counter sees.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.engines.bench_index import (  # noqa: F401 - random_index is part of the bench API
    SEARCH_TOP,
    index_bytes_per_video,
    random_index,
    search,
    search_vs_video,
)
from rap_deploy.engines.machine_load import LoadMonitor
from rap_deploy.errors import UsageError
from rap_deploy.locks import check_writable_folder, folder_lock

GRAPHS = ("video", "text", "asa", "search")
UNITS = {"video": "videos/s", "text": "texts/s", "asa": "pairs/s", "search": "queries/s"}
ENGINE_GRAPH = {"video": "video_encoder", "text": "text_encoder", "asa": "asa_head", "search": None}
DEFAULT_BATCH_SIZES = (1, 8, 32)


# ---------------------------------------------------------------------------------------------------- timing
def time_interleaved(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int,
                     tick: Callable[[int], None] | None = None) -> list[list[float]]:
    """Time several implementations of the same work fairly: after ``warmup`` untimed calls of each, every round
    times one call of each, in an order rotated per round, so load from elsewhere on a shared machine hits all
    alike. Returns the latencies (seconds) per function."""
    for fn in fns:
        for _ in range(warmup):
            fn()
            if tick:
                tick(1)
    out: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            t0 = time.perf_counter()
            fns[i]()
            out[i].append(time.perf_counter() - t0)
            if tick:
                tick(1)
    return out


def latency_stats(latencies: Sequence[float], items: int) -> dict[str, float]:
    """``{throughput (items/s over the mean latency), mean_ms, p50_ms, p90_ms, p99_ms, min_ms}``."""
    lat = np.asarray(latencies, dtype=np.float64)
    if lat.size == 0:
        raise ValueError("no timed calls")
    p50, p90, p99 = np.percentile(lat, [50, 90, 99]) * 1e3
    mean = float(lat.mean())
    return {"throughput": items / mean if mean > 0 else float("inf"), "mean_ms": mean * 1e3, "p50_ms": float(p50),
            "p90_ms": float(p90), "p99_ms": float(p99), "min_ms": float(lat.min() * 1e3)}


# ---------------------------------------------------------------------------------------------------- FLOPs
@contextlib.contextmanager
def _flop_counter() -> Iterator[Any]:
    """A ``FlopCounterMode`` that also sees attention: PyTorch's fused MHA fast path hides the in-projection from
    the counter, so it is switched off while counting, and the CPU flash-attention kernel gets the SDPA formula."""
    import torch
    from torch.utils import flop_counter

    def cpu_flash(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = cpu_flash
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)
        with counter, torch.no_grad():
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (multiply-add = 2) of the PyTorch work ``fn`` does, by ``torch.utils.flop_counter``."""
    with _flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------- inputs
def random_frames(config: Any, videos: int, seed: int = 0) -> np.ndarray:
    """``videos`` clips of random uint8 pixels through the project's CLIP normalisation: ``[B,T,3,S,S]`` float32."""
    from rap_deploy.preprocess import normalize

    rng = np.random.default_rng(seed)
    s = config.preprocess.image_size
    clips = [normalize(rng.integers(0, 256, (config.frames, s, s, 3), dtype=np.uint8), config.preprocess).numpy()
             for _ in range(videos)]
    return np.stack(clips).astype(np.float32)


def real_frames(dataset: str, data_root: Path, config: Any, videos: int, cache: Any, progress: bool
                ) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Up to ``videos`` preprocessed test videos of ``dataset`` (repeated to fill ``videos``) with their captions.

    Returns ``(frames, frame_mask, captions, description)``; raises :class:`UsageError` when none decodes.
    """
    from rap_deploy.data.datasets import load_split
    from rap_deploy.retrieval import load_video_batch, usable_videos

    split = load_split(dataset, data_root, "test", max_frames=config.frames)
    split = split.subset(list(range(min(videos, split.num_videos))))
    split, skipped = usable_videos(split, cache, config, progress)
    if split.num_videos == 0:
        raise UsageError(f"no {dataset} test video under {data_root} could be decoded ({len(skipped)} skipped); "
                         "run `rapdeploy data-check`")
    idx = [i % split.num_videos for i in range(videos)]
    frames, mask = load_video_batch(split, idx, cache, config)
    captions = [split.captions[i % split.num_captions] for i in range(videos)]
    return frames, mask, captions, f"real frames: {split.num_videos} {dataset} test videos from {data_root}"


_COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
_SHAPES = ("circle", "square", "triangle", "diamond")
_ACTIONS = ("moves to the left", "moves up", "grows", "shrinks", "appears", "slides to the right")


def template_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` short captions of the synthetic world (text-encoder inputs when no dataset is given)."""
    rng = np.random.default_rng(seed)
    return [f"a {rng.choice(('small', 'big'))} {rng.choice(_COLOURS)} {rng.choice(_SHAPES)} "
            f"{rng.choice(_ACTIONS)}, then a {rng.choice(_COLOURS)} {rng.choice(_SHAPES)} {rng.choice(_ACTIONS)}"
            for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- engines
def _parse_graphs(graphs: Sequence[str] | str) -> list[str]:
    items = [g.strip() for g in (graphs.split(",") if isinstance(graphs, str) else graphs) if g.strip()]
    unknown = [g for g in items if g not in GRAPHS]
    if unknown or not items:
        raise UsageError(f"unknown graph(s) {unknown or items}; use a comma list of {', '.join(GRAPHS)}")
    return list(dict.fromkeys(items))


def _load(path: Path, threads: int | None) -> Any:
    """An engine folder through the loader (with ``threads`` intra-op threads when given)."""
    from rap_deploy.engines.loader import load_engine

    return load_engine(path, threads=threads)


def _row(label: str, info: dict[str, Any], graph: str, batch: int, stats: dict[str, float], repeats: int,
         frames: int, flops: float | None, extra: dict[str, Any]) -> dict[str, Any]:
    """One ``results`` entry of bench.json."""
    row = {"backend": info.get("backend"), "precision": info.get("precision"), "graph": graph, "batch_size": batch,
           "throughput": stats["throughput"], "unit": UNITS[graph], "p50_ms": stats["p50_ms"],
           "p90_ms": stats["p90_ms"], "p99_ms": stats["p99_ms"], "mean_ms": stats["mean_ms"],
           "min_ms": stats["min_ms"], "repeats": repeats, "device": info.get("device"), "engine": label, **extra}
    if graph == "video":
        row["frames_per_s"] = stats["throughput"] * frames
    if flops is not None:
        row["gflops"] = flops / 1e9
        row["gflops_per_s"] = flops * stats["throughput"] / 1e9
    return row


def _info(engine: Any) -> dict[str, Any]:
    info = engine.describe()
    return info.to_dict() if hasattr(info, "to_dict") else dict(info)


def _adapter_cost(model: Any, frames: np.ndarray, mask: np.ndarray, repeats: int, warmup: int) -> dict[str, Any]:
    """Video-encoder latency at batch 1 of RAP vs the same frozen CLIP with meanP and no adapters (PyTorch eager).

    The meanP model is ``RAPConfig(variant="rap_light", use_lorm=False)`` on the very same backbone modules; calls
    alternate between the two (:func:`time_interleaved`) so machine noise hits both alike.
    """
    import torch

    from rap_deploy.model.rap import RAPModel

    meanp = RAPModel(model.clip, model.config.replace(variant="rap_light", use_lorm=False)).eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(frames[:1]).to(device)
    m = torch.as_tensor(mask[:1]).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call(net: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                net.encode_video(x, m)
            sync()
        return run

    rap_lat, meanp_lat = time_interleaved([call(model), call(meanp)], max(1, repeats), max(1, warmup))
    times = {"rap": rap_lat, "meanp": meanp_lat}
    rap = latency_stats(times["rap"], 1)
    base = latency_stats(times["meanp"], 1)
    return {"backend": "torch", "device": str(device), "batch_size": 1, "frames": int(frames.shape[1]),
            "repeats": max(1, repeats),
            "rap_p50_ms": rap["p50_ms"], "meanp_p50_ms": base["p50_ms"], "rap_mean_ms": rap["mean_ms"],
            "meanp_mean_ms": base["mean_ms"], "ratio": rap["p50_ms"] / base["p50_ms"],
            "ratio_mean": rap["mean_ms"] / base["mean_ms"], "rap_min_ms": rap["min_ms"],
            "meanp_min_ms": base["min_ms"], "ratio_min": rap["min_ms"] / base["min_ms"],
            "meanp_model": "same frozen CLIP, meanP pooling, no LoRM and no ASA (variant rap_light, use_lorm=False)"}


# ---------------------------------------------------------------------------------------------------- bench
def bench(
    engines: Sequence[str | os.PathLike[str]] = (),
    checkpoint: str | os.PathLike[str] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 10,
    warmup: int = 2,
    index_size: int = 1000,
    graphs: Sequence[str] | str = GRAPHS,
    out: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    dataset: str = "msrvtt",
    top_m: int = 100,
    compare_meanp: bool = True,
    workspace: str | os.PathLike[str] | None = None,
    cache: Any = None,
    seed: int = 0,
    torch_device: str | None = None,
    echo: Callable[[dict[str, Any]], None] | None = None,
    torch_precision: str = "fp32",
) -> dict[str, Any]:
    """Benchmark ``engines`` and PyTorch eager; write ``bench.json``, ``bench.md`` and ``bench.png`` into ``out``
    (default ``<workspace>/bench``) and return the result (the content of ``bench.json`` plus ``out``).

    The PyTorch reference is ``checkpoint``, else the checkpoint named in the first engine's manifest. Without
    engines, the workspace's latest engine is used, or PyTorch alone when only ``checkpoint`` is given. Inputs are
    real preprocessed test frames and captions of ``dataset`` when ``data_root`` is given, else random pixels
    through CLIP normalisation and template captions. ``threads`` sets PyTorch's and ONNX Runtime's intra-op threads.
    ``compare_meanp`` adds the RAP-vs-meanP video-encoder latency at batch 1 (``adapter_cost``). ``torch_device``
    (default: cuda when a benchmarked engine runs on CUDA, else cpu) is where PyTorch eager runs, in
    ``torch_precision`` (``fp16`` needs CUDA).

    Raises :class:`UsageError` for bad options or when there is nothing to benchmark.
    """
    import torch

    from rap_deploy.atomic import write_json_atomic, write_text_atomic
    from rap_deploy.data.progress import progress_bar
    from rap_deploy.engines import reports
    from rap_deploy.engines.torch_backend import TorchEngine
    from rap_deploy.engines.verify import resolve_engine, resolve_reference
    from rap_deploy.tokenizer import tokenize
    from rap_deploy.workspace import subdir

    t_start = time.perf_counter()
    graph_list = _parse_graphs(graphs)
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise UsageError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if repeats < 1 or warmup < 0:
        raise UsageError(f"need --repeats >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    if index_size < 1 or top_m < 1:
        raise UsageError(f"need --index-size >= 1 and --rerank-top >= 1, got {index_size} and {top_m}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    out_dir = check_writable_folder(Path(out) if out is not None else subdir("bench", workspace), "bench",
                                    "report folder")
    if threads:
        torch.set_num_threads(int(threads))

    from rap_deploy.engines.loader import is_remote

    engine_paths = [e if is_remote(e) else Path(e).expanduser() for e in engines]  # server URLs stay strings
    if not engine_paths and checkpoint is None:
        engine_paths = [resolve_engine(None, workspace)]
    for p in engine_paths:
        if not is_remote(p) and not p.exists():
            raise UsageError(f"engine {p} does not exist; pass --engine with an engine folder from "
                             "`rapdeploy build-engine`")
    ckpt_path = resolve_reference(engine_paths[0], checkpoint).checkpoint if engine_paths else Path(checkpoint)
    if not ckpt_path.is_file():
        raise UsageError(f"checkpoint {ckpt_path} does not exist")

    loaded: list[tuple[str, Any]] = []
    for p in engine_paths:
        if not is_remote(p) and p.is_file() and p.resolve() == ckpt_path.resolve():
            continue  # the reference itself
        loaded.append((str(p), _load(p, threads)))
    if torch_device is None:  # PyTorch eager on the engines' device: a GPU engine is compared with GPU PyTorch
        on_gpu = any(_info(e).get("device", "cpu").startswith("cuda") for _, e in loaded)
        torch_device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    torch_engine = TorchEngine(ckpt_path, device=torch_device, precision=torch_precision)
    model = torch_engine.model
    config = torch_engine.config
    backends: list[tuple[str, Any]] = [("torch eager", torch_engine), *loaded]
    for path, eng in loaded:
        if {k: v for k, v in eng.config.to_dict().items() if k != "pretrained"} != \
                {k: v for k, v in config.to_dict().items() if k != "pretrained"}:
            raise UsageError(f"engine {path} was built for another model config than {ckpt_path}; pass --checkpoint "
                             "with its source checkpoint or bench it separately")

    # ---- inputs
    max_b = max(sizes)
    _check_input_memory(config, model, max_b, index_size, graph_list)
    if data_root is not None:
        from rap_deploy.data.cache import FrameCache

        cache = cache if cache is not None else FrameCache.default(workspace)
        if not isinstance(cache, FrameCache):
            cache = FrameCache(cache)
        frames, mask, captions, inputs = real_frames(dataset, Path(data_root), config, max_b, cache, progress)
    else:
        frames = random_frames(config, max_b if "video" in graph_list else 1, seed)
        mask = np.ones(frames.shape[:2], dtype=np.float32)
        captions = template_captions(max_b, seed)
        inputs = "random frames: uniform random uint8 pixels through CLIP normalisation; template captions"
    ids, eot = tokenize(captions, config.tokenizer)
    index = None
    if "search" in graph_list or "asa" in graph_list:
        index = random_index(max(index_size, max_b), config.frames, model.num_patches, model.embed_dim, seed,
                             asa=model.asa)
        asa_rerank = index.rerank(slice(0, max_b))  # in the index's dtypes: engines read them as stored
        query_emb = torch_engine.encode_text(ids[:1], eot[:1])
        if index_size < len(index):
            index = index.subset(index_size)

    # ---- arithmetic (counted once on the PyTorch model)
    m_top = min(top_m, index_size)
    gflops: dict[str, float] = {}
    flops_per_item: dict[tuple[str, int], float] = {}
    if "video" in graph_list:
        per_video = count_flops(lambda: torch_engine.encode_video(frames[:1], mask[:1]))
        gflops["video_encoder_per_video"] = per_video / 1e9
        gflops["video_encoder_per_frame"] = per_video / 1e9 / config.frames
        for b in sizes:
            flops_per_item[("video", b)] = per_video
    per_text = count_flops(lambda: torch_engine.encode_text(ids[:1], eot[:1]))
    if "text" in graph_list or "search" in graph_list:
        gflops["text_encoder_per_text"] = per_text / 1e9
        for b in sizes:
            flops_per_item[("text", b)] = per_text
    if config.has_asa and ("asa" in graph_list or "search" in graph_list):
        for b in sizes:
            flops_per_item[("asa", b)] = count_flops(
                lambda b=b: torch_engine.asa_similarity(query_emb, *(x[:b] for x in asa_rerank))) / b
        gflops["asa_head_per_pair"] = flops_per_item[("asa", sizes[0])] / 1e9
    if "search" in graph_list:
        rerank = count_flops(lambda: torch_engine.asa_similarity(query_emb, *index.rerank(slice(0, m_top)))) \
            if config.has_asa else 0
        per_query = per_text + 2 * index_size * model.embed_dim + rerank
        gflops["search_per_query"] = per_query / 1e9
        if config.has_asa:
            gflops["search_rerank_per_pair"] = rerank / m_top / 1e9
        for b in sizes:
            flops_per_item[("search", b)] = per_query

    # ---- timing
    def runner(eng: Any, graph: str, b: int) -> Callable[[], Any] | None:
        if graph == "video":
            return lambda: eng.encode_video(frames[:b], mask[:b])
        if graph == "text":
            return lambda: eng.encode_text(ids[:b], eot[:b])
        if graph == "asa":
            if not config.has_asa:
                return None
            return lambda: eng.asa_similarity(query_emb, *(x[:b] for x in asa_rerank))
        return lambda: search(eng, ids[:b], eot[:b], index, m_top)

    results: list[dict[str, Any]] = []
    notes: list[str] = []
    if "asa" in graph_list and not config.has_asa:
        notes.append(f"{config.variant} has no ASA head: the asa graph is skipped and search is meanP only")
    engine_infos = []
    for label, eng in backends:
        info = _info(eng)
        info["label"] = label
        engine_infos.append(info)
    members = list(zip(backends, engine_infos, strict=True))
    monitor = LoadMonitor()
    with progress_bar(len(graph_list) * len(sizes) * len(members) * (repeats + warmup), "benchmarking",
                      progress) as tick:
        for graph in graph_list:
            for b in sizes:
                group = []
                for (label, eng), info in members:
                    fn = runner(eng, graph, b)
                    limit = (getattr(eng, "max_batch", None) or {}).get(ENGINE_GRAPH[graph] or "text_encoder")
                    if fn is None or (limit is not None and b > limit):
                        if fn is not None:
                            notes.append(f"{label}: {graph} batch {b} exceeds the engine's max batch {limit}; "
                                         "skipped")
                        tick(repeats + warmup)
                        continue
                    group.append((label, info, fn))
                with monitor.block(f"{graph} batch {b}"):
                    timings = time_interleaved([g[2] for g in group], repeats, warmup, tick)
                for stats, (label, info, _) in zip(timings, group, strict=True):
                    results.append(_row(label, info, graph, b, latency_stats(stats, b), repeats, config.frames,
                                        flops_per_item.get((graph, b)),
                                        {"index_size": index_size, "rerank_top": m_top} if graph == "search"
                                        else {}))
    for row in results:
        base = next((r for r in results if r["engine"] == "torch eager" and r["graph"] == row["graph"]
                     and r["batch_size"] == row["batch_size"]), None)
        row["ratio_vs_torch"] = row["throughput"] / base["throughput"] if base else None
        # min-latency ratio: the least-disturbed call of each, robust to load from other processes
        row["ratio_vs_torch_best"] = base["min_ms"] / row["min_ms"] if base and row["min_ms"] > 0 else None

    adapter_cost = None
    if compare_meanp and "video" in graph_list and config.use_lorm:
        with monitor.block("adapter cost (RAP vs meanP)"):
            adapter_cost = _adapter_cost(model, frames, mask, repeats, warmup)
    load = monitor.summary()
    for row in results:
        row["ratio_reliable"] = load["clean"]
    if not load["clean"]:
        notes.insert(0, "the machine was not quiet, so every ratio is unreliable: " + "; ".join(load["reasons"]))

    ort_threads = [i.get("threads") for i in engine_infos if i.get("backend") == "onnxruntime"]
    result: dict[str, Any] = {
        "device": reports.device_info(),
        "clean": load["clean"],
        "load": load,
        "results": results,
        "gflops": gflops,
        "adapter_cost": adapter_cost,
        "threads": {"torch": torch.get_num_threads(), "requested": threads,
                    "onnxruntime_intra_op": (ort_threads[0] if ort_threads else None) or
                    ("onnxruntime default (one per physical core)" if ort_threads else None)},
        "versions": reports.library_versions(),
        "engines": engine_infos,
        "checkpoint": str(ckpt_path),
        "model": {**{k: v for k, v in config.to_dict().items() if k != "preprocess"},
                  "image_size": config.preprocess.image_size, "patches": model.num_patches,
                  "embed_dim": model.embed_dim, **model.parameter_counts()},
        "inputs": inputs,
        "index": {"videos": index_size, "rerank_top": m_top, "bytes_per_video": index_bytes_per_video(index),
                  "kind": "random unit-norm frame embeddings and patch tokens, every tensor in its INDEX_DTYPES dtype "
                          "(patch tokens fp16); asa_tokens computed by the model from the stored patch tokens"}
        if index is not None else None,
        "search_vs_video_p50": search_vs_video(results),
        "settings": {"batch_sizes": sizes, "repeats": repeats, "warmup": warmup, "graphs": graph_list,
                     "index_size": index_size, "rerank_top": top_m, "seed": seed, "torch_device": torch_device,
                     "flops": "torch.utils.flop_counter on the PyTorch model: matmul, conv and attention FLOPs "
                              "(multiply-add = 2); element-wise work not counted"},
        "notes": notes,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    with folder_lock(out_dir, "bench", "report folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "bench.json", result)
        write_text_atomic(out_dir / "bench.md", reports.bench_markdown(result))
        reports.plot_bench(result, out_dir / "bench.png")
    result["out"] = str(out_dir)
    for _, eng in backends:
        if hasattr(eng, "close"):
            eng.close()
    if echo is not None:
        echo(result)
    return result


def _check_input_memory(config: Any, model: Any, max_batch: int, index_size: int, graphs: list[str]) -> None:
    """Refuse batch sizes / index sizes whose input buffers alone would not fit in memory (UsageError, exit 2)."""
    from rap_deploy.bounds import check_memory

    t, s = config.frames, config.preprocess.image_size
    nbytes = max_batch * t * 3 * s * s * 4 if "video" in graphs else 0
    if "search" in graphs or "asa" in graphs:  # the random index: fp16 patch tokens, fp32 frame and video embeddings
        videos = max(index_size, max_batch)
        nbytes += videos * model.embed_dim * (t * model.num_patches * 2 + t * 4 + 4)
    check_memory(nbytes, f"bench at batch {max_batch} with a {index_size}-video index",
                 "use smaller --batch-sizes or --index-size")

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

Each (backend, graph, batch) gets ``warmup`` untimed calls, then ``repeats`` timed calls (each one engine call from
host arrays to host arrays, copies to and from the device included, preprocessing not:
``bench_report.TIMED_CALL``), interleaved across the backends (one call of each per round, rotating the order) so
that load from other processes on a shared machine hits every backend alike, and a call that follows another
backend's starts once this process's other threads (the previous runtime's spinning thread pool) have parked, at
most 0.2 s later (``bench_timing.settle``; bench.json's ``load.pauses``); latency percentiles are over those
calls (linear interpolation, ``PERCENTILE_METHOD``; with fewer calls than put a percentile at or below the
second-slowest call, 11 for p90 and 101 for p99, a note says it is an interpolated maximum); throughput is items /
mean latency, and the ratio to PyTorch eager is that of the mean latencies (``bench_report.RATIOS``). The model's
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rap_deploy.data import DEFAULT_DATASET
from rap_deploy.engines.base import engine_info
from rap_deploy.engines.bench_index import (  # noqa: F401 - part of the bench API
    SEARCH_TOP,
    index_bytes_per_video,
    random_index,
    search,
    search_vs_video,
)
from rap_deploy.engines.bench_inputs import (  # noqa: F401 - part of the bench API
    BenchInputs,
    prepare_inputs,
    random_frames,
    real_frames,
    template_captions,
)
from rap_deploy.engines.bench_report import (  # noqa: F401 - part of the bench API
    add_ratios,
    bench_report,
    mark_reliability,
    thread_notes,
    write_bench_reports,
)
from rap_deploy.engines.bench_timing import (
    Pauses,
    adapter_cost,
    count_flops,
    latency_stats,
    percentile_notes,
    time_interleaved,
)
from rap_deploy.engines.loader import is_remote
from rap_deploy.engines.machine_load import LoadMonitor, loopback_server_pids
from rap_deploy.errors import UsageError
from rap_deploy.locks import check_writable_folder
from rap_deploy.safe_paths import absent

GRAPHS = ("video", "text", "asa", "search")
UNITS = {"video": "videos/s", "text": "texts/s", "asa": "pairs/s", "search": "queries/s"}
ENGINE_GRAPH = {"video": "video_encoder", "text": "text_encoder", "asa": "asa_head", "search": None}
DEFAULT_BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class BenchSettings:
    """The validated options of one run (see :func:`bench`)."""

    graphs: list[str]
    sizes: list[int]
    repeats: int
    warmup: int
    index_size: int
    top_m: int
    threads: int | None
    seed: int

    @property
    def rerank_top(self) -> int:
        return min(self.top_m, self.index_size)


def bench_settings(graphs: Sequence[str] | str, batch_sizes: Sequence[int], repeats: int, warmup: int,
                   index_size: int, top_m: int, threads: int | None, seed: int) -> BenchSettings:
    """Check the options; raises :class:`UsageError` naming the bad one."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise UsageError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if repeats < 1 or warmup < 0:
        raise UsageError(f"need --repeats >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    if index_size < 1 or top_m < 1:
        raise UsageError(f"need --index-size >= 1 and --rerank-top >= 1, got {index_size} and {top_m}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    return BenchSettings(_parse_graphs(graphs), sizes, repeats, warmup, index_size, top_m, threads, seed)


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
    dataset: str = DEFAULT_DATASET,
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
    ``torch_precision`` (``fp16`` needs CUDA). The machine's load is measured throughout (``load``, ``clean``).

    Raises :class:`UsageError` for bad options or when there is nothing to benchmark.
    """
    import torch

    from rap_deploy.workspace import subdir

    t_start = time.perf_counter()
    settings = bench_settings(graphs, batch_sizes, repeats, warmup, index_size, top_m, threads, seed)
    if threads:
        torch.set_num_threads(int(threads))
    ckpt_path, backends = open_backends(engines, checkpoint, workspace, threads, torch_device, torch_precision)
    try:
        torch_engine = backends[0][1]
        copied = settings.rerank_top if any(not hasattr(e, "asa_similarity_rows") for _, e in backends) else 0
        _check_input_memory(torch_engine.config, torch_engine.model, max(settings.sizes), settings.index_size,
                            settings.graphs, copied)
        inputs = prepare_inputs(torch_engine, settings.graphs, max(settings.sizes), settings.index_size, seed,
                                data_root, dataset, cache, workspace, progress)
        gflops, flops_per_item = count_arithmetic(torch_engine, settings, inputs)  # refuses a batch that cannot fit
        # checked (its parents made) once the engines, sizes and data are accepted, so a refused bench leaves no
        # folder behind; before the timing, not after
        out_dir = check_writable_folder(Path(out) if out is not None else subdir("bench", workspace), "bench",
                                        "report folder")
        servers = [str(e) for e in engines if is_remote(e)]
        # a server's threads run in another process, out of sight of the pauses' watch on this one's CPU time
        pauses = Pauses(watch_process=not servers)
        monitor = LoadMonitor(servers=loopback_server_pids(servers), pause=pauses)
        infos = [{**(engine_info(eng) or {}), "label": label} for label, eng in backends]
        results, notes = time_graphs(backends, infos, settings, inputs, flops_per_item, monitor, progress, pauses)
        notes += thread_notes(infos) + percentile_notes(settings.repeats)
        add_ratios(results)
        cost = None
        if compare_meanp and "video" in settings.graphs and torch_engine.config.use_lorm:
            with monitor.block("adapter cost (RAP vs meanP)"):
                cost = adapter_cost(torch_engine.model, inputs.frames, inputs.mask, repeats, warmup, pauses)
        load = {**monitor.summary(), "pauses": pauses.summary()}
        mark_reliability(results, notes, load)
        result = bench_report(settings, torch_engine, ckpt_path, infos, inputs, results, gflops, cost, load, notes,
                              torch_device=str(torch_engine.device), started=t_start)
        write_bench_reports(out_dir, result)
    finally:
        for _, eng in backends:
            if hasattr(eng, "close"):
                eng.close()
    if echo is not None:
        echo(result)
    return result


# ---------------------------------------------------------------------------------------------------- steps
def open_backends(engines: Sequence[str | os.PathLike[str]], checkpoint: str | os.PathLike[str] | None,
                  workspace: Any, threads: int | None, torch_device: str | None,
                  torch_precision: str) -> tuple[Path, list[tuple[str, Any]]]:
    """The PyTorch reference checkpoint and ``[("torch eager", TorchEngine), (engine, Engine), ...]``.

    Raises :class:`UsageError` for a missing engine or checkpoint, or an engine of another model config.
    """
    import torch

    from rap_deploy.engines.engine_refs import resolve_engine, resolve_reference
    from rap_deploy.engines.loader import is_remote
    from rap_deploy.engines.torch_backend import TorchEngine

    engine_paths = [resolve_engine(e, workspace) for e in engines]  # server URLs stay strings
    if not engine_paths and checkpoint is None:
        engine_paths = [resolve_engine(None, workspace)]
    keys = [p if is_remote(p) else str(p.resolve()) for p in engine_paths]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:  # its rows would appear twice and one plot line would hold both
        raise UsageError(f"--engine {repeated[0]} is given more than once; give each engine once")
    ckpt_path = resolve_reference(engine_paths[0], checkpoint).checkpoint if engine_paths else Path(checkpoint)
    if not ckpt_path.is_file():
        what = ("is a folder; pass the checkpoint file (best.pt)" if ckpt_path.is_dir()
                else absent(ckpt_path) if not ckpt_path.exists() else "is not a regular file (a FIFO or device)")
        raise UsageError(f"checkpoint {ckpt_path} {what}")
    loaded: list[tuple[str, Any]] = []
    try:
        for p in engine_paths:
            if not is_remote(p) and p.is_file() and p.resolve() == ckpt_path.resolve():
                continue  # the reference itself
            loaded.append((str(p), _load(p, threads)))
        if torch_device is None:  # PyTorch eager on the engines' device: a GPU engine is compared with GPU PyTorch
            on_gpu = any((engine_info(e) or {}).get("device", "cpu").startswith("cuda") for _, e in loaded)
            torch_device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
        torch_engine = TorchEngine(ckpt_path, device=torch_device, precision=torch_precision)
        reference = {k: v for k, v in torch_engine.config.to_dict().items() if k != "pretrained"}
        for path, eng in loaded:
            if {k: v for k, v in eng.config.to_dict().items() if k != "pretrained"} != reference:
                raise UsageError(f"engine {path} was built for another model config than {ckpt_path}; pass "
                                 "--checkpoint with its source checkpoint or bench it separately")
    except BaseException:
        for _, eng in loaded:
            eng.close()
        raise
    return ckpt_path, [("torch eager", torch_engine), *loaded]


def count_arithmetic(torch_engine: Any, s: BenchSettings, inputs: BenchInputs
                     ) -> tuple[dict[str, float], dict[tuple[str, int], float]]:
    """GFLOPs per item of each graph, counted once on the PyTorch model: ``(gflops summary, flops per (graph,
    batch))``. Text batches are counted as they run, trimmed to their longest query. This is the first run of each
    batch size, so an allocation failing here is the :class:`UsageError` a timed call's would be."""
    config, x = torch_engine.config, inputs
    gflops: dict[str, float] = {}
    per_item: dict[tuple[str, int], float] = {}
    if "video" in s.graphs:
        per_video = _count("video", 1, lambda: torch_engine.encode_video(x.frames[:1], x.mask[:1]))
        gflops["video_encoder_per_video"] = per_video / 1e9
        gflops["video_encoder_per_frame"] = per_video / 1e9 / config.frames
        per_item.update({("video", b): per_video for b in s.sizes})
    per_text: dict[int, float] = {}
    if "text" in s.graphs or "search" in s.graphs:
        # A batch runs trimmed to its longest query (trim_tokens): each batch is counted as it runs.
        per_text = {b: _count("text", b, lambda b=b: torch_engine.encode_text(x.ids[:b], x.eot[:b])) / b
                    for b in s.sizes}
        per_text[0] = _count("text", 1, lambda: torch_engine.encode_text(x.ids[:1], x.eot[:1]))  # one query alone
        gflops["text_encoder_per_text"] = per_text[0] / 1e9
        per_item.update({("text", b): per_text[b] for b in s.sizes})
    if config.has_asa and ("asa" in s.graphs or "search" in s.graphs):
        for b in s.sizes:
            per_item[("asa", b)] = _count(
                "asa", b, lambda b=b: torch_engine.asa_similarity(x.query_emb, *(r[:b] for r in x.asa_rerank))) / b
        gflops["asa_head_per_pair"] = per_item[("asa", s.sizes[0])] / 1e9
    if "search" in s.graphs:
        m = s.rerank_top
        rerank = _count("search", 1, lambda: torch_engine.asa_similarity(x.query_emb, *x.index.rerank(slice(0, m)))) \
            if config.has_asa else 0
        per_query = {b: t + 2 * s.index_size * torch_engine.model.embed_dim + rerank for b, t in per_text.items()}
        gflops["search_per_query"] = per_query[0] / 1e9
        if config.has_asa:
            gflops["search_rerank_per_pair"] = rerank / m / 1e9
        per_item.update({("search", b): per_query[b] for b in s.sizes})
    return gflops, per_item


def _count(graph: str, batch: int, fn: Callable[[], Any]) -> int:
    """:func:`count_flops` of ``fn``, one run of ``graph`` at ``batch``: running out of memory is a usage error."""
    with _out_of_memory_is_usage(graph, batch):
        return count_flops(fn)


def graph_call(engine: Any, graph: str, batch: int, inputs: BenchInputs, s: BenchSettings, has_asa: bool
               ) -> Callable[[], Any] | None:
    """One timed call of ``graph`` at ``batch`` on ``engine`` (``None``: the model has no such graph)."""
    x = inputs
    if graph == "video":
        return lambda: engine.encode_video(x.frames[:batch], x.mask[:batch])
    if graph == "text":
        return lambda: engine.encode_text(x.ids[:batch], x.eot[:batch])
    if graph == "asa":
        if not has_asa:
            return None
        return lambda: engine.asa_similarity(x.query_emb, *(r[:batch] for r in x.asa_rerank))
    return lambda: search(engine, x.ids[:batch], x.eot[:batch], x.index, s.rerank_top)


def time_graphs(backends: list[tuple[str, Any]], infos: list[dict[str, Any]], s: BenchSettings, inputs: BenchInputs,
                flops_per_item: dict[tuple[str, int], float], monitor: LoadMonitor, progress: bool,
                pause: Callable[[], Any] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Time every (graph, batch) with the backends' calls interleaved (``pause`` before a call that follows another
    backend's), each group inside a load-measured block; returns the ``results`` rows and notes (graphs skipped).
    Raises :class:`UsageError` when every one was skipped."""
    from rap_deploy.data.progress import progress_bar

    config = backends[0][1].config
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    if "asa" in s.graphs and not config.has_asa:
        notes.append(f"{config.variant} has no ASA head: the asa graph is skipped and search is meanP only")
    members = list(zip(backends, infos, strict=True))
    steps = len(s.graphs) * len(s.sizes) * len(members) * (s.repeats + s.warmup)
    with progress_bar(steps, "benchmarking", progress) as tick:
        for graph in s.graphs:
            for b in s.sizes:
                group = []
                for (label, eng), info in members:
                    fn = graph_call(eng, graph, b, inputs, s, config.has_asa)
                    limit = (getattr(eng, "max_batch", None) or {}).get(ENGINE_GRAPH[graph] or "text_encoder")
                    if fn is None or (limit is not None and b > limit):
                        if fn is not None:
                            notes.append(f"{label}: {graph} batch {b} exceeds the engine's max batch {limit}; "
                                         "skipped")
                        tick(s.repeats + s.warmup)
                        continue
                    group.append((label, info, fn))
                with monitor.block(f"{graph} batch {b}"), _out_of_memory_is_usage(graph, b):
                    timings = time_interleaved([g[2] for g in group], s.repeats, s.warmup, tick, pause)
                extra = {"index_size": s.index_size, "rerank_top": s.rerank_top} if graph == "search" else {}
                for stats, (label, info, _) in zip(timings, group, strict=True):
                    results.append(_row(label, info, graph, b, latency_stats(stats, b), s.repeats, config.frames,
                                        flops_per_item.get((graph, b)), extra))
    if not results:
        raise UsageError("nothing to benchmark: " + "; ".join(notes))
    return results, notes


@contextlib.contextmanager
def _out_of_memory_is_usage(graph: str, batch: int) -> Iterator[None]:
    """An allocation that fails inside a timed call (PyTorch's allocator, ONNX Runtime's arena, NumPy: recognised by
    their messages) becomes a :class:`UsageError` naming the graph and batch: the input check before bench counts
    buffers, not activations."""
    try:
        yield
    except MemoryError:
        raise UsageError(f"bench ran out of memory at {graph} batch {batch}; use smaller --batch-sizes") from None
    except Exception as exc:  # PyTorch: RuntimeError; ONNX Runtime: its own RuntimeException (not a RuntimeError)
        text = str(exc).lower()
        if "allocat" not in text and "out of memory" not in text:
            raise
        raise UsageError(f"bench ran out of memory at {graph} batch {batch} ({str(exc).splitlines()[0][:120]}); use "
                         "smaller --batch-sizes") from None


# ---------------------------------------------------------------------------------------------------- helpers
def _parse_graphs(graphs: Sequence[str] | str) -> list[str]:
    items = [g.strip() for g in (graphs.split(",") if isinstance(graphs, str) else graphs) if g.strip()]
    unknown = [g for g in items if g not in GRAPHS]
    if not items:
        raise UsageError(f"--graphs names no graph; use a comma list of {', '.join(GRAPHS)}")
    if unknown:
        raise UsageError(f"unknown graph(s) {unknown}; use a comma list of {', '.join(GRAPHS)}")
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


def _check_input_memory(config: Any, model: Any, max_batch: int, index_size: int, graphs: list[str],
                        copied: int = 0) -> None:
    """Refuse batch sizes / index sizes whose input buffers alone would not fit in memory (UsageError, exit 2).

    ``copied``: the search's candidates per query copied out of the index for an engine that does not read it in
    place (:class:`~rap_deploy.retrieval.CandidateGather`: buffers of that many videos' re-rank tensors)."""
    from rap_deploy.bounds import check_memory

    t, s, p = config.frames, config.preprocess.image_size, model.num_patches
    nbytes = max_batch * t * 3 * s * s * 4 if "video" in graphs else 0
    asa = getattr(model, "asa", None)  # the fp32 asa_tokens the model computes from the patch tokens
    width = getattr(asa, "token_width", None)
    rerank_row = t * p * model.embed_dim * 2 + (t * p * width * 4 if isinstance(width, int) else 0)
    if "search" in graphs or "asa" in graphs:  # the random index: fp16 patch tokens, fp32 frame and video embeddings
        videos = max(index_size, max_batch)
        nbytes += videos * (model.embed_dim * (t * 4 + 4) + rerank_row)
    if "search" in graphs and config.has_asa:
        nbytes += copied * rerank_row
    fix = "use smaller --batch-sizes or --index-size" + (", or a smaller --rerank-top" if copied else "")
    check_memory(nbytes, f"bench at batch {max_batch} with a {index_size}-video index"
                 + (f" and {copied} candidates copied per query" if copied else ""), fix)

"""Scale benchmark of the library (the README's "Search a video library" table).

Two parts, run separately::

    python -m rap_deploy.library.scale_bench stage1 --size 1000000 --dim 512 --threads 1 --out stage1.json
    python -m rap_deploy.library.scale_bench library --size 10000 --engine vitb32.pt --folder /tmp/lib10k \\
        --out library.json

``stage1``: FAISS stage 1 alone over ``--size`` synthetic ``video_emb`` vectors — exact (``IndexFlatIP``), HNSW and
IVF: build time, per-query latency p50/p99 at batch 1, recall@100 against exact search, resident memory.
``library``: the full two-stage search (``Library.search``: text encoder, stage 1, store reads, ASA head) over a
library of ``--size`` videos written to disk with the engine's tensor shapes (synthetic values; the engine, its text
encoder and ASA head are real): p50/p99 per query and per stage, resident memory before and after opening and after
the queries, size on disk per video. The library is written by a child process (so the measured process's memory
peak is the search's) and deleted afterwards unless ``--keep``.

Synthetic vectors (:func:`clustered_vectors`) are a mixture of 1000 clusters, not uniform on the sphere: cluster
centres share a common direction (CLIP embeddings occupy a narrow cone: centre–centre cosine ≈ 0.65), cluster sizes
are log-normal (a few large topics, many small ones), and each vector is its centre plus noise of a per-cluster
spread (cosine to its centre ≈ 0.7–0.9). Centre offsets and noise both follow a power-law spectrum (variance of
principal component i ∝ 1/i, in a fixed random basis), as the PCA spectrum of CLIP embeddings decays: about 28
effective dimensions out of 512, rather than isotropic noise. Queries are drawn from the same mixture plus a fixed
offset direction standing in for CLIP's text–video modality gap. ANN search effort is tuned on one query set and
recall is reported on another.

Memory is read from ``/proc/self/status``: ``VmRSS`` (resident), ``RssAnon`` (the process's own memory) and
``RssFile`` (mapped files), and ``VmHWM`` (peak resident).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.bounds import MAX_THREADS, MAX_VIDEOS, check_float, check_int, check_memory
from rap_deploy.errors import UsageError
from rap_deploy.name_lists import some_names

WORLD_SEED = 1234
DEFAULT_CLUSTERS = 1000
SPECTRUM_DECAY = 1.0


def clustered_vectors(n: int, dim: int, seed: int, queries: bool = False, clusters: int = DEFAULT_CLUSTERS
                      ) -> np.ndarray:
    """``n`` unit vectors ``[n, dim]`` float32 from the fixed cluster mixture described in the module docstring
    (the mixture depends only on ``dim`` and ``clusters``; ``seed`` draws the samples). ``queries`` adds the
    modality-gap offset."""
    world = np.random.default_rng(WORLD_SEED)
    rotation = np.linalg.qr(world.standard_normal((dim, dim)))[0].astype(np.float32)
    scale = 1.0 / np.arange(1, dim + 1) ** (SPECTRUM_DECAY / 2)  # variance of component i ∝ i^-decay
    scale = (scale / np.sqrt((scale ** 2).sum())).astype(np.float32)  # E|noise|^2 = 1

    def spectral(rng: np.random.Generator, m: int) -> np.ndarray:
        return (rng.standard_normal((m, dim), dtype=np.float32) * scale) @ rotation

    common = _unit(world.standard_normal(dim))
    centres = _unit(0.8 * common + 0.6 * _unit(spectral(world, clusters)))
    weights = np.exp(world.normal(0.0, 1.0, clusters))
    spread = world.uniform(0.5, 1.0, clusters).astype(np.float32)
    gap = _unit(world.standard_normal(dim))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        k = rng.choice(clusters, m, p=weights / weights.sum())
        x = centres[k] + spread[k, None] * spectral(rng, m) + (0.5 * gap if queries else 0.0)
        out[start:start + m] = _unit(x)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


_STATUS = Path("/proc/self/status")


def memory() -> dict[str, float]:
    """Resident memory of this process in MiB: ``rss``, ``anon``, ``file``, ``peak`` (from ``/proc/self/status``;
    without it ``rss`` and ``peak`` only, from psutil and ``getrusage``)."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    out: dict[str, float] = {}
    try:
        for line in _STATUS.read_text().splitlines():
            key = line.split(":")[0]
            if key in fields:
                out[fields[key]] = round(int(line.split()[1]) / 1024, 1)
    except OSError:  # not Linux (macOS): every caller reads rss and peak
        import resource

        import psutil

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
        out["rss"] = round(psutil.Process().memory_info().rss / 2**20, 1)
        out["peak"] = round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)
    return out


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def _cpu() -> str:
    from rap_deploy.engines.report_env import cpu_model  # a benchmark entry point, like _load_engine below

    return cpu_model()


def _environment(threads: int) -> dict[str, Any]:
    import faiss

    return {"cpu": _cpu(), "cores": os.cpu_count(), "threads": threads, "load_avg": list(os.getloadavg()),
            "faiss": faiss.__version__}


# ------------------------------------------------------------------------------------------------------- stage 1
def bench_stage1(size: int, dim: int, kinds: list[str], queries: int, tune_queries: int, k: int, target: float,
                 threads: int, exact_queries: int = 100, log: Any = print) -> dict[str, Any]:
    """Stage 1 alone over ``size`` clustered vectors for each index kind; see the module docstring."""
    import faiss

    from rap_deploy.library import stage1

    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    base = clustered_vectors(size, dim, seed=0)
    ids = np.arange(size, dtype=np.int64)
    q_tune = clustered_vectors(tune_queries, dim, seed=1, queries=True)
    q_eval = clustered_vectors(queries, dim, seed=2, queries=True)
    log(f"generated {size} x {dim} vectors in {time.perf_counter() - t0:.1f} s")
    result: dict[str, Any] = {"size": size, "dim": dim, "k": k, "target_recall": target, "queries": queries,
                              "tune_queries": tune_queries, "vectors_mib": round(base.nbytes / 2 ** 20, 1),
                              "environment": _environment(threads), "indexes": []}
    truth_eval = truth_tune = None
    for kind in ["exact", *[x for x in kinds if x != "exact"]]:
        before = memory()
        t1 = time.perf_counter()
        train = base[np.random.default_rng(0).choice(size, min(size, 64 * stage1.ivf_lists(size)), replace=False)] \
            if kind == "ivf" else None
        index = stage1.new_index(kind, dim, train)
        stage1.add(index, base, ids)
        build = time.perf_counter() - t1
        log(f"{kind}: built in {build:.1f} s")
        if kind == "exact":
            truth_eval = stage1.search(index, kind, q_eval, k)[1]
            truth_tune = stage1.search(index, kind, q_tune, k)[1]
        tuning = stage1.tune(index, kind, q_tune, truth_tune, k, target)
        lat = []
        for i in range(min(10, queries)):  # warm-up
            stage1.search(index, kind, q_eval[i:i + 1], k, tuning.effort)
        timed = min(queries, exact_queries) if kind == "exact" else queries  # exact at 1M: ~0.1-0.5 s a query
        found = np.empty((timed, k), dtype=np.int64)
        for i in range(timed):
            t2 = time.perf_counter()
            found[i] = stage1.search(index, kind, q_eval[i:i + 1], k, tuning.effort)[1][0]
            lat.append((time.perf_counter() - t2) * 1000)
        entry = {"type": kind, "build_seconds": round(build, 2), "effort": tuning.effort,
                 "recall_at_k": round(stage1.recall_at(found, truth_eval[:timed]), 4), "timed_queries": timed,
                 "tuning_recall": round(tuning.recall, 4), "tuning": tuning.tried, **_percentiles(lat),
                 "memory_mib": memory(), "index_mib": round(memory()["rss"] - before["rss"], 1)}
        log(f"{kind}: p50 {entry['p50_ms']} ms, p99 {entry['p99_ms']} ms, recall@{k} {entry['recall_at_k']}, "
            f"effort {tuning.effort}, RSS {entry['memory_mib'].get('rss')} MiB")
        result["indexes"].append(entry)
        del index
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["environment"]["load_avg_end"] = list(os.getloadavg())
    return result


# ------------------------------------------------------------------------------------------------------- library
def write_synthetic_library(folder: Path, engine: Any, size: int, shard_size: int = 256, seed: int = 0,
                            log: Any = print) -> dict[str, Any]:
    """A library of ``size`` videos with the engine's tensor shapes and dtypes (synthetic unit-norm values;
    ``video_emb`` from :func:`clustered_vectors`) and an exact stage 1; returns the manifest."""
    from rap_deploy.config import FrameSamplingConfig
    from rap_deploy.engines.base import engine_info
    from rap_deploy.graphs import video_outputs
    from rap_deploy.library.assemble import Assembly, Stage1Request, build_stage1, write_library_manifest
    from rap_deploy.library.manifest import model_identity, store_tensors, tensor_dtype
    from rap_deploy.library.shards import shard_name, write_shard

    cfg = engine.config
    has_asa = bool(getattr(engine, "has_asa", cfg.has_asa))
    s = cfg.preprocess.image_size
    probe = engine.encode_video(np.zeros((1, cfg.frames, 3, s, s), np.float32), np.ones((1, cfg.frames), np.float32))
    shapes = {name: list(np.asarray(x).shape[1:]) for name, x in zip(video_outputs(has_asa), probe, strict=True)}
    keep = store_tensors(has_asa)
    dim = shapes["video_emb"][0]
    rng = np.random.default_rng(seed)
    entries = []
    t0 = time.perf_counter()
    for n, start in enumerate(range(0, size, shard_size)):
        rows = min(shard_size, size - start)
        arrays = {"video_emb": clustered_vectors(rows, dim, seed=seed + 10 + n)}
        for name in keep[1:]:
            x = rng.standard_normal((rows, *shapes[name]), dtype=np.float32)
            arrays[name] = _unit(x).astype(tensor_dtype(name))
        vids = [f"v{start + i:07d}" for i in range(rows)]
        meta = {"video_id": vids, "path": [f"/synthetic/{v}.mp4" for v in vids], "start": [None] * rows,
                "end": [None] * rows, "sha256": [""] * rows}
        entries.append(write_shard(folder, shard_name(n), start, arrays, meta, []))
        if n % 8 == 0:
            log(f"wrote {start + rows}/{size} videos ({time.perf_counter() - t0:.0f} s)")
    asm = Assembly(shards=entries)
    query_emb = clustered_vectors(200, dim, seed=seed + 1, queries=True)
    st, tombs = build_stage1(folder, None, asm, entries, dim, Stage1Request(kind="exact", query_emb=query_emb,
                                                                             query_source="synthetic"), build=1)
    model = model_identity(engine, FrameSamplingConfig(max_frames=cfg.frames))
    info = engine_info(engine)
    build = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "added": size, "skipped": [], "removed": [],
             "world_size": 1, "resumed": False}
    return write_library_manifest(folder, None, model, info, asm, tombs, st, {k: shapes[k] for k in keep},
                                  len(entries), len(entries) * shard_size, build, {"kind": "synthetic", "size": size})


def bench_library(folder: Path, engine: Any, queries: int, top_k: int, top_m: int, verify: str,
                  baseline: dict[str, float], log: Any = print) -> dict[str, Any]:
    """Open the library at ``folder`` and time ``queries`` searches one at a time (after 3 warm-up queries)."""
    from rap_deploy.library import open_library

    before = memory()
    t0 = time.perf_counter()
    lib = open_library(folder, engine, verify=verify)
    open_s = time.perf_counter() - t0
    after_open = memory()
    log(f"opened {len(lib)} videos in {open_s:.1f} s (verify={verify}); RSS {after_open.get('rss')} MiB")
    texts = _captions(queries + 3)
    for t in texts[:3]:
        lib.search([t], top_k=top_k, top_m=top_m)
    per_stage: dict[str, list[float]] = {"text": [], "stage1": [], "rerank": [], "rerank_read": [], "total": []}
    for t in texts[3:]:
        r = lib.search([t], top_k=top_k, top_m=top_m)[0]
        for key in per_stage:
            per_stage[key].append(r["timings_ms"][key])
    after = memory()
    d = lib.describe()
    lib.close()
    stage1_mib = round(len(lib) * d["model"]["tensor_shapes"]["video_emb"][0] * 4 / 2 ** 20, 1)
    return {"videos": d["videos"], "top_k": top_k, "top_m": top_m, "queries": queries, "verify": verify,
            "open_seconds": round(open_s, 2), "bytes_per_video": d["bytes_per_video"],
            "bytes_on_disk": d["bytes_on_disk"], "timings": {k: _percentiles(v) for k, v in per_stage.items()},
            "memory_mib": {"engine_loaded": baseline, "before_open": before, "after_open": after_open,
                           "after_queries": after},
            "stage1_vectors_mib": stage1_mib,
            "library_rss_mib": round(max(after["rss"], after["peak"]) - baseline["peak"], 1),
            "library_rss_increase_mib": round(after["rss"] - baseline["rss"], 1), "peak_rss_mib": after["peak"],
            "target_mib": round(stage1_mib + 1024, 1), "engine": d["engine"]}


def _warm_up(engine: Any, folder: Path, top_m: int) -> None:
    """One text encoding and one ASA call on ``top_m`` random candidates: the engine's own first-call allocations
    belong to the baseline, not to the library."""
    from rap_deploy.library.manifest import tensor_dtype
    from rap_deploy.retrieval import encode_texts

    manifest = json.loads((folder / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    text = encode_texts(engine, ["warm up"])
    rerank = [_unit(rng.standard_normal((top_m, *manifest["tensor_shapes"][n]), dtype=np.float32)).astype(
        tensor_dtype(n)) for n in manifest["model"]["tensors"][1:]]
    if rerank:
        engine.asa_similarity(text, *rerank)


def _captions(n: int) -> list[str]:
    colours = ("red", "green", "blue", "yellow", "purple", "white")
    shapes = ("circle", "square", "triangle", "star")
    motions = ("moves to the left", "moves up", "spins", "bounces", "grows", "fades out")
    rng = np.random.default_rng(0)
    return [f"a {rng.choice(colours)} {rng.choice(shapes)} {rng.choice(motions)} then a {rng.choice(colours)} "
            f"{rng.choice(shapes)} {rng.choice(motions)}" for _ in range(n)]


# ------------------------------------------------------------------------------------------------------- main
def _load_engine(path: str, threads: int) -> Any:
    # The one place this core package reaches into the engines stage: a benchmark entry point, like the CLI.
    from rap_deploy.engines.loader import load_engine

    engine = load_engine(path, threads=threads, lazy=True)  # like `rapdeploy search`: text encoder + ASA head
    if "torch" in sys.modules:  # a PyTorch engine; an ONNX Runtime search process never imports torch
        sys.modules["torch"].set_num_threads(threads)
    return engine


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: ``stage1``, ``library`` or ``make-library`` (the child that writes the library)."""
    p = argparse.ArgumentParser(prog="python -m rap_deploy.library.scale_bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    s1 = sub.add_parser("stage1", help="FAISS stage 1 alone over synthetic clustered vectors")
    s1.add_argument("--size", type=int, default=1_000_000)
    s1.add_argument("--dim", type=int, default=512)
    s1.add_argument("--ann", default="hnsw,ivf", help="comma list of hnsw, ivf (exact always runs)")
    s1.add_argument("--queries", type=int, default=1000)
    s1.add_argument("--tune-queries", type=int, default=200)
    s1.add_argument("--k", type=int, default=100)
    s1.add_argument("--target-recall", type=float, default=0.95)
    s1.add_argument("--exact-queries", type=int, default=100, help="queries timed on the exact index")
    for sp in (s1, lib := sub.add_parser("library", help="two-stage search over a library on disk"),
               mk := sub.add_parser("make-library", help="write a synthetic library (used by `library`)")):
        sp.add_argument("--threads", type=int, default=1)
        sp.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    for sp in (lib, mk):
        sp.add_argument("--size", type=int, default=10_000)
        sp.add_argument("--engine", required=True, help="engine folder, export folder or checkpoint")
        sp.add_argument("--folder", type=Path, required=True, help="library folder (created if absent)")
        sp.add_argument("--shard-size", type=int, default=256)
    lib.add_argument("--queries", type=int, default=100)
    lib.add_argument("--top", type=int, default=10)
    lib.add_argument("--top-m", type=int, default=100)
    lib.add_argument("--verify", default="quick", choices=("full", "quick"))
    lib.add_argument("--keep", action="store_true", help="keep the library folder afterwards")
    args = p.parse_args(argv)
    _check_out(p, args.out)  # before a run that can last an hour, not at its end
    _check_options(p, args)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.part == "stage1":
        kinds = [k for k in args.ann.replace(" ", "").split(",") if k]
        result = bench_stage1(args.size, args.dim, kinds, args.queries, args.tune_queries, args.k,
                              args.target_recall, args.threads, args.exact_queries, log)
    elif args.part == "make-library":
        engine = _load_engine(args.engine, args.threads)
        result = {"manifest_bytes_per_video": write_synthetic_library(args.folder, engine, args.size,
                                                                      args.shard_size, log=log)["bytes_per_video"]}
    else:
        if _folder_state(args.folder) == "other":
            shown = some_names(sorted(p.name for p in args.folder.iterdir())) if args.folder.is_dir() else "a file"
            p.error(f"--folder {args.folder} holds other files than a library ({shown}); the benchmark deletes the "
                    "library it writes: give a new or empty folder")
        result = _run_library(args, log)
    text = json.dumps(result, indent=2, default=str)
    print(text)  # first: a write that fails still leaves the result on stdout
    if args.out:
        from rap_deploy.atomic import write_text_atomic

        try:
            write_text_atomic(args.out, text + "\n")
        except OSError as exc:
            p.exit(2, f"error: cannot write --out {args.out} ({exc.strerror or exc}); the result is on stdout\n")
    return result


def _folder_state(folder: Path) -> str:
    """``library`` (holds a manifest: searched as is), ``absent``, ``empty``, or ``other`` (holds other files:
    never written into, since the library written there is deleted afterwards)."""
    if (folder / "manifest.json").is_file():
        return "library"
    if not folder.exists():
        return "absent"
    return "empty" if folder.is_dir() and not any(folder.iterdir()) else "other"


def _remove_written(folder: Path, state: str) -> None:
    """Delete the library this run wrote: the folder when it created it, else (an empty folder) its contents."""
    if state == "absent":
        shutil.rmtree(folder, ignore_errors=True)
    elif state == "empty" and folder.is_dir():
        for child in folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


# The largest value of each count option (the library's video bound; a dimension far past any CLIP's).
_COUNTS = {"size": MAX_VIDEOS, "dim": 65536, "queries": MAX_VIDEOS, "tune_queries": MAX_VIDEOS,
           "exact_queries": MAX_VIDEOS, "k": MAX_VIDEOS, "threads": MAX_THREADS, "shard_size": MAX_VIDEOS,
           "top": MAX_VIDEOS, "top_m": MAX_VIDEOS}


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 (one line) for a count out of range, a target recall outside (0, 1], or stage 1's vectors not fitting
    in memory, before any work: a zero ``--queries`` ended a run of up to an hour in an ``IndexError``."""
    try:
        for name, high in _COUNTS.items():
            if hasattr(args, name):
                check_int(getattr(args, name), "--" + name.replace("_", "-"), 1, high)
        if args.part == "stage1":
            if args.k > args.size:
                raise UsageError(f"--k {args.k} is more than --size {args.size}: there are only that many vectors")
            check_float(args.target_recall, "--target-recall", 0.0, 1.0, low_open=True)
            # the generated vectors and the index holding a copy of them
            check_memory(2 * args.size * args.dim * 4, f"{args.size:,} x {args.dim} fp32 vectors and their index",
                         "use a smaller --size or --dim")
    except UsageError as exc:
        parser.error(str(exc))


def _check_out(parser: argparse.ArgumentParser, out: Path | None) -> None:
    """Exit 2 (one line) when ``--out`` cannot become a file: a folder, or a path under a file."""
    from rap_deploy.atomic import output_file_problem

    problem = output_file_problem(out) if out is not None else None
    if problem is not None:
        parser.error(f"--out {problem}")


def _run_library(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    state = _folder_state(args.folder)
    created = state in ("absent", "empty")
    try:
        if created:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "rap_deploy.library.scale_bench", "make-library", "--size", str(args.size),
                   "--engine", str(args.engine), "--folder", str(args.folder), "--shard-size", str(args.shard_size),
                   "--threads", str(args.threads)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            log(f"wrote the library in {time.perf_counter() - t0:.0f} s")
        engine = _load_engine(args.engine, args.threads)
        _warm_up(engine, args.folder, args.top_m)
        baseline = memory()
        result = bench_library(args.folder, engine, args.queries, args.top, args.top_m, args.verify, baseline, log)
        result["environment"] = _environment(args.threads)
        return result
    finally:
        if created and not args.keep:
            _remove_written(args.folder, state)


if __name__ == "__main__":
    main()

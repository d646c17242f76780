"""``rapdeploy verify`` (recall parity, engine vs PyTorch) and ``rapdeploy bench`` (throughput and latency)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from rap_deploy import bounds
from rap_deploy.atomic import json_text
from rap_deploy.cli.app import ENGINE_THREADS_DEFAULT, WORKSPACE_DEFAULT, command
from rap_deploy.data import DATASET_NAMES, DEFAULT_DATASET
from rap_deploy.errors import UsageError

# verify's --tie-eps at most: fp32 engines differ from PyTorch by ~1e-6 in a score; a gap of 0.01 is a
# different score (tie_eps 1 let an engine of random weights pass with t2v R@1 25 -> 0)
MAX_TIE_EPS = 1e-2


def _progress_enabled(quiet: bool, json_out: bool) -> bool:
    return not quiet and not json_out  # a bar on a terminal, else timed lines (progress_bar decides)


def _parse_ints(text: str, option: str, high: int = bounds.MAX_BATCH_SIZE) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{option} takes a comma list of integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} takes positive integers, got '{text}'")
    return bounds.check_ints(values, option, 1, high)


def _check_device(value: str | None, option: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``; anything else is a usage error (exit 2)."""
    if value is None or value in ("cpu", "cuda") or re.fullmatch(r"cuda:\d{1,3}", value):
        return
    raise UsageError(f"{option} must be cpu, cuda or cuda:N, got '{value}'")


def _echo_json(result: dict) -> None:
    typer.echo(json_text(result, default=str))


@command("verify")
def verify_cmd(
    dataset: str = typer.Option(..., "--dataset", help=f"Dataset format: {DATASET_NAMES}."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Dataset folder (default: $RAPDEPLOY_DATA)."),
    engine: str | None = typer.Option(None, "--engine", help="Engine folder from `rapdeploy build-engine` (or a .pt "
                                       "for the PyTorch engine, or http://HOST:PORT for a running `rapdeploy serve` "
                                       "or Triton); default: the workspace's latest engine."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Reference checkpoint (default: the one named "
                                            "in the engine's manifest, checked by sha256)."),
    tolerance: float | None = typer.Option(None, "--tolerance", help="Largest allowed |ΔR@K| in points for fp16/int8 "
                                            "engines (default 0.5), unless the queries crossing K explain the change "
                                            "as flips of near-tied candidates (|gained - lost| <= 2·sqrt(gained + "
                                            "lost)); fp32 engines must change no rank beyond ties (verify.json's "
                                            "tolerance: the limit applied, null for fp32 without this option)."),
    rerank_top: int = typer.Option(100, "--rerank-top", help="Two-stage search: candidates M re-ranked by ASA."),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default: <workspace>/verify/<engine name>; "
                                    "<run>-best for a run's best.pt, <run>-last for its last.pt, "
                                    "remote-HOST-PORT for http://HOST:PORT, remote-https_HOST-PORT for https://; "
                                    "followed by @<split> for a --split "
                                    "other than the dataset's test split, e.g. <engine name>@train; and by "
                                    f"+<dataset> before that for a --dataset other than {DEFAULT_DATASET}, e.g. "
                                    "<engine name>+msvd, <engine name>+msvd@val)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate (test; ActivityNet test = val_1)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Videos per video-encoder call."),
    tie_eps: float = typer.Option(1e-5, "--tie-eps", help="Score gap under which a rank change of an fp32 engine "
                                  f"counts as a tie (at most {MAX_TIE_EPS:g})."),
    max_videos: int | None = typer.Option(None, "--max-videos", help="Only the first N test videos (quick check)."),
    allow_skipped: bool = typer.Option(False, "--allow-skipped", help="Pass on the test videos that decode when some "
                                       "are missing or undecodable (named and counted in the reports either way); "
                                       "without it such a run exits 1."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads for PyTorch and ONNX Runtime "
                                       f"(default: the libraries' own; {ENGINE_THREADS_DEFAULT})."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Decoded-frame cache (default: "
                                           "<workspace>/cache/frames)."),
    reference_device: str = typer.Option("cpu", "--reference-device", help="Where the PyTorch reference runs: cpu, "
                                         "or cuda (strict fp32, TF32 off) for large test sets on a GPU machine."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    json_out: bool = typer.Option(False, "--json", help="Print verify.json to stdout instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars and no table; only the verdict line."),
) -> None:
    """Recall parity of an engine against PyTorch: full ASA, two-stage and meanP metrics, deltas, rank changes.

    Writes verify.json, verify.md and verify.png; exits 1 when parity fails, or when test videos are missing or
    undecodable (unless --allow-skipped).
    """
    from rap_deploy.engines.reports import print_verify, skipped_line
    from rap_deploy.engines.verify import verify

    if tolerance is not None:
        bounds.check_float(tolerance, "--tolerance", 0.0, 100.0)
    bounds.check_float(tie_eps, "--tie-eps", 0.0, MAX_TIE_EPS, fix="a larger score gap is no tie but a different "
                       "score: judge a reduced-precision engine by --tolerance instead")
    bounds.check_int(rerank_top, "--rerank-top", 1, bounds.MAX_VIDEOS)
    bounds.check_int(batch_size, "--batch-size", 1, bounds.MAX_BATCH_SIZE)
    if max_videos is not None:
        bounds.check_int(max_videos, "--max-videos", 1, bounds.MAX_VIDEOS)
    bounds.check_threads(threads)
    _check_device(reference_device, "--reference-device")

    def echo(result: dict) -> None:
        if json_out:
            _echo_json(result)
        elif quiet:
            skipped = skipped_line(result, shown=3)
            typer.echo(f"verify {'passed' if result['passed'] else 'FAILED'}: {result['out']}"
                       + (f" ({skipped})" if skipped else ""))
        else:
            print_verify(result)

    verify(dataset, data_root, engine, checkpoint=checkpoint, tolerance=tolerance, top_m=rerank_top, out=out,
           split=split, cache=cache_dir, progress=_progress_enabled(quiet, json_out), batch_size=batch_size,
           tie_eps=tie_eps, workspace=workspace, max_videos=max_videos, threads=threads,
           reference_device=reference_device, echo=echo, allow_skipped=allow_skipped)


@command("bench")
def bench_cmd(
    engine: list[str] | None = typer.Option(None, "--engine", help="Engine folder to benchmark (or a .pt checkpoint "
                                             "for the PyTorch engine), or http://HOST:PORT of a running server "
                                             "(repeatable); default: the workspace's latest engine, or none with "
                                             "--checkpoint."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="PyTorch reference checkpoint (default: the "
                                            "one named in the first engine's manifest)."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma list of batch sizes."),
    repeats: int = typer.Option(10, "--repeats", help="Timed calls per (backend, graph, batch)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed calls before timing."),
    index_size: int = typer.Option(1000, "--index-size", help="Videos in the search index (random unit vectors)."),
    rerank_top: int = typer.Option(100, "--rerank-top", help="Search: candidates M re-ranked by ASA."),
    graphs: str = typer.Option("video,text,asa,search", "--graphs", help="Comma list of video, text, asa, search."),
    out: Path | None = typer.Option(None, "--out", help="Report folder (default: <workspace>/bench)."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads for PyTorch and ONNX Runtime "
                                        f"(default: the libraries' own; {ENGINE_THREADS_DEFAULT})."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Use real test frames and captions from this "
                                           "dataset folder (default: random frames)."),
    dataset: str | None = typer.Option(None, "--dataset", help=f"Dataset format of --data-root: {DATASET_NAMES} "
                                       f"(default {DEFAULT_DATASET})."),
    compare_meanp: bool = typer.Option(True, "--compare-meanp/--no-compare-meanp", help="Also time the video encoder "
                                       "of the same CLIP with meanP and no adapters (batch 1) and report the ratio."),
    torch_device: str | None = typer.Option(None, "--torch-device", help="Where PyTorch eager runs: cpu or cuda "
                                            "(default: cuda when a benchmarked engine runs on CUDA)."),
    workspace: Path | None = typer.Option(None, "--workspace", help=f"Workspace folder ({WORKSPACE_DEFAULT})."),
    json_out: bool = typer.Option(False, "--json", help="Print bench.json to stdout instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar and no table; only where the reports are."),
) -> None:
    """Throughput and latency (p50/p90/p99) per backend, graph and batch size, vs PyTorch eager.

    Writes bench.json, bench.md and bench.png.
    """
    from rap_deploy.engines.bench import bench
    from rap_deploy.engines.bench_format import load_line
    from rap_deploy.engines.bench_table import print_bench

    bounds.check_int(repeats, "--repeats", 1, bounds.MAX_REPEATS)
    bounds.check_int(warmup, "--warmup", 0, bounds.MAX_REPEATS)
    bounds.check_int(index_size, "--index-size", 1, bounds.MAX_VIDEOS)
    bounds.check_int(rerank_top, "--rerank-top", 1, bounds.MAX_VIDEOS)
    bounds.check_threads(threads)
    _check_device(torch_device, "--torch-device")
    _check_bench_dataset(dataset, data_root)

    def echo(result: dict) -> None:
        if json_out:
            _echo_json(result)
        elif quiet:
            typer.echo(f"bench: {result['out']}")
        else:
            print_bench(result)
        if (json_out or quiet) and not result["clean"]:
            typer.echo(load_line(result), err=True)

    bench(engine or [], checkpoint=checkpoint, batch_sizes=_parse_ints(batch_sizes, "--batch-sizes"),
          repeats=repeats, warmup=warmup, index_size=index_size, graphs=graphs, out=out, threads=threads,
          progress=_progress_enabled(quiet, json_out), data_root=data_root, dataset=dataset or DEFAULT_DATASET,
          top_m=rerank_top,
          compare_meanp=compare_meanp, workspace=workspace, torch_device=torch_device, echo=echo)


def _check_bench_dataset(dataset: str | None, data_root: Path | None) -> None:
    """Refuse (:class:`UsageError`, exit 2) an unknown ``--dataset``, and one given without ``--data-root``: bench then
    times random frames, so the name would be ignored and the run look as if it had read that dataset."""
    if dataset is None:
        return
    from rap_deploy.data.datasets import check_dataset

    check_dataset(dataset)
    if data_root is None:
        raise UsageError(f"--dataset {dataset} names the layout of --data-root; pass --data-root too (without it "
                         "bench times random frames and captions)")

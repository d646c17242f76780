"""The offline-default pipeline behind ``rapdeploy demo`` (DESIGN.md §10) and the world ``rapdeploy ablate`` uses.

synth → backbone (pre-trained once, cached) → init → train (rap; its epoch-0 evaluation is the zero-shot result)
→ export → build-engine (ONNX Runtime fp32 and int8; TensorRT FP16 when TensorRT and a GPU are present) → verify each
engine → bench → library (index the test split, search its first caption).

Every step calls the same library function as the matching command and is skipped when its files, and the files it
read, are what it wrote (:mod:`rap_deploy.cli.demo_steps`), so re-running the demo resumes where it stopped and
makes again what was deleted or damaged. It lives in the CLI layer because it uses every stage; the world (dataset
and backbone) is :mod:`rap_deploy.cli.demo_world`, its sizes and recipe :mod:`rap_deploy.cli.demo_recipe`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rap_deploy.atomic import write_json_atomic
from rap_deploy.cli.demo_guards import check_demo_model, check_demo_training, finished_run
from rap_deploy.cli.demo_recipe import DemoSizes, train_options
from rap_deploy.cli.demo_steps import DEMO_SUMMARY, Steps
from rap_deploy.cli.demo_world import World, prepare_world
from rap_deploy.errors import BackendUnavailableError, CheckFailedError, UsageError
from rap_deploy.workspace import RUN_BEST, RUN_LAST, RUN_METRICS, RUN_SUMMARY


def quantized_tolerance(queries: int, design_tolerance: float = 0.5, design_queries: int = 1000) -> float:
    """The |ΔR@K| limit (points) the demo verifies fp16/int8 engines with on a test split of ``queries`` captions.

    The design's 0.5 points is meant for 1k-query test sets. Quantisation flips the order of near-tied candidates,
    and the recall change those flips make has a standard deviation that grows as 1/sqrt(N) in points, so the same
    false-alarm rate needs 0.5 · sqrt(1000 / N) points: 1.12 at 200 queries. The limit is that, rounded down to whole
    queries (100 / N points each) but at least one query and never below the design's 0.5: 1.0 point (two queries)
    at 200, 1.67 (one query) at 60.
    """
    step = 100.0 / queries
    scaled = design_tolerance * math.sqrt(design_queries / queries)
    return round(max(design_tolerance, step, math.floor(scaled / step + 1e-9) * step) + 1e-6, 4)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _tensorrt_available() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else the reason."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def run_demo(out: Path, sizes: DemoSizes | None = None, progress: bool = True, threads: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole offline pipeline into ``out``; returns the summary written to ``out/summary.json``.
    ``threads`` sets PyTorch's intra-op threads for every step (and ONNX Runtime's in the engine steps).

    Raises :class:`ParityFailedError` after the summary is written when an engine failed its parity check; any other
    error comes from a step, before a summary of this run exists.
    """
    from rap_deploy.locks import folder_lock

    sizes = sizes or DemoSizes()
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"demo folder {out} is a file; pass a folder (--out or --workspace)")
    out.mkdir(parents=True, exist_ok=True)
    if threads:  # every step's PyTorch work (init, training, export, library), not only the steps that take threads
        import torch

        torch.set_num_threads(threads)
    with folder_lock(out, "demo", "demo folder"):  # one demo (or ablate preparing this world) at a time
        return _run_demo_steps(out, sizes, progress, threads, log)


def _run_demo_steps(out: Path, sizes: DemoSizes, progress: bool, threads: int | None,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`run_demo`'s steps, under the demo folder's lock."""
    t_start = time.perf_counter()
    steps = Steps(log, out)
    world = prepare_world(out, sizes, steps, progress, threads)
    run = _DemoRun(out=out, sizes=sizes, steps=steps, world=world, progress=progress, threads=threads, log=log)
    _init_step(run)
    _train_and_results_steps(run)
    _export_step(run)
    built, trt_reason = _build_engine_steps(run)
    verdicts = _verify_steps(run, built)
    bench_result = _bench_step(run, built)
    library_file = _library_step(run, built)
    summary = _demo_summary(run, t_start, verdicts, bench_result, trt_reason, library_file)
    write_json_atomic(out / DEMO_SUMMARY, summary)
    steps.every_step_recorded()
    failed = [v for v in verdicts if not v["passed"]]
    if failed:
        raise ParityFailedError(verify_failure(failed, out / "verify", world.data))
    return summary


def verify_failure(failed: list[dict[str, Any]], verify_dir: Path, data: Path) -> str:
    """The message of a demo whose engines ``failed`` (their summary verdicts) their verify: the engines whose parity
    failed, and apart from them those whose parity held over fewer test videos than ``data``'s split lists (verify
    fails then too: the others are missing or undecodable), so neither is reported as the other."""
    parity = [v["name"] for v in failed if not v.get("parity_passed", False)]
    partial = [v["name"] for v in failed if v.get("parity_passed", False)]
    reasons = ([f"parity failed for {', '.join(parity)}"] if parity else []) + (
        [f"verify of {', '.join(partial)} did not pass: parity held, but over fewer test videos than the split "
         f"lists, the others missing or undecodable (verify.md names them); restore them (delete {data}: the demo "
         f"writes it again) and delete {verify_dir}, whose reports a rerun would otherwise keep"]
        if partial else [])
    return f"{'; '.join(reasons)}; see {verify_dir}"


class ParityFailedError(CheckFailedError):
    """An engine failed its verify (its parity check, or parity over fewer test videos than the split lists);
    raised after ``summary.json`` was written (exit 1)."""


@dataclass(frozen=True)
class _DemoRun:
    """What every demo step needs: the output folder, the sizes, the step runner, the world and the run settings."""

    out: Path
    sizes: DemoSizes
    steps: Steps
    world: World
    progress: bool
    threads: int | None
    log: Callable[[str], None]

    @property
    def init_ckpt(self) -> Path:
        """The identity-adapter checkpoint training starts from."""
        return self.out / "checkpoints" / "init.pt"

    @property
    def run_dir(self) -> Path:
        """The training run's folder."""
        return self.out / "runs" / "rap"

    @property
    def best(self) -> Path:
        """The trained checkpoint every later step uses."""
        return self.run_dir / RUN_BEST

    @property
    def onnx_dir(self) -> Path:
        """The export's folder."""
        return self.out / "onnx"

    @property
    def zero_shot_file(self) -> Path:
        """The zero-shot (epoch-0) evaluation."""
        return self.out / "zero_shot.json"

    @property
    def rap_file(self) -> Path:
        """The evaluation of ``best.pt``."""
        return self.out / "rap_eval.json"


def _init_step(run: _DemoRun) -> None:
    """The ``init`` step: identity adapters on the world's backbone, in the demo's model config."""
    from rap_deploy.cli.model_cmds import build_config
    from rap_deploy.model_summary import init_checkpoint

    sizes, init_ckpt = run.sizes, run.init_ckpt
    config = build_config(sizes.backbone_clip, "rap", sizes.frames, 32, True, True, None, sizes.asa_topk,
                          sizes.asa_heads, sizes.asa_dim, "text", sizes.preset)
    check_demo_model(init_ckpt, config, run.out)
    run.steps.run("init", [init_ckpt], lambda: init_checkpoint(init_ckpt, clip=None, pretrained="none",
                                                               backbone_file=run.world.backbone, config=config,
                                                               embed_backbone=True, seed=sizes.seed),
                  inputs=[run.world.backbone])


def _train_and_results_steps(run: _DemoRun) -> None:
    """The ``train (rap)`` step (resuming a killed run) and the ``results`` step that reads its evaluations."""
    from rap_deploy.locks import folder_lock
    from rap_deploy.train.loop import train_rap

    run_dir = run.run_dir
    options = train_options(run.sizes, run.world.data, run_dir, run.world.frame_cache,
                            checkpoint=str(run.init_ckpt), eval_initial=True)
    check_demo_training(run_dir, options, run.out)

    def train() -> None:
        # The epoch-0 evaluation of the identity adapters is the zero-shot result (frozen backbone, meanP).
        with folder_lock(run_dir, "demo", "run folder"):  # as `rapdeploy train` takes it: never two writers of a run
            why = _not_to_resume(run_dir, run.init_ckpt)
            if why:
                run.log(f"[note] {run_dir} holds {why}: training it again from the start")
                shutil.rmtree(run_dir)
            if (run_dir / RUN_LAST).is_file():  # a killed run resumes, reading this world (the folder may have moved)
                train_rap(None, progress=run.progress, resume=run_dir,
                          overrides={"data_root": options.data_root, "cache_dir": options.cache_dir})
            else:
                train_rap(options, progress=run.progress)

    written = [run_dir / name for name in (RUN_SUMMARY, RUN_BEST, RUN_LAST, RUN_METRICS)]
    run.steps.run("train (rap)", written, train, inputs=[run.init_ckpt, run.world.data / "MSRVTT_data.json"])
    run.steps.run("results", [run.rap_file, run.zero_shot_file],
                  lambda: _write_results(run_dir, run.zero_shot_file, run.rap_file), inputs=written)


def _not_to_resume(run_dir: Path, init_ckpt: Path) -> str | None:
    """Why the run in ``run_dir`` is not to be continued by the train step (None: it is, or there is none): it
    finished (the step is redone because its files changed, and resuming a finished run trains nothing), or it was
    killed while training on another backbone than ``init_ckpt`` holds (the world's backbone was pre-trained again
    since, so the init step made ``init.pt`` again: resumed, the run would go on with the earlier one), or it stopped
    unfinished and its ``last.pt`` was removed since (nothing to resume it from)."""
    from rap_deploy.checkpoint import load_checkpoint

    if finished_run(run_dir):
        return "a finished run whose files changed"
    if not (run_dir / RUN_LAST).is_file():
        from rap_deploy.train.loop import finished_files

        left = finished_files(run_dir)
        # train refuses to start over them, with a fix (another --out) that is not the demo's
        return f"an unfinished run without its {RUN_LAST} ({', '.join(left)}), which cannot be resumed" \
            if left else None
    had, has = load_checkpoint(run_dir / RUN_LAST).backbone.sha256, load_checkpoint(init_ckpt).backbone.sha256
    if had != has:
        return f"a killed run on another backbone (sha256 {str(had)[:12]}…; {init_ckpt.name} holds {str(has)[:12]}…)"
    return None


def _export_step(run: _DemoRun) -> None:
    """The ``export`` step: ``best.pt`` to ONNX (with fp16 graphs where TensorRT can use them)."""
    from rap_deploy.export import export_checkpoint

    run.steps.run("export", [run.onnx_dir / "manifest.json", run.onnx_dir], lambda: export_checkpoint(
        run.best, run.onnx_dir, fp16=_tensorrt_available() is None, force=True, data_root=run.world.data,
        progress=run.progress), inputs=[run.best])


def _build_engine_steps(run: _DemoRun) -> tuple[list[str], str | None]:
    """The ``build-engine`` steps; returns the names of the engines built and why TensorRT was skipped (or None)."""
    from rap_deploy.engines.build import build_engine

    engines: list[tuple[str, dict[str, Any]]] = [
        ("onnxruntime-fp32", {"backend": "onnxruntime"}),
        ("onnxruntime-int8", {"backend": "onnxruntime", "int8": True}),
    ]
    trt_reason = _tensorrt_available()
    if trt_reason is None:
        engines.append(("tensorrt-fp16", {"backend": "tensorrt", "fp16": True, "device": "cuda"}))
    else:
        run.log(f"[skip] build-engine tensorrt-fp16: {trt_reason} (ONNX Runtime engines only)")
    built: list[str] = []
    for name, kw in engines:
        target = run.out / "engines" / name
        try:
            run.steps.run(f"build-engine {name}", [target / "manifest.json", target],
                          lambda t=target, k=kw: build_engine(run.onnx_dir, out=t, force=True, threads=run.threads,
                                                              progress=run.progress, **k),
                          inputs=[run.onnx_dir])
            built.append(name)
        except BackendUnavailableError as exc:
            run.log(f"[skip] build-engine {name}: {exc}")
    return built, trt_reason


def _verify_steps(run: _DemoRun, built: list[str]) -> list[dict[str, Any]]:
    """The ``verify`` step of each built engine (fp16/int8 at :func:`quantized_tolerance`); returns the verdicts."""
    from rap_deploy.engines.verify import ReferenceRuns, verify

    out, sizes, data, frame_cache = run.out, run.sizes, run.world.data, run.world.frame_cache
    quant_tolerance = quantized_tolerance(sizes.test_videos)
    reference_runs = ReferenceRuns()  # every engine comes from best.pt: the reference is evaluated once
    verdicts = []
    for name in built:
        report = out / "verify" / name / "verify.json"
        tolerance = None if name.endswith("fp32") else quant_tolerance
        run.steps.run(f"verify {name}", [report, report.parent], lambda n=name, r=report, t=tolerance: verify(
            "msrvtt", data, out / "engines" / n, tolerance=t, top_m=sizes.top_m, out=r.parent, cache=frame_cache,
            progress=run.progress, threads=run.threads, raise_on_fail=False, reference_runs=reference_runs),
            inputs=[out / "engines" / name, run.best, data / "MSRVTT_data.json"])
        result = _read_json(report)
        verdicts.append({"name": name, "backend": name.split("-")[0], "precision": name.split("-")[-1],
                         "passed": bool(result["passed"]),
                         "parity_passed": bool(result.get("parity_passed", result["passed"])),
                         "tolerance": result.get("tolerance"),
                         "delta": result["delta"],
                         "two_stage_delta": result.get("two_stage", {}).get("delta"),
                         "rank_changes": result.get("rank_changes"),
                         "rank_changes_within_ties": {d: v.get("within_ties") for d, v in
                                                      (result.get("rank_changes_detail") or {}).get("asa", {}).items()
                                                      if isinstance(v, dict)}})
    return verdicts


def _bench_step(run: _DemoRun, built: list[str]) -> dict[str, Any]:
    """The ``bench`` step over the built engines and ``best.pt``; returns ``bench.json``."""
    from rap_deploy.engines.bench import bench

    out, sizes = run.out, run.sizes
    bench_file = out / "bench" / "bench.json"
    run.steps.run("bench", [bench_file, bench_file.parent], lambda: bench(
        [out / "engines" / n for n in built], checkpoint=run.best, batch_sizes=sizes.bench_batch_sizes,
        repeats=sizes.bench_repeats, warmup=1, index_size=sizes.bench_index_size, out=bench_file.parent,
        threads=run.threads, progress=run.progress, data_root=run.world.data, top_m=sizes.top_m,
        cache=run.world.frame_cache), inputs=[*(out / "engines" / n for n in built), run.best])
    return _read_json(bench_file)


def _library_step(run: _DemoRun, built: list[str]) -> Path:
    """The ``library + search`` step (:func:`_library_demo`); returns the path of ``library.json``."""
    out = run.out
    library_file = out / "library.json"
    search_engine = out / "engines" / "onnxruntime-fp32" if "onnxruntime-fp32" in built else run.best
    library = out / "index" / "msrvtt-test"
    run.steps.run("library + search", [library_file, library], lambda: write_json_atomic(library_file, _library_demo(
        library, search_engine, run.world.data, run.world.frame_cache, run.sizes, run.progress, run.threads)),
        inputs=[search_engine, run.world.data / "MSRVTT_data.json"])
    return library_file


def _demo_summary(run: _DemoRun, t_start: float, verdicts: list[dict[str, Any]], bench_result: dict[str, Any],
                  trt_reason: str | None, library_file: Path) -> dict[str, Any]:
    """The content of ``summary.json``: timings, sizes, zero-shot and RAP recall, engine verdicts, bench, library."""
    zero_shot, rap = _read_json(run.zero_shot_file), _read_json(run.rap_file)
    return {
        "seconds": round(time.perf_counter() - t_start, 1),
        "pipeline_seconds": round(sum(run.steps.timings.values()), 1),
        "step_seconds": run.steps.timings,
        "sizes": asdict(run.sizes),
        "zero_shot": zero_shot["asa"],
        "rap": rap["asa"],
        "rap_two_stage": rap["two_stage"],
        "rap_meanp": rap["meanp"],
        "rap_epoch": rap.get("epoch"),
        "rap_is_initial": rap.get("epoch") == 0,  # best.pt is the starting model: rap_initial_note
        "rap_best_trained": rap.get("best_trained"),
        "backbone": str(run.world.backbone),
        "checkpoint": str(run.best),
        "engines": verdicts,
        "bench": bench_result["results"],
        "bench_load": bench_result.get("load"),
        "device": bench_result.get("device"),
        "tensorrt": trt_reason or "built",
        "library": _read_json(library_file),
    }


def _library_demo(library: Path, engine_path: Path, data: Path, frame_cache: Path, sizes: DemoSizes,
                  progress: bool, threads: int | None = None) -> dict[str, Any]:
    """Index the test split into ``library`` (what ``rapdeploy index`` does) and search its first caption (what
    ``rapdeploy search`` does) with ``threads`` intra-op threads; returns the library's size and that query's top 5."""
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library import BuildOptions, build_library, dataset_source, open_library

    engine = load_engine(engine_path, threads=threads)
    source = dataset_source("msrvtt", data, "test", engine.config.frames)
    # force: the step runs only when the library is missing or out of date (another engine or checkpoint)
    report = build_library(library, engine, source, FrameCache(frame_cache),
                           BuildOptions(top_m=sizes.top_m, force=True), progress=progress)
    with open_library(library, engine) as lib:
        found = lib.search([source.captions[0]], top_k=5, top_m=sizes.top_m)[0]
    return {"library": str(library), "engine": str(engine_path), "videos": report["videos"],
            "skipped": report["skipped"], "bytes_per_video": report["bytes_per_video"], "stage1": report["stage1"],
            "index_seconds": report["seconds"], "query": found["query"], "top5": found["results"],
            "timings_ms": found["timings_ms"]}



def _write_results(run_dir: Path, zero_shot_file: Path, rap_file: Path) -> None:
    """``zero_shot.json`` (the run's epoch-0 evaluation) and ``rap_eval.json`` (its best.pt epoch), read from the
    training run's ``summary.json`` and ``metrics.jsonl`` (the same evaluation code, no second pass)."""
    summary = _read_json(run_dir / RUN_SUMMARY)
    history = [json.loads(line) for line in (run_dir / RUN_METRICS).read_text(encoding="utf-8").splitlines()]

    def result(rec: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": rec["epoch"], "asa": {"t2v": rec["t2v"], "v2t": rec["v2t"]}, "two_stage": rec["two_stage"],
                "meanp": rec["meanp"], "videos": rec["test_videos"], "captions": rec["test_captions"],
                "skipped": rec["test_skipped"], "seconds": rec["eval_seconds"], "offsets": rec.get("offsets")}

    initial = next(r for r in history if r["epoch"] == 0 and "t2v" in r)
    write_json_atomic(zero_shot_file, result(initial))
    write_json_atomic(rap_file, {**result(summary["best"]), "selection_rule": summary["selection_rule"],
                                 "best_trained": summary.get("best_trained")})


def rap_initial_note(summary: dict[str, Any]) -> str | None:
    """The demo's one line when its RAP rows are the starting model (``summary.json``'s ``rap_is_initial``: the
    training run's ``best.pt`` is epoch 0, as no trained epoch scored as high); ``None`` otherwise."""
    if not summary.get("rap_is_initial"):
        return None
    trained = summary.get("rap_best_trained")
    scored = (f"the best trained epoch, {trained['epoch']}, scored {trained['selection_score']:.1f} against the "
              f"starting model's {_selection_score(summary.get('rap')):.1f}; ") \
        if isinstance(trained, dict) and trained.get("epoch") is not None else ""  # a results step of before
    last = Path(summary.get("checkpoint") or RUN_BEST).with_name(RUN_LAST)
    return (f"note: the RAP rows are the starting model (epoch 0: identity adapters, so zero-shot), and so are the "
            f"export, the engines and the search: training did not beat it ({scored}rule: best t2v + v2t RSum); "
            f"the trained weights are in {last}; more epochs or steps train past it"
            + (" (the full demo, without --tiny, does)" if _is_tiny(summary.get("sizes")) else ""))


def _is_tiny(sizes: Any) -> bool:
    """Whether a demo summary's ``sizes`` are :meth:`DemoSizes.tiny`'s world (videos, test videos, epochs)."""
    tiny = DemoSizes.tiny()
    return isinstance(sizes, dict) and all(sizes.get(k) == getattr(tiny, k) for k in ("videos", "test_videos",
                                                                                     "epochs"))


def _selection_score(metrics: dict[str, Any] | None) -> float:
    """The selection score of a demo summary's recall block (``{"t2v", "v2t"}``); NaN when it is missing."""
    from rap_deploy.train.selection import selection_score

    score = selection_score(metrics or {})
    return math.nan if score is None else score

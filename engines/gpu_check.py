"""One-shot GPU check: ``python -m rap_deploy.engines.gpu_check --out DIR [--dry-run]``.

What it does, in one run, on one CUDA GPU (``--dry-run``: the same steps on the CPU at tiny sizes, for CI):

1. environment: torch / CUDA / GPU, ONNX Runtime providers, whether ``tensorrt`` imports;
2. data: the synthetic MSR-VTT-layout dataset (``rap_deploy.data.synth``);
3. models: the tiny demo's checkpoint (backbone pre-training, init and RAP training on that data, as ``rapdeploy
   demo`` does, or ``--checkpoint`` to use a carried one) and ViT-B/32 with ``--pretrained none`` and random
   non-zero adapters (no weights can be downloaded there);
4. per model: ``verify`` of the PyTorch engine on CUDA in fp32 and in fp16 against the strict fp32 reference (TF32
   off), i.e. the fp16 recall parity; ``bench`` of video / text / asa / search at batch 1, 8, 64, PyTorch eager fp32
   and fp16; for the demo model, one query's re-rank of its candidates at several ASA video blocks
   (``rerank_blocks``: the PyTorch engine's block was tuned on a CPU);
5. TensorRT, when ``tensorrt`` imports, per model after every step above (it has never run on a real GPU: a long
   build, a failure or a native crash there costs only these steps): export with fp16 graphs, ``build-engine
   --fp16``, ``verify``, ``bench`` (the engine's rows);
6. one JSON (``gpu_check.json``) and one Markdown (``gpu_check.md``) report in ``--out``, rewritten after every step
   (``"complete": false`` and the verdict INCOMPLETE until the last), so a run stopped by the device's time limit
   still returns the steps it finished; the intermediate files (data, checkpoints, engines, per-step reports) stay in
   ``--work``. A step still running after 180 s (:data:`STALL_DUMP_S`) writes every thread's stack to stderr, the
   log, and again every 180 s, so a hung step shows where.

Exit code 0 when every step ran and every parity check passed, 1 otherwise (the reports are written either way) and
for a refused artifact (a damaged ``--checkpoint``), 2 for bad usage, and for no GPU visible to torch (after a report
of the environment step). Code paths used here run
on torch 2.11 as well as the project's pin.

Preparing a GPU machine without network (the workplace's H200: Python 3.12, torch 2.11 + CUDA 13, ONNX Runtime CPU,
onnx, onnxscript, numpy, typer, rich, safetensors, matplotlib, timm, huggingface_hub; no TensorRT, open_clip, decord,
PyAV or ftfy). In the repository root of the checkout that is sent to the machine (``.whl/`` is git-ignored)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d .whl \\
        open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 decord==0.6.0 av==18.1.0

That is 5 wheels, about 52 MB (av 35.8 MB, decord 13.6 MB, open_clip_torch 1.5 MB, wcwidth 0.8 MB, ftfy 0.04 MB);
with the working tree (its tracked files: 2.6 MB on 2026-12-01; a test checks the sum) it stays under the 64 MiB a
device call carries. TensorRT is not carried (its wheels are far larger): the TensorRT steps run only where
``tensorrt`` is already installed. The device call
(``run`` with ``carry: [".whl"]`` and ``timeout_s: 600``) is::

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
    --target /tmp/site .whl/*.whl && python3 -m pip install -q --no-index --no-deps --no-build-isolation
    --no-cache-dir --upgrade --target /tmp/site . && export PYTHONPATH=/tmp/site || exit 3;
    PYTHONUNBUFFERED=1 python3 -P -m rap_deploy.engines.gpu_check --out $OUT --work /tmp/gpu-check 2>&1
    | tee $OUT/gpu_check.log

(one line; ``-P``: the checkout's own ``rap_deploy/`` folder, which lacks the subpackages mapped from ``train/``,
``export/`` and ``engines/``, must not shadow the installed package). Measured on the workplace's H200 (2026-11-30,
torch 2.11.0+cu130, 16 cores): data 11 s, the demo checkpoint 69 s, each demo verify 16-17 s and bench 42 s, each
ViT-B/32 verify 37-40 s and bench 72 s; about 7 minutes in all without TensorRT, so give the call ``timeout_s: 600``
and nothing else to run. ``--test-videos``, ``--epochs`` and ``--skip-vit`` shorten it. The work folder keeps each
size's data and models apart (:func:`data_tag`, :func:`model_tag`), so a rerun with other sizes never reuses them.

The check orchestrates every stage (data, training, export, engines), as ``rapdeploy demo`` does: what each step
runs is :mod:`rap_deploy.engines.gpu_check_steps` (which imports the stages lazily, inside the steps); this module
runs the steps, writes the reports and is the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rap_deploy.engines.bench_timing import PERCENTILE_METHOD, calls_for_percentile, percentile_notes
from rap_deploy.engines.gpu_check_steps import (
    PERCENTILES,
    REPEATS_SETTING,
    CheckSizes,
    data_tag,
    demo_checkpoint,
    environment,
    make_data,
    model_tag,
    parity,
    random_adapter_checkpoint,
    rerank_blocks,
    speed,
    tensorrt_engine,
)
from rap_deploy.errors import RapDeployError

REPORT_JSON, REPORT_MD = "gpu_check.json", "gpu_check.md"
TRACEBACK_FRAMES = 10  # of a step's unexpected error, logged from the frame that raised it outwards
# A step still running after this long dumps every thread's stack to stderr (and again each period): a hung step
# shows where it hangs in the log before the device's time limit kills the run.
STALL_DUMP_S = 180.0


class Steps:
    """Runs named steps, times them, and records failures instead of stopping the whole check."""

    def __init__(self, log: Callable[[str], None], after_step: Callable[[], None] = lambda: None) -> None:
        self.log = log
        self.after_step = after_step  # e.g. write a partial report, so a run cut short by a timeout keeps its steps
        self.records: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.log(f"[run ] {name}")
        t0 = time.perf_counter()
        try:
            value = _watched(fn)
        except Exception as exc:  # noqa: BLE001 - a one-shot check reports every failure and goes on
            seconds = round(time.perf_counter() - t0, 2)
            self.records.append({"step": name, "ok": False, "seconds": seconds,
                                 "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]})
            self.log(f"[FAIL] {name} after {seconds:.1f}s: {self.records[-1]['error']}")
            if not isinstance(exc, RapDeployError):
                self.log(traceback.format_exc(limit=-TRACEBACK_FRAMES))  # the innermost: where it failed
            self.after_step()
            return None
        seconds = round(time.perf_counter() - t0, 2)
        self.records.append({"step": name, "ok": True, "seconds": seconds})
        self.log(f"[done] {name} in {seconds:.1f}s")
        self.after_step()
        return value

    def skip(self, name: str, reason: str) -> None:
        self.records.append({"step": name, "ok": True, "skipped": reason, "seconds": 0.0})
        self.log(f"[skip] {name}: {reason}")
        self.after_step()


def _watched(fn: Callable[[], Any]) -> Any:
    """``fn()`` with a stack dump of every thread to stderr each :data:`STALL_DUMP_S` seconds it runs (none where
    stderr has no file descriptor)."""
    try:
        faulthandler.dump_traceback_later(STALL_DUMP_S, repeat=True, file=sys.__stderr__)
    except (AttributeError, OSError, ValueError):  # no real stderr (None, or no fileno): run unwatched
        return fn()
    try:
        return fn()
    finally:
        faulthandler.cancel_dump_traceback_later()


# ----------------------------------------------------------------------------------------------------------- run
def _into(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """A step that runs ``fn`` and extends ``out[key]`` with its result, so the report written after it holds it."""
    def step() -> Any:
        value = fn()
        out[key].extend(value if isinstance(value, list) else [value])
        return value
    return step


def check_model(label: str, checkpoint: Path, data: Path, work: Path, s: CheckSizes, steps: Steps,
                models: dict[str, Any]) -> dict[str, Any]:
    """Parity and speed of the PyTorch engine on one model, as ``models[label]`` (filled in place, inside each step);
    returns that dict."""
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "parity": [], "bench": [], "rerank_blocks": []}
    models[label] = out
    for precision in dict.fromkeys(("fp32", s.fp16)):
        steps.run(f"{label}: verify torch {s.device} {precision}",
                  _into(out, "parity", lambda p=precision: parity(checkpoint, data, work, s, p)))
    for precision in dict.fromkeys(("fp32", s.fp16)):
        steps.run(f"{label}: bench {precision}",
                  _into(out, "bench", lambda p=precision: speed(checkpoint, work, s, p)))
    if label == "demo":  # one model is enough to choose the block; the demo's is the one a search test uses
        for precision in dict.fromkeys(("fp32", s.fp16)):
            steps.run(f"{label}: re-rank video blocks {precision}",
                      _into(out, "rerank_blocks", lambda p=precision: rerank_blocks(checkpoint, s, p)))
    return out


def check_tensorrt(label: str, data: Path, work: Path, s: CheckSizes, trt: str | None, steps: Steps,
                   models: dict[str, Any]) -> None:
    """The TensorRT fp16 engine of ``models[label]``: build, ``verify`` and ``bench`` (its rows; PyTorch's are the
    model's fp16 bench). Run after every PyTorch step of every model: TensorRT has not run on a real GPU yet, so a
    long build, a failure or a native crash there costs only these steps."""
    if not trt:
        steps.skip(f"{label}: TensorRT", "tensorrt does not import here (or no CUDA GPU)")
        return
    out = models[label]
    checkpoint = Path(out["checkpoint"])
    engine = steps.run(f"{label}: TensorRT {trt} fp16 engine", lambda: tensorrt_engine(checkpoint, data, work))
    if engine is None:
        return
    steps.run(f"{label}: verify TensorRT fp16", _into(out, "parity", lambda: parity(checkpoint, data, work, s, "fp16",
                                                                                        engine)))
    steps.run(f"{label}: bench TensorRT fp16", _into(out, "bench", lambda: [
        r for r in speed(checkpoint, work, s, "fp16", [engine]) if r["backend"] != "torch"]))


def run_check(out: Path, work: Path, sizes: CheckSizes, checkpoint: Path | None = None, skip_vit: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step into ``work`` and write ``gpu_check.json`` / ``gpu_check.md`` into ``out``; returns the report.

    Raises :class:`~rap_deploy.errors.BackendUnavailableError` when ``sizes.device`` is cuda and no GPU is visible,
    after writing the report of the environment step (what a GPU machine whose CUDA torch cannot see needs to be
    diagnosed), and :class:`~rap_deploy.locks.FolderBusyError` when another run writes ``out`` (:func:`_report_folder`).
    """
    with _report_folder(out, log):
        return _run_check(out, work, sizes, checkpoint, skip_vit, log)


@contextlib.contextmanager
def _report_folder(out: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``out``'s folder lock (:func:`rap_deploy.locks.folder_lock`: two runs into one ``--out`` interleaved their
    reports, and a second run's work went into the first's ``OUT/work``) and delete, under it, the temporaries a
    killed run's report writes left (:func:`rap_deploy.atomic.remove_temporaries`). A run that another one holds is
    refused (:class:`~rap_deploy.locks.FolderBusyError`, exit 2); a folder whose lock cannot be made at all (a
    read-only parent, no file locks) is written unlocked, with a note: the device's run is worth more than the lock."""
    from rap_deploy.atomic import remove_temporaries
    from rap_deploy.errors import UsageError
    from rap_deploy.locks import FolderBusyError, folder_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(out, "gpu_check", "report folder"))
        except FolderBusyError:
            raise
        except UsageError as exc:
            log(f"[note] writing the reports without a folder lock: {exc}")
        else:
            remove_temporaries(out, (REPORT_JSON, REPORT_MD))
        yield


def _run_check(out: Path, work: Path, sizes: CheckSizes, checkpoint: Path | None, skip_vit: bool,
               log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`run_check`'s steps and reports, in its locked report folder."""
    from rap_deploy.atomic import write_json_atomic, write_text_atomic

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env: dict[str, Any] = {}
    models: dict[str, Any] = {}

    def save(final: bool) -> dict[str, Any]:
        report = {"passed": final and all(r["ok"] for r in steps.records) and all(
                      p["passed"] for m in models.values() for p in m["parity"]),
                  "complete": final, "dry_run": sizes.device == "cpu", "seconds": round(time.perf_counter() - t0, 1),
                  "environment": env, "sizes": asdict(sizes), "percentiles": percentile_settings(sizes.bench_repeats),
                  "steps": steps.records, "models": models}
        write_text_atomic(out / REPORT_MD, markdown(report))
        write_json_atomic(out / REPORT_JSON, report)  # last: the JSON is the one a script reads
        return report

    steps = Steps(log, after_step=lambda: save(final=False))
    steps.run("environment", lambda: env.update(environment(sizes.device)))  # filled before the report is saved
    if sizes.device == "cuda":
        _require_gpu(steps, lambda: save(final=True))
    data = steps.run("synthetic data", lambda: make_data(work / f"data-{data_tag(sizes)}", sizes))
    if data is not None:
        works = pytorch_steps(data, work, sizes, checkpoint, skip_vit, steps, models)
        for label, model_work in works.items():  # TensorRT last (see check_tensorrt)
            check_tensorrt(label, data, model_work, sizes, env.get("tensorrt"), steps, models)
    return save(final=True)


def pytorch_steps(data: Path, work: Path, sizes: CheckSizes, checkpoint: Path | None, skip_vit: bool, steps: Steps,
                  models: dict[str, Any]) -> dict[str, Path]:
    """The demo model (trained, or ``checkpoint``) and the large one, each through :func:`check_model`; returns the
    work folder of each model checked."""
    works: dict[str, Path] = {}
    demo_work = work / f"demo-{model_tag(sizes)}"
    demo = checkpoint or steps.run("demo checkpoint (train)", lambda: demo_checkpoint(demo_work, data, sizes))
    if demo is not None:
        check_model("demo", Path(demo), data, demo_work, sizes, steps, models)
        works["demo"] = demo_work
    if skip_vit:
        steps.skip(sizes.large_clip, "--skip-vit")
        return works
    large_work = work / f"large-{data_tag(sizes)}-{sizes.large_clip}-px{sizes.large_image_size}"
    large = steps.run(f"{sizes.large_clip} checkpoint (random, non-zero adapters)",
                      lambda: random_adapter_checkpoint(large_work / "large.pt", sizes.large_clip, sizes))
    if large is not None:
        check_model(sizes.large_clip, large, data, large_work, sizes, steps, models)
        works[sizes.large_clip] = large_work
    return works


def _require_gpu(steps: Steps, save_report: Callable[[], Any]) -> None:
    """Raise :class:`~rap_deploy.errors.BackendUnavailableError` (exit 2) when torch sees no CUDA GPU, after recording
    it as a failed step and saving the final report."""
    import torch

    from rap_deploy.errors import BackendUnavailableError

    if torch.cuda.is_available():
        return
    error = (f"no CUDA GPU visible to torch {torch.__version__} (built for CUDA {torch.version.cuda}, "
             f"{torch.cuda.device_count()} devices); run the check on the GPU machine, or with --dry-run on a CPU")
    steps.records.append({"step": "CUDA GPU", "ok": False, "seconds": 0.0, "error": error})
    save_report()
    raise BackendUnavailableError(error)


# -------------------------------------------------------------------------------------------------------- report
def percentile_settings(calls: int) -> dict[str, Any]:
    """How the bench and re-rank rows' percentiles (:data:`PERCENTILES`) are taken from ``calls`` timed calls each:
    the method and calls each needs, as ``rapdeploy bench`` states them, and a note naming those that are only
    interpolated between the two slowest calls (:func:`~rap_deploy.engines.bench_timing.percentile_notes`)."""
    return {"method": PERCENTILE_METHOD, "calls": calls,
            "calls_needed": {f"p{q}": calls_for_percentile(q) for q in PERCENTILES},
            "notes": percentile_notes(calls, PERCENTILES, REPEATS_SETTING)}


def _percentile_note(report: dict[str, Any]) -> list[str]:
    """The Markdown line under a latency table: the percentiles' note, when some rest on too few calls."""
    return [f"Note: {n}." for n in report["percentiles"]["notes"]]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(v: Any, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(report: dict[str, Any]) -> str:
    """The Markdown report: environment, steps, recall parity and speed tables (with the percentiles' note)."""
    env = report["environment"]
    verdict = ("passed" if report["passed"] else "FAILED") if report.get("complete", True) else "INCOMPLETE"
    parts = [f"# GPU check{' (dry run on the CPU)' if report['dry_run'] else ''}: {verdict}",
             f"{env.get('gpu') or 'no GPU'} (cc {env.get('compute_capability', '—')}), torch {env.get('torch')} "
             f"(CUDA {env.get('cuda')}), TensorRT {env.get('tensorrt') or 'not available'}; "
             f"{report['seconds']} s in all."
             + "".join(f" {k[:-len('_error')]} failed: {v}." for k, v in env.items() if k.endswith("_error")),
             "## Steps", _table(["step", "ok", "seconds", "note"], [
                 [r["step"], "yes" if r["ok"] else "NO", r["seconds"], r.get("skipped") or r.get("error", "")]
                 for r in report["steps"]])]
    parity_rows, bench_rows = [], []
    for label, m in report["models"].items():
        for p in m["parity"]:
            d = p["delta"]
            parity_rows.append([label, p["engine"], p["precision"], p["queries"], _num(p["tolerance"]),
                                *(_num(d[k]["R1"]) for k in ("t2v", "v2t")),
                                *(_num(d[k]["R5"]) for k in ("t2v", "v2t")),
                                "yes" if p["passed"] else "NO"])
        for r in m["bench"]:
            bench_rows.append([label, r["engine"], r["precision"], r["graph"], r["batch_size"],
                               f"{_num(r['throughput'], 1)} {r['unit']}", _num(r["p50_ms"], 3), _num(r["p99_ms"], 3)])
    parts += ["## Recall parity (engine − fp32 reference, points)", _table(
        ["model", "engine", "precision", "queries", "tolerance", "ΔR@1 t2v", "ΔR@1 v2t", "ΔR@5 t2v", "ΔR@5 v2t",
         "passed"], parity_rows),
              "## Speed", _table(["model", "engine", "precision", "graph", "batch", "throughput", "p50 ms", "p99 ms"],
                                 bench_rows),
              *_percentile_note(report),
              "## Re-rank of one query's candidates by ASA video block (PyTorch)", _table(
                  ["model", "precision", "video block", "candidates", "p50 ms", "p99 ms", "max abs vs first block"],
                  [[label, r["precision"], r["video_block"], r["candidates"], _num(r["p50_ms"], 3),
                    _num(r["p99_ms"], 3), f"{r['max_abs_vs_first']:.2g}"]
                   for label, m in report["models"].items() for r in m.get("rerank_blocks", [])]),
              *_percentile_note(report)]
    return "\n\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code: 0 passed, 1 a step or parity check failed (or an error that
    ended the run was a failed check: :class:`~rap_deploy.errors.CheckFailedError`), 2 bad usage or no GPU."""
    ap = argparse.ArgumentParser(prog="python -m rap_deploy.engines.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: OUT/work)")
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes (CI)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="use this demo checkpoint instead of training one")
    ap.add_argument("--test-videos", type=int, default=None, help="test videos (queries) of the synthetic data")
    ap.add_argument("--epochs", type=int, default=None, help="RAP training epochs of the demo checkpoint")
    ap.add_argument("--skip-vit", action="store_true", help="leave out the ViT-B/32 model")
    args = ap.parse_args(argv)
    try:
        sizes = _checked_arguments(args)
        report = run_check(args.out, args.work or args.out / "work", sizes, args.checkpoint, args.skip_vit,
                           log=lambda m: print(m, flush=True))
    except RapDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # the report written after the last finished step stays (INCOMPLETE)
        print(f"error: interrupted; the partial report is in {args.out}", file=sys.stderr)
        return 130
    print(json.dumps({"passed": report["passed"], "seconds": report["seconds"],
                      "report": str(args.out / REPORT_MD)}))
    return 0 if report["passed"] else 1


def _checked_arguments(args: argparse.Namespace) -> CheckSizes:
    """The sizes the arguments ask for; raises :class:`UsageError` (exit 2, before any work) for values out of range,
    an --out that is not a folder, or a --checkpoint that is not a checkpoint, and
    :class:`~rap_deploy.errors.CheckFailedError` (exit 1) for a damaged one (:func:`load_checkpoint`'s errors)."""
    from rap_deploy import bounds
    from rap_deploy.errors import UsageError

    sizes = CheckSizes.dry_run() if args.dry_run else CheckSizes.gpu()
    if args.test_videos is not None:
        bounds.check_int(args.test_videos, "--test-videos", 2, bounds.MAX_VIDEOS)
        sizes = replace(sizes, test_videos=args.test_videos, videos=max(sizes.videos - sizes.test_videos, 8)
                        + args.test_videos)
    if args.epochs is not None:
        bounds.check_int(args.epochs, "--epochs", 0, bounds.MAX_EPOCHS)
        sizes = replace(sizes, epochs=args.epochs)
    for option, folder in (("--out", args.out), ("--work", args.work)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise UsageError(f"{option} {folder} is a file; pass a folder")
    if args.checkpoint is not None:
        from rap_deploy.checkpoint import load_checkpoint

        if not args.checkpoint.is_file():
            raise UsageError(f"--checkpoint {args.checkpoint} is not a file; pass a demo checkpoint (best.pt)")
        load_checkpoint(args.checkpoint)  # a damaged one fails here, before the data is made
    return sizes


if __name__ == "__main__":
    sys.exit(main())

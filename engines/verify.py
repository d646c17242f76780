"""``rapdeploy verify``: recall parity of an engine against the PyTorch reference (DESIGN.md §6, §9, §11).

The test split is decoded once (the frame cache); the reference (PyTorch eager, from the checkpoint the engine was
built from) and the engine then go through the very same code (:func:`rap_deploy.retrieval.evaluate`) on the very
same preprocessed frames and tokens. Both get the full metrics on (a) the full ASA similarity over every pair, (b) the
two-stage search (meanP top-M, ASA re-rank) and (c) meanP stage 1 alone; the report holds the deltas, the queries
whose ground-truth rank changed, and the largest embedding and similarity errors.

Pass/fail (:func:`judge`): an fp16 / int8 engine passes when every |ΔR@K| (K = 1, 5, 10; t2v and v2t; full ASA and
two-stage) is within the tolerance (default 0.5 points). An fp32 engine must change no ground-truth rank except within
ties: a change counts only when it cannot be explained by candidates whose scores lie within ``tie_eps`` of the ground
truth's, in the reference or in the engine. verify.json's ``tolerance`` is the |ΔR@K| limit applied: ``null`` for
an fp32 engine verified without ``--tolerance`` (its ``rule`` names rank equality).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.engines.base import engine_info
from rap_deploy.engines.engine_refs import Reference, engine_label, resolve_engine, resolve_reference
from rap_deploy.engines.verify_rules import (
    DEFAULT_TIE_EPS,
    FLIP_NOISE_Z,
    GATED_MODES,
    applied_tolerance,
    compare_evaluations,
    failure_lines,
    is_strict,
    judge,
    tie_notes,
    vector_error,
    worst_graph,
)
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.graphs import INDEX_DTYPES
from rap_deploy.locks import check_writable_folder, folder_lock

REPORT_FILES = ("verify.md", "verify.png", "verify.json")  # the order they are written in: verify.json last


# ---------------------------------------------------------------------------------------------------- errors
def _first_batch_error(reference: Any, engine: Any, split: Any, cache: Any, batch_size: int) -> dict[str, Any]:
    """Errors of every video output in float32 (the index keeps patch tokens in fp16) on the first videos."""
    from rap_deploy.graphs import video_outputs
    from rap_deploy.retrieval import has_asa_head, load_video_batch

    idx = list(range(min(batch_size, split.num_videos)))
    frames, mask = load_video_batch(split, idx, cache, reference.config)
    ref = reference.encode_video(frames, mask)
    eng = engine.encode_video(frames, mask)
    names = video_outputs(has_asa_head(engine))
    return {n: vector_error(r, e) for n, r, e in zip(names, ref, eng, strict=True)}


def graph_errors(reference: Any, engine: Any, embedding_error: dict[str, Any], text_emb: np.ndarray, index: Any,
                 queries: int = 32, videos: int = 64) -> dict[str, dict[str, Any]]:
    """Error of each graph on identical inputs, so a failure points at the graph that causes it.

    The video and text encoders already saw identical frames and tokens (their output errors are in
    ``embedding_error``); the ASA head is run here by both on the *reference's* embeddings of the first ``queries``
    texts and ``videos`` videos.
    """
    video = list(embedding_error["first_batch_fp32"].values())
    out: dict[str, dict[str, Any]] = {
        "video_encoder": {"max_abs": max(e["max_abs"] for e in video),
                          "min_cosine": min(e["min_cosine"] for e in video)},
        "text_encoder": {k: embedding_error["text_emb"][k] for k in ("max_abs", "min_cosine")},
    }
    q = np.asarray(text_emb[:queries], dtype=np.float32)
    rerank = index.rerank(slice(0, videos)) or (index.frame_emb[:videos],)  # meanP engines: frame_emb
    ref = reference.asa_similarity(q, *rerank)
    eng = engine.asa_similarity(q, *rerank)
    out["asa_head" if getattr(engine, "has_asa", True) else "meanp_head"] = {
        "max_abs": float(np.abs(ref - eng).max()), "min_cosine": None, "pairs": int(ref.size)}
    return out


def _load_engine(path: Path, threads: int | None = None, device: str | None = None,
                 precision: str | None = None) -> Any:
    """The engine at ``path`` (engine folder, export folder, checkpoint or server URL) through the loader; ``device``
    / ``precision`` choose where a checkpoint (the PyTorch engine) runs."""
    from rap_deploy.engines.loader import load_engine

    return load_engine(path, threads=threads, device=device, precision=precision)


def _reference_device(device: str) -> str:
    """Check the reference device; on CUDA switch TF32 off so the reference stays strict fp32."""
    import torch

    from rap_deploy.engines.torch_backend import strict_fp32_on_cuda
    from rap_deploy.errors import BackendUnavailableError

    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise UsageError(f"--reference-device must be cpu or cuda, got '{device}'")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"--reference-device {device}: torch {torch.__version__} sees no CUDA GPU; "
                                      "use cpu")
    strict_fp32_on_cuda()
    return device


def _model_fields(config: Any) -> dict[str, Any]:
    """What decides a model's outputs (the backbone weights' origin, ``pretrained``, is compared by hash instead)."""
    return {k: v for k, v in config.to_dict().items() if k != "pretrained"}


# ---------------------------------------------------------------------------------------------------- verify
def verify(
    dataset: str,
    data_root: str | os.PathLike[str] | None,
    engine_dir: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    tolerance: float | None = None,
    top_m: int = 100,
    out: str | os.PathLike[str] | None = None,
    split: str = "test",
    cache: Any = None,
    progress: bool = True,
    batch_size: int = 8,
    tie_eps: float = DEFAULT_TIE_EPS,
    workspace: str | os.PathLike[str] | None = None,
    max_videos: int | None = None,
    threads: int | None = None,
    reference_device: str = "cpu",
    echo: Any = None,
    raise_on_fail: bool = True,
    engine_device: str | None = None,
    engine_precision: str | None = None,
    reference_runs: ReferenceRuns | None = None,
) -> dict[str, Any]:
    """Verify recall parity of an engine against the PyTorch reference and write ``verify.json``, ``verify.md`` and
    ``verify.png`` into ``out`` (default :func:`default_report_dir`: ``<workspace>/verify/<label>``, the engine
    folder's or checkpoint's name, ``RUN-best`` for a run's ``RUN/best.pt``, ``<label>-<split>`` for a split other
    than the dataset's test split).

    ``engine_dir`` defaults to the workspace's latest engine, ``data_root`` to ``$RAPDEPLOY_DATA``, ``cache`` (a
    :class:`~rap_deploy.data.cache.FrameCache` or a folder) to the workspace frame cache. ``max_videos`` keeps the
    first N test videos (a quick check; the report says so). ``reference_device`` ``cuda`` runs the PyTorch
    reference on the GPU in strict fp32 (TF32 off), for GPU engines on large test sets. ``echo(result)`` is called
    after the reports are written and before a failure is raised (the CLI prints the table there).
    ``engine_device`` / ``engine_precision`` run a checkpoint given as the engine on that device in that precision
    (e.g. ``cuda`` / ``fp16``: PyTorch fp16 against the fp32 reference). ``reference_runs``, passed to several calls,
    evaluates the reference once for all engines of one checkpoint (:class:`ReferenceRuns`).

    Returns the result dict (the content of ``verify.json`` plus ``out``). Raises :class:`CheckFailedError` when
    parity fails (after writing the reports; unless ``raise_on_fail`` is false), :class:`UsageError` for bad inputs.
    """
    import torch

    from rap_deploy.data.cache import FrameCache
    from rap_deploy.workspace import data_root as resolve_data_root

    t_start = time.perf_counter()
    _check_options(tolerance, top_m, batch_size)
    engine_path = resolve_engine(engine_dir, workspace)
    ref_info = resolve_reference(engine_path, checkpoint)
    _refuse_foreign_checkpoint(ref_info, engine_path)
    root = resolve_data_root(data_root, workspace)
    out_dir = Path(out) if out is not None else default_report_dir(engine_path, dataset, split, workspace)
    cache = cache if isinstance(cache, FrameCache) else FrameCache.default(workspace) if cache is None \
        else FrameCache(cache)
    if threads:
        torch.set_num_threads(int(threads))
    engine = _load_engine(engine_path, threads, engine_device, engine_precision)
    try:
        reference = open_reference(ref_info, engine, engine_path, reference_device, batch_size)
        data = test_split(dataset, root, split, reference.config, max_videos)
        # checked (its parents made) once the engine, reference and split are accepted, so a refused verify leaves no
        # folder behind; before the long evaluation, not after
        check_writable_folder(out_dir, "verify", "report folder")
        _check_report_names(out_dir)
        key = (ref_info.sha256, str(root), dataset, split, max_videos, top_m, batch_size, reference_device)
        run = evaluate_both(reference, engine, data, cache, top_m, batch_size, progress, reference_runs, key)
        cmp = compare_evaluations(run.ref_eval, run.eng_eval, run.used, tie_eps)
        info = engine_info(engine) or {}
        precision = info.get("precision", "fp32")
        passed, checks, rule = judge(precision, {m: cmp["sections"][m]["delta"] for m in GATED_MODES},
                                     {m: cmp["changes"][m] for m in GATED_MODES}, tolerance, tie_eps)
        embedding_error, per_graph = output_errors(reference, engine, run, cache, batch_size)
    finally:
        if hasattr(engine, "close"):
            engine.close()
    failures, notes, worst = explain(passed, checks, per_graph, cmp, precision, tolerance)
    result = verify_report(
        passed=passed, tolerance=tolerance, rule=rule, precision=precision, failures=failures, notes=notes,
        checks=checks, cmp=cmp, top_m=top_m, embedding_error=embedding_error, per_graph=per_graph, worst=worst,
        run=run, dataset=dataset, split=split, root=root, max_videos=max_videos, engine_path=engine_path, info=info,
        ref_info=ref_info, config=reference.config, cache=cache, tie_eps=tie_eps, batch_size=batch_size,
        threads=threads, reference_device=reference_device, started=t_start)
    write_verify_reports(out_dir, result)
    if echo is not None:
        echo(result)
    if not passed and raise_on_fail:
        lines = failures[:-1]
        raise CheckFailedError(f"recall parity failed for {engine_path}: " + "; ".join(lines[:4])
                               + (" …" if len(lines) > 4 else "") + f"; {failures[-1]} (see {out_dir / 'verify.md'})")
    return result


# ---------------------------------------------------------------------------------------------------- steps
def default_report_dir(engine_path: Path | str, dataset: str, split: str,
                       workspace: str | os.PathLike[str] | None) -> Path:
    """Where verify writes its reports without ``--out``: ``<workspace>/verify/<label>``
    (:func:`~rap_deploy.engines.engine_refs.engine_label`) for the dataset's test split (or a split reading its
    files: MSR-VTT's val, ActivityNet's val), ``<workspace>/verify/<label>-<split>`` for another (``train``, MSVD's
    ``val``), so the report of one split does not replace the test split's."""
    from rap_deploy.data.datasets import reads_test_files
    from rap_deploy.workspace import subdir

    label = engine_label(engine_path)
    return subdir("verify", workspace) / (label if reads_test_files(dataset, split) else f"{label}-{split}")


def _check_options(tolerance: float | None, top_m: int, batch_size: int) -> None:
    if tolerance is not None and tolerance < 0:
        raise UsageError(f"--tolerance must be >= 0 points, got {tolerance}")
    if top_m < 1:
        raise UsageError(f"--rerank-top must be >= 1, got {top_m}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")


def _check_report_names(out_dir: Path) -> None:
    """Refuse (:class:`UsageError`) a report folder where verify.json, verify.md or verify.png is a folder (or
    anything but a file), which the reports could not replace: before the evaluation, not after it."""
    for name in REPORT_FILES:
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and not (path.is_file() or path.is_symlink()):
            raise UsageError(f"{path} is not a file, so verify cannot write its report there; remove it or pass "
                             "another --out")


def _refuse_foreign_checkpoint(ref_info: Reference, engine_path: Path | str) -> None:
    """An explicit ``--checkpoint`` must be the engine's source: otherwise any difference is the checkpoint's."""
    if ref_info.source == "--checkpoint" and ref_info.manifest_sha256 and ref_info.sha256 != ref_info.manifest_sha256:
        raise UsageError(f"--checkpoint {ref_info.checkpoint} is not the checkpoint engine {engine_path} was built "
                         "from (its sha256 differs from the one the engine's manifest records), so any difference "
                         "would be the checkpoint's, not the engine's; pass the engine's source checkpoint or omit "
                         "--checkpoint")


def open_reference(ref_info: Reference, engine: Any, engine_path: Path | str, device: str, batch_size: int) -> Any:
    """The PyTorch reference (:class:`~rap_deploy.retrieval.ModelEncoder`) of the engine's model; raises
    :class:`UsageError` when its config differs from the engine's, a batch would not fit in memory, or the checkpoint
    is no longer the file hashed as ``ref_info.sha256`` (training replaced it meanwhile)."""
    from rap_deploy.atomic import sha256_file
    from rap_deploy.bounds import check_memory
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.model_encoder import ModelEncoder

    ref_ckpt = load_checkpoint(ref_info.checkpoint)
    if sha256_file(ref_info.checkpoint) != ref_info.sha256:  # the weights loaded are not the ones checked
        raise UsageError(f"reference checkpoint {ref_info.checkpoint} was replaced or rewritten while verify ran (is "
                         "training still writing it?); verify again once it is written")
    if _model_fields(ref_ckpt.config) != _model_fields(engine.config):
        raise UsageError(f"reference checkpoint {ref_info.checkpoint} has another model config than engine "
                         f"{engine_path}; pass --checkpoint with the checkpoint the engine was built from")
    config = ref_ckpt.config
    check_memory(batch_size * config.frames * 3 * config.preprocess.image_size ** 2 * 4,
                 f"--batch-size {batch_size} of {config.frames}-frame videos", "use a smaller --batch-size")
    return ModelEncoder(ref_ckpt.build_model(), device=_reference_device(device))


def test_split(dataset: str, root: Path, split: str, config: Any, max_videos: int | None) -> Any:
    """The split to verify on (its first ``max_videos`` videos when given); :class:`UsageError` when empty."""
    from rap_deploy.data.datasets import load_split

    data = load_split(dataset, root, split, max_frames=config.frames)
    if max_videos is not None:
        data = data.subset(list(range(min(max_videos, data.num_videos))))
    if data.num_videos == 0:
        raise UsageError(f"{dataset} {split} split under {root} has no videos")
    return data


@dataclass
class Evaluations:
    """Both evaluations on the same decoded videos (``used``: the split without undecodable videos)."""

    ref_eval: dict[str, Any]
    eng_eval: dict[str, Any]
    used: Any
    ref_seconds: float
    eng_seconds: float
    ref_reused: bool = False


@dataclass
class ReferenceRuns:
    """The reference's evaluations, kept by the caller across :func:`verify` calls of one process.

    Verifying several engines built from one checkpoint evaluates the same PyTorch model on the same frames each
    time; with one of these passed to every call the reference runs once. An entry is reused only for the same
    checkpoint (sha256), data, split, video limit, top-M, batch size and reference device; the engine's evaluation
    must still see the same videos (:func:`evaluate_both` checks).
    """

    runs: dict[tuple, tuple[dict[str, Any], float]] = field(default_factory=dict)


def evaluate_both(reference: Any, engine: Any, data: Any, cache: Any, top_m: int, batch_size: int,
                  progress: bool, reference_runs: ReferenceRuns | None = None, key: tuple = ()) -> Evaluations:
    """Run :func:`rap_deploy.retrieval.evaluate` for the reference (or reuse its run from ``reference_runs`` under
    ``key``), then the engine, on the same frames; raises :class:`CheckFailedError` when they saw different videos
    or none decoded."""
    from rap_deploy.retrieval import evaluate

    t0 = time.perf_counter()
    kept = reference_runs.runs.get(key) if reference_runs is not None else None
    if kept is None:
        with _finite_scores("reference"):
            ref_eval = evaluate(reference, data, cache, top_m=top_m, batch_size=batch_size, progress=progress,
                                return_scores=True)
        if reference_runs is not None:
            reference_runs.runs[key] = (ref_eval, time.perf_counter() - t0)
    else:
        ref_eval = kept[0]
    t1 = time.perf_counter()
    with _finite_scores("engine"):
        eng_eval = evaluate(engine, data, cache, top_m=top_m, batch_size=batch_size, progress=progress,
                            return_scores=True)
    t2 = time.perf_counter()
    used = ref_eval["scores"]["split"]
    if [v.video_id for v in used.videos] != [v.video_id for v in eng_eval["scores"]["split"].videos]:
        raise CheckFailedError("the reference and the engine saw different videos (the frame cache changed during "
                               "the run); rerun verify")
    if not used.num_captions:
        raise CheckFailedError(f"no test video could be decoded ({len(ref_eval['skipped'])} skipped); run "
                               "`rapdeploy data-check`")
    if kept is not None:  # the seconds the reference took when it ran
        return Evaluations(ref_eval, eng_eval, used, kept[1], t2 - t1, ref_reused=True)
    return Evaluations(ref_eval, eng_eval, used, t1 - t0, t2 - t1)


@contextlib.contextmanager
def _finite_scores(who: str) -> Iterator[None]:
    """Turn NaN/inf similarities into a failed check (exit 1) naming ``who`` computed them."""
    from rap_deploy.metrics import NonFiniteScoresError

    try:
        yield
    except NonFiniteScoresError as exc:
        fix = "rebuild the engine from an export that passes its parity check" if who == "engine" else \
            "the checkpoint's weights hold NaN or overflow: retrain or restore it"
        raise CheckFailedError(f"the {who}'s {exc}; {fix}") from None


def output_errors(reference: Any, engine: Any, run: Evaluations, cache: Any, batch_size: int
                  ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Embedding errors of every stored output (and of the first batch in fp32), and the error of each graph on
    identical inputs (:func:`graph_errors`)."""
    ref_index, eng_index = run.ref_eval["scores"]["index"], run.eng_eval["scores"]["index"]
    embedding_error: dict[str, Any] = {
        "video_emb": vector_error(ref_index.video_emb, eng_index.video_emb),
        "frame_emb": vector_error(ref_index.frame_emb, eng_index.frame_emb),
        "patch_tokens": {**vector_error(ref_index.patch_tokens, eng_index.patch_tokens, chunk=16),
                         "stored": INDEX_DTYPES["patch_tokens"]},
        **({"asa_tokens": {**vector_error(ref_index.asa_tokens, eng_index.asa_tokens, chunk=16),
                           "stored": INDEX_DTYPES["asa_tokens"]}} if ref_index.has_asa and eng_index.has_asa else {}),
        "text_emb": vector_error(run.ref_eval["scores"]["text_emb"], run.eng_eval["scores"]["text_emb"]),
        "first_batch_fp32": _first_batch_error(reference, engine, run.used, cache, batch_size),
    }
    per_graph = graph_errors(reference, engine, embedding_error, run.ref_eval["scores"]["text_emb"], ref_index)
    return embedding_error, per_graph


def explain(passed: bool, checks: list[dict[str, Any]], per_graph: dict[str, dict[str, Any]], cmp: dict[str, Any],
            precision: str, tolerance: float | None) -> tuple[list[str], list[str], str]:
    """``(failure lines, notes, worst graph)``: what failed, where the largest error is, and whether the test set
    is too small for the tolerance."""
    failures = failure_lines(checks)
    worst = worst_graph(per_graph)
    if not passed:
        e = per_graph[worst]
        failures.append(f"largest error on identical inputs: {worst} (max abs {e['max_abs']:.3g}"
                        + (f", min cosine {e['min_cosine']:.6f})" if e.get("min_cosine") is not None else ")"))
    notes = []
    queries = min(cmp["sections"]["asa"]["reference"][d]["queries"] for d in ("t2v", "v2t"))
    tol_used = applied_tolerance(precision, tolerance)
    if tol_used is not None and 100.0 / queries > tol_used:
        # fp32 (an explicit --tolerance) has no flip-noise rule; fp16/int8 pass a change that flips explain
        decides = ("a single rank flip across a K boundary fails the check" if is_strict(precision) else
                   "no change of R@K is within it, and the flip-noise rule alone decides (|gained - lost| <= "
                   f"{FLIP_NOISE_Z:g}·sqrt(gained + lost): up to {int(FLIP_NOISE_Z ** 2)} queries lost and none "
                   "gained pass)")
        need = (f"a tolerance check needs >= {int(np.ceil(100.0 / tol_used))} queries" if tol_used > 0 else
                "a tolerance of 0 leaves no change within it, whatever the number of queries")
        notes.append(f"one query moves R@K by {100.0 / queries:.2f} points, more than the tolerance {tol_used:g}: with "
                     f"{queries} queries {decides}; {need}")
    notes += tie_notes(cmp["sections"])
    return failures, notes, worst


def verify_report(*, passed: bool, tolerance: float | None, rule: str, precision: str, failures: list[str],
                  notes: list[str], checks: list[dict[str, Any]], cmp: dict[str, Any], top_m: int,
                  embedding_error: dict[str, Any], per_graph: dict[str, Any], worst: str, run: Evaluations,
                  dataset: str, split: str, root: Path, max_videos: int | None, engine_path: Path | str,
                  info: dict[str, Any], ref_info: Reference, config: Any, cache: Any, tie_eps: float,
                  batch_size: int, threads: int | None, reference_device: str, started: float) -> dict[str, Any]:
    """The content of verify.json (DESIGN.md §11 keys first)."""
    from rap_deploy.engines import reports

    sections, used = cmp["sections"], run.used
    changes = cmp["changes"]
    return {
        "passed": bool(passed),
        "tolerance": applied_tolerance(precision, tolerance),  # null: an fp32 engine held to rank equality only
        "rule": rule,
        "precision": precision,
        "failures": failures,
        "notes": notes,
        "checks": checks,
        "reference": sections["asa"]["reference"],
        "engine": sections["asa"]["engine"],
        "delta": sections["asa"]["delta"],
        "rank_changes": {d: changes["asa"][d]["beyond_ties"] for d in ("t2v", "v2t")},
        "two_stage": {**sections["two_stage"],
                      "rank_changes": {d: changes["two_stage"][d]["beyond_ties"] for d in ("t2v", "v2t")},
                      "top_m": top_m, "candidate_set_changes": cmp["candidate_set_changes"]},
        "meanp": {**sections["meanp"],
                  "rank_changes": {d: changes["meanp"][d]["beyond_ties"] for d in ("t2v", "v2t")}},
        "rank_changes_detail": changes,
        "embedding_error": embedding_error,
        "graph_error": per_graph,
        "worst_graph": worst,
        "similarity_error": cmp["sim_error"],
        "recall_curves": cmp["curves"],
        "dataset": dataset,
        "split": split,
        "data_root": str(root),
        "counts": {"videos": used.num_videos, "captions": used.num_captions, "skipped": len(run.ref_eval["skipped"]),
                   "multi_caption": bool(used.multi_caption), "limited_to": max_videos},
        "skipped": run.ref_eval["skipped"],
        "engine_path": str(engine_path),
        "engine_info": info,
        "reference_info": ref_info.to_dict(),
        "model": {k: v for k, v in config.to_dict().items() if k != "preprocess"},
        "settings": {"tolerance": tolerance, "tie_eps": tie_eps, "rerank_top": top_m, "batch_size": batch_size,
                     "frames": config.frames, "context_length": config.context_length,
                     "image_size": config.preprocess.image_size, "frame_cache": str(cache.root),
                     "max_videos": max_videos, "threads": threads, "reference_device": reference_device},
        "versions": reports.library_versions(),
        "device": reports.device_info(),
        "seconds": {"reference": round(run.ref_seconds, 3), "engine": round(run.eng_seconds, 3),
                    "total": round(time.perf_counter() - started, 3), "reference_reused": run.ref_reused},
    }


def write_verify_reports(out_dir: Path, result: dict[str, Any]) -> None:
    """Write verify.md, verify.png and, last, verify.json into ``out_dir`` (under its lock); set ``result["out"]``.

    An earlier run's three reports are removed first, so a run killed part-way leaves some of its own reports and
    no verify.json, never a new report beside an old one that says something else (another engine, verdict); so are
    the hidden temporary files a killed run's writes left (``.verify.json.*.tmp``: the lock says it is dead).
    """
    from rap_deploy.atomic import remove_temporaries, write_json_atomic, write_text_atomic
    from rap_deploy.engines import reports

    with folder_lock(out_dir, "verify", "report folder"):  # the three reports of one run, never of two
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out_dir, REPORT_FILES)
        for name in reversed(REPORT_FILES):  # verify.json first: it marks a complete set
            if (out_dir / name).is_file() or (out_dir / name).is_symlink():
                (out_dir / name).unlink()
        write_text_atomic(out_dir / "verify.md", reports.verify_markdown(result))
        reports.plot_verify(result, out_dir / "verify.png")
        write_json_atomic(out_dir / "verify.json", result)
    result["out"] = str(out_dir)

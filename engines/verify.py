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

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.engines.base import engine_info
from rap_deploy.engines.engine_refs import Reference, resolve_engine, resolve_reference
from rap_deploy.engines.report_labels import engine_label, report_folder_name
from rap_deploy.engines.verify_output import (
    ParityFigures,
    ParityOutcome,
    RunIdentity,
    VerifySettings,
    check_report_folder,
    verify_report,
    write_verify_reports,
)
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
    worst_graph,
)
from rap_deploy.engines.verify_runs import Evaluations, ReferenceRuns, evaluate_both, output_errors
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.name_lists import some_names


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
    allow_skipped: bool = False,
) -> dict[str, Any]:
    """Verify recall parity of an engine against the PyTorch reference and write ``verify.json``, ``verify.md`` and
    ``verify.png`` into ``out`` (default :func:`default_report_dir`: ``<workspace>/verify/<label>``, the engine
    folder's or checkpoint's name, ``RUN-best`` for a run's ``RUN/best.pt``; ``<label>+<dataset>`` for a dataset other
    than MSR-VTT, followed by ``@<split>`` for a split other than the dataset's test split).

    ``engine_dir`` defaults to the workspace's latest engine, ``data_root`` to ``$RAPDEPLOY_DATA``, ``cache`` (a
    :class:`~rap_deploy.data.cache.FrameCache` or a folder) to the workspace frame cache. ``max_videos`` keeps the
    first N test videos (a quick check; the report says so). ``reference_device`` ``cuda`` runs the PyTorch
    reference on the GPU in strict fp32 (TF32 off), for GPU engines on large test sets. ``echo(result)`` is called
    after the reports are written and before a failure is raised (the CLI prints the table there).
    ``engine_device`` / ``engine_precision`` run a checkpoint given as the engine on that device in that precision
    (e.g. ``cuda`` / ``fp16``: PyTorch fp16 against the fp32 reference). ``reference_runs``, passed to several calls,
    evaluates the reference once for all engines of one checkpoint (:class:`ReferenceRuns`). Test videos that are
    missing or do not decode are left out of both sides and named; unless ``allow_skipped``, that fails the check
    (:func:`skipped_failure`): parity over fewer videos than the split lists is no pass.

    Returns the result dict (the content of ``verify.json`` plus ``out``; ``passed`` false when parity failed or
    videos were left out without ``allow_skipped``, ``parity_passed`` the parity rule's verdict alone). Raises
    :class:`CheckFailedError` when it did not pass (after writing the reports; unless ``raise_on_fail`` is false),
    :class:`UsageError` for bad inputs.
    """
    started = time.perf_counter()
    _check_options(tolerance, top_m, batch_size)
    engine_path, ref_info = _engine_and_reference(engine_dir, checkpoint, workspace)
    root = _data_root(data_root, workspace)
    out_dir = Path(out) if out is not None else default_report_dir(engine_path, dataset, split, workspace)
    cache = _frame_cache(cache, workspace)
    _set_threads(threads)
    engine = _load_engine(engine_path, threads, engine_device, engine_precision)
    try:
        reference = open_reference(ref_info, engine, engine_path, reference_device, batch_size)
        data = test_split(dataset, root, split, reference.config, max_videos)
        check_report_folder(out_dir)
        key = (ref_info.sha256, str(root), dataset, split, max_videos, top_m, batch_size, reference_device)
        run = evaluate_both(reference, engine, data, cache, top_m, batch_size, progress, reference_runs, key)
        verdict = _judge_run(engine, run, tolerance, tie_eps)
        embedding_error, per_graph = output_errors(reference, engine, run, cache, batch_size)
    finally:
        _close(engine)
    identity = RunIdentity(engine_path=engine_path, engine_info=verdict.info, reference=ref_info,
                           model_config=reference.config, dataset=dataset, split=split, data_root=root)
    incomplete = skipped_failure(run.ref_eval["skipped"], run.used.num_videos, allow_skipped)
    outcome = parity_outcome(verdict, per_graph, tolerance, incomplete)
    figures = ParityFigures(comparison=verdict.cmp, embedding_error=embedding_error, graph_error=per_graph)
    settings = VerifySettings(tolerance=tolerance, tie_eps=tie_eps, top_m=top_m, batch_size=batch_size,
                              max_videos=max_videos, threads=threads, reference_device=reference_device,
                              frame_cache=cache.root, allow_skipped=allow_skipped)
    result = verify_report(identity, outcome, figures, settings, run, started)
    write_verify_reports(out_dir, result)
    if echo is not None:
        echo(result)
    if not outcome.passed and raise_on_fail:
        raise CheckFailedError(parity_failure_message(engine_path, outcome.failures, out_dir)
                               if not outcome.parity_passed else
                               f"verify of {engine_path} did not pass: {incomplete} (see {out_dir / 'verify.md'})")
    return result


# ---------------------------------------------------------------------------------------------------- steps
def _check_options(tolerance: float | None, top_m: int, batch_size: int) -> None:
    if tolerance is not None and tolerance < 0:
        raise UsageError(f"--tolerance must be >= 0 points, got {tolerance}")
    if top_m < 1:
        raise UsageError(f"--rerank-top must be >= 1, got {top_m}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")


def _engine_and_reference(engine_dir: str | os.PathLike[str] | None, checkpoint: str | os.PathLike[str] | None,
                          workspace: str | os.PathLike[str] | None) -> tuple[Path, Reference]:
    """The engine to verify (``engine_dir``, else the workspace's latest) and the checkpoint it is compared with;
    raises :class:`UsageError` for an explicit ``--checkpoint`` that is not the engine's source."""
    engine_path = resolve_engine(engine_dir, workspace)
    ref_info = resolve_reference(engine_path, checkpoint)
    _refuse_foreign_checkpoint(ref_info, engine_path)
    return engine_path, ref_info


def _refuse_foreign_checkpoint(ref_info: Reference, engine_path: Path | str) -> None:
    """An explicit ``--checkpoint`` must be the engine's source: otherwise any difference is the checkpoint's. A
    server's source is the sha256 it publishes with its models (the ``rapdeploy.checkpoint`` parameter), which the
    refusal names as such: a server has no manifest to look in."""
    if ref_info.source == "--checkpoint" and ref_info.manifest_sha256 and ref_info.sha256 != ref_info.manifest_sha256:
        from rap_deploy.engines.loader import is_remote

        recorded = ("the server publishes with its models (their rapdeploy.checkpoint parameter)"
                    if is_remote(engine_path) else "the engine's manifest records")
        raise UsageError(f"--checkpoint {ref_info.checkpoint} is not the checkpoint engine {engine_path} was built "
                         f"from (its sha256 {ref_info.sha256[:12]}… differs from {ref_info.manifest_sha256[:12]}…, "
                         f"the one {recorded}), so any difference would be the checkpoint's, not the engine's; pass "
                         "the engine's source checkpoint or omit --checkpoint")


def default_report_dir(engine_path: Path | str, dataset: str, split: str,
                       workspace: str | os.PathLike[str] | None) -> Path:
    """Where verify writes its reports without ``--out``: ``<workspace>/verify/<label>``
    (:func:`~rap_deploy.engines.report_labels.engine_label`) for the test split of the default dataset (MSR-VTT),
    ``<label>+<dataset>`` for another dataset's, each followed by ``@<split>`` for a split other than the test split
    (or one reading its files: MSR-VTT's val, ActivityNet's val): ``<label>@train``, ``<label>+msvd@val``
    (:func:`~rap_deploy.engines.report_labels.report_folder_name`). So the report of one dataset or split replaces
    neither another's nor that of an engine named ``<label>-<split>``."""
    from rap_deploy.data.datasets import reads_test_files
    from rap_deploy.workspace import subdir

    label = engine_label(engine_path)
    test = reads_test_files(dataset, split)
    return subdir("verify", workspace) / report_folder_name(label, None if test else split, dataset)


def _data_root(data_root: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None) -> Path:
    """``data_root``, else ``$RAPDEPLOY_DATA`` (:func:`rap_deploy.workspace.data_root`)."""
    from rap_deploy.workspace import data_root as resolve_data_root

    return resolve_data_root(data_root, workspace)


def _frame_cache(cache: Any, workspace: str | os.PathLike[str] | None) -> Any:
    """``cache`` as a :class:`~rap_deploy.data.cache.FrameCache`: the one given, one over the folder given, or the
    workspace's when ``None``."""
    from rap_deploy.data.cache import FrameCache

    if isinstance(cache, FrameCache):
        return cache
    return FrameCache.default(workspace) if cache is None else FrameCache(cache)


def _set_threads(threads: int | None) -> None:
    """Limit PyTorch's intra-op threads (the reference's, and a PyTorch engine's) to ``threads`` when given."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))


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
    """The split to verify on (its first ``max_videos`` videos when given); :class:`CheckFailedError` when its
    annotation files list no video (exit 1, as data-check judges such a dataset)."""
    from rap_deploy.data.datasets import load_split

    data = load_split(dataset, root, split, max_frames=config.frames)
    if data.num_videos == 0:
        raise CheckFailedError(f"{dataset} {split} split under {root} has no videos: its annotation files list none; "
                               "run `rapdeploy data-check`")
    if max_videos is not None:
        data = data.subset(list(range(min(max_videos, data.num_videos))))
    return data


@dataclass
class Verdict:
    """The parity rule applied to both evaluations: ``passed``, the ``checks`` and the ``rule`` of :func:`judge`,
    the engine's ``precision`` and ``info``, and ``cmp`` (:func:`compare_evaluations`)."""

    passed: bool
    checks: list[dict[str, Any]]
    rule: str
    precision: str
    info: dict[str, Any]
    cmp: dict[str, Any]


def _judge_run(engine: Any, run: Evaluations, tolerance: float | None, tie_eps: float) -> Verdict:
    """Compare the two evaluations and apply the parity rule of the engine's precision (:func:`judge`)."""
    cmp = compare_evaluations(run.ref_eval, run.eng_eval, run.used, tie_eps)
    info = engine_info(engine) or {}
    precision = info.get("precision", "fp32")
    passed, checks, rule = judge(precision, {m: cmp["sections"][m]["delta"] for m in GATED_MODES},
                                 {m: cmp["changes"][m] for m in GATED_MODES}, tolerance, tie_eps)
    return Verdict(passed=passed, checks=checks, rule=rule, precision=precision, info=info, cmp=cmp)


def _close(engine: Any) -> None:
    """Release the engine's sessions (a backend without ``close`` holds nothing to release)."""
    if hasattr(engine, "close"):
        engine.close()


def parity_outcome(verdict: Verdict, per_graph: dict[str, dict[str, Any]], tolerance: float | None,
                   incomplete: str | None) -> ParityOutcome:
    """The verdict with its explanation (:func:`explain`): the failures (``incomplete``, :func:`skipped_failure`'s
    line, among them when given: it fails the run even where the parity rule passed), notes and worst graph."""
    failures, notes, worst = explain(verdict.passed, verdict.checks, per_graph, verdict.cmp, verdict.precision,
                                     tolerance)
    if incomplete:  # after the failed checks, before the worst graph's line (parity_failure_message reads it last)
        failures = [*failures[:-1], incomplete, *failures[-1:]]
    return ParityOutcome(passed=verdict.passed and incomplete is None, parity_passed=verdict.passed,
                         rule=verdict.rule, precision=verdict.precision, checks=verdict.checks, failures=failures,
                         notes=notes, worst_graph=worst)


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


def skipped_failure(skipped: list[dict[str, str]], used: int, allow_skipped: bool) -> str | None:
    """The failure line of a verify that left ``skipped`` test videos (``{video_id, reason}``) out of both sides and
    compared the ``used`` others, or ``None`` when none was left out or ``allow_skipped`` accepts that."""
    if not skipped or allow_skipped:
        return None
    named = some_names([f"{s['video_id']}: {s['reason']}" for s in skipped], 3, sep="; ")
    return (f"{len(skipped)} of the {used + len(skipped)} test videos asked for are missing or undecodable ({named}), "
            f"so parity covers only {used}; restore them (`rapdeploy data-check` names every one) or pass "
            f"--allow-skipped to accept parity over the {used} that decode")


def parity_failure_message(engine_path: Path | str, failures: list[str], out_dir: Path) -> str:
    """The message of a failed verify: the first failed checks (and how many more failed), the graph with the
    largest error (``failures``' last line, :func:`explain`) and where the report is."""
    checks, worst = failures[:-1], failures[-1]
    return (f"recall parity failed for {engine_path}: {some_names(checks, 4, sep='; ')}; {worst} "
            f"(see {out_dir / 'verify.md'})")

"""What ``rapdeploy verify`` writes: the content of verify.json (:func:`verify_report`, from the run's
:class:`RunIdentity`, :class:`ParityOutcome`, :class:`ParityFigures` and :class:`VerifySettings`) and the report folder
with verify.md, verify.png and verify.json (:func:`write_verify_reports`), checked before the evaluation
(:func:`check_report_folder`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rap_deploy.engines.engine_refs import Reference
from rap_deploy.engines.verify_rules import applied_tolerance
from rap_deploy.engines.verify_runs import Evaluations
from rap_deploy.errors import UsageError
from rap_deploy.locks import check_writable_folder, folder_lock

REPORT_FILES = ("verify.md", "verify.png", "verify.json")  # the order they are written in: verify.json last


def check_report_folder(out_dir: Path) -> None:
    """Refuse a report folder verify could not write, once the engine, reference and split are accepted (so a refused
    verify leaves no folder behind) and before the long evaluation, not after it; makes its parents."""
    check_writable_folder(out_dir, "verify", "report folder")
    _check_report_names(out_dir)


def _check_report_names(out_dir: Path) -> None:
    """Refuse (:class:`UsageError`) a report folder where verify.json, verify.md or verify.png is a folder (or
    anything but a file), which the reports could not replace: before the evaluation, not after it."""
    for name in REPORT_FILES:
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and not (path.is_file() or path.is_symlink()):
            raise UsageError(f"{path} is not a file, so verify cannot write its report there; remove it or pass "
                             "another --out")


@dataclass(frozen=True)
class RunIdentity:
    """What was verified against what, on which data: the engine (its path or URL and :func:`engine_info`), the
    PyTorch reference (its checkpoint) and the model config both run, and the dataset split."""

    engine_path: Path | str
    engine_info: dict[str, Any]
    reference: Reference
    model_config: Any  # RAPConfig of the reference checkpoint (the engine's, checked equal)
    dataset: str
    split: str
    data_root: Path


@dataclass(frozen=True)
class ParityOutcome:
    """The verdict and its explanation: ``passed`` (the parity rule passed and no test video was left out unless
    allowed), ``parity_passed`` (the rule's verdict alone), the ``rule`` of the engine's ``precision``, every check,
    the failures as lines, the notes and the graph with the largest error
    (:func:`~rap_deploy.engines.verify.parity_outcome`)."""

    passed: bool
    parity_passed: bool
    rule: str
    precision: str
    checks: list[dict[str, Any]]
    failures: list[str]
    notes: list[str]
    worst_graph: str


@dataclass(frozen=True)
class ParityFigures:
    """How far the engine is from the reference: the retrieval comparison
    (:func:`~rap_deploy.engines.verify_rules.compare_evaluations`: metrics, rank changes, similarity error, recall
    curves) and the errors of the outputs on identical inputs, per output and per graph."""

    comparison: dict[str, Any]
    embedding_error: dict[str, Any]
    graph_error: dict[str, Any]


@dataclass(frozen=True)
class VerifySettings:
    """The options verify ran with (``tolerance`` as given: ``None`` without ``--tolerance``; ``allow_skipped``:
    parity over the test videos that decode is accepted)."""

    tolerance: float | None
    tie_eps: float
    top_m: int
    batch_size: int
    max_videos: int | None
    threads: int | None
    reference_device: str
    frame_cache: Path
    allow_skipped: bool


def verify_report(identity: RunIdentity, outcome: ParityOutcome, figures: ParityFigures, settings: VerifySettings,
                  run: Evaluations, started: float) -> dict[str, Any]:
    """The content of verify.json (DESIGN.md §11 keys first); ``started`` is the run's ``time.perf_counter()``."""
    return {**_verdict_keys(outcome, settings), **_retrieval_keys(figures, settings.top_m),
            **_output_error_keys(figures, outcome), **_data_keys(identity, run, settings.max_videos),
            **_model_keys(identity), "settings": _settings_keys(settings, identity.model_config),
            **_environment_keys(run, started),
            "parity_passed": bool(outcome.parity_passed)}  # last, where the reports since it was added have it


def _verdict_keys(outcome: ParityOutcome, settings: VerifySettings) -> dict[str, Any]:
    return {
        "passed": bool(outcome.passed),
        # null: an fp32 engine held to rank equality only
        "tolerance": applied_tolerance(outcome.precision, settings.tolerance),
        "rule": outcome.rule,
        "precision": outcome.precision,
        "failures": outcome.failures,
        "notes": outcome.notes,
        "checks": outcome.checks,
    }


def _retrieval_keys(figures: ParityFigures, top_m: int) -> dict[str, Any]:
    """The three searches' metrics and ground-truth rank changes beyond ties (full ASA at the top level)."""
    cmp = figures.comparison
    sections, changes = cmp["sections"], cmp["changes"]

    def beyond_ties(mode: str) -> dict[str, int]:
        return {d: changes[mode][d]["beyond_ties"] for d in ("t2v", "v2t")}

    return {
        "reference": sections["asa"]["reference"],
        "engine": sections["asa"]["engine"],
        "delta": sections["asa"]["delta"],
        "rank_changes": beyond_ties("asa"),
        "two_stage": {**sections["two_stage"], "rank_changes": beyond_ties("two_stage"), "top_m": top_m,
                      "candidate_set_changes": cmp["candidate_set_changes"]},
        "meanp": {**sections["meanp"], "rank_changes": beyond_ties("meanp")},
        "rank_changes_detail": changes,
    }


def _output_error_keys(figures: ParityFigures, outcome: ParityOutcome) -> dict[str, Any]:
    return {
        "embedding_error": figures.embedding_error,
        "graph_error": figures.graph_error,
        "worst_graph": outcome.worst_graph,
        "similarity_error": figures.comparison["sim_error"],
        "recall_curves": figures.comparison["curves"],
    }


def _data_keys(identity: RunIdentity, run: Evaluations, max_videos: int | None) -> dict[str, Any]:
    used, skipped = run.used, run.ref_eval["skipped"]
    return {
        "dataset": identity.dataset,
        "split": identity.split,
        "data_root": str(identity.data_root),
        "counts": {"videos": used.num_videos, "captions": used.num_captions, "skipped": len(skipped),
                   "multi_caption": bool(used.multi_caption), "limited_to": max_videos},
        "skipped": skipped,
    }


def _model_keys(identity: RunIdentity) -> dict[str, Any]:
    return {
        "engine_path": str(identity.engine_path),
        "engine_info": identity.engine_info,
        "reference_info": identity.reference.to_dict(),
        "model": {k: v for k, v in identity.model_config.to_dict().items() if k != "preprocess"},
    }


def _settings_keys(settings: VerifySettings, config: Any) -> dict[str, Any]:
    s = settings
    return {"tolerance": s.tolerance, "tie_eps": s.tie_eps, "rerank_top": s.top_m, "batch_size": s.batch_size,
            "frames": config.frames, "context_length": config.context_length,
            "image_size": config.preprocess.image_size, "frame_cache": str(s.frame_cache),
            "max_videos": s.max_videos, "threads": s.threads, "reference_device": s.reference_device,
            "allow_skipped": s.allow_skipped}


def _environment_keys(run: Evaluations, started: float) -> dict[str, Any]:
    """The libraries, the device, and the seconds spent (``total`` since ``started``, read now)."""
    from rap_deploy.engines.report_env import device_info, library_versions

    return {
        "versions": library_versions(),
        "device": device_info(),
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

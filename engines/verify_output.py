"""What ``rapdeploy verify`` writes: the content of verify.json (:func:`verify_report`) and the report folder
with verify.md, verify.png and verify.json (:func:`write_verify_reports`), checked before the evaluation
(:func:`check_report_folder`).
"""

from __future__ import annotations

import time
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

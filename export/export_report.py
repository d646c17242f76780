"""What an export writes besides its graphs: the ``parity.json`` report, the manifest, and the reasons an export
fails (:mod:`rap_deploy.export.onnx_export` runs the steps; this module only assembles their records)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rap_deploy.export.onnx_export import ExportRun, ParityRuns

PARITY_FILE = "parity.json"


def parity_report(run: ExportRun, parity_runs: ParityRuns, problems: list[str]) -> dict[str, Any]:
    """The content of ``parity.json``: verdict, per-graph results, tolerances, checks, inputs and provenance."""
    from rap_deploy.export import manifest as mf

    pcfg, fp32 = run.cfg.parity, parity_runs.fp32
    parity = {
        "passed": not problems,
        "graphs": fp32["graphs"],
        "pipeline": fp32.get("pipeline"),
        "tolerances": {"max_abs": pcfg.max_abs, "min_cosine": pcfg.min_cosine, "topk": pcfg.topk,
                       "tie_eps": pcfg.tie_eps},
        "problems": problems,
        "checks": run.check_reports,
        "inputs": parity_runs.inputs.describe(),
        "runtime": {"onnxruntime": package_version("onnxruntime"), "provider": "CPUExecutionProvider"},
        "opset": run.cfg.opset,
        "exporter": run.exporter,
        "checkpoint_sha256": run.ckpt_sha,
        "created": mf.now_iso(),
    }
    fp16_parity = parity_runs.fp16
    if fp16_parity is not None:
        parity["fp16"] = {"note": "fp16 graphs on ONNX Runtime CPU (ORT_ENABLE_EXTENDED) vs PyTorch fp32; no "
                                  "threshold here (the engines own fp16 tolerances)",
                          "graphs": fp16_parity["graphs"], "pipeline": fp16_parity.get("pipeline"),
                          "conversion": run.fp16_reports}
    return parity


def export_manifest(run: ExportRun, parity: dict[str, Any], fp32: dict[str, Any], stale: list[str]
                     ) -> dict[str, Any]:
    """The manifest dict of a passed export (see :mod:`rap_deploy.export.manifest`), before it is written."""
    import onnx

    from rap_deploy.export import manifest as mf

    model, cfg = run.model, run.cfg
    manifest = {
        "format": mf.FORMAT,
        "format_version": mf.FORMAT_VERSION,
        "created": parity["created"],
        "rapdeploy": package_version("rapdeploy"),
        "checkpoint": {"path": str(run.checkpoint.resolve()), "sha256": run.ckpt_sha},
        "config": run.config_dict,
        "variant": model.config.variant,
        "has_asa": model.asa is not None,
        "dims": run.dims.to_dict(),
        "opset": cfg.opset,
        "exporter": run.exporter,
        "preprocess": model.config.preprocess.to_dict(),
        "tokenizer": model.config.tokenizer.to_dict(),
        "sampling": model.config.sampling.to_dict(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": package_version("onnxruntime"),
        "graphs": graph_file_records(run.files, "fp32", run.fp16_reports),
        "fp16_graphs": graph_file_records(run.fp16_files, "fp16", run.fp16_reports),
        "parity": {"file": PARITY_FILE, "passed": True,
                   "worst": {k: worst_metric(fp32["graphs"], k) for k in ("max_abs", "min_cosine")}},
        "seconds": run.seconds,
        "removed_stale": stale,
    }
    if "asa_head" in manifest["graphs"]:
        manifest["graphs"]["asa_head"]["block_memory"] = asa_block_memory(model)
    return manifest


def graph_file_records(paths: dict[str, Path], precision: str, fp16_reports: dict[str, Any]) -> dict[str, Any]:
    """The manifest's record (file, size, digest, I/O) of each graph in ``paths``, by graph name."""
    import onnx

    from rap_deploy.export import checks
    from rap_deploy.export import manifest as mf

    return {name: mf.file_record(path, checks.io_record(onnx.load(str(path), load_external_data=False)),
                                 precision, {"conversion": fp16_reports[name]} if precision == "fp16" else None)
            for name, path in paths.items()}


def export_problems(check_reports: dict[str, Any], fp32: dict[str, Any]) -> list[str]:
    """Every reason the export fails: structural check problems, then fp32 parity failures."""
    problems = [p for r in check_reports.values() for p in r["problems"]]
    for name, g in fp32["graphs"].items():
        if not g.get("passed", False):
            problems.append(f"{name}: parity failed" + (f" ({g['error']})" if "error" in g else
                            f" (max_abs {g['max_abs']:.3g}, min_cosine {g['min_cosine']:.8f}, "
                            f"topk_match {g['topk_match']})"))
    if "pipeline" in fp32 and not fp32["pipeline"].get("passed", False):
        problems.append("end-to-end ranking parity failed")
    return problems


def asa_block_memory(model) -> dict[str, Any]:
    """Estimated working memory of one ``asa_head`` call: per (query, video) pair and per video.

    The graph has no chunk loop (see :class:`~rap_deploy.export.wrappers.AsaHeadGraph`); runtimes feed bounded
    ``(Q, V)`` blocks. The estimate is :func:`rap_deploy.engines.blocks.asa_call_bytes` (its terms are listed
    there); the ONNX Runtime CPU and PyTorch CPU re-ranks compute the same figure from the model's config and
    shrink a block that would not fit in half the memory available (``fit_asa_blocks``). This record is for
    the reader: nothing reads it back.
    """
    from rap_deploy.engines.blocks import asa_call_bytes

    asa = model.asa
    per_pair, per_video = asa_call_bytes(model.config.frames, model.num_patches, model.embed_dim, asa.topk,
                                         asa.heads, asa.attn_dim)
    return {"bytes_per_query_video_pair": per_pair, "bytes_per_video": per_video,
            "note": "no chunk loop in the graph: feed bounded (queries, videos) blocks"}


def worst_metric(graphs: dict[str, Any], key: str) -> float:
    """The worst ``key`` over the graphs' parity results: the largest ``max_abs``, the smallest cosine."""
    values = [g[key] for g in graphs.values() if g.get(key) is not None]
    return max(values) if key == "max_abs" else min(values)


def package_version(dist: str) -> str:
    """The installed version of ``dist`` (this source tree's for ``rapdeploy``), or ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        if dist == "rapdeploy":
            from rap_deploy import __version__

            return __version__
        return "unknown"

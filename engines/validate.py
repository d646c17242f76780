"""Compare an engine with a reference engine on real preprocessed inputs (embeddings and ASA similarity).

Used right after a build (an engine that does not match its reference is never left behind) and by tests.
Tolerances per precision: fp32 as the export's parity check (max abs error 1e-4, cosine >= 0.99999); fp16
cosine >= 0.999 and the ASA similarity within 0.1 (what two unit vectors each within that cosine can move a cosine
score: 2·sqrt(2·(1 - 0.999)) ≈ 0.09); int8 cosine >= 0.99 on the video and text embeddings. A NaN or inf in any
compared output fails every precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rap_deploy.engines.base import Engine
from rap_deploy.engines.samples import SampleInputs, sample_inputs
from rap_deploy.errors import CheckFailedError
from rap_deploy.graphs import INDEX_DTYPES, video_outputs

TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"max_abs": 1e-4, "min_cosine": 0.99999},
    "fp16": {"max_abs": float("inf"), "min_cosine": 0.999, "similarity_max_abs": 0.1},
    "int8": {"max_abs": float("inf"), "min_cosine": 0.99},
}
# The outputs the tolerance is checked on; the others are reported.
GATED = ("video_emb", "text_emb", "similarity")
GATED_INT8 = ("video_emb", "text_emb")


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)


def compare_arrays(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """``max_abs`` error and row-wise ``min_cosine``/``mean_cosine`` over rows with a non-zero reference.

    Zero reference rows (padded frames) count in ``max_abs`` only; a NaN or inf on either side gives the worst values
    (``inf``, ``-inf``), so no tolerance passes it. Raises ``ValueError`` on a shape mismatch.
    """
    if np.shape(ref) != np.shape(out):
        raise ValueError(f"shape mismatch: reference {np.shape(ref)}, engine {np.shape(out)}")
    r, o = _rows(ref), _rows(out)
    if not (np.isfinite(r).all() and np.isfinite(o).all()):  # NaN would compare as a pass against any tolerance
        return {"max_abs": float("inf"), "min_cosine": float("-inf"), "mean_cosine": float("-inf")}
    nr, no = np.linalg.norm(r, axis=1), np.linalg.norm(o, axis=1)
    live = nr > 1e-6
    cos = (r[live] * o[live]).sum(1) / np.maximum(nr[live] * no[live], 1e-12) if live.any() else np.ones(1)
    return {"max_abs": float(np.abs(r - o).max()) if r.size else 0.0, "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean())}


def compare_engines(engine: Engine, reference: Engine, inputs: SampleInputs | None = None) -> dict[str, Any]:
    """Run both engines on ``inputs`` (default :func:`sample_inputs`) and compare every output.

    Returns ``{output name: {max_abs, min_cosine, mean_cosine}}`` for every video output (``video_outputs``:
    ``video_emb``, ``frame_emb``, ``patch_tokens`` and with ASA ``asa_tokens``), ``text_emb`` and ``similarity``
    (the engine's ASA similarity of the engine's own embeddings, stored in the index's dtypes, against the
    reference's), plus ``similarity_argmax_match`` (same best video per text).
    """
    x = inputs or sample_inputs(engine.config)
    ref_v = reference.encode_video(x.frames, x.frame_mask)
    out_v = engine.encode_video(x.frames, x.frame_mask)
    ref_t = reference.encode_text(x.input_ids, x.eot)
    out_t = engine.encode_text(x.input_ids, x.eot)
    names = video_outputs(engine.has_asa)
    ref_s = reference.asa_similarity(ref_t, *_stored(names, ref_v))
    out_s = engine.asa_similarity(out_t, *_stored(names, out_v))
    report: dict[str, Any] = {name: compare_arrays(r, o) for name, r, o in zip(names, ref_v, out_v, strict=True)}
    report["text_emb"] = compare_arrays(ref_t, out_t)
    sim = compare_arrays(ref_s, out_s)
    sim["min_cosine"] = sim["mean_cosine"] = None  # rows of a similarity matrix are not embeddings
    report["similarity"] = sim
    report["similarity_argmax_match"] = bool((ref_s.argmax(1) == out_s.argmax(1)).all())
    return report


def _stored(names: tuple[str, ...], outputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """The re-rank part of the video outputs as an index stores it (``INDEX_DTYPES``)."""
    return tuple(np.asarray(o, dtype=INDEX_DTYPES[n]) for n, o in zip(names, outputs, strict=True))[1:]


def check_report(report: Mapping[str, Any], precision: str, what: str = "engine",
                 tolerances: Mapping[str, float] | None = None) -> list[str]:
    """Return the tolerance failures of a :func:`compare_engines` report (empty when it passes)."""
    tol = dict(tolerances or TOLERANCES[precision])
    gated = GATED_INT8 if precision == "int8" else GATED
    failures = [f"{what} {name}: NaN or inf in its output" for name, m in report.items()
                if isinstance(m, Mapping) and m.get("max_abs") == float("inf")]  # compare_arrays' mark of NaN/inf
    for name in gated:
        m = report[name]
        limit = tol.get("similarity_max_abs", tol["max_abs"]) if name == "similarity" else tol["max_abs"]
        if m["max_abs"] > limit:
            failures.append(f"{what} {name}: max abs error {m['max_abs']:.3g} > {limit:g}")
        if name != "similarity" and m["min_cosine"] < tol["min_cosine"]:
            failures.append(f"{what} {name}: cosine {m['min_cosine']:.6f} < {tol['min_cosine']}")
    return list(dict.fromkeys(failures))


def require_match(engine: Engine, reference: Engine, precision: str, what: str = "engine",
                  tolerances: Mapping[str, float] | None = None) -> dict[str, Any]:
    """:func:`compare_engines` then raise :class:`CheckFailedError` listing every tolerance failure; returns the
    report with ``passed`` and ``tolerance`` added."""
    report = compare_engines(engine, reference)
    failures = check_report(report, precision, what, tolerances)
    report["tolerance"] = dict(tolerances or TOLERANCES[precision])
    report["passed"] = not failures
    if failures:
        raise CheckFailedError(f"{what} does not match its reference: " + "; ".join(failures))
    return report

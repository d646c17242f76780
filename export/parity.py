"""Numeric parity of the exported graphs: ONNX Runtime (CPU) against the PyTorch model on real inputs.

For every graph and batch size, the same inputs go through PyTorch and ONNX Runtime, and three figures are kept:
``max_abs`` (largest absolute difference over all outputs), ``min_cosine`` (smallest cosine between matching
embedding rows; for the similarity matrix, between the flattened matrices) and ``topk_match`` (identical top-k
indices: videos ranked per text, and for the video encoder also the ASA patch selection per frame). Top-k lists may
differ only where the reference scores of the swapped candidates are within ``tie_eps`` (exact ties have no order);
``topk_exact`` says whether they were identical without that allowance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rap_deploy.engines.blocks import trim_tokens
from rap_deploy.export.export_config import GraphSpec, ParityConfig
from rap_deploy.export.inputs import ParityInputs
from rap_deploy.export.wrappers import AsaHeadGraph
from rap_deploy.graphs import ASA_INPUTS, INDEX_DTYPES, rerank_tensors


def ort_session(path: str | Path, precision: str = "fp32"):
    """A CPU ONNX Runtime session for ``path``.

    fp16 graphs run at ``ORT_ENABLE_EXTENDED``: onnxruntime 1.32's CPU provider crashes (segfault) creating a
    session for the fp16 video encoder at ``ORT_ENABLE_ALL``. fp32 graphs use the default (all optimisations).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if precision == "fp16":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------------- figures
def max_abs(ref: np.ndarray, test: np.ndarray) -> float:
    """Largest absolute difference (inf when shapes differ or either array holds NaN/inf)."""
    if ref.shape != test.shape or not (np.isfinite(ref).all() and np.isfinite(test).all()):
        return float("inf")  # NaN never passes a tolerance
    return float(np.abs(ref.astype(np.float64) - test.astype(np.float64)).max()) if ref.size else 0.0


def min_cosine(ref: np.ndarray, test: np.ndarray, rows: bool = True, eps: float = 1e-12) -> float:
    """Smallest cosine between matching rows (last axis) of ``ref`` and ``test``; rows zero in both are skipped.

    With ``rows=False`` the whole arrays are compared as one vector. A row zero in one array only scores 0; NaN or
    inf anywhere gives ``-inf``.
    """
    if ref.shape != test.shape or not (np.isfinite(ref).all() and np.isfinite(test).all()):
        return float("-inf")
    a = ref.astype(np.float64).reshape(-1, ref.shape[-1] if rows else ref.size)
    b = test.astype(np.float64).reshape(a.shape)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na < eps) & (nb < eps)
    cos = (a * b).sum(1) / np.maximum(na * nb, eps)
    cos[both_zero] = 1.0
    return float(cos.min()) if cos.size else 1.0


def topk_agreement(ref: np.ndarray, test: np.ndarray, k: int, tie_eps: float) -> dict[str, Any]:
    """Compare the top-``k`` indices along the last axis of two score arrays.

    Returns ``{"match", "exact", "ties", "rows"}``: ``exact`` when every top-k list is identical; ``match`` when
    every position differs at most by a tie (reference scores of the two candidates within ``tie_eps``); ``ties``
    counts positions accepted as ties.
    """
    k = min(k, ref.shape[-1])
    r = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    t = test.reshape(-1, test.shape[-1]).astype(np.float64)
    ri = np.argsort(-r, axis=1, kind="stable")[:, :k]
    ti = np.argsort(-t, axis=1, kind="stable")[:, :k]
    exact = bool((ri == ti).all())
    rows = np.arange(r.shape[0])[:, None]
    gap = np.abs(r[rows, ti] - r[rows, ri])
    differ = ri != ti
    ties = int((differ & (gap <= tie_eps)).sum())
    match = bool((gap[differ] <= tie_eps).all())
    return {"match": match, "exact": exact, "ties": ties, "rows": int(r.shape[0]), "k": k}


class _GraphFigures:
    """Accumulates the figures of one graph over several runs."""

    def __init__(self, batch_label: str) -> None:
        self.batch_label = batch_label
        self.runs: list[dict[str, Any]] = []
        self.outputs: dict[str, dict[str, float]] = {}
        self.topk: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}

    def add_run(self, batch: Any, names: tuple[str, ...], ref: list[np.ndarray], test: list[np.ndarray],
                expected_shapes: list[tuple[int, ...]], row_cosine: bool = True) -> None:
        run = {"batch": batch, "max_abs": 0.0, "min_cosine": 1.0, "shapes_ok": True}
        for name, r, t, shape in zip(names, ref, test, expected_shapes, strict=True):
            ma, mc = max_abs(r, t), min_cosine(r, t, rows=row_cosine)
            run["max_abs"] = max(run["max_abs"], ma)
            run["min_cosine"] = min(run["min_cosine"], mc)
            run["shapes_ok"] &= tuple(t.shape) == tuple(shape) and t.dtype == np.float32
            out = self.outputs.setdefault(name, {"max_abs": 0.0, "min_cosine": 1.0})
            out["max_abs"] = max(out["max_abs"], ma)
            out["min_cosine"] = min(out["min_cosine"], mc)
        self.runs.append(run)

    def result(self, pcfg: ParityConfig | None) -> dict[str, Any]:
        res: dict[str, Any] = {
            "max_abs": max((r["max_abs"] for r in self.runs), default=float("inf")),
            "min_cosine": min((r["min_cosine"] for r in self.runs), default=float("-inf")),
            "topk_match": bool(self.topk) and all(t["match"] for t in self.topk),
            "batch_sizes": [r["batch"] for r in self.runs],
            "topk_exact": bool(self.topk) and all(t["exact"] for t in self.topk),
            "topk_ties": sum(t["ties"] for t in self.topk),
            "shapes_ok": all(r["shapes_ok"] for r in self.runs),
            "outputs": self.outputs,
            "runs": self.runs,
            "topk": self.topk,
            **self.extra,
        }
        if pcfg is not None:
            res["passed"] = bool(res["max_abs"] <= pcfg.max_abs and res["min_cosine"] >= pcfg.min_cosine
                                 and res["topk_match"] and res["shapes_ok"])
        return res


def _slices(n: int, sizes: tuple[int, ...]) -> list[np.ndarray]:
    out, off = [], 0
    for b in sizes:
        out.append((off + np.arange(b)) % n)
        off += b
    return out


# ---------------------------------------------------------------------------------------------------- reference
@torch.no_grad()
def torch_reference(model, inputs: ParityInputs, pcfg: ParityConfig) -> dict[str, Any]:
    """PyTorch outputs for every batch slice of the pool, and for the whole pool (numpy float32).

    The batch slices wrap around the pool; pool entries no slice covered are encoded separately.
    """
    frames = torch.from_numpy(inputs.frames)
    mask = torch.from_numpy(inputs.frame_mask)
    ids = torch.from_numpy(inputs.input_ids)
    eot = torch.from_numpy(inputs.eot)
    n = len(inputs)
    ref: dict[str, Any] = {"video": [], "text": []}
    pool_video: list[np.ndarray] | None = None
    pool_text: np.ndarray | None = None
    covered = np.zeros(n, dtype=bool)
    for idx in _slices(n, pcfg.batch_sizes):
        ix = torch.from_numpy(idx)
        video = [o.numpy() for o in model.encode_video(frames[ix], mask[ix])]
        text = model.encode_text(ids[ix], eot[ix]).numpy()
        ref["video"].append(video)
        ref["text"].append([text])
        if pool_video is None:  # the pool outputs are assembled from the slices (the encoders are per-sample)
            pool_video = [np.zeros((n, *v.shape[1:]), np.float32) for v in video]
            pool_text = np.zeros((n, text.shape[1]), np.float32)
        for p, v in zip(pool_video, video, strict=True):
            p[idx] = v
        pool_text[idx] = text
        covered[idx] = True
    rest = torch.from_numpy(np.flatnonzero(~covered))
    if len(rest):
        for p, v in zip(pool_video, model.encode_video(frames[rest], mask[rest]), strict=True):
            p[rest.numpy()] = v.numpy()
        pool_text[rest.numpy()] = model.encode_text(ids[rest], eot[rest]).numpy()
    ref["pool_video"], ref["pool_text"] = pool_video, pool_text
    ref["pool_similarity"] = model.asa_similarity(
        torch.from_numpy(pool_text), *(torch.from_numpy(x) for x in stored_rerank(model, pool_video))).numpy()
    return ref


@torch.no_grad()
def asa_tokens_given(model, patch_tokens: np.ndarray, frame_mask: np.ndarray) -> np.ndarray:
    """PyTorch's ``asa_tokens`` of these ``patch_tokens`` as the index stores them (what the video encoder computes
    them from), float32."""
    stored = torch.from_numpy(np.ascontiguousarray(patch_tokens, dtype=INDEX_DTYPES["patch_tokens"]))
    return model.asa.video_tokens(stored.float(), torch.from_numpy(np.asarray(frame_mask, np.float32))).numpy()


def stored_rerank(model, video_outputs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """The re-rank part of ``video_outputs`` as an index stores it (``INDEX_DTYPES``; frame_emb for meanP)."""
    if model.asa is None:
        return (video_outputs[1],)
    names = rerank_tensors(True)
    return tuple(np.ascontiguousarray(x, dtype=INDEX_DTYPES[n]) for n, x in zip(names, video_outputs[1:],
                                                                               strict=True))


def _asa_blocks(n: int, pcfg: ParityConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    blocks = [(q, v) for q, v in pcfg.asa_blocks if q <= n and v <= n] + [(n, n)]
    return [(np.arange(q), (np.arange(v) + q) % n) for q, v in blocks]


# ---------------------------------------------------------------------------------------------------- parity
@dataclass
class _ParityRun:
    """What every graph's comparison needs: the model, the graph files, the inputs, the PyTorch reference, and the
    ONNX Runtime pool outputs collected so far (``ort_pool["video"]``, ``ort_pool["text"]``) for the pipeline."""

    model: Any
    files: dict[str, Path]
    specs: dict[str, GraphSpec]
    inputs: ParityInputs
    pcfg: ParityConfig
    precision: str
    judge: ParityConfig | None  # the tolerances a graph must pass (fp32), None for figures only (fp16)
    ref: dict[str, Any]
    slices: list[np.ndarray]
    sel_k: int  # ASA patches selected per frame
    ort_pool: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def run_parity(model, files: dict[str, Path], specs: dict[str, GraphSpec], inputs: ParityInputs,
               pcfg: ParityConfig, precision: str = "fp32", ref: dict[str, Any] | None = None) -> dict[str, Any]:
    """ONNX Runtime CPU vs PyTorch for the graphs in ``files``; returns ``{"graphs": {...}, "pipeline": {...}}``.

    Each graph entry has ``max_abs``, ``min_cosine``, ``topk_match``, ``batch_sizes`` and details; with
    ``precision="fp32"`` also ``passed`` (the DESIGN.md §7 tolerances of ``pcfg``). ``pipeline`` ranks the whole
    pool end to end (ONNX text → ONNX video → ONNX ASA head, or meanP without one) against the PyTorch model.
    A graph that ONNX Runtime cannot load or run gets ``{"error": ...}`` and fails.
    """
    run = _ParityRun(model=model, files=files, specs=specs, inputs=inputs, pcfg=pcfg, precision=precision,
                     judge=pcfg if precision == "fp32" else None, ref=ref or torch_reference(model, inputs, pcfg),
                     slices=_slices(len(inputs), pcfg.batch_sizes),
                     sel_k=min(model.config.asa_topk, model.num_patches))
    graphs: dict[str, Any] = {}
    for name, compare in (("video_encoder", _video_parity), ("text_encoder", _text_parity),
                          ("asa_head", _asa_parity)):
        if name in files:
            graphs[name] = _guarded(run, compare)
    result: dict[str, Any] = {"graphs": graphs}
    if "video" in run.ort_pool and "text" in run.ort_pool:
        result["pipeline"] = _pipeline(run)
    return result


def _error_text(exc: Exception) -> str:
    """One line naming the exception type and its (whitespace-collapsed, at most 400 characters) message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


def _guarded(run: _ParityRun, compare: Callable[[_ParityRun], dict[str, Any]]) -> dict[str, Any]:
    """``compare(run)``, or a failed entry with the error when ONNX Runtime cannot load or run the graph."""
    try:
        return compare(run)
    except Exception as exc:  # onnxruntime raises several types (Fail, InvalidArgument, RuntimeError ...)
        return {"error": _error_text(exc), "max_abs": None, "min_cosine": None, "topk_match": False,
                "batch_sizes": [], **({"passed": False} if run.judge else {})}


def _video_parity(run: _ParityRun) -> dict[str, Any]:
    """The video encoder on every batch slice, then the meanP ranking and ASA patch selection of the whole pool."""
    model, inputs, ref = run.model, run.inputs, run.ref
    sess, spec = ort_session(run.files["video_encoder"], run.precision), run.specs["video_encoder"]
    fig = _GraphFigures("batch")
    pool = [np.zeros_like(r) for r in ref["pool_video"]]
    index_drift = 0.0
    for idx, r in zip(run.slices, ref["video"], strict=True):
        outs = sess.run(None, {"frames": inputs.frames[idx], "frame_mask": inputs.frame_mask[idx]})
        if model.asa is not None:  # asa_tokens: judged on the graph's own stored patch tokens (see below)
            given = asa_tokens_given(model, outs[2], inputs.frame_mask[idx])
            index_drift = max(index_drift, max_abs(r[3], outs[3]))
            r = [*r[:3], given]
        fig.add_run(len(idx), tuple(o.name for o in spec.outputs), r, outs,
                    [spec.concrete_shape(o, {"batch": len(idx)}) for o in spec.outputs])
        for p, o in zip(pool, outs, strict=True):
            p[idx] = o
    if model.asa is not None:
        fig.extra["asa_tokens_reference"] = (
            "PyTorch's asa_tokens of the graph's own patch_tokens rounded to the index dtype (the exact input the "
            "ASA part sees): the rounding amplifies 1e-7 differences of patch_tokens into fp16-ulp-sized ones, "
            "so asa_tokens of PyTorch's own index differ by up to asa_tokens_index_drift")
        fig.extra["asa_tokens_index_drift"] = index_drift
    _video_pool_topk(run, fig, pool)
    run.ort_pool["video"] = pool
    return fig.result(run.judge)


def _video_pool_topk(run: _ParityRun, fig: _GraphFigures, pool: list[np.ndarray]) -> None:
    """Add to ``fig`` the top-k agreement of the pool's meanP ranking and of its ASA patch selection per frame."""
    ref, pcfg = run.ref, run.pcfg
    text = ref["pool_text"]
    fig.topk.append({"what": "videos ranked per text (meanP)",
                     **topk_agreement(text @ ref["pool_video"][0].T, text @ pool[0].T, pcfg.topk, pcfg.tie_eps)})
    patch_ref = np.einsum("qd,vtpd->qvtp", text, ref["pool_video"][2])
    patch_ort = np.einsum("qd,vtpd->qvtp", text, pool[2])
    patch = topk_agreement(patch_ref, patch_ort, run.sel_k, pcfg.tie_eps)
    fig.topk.append({"what": "ASA patch selection per text and frame", **patch})
    fig.extra["patch_topk_match"] = patch["match"]


def _text_parity(run: _ParityRun) -> dict[str, Any]:
    """The text encoder on every batch slice and on the whole pool cut to its longest query, then the pool's meanP
    ranking."""
    inputs, ref, pcfg = run.inputs, run.ref, run.pcfg
    sess, spec = ort_session(run.files["text_encoder"], run.precision), run.specs["text_encoder"]
    fig = _GraphFigures("batch")
    pool = np.zeros_like(ref["pool_text"])
    for idx, r in zip(run.slices, ref["text"], strict=True):
        outs = sess.run(None, {"input_ids": inputs.input_ids[idx], "eot": inputs.eot[idx]})
        fig.add_run(len(idx), ("text_emb",), r, outs, [spec.concrete_shape(spec.outputs[0], {"batch": len(idx)})])
        pool[idx] = outs[0]
    # The tokens axis is dynamic: the whole pool again, cut to its longest query, must give the same embeddings.
    short = trim_tokens(inputs.input_ids, inputs.eot)
    if short.shape[1] < inputs.input_ids.shape[1]:
        outs = sess.run(None, {"input_ids": short, "eot": inputs.eot})
        fig.add_run(f"{len(short)}x{short.shape[1]} tokens", ("text_emb",), [ref["pool_text"]], outs,
                    [spec.concrete_shape(spec.outputs[0], {"batch": len(short)})])
    vids = ref["pool_video"][0]
    fig.topk.append({"what": "videos ranked per text (meanP)",
                     **topk_agreement(ref["pool_text"] @ vids.T, pool @ vids.T, pcfg.topk, pcfg.tie_eps)})
    run.ort_pool["text"] = pool
    return fig.result(run.judge)


def _asa_parity(run: _ParityRun) -> dict[str, Any]:
    """The ASA head on query x video blocks of the pool (``pcfg.asa_blocks`` and the whole pool)."""
    pcfg = run.pcfg
    sess, spec = ort_session(run.files["asa_head"], run.precision), run.specs["asa_head"]
    head = AsaHeadGraph(run.model).eval()
    fig = _GraphFigures("queries x videos")
    text, rerank = run.ref["pool_text"], stored_rerank(run.model, run.ref["pool_video"])
    for qi, vi in _asa_blocks(len(run.inputs), pcfg):
        feeds = dict(zip(ASA_INPUTS, (text[qi], *(x[vi] for x in rerank)), strict=True))
        r = head(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        out = sess.run(None, feeds)[0]
        fig.add_run([len(qi), len(vi)], ("similarity",), [r], [out],
                    [spec.concrete_shape(spec.outputs[0], {"queries": len(qi), "videos": len(vi)})],
                    row_cosine=False)
        fig.topk.append({"what": f"videos ranked per text, block {len(qi)}x{len(vi)}",
                         **topk_agreement(r, out, pcfg.topk, pcfg.tie_eps)})
    return fig.result(run.judge)


def _pipeline(run: _ParityRun) -> dict[str, Any]:
    """The whole pool ranked end to end by the ONNX graphs (``run.ort_pool``) against PyTorch's
    ``pool_similarity``; a failed entry when the ASA head cannot load or run."""
    judge, pcfg = run.judge, run.pcfg
    text, video_emb = run.ort_pool["text"], run.ort_pool["video"][0]
    try:
        if "asa_head" in run.files:
            feeds = dict(zip(ASA_INPUTS, (text, *stored_rerank(run.model, run.ort_pool["video"])), strict=True))
            sim = ort_session(run.files["asa_head"], run.precision).run(None, feeds)[0]
            what = "text_encoder -> video_encoder -> asa_head"
        else:
            sim = text @ video_emb.T
            what = "text_encoder -> video_encoder, meanP similarity"
    except Exception as exc:
        return {"error": _error_text(exc), "topk_match": False, **({"passed": False} if judge else {})}
    r = run.ref["pool_similarity"]
    top = topk_agreement(r, sim, pcfg.topk, pcfg.tie_eps)
    res = {"what": what, "shape": list(sim.shape), "max_abs": max_abs(r, sim), "min_cosine": min_cosine(r, sim, False),
           "topk_match": top["match"], "topk_exact": top["exact"], "topk_ties": top["ties"], "topk_k": top["k"]}
    if judge is not None:
        res["passed"] = bool(res["max_abs"] <= judge.max_abs and res["min_cosine"] >= judge.min_cosine
                             and res["topk_match"])
    return res

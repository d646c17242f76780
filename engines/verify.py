"""``rapdeploy verify``: recall parity of an engine against the PyTorch reference (DESIGN.md §6, §9, §11).

The test split is decoded once (the frame cache); the reference (PyTorch eager, from the checkpoint the engine was
built from) and the engine then go through the very same code (:func:`rap_deploy.retrieval.evaluate`) on the very
same preprocessed frames and tokens. Both get the full metrics on (a) the full ASA similarity over every pair, (b) the
two-stage search (meanP top-M, ASA re-rank) and (c) meanP stage 1 alone; the report holds the deltas, the queries
whose ground-truth rank changed, and the largest embedding and similarity errors.

Pass/fail (:func:`judge`): an fp16 / int8 engine passes when every |ΔR@K| (K = 1, 5, 10; t2v and v2t; full ASA and
two-stage) is within the tolerance (default 0.5 points). An fp32 engine must change no ground-truth rank except within
ties: a change counts only when it cannot be explained by candidates whose scores lie within ``tie_eps`` of the ground
truth's, in the reference or in the engine.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.graphs import INDEX_DTYPES
from rap_deploy.locks import check_writable_folder, folder_lock

DEFAULT_TOLERANCE = 0.5
DEFAULT_TIE_EPS = 1e-5
GATED_MODES = ("asa", "two_stage")  # the searches the pass/fail rule looks at (meanP stage 1 is reported only)
GATED_METRICS = ("R1", "R5", "R10")
MODES = ("asa", "two_stage", "meanp")
DELTA_KEYS = ("R1", "R5", "R10", "MdR", "MnR", "RSum", "ties")
STRICT_PRECISIONS = ("fp32", "float32")
MAX_EXAMPLES = 10


# ---------------------------------------------------------------------------------------------------- ranks and rule
def rank_intervals(scores: np.ndarray, targets: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(rank, lo, hi)`` per query (row of ``scores [Q,C]``, ground truth ``targets[q]``).

    ``rank`` = 1 + candidates strictly above the ground truth (DESIGN.md §6); ``[lo, hi]`` the ranks it could take if
    candidates within ``eps`` of the ground-truth score were ordered either way.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    gt = scores[np.arange(len(targets)), targets][:, None]
    rank = 1 + (scores > gt).sum(axis=1)
    lo = 1 + (scores > gt + eps).sum(axis=1)
    hi = (scores >= gt - eps).sum(axis=1)
    return rank.astype(np.int64), lo.astype(np.int64), hi.astype(np.int64)


def rank_changes(reference: np.ndarray, engine: np.ndarray, targets: np.ndarray, eps: float = DEFAULT_TIE_EPS,
                 labels: list[str] | None = None) -> dict[str, Any]:
    """Compare the ground-truth ranks of two score matrices of the same queries.

    Returns ``{"changed", "beyond_ties", "within_ties", "examples"}``: queries whose rank differs at all, those whose
    change is not explained by a tie (the two ranks' ``eps`` intervals, see :func:`rank_intervals`, do not overlap),
    those that are, and up to :data:`MAX_EXAMPLES` changed queries (largest change first) with both ranks.
    """
    r_ref, lo_ref, hi_ref = rank_intervals(reference, targets, eps)
    r_eng, lo_eng, hi_eng = rank_intervals(engine, targets, eps)
    changed = r_ref != r_eng
    explained = np.maximum(lo_ref, lo_eng) <= np.minimum(hi_ref, hi_eng)
    beyond = changed & ~explained
    order = np.argsort(-(np.abs(r_ref - r_eng) + beyond * (1 << 30)), kind="stable")
    examples = []
    for q in order[:MAX_EXAMPLES]:
        if not changed[q]:
            break
        ex = {"query": int(q), "reference_rank": int(r_ref[q]), "engine_rank": int(r_eng[q]),
              "within_ties": bool(explained[q])}
        if labels is not None:
            ex["id"] = labels[q]
        examples.append(ex)
    return {"changed": int(changed.sum()), "beyond_ties": int(beyond.sum()),
            "within_ties": int((changed & explained).sum()), "examples": examples}


def direction_scores(sim: np.ndarray, caption_video: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"t2v": (scores, targets), "v2t": (scores, targets)}`` as the metrics rank them (v2t: best caption per
    candidate video, CLIP4Clip convention for multi-caption data)."""
    from rap_deploy.metrics import video_to_text_scores

    v2t, _ = video_to_text_scores(sim, caption_video)
    return {"t2v": (np.asarray(sim), np.asarray(caption_video, dtype=np.int64)),
            "v2t": (v2t, np.arange(v2t.shape[0]))}


def recall_curve(scores: np.ndarray, targets: np.ndarray, ks: list[int]) -> list[float]:
    """R@K in percent for every K of ``ks``."""
    rank, _, _ = rank_intervals(scores, targets, 0.0)
    return [float(100.0 * np.mean(rank <= k)) for k in ks]


def is_strict(precision: str) -> bool:
    """True for engines held to the zero-rank-change rule (fp32)."""
    return str(precision).lower() in STRICT_PRECISIONS


def judge(precision: str, deltas: dict[str, dict[str, dict[str, float]]],
          changes: dict[str, dict[str, dict[str, Any]]], tolerance: float | None = None,
          tie_eps: float = DEFAULT_TIE_EPS) -> tuple[bool, list[dict[str, Any]], str]:
    """Apply the parity rule; returns ``(passed, checks, rule)``.

    ``deltas[mode][direction][metric]`` are engine − reference figures and ``changes[mode][direction]`` the output
    of :func:`rank_changes`, for the modes of :data:`GATED_MODES`. fp32 engines: zero rank changes beyond ties (and,
    when ``tolerance`` is given explicitly, |ΔR@K| within it too). Other precisions: |ΔR@K| ≤ ``tolerance`` (default
    :data:`DEFAULT_TOLERANCE`). Each check is ``{mode, direction, metric, value, limit, passed}``.
    """
    strict = is_strict(precision)
    use_tolerance = tolerance is not None or not strict
    tol = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    checks: list[dict[str, Any]] = []
    for mode in GATED_MODES:
        for direction in ("t2v", "v2t"):
            if use_tolerance:
                for metric in GATED_METRICS:
                    value = float(deltas[mode][direction][metric])
                    checks.append({"mode": mode, "direction": direction, "metric": metric, "value": value,
                                   "limit": tol, "passed": abs(value) <= tol + 1e-9})
            if strict:
                value = int(changes[mode][direction]["beyond_ties"])
                checks.append({"mode": mode, "direction": direction, "metric": "rank_changes", "value": value,
                               "limit": 0, "passed": value == 0})
    parts = []
    if strict:
        parts.append(f"{precision} engine: no ground-truth rank may change beyond ties (score gap <= {tie_eps:g})")
    if use_tolerance:
        parts.append(f"|ΔR@K| <= {tol:g} points for K = 1, 5, 10")
    rule = " and ".join(parts) + "; t2v and v2t, full ASA and two-stage"
    return all(c["passed"] for c in checks), checks, rule


def failure_lines(checks: list[dict[str, Any]]) -> list[str]:
    """One readable line per failed check."""
    from rap_deploy.engines.reports import MODE_TITLES

    out = []
    for c in checks:
        if c["passed"]:
            continue
        what = (f"{c['value']} ranks changed beyond ties" if c["metric"] == "rank_changes"
                else f"Δ{c['metric']} = {c['value']:+.2f} points")
        out.append(f"{MODE_TITLES[c['mode']]} {c['direction']}: {what} (limit {c['limit']:g})")
    return out


# ---------------------------------------------------------------------------------------------------- numeric error
def vector_error(reference: np.ndarray, engine: np.ndarray, chunk: int = 64) -> dict[str, float]:
    """Largest absolute difference and smallest cosine between matching vectors (last axis) of two arrays.

    Rows that are zero in the reference (padded frames) are left out of the cosine. Works in chunks along axis 0 so
    fp16 patch-token indexes are converted to float32 a block at a time.
    """
    if reference.shape != engine.shape:
        raise CheckFailedError(f"engine output shape {list(engine.shape)} differs from the reference's "
                               f"{list(reference.shape)}")
    max_abs, min_cos, mean_abs, count = 0.0, 1.0, 0.0, 0
    for i in range(0, max(1, reference.shape[0]), chunk):
        a = np.asarray(reference[i:i + chunk], dtype=np.float32)
        b = np.asarray(engine[i:i + chunk], dtype=np.float32)
        if a.size == 0:
            continue
        diff = np.abs(a - b)
        max_abs = max(max_abs, float(diff.max()))
        mean_abs += float(diff.sum(dtype=np.float64))
        count += diff.size
        a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        na, nb = np.linalg.norm(a2, axis=1), np.linalg.norm(b2, axis=1)
        valid = na > 1e-6
        if valid.any():
            cos = (a2[valid] * b2[valid]).sum(1) / np.maximum(na[valid] * nb[valid], 1e-12)
            min_cos = min(min_cos, float(cos.min()))
    return {"max_abs": max_abs, "mean_abs": mean_abs / max(count, 1), "min_cosine": min_cos}


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


def worst_graph(errors: dict[str, dict[str, Any]]) -> str:
    """The graph with the largest max-abs error on identical inputs."""
    return max(errors, key=lambda g: errors[g]["max_abs"])


# ---------------------------------------------------------------------------------------------------- inputs
@dataclass
class Reference:
    """The PyTorch reference: where its checkpoint came from and whether it matches the engine's source."""

    checkpoint: Path
    sha256: str
    manifest_sha256: str | None
    source: str  # "manifest" or "--checkpoint"

    def to_dict(self) -> dict[str, Any]:
        return {"backend": "torch", "precision": "fp32", "checkpoint": str(self.checkpoint), "sha256": self.sha256,
                "engine_source_sha256": self.manifest_sha256, "source": self.source,
                "matches_engine_source": None if self.manifest_sha256 is None else self.sha256 == self.manifest_sha256}


def resolve_engine(engine: str | os.PathLike[str] | None, workspace: str | os.PathLike[str] | None = None) -> Path:
    """The engine to use: ``engine`` if given, else the latest engine folder in the workspace.

    A server URL (``http://HOST:PORT``) is returned as the string it is. Raises :class:`UsageError` when none is given
    and the workspace has no engine.
    """
    from rap_deploy.engines.loader import is_remote
    from rap_deploy.workspace import latest_child, subdir

    if is_remote(engine):
        return engine  # type: ignore[return-value]  # load_engine runs it over the Open Inference Protocol
    if engine is not None:
        path = Path(engine).expanduser()
        if not path.exists():
            raise UsageError(f"engine {path} does not exist; pass --engine with an engine folder from "
                             "`rapdeploy build-engine` (or a .pt checkpoint for the PyTorch engine)")
        return path
    folder = subdir("engines", workspace)
    found = latest_child(folder, "manifest.json")
    if found is None:
        raise UsageError(f"no engine in {folder}; build one with `rapdeploy build-engine` or pass --engine DIR")
    return found


def engine_manifest(engine_path: Path) -> dict[str, Any] | None:
    """The engine folder's ``manifest.json`` (``None`` for a checkpoint file used as the PyTorch engine; for a server
    URL, what the server reports about its engine: ``checkpoint``, ``precision``)."""
    from rap_deploy.engines.loader import is_remote

    if is_remote(engine_path):
        from rap_deploy.engines.serving.remote import remote_manifest

        return remote_manifest(str(engine_path))
    if engine_path.is_file():
        return None
    from rap_deploy.safe_paths import resolve_entry

    path = engine_path / "manifest.json"
    if not path.is_file() and not path.is_symlink():
        raise UsageError(f"{engine_path} has no manifest.json: not an engine folder; build one with "
                         "`rapdeploy build-engine`")
    resolve_entry(engine_path, "manifest.json", "engine manifest", engine_path)  # no symlink, FIFO or device
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckFailedError(f"{path} is not valid JSON ({exc}); rebuild the engine") from None
    if not isinstance(manifest, dict):
        raise CheckFailedError(f"{path} is not a JSON object; the engine folder is damaged, rebuild it")
    return manifest


def resolve_reference(engine_path: Path, checkpoint: str | os.PathLike[str] | None) -> Reference:
    """The reference checkpoint: ``checkpoint`` if given, else the one named in the engine's manifest.

    Raises :class:`UsageError` when the manifest names none, the file is gone, or it changed since the engine was
    built (sha256 differs) — pass ``--checkpoint`` to choose the reference explicitly.
    """
    from rap_deploy.atomic import sha256_file
    from rap_deploy.engines.loader import is_remote

    remote = is_remote(engine_path)
    where = engine_path if remote else engine_path / "manifest.json"
    manifest = engine_manifest(engine_path)
    recorded = (manifest or {}).get("checkpoint") or {}
    recorded = recorded if isinstance(recorded, dict) else {}
    if manifest is None and checkpoint is None:
        checkpoint = engine_path  # a .pt engine is its own reference
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise UsageError(f"reference checkpoint {path} does not exist; pass --checkpoint with the .pt the engine "
                             "was exported from")
        return Reference(path, sha256_file(path), recorded.get("sha256"), "--checkpoint")
    from rap_deploy.checkpoint import CHECKPOINT_SUFFIXES

    value = recorded.get("path")
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where} names no source checkpoint; pass --checkpoint CKPT")
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.is_file() and not remote:
        path = engine_path / path
    # The manifest is untrusted: only an existing regular file with a checkpoint suffix is opened, and nothing about
    # any other file (not even a hash) is reported.
    if path.suffix not in CHECKPOINT_SUFFIXES or not path.is_file():
        raise UsageError(f"the engine's source checkpoint {value!r} (from {where}) is not an existing checkpoint "
                         "file here; pass --checkpoint with the .pt it was exported from")
    digest = sha256_file(path)
    if recorded.get("sha256") and digest != recorded["sha256"]:
        raise UsageError(f"checkpoint {path} is not the file the engine was built from (its sha256 differs from the "
                         f"one in {where}): it changed since export; pass --checkpoint with "
                         "the original, or re-export and rebuild the engine")
    return Reference(path, digest, recorded.get("sha256"), "manifest")


def _engine_label(engine_path: Path | str) -> str:
    """A folder name for an engine's reports: the engine folder's or checkpoint's name, ``remote-HOST-PORT``."""
    from rap_deploy.engines.loader import is_remote

    if is_remote(engine_path):
        return "remote-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in str(engine_path).split("://")[1])
    return engine_path.stem if engine_path.is_file() else engine_path.resolve().name


def _load_engine(path: Path, threads: int | None = None, device: str | None = None,
                 precision: str | None = None) -> Any:
    """The engine at ``path`` (engine folder, export folder, checkpoint or server URL) through the loader; ``device``
    / ``precision`` choose where a checkpoint (the PyTorch engine) runs."""
    from rap_deploy.engines.loader import load_engine

    return load_engine(path, threads=threads, device=device, precision=precision)


def _reference_device(device: str) -> str:
    """Check the reference device; on CUDA switch TF32 off so the reference stays strict fp32."""
    import torch

    from rap_deploy.errors import BackendUnavailableError

    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise UsageError(f"--reference-device must be cpu or cuda, got '{device}'")
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"--reference-device {device}: torch {torch.__version__} sees no CUDA GPU; "
                                      "use cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return device


def _model_fields(config: Any) -> dict[str, Any]:
    """What decides a model's outputs (the backbone weights' origin, ``pretrained``, is compared by hash instead)."""
    return {k: v for k, v in config.to_dict().items() if k != "pretrained"}


def _info_dict(engine: Any) -> dict[str, Any]:
    info = engine.describe()
    return info.to_dict() if hasattr(info, "to_dict") else dict(info)


# ---------------------------------------------------------------------------------------------------- verify
def _compare(ref_eval: dict[str, Any], eng_eval: dict[str, Any], split: Any, tie_eps: float) -> dict[str, Any]:
    """Per mode: metrics of both, deltas, rank changes, R@K curves and similarity error."""
    targets = split.caption_video
    labels = {"t2v": list(split.captions), "v2t": [v.video_id for v in split.videos]}
    ks = list(range(1, min(50, split.num_videos) + 1))
    out: dict[str, Any] = {"sections": {}, "changes": {}, "curves": {"ks": ks}, "sim_error": {}}
    for mode in MODES:
        ref_m, eng_m = ref_eval[mode], eng_eval[mode]
        delta = {d: {k: eng_m[d][k] - ref_m[d][k] for k in DELTA_KEYS} for d in ("t2v", "v2t")}
        out["sections"][mode] = {"reference": ref_m, "engine": eng_m, "delta": delta}
        s_ref, s_eng = ref_eval["scores"]["sims"][mode], eng_eval["scores"]["sims"][mode]
        by_dir = {"reference": direction_scores(s_ref, targets), "engine": direction_scores(s_eng, targets)}
        out["changes"][mode] = {d: rank_changes(by_dir["reference"][d][0], by_dir["engine"][d][0],
                                                by_dir["reference"][d][1], tie_eps, labels[d])
                                for d in ("t2v", "v2t")}
        out["curves"][mode] = {who: {d: recall_curve(*by_dir[who][d], ks) for d in ("t2v", "v2t")}
                               for who in ("reference", "engine")}
        diff = np.abs(s_ref - s_eng)
        out["sim_error"][mode] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
    # Two-stage: re-ranked candidates carry offset + ASA cosine (>= offset - 1), the rest their stage-1 cosine (<= 1);
    # the midpoint separates them.
    from rap_deploy.retrieval import _RERANK_OFFSET

    threshold = _RERANK_OFFSET / 2
    cand_ref = ref_eval["scores"]["sims"]["two_stage"] >= threshold
    cand_eng = eng_eval["scores"]["sims"]["two_stage"] >= threshold
    out["candidate_set_changes"] = int(np.any(cand_ref != cand_eng, axis=1).sum())
    return out


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
) -> dict[str, Any]:
    """Verify recall parity of an engine against the PyTorch reference and write ``verify.json``, ``verify.md`` and
    ``verify.png`` into ``out`` (default ``<workspace>/verify/<engine folder name>``).

    ``engine_dir`` defaults to the workspace's latest engine, ``data_root`` to ``$RAPDEPLOY_DATA``, ``cache`` (a
    :class:`~rap_deploy.data.cache.FrameCache` or a folder) to the workspace frame cache. ``max_videos`` keeps the
    first N test videos (a quick check; the report says so). ``reference_device`` ``cuda`` runs the PyTorch
    reference on the GPU in strict fp32 (TF32 off), for GPU engines on large test sets. ``echo(result)`` is called
    after the reports are written and before a failure is raised (the CLI prints the table there).
    ``engine_device`` / ``engine_precision`` run a checkpoint given as the engine on that device in that precision
    (e.g. ``cuda`` / ``fp16``: PyTorch fp16 against the fp32 reference).

    Returns the result dict (the content of ``verify.json`` plus ``out``). Raises :class:`CheckFailedError` when
    parity fails (after writing the reports; unless ``raise_on_fail`` is false), :class:`UsageError` for bad inputs.
    """
    import torch

    from rap_deploy.atomic import write_json_atomic, write_text_atomic
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.data.datasets import load_split
    from rap_deploy.engines import reports
    from rap_deploy.retrieval import ModelEncoder, evaluate
    from rap_deploy.workspace import data_root as resolve_data_root
    from rap_deploy.workspace import subdir

    t_start = time.perf_counter()
    if tolerance is not None and tolerance < 0:
        raise UsageError(f"--tolerance must be >= 0 points, got {tolerance}")
    if top_m < 1:
        raise UsageError(f"--rerank-top must be >= 1, got {top_m}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    engine_path = resolve_engine(engine_dir, workspace)
    ref_info = resolve_reference(engine_path, checkpoint)
    if ref_info.source == "--checkpoint" and ref_info.manifest_sha256 and ref_info.sha256 != ref_info.manifest_sha256:
        raise UsageError(f"--checkpoint {ref_info.checkpoint} is not the checkpoint engine {engine_path} was built "
                         "from (its sha256 differs from the one the engine's manifest records), so any difference "
                         "would be the checkpoint's, not the engine's; pass the engine's source checkpoint or omit "
                         "--checkpoint")
    root = resolve_data_root(data_root)
    out_dir = Path(out) if out is not None else subdir("verify", workspace) / _engine_label(engine_path)
    check_writable_folder(out_dir, "verify", "report folder")  # fail before the long evaluation, not after
    if cache is None:
        cache = FrameCache.default(workspace)
    elif not isinstance(cache, FrameCache):
        cache = FrameCache(cache)

    if threads:
        torch.set_num_threads(int(threads))
    engine = _load_engine(engine_path, threads, engine_device, engine_precision)
    ref_ckpt = load_checkpoint(ref_info.checkpoint)
    if _model_fields(ref_ckpt.config) != _model_fields(engine.config):
        raise UsageError(f"reference checkpoint {ref_info.checkpoint} has another model config than engine "
                         f"{engine_path}; pass --checkpoint with the checkpoint the engine was built from")
    reference = ModelEncoder(ref_ckpt.build_model(), device=_reference_device(reference_device))
    config = reference.config
    from rap_deploy.bounds import check_memory

    check_memory(batch_size * config.frames * 3 * config.preprocess.image_size ** 2 * 4,
                 f"--batch-size {batch_size} of {config.frames}-frame videos", "use a smaller --batch-size")

    data = load_split(dataset, root, split, max_frames=config.frames)
    if max_videos is not None:
        data = data.subset(list(range(min(max_videos, data.num_videos))))
    if data.num_videos == 0:
        raise UsageError(f"{dataset} {split} split under {root} has no videos")

    t0 = time.perf_counter()
    ref_eval = evaluate(reference, data, cache, top_m=top_m, batch_size=batch_size, progress=progress,
                        return_scores=True)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng_eval = evaluate(engine, data, cache, top_m=top_m, batch_size=batch_size, progress=progress,
                        return_scores=True)
    t_eng = time.perf_counter() - t0
    used = ref_eval["scores"]["split"]
    if [v.video_id for v in used.videos] != [v.video_id for v in eng_eval["scores"]["split"].videos]:
        raise CheckFailedError("the reference and the engine saw different videos (the frame cache changed during "
                               "the run); rerun verify")
    if not used.num_captions:
        raise CheckFailedError(f"no {dataset} {split} video could be decoded ({len(ref_eval['skipped'])} skipped); "
                               "run `rapdeploy data-check`")

    cmp = _compare(ref_eval, eng_eval, used, tie_eps)
    info = _info_dict(engine)
    precision = info.get("precision", "fp32")
    passed, checks, rule = judge(precision, {m: cmp["sections"][m]["delta"] for m in GATED_MODES},
                                 {m: cmp["changes"][m] for m in GATED_MODES}, tolerance, tie_eps)

    ref_index, eng_index = ref_eval["scores"]["index"], eng_eval["scores"]["index"]
    embedding_error: dict[str, Any] = {
        "video_emb": vector_error(ref_index.video_emb, eng_index.video_emb),
        "frame_emb": vector_error(ref_index.frame_emb, eng_index.frame_emb),
        "patch_tokens": {**vector_error(ref_index.patch_tokens, eng_index.patch_tokens, chunk=16),
                         "stored": INDEX_DTYPES["patch_tokens"]},
        **({"asa_tokens": {**vector_error(ref_index.asa_tokens, eng_index.asa_tokens, chunk=16),
                           "stored": INDEX_DTYPES["asa_tokens"]}} if ref_index.has_asa and eng_index.has_asa else {}),
        "text_emb": vector_error(ref_eval["scores"]["text_emb"], eng_eval["scores"]["text_emb"]),
        "first_batch_fp32": _first_batch_error(reference, engine, used, cache, batch_size),
    }
    per_graph = graph_errors(reference, engine, embedding_error, ref_eval["scores"]["text_emb"], ref_index)
    if hasattr(engine, "close"):
        engine.close()

    sections = cmp["sections"]
    failures = failure_lines(checks)
    worst = worst_graph(per_graph)
    if not passed:
        e = per_graph[worst]
        failures.append(f"largest error on identical inputs: {worst} (max abs {e['max_abs']:.3g}"
                        + (f", min cosine {e['min_cosine']:.6f})" if e.get("min_cosine") is not None else ")"))
    notes = []
    queries = min(sections["asa"]["reference"][d]["queries"] for d in ("t2v", "v2t"))
    tol_used = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if (tolerance is not None or not is_strict(precision)) and 100.0 / queries > tol_used:
        notes.append(f"one query moves R@K by {100.0 / queries:.2f} points, more than the tolerance {tol_used:g}: with "
                     f"{queries} queries a single rank flip across a K boundary fails the check; a tolerance check "
                     f"needs >= {int(np.ceil(100.0 / max(tol_used, 1e-9)))} queries")
    result: dict[str, Any] = {
        "passed": bool(passed),
        "tolerance": DEFAULT_TOLERANCE if tolerance is None else float(tolerance),
        "rule": rule,
        "precision": precision,
        "failures": failures,
        "notes": notes,
        "checks": checks,
        "reference": sections["asa"]["reference"],
        "engine": sections["asa"]["engine"],
        "delta": sections["asa"]["delta"],
        "rank_changes": {d: cmp["changes"]["asa"][d]["beyond_ties"] for d in ("t2v", "v2t")},
        "two_stage": {**sections["two_stage"],
                      "rank_changes": {d: cmp["changes"]["two_stage"][d]["beyond_ties"] for d in ("t2v", "v2t")},
                      "top_m": top_m, "candidate_set_changes": cmp["candidate_set_changes"]},
        "meanp": {**sections["meanp"],
                  "rank_changes": {d: cmp["changes"]["meanp"][d]["beyond_ties"] for d in ("t2v", "v2t")}},
        "rank_changes_detail": cmp["changes"],
        "embedding_error": embedding_error,
        "graph_error": per_graph,
        "worst_graph": worst,
        "similarity_error": cmp["sim_error"],
        "recall_curves": cmp["curves"],
        "dataset": dataset,
        "split": split,
        "data_root": str(root),
        "counts": {"videos": used.num_videos, "captions": used.num_captions, "skipped": len(ref_eval["skipped"]),
                   "multi_caption": bool(used.multi_caption), "limited_to": max_videos},
        "skipped": ref_eval["skipped"],
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
        "seconds": {"reference": round(t_ref, 3), "engine": round(t_eng, 3),
                    "total": round(time.perf_counter() - t_start, 3)},
    }
    with folder_lock(out_dir, "verify", "report folder"):  # the three reports of one run, never of two
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "verify.json", result)
        write_text_atomic(out_dir / "verify.md", reports.verify_markdown(result))
        reports.plot_verify(result, out_dir / "verify.png")
    result["out"] = str(out_dir)
    if echo is not None:
        echo(result)
    if not passed and raise_on_fail:
        lines = failures[:-1]
        raise CheckFailedError(f"recall parity failed for {engine_path}: " + "; ".join(lines[:4])
                               + (" …" if len(lines) > 4 else "") + f"; {failures[-1]} (see {out_dir / 'verify.md'})")
    return result

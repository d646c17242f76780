"""Score a finished run's ``best.pt`` on a held-out split (:mod:`rap_deploy.data.synth_heldout`).

The result is cached beside the checkpoint as ``<run>/<split tag>.json`` (``<split tag>-g<G>.json`` when scored in
galleries of G videos, :mod:`rap_deploy.gallery_eval`) with the checkpoint's sha256, the split's record (with the
sha256 of its files) and the two-stage shortlist size ``top_m``: a rerun of the ablation reads it back, and a
checkpoint that changed, a split whose files changed, or another ``top_m``, is scored again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rap_deploy.data.synth_heldout import HeldoutSplit, read_record
from rap_deploy.errors import CheckFailedError, UsageError
from rap_deploy.workspace import RUN_BEST as BEST


def heldout_metrics(run_dir: str | Path, split: HeldoutSplit, top_m: int, progress: bool = True,
                    gallery: int = 0, cached_only: bool = False) -> dict[str, Any] | None:
    """t2v and v2t metrics of ``run_dir/best.pt``'s full ASA similarity on ``split`` (with ``two_stage`` of a
    ``top_m`` shortlist and ``meanp``, ``videos``, ``captions``, ``seconds``, ``gallery``, ``top_m``, ``split`` and
    ``checkpoint_sha256``; with
    ``cached_only``, ``None`` unless a valid cached result exists). With
    ``gallery`` G > 0 each query is ranked within its own gallery of G consecutive videos
    (:func:`rap_deploy.gallery_eval.evaluate_in_galleries`); 0 ranks it among the whole split.

    Raises :class:`CheckFailedError` for a run without ``best.pt`` (its folder is damaged: a finished run has one)
    and for a split video that is missing or cannot be decoded (a score over fewer videos is not this split's);
    otherwise what loading the checkpoint (:func:`~rap_deploy.train.ablate_runs.run_checkpoint`) and the
    split raise. A cached result that is a symbolic link, holds
    metrics out of range, lacks its video count or seconds, scored fewer videos than the split holds, or scored its
    two-stage search with another ``top_m`` (:func:`_scored_with`) is scored again.
    """
    from rap_deploy.atomic import sha256_file, write_json_atomic

    run_dir = Path(run_dir)
    checkpoint = run_dir / BEST
    if not checkpoint.is_file():
        raise CheckFailedError(f"{run_dir} has no {BEST} though its run finished; the run folder is damaged: remove "
                               "it and the next `rapdeploy ablate` trains that run again")
    digest = sha256_file(checkpoint)
    cached_file = run_dir / (f"{split.tag}-g{gallery}.json" if gallery else f"{split.tag}.json")
    cached = None if cached_file.is_symlink() else read_record(cached_file)
    if (cached is not None and cached.get("checkpoint_sha256") == digest and cached.get("split") == split.record
            and cached.get("gallery", 0) == gallery and _scores_ok(cached) and _whole_split(cached, split)
            and _scored_with(cached, checkpoint) == top_m):
        # results cached before galleries existed hold none: one gallery
        return {**cached, "gallery": gallery, "top_m": top_m}
    if cached_only:
        return None
    result = _score(checkpoint, split, top_m, progress, gallery)
    if not _whole_split(result, split):
        names = ", ".join(f"{s['video_id']} ({s['reason']})" for s in result["skipped"][:3])
        raise CheckFailedError(f"held-out split {split.data}: {len(result['skipped'])} of its "
                               f"{split.record['videos']} test videos could not be read ({names}); every run is "
                               f"scored on the whole split: remove {split.data.parent} and the next `rapdeploy "
                               "ablate` writes it again")
    result.update(split=split.record, checkpoint_sha256=digest, gallery=gallery, top_m=top_m)
    write_json_atomic(cached_file, result)
    return result


def _scored_with(cached: dict[str, Any], checkpoint: Path) -> int | None:
    """The two-stage shortlist size ``top_m`` a cached result was scored with: the one it records, or, for a result
    cached before it did, the ``top_m`` its run trained with (stored in ``best.pt``): the ablation scored every run
    with its recipe's ``top_m``, and a run folder of another recipe was refused before it was scored. None when
    unknown (the result is scored again)."""
    if "top_m" in cached:
        value = cached["top_m"]
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    from rap_deploy.checkpoint import load_checkpoint

    try:
        stored = load_checkpoint(checkpoint).extra.get("train_options")
    except Exception:  # noqa: BLE001 - unreadable: scored again, where loading it names the problem
        return None
    value = stored.get("top_m") if isinstance(stored, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _whole_split(result: dict[str, Any], split: HeldoutSplit) -> bool:
    """Whether ``result`` scored every test video of ``split`` (none skipped as missing or undecodable)."""
    return result.get("videos") == split.record["videos"] and not result.get("skipped")


def _scores_ok(cached: dict[str, Any]) -> bool:
    """The cached metrics the table reads are all finite and in range, with the video count and seconds it keeps."""
    from rap_deploy.train.ablate_runs import recalls_ok

    staged = cached.get("two_stage", {})
    videos, seconds = cached.get("videos"), cached.get("seconds")
    counts_ok = isinstance(videos, int) and not isinstance(videos, bool) and videos >= 1 \
        and isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
    return counts_ok and all(recalls_ok(m.get(d)) if isinstance(m, dict) else False
                             for m in (cached, *([staged] if staged else [])) for d in ("t2v", "v2t"))


def _score(checkpoint: Path, split: HeldoutSplit, top_m: int, progress: bool, gallery: int) -> dict[str, Any]:
    """Encode ``split``'s test videos with the checkpoint's model (PyTorch, CPU) and compute its metrics, in
    galleries of ``gallery`` videos when it is not 0."""
    import torch

    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.data.datasets import load_split
    from rap_deploy.gallery_eval import evaluate_in_galleries
    from rap_deploy.retrieval import evaluate
    from rap_deploy.train.ablate_runs import run_checkpoint
    from rap_deploy.train.loop import evaluation_encoder

    model = run_checkpoint(checkpoint, load_checkpoint).build_model().eval()
    test = load_split("msrvtt", split.data, "test", max_frames=model.config.frames)
    encoder, cache = evaluation_encoder(model), FrameCache(split.cache)
    with torch.no_grad():
        if gallery:
            result = evaluate_in_galleries(encoder, test, cache, gallery, top_m=top_m, progress=progress)
        else:
            result = evaluate(encoder, test, cache, top_m=top_m, progress=progress)
    return {"t2v": result["asa"]["t2v"], "v2t": result["asa"]["v2t"], "two_stage": result["two_stage"],
            "meanp": result["meanp"], "videos": result["videos"], "captions": result["captions"],
            "skipped": result["skipped"], "seconds": result["seconds"],
            **({"galleries": result["galleries"]} if gallery else {})}


def check_gallery(gallery: int, videos: int) -> None:
    """Raise :class:`UsageError` unless ``gallery`` is 0 (one gallery of the whole split) or a divisor of
    ``videos`` from 2 up (a remainder would be a smaller gallery, easier than the others, counted in the scores)."""
    if gallery and not videos:
        raise UsageError("--heldout-gallery scores the held-out split: pass --heldout-videos N too")
    if gallery and not 2 <= gallery <= videos:
        raise UsageError(f"--heldout-gallery must be 0 (one gallery) or 2 to --heldout-videos ({videos}), "
                         f"got {gallery}")
    if gallery and videos % gallery:
        raise UsageError(f"--heldout-gallery {gallery} does not divide --heldout-videos {videos}: every query's "
                         f"gallery must hold {gallery} videos; use a divisor (or --heldout-videos "
                         f"{videos - videos % gallery})")


def heldout_scorer(world: str | Path, world_data: str | Path, videos: int, top_m: int, progress: bool = True,
                   gallery: int = 0) -> Callable[[str | Path], dict[str, Any]]:
    """Prepare the held-out split of ``videos`` test videos of world folder ``world`` (dataset at ``world_data``;
    :func:`~rap_deploy.data.synth_heldout.prepare_heldout`) and return a function scoring a run folder's ``best.pt``
    there (:func:`heldout_metrics`, in galleries of ``gallery`` videos unless 0). Raises :class:`UsageError` for a
    gallery that is neither 0 nor 2 to ``videos``, and what :func:`prepare_heldout` raises."""
    from rap_deploy.data.synth_heldout import heldout_folder, prepare_heldout
    from rap_deploy.locks import folder_lock

    check_gallery(gallery, videos)
    folder = heldout_folder(Path(world), videos)
    with folder_lock(folder, "ablate", "held-out split folder"):  # two commands never write one split
        split = prepare_heldout(world_data, folder, videos, progress)
    # a partial, not a lambda: `ablate --jobs` sends it to its worker processes
    return functools.partial(heldout_metrics, split=split, top_m=top_m, progress=progress, gallery=gallery)

"""Where ASA's top-k patch selection lands on the synthetic test split: text-conditioned against frame saliency.

For every test caption and its own video, each frame's top-k patches are chosen twice with the checkpoint's ASA
head (:meth:`rap_deploy.model.asa.AsynchronousSelfAttention.select`): by the caption's embedding (``text``, RAP's
selection) and by the frame's own embedding (``saliency``). The video's scene is rendered noise-free at the sampled
frame times and the model's input size, and each selected patch is sorted by what it shows: an object the caption
names, a distractor (an object no caption names, ``rapdeploy synth --distractors``), or background. ``overlap`` is
the mean Jaccard index of the two selections per frame.

Run: ``python -m rap_deploy.data.synth_selection --checkpoint RUN/best.pt --data-root DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.data.synth import SceneSpec, render_scene


def patch_roles(scene: SceneSpec, times: np.ndarray, size: int, seconds: float, grid: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(named [T,P], distractor [T,P])`` bool: the patches of ``scene`` at ``times`` that show an object its
    caption names, and those that show a distractor (an object that owns no event)."""
    from rap_deploy.data.synth_stills import colour_patches

    owners = {e.obj for e in scene.events}
    named = {o.colour for i, o in enumerate(scene.objects) if i in owners}
    others = {o.colour for i, o in enumerate(scene.objects) if i not in owners}
    frames = render_scene(scene, times, size, seconds)
    t = len(frames)
    return colour_patches(frames, [named] * t, grid), colour_patches(frames, [others] * t, grid)


def selection_shares(chosen: np.ndarray, named: np.ndarray, distractor: np.ndarray) -> dict[str, float]:
    """Percent of the selected patches ``chosen [T,k]`` (indices) on named objects, on a distractor, elsewhere."""
    on_named = np.take_along_axis(named, chosen, axis=1)
    on_distractor = np.take_along_axis(distractor, chosen, axis=1) & ~on_named
    n = chosen.size
    return {"named": 100.0 * on_named.sum() / n, "distractor": 100.0 * on_distractor.sum() / n,
            "background": 100.0 * (n - on_named.sum() - on_distractor.sum()) / n}


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of |a ∩ b| / |a ∪ b| for two selections ``[T,k]`` of patch indices."""
    values = []
    for x, y in zip(a, b, strict=True):
        sx, sy = set(x.tolist()), set(y.tolist())
        values.append(len(sx & sy) / len(sx | sy))
    return float(np.mean(values))


def checkpoint_selection(checkpoint: str | Path, data_root: str | Path, cache_dir: str | Path | None = None,
                         progress: bool = True) -> dict[str, Any]:
    """Sort the top-k selections of ``checkpoint``'s ASA head on the synthetic test split at ``data_root`` (see the
    module docstring). Returns ``{"all": ..., "with_distractor": ..., "without_distractor": ...}``, each with the
    caption count, ``text`` and ``saliency`` shares and ``overlap``. Raises :class:`UsageError` for a model without
    an ASA head or data not written by ``rapdeploy synth``."""
    import torch

    from rap_deploy.data.synth_baselines import synthetic_scenes
    from rap_deploy.data.synth_errors import encode_test_split
    from rap_deploy.data.video import sample_frame_indices

    enc = encode_test_split(checkpoint, data_root, cache_dir, progress, require_asa=True)
    model, split, scenes, index = enc.model, enc.split, enc.scenes, enc.index
    _, info = synthetic_scenes(split)
    fps, seconds = int(info["fps"]), float(info["seconds"])
    size = model.config.preprocess.image_size  # rendered at the size the model reads (a square frame only scales)
    idx, valid = sample_frame_indices(int(round(fps * seconds)), fps, split.sampling)
    text_emb = torch.from_numpy(enc.text_emb)
    groups: dict[str, list[dict[str, Any]]] = {"with_distractor": [], "without_distractor": []}
    for c, v in enumerate(split.caption_video):
        scene = scenes[v]
        named, distractor = patch_roles(scene, idx / fps, size, seconds, tuple(model.grid))
        patches = torch.from_numpy(index.patch_tokens[v:v + 1, :valid].astype(np.float32))
        frames = torch.from_numpy(index.frame_emb[v:v + 1, :valid])
        with torch.no_grad():
            by_text = model.asa.select(text_emb[c:c + 1], patches)[0, 0].numpy()
            by_saliency = model.asa.select(frames, patches)[0, 0].numpy()
        groups["with_distractor" if scene.has_distractor else "without_distractor"].append({
            "text": selection_shares(by_text, named, distractor),
            "saliency": selection_shares(by_saliency, named, distractor),
            "overlap": jaccard(by_text, by_saliency)})
    groups["all"] = groups["with_distractor"] + groups["without_distractor"]
    return {name: _summary(rows) for name, rows in groups.items()}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over captions of the shares and the overlap (``captions`` 0 and nothing else for an empty group)."""
    if not rows:
        return {"captions": 0}
    out: dict[str, Any] = {"captions": len(rows)}
    for mode in ("text", "saliency"):
        out[mode] = {k: round(float(np.mean([r[mode][k] for r in rows])), 2) for k in rows[0][mode]}
    out["overlap"] = round(float(np.mean([r["overlap"] for r in rows])), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    """Print :func:`checkpoint_selection` as JSON."""
    from rap_deploy.data.synth_errors import checkpoint_report_main

    checkpoint_report_main(__doc__.splitlines()[0], checkpoint_selection, argv)


if __name__ == "__main__":
    main()

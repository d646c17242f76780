"""Reference scores on the synthetic dataset: an oracle, and the same pixel scorer with and without frame order.

* ``oracle``: parse each caption back into its meaning (:func:`~rap_deploy.data.synth.parse_caption`) and score 1
  for the videos whose scene has that meaning, 0 otherwise. R@1 = 100 with 0 ties proves the captions identify their
  test video uniquely.
* ``order_aware_pixels`` / ``order_blind_pixels``: a text side that understands the caption perfectly (it renders
  the described scene, noise-free, at the sampled frame times) against the decoded video frames, as centred pixel
  vectors compared by cosine. The order-aware variant compares the frame sequences; the order-blind variant first
  averages over frames (CLIP4Clip's mean pooling). Everything else being equal, the gap between the two is what
  frame order is worth on this data. Averaged, a scene and its time reverse have bit-identical text features, so
  video->text ranks tie exactly (counted in ``ties``; ``order_blind_pixels_ties_broken`` flips a seeded coin).

Run: ``python -m rap_deploy.data.synth_baselines --data-root DIR``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from rap_deploy.config import PreprocessConfig
from rap_deploy.data.cache import FrameCache
from rap_deploy.data.datasets import RetrievalSplit, load_split
from rap_deploy.data.synth import SceneSpec, parse_caption, render_scene, reverse_scene, scene_key
from rap_deploy.data.synth_dataset import load_scenes
from rap_deploy.data.video import sample_frame_indices
from rap_deploy.errors import UsageError
from rap_deploy.metrics import retrieval_metrics
from rap_deploy.preprocess import resize_crop


def oracle_similarity(split: RetrievalSplit) -> np.ndarray:
    """Return ``[captions, videos]``: 1 where the caption's parsed meaning equals the video's scene, else 0.

    Raises :class:`UsageError` if the split is not from a synthetic dataset.
    """
    scenes, _ = synthetic_scenes(split)
    video_keys = [scene_key(scenes[v.video_id]) for v in split.videos]
    sim = np.zeros((split.num_captions, split.num_videos), dtype=np.float32)
    for c, caption in enumerate(split.captions):
        key = parse_caption(caption)
        sim[c] = [k == key for k in video_keys]
    return sim


def order_blind_baseline(
    split: RetrievalSplit,
    cache: FrameCache | None = None,
    preprocess: PreprocessConfig | None = None,
) -> dict[str, Any]:
    """Score ``split`` with the oracle and with the pixel scorer with / without frame order (see the module doc).

    Returns ``{"oracle", "order_aware_pixels", "order_blind_pixels", "order_blind_pixels_ties_broken"}`` (each
    ``{"t2v", "v2t"}`` metrics; the last breaks exact ties by a fixed-seed coin flip) and
    ``reverse_pairs`` (test videos whose time reverse is also in the split). ``preprocess`` defaults to the videos'
    own size. Raises :class:`UsageError` for a non-synthetic split and ``VideoDecodeError`` for a bad video.
    """
    scenes, info = synthetic_scenes(split)
    size, fps, seconds = int(info["size"]), int(info["fps"]), float(info["seconds"])
    preprocess = preprocess or PreprocessConfig(image_size=size)
    cache = cache or FrameCache(None)
    video_frames, masks = _decoded_frames(split, cache, preprocess)
    text_frames, text_masks = _rendered_captions(split, scenes, size, fps, seconds, preprocess)

    centre = video_frames[masks].mean(axis=0, dtype=np.float64)
    v_seq = (video_frames - centre) * masks[..., None, None, None]
    t_seq = (text_frames - centre) * text_masks[..., None, None, None]
    v_mean = video_frames.sum(1, dtype=np.int64) / masks.sum(1)[:, None, None, None] - centre
    t_mean = text_frames.sum(1, dtype=np.int64) / text_masks.sum(1)[:, None, None, None] - centre

    keys = {scene_key(scenes[v.video_id]) for v in split.videos}
    pairs = sum(scene_key(reverse_scene(scenes[v.video_id])) in keys for v in split.videos)
    blind = _cosine(t_mean, v_mean)
    # Exact ties are real here (video->text: a scene's caption and its reverse's caption look identical once frames
    # are averaged) and the metric counts them optimistically; a fixed-seed coin flip shows what a real model's
    # noise would make of them.
    coin = np.random.default_rng(0).standard_normal(blind.shape) * 1e-9
    return {
        "oracle": retrieval_metrics(oracle_similarity(split), split.caption_video),
        "order_aware_pixels": retrieval_metrics(_cosine(t_seq, v_seq), split.caption_video),
        "order_blind_pixels": retrieval_metrics(blind, split.caption_video),
        "order_blind_pixels_ties_broken": retrieval_metrics(blind + coin, split.caption_video),
        "reverse_pairs": pairs // 2,
        "videos": split.num_videos,
        "captions": split.num_captions,
    }


def _decoded_frames(split: RetrievalSplit, cache: FrameCache, preprocess: PreprocessConfig
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The video side: every test video's sampled frames ``uint8 [V,T,S,S,3]`` and frame mask ``[V,T]``.

    Pixel values stay integers until they are summed over frames (exact, order-independent), so a scene and its
    time reverse get bit-identical order-blind features on the text side."""
    t = split.sampling.max_frames
    frames = np.zeros((split.num_videos, t, preprocess.image_size, preprocess.image_size, 3), np.uint8)
    masks = np.zeros((split.num_videos, t), dtype=bool)
    for i, entry in enumerate(split.videos):
        video = cache.get(entry.path, split.sampling, preprocess, entry.start, entry.end)
        frames[i] = video.frames
        masks[i] = video.mask
    return frames, masks


def _rendered_captions(split: RetrievalSplit, scenes: dict[str, SceneSpec], size: int, fps: int, seconds: float,
                       preprocess: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """The text side: each caption's scene rendered without codec noise at the sampled frame times, ``uint8
    [C,T,S,S,3]``, and its frame mask ``[C,T]``."""
    t = split.sampling.max_frames
    idx, valid = sample_frame_indices(int(round(fps * seconds)), fps, split.sampling)
    times = idx / fps
    rendered = np.zeros((split.num_videos, t, preprocess.image_size, preprocess.image_size, 3), np.uint8)
    for i, entry in enumerate(split.videos):
        rendered[i, :valid] = resize_crop(render_scene(scenes[entry.video_id], times, size, seconds), preprocess)
    masks = np.zeros((split.num_captions, t), dtype=bool)
    masks[:, :valid] = True
    return rendered[split.caption_video], masks


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def synthetic_scenes(split: RetrievalSplit) -> tuple[dict, dict]:
    """``(scene of every video id, info block)`` of the synthetic dataset ``split`` was read from.

    Raises :class:`UsageError` for a split that was not written by ``rapdeploy synth``."""
    if split.dataset != "msrvtt" or split.data_root is None:
        raise UsageError("this needs the msrvtt-layout split written by rapdeploy synth")
    return load_scenes(split.data_root)


def main(argv: list[str] | None = None) -> None:
    """Print the baseline metrics of a synthetic dataset's split as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True, help="folder written by rapdeploy synth")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    args = parser.parse_args(argv)
    result = order_blind_baseline(load_split("msrvtt", args.data_root, args.split))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

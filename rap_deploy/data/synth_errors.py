"""What a model's text-to-video top-1 gets wrong on the synthetic test split, by kind of mistake.

Every test video's time reverse is in the split (:mod:`rap_deploy.data.synth`), and a caption names, per event, an
object (colour, shape, size) and an action. Comparing the meaning of a query's caption with the meaning of the video
a model ranks first sorts each query into one kind:

* ``correct``: the right video;
* ``time_reverse``: the right video's time reverse (the only mistake a model that pools frames without order is
  forced into: the two have the same frames);
* ``other_event_count``: a scene with another number of events;
* ``same_objects``: the same objects (colour and shape) doing other actions;
* ``other_shapes``: objects of the same colours but other shapes;
* ``same_actions``: the same actions, in order, done by other objects;
* ``other``: other objects doing other actions.

Reading the kinds of a checkpoint against those of its frozen backbone (zero-shot) tells where a gain or a ceiling
comes from: temporal modelling removes ``time_reverse`` and ``same_objects`` mistakes, while ``other_shapes`` and
``other`` mistakes are the frozen backbone failing to recognise the objects. On a world with distractors
(``rapdeploy synth --distractors``) R@1 is also split by whether the query's video has one.

Run: ``python -m rap_deploy.data.synth_errors --checkpoint CKPT --data-root DIR [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.data.datasets import RetrievalSplit
from rap_deploy.data.synth import SceneSpec, reverse_scene, scene_key
from rap_deploy.data.synth_baselines import synthetic_scenes
from rap_deploy.errors import UsageError
from rap_deploy.name_lists import some_names

KINDS = ("correct", "time_reverse", "other_event_count", "same_objects", "other_shapes", "same_actions", "other")

SceneKey = tuple[tuple[str, str, str, str], ...]


def mistake_kind(query: SceneKey, ranked_first: SceneKey, reverse_of_query: SceneKey) -> str:
    """The kind (one of :data:`KINDS`) of ranking a video whose scene means ``ranked_first`` first for a caption
    meaning ``query``; ``reverse_of_query`` is the meaning of the query scene's time reverse."""
    if ranked_first == query:
        return "correct"
    if ranked_first == reverse_of_query:
        return "time_reverse"
    if len(ranked_first) != len(query):
        return "other_event_count"
    if _objects(ranked_first) == _objects(query):
        return "same_objects"
    if _colours(ranked_first) == _colours(query):
        return "other_shapes"
    if _actions(ranked_first) == _actions(query):
        return "same_actions"
    return "other"


def _objects(key: SceneKey) -> list[tuple[str, str]]:
    return sorted({(colour, shape) for colour, shape, _, _ in key})


def _colours(key: SceneKey) -> list[str]:
    return sorted({colour for colour, _, _, _ in key})


def _actions(key: SceneKey) -> list[str]:
    return [action for *_, action in key]


def top1_mistakes(sim: np.ndarray, caption_video: Sequence[int], scenes: Sequence[SceneSpec]) -> dict[str, Any]:
    """Sort every query (row of ``sim [captions, videos]``) by what its top-1 video is (see the module doc).

    ``scenes[v]`` is video ``v``'s scene, ``caption_video[c]`` the video caption ``c`` describes. Returns ``kinds``
    (percent of queries per kind, every kind present), ``queries``, ``beats_time_reverse`` (percent of queries whose
    video scores strictly above its time reverse, over the queries whose reverse is in the split) and
    ``with_reverse`` (how many those are) and ``by_distractor`` (:func:`top1_by_distractor`). Raises ``ValueError``
    when the shapes disagree.
    """
    sim = np.asarray(sim)
    caption_video = np.asarray(caption_video, dtype=np.int64)
    if sim.ndim != 2 or sim.shape != (len(caption_video), len(scenes)):
        raise ValueError(f"similarity {sim.shape} does not match {len(caption_video)} captions x {len(scenes)} "
                         "videos")
    keys = [scene_key(s) for s in scenes]
    reverse_keys = [scene_key(reverse_scene(s)) for s in scenes]
    video_of_key = {k: v for v, k in enumerate(keys)}
    counts = dict.fromkeys(KINDS, 0)
    first = sim.argmax(axis=1)
    for video, top in zip(caption_video, first, strict=True):
        counts[mistake_kind(keys[video], keys[top], reverse_keys[video])] += 1
    reverse = np.array([video_of_key.get(reverse_keys[v], -1) for v in caption_video])
    has = reverse >= 0
    rows = np.flatnonzero(has)
    beats = sim[rows, caption_video[has]] > sim[rows, reverse[has]]
    n = len(caption_video)
    return {"kinds": {k: round(100.0 * c / n, 2) if n else 0.0 for k, c in counts.items()}, "queries": n,
            "beats_time_reverse": round(100.0 * float(beats.mean()), 2) if len(rows) else None,
            "with_reverse": int(has.sum()),
            "by_distractor": top1_by_distractor(first == caption_video, caption_video, scenes)}


def top1_by_distractor(correct: np.ndarray, caption_video: np.ndarray, scenes: Sequence[SceneSpec]
                       ) -> dict[str, dict[str, Any]]:
    """R@1 (percent, ``None`` for an empty group) and query count of the queries whose video has a distractor and of
    those whose video has none; ``correct[c]`` says whether query ``c``'s top-1 is its own video.

    Where the text-conditioned selection should pay is on the first group: the caption does not name everything the
    frames show (measured on the 0.5 world, seed 0: ``rap`` 7.9 there against 2.6 for saliency selection).
    """
    with_d = np.array([scenes[v].has_distractor for v in caption_video], dtype=bool)
    out = {}
    for name, group in (("with_distractor", with_d), ("without_distractor", ~with_d)):
        k = int(group.sum())
        out[name] = {"queries": k, "R1": round(100.0 * float(correct[group].mean()), 2) if k else None}
    return out


def split_scenes(split: RetrievalSplit) -> list[SceneSpec]:
    """The scene of every video of ``split`` in split order. Raises :class:`UsageError` for a split that was not
    written by ``rapdeploy synth``, or a video the annotation file has no scene for."""
    scenes, _ = synthetic_scenes(split)
    missing = [v.video_id for v in split.videos if v.video_id not in scenes]
    if missing:
        videos = f"{len(missing)} video" + ("s" if len(missing) > 1 else "")
        raise UsageError(f"{Path(split.data_root) / 'MSRVTT_data.json'} has no scene for {videos} "
                         f"({some_names(missing, 3)}); regenerate the data with rapdeploy synth")
    return [scenes[v.video_id] for v in split.videos]


@dataclass
class EncodedTestSplit:
    """A checkpoint's PyTorch model and its encodings of a synthetic test split (the videos that decode)."""

    model: Any
    encoder: Any
    split: RetrievalSplit
    scenes: list[SceneSpec]
    index: Any  # rap_deploy.retrieval.VideoIndex
    text_emb: np.ndarray


def encode_test_split(checkpoint: str | Path, data_root: str | Path, cache_dir: str | Path | None = None,
                      progress: bool = True, require_asa: bool = False) -> EncodedTestSplit:
    """Load ``checkpoint`` (PyTorch, CPU) and encode the test split of the synthetic dataset at ``data_root``.
    Raises :class:`UsageError` for data not written by ``rapdeploy synth`` and, with ``require_asa``, for a model
    without an ASA head (before anything is decoded); otherwise what loading the checkpoint and data raise."""
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.data.cache import FrameCache
    from rap_deploy.data.datasets import load_split
    from rap_deploy.model_encoder import ModelEncoder
    from rap_deploy.retrieval import encode_texts, encode_videos, usable_videos

    model = load_checkpoint(checkpoint).build_model().eval()
    if require_asa and model.asa is None:
        raise UsageError(f"{checkpoint} has no ASA head (rap_light or --no-asa): there is no patch selection to sort")
    encoder, cache = ModelEncoder(model), FrameCache(cache_dir)
    split = load_split("msrvtt", data_root, "test", max_frames=model.config.frames)
    split, _ = usable_videos(split, cache, encoder.config, progress)
    scenes = split_scenes(split)
    index = encode_videos(encoder, split, cache, progress=progress)
    return EncodedTestSplit(model, encoder, split, scenes, index, encode_texts(encoder, split.captions))


def checkpoint_mistakes(checkpoint: str | Path, data_root: str | Path, cache_dir: str | Path | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Encode the test split of the synthetic dataset at ``data_root`` with ``checkpoint`` (PyTorch, CPU) and return
    ``{"full": ..., "meanp": ...}``: :func:`top1_mistakes` of its full similarity (the ASA head's, meanP for a model
    without one) and of stage 1 alone, plus ``R1`` of each. Raises what :func:`encode_test_split` raises."""
    from rap_deploy.metrics import retrieval_metrics
    from rap_deploy.retrieval import full_similarity, meanp_similarity

    enc = encode_test_split(checkpoint, data_root, cache_dir, progress)
    out = {}
    for name, sim in (("full", full_similarity(enc.encoder, enc.text_emb, enc.index, progress=progress)),
                      ("meanp", meanp_similarity(enc.text_emb, enc.index))):
        out[name] = {"R1": retrieval_metrics(sim, enc.split.caption_video)["t2v"]["R1"],
                     **top1_mistakes(sim, enc.split.caption_video, enc.scenes)}
    return out


def checkpoint_report_main(description: str, report: Any, argv: list[str] | None = None) -> None:
    """The module runs of the synthetic-split reports: ``--checkpoint``, ``--data-root``, ``--cache``; prints
    ``report(checkpoint, data_root, cache_dir, progress=False)`` as JSON; a :class:`UsageError` is one line on
    stderr and exit status 2."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", required=True, help="a RAP checkpoint (.pt), e.g. runs/rap/best.pt")
    parser.add_argument("--data-root", required=True, help="folder written by rapdeploy synth")
    parser.add_argument("--cache", default=None, help="decoded-frame cache folder (default: decode every video)")
    args = parser.parse_args(argv)
    try:
        result = report(args.checkpoint, args.data_root, args.cache, progress=False)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Print the top-1 mistake breakdown of a checkpoint on a synthetic test split as JSON."""
    checkpoint_report_main(__doc__.split("\n")[0], checkpoint_mistakes, argv)


if __name__ == "__main__":
    main()

"""What ``rapdeploy bench`` feeds the engines: frames (random pixels or a dataset's test videos), captions, and the
random index with the query embedding the ``asa`` and ``search`` graphs use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.engines.bench_index import random_index
from rap_deploy.errors import CheckFailedError
from rap_deploy.name_lists import some_names


@dataclass
class BenchInputs:
    """Inputs of one bench run: ``frames``/``mask`` for the video encoder, ``ids``/``eot`` for the text encoder,
    ``index`` (``None`` without asa/search), ``asa_rerank`` (the first videos' re-rank tensors in their index dtypes)
    and ``query_emb`` for the ASA head, and ``description`` for the report."""

    frames: np.ndarray
    mask: np.ndarray
    ids: np.ndarray
    eot: np.ndarray
    description: str
    index: Any = None
    asa_rerank: tuple[np.ndarray, ...] = ()
    query_emb: np.ndarray | None = None


def prepare_inputs(torch_engine: Any, graphs: list[str], max_batch: int, index_size: int, seed: int,
                   data_root: str | Path | None, dataset: str, cache: Any, workspace: Any,
                   progress: bool) -> BenchInputs:
    """Real test frames and captions of ``dataset`` under ``data_root`` (else random pixels and template captions;
    without the ``video`` graph the captions alone, no video decoded), and for the ``asa``/``search`` graphs a random
    index of ``index_size`` videos (at least ``max_batch``)."""
    from rap_deploy.tokenizer import tokenize

    config, model = torch_engine.config, torch_engine.model
    if data_root is not None and "video" in graphs:
        from rap_deploy.data.cache import FrameCache

        cache = cache if cache is not None else FrameCache.default(workspace)
        if not isinstance(cache, FrameCache):
            cache = FrameCache(cache)
        frames, mask, captions, description = real_frames(dataset, Path(data_root), config, max_batch, cache, progress)
    else:  # no video graph: one random clip (nothing times it), no video decoded
        frames = random_frames(config, max_batch if "video" in graphs else 1, seed)
        mask = np.ones(frames.shape[:2], dtype=np.float32)
        if data_root is not None:
            captions, description = real_captions(dataset, Path(data_root), config, max_batch)
        else:
            captions = template_captions(max_batch, seed)
            description = "random frames: uniform random uint8 pixels through CLIP normalisation; template captions"
    ids, eot = tokenize(captions, config.tokenizer)
    inputs = BenchInputs(frames, mask, ids, eot, description)
    if "search" in graphs or "asa" in graphs:
        index = random_index(max(index_size, max_batch), config.frames, model.num_patches, model.embed_dim, seed,
                             asa=model.asa)
        inputs.asa_rerank = index.rerank(slice(0, max_batch))  # in the index's dtypes: engines read them as stored
        inputs.query_emb = torch_engine.encode_text(ids[:1], eot[:1])
        inputs.index = index.subset(index_size) if index_size < len(index) else index
    return inputs


def random_frames(config: Any, videos: int, seed: int = 0) -> np.ndarray:
    """``videos`` clips of random uint8 pixels through the project's CLIP normalisation: ``[B,T,3,S,S]`` float32."""
    from rap_deploy.preprocess import normalize

    rng = np.random.default_rng(seed)
    s = config.preprocess.image_size
    # One batch, written clip by clip (the memory check counts one; a list, its stack and a cast held three), in the
    # channel-last layout normalize gives, as a batch of decoded videos has it (load_video_batch).
    out = np.moveaxis(np.empty((videos, config.frames, s, s, 3), dtype=np.float32), -1, 2)
    for i in range(videos):
        out[i] = normalize(rng.integers(0, 256, (config.frames, s, s, 3), dtype=np.uint8), config.preprocess).numpy()
    return out


def real_frames(dataset: str, data_root: Path, config: Any, videos: int, cache: Any, progress: bool
                ) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Up to ``videos`` preprocessed test videos of ``dataset`` (repeated to fill ``videos``) with their captions.

    Returns ``(frames, frame_mask, captions, description)``; raises :class:`CheckFailedError` when none of the videos
    the split's annotations name is there and decodes (exit 1, a damaged dataset, as data-check and verify judge it).
    """
    from rap_deploy.data.datasets import load_split
    from rap_deploy.retrieval import load_video_batch

    split, skipped = first_decodable(load_split(dataset, data_root, "test", max_frames=config.frames), videos,
                                     cache, config, progress)
    if split.num_videos == 0 or split.num_captions == 0:
        from rap_deploy.retrieval import videos_folder_hint

        named = some_names([f"{s['video_id']}: {s['reason']}" for s in skipped], 3, sep="; ")
        hint = videos_folder_hint(split, skipped) if split.num_videos == 0 else ""
        raise CheckFailedError(f"no {dataset} test video under {data_root} could be decoded ({len(skipped)} "
                               f"skipped: {named}){hint}; run `rapdeploy data-check`")
    idx = [i % split.num_videos for i in range(videos)]
    frames, mask = load_video_batch(split, idx, cache, config)
    captions = [split.captions[i % split.num_captions] for i in range(videos)]
    ids = some_names([s["video_id"] for s in skipped])
    passed_over = f"; {len(skipped)} missing or undecodable passed over ({ids})" if skipped else ""
    return (frames, mask, captions,
            f"real frames: {split.num_videos} {dataset} test videos from {data_root}{passed_over}")


def first_decodable(split: Any, videos: int, cache: Any, config: Any, progress: bool
                    ) -> tuple[Any, list[dict[str, str]]]:
    """``split`` cut to its first ``videos`` videos that decode (all that do when fewer), and the skipped ones
    (``{video_id, reason}``) met before them. A missing or damaged video among the first ones is passed over, as
    verify and export do, where taking the first ``videos`` and dropping the bad ones timed fewer distinct videos,
    or failed outright when all of them were bad."""
    from rap_deploy.retrieval import decodable_videos

    good, skipped = decodable_videos(split, cache, config, progress, limit=videos)
    return split.subset(good), skipped


def real_captions(dataset: str, data_root: Path, config: Any, count: int) -> tuple[list[str], str]:
    """``count`` test captions of ``dataset`` (repeated to fill), those of its first videos as :func:`real_frames`
    takes them, without decoding a video: the text, asa and search graphs time no frames.

    Returns ``(captions, description)``; raises :class:`CheckFailedError` when the split has no caption (exit 1).
    """
    from rap_deploy.data.datasets import load_split

    split = load_split(dataset, data_root, "test", max_frames=config.frames)
    split = split.subset(list(range(min(count, split.num_videos))))
    if split.num_captions == 0:
        raise CheckFailedError(f"the {dataset} test split under {data_root} has no caption; run "
                               "`rapdeploy data-check`")
    captions = [split.captions[i % split.num_captions] for i in range(count)]
    return captions, (f"real captions: those of {split.num_videos} {dataset} test videos from {data_root}; no video "
                      "graph, so no frames")


_COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
_SHAPES = ("circle", "square", "triangle", "diamond")
_ACTIONS = ("moves to the left", "moves up", "grows", "shrinks", "appears", "slides to the right")


def template_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` short captions of the synthetic world (text-encoder inputs when no dataset is given)."""
    rng = np.random.default_rng(seed)
    return [f"a {rng.choice(('small', 'big'))} {rng.choice(_COLOURS)} {rng.choice(_SHAPES)} "
            f"{rng.choice(_ACTIONS)}, then a {rng.choice(_COLOURS)} {rng.choice(_SHAPES)} {rng.choice(_ACTIONS)}"
            for _ in range(n)]

"""The training data of a run: the epoch unit, the memory check of a batch, the loaded training and evaluation
splits (:func:`load_data`), and the error for a training split without a usable video."""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING, Any

import numpy as np

from rap_deploy.errors import CheckFailedError
from rap_deploy.name_lists import some_names
from rap_deploy.train import distributed as D

if TYPE_CHECKING:
    from rap_deploy.train.loop import TrainOptions


def resolve_epoch_unit(unit: str, item_video: np.ndarray) -> str:
    """``unit``, with ``auto`` resolved: ``caption`` when some video has several training captions, else ``video``."""
    if unit != "auto":
        return unit
    return "caption" if len(item_video) > len(np.unique(item_video)) else "video"


def load_data(options: TrainOptions, config, cache, ctx: D.DistContext, progress: bool):
    """The prepared training dataset (bad videos skipped and counted) and the evaluation split."""
    from rap_deploy.data.datasets import VideoCaptionDataset, load_split

    train_split = load_split(options.dataset, options.data_root, "train", max_frames=config.frames)
    if options.max_train_videos is not None:
        train_split = train_split.subset(list(range(min(options.max_train_videos, train_split.num_videos))))
    test_split = load_split(options.dataset, options.data_root, options.test_split, max_frames=config.frames)
    if options.max_test_videos is not None:
        test_split = test_split.subset(list(range(min(options.max_test_videos, test_split.num_videos))))
    check_batch_memory(options, config, np.asarray(train_split.caption_video), ctx)
    dataset = VideoCaptionDataset(train_split, cache, config.preprocess, config.tokenizer)
    # Rank 0 decodes into the cache first; the other ranks then read it (same result, no duplicated decoding).
    if ctx.is_main:
        dataset.prepare(progress=progress)
    D.barrier(ctx)
    if not ctx.is_main:
        dataset.prepare(progress=False)
    if len(dataset) == 0:  # damaged data, not bad usage (exit 1, as data-check and verify say)
        raise _no_training_video(options, dataset)
    return dataset, test_split


def _no_training_video(options: TrainOptions, dataset: Any) -> CheckFailedError:
    """The error for a training split without a usable video: the first few and why, where the videos were looked
    for when all are missing, and the data-check command that lists them all."""
    from rap_deploy.retrieval import videos_folder_hint

    bad = dataset.bad_videos
    named = some_names([f"{b['video_id']}: {b['reason']}" for b in bad], 3, sep="; ")
    check = f"rapdeploy data-check --dataset {options.dataset} --data-root {shlex.quote(str(options.data_root))} " \
            "--split train"
    return CheckFailedError(f"no usable training video in {options.data_root} ({len(bad)} missing or undecodable: "
                            f"{named}){videos_folder_hint(dataset.split, bad)}; run `{check}`")


def check_batch_memory(options: TrainOptions, config: Any, caption_video: np.ndarray, ctx: D.DistContext) -> None:
    """Refuse a training batch whose frames cannot fit in this machine's memory (:class:`UsageError`, exit 2,
    naming --batch-size, --frames and --workers) before any video is decoded: such a run was killed part-way, after
    decoding the whole training set. ``caption_video`` is the training split's (its epoch bounds the batch).

    Counted: each process's share of the global batch as float32 frames, twice (the items and their stack), and
    the 2 batches each DataLoader worker prepares ahead, for every process of this machine (torchrun's
    ``LOCAL_WORLD_SIZE``). Nothing for an evaluation-only run (``epochs`` 0).
    """
    from rap_deploy.bounds import check_memory
    from rap_deploy.train.batches import items_per_epoch

    per_epoch = items_per_epoch(caption_video, resolve_epoch_unit(options.epoch_unit, caption_video))
    batch = min(options.batch_size, per_epoch)
    if options.epochs == 0 or batch == 0:
        return
    per_process = -(-batch // ctx.world_size)
    size = config.preprocess.image_size
    video_bytes = config.frames * (3 * size * size + 1) * 4
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if ctx.distributed else 1
    copies = 2 + 2 * options.num_workers
    workers = f", {options.num_workers} workers" if options.num_workers else ""
    check_memory(local * per_process * video_bytes * copies,
                 f"a training batch of {per_process} videos x {config.frames} frames of {size}x{size} px (per "
                 f"process, {local} process(es) here{workers})",
                 "pass a smaller --batch-size or --frames" + (", or fewer --workers" if options.num_workers else "")
                 + " (a resumed run keeps its batch and frames)")

"""Deterministic epoch batching: the whole global batch order is a pure function of (seed, epoch).

Every rank computes the same global batches and takes its own contiguous share (``distributed.shard``), so sharding
is deterministic and a resumed run replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.utils.data

from rap_deploy.errors import CheckFailedError, RapDeployError
from rap_deploy.name_lists import some_names

EPOCH_UNITS = ("video", "caption")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, epoch)`` only."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % (1 << 63))  # stays a 64-bit seed


def epoch_order(item_video: np.ndarray, seed: int, epoch: int, unit: str = "video") -> list[int]:
    """Item positions for one epoch, shuffled.

    ``item_video[i]`` is the video of training item ``i`` (one item per usable caption). ``unit="video"``: each video
    once, with one of its captions drawn at random (so a batch never holds one video twice); ``unit="caption"``:
    every caption once. Raises ``ValueError`` for an unknown unit.
    """
    if unit not in EPOCH_UNITS:
        raise ValueError(f"epoch unit '{unit}' is unknown; use one of {', '.join(EPOCH_UNITS)}")
    gen = epoch_generator(seed, epoch)
    item_video = np.asarray(item_video, dtype=np.int64)
    if unit == "caption":
        return torch.randperm(len(item_video), generator=gen).tolist()
    order = np.argsort(item_video, kind="stable")
    videos, starts, counts = np.unique(item_video[order], return_index=True, return_counts=True)
    perm = torch.randperm(len(videos), generator=gen).tolist()
    picks = (torch.rand(len(videos), generator=gen).numpy() * counts).astype(np.int64)
    return [int(order[starts[v] + picks[v]]) for v in perm]


def epoch_batches(item_video: np.ndarray, batch_size: int, seed: int, epoch: int, unit: str = "video"
                  ) -> list[list[int]]:
    """Global batches of ``batch_size`` item positions for ``epoch`` (the last incomplete batch is dropped)."""
    order = epoch_order(item_video, seed, epoch, unit)
    n = len(order) // batch_size
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n)]


def items_per_epoch(item_video: np.ndarray, unit: str = "video") -> int:
    """How many items one epoch visits (videos for ``unit="video"``, captions for ``"caption"``)."""
    return len(np.unique(item_video)) if unit == "video" else len(item_video)


# ------------------------------------------------------------------------------------- reading the batches


UNREADABLE = "unreadable"
FAILED = "failed"


class TrainingItems(torch.utils.data.Dataset):
    """The training dataset as the epoch's DataLoader reads it (with :func:`collate_items`): an item whose video can
    no longer be read (:class:`~rap_deploy.data.video.VideoDecodeError`: it decoded when the run started, then its
    file changed) comes back as ``{"unreadable": "<path>: <reason>"}`` instead of raising, so the loop can stop with
    one line from a worker process too (torch re-raised a worker's error as a RuntimeError holding its traceback). Any
other user-facing error (:class:`~rap_deploy.errors.RapDeployError`: a frame cache on a full disk) comes back as
``{"failed": (exit_code, message)}`` for the same reason."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        from rap_deploy.data.video import VideoDecodeError

        try:
            return self.dataset[index]
        except VideoDecodeError as exc:
            return {UNREADABLE: str(exc)}
        except RapDeployError as exc:
            return {FAILED: (exc.exit_code, str(exc))}


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """torch's default collation of :class:`TrainingItems`, or ``{"unreadable": [...]}`` naming every unreadable
    video of the batch (or ``{"failed": (exit_code, message)}``, the first other error of the batch)."""
    failed = [item[FAILED] for item in items if FAILED in item]
    if failed:
        return {FAILED: failed[0]}
    unreadable = [item[UNREADABLE] for item in items if UNREADABLE in item]
    if unreadable:
        return {UNREADABLE: unreadable}
    return torch.utils.data.default_collate(items)


def check_readable(batch: dict[str, Any], epoch: int, resume_line: Callable[[], str]) -> None:
    """Raise :class:`CheckFailedError` (damaged data, exit 1) naming the videos of a batch from :func:`collate_items`
    that could not be read in ``epoch`` and what to do (``resume_line()``: how to continue the run, asked only then:
    this runs every step); re-raises another error an item met as :class:`RapDeployError` with its exit code and
    line."""
    if FAILED in batch:
        code, message = batch[FAILED]
        error = RapDeployError(message)
        error.exit_code = int(code)
        raise error
    if UNREADABLE in batch:
        named = some_names(batch[UNREADABLE], 2, sep="; ")
        raise CheckFailedError(f"a training video could not be read in epoch {epoch} ({named}); it decoded when the "
                               f"run started, so its file changed since; nothing of epoch {epoch} was written: "
                               "restore it (`rapdeploy data-check --split train` lists what fails), then "
                               f"{resume_line()}")

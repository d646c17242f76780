"""Deterministic epoch batching: the whole global batch order is a pure function of (seed, epoch).

Every rank computes the same global batches and takes its own contiguous share (``distributed.shard``), so sharding
is deterministic and a resumed run replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
import torch

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

"""Data-parallel set-up (:mod:`rap_deploy.train.distributed`) as torchrun launches it, without a second process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from rap_deploy.errors import UsageError


def test_more_processes_per_node_than_gpus_is_a_usage_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a machine with one GPU: rank 1 (LOCAL_RANK 1) called torch.cuda.set_device(1)
    and every such rank died with torch's 'invalid device ordinal' traceback. It is now a usage error naming the GPU
    count and the fix, raised before the process group is joined. (Simulated: a one-GPU machine.)"""
    from rap_deploy.train import distributed as D

    joined = []
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)  # CPU torch: the real one cannot run here
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kwargs: joined.append(kwargs))
    with pytest.raises(UsageError, match=r"GPU 1 \(LOCAL_RANK\), but this machine has 1 GPU.*--nproc_per_node 1"):
        D.setup("auto")
    assert not joined
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert D.setup("auto").device == "cuda:0" and joined

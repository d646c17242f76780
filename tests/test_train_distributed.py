"""Training on devices and processes: data-parallel set-up as torchrun launches it, device memory errors."""

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


def test_running_out_of_device_memory_in_a_step_names_the_batch(synth_root, tmp_path, monkeypatch):
    """A global batch too large for the GPU raised torch's OutOfMemoryError out of the training loop, a traceback
    (from every rank under torchrun). It is now a usage error naming the batch per process and what to change.
    (Simulated: the loss raises the error torch raises.)"""
    from rap_deploy.train import training_run
    from rap_deploy.train.loop import TrainOptions, train_rap

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(training_run, "batch_loss", out_of_memory)
    options = TrainOptions(dataset="msrvtt", data_root=str(synth_root), out=str(tmp_path / "run"), clip="rap-micro",
                           pretrained="none", frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=1,
                           batch_size=8, max_train_videos=8, max_test_videos=4, top_m=4,
                           cache_dir=str(tmp_path / "cache"), epoch_unit="video")
    with pytest.raises(UsageError, match=r"ran out of memory in a training step of 8 videos x 4 frames per process "
                                         r"\(global batch 8\).*smaller --batch-size"):
        train_rap(options, progress=False)


def test_fewer_training_items_than_processes_is_a_usage_error_not_zero_steps(synth_root, tmp_path, monkeypatch):
    """Two training videos under torchrun with 3 processes (simulated: rank 0 of 3): the global batch became 3, an
    epoch held 2 // 3 = 0 steps, and the run finished every epoch without a step, reporting loss 0. It is now a
    usage error before anything is trained or written."""
    from rap_deploy.train import distributed as D
    from rap_deploy.train.loop import TrainOptions, train_rap

    monkeypatch.setattr(D, "setup", lambda device="auto": D.DistContext(rank=0, world_size=3))
    for name in ("barrier", "broadcast_parameters", "cleanup"):
        monkeypatch.setattr(D, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(D, "gather_strings", lambda value, ctx: [value] * ctx.world_size)  # every rank's data agrees
    run = tmp_path / "run"
    options = TrainOptions(dataset="msrvtt", data_root=str(synth_root), out=str(run), clip="rap-micro",
                           pretrained="none", frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=1,
                           batch_size=8, max_train_videos=2, max_test_videos=4, top_m=4,
                           cache_dir=str(tmp_path / "cache"), epoch_unit="video")
    with pytest.raises(UsageError, match="an epoch holds 2 training item.*fewer than the 3 processes"):
        train_rap(options, progress=False)
    assert not run.exists()


def test_processes_that_read_different_data_are_refused_not_left_waiting(synth_root, tmp_path, monkeypatch):
    """Under torchrun each node reads its own --data-root: a node whose copy lacks (or holds another) video
    prepared other training items than rank 0, trained on other batches and, with another step count, waited at a
    collective for up to the process group's 24 h timeout. The processes now compare their data fingerprints
    before training: a usage error naming both. (Simulated: rank 0 of 2, process 1's fingerprint counting 5
    captions fewer.)"""
    import json

    from rap_deploy.train import distributed as D
    from rap_deploy.train.loop import TrainOptions, train_rap

    def other_on_rank_1(out, value):
        theirs = json.loads(value)
        theirs.update(train_captions=theirs["train_captions"] - 5, sha256="0" * 64)
        out[:] = [value, json.dumps(theirs, sort_keys=True)]

    monkeypatch.setattr(D, "setup", lambda device="auto": D.DistContext(rank=0, world_size=2))
    for name in ("barrier", "broadcast_parameters", "cleanup"):
        monkeypatch.setattr(D, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(dist, "all_gather_object", other_on_rank_1)
    run = tmp_path / "run"
    options = TrainOptions(dataset="msrvtt", data_root=str(synth_root), out=str(run), clip="rap-micro",
                           pretrained="none", frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=1,
                           batch_size=8, max_train_videos=8, max_test_videos=4, top_m=4,
                           cache_dir=str(tmp_path / "cache"), epoch_unit="video")
    with pytest.raises(UsageError, match=r"read different data: process 0 found 40 training captions of 8 usable "
                                         r"videos, .*process 1 35 training captions of 8 usable videos"):
        train_rap(options, progress=False)
    assert not run.exists()

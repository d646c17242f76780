"""Data-parallel training helpers: process-group setup, deterministic sharding, gathering with gradient.

Launched by ``torchrun --nproc_per_node N -m rap_deploy.cli train ...``: the environment variables torchrun sets
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) select the distributed mode. The backend
is NCCL on CUDA and gloo on CPU. No ``DistributedDataParallel`` wrapper is used: the adapters are tiny, so after
``backward`` the gradients are summed across ranks in one flat all-reduce (:func:`all_reduce_gradients`), which
together with :func:`gather_with_grad` makes every rank's update equal to the single-process update over the global
batch (see ``rap_deploy.train.losses``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rap_deploy.errors import UsageError

# How long a rank waits at a collective. Rank 0 decodes the training set into the frame cache and runs every
# evaluation alone while the others wait at a barrier; torch's defaults (NCCL 10 min, gloo 30 min) aborted them when
# that took longer, as decoding a real dataset's training videos on a cold cache does. A rank that dies still stops
# the run at once: torchrun tears the other workers down.
PROCESS_GROUP_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``, and whether it is the main process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and prints."""
        return self.rank == 0


def setup(device: str = "auto") -> DistContext:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE > 1``); return the context.

    ``device`` is ``auto`` (CUDA when available), ``cpu`` or ``cuda``. On CUDA each rank uses GPU ``LOCAL_RANK``.
    Collectives wait up to :data:`PROCESS_GROUP_TIMEOUT`.
    Raises :class:`UsageError` when CUDA is requested but absent, and when a rank's ``LOCAL_RANK`` names a GPU this
    machine does not have (more processes per node than GPUs).
    """
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but torch sees no CUDA device; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return DistContext(device="cuda" if want_cuda else "cpu")
    backend = "nccl" if want_cuda else "gloo"
    dev = f"cuda:{local_rank}" if want_cuda else "cpu"
    if want_cuda:
        _check_local_gpu(local_rank, rank, world)
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank,
                                timeout=PROCESS_GROUP_TIMEOUT)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def _check_local_gpu(local_rank: int, rank: int, world: int) -> None:
    """Raise :class:`UsageError` when GPU ``local_rank`` does not exist here (torch raised 'invalid device ordinal'
    from every rank without one, as a traceback)."""
    gpus = torch.cuda.device_count()
    if not 0 <= local_rank < gpus:
        raise UsageError(f"process {rank} of {world} would train on GPU {local_rank} (LOCAL_RANK), but this machine "
                         f"has {gpus} GPU(s): launch at most {gpus} processes per node (torchrun --nproc_per_node "
                         f"{gpus}), or train on the CPU with --device cpu")


def cleanup(ctx: DistContext) -> None:
    """Tear the process group down (no-op for a single process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.distributed:
        dist.barrier()


def gather_strings(value: str, ctx: DistContext) -> list[str]:
    """Every rank's ``value``, in rank order (``[value]`` for a single process)."""
    if not ctx.distributed:
        return [value]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return [str(v) for v in out]


def shard(global_batch: list[int], ctx: DistContext) -> list[int]:
    """This rank's contiguous share of a global batch (whose length is a multiple of the world size)."""
    if len(global_batch) % ctx.world_size:
        raise ValueError(f"global batch of {len(global_batch)} does not split over {ctx.world_size} ranks")
    per = len(global_batch) // ctx.world_size
    return global_batch[ctx.rank * per:(ctx.rank + 1) * per]


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 whose backward sums the incoming gradients over ranks and keeps the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate ``x`` (equal shapes on every rank) over ranks in rank order; gradients flow back to each rank.

    For a loss ``L = Σ_r L_r`` where rank ``r`` computes ``L_r``, each rank receives ``∂L/∂x_r`` (the sum over ranks).
    """
    if not ctx.distributed:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``value`` over ranks (a new tensor; unchanged for a single process)."""
    if not ctx.distributed:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_gradients(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """Sum the ``.grad`` of ``params`` over ranks in place, in one flat all-reduce (missing grads count as zero)."""
    if not ctx.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def broadcast_parameters(params: list[torch.Tensor], ctx: DistContext) -> None:
    """Copy rank 0's values of ``params`` to every rank (so all ranks start from identical weights)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)

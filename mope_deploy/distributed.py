"""torch.distributed glue shared by scoring and training: ranks from torchrun's environment (gloo on CPU,
NCCL on GPUs), object gathering for score tables, and the two collectives data-parallel training needs.

Training averages gradients with one flattened all-reduce per step instead of wrapping the model in
``DistributedDataParallel``: the trainer's forward is pluggable (it calls the towers directly to collect
hidden states), which DDP's forward hooks do not see; the arithmetic is the same as DDP's.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_from_env() -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); return ``(rank, world_size)``.

    Without torchrun this is a no-op returning ``(0, 1)``. On GPUs each rank takes ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group)."""
    _, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (so all ranks use bit-identical inputs)."""
    _, world = rank_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor; the backward pass sums the gradient over ranks and keeps this rank's slice
    (each rank's loss depends on every rank's rows)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = rank_world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, keeping the gradient path to the local part.

    Contrastive losses need the whole global batch as negatives; with this, every rank computes the loss of the
    global batch and, after gradient averaging, the update equals a one-process run on that batch. All ranks must
    pass the same number of rows.
    """
    if rank_world()[1] == 1:
        return x
    return _AllGather.apply(x)


def average_gradients(params) -> None:
    """All-reduce and average the gradients of ``params`` over ranks (one flattened buffer)."""
    _, world = rank_world()
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def shard(batch_size: int) -> slice:
    """This rank's rows of a global batch (the batch size must divide evenly)."""
    rank, world = rank_world()
    if batch_size % world:
        raise ValueError(f"global batch size {batch_size} is not divisible by the {world} processes; "
                         "choose a batch size that is a multiple of --nproc_per_node")
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

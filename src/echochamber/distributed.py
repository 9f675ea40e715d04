"""torch.distributed plumbing for torchrun: one process per GPU (or CPU process), data-parallel (DDP).

A plain `echochamber pretrain ...` is a world of one and none of this touches torch.distributed;
`torchrun --nproc_per_node 8 -m echochamber pretrain ...` (or across machines with --nnodes) gives a world of many.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init(device: str | None = None) -> DistContext:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) and join the process group if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, local_rank, world, dev)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def maybe_no_sync(model: torch.nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def mean(value: float, ctx: DistContext) -> float:
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    tdist.all_reduce(t)
    return t.item() / ctx.world_size


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        tdist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.active and tdist.is_initialized():
        tdist.destroy_process_group()

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


def init(device: str | None = "auto") -> DistContext:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) and join the process group if there is one.
    device: auto (a GPU when there is one, else the CPU), cpu, cuda (this process's GPU: cuda:LOCAL_RANK), or an
    explicit torch device string."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda, but torch sees no GPU here (use device=auto or device=cpu)")
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        # NCCL is bound to this process's GPU from the start (its barriers then never guess a device by rank,
        # which is wrong on every node but the first); gloo takes no device.
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                 device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank, local_rank, world, dev)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, sync: bool):
    """Gradient synchronisation only on the last micro-batch of an accumulated step: the forward AND backward of
    the other micro-batches run inside this with sync=False. DDP: its no_sync() skips the all-reduce. FSDP2
    (fully_shard modules have no no_sync): set_requires_gradient_sync(False) skips the reduce-scatter, and the
    unsharded gradients accumulate until the last micro-batch reduces them all at once."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif sync or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield


def check_device(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """A tensor handed to a collective must live on the process's device: NCCL takes only tensors on the
    process's own GPU (gloo on a CPU would take a CPU tensor from a GPU run, which is how such a bug hides in
    CPU tests). Every collective on tensors goes through here, so a wrong tensor fails at once, by name."""
    want = ctx.device
    if t.device.type != want.type or (want.index is not None and t.device.index != want.index):
        raise RuntimeError(f"a {tuple(t.shape)} {t.dtype} tensor on {t.device} was handed to a collective of a "
                           f"process on {ctx.device}; collectives take tensors on the process's device "
                           f"(create it with device=ctx.device)")
    return t


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        tdist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.active and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all processes, in place (a world of one returns it unchanged)."""
    if ctx.active:
        tdist.all_reduce(check_device(t, ctx))
    return t


def all_gather_objects(obj, ctx: DistContext) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process (pickled Python objects: rows, lists, stats)."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    tdist.all_gather_object(out, obj)
    return out


def all_reduce_grads(params, ctx: DistContext) -> None:
    """Sum every parameter's gradient over the processes, in one flat buffer (data parallelism's all-reduce,
    once per optimizer step; each process's loss is already divided by the global token or sequence count)."""
    if not ctx.active:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:  # a process with no sample in this mini-batch has no gradient: it adds zeros
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(check_device(flat, ctx))
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def share(n: int, ctx: DistContext) -> tuple[int, int]:
    """This process's contiguous slice [start, stop) of n items split as evenly as possible over the ranks."""
    per, extra = divmod(n, ctx.world_size)
    start = ctx.rank * per + min(ctx.rank, extra)
    return start, start + per + (ctx.rank < extra)


def shard(model: torch.nn.Module, ctx: DistContext, *, fsdp: bool, activation_checkpointing: bool,
          param_dtype: torch.dtype | None = None) -> bool:
    """Memory for large models. activation_checkpointing: each block's activations are recomputed in the backward
    pass instead of kept. fsdp (under torchrun): FSDP2's fully_shard on every block and then on the whole model,
    so each process holds 1/world of the parameters, gradients and optimizer state (parameters become DTensors;
    make the optimizer afterwards). param_dtype (e.g. bf16): the dtype parameters are all-gathered and computed
    in, with gradients reduced in fp32 and the sharded fp32 master weights stepped by the optimizer (OLMo's
    `fsdp.precision: mixed`, as the authors ran); None: fp32 throughout. Returns whether the model is now sharded."""
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in model.blocks:
            checkpoint(block)
    if not (fsdp and ctx.active):
        return False
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return True


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole (unsharded) model and optimizer state dicts, on the CPU, from a sharded model: a collective, so
    every process calls it (rank 0 then writes them)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, opt, options=options)


def load_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer, model_state: dict, opt_state: dict) -> None:
    """Load whole state dicts (as full_state gave them) into a sharded model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, opt, opt_state, options=options)

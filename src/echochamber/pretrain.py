"""Pretraining from scratch: next-token prediction on a packed mixture.

    echochamber pretrain --config quickstart pretrain.max_steps=2000

One optimizer step = grad_accum micro-batches of batch_size sequences on every process (torchrun for more than
one). Everything a resumed run needs - weights, AdamW state, RNG states, the next row of the packed data, the
step - is in an atomically written checkpoint, so N steps straight equal N/2 steps, stop, resume, N/2 steps,
loss for loss.

Run folder:
    checkpoints/step_000200/{model.safetensors, model_config.json, trainer_state.pt}   (the last `keep_checkpoints`)
    checkpoints/latest.json       {"step": 200, "path": "step_000200"}  (written after the folder is complete)
    model/                        final weights + tokenizer.json: what `rl` and `eval` start from
    metrics.jsonl, tb/            per-step loss, lr, grad norm, tokens/s, validation loss
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from . import distributed as dist
from .checks import check
from .cpu import pin_threads, rebalance
from .data import PackedDataset
from .model import CompiledForTraining, OLMo, ModelConfig
from .plan import resolve_grad_accum, resolve_pretrain_steps
from .checkpoint import export_model, save_checkpoint
from .runio import append_jsonl
from .training import autocast_ctx, cosine_lr, exclusive, make_optimizer, set_lr, start_or_resume, trainer_state
from .tracking import Tracker


@dataclass
class PretrainConfig:
    max_steps: int = 1000  # optimizer steps; 0 = one epoch over the mixture (paper: one epoch)
    batch_size: int = 32  # sequences per micro-batch per process (paper: 512 x 2048 tokens per step in all)
    grad_accum: int = 1  # micro-batches per optimizer step; 0 = whatever makes global_batch
    global_batch: int = 0  # sequences per step over all processes, checked against batch_size x grad_accum x
    # processes (paper: 512); 0 = unchecked
    lr: float = 1e-3  # peak learning rate (paper: 1e-3)
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak (paper: 0.1)
    warmup_steps: int = 100  # linear warmup (paper: 5000)
    weight_decay: float = 0.1  # AdamW, on matrices only (paper: 0.1)
    betas: tuple[float, float] = (0.9, 0.95)  # paper: (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm (paper: 1.0)
    autocast: Literal["bfloat16", "float32"] = "bfloat16"  # matmul precision (paper: bf16)
    eval_every: int = 100  # steps between validation losses (and at the end)
    eval_batches: int = 8  # validation micro-batches per evaluation
    ckpt_every: int = 200  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2  # older checkpoints are deleted once a newer one is complete
    log_every: int = 10  # steps between metric records
    stop_at: int | None = None  # stop (with a checkpoint) at this step, to resume later; the schedule still spans max_steps
    data_dir: str | None = None  # packed data from `echochamber data`; default OUT_DIR/data
    threads: int = 0  # torch intra-op threads; 0 = all cores
    fsdp: bool = False  # under torchrun: FSDP2, parameters, gradients and optimizer state sharded (paper: FSDP for
    # 1B, DDP for 150M); otherwise data-parallel DDP
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass (less memory)
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile the training step (not with fsdp); auto: on a
    # GPU, and on a CPU for runs of at least COMPILE_MIN_STEPS steps, where the ~30 s compilation pays back
    seed: int | None = None  # initialisation; None = the run's top-level `seed`

    def __post_init__(self):
        check(self, at_least_1=("batch_size", "eval_every", "eval_batches", "ckpt_every", "keep_checkpoints",
                                "log_every"),
              at_least_0=("max_steps", "grad_accum", "global_batch", "warmup_steps", "weight_decay", "threads"), positive=("lr", "eps", "grad_clip"),
              unit=("min_lr_ratio",))


# Compiling the step takes about 30 s on 2 cores and saves about 0.08 s of a 0.24 s olmo-tiny step (bench/README.md),
# so on a CPU "auto" compiles only runs long enough to win that back, with a margin.
COMPILE_MIN_STEPS = 600


def use_compile(cfg: PretrainConfig, device: torch.device, steps_left: int, sharded: bool) -> bool:
    """Whether this run trains through torch.compile (model.CompiledForTraining): "on"/"off" decide, FSDP never
    (not tested here), "auto" on a GPU and on a CPU for at least COMPILE_MIN_STEPS remaining steps."""
    if sharded or cfg.compile == "off":
        return False
    return cfg.compile == "on" or device.type == "cuda" or steps_left >= COMPILE_MIN_STEPS


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine to min_lr_ratio * lr at max_steps."""
    return cosine_lr(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)


def lm_loss(model: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over a packed batch. rows: (B, T+1) -> inputs rows[:, :-1], targets rows[:, 1:]."""
    # The model's fused head returns fp32 log p(target) (B, T) without materialising (B, T, V) logits.
    return -model(rows[:, :-1], rows[:, 1:]).mean()


# ----------------------------------------------------------------------------- training

@torch.no_grad()
def validation_loss(model, val: PackedDataset, cfg: PretrainConfig, device) -> float:
    """Mean loss over the first eval_batches micro-batches of the validation split (the same rows every time)."""
    model.eval()
    losses = []
    n = min(cfg.eval_batches, max(1, val.n_sequences // cfg.batch_size))
    for i in range(n):
        rows = val.batch(i * cfg.batch_size, min(cfg.batch_size, val.n_sequences)).to(device)
        with autocast_ctx(device, cfg.autocast):
            losses.append(lm_loss(model, rows))
    model.train()
    return float(np.mean(torch.stack(losses).tolist()))  # one copy to the host


def pretrain(cfg, out_dir: str | Path, *, progress: bool = True, allow_config_change: bool = False) -> Path:
    """Run (or resume) pretraining described by RunConfig `cfg`; returns the folder of the final model."""
    ctx = dist.init(cfg.device)
    with exclusive(Path(out_dir), enabled=ctx.is_main):
        return _pretrain(cfg, Path(out_dir), ctx, progress, allow_config_change)


def _pretrain(cfg, out_dir: Path, ctx, progress: bool, allow_config_change: bool) -> Path:
    pcfg: PretrainConfig = cfg.pretrain
    device = ctx.device
    if device.type == "cpu":
        pin_threads(pcfg.threads)  # what the config asks for (0: cores // jobs, cpu.py)

    data_dir = Path(pcfg.data_dir) if pcfg.data_dir else Path(cfg.out_dir) / "data"
    train, val = PackedDataset(data_dir, "train"), PackedDataset(data_dir, "val")
    # The global batch checked (or grad_accum derived from it) and max_steps 0 made one epoch: the resolved
    # values are what runs (and what the resumed-config check compares).
    pcfg = dataclasses.replace(pcfg, grad_accum=resolve_grad_accum(pcfg.batch_size, pcfg.grad_accum,
                                                                   pcfg.global_batch, ctx.world_size))
    pcfg = dataclasses.replace(pcfg, max_steps=resolve_pretrain_steps(pcfg, train.n_sequences, ctx.world_size))
    run_dir = out_dir
    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"

    torch.manual_seed(pcfg.seed)
    model_cfg: ModelConfig = cfg.model.resolve(vocab_size=train.vocab_size)
    model = OLMo(model_cfg).to(device)
    # FSDP with bf16 autocast computes in bf16 parameters, reducing gradients in fp32 (the authors' mixed precision).
    sharded = dist.shard(model, ctx, fsdp=pcfg.fsdp, activation_checkpointing=pcfg.activation_checkpointing,
                         param_dtype=torch.bfloat16 if pcfg.autocast == "bfloat16" else None)
    opt = make_optimizer(model, pcfg.lr, pcfg.weight_decay, pcfg.betas, pcfg.eps)  # after sharding: of the shards

    # Resume: weights, optimizer, RNG, data position and step from the latest complete checkpoint.
    state = start_or_resume(run_dir, cfg, "pretrain", model, opt, device=device, ctx=ctx,
                            allow_config_change=allow_config_change, sharded=sharded)
    step, next_row = (state["step"], state["next_row"]) if state else (0, 0)
    # Wall time since the pretraining began, over every resumption (a checkpoint carries it; older ones: 0).
    t_start, wall_before = time.perf_counter(), (state or {}).get("wall_seconds", 0.0)

    def savable() -> tuple[OLMo | None, dict]:
        """The model and optimizer state as one process holds them (FSDP: gathered onto rank 0, a collective
        every process calls; the others get None)."""
        if not sharded:
            return model, opt.state_dict()
        model_state, opt_state = dist.full_state(model, opt)
        if not ctx.is_main:
            return None, {}
        whole = OLMo(model_cfg)
        whole.load_state_dict(model_state)
        return whole, opt_state

    last_step = min(pcfg.max_steps, pcfg.stop_at or pcfg.max_steps)
    compiled = use_compile(pcfg, device, last_step - step, sharded)
    train_model = CompiledForTraining(model) if compiled else model
    ddp_model = model if sharded else dist.wrap(train_model, ctx)
    tracker = None
    if ctx.is_main:
        tracker = Tracker(run_dir, cfg, "pretrain")  # TensorBoard, and W&B with log.wandb
        n_params = model.num_params()
        tokens_per_step = pcfg.batch_size * pcfg.grad_accum * ctx.world_size * train.seq_len
        print(f"model {model_cfg.preset}: {n_params / 1e6:.2f}M parameters; {train.n_sequences} train sequences "
              f"of {train.seq_len} tokens; {tokens_per_step} tokens per step"
              f"{'; training step compiled (the first step compiles it)' if compiled else ''}", file=sys.stderr)

    bar = tqdm(total=pcfg.max_steps, initial=step, desc="pretrain", unit="step", disable=not (progress and ctx.is_main),
               dynamic_ncols=True)
    t_last, tokens_since = time.perf_counter(), 0
    model.train()
    while step < last_step:
        rebalance()  # another echochamber job started or ended: cores // jobs threads (cpu.py)
        lr = lr_at(step, pcfg)
        set_lr(opt, lr)
        # The step's loss stays on the device (fp64, as the host's sum of the micro-batches' values would be): no
        # host synchronisation per micro-batch; it is read once, on the steps that log.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for micro in range(pcfg.grad_accum):
            # Rows for this process: the global batch is world_size consecutive blocks of batch_size rows.
            start = next_row + ctx.rank * pcfg.batch_size
            rows = train.batch(start, pcfg.batch_size).to(device, non_blocking=True)
            next_row += ctx.world_size * pcfg.batch_size
            with dist.maybe_no_sync(ddp_model, sync=micro == pcfg.grad_accum - 1):
                with autocast_ctx(device, pcfg.autocast):
                    loss = lm_loss(ddp_model, rows) / pcfg.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), pcfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_since += pcfg.batch_size * pcfg.grad_accum * ctx.world_size * train.seq_len

        record = None
        logs = step % pcfg.log_every == 0 or step == pcfg.max_steps
        if logs or step % pcfg.eval_every == 0:  # the same steps on every process: the all-reduce is collective
            # Mean over the processes of (loss, grad norm) in one all-reduce and one copy to the host.
            loss_val, grad_norm = (dist.all_reduce_sum(torch.stack([loss_sum, grad_norm.double()]), ctx)
                                   / ctx.world_size).tolist()
        if logs:
            now = time.perf_counter()
            record = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": grad_norm,
                      "tokens": next_row * train.seq_len, "tokens_per_s": tokens_since / (now - t_last),
                      "time/wall": wall_before + now - t_start,
                      "threads": torch.get_num_threads()}  # (cpu.rebalance may change it between steps)
            t_last, tokens_since = now, 0
        if step % pcfg.eval_every == 0 or step == pcfg.max_steps:
            record = record or {"step": step, "loss": loss_val, "lr": lr}
            record["val_loss"] = validation_loss(model, val, pcfg, device)
        if record and ctx.is_main:
            append_jsonl(metrics_path, record)
            tracker.log(record, step, "pretrain")
            bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "val_loss") if k in record})
        bar.update(1)

        if step % pcfg.ckpt_every == 0 or step == last_step:
            whole, opt_state = savable()
            if ctx.is_main:
                save_checkpoint(ckpt_root, whole, {"step": step, "next_row": next_row, **trainer_state(opt_state),
                                                   "wall_seconds": wall_before + time.perf_counter() - t_start},
                                pcfg.keep_checkpoints)
            dist.barrier(ctx)
    bar.close()

    final_dir = run_dir / "model"
    whole = savable()[0] if step == pcfg.max_steps else None
    if ctx.is_main and step == pcfg.max_steps:
        export_model(whole, data_dir / "tokenizer.json", final_dir)
    if tracker:
        tracker.close()
    dist.barrier(ctx)
    dist.shutdown(ctx)
    return final_dir


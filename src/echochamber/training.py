"""The training toolkit pretraining and RL share: optimizer, autocast, learning-rate schedule, and the run
folder's start-or-resume.

    opt = make_optimizer(model, lr, weight_decay, betas, eps)
    state = start_or_resume(run_dir, cfg, "rl", model, opt)   # None: a fresh run; else the checkpoint's state
    ...
    set_lr(opt, cosine_lr(step, total, peak, warmup, min_ratio))
    with autocast_ctx(device, "bfloat16"): loss = ...
    save_checkpoint(run_dir / "checkpoints", model, {"step": step, **trainer_state(opt), ...})
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import torch

from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, set_rng_state
from .runio import truncate_jsonl, write_run_metadata


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, eps: float = 1e-8,
                   params=None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (OLMo-1 has no biases and no norm weights to exempt).
    `params` restricts it to some parameters (e.g. a critic's trainable ones); default: all that need grads."""
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def autocast_ctx(device: torch.device, dtype: str):
    """bf16 autocast for matmuls (about 3x fp32 on a modern CPU, the default on GPUs); "float32" = none."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def cosine_lr(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` to min_ratio * peak at step `total`:
        lr(t) = peak * (t + 1) / w                                        t < w
        lr(t) = peak * [r + (1 - r) * (1 + cos(pi * (t - w) / (T - w))) / 2]   t >= w"""
    warmup = max(0, warmup)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def trainer_state(opt: torch.optim.Optimizer) -> dict:
    """What every checkpoint holds beside the weights: the optimizer and all RNG states."""
    return {"optimizer": opt.state_dict(), "rng": rng_state()}


def start_or_resume(run_dir: Path, cfg, stage: str, model: torch.nn.Module, opt: torch.optim.Optimizer, *,
                    device, is_main: bool = True) -> dict | None:
    """Resume from RUN/checkpoints/latest (weights, optimizer, RNG; the log is cut back to the checkpoint's
    step, since the steps after it are redone) and return the checkpoint's trainer state; or, for a fresh run,
    record the resolved config, versions and commit and return None."""
    resume_from = latest_checkpoint(run_dir / "checkpoints")
    if resume_from is None:
        if is_main:
            write_run_metadata(run_dir, cfg, stage)
        return None
    state = load_checkpoint(resume_from, model, device)
    opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    if is_main:
        truncate_jsonl(run_dir / "metrics.jsonl", lambda r: r["step"] <= state["step"])
        print(f"resuming {stage} from {resume_from} (step {state['step']})", file=sys.stderr)
    return state

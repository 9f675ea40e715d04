"""The training toolkit pretraining and RL share: optimizer, autocast, learning-rate schedule, and the run
folder's start-or-resume.

    opt = make_optimizer(model, lr, weight_decay, betas, eps)
    state = start_or_resume(run_dir, cfg, "rl", model, opt)   # None: a fresh run; else the checkpoint's state
    ...
    set_lr(opt, cosine_lr(step, total, peak, warmup, min_ratio))
    with autocast_ctx(device, "bfloat16"): loss = ...
    save_checkpoint(run_dir / "checkpoints", model, {"step": step, **trainer_state(opt.state_dict()), ...})
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sys
from pathlib import Path

import torch
import yaml

from . import distributed as dist
from .checkpoint import latest_checkpoint, load_checkpoint, load_trainer_state, rng_state, set_rng_state
from .model import OLMo
from .runio import flatten, to_dict, truncate_jsonl, write_run_metadata

# The config sections a stage's results depend on: a resume with any of them changed is refused (unless asked
# for), since the run would silently mix two settings. Keys that change no result are not compared, nor those
# that change only the rounding (threads, compile: the order of floating-point sums).
STAGE_SECTIONS = {"pretrain": ("data", "model", "pretrain"), "rl": ("data", "rl", "eval")}
NOT_COMPARED = {"pretrain.stop_at", "pretrain.threads", "pretrain.compile", "rl.threads", "rl.sample_compile",
                "eval.sample_compile"}


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked: held by another process, or its recorded config differs."""


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


def trainer_state(opt_state: dict) -> dict:
    """What every checkpoint holds beside the weights: the optimizer's state dict and all RNG states."""
    return {"optimizer": opt_state, "rng": rng_state()}


_HELD: dict[str, int] = {}  # run folders this process holds: resolved path -> open lock file descriptor


@contextlib.contextmanager
def exclusive(run_dir: Path, enabled: bool = True):
    """Hold RUN/.lock exclusively while a stage writes the folder: a second process asking for it fails at once
    with a clear error. The OS releases the lock when the process dies, so a killed run never leaves it held."""
    key = str(Path(run_dir).resolve())
    if not enabled or key in _HELD:
        yield
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(run_dir) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunFolderError(f"{run_dir} is in use by another process (pid {holder}); wait for it to finish or "
                             f"use another out_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # closing the descriptor releases the lock


def config_changes(recorded: dict, current: dict, stage: str, defaults: dict | None = None) -> list[str]:
    """'key: recorded -> current' for every compared key of the stage's sections that differs. A key the recorded
    config lacks, because its knob was added after the run started, is no change while it holds its default:
    a new knob's default keeps the behaviour the project had before it."""
    keys = [k for k in STAGE_SECTIONS[stage] if k in recorded or k in current]
    old, new = flatten({k: recorded.get(k) for k in keys}), flatten({k: current.get(k) for k in keys})
    default = flatten(defaults or {})
    added_at_default = {k for k in set(new) - set(old) if k in default and new[k] == default[k]}
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in NOT_COMPARED and k not in added_at_default and old.get(k) != new.get(k)]


def start_or_resume(run_dir: Path, cfg, stage: str, model: torch.nn.Module, opt: torch.optim.Optimizer, *,
                    device, ctx: dist.DistContext | None = None, allow_config_change: bool = False,
                    sharded: bool = False) -> dict | None:
    """Resume from RUN/checkpoints/latest (weights, optimizer, RNG; the log is cut back to the checkpoint's
    step, since the steps after it are redone) and return the checkpoint's trainer state; or, for a fresh run,
    record the resolved config, versions and commit and return None (records an earlier attempt logged before
    its first checkpoint are dropped: they are redone). A resume whose config differs from the recorded one in
    the stage's sections is refused with the list of changes, unless allow_config_change (then the recorded
    config is updated). Under torchrun every process must see the same checkpoint (a shared file system)."""
    is_main = ctx is None or ctx.is_main
    resume_from = latest_checkpoint(run_dir / "checkpoints")
    if ctx is not None and ctx.active:
        seen = dist.all_gather_objects(resume_from.name if resume_from else None, ctx)
        if len(set(seen)) > 1:
            raise RunFolderError(f"{run_dir}: the processes see different checkpoints ({', '.join(map(str, seen))} "
                                 f"by rank); resuming needs the run folder on a file system all of them share")
    if resume_from is None:
        if is_main:
            truncate_jsonl(run_dir / "metrics.jsonl", lambda r: False)
            write_run_metadata(run_dir, cfg, stage)
        return None
    recorded_path = run_dir / f"{stage}_config.yaml"
    if recorded_path.exists():
        changes = config_changes(yaml.safe_load(recorded_path.read_text()) or {}, to_dict(cfg), stage,
                                 defaults=to_dict(type(cfg)()))
        if changes and not allow_config_change:
            raise RunFolderError(f"{run_dir} holds a {stage} run with another config; resuming would mix them. "
                                 f"Changed: {'; '.join(changes)}. Use another out_dir, or pass "
                                 f"--allow-config-change to resume with the new values")
        if changes and is_main:
            print(f"resuming {stage} with changed config: {'; '.join(changes)}", file=sys.stderr)
            write_run_metadata(run_dir, cfg, stage)
    if sharded:  # FSDP: every process reads the whole checkpoint and keeps its shards
        state = load_trainer_state(resume_from)
        dist.load_full_state(model, opt, OLMo.load(resume_from).state_dict(), state["optimizer"])
    else:
        state = load_checkpoint(resume_from, model, device)
        opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    if is_main:
        truncate_jsonl(run_dir / "metrics.jsonl", lambda r: r["step"] <= state["step"])
        print(f"resuming {stage} from {resume_from} (step {state['step']})", file=sys.stderr)
    return state

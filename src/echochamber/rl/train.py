"""The RL loop: rollout -> reward -> advantage -> clipped update, with evaluation and format tracking.

    echochamber rl --config quickstart rl.kl_coef=0.001

Each step: P prompts x G samples at temperature 0.7 (rollout.collect), rewards 1/0 from the formats module,
GRPO advantages, then `epochs` passes of mini-batches of the rollout through the clipped objective
(grpo.grpo_loss). Every step logs reward, accuracy, the share and accuracy of each solution format, KL, entropy,
length, truncation, zero-spread groups, clip fraction and the seconds spent in generation, reward and update;
its rollout samples are kept in rollouts/step_N.jsonl. The model is evaluated before RL, every eval_every
steps, and at the end; summary.json holds pass@1 and format shares before and after.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoint import export_model, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..evaluate import evaluate, format_results, load_dataset, load_policy
from ..formats import LABELS
from ..pretrain import autocast_ctx, make_optimizer
from ..runio import append_jsonl, atomic_write_json, truncate_jsonl, write_jsonl, write_run_metadata
from ..sampler import SampleConfig
from . import rollout as ro
from .grpo import group_advantages, grpo_loss
from .losses import kl_k1, kl_k3


@dataclass
class RLConfig:
    algo: Literal["grpo"] = "grpo"  # PPO and Expert Iteration: see PAPER.md; GRPO is implemented
    init: str | None = None  # model folder to start from (default OUT_DIR/pretrain/model)
    train_source: str = "synthetic:train"  # prompts, SOURCE:SPLIT (paper: gsm8k:train, 7473 questions)
    train_problems: int = 5000  # prompts drawn from train_source (0 = all of a file-backed source)
    steps: int = 40  # rollouts (paper: about 1160, i.e. 10 passes over GSM8K train)
    prompts_per_step: int = 64  # P (paper: 64)
    samples_per_prompt: int = 8  # G (paper: 8)
    temperature: float = 0.7  # rollout sampling temperature (paper: 0.7)
    top_p: float = 1.0  # (paper: 1.0)
    max_new_tokens: int = 320  # (paper: 1024)
    minibatch_size: int = 64  # sequences per optimizer step (paper: 64, so 8 optimizer steps per rollout)
    micro_batch_size: int = 0  # sequences per forward/backward inside a mini-batch (0 = the whole mini-batch)
    epochs: int = 1  # passes over each rollout (paper: 1)
    lr: float = 1e-6  # actor learning rate (paper: 1e-6, for 150M/1B models)
    min_lr_ratio: float = 0.1  # cosine decays to this fraction (paper: 1e-6 -> 1e-7)
    warmup_ratio: float = 0.03  # of all optimizer steps (paper: 3%)
    betas: tuple[float, float] = (0.9, 0.95)  # (paper)
    weight_decay: float = 0.0  # (paper: 0)
    grad_clip: float = 1.0  # (paper: 1.0)
    clip_eps: float = 0.2  # ratio clip (paper: 0.2)
    kl_coef: float = 0.0  # k3 KL to the pretrained model, as a loss term (paper sweeps 0, 1e-3, 1e-2); 0 = no reference
    # model is held, and the logged kl_k1 / kl_k3 measure the drift from the rollout policy instead
    adv_eps: float = 1e-9  # A = (r - mean) / (std + adv_eps) (paper: 1e-9)
    reward_clip: float = 10.0  # rewards clipped to [-c, c] (paper: 10)
    loss_agg: Literal["token", "sequence"] = "token"  # per-token mean (OpenRLHF) or per-sequence mean (GRPO paper)
    mode: Literal["paper", "structure"] = "structure"  # format labelling for rewards (see formats.py)
    reward_sees_prompt: bool = True  # the paper hands the reward function prompt + response
    autocast: Literal["bfloat16", "float32"] = "bfloat16"  # update and log-prob precision
    sample_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # rollout generation precision (bf16 ~2x faster on CPU)
    eval_every: int = 10  # RL steps between evaluations (step 0 and the last step are always evaluated)
    ckpt_every: int = 10  # RL steps between checkpoints
    keep_rollouts: bool = True  # write rollouts/step_N.jsonl
    threads: int = 0  # torch intra-op threads; 0 = all cores


def lr_at(opt_step: int, total: int, cfg: RLConfig) -> float:
    """Linear warmup over warmup_ratio of all optimizer steps, then cosine to min_lr_ratio * lr."""
    warmup = max(1, int(cfg.warmup_ratio * total))
    if opt_step < warmup:
        return cfg.lr * (opt_step + 1) / warmup
    progress = min(1.0, (opt_step - warmup) / max(1, total - warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class PromptStream:
    """Training prompts in a seeded random order, reshuffled at every pass; its position is saved for resume."""

    def __init__(self, n: int, seed: int, position: int = 0):
        self.n, self.seed, self.position = n, seed, position

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, self.n)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(self.n, generator=g)[i]))
            self.position += 1
        return out


def rollout_stats(roll: ro.Rollout) -> dict:
    """What the paper watches per step: reward, accuracy, and the share and accuracy of each format."""
    labels = [g.label for g in roll.graded]
    correct = [g.correct for g in roll.graded]
    n = len(labels)
    grouped = roll.rewards.view(-1, roll.group_size)
    stats = {
        "reward_mean": roll.rewards.mean().item(),
        "accuracy": sum(correct) / n,
        "response_len": sum(len(t) for t in roll.response_tokens) / n,
        "truncation_rate": sum(not f for f in roll.finished) / n,
        "zero_std_frac": (grouped.std(-1) == 0).float().mean().item(),
    }
    for lab in LABELS:
        hits = [c for l, c in zip(labels, correct) if l == lab]
        stats[f"format_share/{lab}"] = len(hits) / n
        stats[f"format_acc/{lab}"] = sum(hits) / len(hits) if hits else None
    return stats


def update(model, opt, roll: ro.Rollout, old_logp, ref_logp, advantages, cfg: RLConfig, pad_id: int, autocast,
           opt_step: int, total_opt_steps: int, gen: torch.Generator) -> tuple[int, dict]:
    """`epochs` passes over the rollout in shuffled mini-batches; one optimizer step per mini-batch."""
    N = len(roll)
    micro = cfg.micro_batch_size or cfg.minibatch_size
    sums: dict[str, float] = {}
    n_mb = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(N, generator=gen).tolist()
        for mb_start in range(0, N, cfg.minibatch_size):
            mb = order[mb_start: mb_start + cfg.minibatch_size]
            lr = lr_at(opt_step, total_opt_steps, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            for mc_start in range(0, len(mb), micro):
                indices = mb[mc_start: mc_start + micro]
                idx, mask = ro.pad_batch(roll, indices, pad_id)  # (B, L), (B, L-1)
                with autocast():
                    logits = model(idx[:, :-1])  # (B, L-1, V)
                logprobs_all = F.log_softmax(logits.float(), dim=-1)
                logp = logprobs_all.gather(-1, idx[:, 1:, None]).squeeze(-1)  # (B, L-1)
                old = ro.gather_padded(old_logp, indices, mask)
                ref = ro.gather_padded(ref_logp, indices, mask) if ref_logp is not None else None
                loss, st = grpo_loss(logp, old, ref, advantages[indices], mask, clip_eps=cfg.clip_eps,
                                     kl_coef=cfg.kl_coef, agg=cfg.loss_agg)
                # Micro-batches of one mini-batch: weight each by its share of the mini-batch's sequences.
                (loss * len(indices) / len(mb)).backward()
                with torch.no_grad():
                    m = mask.bool()
                    entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)[m].mean().item()
                    # KL of the current policy to the reference (or, with no reference, to the rollout policy).
                    base = ref if ref is not None else old
                    st.update(kl_k1=kl_k1(logp, base)[m].mean().item(), kl_k3=kl_k3(logp, base)[m].mean().item(),
                              entropy=entropy, loss=loss.item())
                w = len(indices) / len(mb)
                for k, v in st.items():
                    sums[k] = sums.get(k, 0.0) + v * w
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            opt_step += 1
            n_mb += 1
    stats = {k: v / max(1, n_mb) for k, v in sums.items()}
    stats["lr"] = lr
    return opt_step, stats


def summarize(first: dict, last: dict, wall: float) -> dict:
    """summary.json: greedy pass@1 and format shares of the first eval dataset, before and after RL."""
    name = next(iter(first["datasets"]))
    a, b = first["datasets"][name], last["datasets"][name]
    return {"dataset": name, "pass1_before": a["pass@1"], "pass1_after": b["pass@1"],
            "format_share_before": a["format_share"], "format_share_after": b["format_share"],
            "wall_seconds": wall}


def run_rl(cfg, out_dir: str | Path, *, pool=None, progress: bool = True) -> dict:
    """Run (or resume) RL described by RunConfig `cfg` into out_dir; returns the summary."""
    rcfg: RLConfig = cfg.rl
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    if rcfg.threads:
        torch.set_num_threads(rcfg.threads)
    device = torch.device("cpu")
    autocast = lambda: autocast_ctx(device, rcfg.autocast)  # noqa: E731

    init_dir = Path(rcfg.init) if rcfg.init else Path(cfg.out_dir) / "pretrain" / "model"
    torch.manual_seed(cfg.seed)
    model, tok = load_policy(init_dir)
    ref_model = None
    if rcfg.kl_coef > 0:
        ref_model, _ = load_policy(init_dir)
        ref_model.eval().requires_grad_(False)
    opt = make_optimizer(model, rcfg.lr, rcfg.weight_decay, rcfg.betas, 1e-8)
    if pool is None:
        from ..sandbox import shared_pool

        from ..rewards import shared_verifier

        pool = shared_pool(cfg.sandbox)
        shared_verifier(cfg.verify)

    problems = load_dataset(rcfg.train_source, rcfg.train_problems, cfg, cfg.eval.data_path)
    stream = PromptStream(len(problems), cfg.seed)
    N = rcfg.prompts_per_step * rcfg.samples_per_prompt
    total_opt_steps = rcfg.steps * rcfg.epochs * math.ceil(N / rcfg.minibatch_size)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    scfg = SampleConfig(max_new_tokens=rcfg.max_new_tokens, temperature=rcfg.temperature, top_p=rcfg.top_p,
                        n=rcfg.samples_per_prompt, dtype=rcfg.sample_dtype)

    ckpt_root, metrics_path, eval_root = out_dir / "checkpoints", out_dir / "metrics.jsonl", out_dir / "eval"
    step, opt_step, wall_before = 0, 0, 0.0
    resume_from = latest_checkpoint(ckpt_root)
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, device)
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        shuffle_gen.set_state(state["shuffle_gen"])
        step, opt_step, wall_before = state["step"], state["opt_step"], state["wall_seconds"]
        stream.position = state["prompt_position"]
        truncate_jsonl(metrics_path, lambda r: r["step"] <= step)
        print(f"resuming RL from {resume_from} (step {step})", file=sys.stderr)
    else:
        write_run_metadata(out_dir, cfg, "rl")

    def run_eval(at: int) -> dict:
        summary = evaluate(model, tok, cfg, step=at, out_root=eval_root, pool=pool, progress=progress)
        print(f"[eval step {at}]\n{format_results(summary)}", file=sys.stderr)
        return summary

    first_eval = eval_root / "step_000000.json"
    if not first_eval.exists():
        run_eval(0)

    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(out_dir / "tb"))
    bar = tqdm(total=rcfg.steps, initial=step, desc=f"rl {rcfg.algo}", unit="step", disable=not progress,
               dynamic_ncols=True)
    pad_id = tok.eos_id
    while step < rcfg.steps:
        step += 1
        batch = [problems[i] for i in stream.take(rcfg.prompts_per_step)]
        model.eval()
        roll = ro.collect(model, tok, batch, scfg, seed=cfg.seed * 100_003 + step, mode=rcfg.mode,
                          reward_sees_prompt=rcfg.reward_sees_prompt, pool=pool)
        t_gen, t_reward = roll.seconds_generate, roll.seconds_grade
        t1 = time.perf_counter()
        old_logp = ro.sequence_logprobs(model, roll, rcfg.minibatch_size, pad_id, autocast)
        ref_logp = ro.sequence_logprobs(ref_model, roll, rcfg.minibatch_size, pad_id, autocast) if ref_model else None
        rewards = roll.rewards.clamp(-rcfg.reward_clip, rcfg.reward_clip)
        advantages = group_advantages(rewards, rcfg.samples_per_prompt, rcfg.adv_eps)
        model.train()
        opt_step, upd = update(model, opt, roll, old_logp, ref_logp, advantages, rcfg, pad_id, autocast, opt_step,
                               total_opt_steps, shuffle_gen)
        t_update = time.perf_counter() - t1

        record = {"step": step, **rollout_stats(roll), **upd,
                  "time/generation": t_gen, "time/reward": t_reward, "time/update": t_update}
        append_jsonl(metrics_path, record)
        for k, v in record.items():
            if k != "step" and v is not None:
                tb.add_scalar(f"rl/{k}", v, step)
        if rcfg.keep_rollouts:
            write_jsonl(out_dir / "rollouts" / f"step_{step:06d}.jsonl",
                        [{"prompt": roll.problems[i // roll.group_size].question, "response": roll.texts[i],
                          "label": g.label, "answer": g.answer, "gold": roll.problems[i // roll.group_size].answer,
                          "correct": g.correct, "reward": roll.rewards[i].item(), "finished": roll.finished[i]}
                         for i, g in enumerate(roll.graded)])
        bar.set_postfix(reward=f"{record['reward_mean']:.2f}",
                        top=max(LABELS, key=lambda l: record[f"format_share/{l}"]))
        bar.update(1)

        if step % rcfg.eval_every == 0 or step == rcfg.steps:
            run_eval(step)
        if step % rcfg.ckpt_every == 0 or step == rcfg.steps:
            save_checkpoint(ckpt_root, model, {
                "step": step, "opt_step": opt_step, "optimizer": opt.state_dict(), "rng": rng_state(),
                "shuffle_gen": shuffle_gen.get_state(), "prompt_position": stream.position,
                "wall_seconds": wall_before + time.perf_counter() - t_start}, keep=2)
    bar.close()
    tb.close()

    export_model(model, init_dir / "tokenizer.json", out_dir / "final")
    evals = sorted(eval_root.glob("step_*.json"))
    summary = summarize(json.loads(evals[0].read_text()), json.loads(evals[-1].read_text()),
                        wall_before + time.perf_counter() - t_start)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


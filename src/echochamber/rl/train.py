"""The RL loop: rollout -> rewards -> algorithm.advantages -> algorithm.update, with evaluation and format tracking.

    echochamber rl --config quickstart rl.algo=ppo rl.kl_coef=0.001

The loop knows no algorithm (rl/grpo.py, ppo.py, ei.py, rloo.py, drgrpo.py, reinforce_pp.py say how rewards
become advantages and how the update runs). Each step: P prompts x G samples (rollout.collect, graded by the
formats module in the sandbox), then the algorithm's advantages and update. Every step logs reward, accuracy,
the share and accuracy of each solution format, KL, entropy, length, truncation, zero-spread groups, the
algorithm's own statistics and the seconds spent in generation, reward and update; its samples are kept in
rollouts/step_N.jsonl. The model is evaluated before RL, every eval_every steps, and at the end; summary.json
holds pass@1 and format shares before and after. For Expert Iteration a step is a round.

Resume: rerunning the same command after an interruption (even kill -9) continues from the last checkpoint,
and the weights, metrics and rollouts equal an uninterrupted run's (bit for bit on CPU with fixed threads).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .. import distributed as dist
from .. import memory
from ..checkpoint import export_model, save_checkpoint
from ..cpu import pin_threads, rebalance
from ..evaluate import evaluate, format_results, load_dataset, load_policy
from ..format_metrics import within_format
from ..formats import LABELS, format_stats
from ..model import OLMo
from ..runio import append_jsonl, atomic_write_json, write_jsonl
from ..sampler import SampleConfig, sampling_model
from ..tracking import Tracker
from ..training import RunFolderError, autocast_ctx, exclusive, start_or_resume, trainer_state
from . import rollout as ro
from .config import RLConfig
from .drgrpo import DrGRPO
from .ei import ExpertIteration
from .grpo import GRPO
from .pg import PolicyGradient
from .ppo import PPO
from .reinforce_baseline import ReinforceBaseline
from .reinforce_pp import ReinforcePP
from .rloo import RLOO

ALGORITHMS: dict[str, type[PolicyGradient]] = {
    "grpo": GRPO, "ppo": PPO, "ei": ExpertIteration, "rloo": RLOO, "drgrpo": DrGRPO, "reinforce_pp": ReinforcePP,
    "reinforce_baseline": ReinforceBaseline}


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


def seeding_units(chunk_prompts: int, mine: tuple[int, int], per_step: int,
                  ctx: dist.DistContext) -> tuple[int, int]:
    """(prompts per seeding unit, the index of this process's first unit) for rollout.collect. rl.rollout_chunk_prompts
    > 0: units of that many prompts, numbered by their place in the step, so any number of processes draws what
    one draws; it must then divide every process's share. 0 under torchrun: each process's share is one unit,
    numbered by rank (shares may differ by one prompt: 7,473 prompts over 8 processes are 935 and 934). 0 on one
    process: 0, 0 (collect's own units of 512 rows)."""
    if chunk_prompts:
        if mine[0] % chunk_prompts:
            raise ValueError(f"rl.rollout_chunk_prompts={chunk_prompts} must divide each process's share of the "
                             f"{per_step} prompts per step ({mine[1] - mine[0]} on rank {ctx.rank})")
        return chunk_prompts, mine[0] // chunk_prompts
    return (mine[1] - mine[0], ctx.rank) if ctx.active else (0, 0)


def rollout_rows(roll: ro.Rollout) -> list[dict]:
    """rollouts/step_N.jsonl: one row per sample, named like evaluation rows (question, response, ...)."""
    rewards = roll.rewards.tolist()  # one read of the device, not one per sample
    return [{"question": roll.question(i).question, "response": roll.texts[i], "label": g.label,
             "answer": g.answer, "gold": roll.question(i).answer, "correct": g.correct,
             "reward": rewards[i], "finished": roll.finished[i], "tokens": len(roll.response_tokens[i]),
             "transcript": g.transcript}
            for i, g in enumerate(roll.graded)]


def rollout_stats(rows: list[dict], group_size: int) -> dict:
    """What the paper watches per step, from a step's rollout rows (groups of group_size samples in order):
    reward, accuracy, length, truncation, groups without signal, the share and accuracy of each format, and
    the within-format metrics (format_metrics: `within/<label>/...`, None where a format has no sample)."""
    n = len(rows)
    rewards = torch.tensor([r["reward"] for r in rows]).view(-1, group_size)
    table = format_stats([r["label"] for r in rows], [r["correct"] for r in rows])
    stats = {
        "reward_mean": rewards.mean().item(),
        "accuracy": table["all"]["accuracy"],
        "response_len": sum(r["tokens"] for r in rows) / n,
        "truncation_rate": sum(not r["finished"] for r in rows) / n,
        "zero_std_frac": (rewards.std(-1) == 0).float().mean().item() if group_size > 1 else 0.0,
    }
    for lab in LABELS:
        stats[f"format_share/{lab}"] = table[lab]["share"]
        stats[f"format_acc/{lab}"] = table[lab]["accuracy"]
    return {**stats, **within_format(rows)}


def summarize(first: dict, last: dict, wall: float) -> dict:
    """summary.json: greedy pass@1 and format shares of the first eval dataset, before and after RL."""
    name = next(iter(first["datasets"]))
    a, b = first["datasets"][name], last["datasets"][name]
    return {"dataset": name, "pass1_before": a["pass@1"], "pass1_after": b["pass@1"],
            "format_share_before": a["format_share"], "format_share_after": b["format_share"],
            "wall_seconds": wall}


def format_summary(s: dict) -> str:
    """The five lines a run ends with."""
    def shares(d):
        return ", ".join(f"{k} {v:.0%}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v > 0)

    return "\n".join([
        f"dataset:        {s['dataset']} (greedy)",
        f"pass@1:         {s['pass1_before']:.1%} before RL -> {s['pass1_after']:.1%} after RL",
        f"formats before: {shares(s['format_share_before'])}",
        f"formats after:  {shares(s['format_share_after'])}",
        f"wall time:      {s['wall_seconds'] / 60:.1f} min",
    ])


def is_log_spaced(step: int, every: int) -> bool:
    """Checkpoints 1, 2, 4, 8, ... x ckpt_every are kept under keep_checkpoints=log."""
    k = step // max(1, every)
    return step % max(1, every) == 0 and k > 0 and (k & (k - 1)) == 0


def init_fingerprint(init_dir: Path) -> str:
    """Which starting weights a run used (folder and sha256 of the weights): a step-0 evaluation or a checkpoint
    left by an earlier attempt is reused only when it was made from the same weights."""
    with open(init_dir / "model.safetensors", "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return f"{init_dir.resolve()}:{digest}"


def build_algorithm(rcfg: RLConfig, model, init_dir: Path, *, pad_id: int, autocast, device, gen,
                    ctx: dist.DistContext | None = None) -> PolicyGradient:
    ref = None
    if rcfg.kl_coef > 0:
        ref = OLMo.load(init_dir, device).eval().requires_grad_(False)
    kw = dict(pad_id=pad_id, autocast=autocast, device=device, ctx=ctx)
    if rcfg.algo == "ppo":
        return PPO(rcfg, model, ref, critic_body=OLMo.load(init_dir, device), **kw)
    if rcfg.algo == "ei":
        return ExpertIteration(rcfg, model, ref, init_dir=init_dir, gen=gen, **kw)
    return ALGORITHMS[rcfg.algo](rcfg, model, ref, **kw)


def run_rl(cfg, out_dir: str | Path, *, pool=None, progress: bool = True, allow_config_change: bool = False,
           on_eval: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) RL described by RunConfig `cfg` into out_dir; returns the summary. Under torchrun every
    process samples and grades its share of each step's prompts (a prompt's samples stay together), the update
    sums gradients over the processes, evaluation is split and gathered, and rank 0 writes the run folder.
    on_eval: called on rank 0 with each evaluation's summary as it is made (default: its table on stderr)."""
    ctx = dist.init(cfg.device)
    with exclusive(Path(out_dir), enabled=ctx.is_main):
        return _run_rl(cfg, Path(out_dir), ctx, pool, progress and ctx.is_main, allow_config_change, on_eval)


def _print_eval(summary: dict) -> None:
    print(f"[eval step {summary['step']}]\n{format_results(summary)}", file=sys.stderr)


def _run_rl(cfg, out_dir: Path, ctx: dist.DistContext, pool, progress: bool, allow_config_change: bool,
            on_eval: Callable[[dict], None] | None) -> dict:
    rcfg: RLConfig = cfg.rl
    t_start = time.perf_counter()
    device = ctx.device
    if device.type == "cpu":
        pin_threads(rcfg.threads)  # what the config asks for (0: cores // jobs, cpu.py)
    autocast = lambda: autocast_ctx(device, rcfg.autocast)  # noqa: E731

    init_dir = Path(rcfg.init) if rcfg.init else Path(cfg.out_dir) / "pretrain" / "model"
    torch.manual_seed(rcfg.seed)
    model, tok = load_policy(init_dir, device)
    shuffle_gen = torch.Generator().manual_seed(rcfg.seed)
    algo = build_algorithm(rcfg, model, init_dir, pad_id=tok.eos_id, autocast=autocast, device=device,
                           gen=shuffle_gen, ctx=ctx)
    if pool is None:
        from ..verify import shared_verifier
        from ..sandbox import shared_pool

        pool = shared_pool(cfg.sandbox)
        shared_verifier(cfg.verify)

    # Expert Iteration's steps are rounds with their own sampling; every other algorithm samples as rl.* says.
    if rcfg.algo == "ei":
        e = rcfg.ei
        total_steps, per_step, eval_every, ckpt_every = e.rounds, e.prompts_per_round, 1, 1
        temperature, top_p, n = e.temperature, e.top_p, e.samples_per_prompt
    else:
        total_steps, per_step, eval_every, ckpt_every = rcfg.steps, rcfg.prompts_per_step, rcfg.eval_every, rcfg.ckpt_every
        temperature, top_p, n = rcfg.temperature, rcfg.top_p, rcfg.samples_per_prompt
    scfg = SampleConfig(max_new_tokens=rcfg.max_new_tokens, temperature=temperature, top_p=top_p, n=n,
                        dtype=rcfg.sample_dtype, compile=rcfg.sample_compile)
    problems = load_dataset(rcfg.train_source, rcfg.train_problems, cfg, cfg.eval.data_path)
    per_step = per_step or len(problems)
    stream = PromptStream(len(problems), rcfg.seed)
    # This process's share of every step's prompts, and how its generate calls line up with one process's.
    mine = dist.share(per_step, ctx)
    chunk, first_chunk = seeding_units(rcfg.rollout_chunk_prompts, mine, per_step, ctx)
    # What one sampler call may take here: the memory budget less what RL keeps resident (memory.py; inf on a CPU).
    room = memory.rl_memory(cfg, ctx.world_size, model.config, memory.device_budget(cfg, device)).sampling_room

    ckpt_root, metrics_path, eval_root = out_dir / "checkpoints", out_dir / "metrics.jsonl", out_dir / "eval"
    step, wall_before = 0, 0.0
    fingerprint = init_fingerprint(init_dir)
    state = start_or_resume(out_dir, cfg, "rl", model, algo.opt, device=device, ctx=ctx,
                            allow_config_change=allow_config_change)
    if state is not None:
        if state["init"] != fingerprint and not allow_config_change:
            raise RunFolderError(f"{out_dir}: its checkpoints continue {state['init'].split(':')[0]} as it was "
                                 f"when they were written, and those weights have changed since; use another "
                                 f"out_dir, or pass --allow-config-change")
        algo.load_state_dict(state["algo"])
        shuffle_gen.set_state(state["shuffle_gen"])
        step, wall_before, stream.position = state["step"], state["wall_seconds"], state["prompt_position"]

    def run_eval(at: int) -> dict:
        between = 0 < at < total_steps
        summary = evaluate(model, tok, cfg, step=at, out_root=eval_root, pool=pool, progress=progress,
                           extra={"init": fingerprint}, ctx=ctx, free_bytes=room,
                           n_problems=cfg.eval.n_problems_between if between and cfg.eval.n_problems_between
                           else None, greedy_only=between and cfg.eval.between_greedy_only)
        if ctx.is_main:
            (on_eval or _print_eval)(summary)
        return summary

    first_eval = eval_root / "step_000000.json"
    stale = not first_eval.exists() or json.loads(first_eval.read_text()).get("init") != fingerprint
    if any(dist.all_gather_objects(stale, ctx)):
        run_eval(0)  # (again, when the one there was made on other weights by an earlier, failed attempt)

    tracker = Tracker(out_dir, cfg, "rl") if ctx.is_main else None  # TensorBoard, and W&B with log.wandb
    bar = tqdm(total=total_steps, initial=step, desc=f"rl {rcfg.algo}", unit="round" if rcfg.algo == "ei" else "step",
               disable=not progress, dynamic_ncols=True)
    while step < total_steps:
        rebalance()  # another echochamber job started or ended: cores // jobs threads (cpu.py)
        step += 1
        batch = [problems[i] for i in stream.take(per_step)][mine[0]:mine[1]]
        model.eval()
        # All of the step's sampling calls decode with one bf16 copy of the updated weights (sampler.sampling_model).
        roll = ro.collect(sampling_model(model, scfg), tok, batch, scfg, seed=rcfg.seed * 100_003 + step,
                          mode=rcfg.mode, reward_sees_prompt=rcfg.reward_sees_prompt, pool=pool,
                          chunk_prompts=chunk, first_chunk=first_chunk, device=device, interpreter=rcfg.interpreter,
                          free_bytes=room)
        roll.offset, roll.n_global = mine[0] * scfg.n, per_step * scfg.n
        t1 = time.perf_counter()
        model.train()
        plan = algo.plan(roll, shuffle_gen)
        algo.advantages(roll, plan)
        t2 = time.perf_counter()
        upd = algo.update(roll, plan)
        t3 = time.perf_counter()
        rows = [r for part in dist.all_gather_objects(rollout_rows(roll), ctx) for r in part]

        if ctx.is_main:
            record = {"step": step, **rollout_stats(rows, scfg.n), **upd, "time/generation": roll.seconds_generate,
                      "time/reward": roll.seconds_grade, "time/advantages": t2 - t1, "time/update": t3 - t2,
                      "threads": torch.get_num_threads()}  # (cpu.rebalance may change it between steps)
            append_jsonl(metrics_path, record)
            tracker.log(record, step, "rl")
            if rcfg.keep_rollouts:
                write_jsonl(out_dir / "rollouts" / f"step_{step:06d}.jsonl", rows)
            bar.set_postfix(reward=f"{record['reward_mean']:.2f}",
                            top=max(LABELS, key=lambda l: record[f"format_share/{l}"]))
        bar.update(1)

        if step % eval_every == 0 or step == total_steps:
            run_eval(step)
        if step % ckpt_every == 0 or step == total_steps:
            if ctx.is_main:
                save_checkpoint(ckpt_root, model, {
                    "step": step, **trainer_state(algo.opt.state_dict()), "algo": algo.state_dict(), "init": fingerprint,
                    "shuffle_gen": shuffle_gen.get_state(), "prompt_position": stream.position,
                    "wall_seconds": wall_before + time.perf_counter() - t_start},
                    keep=1 if rcfg.keep_checkpoints != "all" else 1 << 30,
                    keep_step=(lambda s: is_log_spaced(s, ckpt_every)) if rcfg.keep_checkpoints == "log" else None)
            dist.barrier(ctx)
    bar.close()
    if tracker:
        tracker.close()

    if ctx.is_main:
        export_model(model, init_dir / "tokenizer.json", out_dir / "final")
        evals = sorted(eval_root.glob("step_*.json"))
        summary = summarize(json.loads(evals[0].read_text()), json.loads(evals[-1].read_text()),
                            wall_before + time.perf_counter() - t_start)
        summary["algo"] = rcfg.algo
        atomic_write_json(out_dir / "summary.json", summary)
    dist.barrier(ctx)
    return json.loads((out_dir / "summary.json").read_text())

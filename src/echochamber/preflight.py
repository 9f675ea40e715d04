"""`echochamber check --config paper_150m`: does this machine run the study, and how fast? A few minutes of every
stage at the config's own shapes, with a pass or fail per part:

    pretrain          N optimizer steps (pretrain.max_steps of the check, default 10) of the configured model at its
                      seq_len, micro-batch and grad_accum, on every visible GPU (torchrun, one process per GPU,
                      when there are several; one process otherwise): tokens/s, MFU, the memory peak
    kill and resume   the same N steps in another folder, the process killed with SIGKILL right after its
                      checkpoint at step N/2 lands (as a preempted job dies), then resumed: its steps N/2+1..N must
                      be recorded once each, with the losses of the uninterrupted run (equal on a CPU, within 1%
                      on a GPU, where kernels need not be deterministic)
    rl ALGO           3 steps of each of the authors' arms (ppo, reinforce_baseline, grpo) at the config's batch
                      (paper: 64 prompts x 8 samples = 512 rows, 1024 new tokens): rollout tokens/s, seconds per
                      step, the memory peak
    eval pass@k       one evaluation of the pretrained model with k samples per problem (eval.n_samples, or the
                      paper's 64 when the config's evaluation is greedy) at the full eval.max_new_tokens, on as many
                      problems as one sampler call takes (at most 8) per process: pass@k, the memory peak

Each memory peak (torch.cuda.max_memory_allocated, the largest over the processes) is set against the memory
plan's per-GPU total (memory.py), and a part fails when it exceeds the plan by more than MEMORY_TOLERANCE (the
plan's table by component is printed then). MFU is
model FLOPs (plan.ModelNumbers.flops_per_token: 6 N + 12 L d T) x tokens/s / (GPUs x H100 dense bf16 peak).
On a CPU, MFU and the memory peak are n/a.

The check downloads nothing: the pretraining data is the synthetic world (data.mixture tg_omi1_text) at the
config's seq_len, tokenized by the configured tokenizer when its file is here, else by a BPE trained on the
synthetic text at the configured vocabulary (the model keeps its configured vocab_size, so its shapes are the
paper's); the RL prompts and the evaluation are the synthetic world's too. Everything goes into --out (default
a temporary folder, removed afterwards when every part passed). It exits non-zero when any part fails.

    echochamber check --config smoke                  # a tiny model on a CPU in well under a minute (CI runs it)
    echochamber check --config paper_1b --out runs/check_1b pretrain.max_steps=6

Under torchrun, a part runs as `python -m echochamber.preflight PART CONFIG.yaml RESULTS/` on every process (the
worker entry below); with one process it runs in this one.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from . import distributed as dist
from .config import RunConfig, load_run_config, to_dict
from .data import build_dataset
from .evaluate import evaluate, load_policy
from .memory import MemoryPlan, eval_call_shape, eval_memory, pretrain_memory, rl_memory
from .plan import H100_BF16_FLOPS, model_numbers
from .pretrain import pretrain
from .rl.train import run_rl
from .runio import read_metrics


ARMS = ("ppo", "reinforce_baseline", "grpo")  # the authors' sweep arms (rl/config.py ALGOS)
RL_STEPS = 3
PRETRAIN_STEPS = 10
PASS_AT_K = 64  # the paper's pass@64, when the config's evaluation is greedy (eval.n_samples 0)
EVAL_PROBLEMS = 8  # at most; fewer when one sampler call takes fewer (paper, k 64: 7 prompts x 65 rows)
MEMORY_TOLERANCE = 1.15  # a peak may exceed the plan by 15% (the memory model's stated accuracy) before it fails
RESUME_TOLERANCE = {"cpu": 0.0, "cuda": 1e-2}  # relative loss difference of a resumed step, by device type
CHECK_DATA_PROBLEMS = 3000  # synthetic problems per source: rows enough for the check's steps (rows wrap around)


@dataclass
class Part:
    name: str
    ok: bool
    figures: str
    seconds: float


# ------------------------------------------------------------------------------------------------- the config
def check_config(cfg: RunConfig, out: Path, pretrain_steps: int = PRETRAIN_STEPS) -> RunConfig:
    """The config every part runs: `cfg`'s model, seq_len, micro-batches, RL batch and lengths, on synthetic data
    in `out` (see the module docstring), for pretrain_steps optimizer steps with a checkpoint halfway."""
    d, p, r, e = cfg.data, cfg.pretrain, cfg.rl, cfg.eval
    tokenizer = d.tokenizer if d.tokenizer and Path(d.tokenizer).exists() else None
    data = dataclasses.replace(
        d, mixture="tg_omi1_text", mixture_kind="synthetic", sources=[], tokenizer=tokenizer,
        vocab_size=cfg.model.vocab_size or d.vocab_size, n_problems=min(d.n_problems, CHECK_DATA_PROBLEMS),
        tokenizer_docs=min(d.tokenizer_docs, CHECK_DATA_PROBLEMS), val_fraction=max(d.val_fraction, 0.05),
        cache_dir=str(out / "token_cache"))
    # The micro-batch and its accumulation as configured; the global batch then follows the GPUs here.
    accum = p.grad_accum or max(1, p.global_batch // p.batch_size)
    half = max(1, pretrain_steps // 2)
    pre = dataclasses.replace(p, max_steps=pretrain_steps, global_batch=0, grad_accum=accum, stop_at=None,
                              warmup_steps=min(p.warmup_steps, 2), eval_every=pretrain_steps, ckpt_every=half,
                              log_every=1, keep_checkpoints=2, data_dir=str(out / "data"))
    rl = dataclasses.replace(r, steps=RL_STEPS, train_source="synthetic:train",
                             train_problems=r.prompts_per_step * RL_STEPS, eval_every=RL_STEPS, ckpt_every=RL_STEPS,
                             init=str(out / "pretrain" / "model"))
    # RL's own evaluations (before and after its steps) are a few short greedy answers: the eval part measures
    # the evaluation at its full length.
    ev = dataclasses.replace(e, datasets=["synthetic:test"], n_problems=4, n_problems_between=0,
                             max_new_tokens=min(e.max_new_tokens, 32), n_samples=0, probe=False, model=None)
    return dataclasses.replace(cfg, out_dir=str(out), data=data, pretrain=pre, rl=rl, eval=ev)


def eval_config(cfg: RunConfig, checked: RunConfig, processes: int = 1) -> RunConfig:
    """The eval part's config: k samples per problem (cfg's eval.n_samples, or PASS_AT_K), at cfg's full
    eval.max_new_tokens, on as many problems as one sampler call takes (at most EVAL_PROBLEMS) on each process."""
    ev = dataclasses.replace(checked.eval, n_samples=cfg.eval.n_samples or PASS_AT_K,
                             max_new_tokens=cfg.eval.max_new_tokens)
    _, per_call = eval_call_shape(ev)  # prompts per sampler call as configured (greedy + k samples together)
    return dataclasses.replace(checked, eval=dataclasses.replace(ev, n_problems=min(EVAL_PROBLEMS, per_call)
                                                                 * processes))


def arm_config(checked: RunConfig, algo: str) -> RunConfig:
    return dataclasses.replace(checked, rl=dataclasses.replace(checked.rl, algo=algo))


def write_config(cfg: RunConfig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------- the parts
def run_part(part: str, cfg: RunConfig, progress: bool = True) -> dict:
    """Run one part in this process (one rank of it under torchrun); returns this process's memory peak and
    seconds. Parts: pretrain, killed (pretraining killed after its halfway checkpoint), resumed, rl:ALGO, eval."""
    out = Path(cfg.out_dir)
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cuda:  # what an earlier part in this process left behind is not this part's
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if part == "pretrain":
        pretrain(cfg, out / "pretrain", progress=progress)
    elif part in ("killed", "resumed"):
        if part == "killed":
            _die_after_checkpoint(cfg.pretrain.ckpt_every)
        pretrain(cfg, out / "resume", progress=progress)
    elif part.startswith("rl:"):
        run_rl(cfg, out / f"rl_{part[3:]}", progress=progress, on_eval=lambda summary: None)
    elif part == "eval":
        ctx = dist.init(cfg.device)
        model, tok = load_policy(out / "pretrain" / "model", ctx.device)
        evaluate(model, tok, cfg, step=0, out_root=out / "eval", progress=progress, ctx=ctx)
        dist.shutdown(ctx)
    else:
        raise ValueError(f"unknown part {part!r}")
    return {"peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "seconds": time.perf_counter() - t0}


def _die_after_checkpoint(step: int) -> None:
    """Make this process die by SIGKILL right after pretraining's checkpoint at `step` is complete: a preempted
    job, killed between two steps with nothing flushed (pretrain.py calls checkpoint.save_checkpoint through its
    own module's name, which is wrapped here; only this worker process sees the wrapper)."""
    from . import pretrain as pretrain_module

    save = pretrain_module.save_checkpoint

    def save_then_die(root, model, trainer_state, *args, **kwargs):
        path = save(root, model, trainer_state, *args, **kwargs)
        if trainer_state["step"] >= step:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    pretrain_module.save_checkpoint = save_then_die


def launch(part: str, cfg: RunConfig, nproc: int, progress: bool) -> dict:
    """Run a part on nproc processes: in this process when one (except `killed`, which must die in its own),
    else under torchrun (python -m echochamber.preflight on every process). Returns the largest memory peak over
    the processes, the seconds, and the exit code."""
    if nproc == 1 and part != "killed":
        return {**run_part(part, cfg, progress), "returncode": 0}
    out = Path(cfg.out_dir)
    results = out / "results" / part.replace(":", "_")
    shutil.rmtree(results, ignore_errors=True)
    config = write_config(cfg, out / "configs" / f"{part.replace(':', '_')}.yaml")
    worker = ["-m", "echochamber.preflight", part, str(config), str(results)]
    command = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                                 if nproc > 1 else []), *worker]
    t0 = time.perf_counter()
    code = subprocess.run(command, stdin=subprocess.DEVNULL).returncode
    ranks = [json.loads(f.read_text()) for f in sorted(results.glob("rank*.json"))] if results.exists() else []
    peaks = [r["peak_bytes"] for r in ranks if r["peak_bytes"] is not None]
    return {"peak_bytes": max(peaks) if peaks else None, "seconds": time.perf_counter() - t0, "returncode": code,
            "ranks": len(ranks)}


def worker_main(argv: list[str]) -> None:
    """`python -m echochamber.preflight PART CONFIG.yaml RESULTS/`: one process's share of a part; writes
    RESULTS/rankR.json with its memory peak."""
    part, config, results = argv
    cfg = load_run_config(config)
    measured = run_part(part, cfg, progress=int(os.environ.get("RANK", "0")) == 0)
    path = Path(results) / f"rank{int(os.environ.get('RANK', '0'))}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(measured))


# ------------------------------------------------------------------------------------------------- figures
def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def memory_figure(peak: float | None, plan: MemoryPlan) -> tuple[bool, str]:
    """(within the plan's tolerance, a line): the measured peak against the plan's per-GPU total; over it, the
    plan's table by component follows, to show which part the plan undercounts."""
    if peak is None:
        return True, f"memory peak n/a on a CPU (plan {_gb(plan.total)})"
    ok = peak <= MEMORY_TOLERANCE * plan.total
    return ok, (f"memory peak {_gb(peak)} per GPU = {peak / plan.total:.0%} of the plan {_gb(plan.total)}"
                + ("" if ok else f" (over the {MEMORY_TOLERANCE - 1:.0%} tolerance); the plan:\n{plan.table()}"))


def pretrain_figures(cfg: RunConfig, run: Path, world: int, cuda: bool) -> tuple[bool, str]:
    """Tokens/s (the median over steps 2..N: step 1 compiles and warms up) and MFU of a pretraining run."""
    recs = [r for r in read_metrics(run) if "tokens_per_s" in r]
    losses = [r["loss"] for r in read_metrics(run)]
    if not (run / "model").is_dir() or not recs:
        return False, f"no model/ or no metrics in {run}"
    tps = float(np.median([r["tokens_per_s"] for r in recs[1:] or recs]))
    numbers = model_numbers(cfg.model, json.loads((Path(cfg.pretrain.data_dir) / "manifest.json").read_text())
                            ["vocab_size"])
    flops = numbers.flops_per_token(cfg.data.seq_len)
    mfu = (f"MFU {tps * flops / (world * H100_BF16_FLOPS):.1%} ({flops / 1e9:.2f} GFLOP/token; of {world} x "
           f"{H100_BF16_FLOPS / 1e12:.0f} TFLOP/s, an H100's dense bf16 peak)" if cuda else "MFU n/a on a CPU")
    finite = all(math.isfinite(x) for x in losses)
    return finite, (f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
                    + ("" if finite else " (NOT FINITE)") + f", {tps:,.0f} tokens/s, {mfu}")


def resume_figures(uninterrupted: Path, resumed: Path, killed_at: int, steps: int, cuda: bool) -> tuple[bool, str]:
    """Whether the killed and resumed run recorded every step once and matched the uninterrupted run's losses."""
    if (resumed / "model").is_dir() is False:
        return False, f"the resumed run did not finish ({resumed / 'model'} missing)"
    recorded = [r["step"] for r in read_metrics(resumed)]
    if recorded != list(range(1, steps + 1)):
        return False, f"steps recorded {recorded}, expected 1..{steps} once each"
    a = {r["step"]: r["loss"] for r in read_metrics(uninterrupted)}
    b = {r["step"]: r["loss"] for r in read_metrics(resumed)}
    diff = max(abs(b[s] - a[s]) / max(abs(a[s]), 1e-12) for s in range(killed_at + 1, steps + 1))
    tolerance = RESUME_TOLERANCE["cuda" if cuda else "cpu"]
    ok = diff <= tolerance
    return ok, (f"killed (SIGKILL) after the step-{killed_at} checkpoint, resumed there; steps "
                f"{killed_at + 1}-{steps}: largest relative loss difference to the uninterrupted run "
                f"{diff:.2g} (allowed {tolerance:g})")


def rl_figures(cfg: RunConfig, run: Path) -> tuple[bool, str]:
    """Rows x new tokens per step, rollout tokens/s (generated tokens / generation seconds) and seconds per step."""
    recs = read_metrics(run) if (run / "metrics.jsonl").exists() else []
    r = cfg.rl
    rows = r.prompts_per_step * r.samples_per_prompt
    if not (run / "summary.json").exists() or len(recs) != RL_STEPS:
        return False, f"{len(recs)} of {RL_STEPS} steps recorded in {run}, no summary.json"
    generated = sum(rec["response_len"] * rows for rec in recs)
    gen_s = sum(rec["time/generation"] for rec in recs)
    step_s = np.mean([sum(rec[f"time/{k}"] for k in ("generation", "reward", "advantages", "update"))
                      for rec in recs])
    finite = all(math.isfinite(v) for rec in recs for v in rec.values() if isinstance(v, float))
    return finite, (f"{rows} rows x {r.max_new_tokens} new tokens, rollout {generated / gen_s:,.0f} tokens/s, "
                    f"{step_s:.1f} s per step" + ("" if finite else ", a metric NOT FINITE"))


def eval_figures(run: Path) -> tuple[bool, str]:
    results = sorted(run.glob("step_*.json"))
    if not results:
        return False, f"no results in {run}"
    (name, r), = json.loads(results[-1].read_text())["datasets"].items()
    ok = "pass@k" in r and 0.0 <= r["pass@k"] <= 1.0
    return ok, f"{name}: {r['n']} problems x {r.get('k')} samples, pass@1 {r['pass@1']:.3f}, " \
               f"pass@{r.get('k')} {r.get('pass@k', float('nan')):.3f}"


# ------------------------------------------------------------------------------------------------- the check
def visible_gpus(cfg: RunConfig) -> int:
    """Processes for the training parts: every visible GPU (CUDA_VISIBLE_DEVICES counts), one on a CPU."""
    return torch.cuda.device_count() if cfg.device != "cpu" and torch.cuda.is_available() else 1


def run_check(config: str, overrides: list[str] = (), out: str | Path | None = None,
              progress: bool = True) -> list[Part]:
    """Every part of the check, each line printed as it ends, and the table at the end; returns the parts."""
    given = load_run_config(config, list(overrides))
    steps = given.pretrain.max_steps if any(o.startswith("pretrain.max_steps=") for o in overrides) \
        else PRETRAIN_STEPS
    if steps < 2:
        raise ValueError(f"check: pretrain.max_steps={steps}: the kill and resume needs at least 2 steps")
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise ValueError(f"check: --out {out} is not empty; give a new folder (every part measures a fresh run)")
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="echochamber-check-"))
    cfg = check_config(given, folder, steps)
    nproc = visible_gpus(cfg)
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    where = (f"{nproc} x {torch.cuda.get_device_name(0)}" if cuda else f"CPU ({os.cpu_count()} cores)")
    print(f"check: {config} on {where}, {nproc} process{'es' * (nproc > 1)}; folder {folder}", flush=True)
    t_start = time.perf_counter()
    parts: list[Part] = []

    def part(name: str, body) -> bool:
        t0 = time.perf_counter()
        try:
            ok, figures = body()
        except Exception as e:  # noqa: BLE001 - a failing part is reported and the check goes on
            log = folder / "errors" / f"{name.replace(' ', '_').replace(':', '_')}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            ok, figures = False, f"{type(e).__name__}: {e} (traceback: {log})"
        parts.append(Part(name, ok, figures, time.perf_counter() - t0))
        print(f"  {'pass' if ok else 'FAIL'}  {name}: {figures} ({parts[-1].seconds:.0f} s)", flush=True)
        return ok

    def data():
        manifest = build_dataset(cfg.data, Path(cfg.pretrain.data_dir), progress=progress)
        train = manifest["splits"]["train"]["sequences"]
        return train > 0, (f"synthetic tg_omi1_text, {train} rows of {cfg.data.seq_len} tokens, vocabulary "
                           f"{manifest['vocab_size']} (model {cfg.model.vocab_size or manifest['vocab_size']})")

    def pretraining():
        measured = launch("pretrain", cfg, nproc, progress)
        ok, figures = pretrain_figures(cfg, folder / "pretrain", nproc, cuda)
        fits, memory = memory_figure(measured["peak_bytes"], pretrain_memory(cfg, nproc))
        return ok and fits, f"{figures}; {memory}"

    def kill_and_resume():
        killed = launch("killed", cfg, nproc, progress)
        if killed["returncode"] == 0:
            return False, "the run to be killed finished instead"
        launch("resumed", cfg, nproc, progress)
        return resume_figures(folder / "pretrain", folder / "resume", cfg.pretrain.ckpt_every,
                              cfg.pretrain.max_steps, cuda)

    def arm(algo: str):
        def body():
            arm_cfg = arm_config(cfg, algo)
            measured = launch(f"rl:{algo}", arm_cfg, nproc, progress)
            ok, figures = rl_figures(arm_cfg, folder / f"rl_{algo}")
            fits, memory = memory_figure(measured["peak_bytes"], rl_memory(arm_cfg, nproc))
            return ok and fits, f"{figures}; {memory}"
        return body

    def evaluation():
        ecfg = eval_config(given, cfg, nproc)
        measured = launch("eval", ecfg, nproc, progress)
        ok, figures = eval_figures(folder / "eval")
        fits, memory = memory_figure(measured["peak_bytes"], eval_memory(ecfg, nproc))
        return ok and fits, f"{figures}, {ecfg.eval.max_new_tokens} new tokens; {memory}"

    if part("data", data) and part(f"pretrain ({steps} steps)", pretraining):
        part("kill and resume", kill_and_resume)
        for algo in ARMS:
            part(f"rl {algo} ({RL_STEPS} steps)", arm(algo))
        part("eval pass@k", evaluation)
    failed = [p.name for p in parts if not p.ok]
    print(f"check: {len(parts) - len(failed)}/{len(parts)} parts passed in "
          f"{(time.perf_counter() - t_start) / 60:.1f} min"
          + (f"; FAILED: {', '.join(failed)}; everything is in {folder}" if failed else ""), flush=True)
    if not failed and out is None:
        shutil.rmtree(folder, ignore_errors=True)
    return parts


if __name__ == "__main__":
    worker_main(sys.argv[1:])

"""Two training jobs at once on the same cores: how much each slows down, with and without `echochamber.cpu`.

Each job is a separate process that sets its threads the way the CLI does (`echochamber.cpu.configure()`
before importing torch, `rebalance()` after it and at every step; skipped in the "OpenMP default" and
"PASSIVE" scenarios) and then times pretraining steps of our OLMo (forward + backward + AdamW, bf16 autocast,
olmo-tiny, 32 x 256 tokens). Scenarios, each one's jobs started together:

  alone, OpenMP default    one job, all cores, OpenMP's own wait policy (threads spin a while when idle)
  alone, CLI               one job as the CLI runs it when not told anything: all cores, OpenMP's wait policy
  2 jobs, OpenMP default   two jobs as before `echochamber.cpu`: all cores each, spinning
  2 jobs, PASSIVE          two jobs with OMP_WAIT_POLICY=PASSIVE only: all cores each, idle threads sleep
  2 jobs, JOBS=2           two jobs told ECHOCHAMBER_JOBS=2: cores // 2 threads each, PASSIVE
  2 jobs, CLI              two jobs as the CLI runs them when not told anything: each finds the other in the
                           jobs registry and takes cores // 2 threads (cpu.py, "Jobs nobody announced")

Reported: each job's median seconds per step and its slowdown against the first `alone` job (2.0x = an even
half of the machine each). Run it with nothing else on the cores (it holds them all for about a minute):

    flock /tmp/echochamber-cpu.lock python bench/concurrent_jobs.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

SCENARIOS = {  # name -> (number of jobs, environment for each, whether the job sets threads like the CLI)
    "alone, OpenMP default": (1, {}, False),
    "alone, CLI": (1, {}, True),
    "2 jobs, OpenMP default": (2, {}, False),
    "2 jobs, PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "2 jobs, JOBS=2": (2, {"ECHOCHAMBER_JOBS": "2"}, True),
    "2 jobs, CLI": (2, {}, True),
}


def child(steps: int, configure_threads: bool) -> None:
    """One job: configure threads like the CLI (or not), then time `steps` training steps; print seconds per
    step, threads and wait policy."""
    from echochamber.cpu import configure, rebalance

    if configure_threads:
        configure()
    import torch

    from echochamber.model import ModelConfig, OLMo, tune_cpu_allocator

    tune_cpu_allocator()
    torch.manual_seed(0)
    model = OLMo(ModelConfig(preset="olmo-tiny").resolve(1024))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    rows = torch.randint(0, 1024, (32, 257))
    times = []
    rebalance(force=True)  # what the CLI does once torch is loaded (automatic mode only; else a no-op)
    for _ in range(steps + 1):  # the first step is a warm-up
        rebalance()  # what the training loops do
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = -model(rows[:, :-1], rows[:, 1:]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    print(f"{statistics.median(times[1:]):.4f} {torch.get_num_threads()} {os.environ.get('OMP_WAIT_POLICY', '-')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per job")
    ap.add_argument("--child", choices=["configure", "plain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.steps, args.child == "configure")

    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "ECHOCHAMBER_JOBS", "ECHOCHAMBER_THREADS")}
    registry = tempfile.TemporaryDirectory(prefix="echochamber-bench-jobs-")  # only this bench's jobs count
    base["ECHOCHAMBER_JOBS_DIR"] = registry.name
    cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child"]
    print(f"\n{os.cpu_count()} cores; each job: {args.steps} training steps of olmo-tiny, 32 x 256 tokens, bf16\n")
    print(f"{'scenario':<24} {'job':>3} {'threads':>7} {'wait':>8} {'s/step':>7} {'slowdown':>9}")
    alone = None
    for name, (n, env, configure_threads) in SCENARIOS.items():
        argv = cmd + ["configure" if configure_threads else "plain"]
        procs = [subprocess.Popen(argv, env={**base, **env}, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        outs = [p.communicate()[0].split() for p in procs]
        for j, (sec, threads, wait) in enumerate(outs):
            sec = float(sec)
            alone = sec if alone is None else alone
            print(f"{name:<24} {j:>3} {threads:>7} {wait:>8} {sec:>7.3f} {sec / alone:>8.2f}x")
    print("\nslowdown: seconds per step against the first 'alone' job; 2.00x = each job gets half the machine")


if __name__ == "__main__":
    main()

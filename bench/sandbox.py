"""Sandbox throughput: snippets per second on a trivial TinyGSM function, 1 and 2 workers, bwrap on and off.

    python bench/sandbox.py                 # ~30 s on 2 idle cores
    python bench/sandbox.py --n 5000 --repeats 5 --preload math sympy

Each configuration gets a fresh pool, a warm-up batch, then `repeats` timed `run_many` calls of `n` snippets;
the median rate is reported (the machine is usually shared, so single runs are noisy). Also reported: how long
the pool took to start (workers boot in parallel) and the per-snippet latency of a lone `run` call. A last
pair of lines times an OpenMathInstruct-1 style snippet that imports sympy, on a pool whose workers import
sympy on demand (the default) and on one that imports it in every snippet.
Target (issue 9): at least 500 TinyGSM snippets/s with 2 workers in bubblewrap (minimal file system).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from echochamber.sandbox import CodeJob, SandboxConfig, SandboxPool, bwrap_available

TINYGSM = CodeJob(
    "def simple_math_problem() -> int:\n"
    "    eggs_per_day = 16\n"
    "    eaten = 3\n"
    "    baked = 4\n"
    "    price = 2\n"
    "    result = (eggs_per_day - eaten - baked) * price\n"
    "    return result\n",
    "simple_math_problem()",
)
OMI1_SYMPY = CodeJob("from sympy import symbols, solve\nx = symbols('x')\nroots = solve(x**2 - 5*x + 6, x)\n"
                     "print(max(roots))", "max(roots)")


def bench(use_bwrap: bool, workers: int, n: int, repeats: int, preload: list[str], job: CodeJob = TINYGSM,
          expected: int = 18, on_demand: list[str] | None = None) -> dict:
    cfg = SandboxConfig(workers=workers, use_bwrap=use_bwrap, preload=preload, timeout_s=10)
    if on_demand is not None:
        cfg.preload_on_demand = on_demand
    t0 = time.perf_counter()
    with SandboxPool(cfg) as pool:
        start_s = time.perf_counter() - t0
        pool.run_many([job] * 2 * workers)  # warm-up (and the on-demand imports)
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            results = pool.run_many([job] * n)
            rates.append(n / (time.perf_counter() - t))
            assert all(r.ok and r.value == expected for r in results), [r for r in results if not r.ok][:3]
        t = time.perf_counter()
        for _ in range(10):
            pool.run(job)
        latency_ms = (time.perf_counter() - t) / 10 * 1e3
    return {"rate": statistics.median(rates), "min": min(rates), "max": max(rates), "start_s": start_s,
            "latency_ms": latency_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=600, help="snippets per timed batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per configuration (median reported)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--preload", nargs="*", default=["math"], help="modules each worker imports before forking")
    args = ap.parse_args()
    modes = ([True] if bwrap_available() else []) + [False]
    if not bwrap_available():
        print("bubblewrap not available here: fallback mode only", file=sys.stderr)
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}, "
          f"n={args.n} x {args.repeats}, preload={args.preload}")
    print(f"{'mode':<9} {'workers':>7} {'snippets/s':>10} {'(min-max)':>13} {'start s':>8} {'1-run ms':>9}")
    def show(label: str, w: int, r: dict) -> None:
        print(f"{label:<9} {w:>7} {r['rate']:>10.0f} {r['min']:>6.0f}-{r['max']:<6.0f} {r['start_s']:>8.2f} "
              f"{r['latency_ms']:>9.2f}", flush=True)

    for use_bwrap in modes:
        for w in args.workers:
            show("bwrap" if use_bwrap else "fallback", w, bench(use_bwrap, w, args.n, args.repeats, args.preload))
    # OpenMathInstruct-1 code importing sympy, 2 workers, the best mode available.
    n = max(20, args.n // 20)
    print(f"# OMI1 snippet importing sympy (n={n}): workers preload it on demand / every snippet imports it")
    show("on-demand", 2, bench(modes[0], 2, n, args.repeats, args.preload, OMI1_SYMPY, 3))
    show("per-snip", 2, bench(modes[0], 2, n, args.repeats, args.preload, OMI1_SYMPY, 3, on_demand=[]))


if __name__ == "__main__":
    main()

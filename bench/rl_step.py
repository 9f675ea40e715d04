"""Where an RL step's time goes: generation, reward (grading in the sandbox), update (old/ref log-probs + the
clipped-objective mini-batches), read from a finished or running RL run's metrics.jsonl.

    python bench/rl_step.py runs/quickstart/rl
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from echochamber.runio import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="RL run folder (with metrics.jsonl)")
    ap.add_argument("--skip", type=int, default=1, help="first steps to leave out (warm-up: worker start, first call)")
    args = ap.parse_args()
    path = Path(args.run) / "metrics.jsonl"
    if not path.exists():
        sys.exit(f"{path}: not found; expected an RL run folder")
    records = read_jsonl(path, tolerate_torn_tail=True)[args.skip:]
    if not records:
        sys.exit(f"{path}: no steps after skipping {args.skip}")
    parts = ("generation", "reward", "update")
    med = {p: statistics.median(r[f"time/{p}"] for r in records) for p in parts}
    total = sum(med.values())
    samples = statistics.median(r["response_len"] for r in records)
    print(f"{len(records)} RL steps (median per step; responses median {samples:.0f} tokens)")
    print(f"{'part':>12} {'seconds':>8} {'share':>6}")
    for p in parts:
        print(f"{p:>12} {med[p]:8.2f} {med[p] / total:6.1%}")
    print(f"{'total':>12} {total:8.2f}")


if __name__ == "__main__":
    main()

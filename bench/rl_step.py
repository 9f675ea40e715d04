"""Where an RL step's time goes, per algorithm: generation, reward (grading in the sandbox), advantages (old /
reference log-probs, critic values, GAE) and update (the mini-batches: actor, critic or SFT), read from finished
or running RL runs' metrics.jsonl (for Expert Iteration a step is a round).

    python bench/rl_step.py runs/sweep/cells/*/rl
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

from echochamber.runio import read_jsonl

PARTS = ("generation", "reward", "advantages", "update")


def breakdown(run: Path, skip: int) -> str:
    path = run / "metrics.jsonl"
    if not path.exists():
        return f"{path}: not found; expected an RL run folder"
    records = read_jsonl(path, tolerate_torn_tail=True)[skip:]
    if not records:
        return f"{path}: no steps after skipping {skip}"
    cfg = run / "rl_config.yaml"
    algo = (yaml.safe_load(cfg.read_text()) or {}).get("rl", {}).get("algo", "?") if cfg.exists() else "?"
    med = {p: statistics.median(r.get(f"time/{p}", 0.0) for r in records) for p in PARTS}
    total = sum(med.values())
    samples = statistics.median(r["response_len"] for r in records)
    lines = [f"{run}  algo={algo}: {len(records)} steps (median per step; responses median {samples:.0f} tokens)",
             f"{'part':>12} {'seconds':>8} {'share':>6}"]
    lines += [f"{p:>12} {med[p]:8.2f} {med[p] / total:6.1%}" for p in PARTS]
    lines.append(f"{'total':>12} {total:8.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="RL run folders (with metrics.jsonl)")
    ap.add_argument("--skip", type=int, default=1, help="first steps to leave out (warm-up: worker start, first call)")
    args = ap.parse_args()
    out = [breakdown(Path(r), args.skip) for r in args.runs]
    print("\n\n".join(out))
    if all("not found" in o or "no steps" in o for o in out):
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Where a study cell's wall time goes, read from what its runs recorded (it runs nothing, so it can read a study
while another one trains):

    python bench/cell_time.py runs/study_failure [runs/study_kl ...]

Per cell: its share of the shared pretraining (the pretraining's wall time over the cells that have started from
that model), then its RL: generation, grading (the sandbox), advantages (log-probs of the old policy, the
reference and the critic), the update, the evaluations, and the rest (start-up, checkpoints, the final export).
bench/rl_step.py gives the same parts per step; this adds up a whole cell. The sources:
pretrained/<key>/metrics.jsonl (`time/wall`; older runs: the sum of tokens / tokens_per_s between log records,
which leaves out the validation passes), the cell's rl/metrics.jsonl (time/* per step), rl/eval/step_N.json
(`seconds`; older runs: counted in the rest) and rl/summary.json (wall_seconds). The last line of each study is
the mean cell: the figure to compare before and after a change to what a cell runs.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import yaml
from rl_step import PARTS as STAGES  # the parts of an RL step its metrics.jsonl times (bench/rl_step.py)

from echochamber.runio import read_jsonl


def records(path: Path) -> list[dict]:
    return read_jsonl(path, tolerate_torn_tail=True) if path.exists() else []


def pretraining_seconds(pretrained: Path) -> tuple[float | None, str]:
    """The pretraining's wall time and how it was read."""
    recs = records(pretrained / "metrics.jsonl")
    walls = [r["time/wall"] for r in recs if "time/wall" in r]
    if walls:
        return walls[-1], "recorded"
    logged = [r for r in recs if r.get("tokens_per_s")]
    if not logged:
        return None, "none"
    seconds, tokens = 0.0, 0
    for r in logged:
        seconds += (r["tokens"] - tokens) / r["tokens_per_s"]
        tokens = r["tokens"]
    return seconds, "from throughput, without validation"


def rl_breakdown(rl: Path) -> dict[str, float]:
    steps = records(rl / "metrics.jsonl")
    out = {stage: sum(r.get(f"time/{stage}", 0.0) for r in steps) for stage in STAGES}
    evals = [json.loads(p.read_text()) for p in sorted((rl / "eval").glob("step_*.json"))]
    timed = [e["seconds"]["total"] for e in evals if "seconds" in e]
    out["evaluations"] = sum(timed) if len(timed) == len(evals) and evals else float("nan")
    summary = json.loads((rl / "summary.json").read_text()) if (rl / "summary.json").exists() else {}
    out["wall"] = summary.get("wall_seconds", float("nan"))
    known = sum(out[s] for s in STAGES) + (0.0 if math.isnan(out["evaluations"]) else out["evaluations"])
    out["rest"] = out["wall"] - known
    out["steps"] = len(steps)
    return out


def study(folder: Path) -> None:
    cells = sorted(p for p in (folder / "cells").glob("*") if (p / "rl" / "summary.json").exists())
    if not cells:
        print(f"{folder}: no finished cell")
        return
    # the pretrained model a cell started from (its RL run's recorded rl.init): the sweep's pretrained/<key>/model,
    # shared by the cells with equal keys
    started = [p for p in (folder / "cells").glob("*") if (p / "rl" / "rl_config.yaml").exists()]
    inits = {c: Path(yaml.safe_load((c / "rl" / "rl_config.yaml").read_text())["rl"]["init"]) for c in started}
    shared = Counter(inits.values())  # finished or not: the pretraining serves them all
    print(f"\n{folder}: {len(cells)} finished cells (minutes)")
    head = ["cell", "pretrain share", *STAGES, "evaluations", "rest", "RL wall", "cell total"]
    print(" | ".join(head))
    totals = []
    for c in cells:
        b = rl_breakdown(c / "rl")
        pre_dir = folder / "pretrained" / inits[c].parent.name if inits[c].name == "model" else None
        pre, how = pretraining_seconds(pre_dir) if pre_dir else (0.0, "rl.init given")
        share = (pre or 0.0) / shared[inits[c]]
        total = share + b["wall"]
        totals.append((share, b, total))
        evals = "in rest" if math.isnan(b["evaluations"]) else f"{b['evaluations'] / 60:.1f}"
        print(" | ".join([c.name, f"{share / 60:.1f} ({how})", *(f"{b[s] / 60:.1f}" for s in STAGES), evals,
                          f"{b['rest'] / 60:.1f}", f"{b['wall'] / 60:.1f}", f"{total / 60:.1f}"]))
    n = len(totals)
    mean = lambda f: sum(f(t) for t in totals) / n  # noqa: E731
    print(" | ".join(["mean cell", f"{mean(lambda t: t[0]) / 60:.1f}",
                      *(f"{mean(lambda t, s=s: t[1][s]) / 60:.1f}" for s in STAGES), "",
                      f"{mean(lambda t: t[1]['rest']) / 60:.1f}", f"{mean(lambda t: t[1]['wall']) / 60:.1f}",
                      f"{mean(lambda t: t[2]) / 60:.1f}"]))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        study(Path(arg))

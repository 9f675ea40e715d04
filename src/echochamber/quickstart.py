"""`echochamber quickstart`: the whole study in miniature on a laptop, nothing downloaded.

    data      three synthetic solution formats -> BPE tokenizer -> token caches and a mixture index
    pretrain  a ~1-2M-parameter OLMo from scratch
    rl        GRPO on synthetic train problems, evaluating greedy pass@1 and format shares as it goes
    report    report.html: the format shares over RL steps with pass@1 on top (the paper's signature figure)

Every stage resumes: run the same command again after an interruption and it continues where it stopped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .runio import atomic_write_json, installed_packages, lock_differences


def quickstart(out_dir: str = "runs/quickstart", config: str = "quickstart", overrides: list[str] = (),
               allow_config_change: bool = False) -> dict:
    from .config import load_run_config
    from .data import build_dataset
    from .pretrain import pretrain
    from .report import write_report
    from .rl.train import format_summary, run_rl

    cfg = load_run_config(config, [f"out_dir={out_dir}", *overrides])
    differ = lock_differences(installed_packages())
    if differ:  # the README's figures were measured with the locked versions: say why these may not match them
        print(f"quickstart: installed packages differ from constraints.txt ({'; '.join(differ[:4])}"
              f"{'; ...' if len(differ) > 4 else ''}): the README's figures need ./install.sh's versions",
              file=sys.stderr)
    out = Path(cfg.out_dir)
    t0 = time.perf_counter()
    timings = {}

    def stage(name: str, fn):
        print(f"\n=== {name} ===", file=sys.stderr, flush=True)
        t = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t
        return result

    stage("data", lambda: build_dataset(cfg.data, out / "data"))
    stage("pretrain", lambda: pretrain(cfg, out / "pretrain", allow_config_change=allow_config_change))
    rl_summary = stage("rl", lambda: run_rl(cfg, out / "rl", allow_config_change=allow_config_change))
    report = stage("report", lambda: write_report([out / "rl"], out / "rl"))

    summary = {**rl_summary, "wall_seconds": time.perf_counter() - t0, "stage_seconds": timings}
    atomic_write_json(out / "summary.json", summary)
    print(f"\nreport: {report}")
    print(format_summary(summary))
    return summary

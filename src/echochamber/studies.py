"""`echochamber study NAME --out DIR`: the paper's findings in miniature, one command each.

    echochamber study list                                   # the studies, their questions and grids
    echochamber study collapse --out runs/study_collapse     # the quickstart over 3 seeds

A study is a sweep (sweep.py) with fixed settings, plus a report whose FIRST figure answers the study's question:

    collapse     does RL collapse the outputs onto one pretraining format, with the pass@1 jump? (3 seeds)
    algorithms   PPO vs GRPO vs Expert Iteration on the same budget of samples
    kl           KL coefficient 0 / 1e-3 / 1e-2 for PPO (k1 in the reward) and GRPO: do minority formats survive?
    mixture      the same model on mixtures with other repeat factors: does the winner move?
    transfer     RL on train, evaluated on splits it never saw: unseen names, larger amounts, one more step
    interpreter  the collapse study with a real interpreter writing <llm-code-output> during generation
    scale        models of about 1M, 4M and 12M parameters (each with its pretraining rate) on the small-number
                 world: which format wins at each size?

DIR is the sweep's folder (DIR/sweep.json, DIR/cells/, DIR/pretrained/), so an interrupted study resumes by
running the same command again, and finished cells are skipped. The study adds:

    DIR/study.json     the study's question, settings, commit, wall time, and per group of cells (cells that
                       differ only in seed): pass@1 (and pass@k) before and after RL, mean and spread over seeds,
                       format shares before and after, the winning format
    DIR/report.html    the question, the study's figure, the results table, then the sweep's own tables and figures

Positional KEY=VALUE overrides apply to every cell (`pretrain.max_steps=50` for a quick look; the result is then
not the study's). `--config` replaces the study's base config (tests use the tiny `smoke` config).

`echochamber study NAME --out DIR --dry-run` prints the study's question and its sweep's dry run (sweep.dry_run:
every cell, the pretrained model it shares, what DIR already holds, the wall time still to run per cell and in
total, each figure with its source) and writes nothing.
"""

from __future__ import annotations

import functools
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .report import (Run, _color, _embed, _eval_series, _grid, _legend, _ordered, _step_axis,
                     _union, fig_sweep_format_shares, load_run, seed_band, write_sweep_report)
from .runio import atomic_write_json, git_commit
from .sweep import dry_run as sweep_dry_run, group_over_seeds, is_seed_key, run_sweep

Group = tuple[str, dict, list[Run]]  # (name, the group's non-seed grid values, its runs)


def winner(shares: dict) -> str | None:
    """The format with the largest share (unknown is no format): what a run collapses onto."""
    return max((lab for lab in shares if lab != "unknown"), key=lambda lab: shares[lab], default=None)


def first_last(runs: list[Run], dataset: str) -> tuple[list[dict], list[dict]]:
    """Each run's first and last evaluation of `dataset` (runs never evaluated on it are left out)."""
    recs = [[e["datasets"][dataset] for e in r.evals if dataset in e.get("datasets", {})] for r in runs]
    return [rs[0] for rs in recs if rs], [rs[-1] for rs in recs if rs]


def mean_shares(recs: list[dict]) -> dict[str, float]:
    """Mean over evaluation records of their greedy format shares."""
    return {lab: float(np.mean([d["format_share"].get(lab, 0.0) for d in recs]))
            for lab in _union(d["format_share"] for d in recs)}


def _band(ax, x, band, color: str, spread: bool, **kw) -> None:
    """A mean line and, over several runs, its min-max band."""
    mean, lo, hi = band
    ax.plot(x, mean, color=color, marker="o", ms=3, lw=1.8, **kw)
    if spread:
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)


# ------------------------------------------------------------------------------------------------- figures
# Each takes the groups of finished (or running) cells and the summary dataset; None when nothing is drawn yet.

def fig_collapse(groups: list[Group], dataset: str) -> Figure | None:
    """The signature figure over seeds: format shares of greedy outputs and pass@1, mean and min-max band."""
    return fig_sweep_format_shares([(name, runs) for name, _, runs in groups], dataset, ncols=2)


def _samples_per_step(run: Run) -> int:
    """Samples one RL step (an Expert Iteration round) draws, from the run's recorded config."""
    rl = run.config.get("rl", {})
    if rl.get("algo") == "ei":
        return int(rl["ei"]["prompts_per_round"]) * int(rl["ei"]["samples_per_prompt"])
    return int(rl.get("prompts_per_step", 0)) * int(rl.get("samples_per_prompt", 0))


def _top_share(per_label: dict[str, np.ndarray]) -> np.ndarray:
    """Per step, the largest share of any format (unknown excluded): 1.0 is a full collapse."""
    named = [v for lab, v in per_label.items() if lab != "unknown"]
    return np.nanmax(np.array(named), axis=0) if named else np.array([])


def _winner_series(dataset: str) -> Callable[[Run], tuple]:
    """The share of greedy outputs in the format that wins the run (its largest share at the last evaluation)
    per evaluation, with greedy pass@1 as the accuracy line: the winner's rise is the collapse."""
    def get(run: Run):
        steps, per_label, acc = _eval_series(dataset, "format_share")(run)
        won = winner({lab: float(np.nan_to_num(v[-1])) for lab, v in per_label.items()})
        return steps, {"winner": per_label[won] if won else steps * np.nan}, acc
    return get


def fig_algorithms(groups: list[Group], dataset: str) -> Figure | None:
    """pass@1 and the leading format's share against the samples drawn so far, one line per algorithm."""
    groups = [g for g in groups if any(dataset in r.datasets for r in g[2])]
    if not groups:
        return None
    fig, axes = _grid(1, 2, f"{dataset}: the algorithms on one budget of samples (mean over seeds; band min-max)")
    for i, (name, values, runs) in enumerate(groups):
        color = f"C{i % 10}"
        steps, won, acc = seed_band(runs, _winner_series(dataset))
        x = steps * _samples_per_step(runs[0])
        for ax, band in zip(axes[0], (acc, won["winner"])):
            _band(ax, x, band, color, len(runs) > 1, label=name)
    for ax, title in zip(axes[0], ("greedy pass@1", "share of the winning format (greedy outputs)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("samples drawn in RL")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    _legend(fig, [Line2D([], [], color=f"C{i % 10}", lw=1.8, label=g[0]) for i, g in enumerate(groups)])
    return fig


def _minority_series(dataset: str) -> Callable[[Run], tuple]:
    """Share of outputs outside the leading format per evaluation (sampled outputs when the run drew samples,
    else greedy), with pass@k as the 'accuracy' line (greedy pass@1 when no samples)."""
    def get(run: Run):
        recs = [(e["step"], e["datasets"][dataset]) for e in run.evals if dataset in e.get("datasets", {})]
        steps = np.array([s for s, _ in recs])
        shares = [d.get("sample_format_share") or d["format_share"] for _, d in recs]
        labels = _union(shares)
        per_label = {lab: np.array([s.get(lab, 0.0) for s in shares]) for lab in labels if lab != "unknown"}
        minority = 1.0 - (_top_share(per_label) if per_label else np.zeros(len(recs)))
        passk = np.array([d.get("pass@k", d["pass@1"]) for _, d in recs], dtype=float)
        return steps, {"minority": minority}, passk
    return get


def fig_kl(groups: list[Group], dataset: str) -> Figure | None:
    """Rows: algorithms; columns: share of outputs outside the leading format, and pass@k; a line per KL coefficient."""
    groups = [g for g in groups if any(dataset in r.datasets for r in g[2])]
    if not groups:
        return None
    algos = list(dict.fromkeys(str(v.get("rl.algo", "")) for _, v, _ in groups))
    fig, axes = _grid(len(algos), 2, f"{dataset}: does the KL coefficient keep minority formats and pass@k alive?")
    coefs = list(dict.fromkeys(str(v.get("rl.kl_coef", "")) for _, v, _ in groups))
    for _, values, runs in groups:
        row = algos.index(str(values.get("rl.algo", "")))
        color = f"C{coefs.index(str(values.get('rl.kl_coef', ''))) % 10}"
        steps, minority, passk = seed_band(runs, _minority_series(dataset))
        for ax, band in zip(axes[row], (minority["minority"], passk)):
            _band(ax, steps, band, color, len(runs) > 1)
    k = list(dict.fromkeys(str(e["datasets"][dataset].get("k", 1)) for _, _, runs in groups for r in runs
                           for e in r.evals if dataset in e.get("datasets", {})))
    for row, algo in enumerate(algos):
        for ax, title in zip(axes[row], ("share outside the leading format (sampled outputs)",
                                         f"pass@{'/'.join(k)}")):
            ax.set_title(f"{algo or 'all'} · {title}", fontsize=10)
            ax.set_ylim(0, 1.02)
            _step_axis(ax, [r for _, v, rs in groups if str(v.get("rl.algo", "")) == algo for r in rs])
    _legend(fig, [Line2D([], [], color=f"C{i % 10}", lw=1.8, label=f"kl_coef {c}") for i, c in enumerate(coefs)])
    return fig


def _stacked_bars(ax, x: float, shares: dict[str, float], width: float = 0.35) -> None:
    bottom = 0.0
    for lab in _ordered(shares):
        ax.bar(x, shares[lab], bottom=bottom, color=_color(lab), width=width)
        bottom += shares[lab]


def _before_after_bars(groups: list[Group], dataset: str, title: str, xlabels: list[str]) -> Figure | None:
    """One pair of stacked bars per group: greedy format shares before RL and after, pass@1 marked on each."""
    groups = [g for g in groups if any(dataset in r.datasets for r in g[2])]
    if not groups:
        return None
    fig, axes = _grid(1, 1, title)
    ax = axes[0, 0]
    seen: set[str] = set()
    for i, (_, _, runs) in enumerate(groups):
        for j, recs in enumerate(first_last(runs, dataset)):
            shares = mean_shares(recs)
            seen.update(shares)
            _stacked_bars(ax, i + (j - 0.5) * 0.4, shares)
            acc = float(np.mean([d["pass@1"] for d in recs]))
            ax.plot(i + (j - 0.5) * 0.4, acc, marker="D", color="black", ms=6)
            ax.text(i + (j - 0.5) * 0.4, 1.03, ("before" if j == 0 else "after") + f"\n{acc:.0%}", ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)), xlabels)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("share of greedy outputs; ◆ pass@1")
    _legend(fig, [Patch(color=_color(lab), label=lab) for lab in _ordered(seen)]
            + [Line2D([], [], color="black", marker="D", lw=0, label="greedy pass@1")])
    return fig


def fig_mixture(groups: list[Group], dataset: str) -> Figure | None:
    return _before_after_bars(groups, dataset, f"{dataset}: format shares before and after RL, per pretraining mixture",
                              [str(v.get("data.mixture", name)) for name, v, _ in groups])


def fig_scale(groups: list[Group], dataset: str) -> Figure | None:
    import torch

    from .model import OLMo, ModelConfig

    def label(values: dict, runs: list[Run]) -> str:
        model = runs[0].config.get("model", {}) if runs else {}
        vocab = int(runs[0].config.get("data", {}).get("vocab_size", 1024)) if runs else 1024
        try:
            with torch.device("meta"):  # the count without allocating the weights
                n = OLMo(ModelConfig(**{**model, "vocab_size": vocab})).num_params()
            lr = runs[0].config.get("pretrain", {}).get("lr") if runs else None
            return f"{values.get('model.preset', '')}\n{n / 1e6:.1f}M params" + (f", lr {lr:g}" if lr else "")
        except (TypeError, ValueError):
            return str(values.get("model.preset", ""))

    return _before_after_bars(groups, dataset, f"{dataset}: which format wins at each model size?",
                              [label(v, runs) for _, v, runs in groups])


def fig_transfer(groups: list[Group], dataset: str) -> Figure | None:
    """Greedy pass@1 over RL steps on every evaluation split (mean over seeds, band min-max)."""
    runs = [r for _, _, rs in groups for r in rs]
    datasets = _union(r.datasets for r in runs)
    if not datasets:
        return None
    fig, axes = _grid(1, 2, "Transfer: RL on the train split, greedy pass@1 on splits it never saw")
    for i, ds in enumerate(datasets):
        steps, won, acc = seed_band(runs, _winner_series(ds))
        for ax, band in zip(axes[0], (acc, won["winner"])):
            _band(ax, steps, band, f"C{i}", len(runs) > 1, label=ds)
    for ax, title in zip(axes[0], ("greedy pass@1", "share of the winning format (greedy outputs)")):
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.02)
        _step_axis(ax, runs)
    _legend(fig, [Line2D([], [], color=f"C{i}", lw=1.8, label=ds) for i, ds in enumerate(datasets)])
    return fig


# ------------------------------------------------------------------------------------------------- the studies
@dataclass(frozen=True)
class Study:
    name: str
    question: str  # what the first figure answers
    paper: str  # what the paper found (PAPER.md), to read the result against
    config: str  # the base config (built-in name or path)
    grid: tuple[str, ...]  # --grid specs
    overrides: tuple[str, ...]  # KEY=VALUE for every cell
    figure: Callable[[list[Group], str], Figure | None]


STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("collapse", "Does RL collapse the outputs onto one pretraining format, and does the collapse come with the "
          "pass@1 jump? (the quickstart over 3 seeds)",
          "RL collapses onto one format within about one pass over the training set; the collapse coincides with "
          "the largest pass@1 gain.",
          "quickstart", ("seed=0,1,2",), (), fig_collapse),
    Study("algorithms", "PPO vs GRPO vs Expert Iteration on the same budget of samples: gain and collapse.",
          "PPO is the most stable; GRPO collapses the same way; Expert Iteration lags, with a milder shift.",
          "quickstart", ("rl.algo=grpo,ppo,ei",), (), fig_algorithms),
    Study("kl", "Does a larger KL coefficient keep minority formats alive and pass@k stable? (PPO with k1 in the "
          "reward, as the paper; GRPO with k3 in the loss)",
          "kl_coef 0.01 (vs 0.001) keeps minority formats and pass@64 stable (PPO; the paper's GRPO ran without "
          "an effective KL).",
          "quickstart", ("rl.algo=ppo,grpo", "rl.kl_coef=0,0.001,0.01"), ("eval.n_samples=8",), fig_kl),
    Study("mixture", "Does the winning format move when one format's share of pretraining grows (repeat factors)?",
          "The winner depends on the mixture; with 8x OMI1 the less accurate format wins and accuracy drops.",
          "quickstart", ("data.mixture=tg_omi1_4xtext,4xtg_omi1_4xtext,tg_4xomi1_4xtext",), (), fig_mixture),
    Study("transfer", "Does RL on the train split improve splits it never saw: people and objects no train "
          "problem names (synthetic:renamed), larger amounts than any train question states (synthetic:larger), "
          "and one more step than any train problem has (synthetic:longer)?",
          "RL on GSM8K improves MATH-500 (1B: about 33% -> 44%) and a little AIME.",
          "quickstart", (),
          ("eval.datasets=[synthetic:test,synthetic:renamed,synthetic:larger,synthetic:longer]",), fig_transfer),
    Study("interpreter", "Does the echo chamber change when a real interpreter writes <llm-code-output> during "
          "generation (OpenMathInstruct-1's own inference) instead of the model? (3 seeds, without vs with)",
          "The paper's RL ran without an interpreter: the model wrote its own code output.",
          "quickstart", ("seed=0,1,2", "rl.interpreter+eval.interpreter=false,true"), (), fig_collapse),
    Study("scale", "Which format wins at each model size, on a world where a larger model can master text "
          "arithmetic (small numbers) and the code formats' data always write x as +?",
          "On the same mixture 150M models go to TinyGSM code, 1B models to natural language.",
          "small_numbers",
          # Each size with its pretraining rate: the 12M model at the tiny one's 3e-3 pretrained worse than the 1M
          # model (val loss 0.284 vs 0.261, 2026-11-30), so it takes the paper's 1e-3.
          ("model.preset+pretrain.lr=(olmo-tiny,3e-3),(olmo-small,3e-3),(olmo-12m,1e-3)",),
          # the figure compares before and after RL on test: evaluating one split at the start and the end only
          # (not two every 4 steps) is what keeps the three sizes within an hour on 2 cores
          ("eval.datasets=[synthetic:test]", "rl.eval_every=24"), fig_scale),
)}


# ------------------------------------------------------------------------------------------------- results
def _mean_sd(vals: list[float]) -> dict | None:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    a = np.array(vals, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std()), "min": float(a.min()), "max": float(a.max()), "n": len(a)}


COLLAPSED = 0.9  # a run has collapsed once one format holds this share of its greedy outputs


def collapse_timing(run: Run, dataset: str) -> dict:
    """When the run collapsed onto the format that wins it (the first evaluation step from which its final winner
    holds >= COLLAPSED of greedy outputs at every later evaluation; None if it does not end so) and where its
    largest pass@1 gain between consecutive evaluations ended: the paper's claim is that the two coincide."""
    recs = [(e["step"], e["datasets"][dataset]) for e in run.evals if dataset in e.get("datasets", {})]
    if not recs:
        return {"collapse_step": None, "largest_gain_step": None}
    won = winner(recs[-1][1]["format_share"])
    held = [d["format_share"].get(won, 0.0) >= COLLAPSED for _, d in recs]
    collapse = next((s for i, (s, _) in enumerate(recs) if all(held[i:])), None)
    gains = [(b[1]["pass@1"] - a[1]["pass@1"], b[0]) for a, b in zip(recs, recs[1:])]
    return {"collapse_step": collapse, "largest_gain_step": max(gains)[1] if gains else None}


def group_result(name: str, values: dict, runs: list[Run], dataset: str) -> dict:
    """One group's numbers on `dataset` at its first and last evaluation (mean and spread over its runs)."""
    first, last = first_last(runs, dataset)
    return {"group": name, "values": values, "runs": len(runs), "finished": sum(bool(r.summary) for r in runs),
            "dataset": dataset,
            "pass1_before": _mean_sd([d["pass@1"] for d in first]), "pass1_after": _mean_sd([d["pass@1"] for d in last]),
            "passk_before": _mean_sd([d.get("pass@k") for d in first]),
            "passk_after": _mean_sd([d.get("pass@k") for d in last]), "k": (last[0].get("k") if last else None),
            "format_share_before": mean_shares(first), "format_share_after": mean_shares(last),
            "winner_per_run": [winner(d["format_share"]) for d in last],
            "rl_minutes": _mean_sd([r.summary.get("wall_seconds", np.nan) / 60 for r in runs if r.summary]),
            "timing_per_run": [collapse_timing(r, dataset) for r in runs]}


def _pct(m: dict | None) -> str:
    if not m:
        return "—"
    return f"{m['mean']:.1%}" + (f" ± {m['sd']:.1%}" if m["n"] > 1 else "")


def result_lines(results: list[dict]) -> list[str]:
    """One line per group and dataset: pass@1 before -> after, pass@k, leading format before -> winner after."""
    lines = []
    for g in results:
        top_before = max(g["format_share_before"].items(), key=lambda kv: kv[1], default=("—", 0))
        top_after = max(g["format_share_after"].items(), key=lambda kv: kv[1], default=("—", 0))
        passk = (f", pass@{g['k']} {_pct(g['passk_before'])} -> {_pct(g['passk_after'])}" if g["passk_after"] else "")
        timing = ", ".join(f"{t['collapse_step']}/{t['largest_gain_step']}" for t in g["timing_per_run"])
        lines.append(f"{g['group']} [{g['dataset']}]: pass@1 {_pct(g['pass1_before'])} -> {_pct(g['pass1_after'])}"
                     f"{passk}; top format {top_before[0]} {top_before[1]:.0%} -> {top_after[0]} {top_after[1]:.0%}"
                     f" (winner per run: {', '.join(g['winner_per_run']) or '—'}; step of collapse / of the largest "
                     f"pass@1 gain per run: {timing or '—'})")
    return lines


# ------------------------------------------------------------------------------------------------- running
def _groups(out: Path, entries: list[dict]) -> list[Group]:
    groups = []
    for name, cells in group_over_seeds(entries):
        runs = []
        for c in cells:
            try:
                runs.append(load_run(out / c["out_dir"] / "rl", c["name"]))
            except ValueError:
                continue  # not started
        values = {k: v for k, v in cells[0]["overrides"].items() if not is_seed_key(k)}
        groups.append((name, values, [r for r in runs if r.evals]))
    return groups


def write_study_report(study: Study, out: Path, entries: list[dict], meta: dict) -> dict:
    """study.json and report.html (the study's figure first) from the sweep's entries; returns study.json."""
    groups = _groups(out, entries)
    runs = [r for _, _, rs in groups for r in rs]
    datasets = _union(r.datasets for r in runs)
    results = [group_result(name, values, rs, ds) for ds in datasets for name, values, rs in groups if rs]
    summary = {"study": study.name, "question": study.question, "paper": study.paper, **meta,
               "results": results, "result_lines": result_lines(results)}
    atomic_write_json(out / "study.json", summary)
    lead = _embed(study.figure(groups, datasets[0]) if datasets else None, out, f"study_{study.name}",
                  study.question)
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary["result_lines"])
    head = (f"<p><b>Question.</b> {html.escape(study.question)}</p><p><b>The paper.</b> {html.escape(study.paper)}</p>"
            f"{lead}<h2>Result</h2><ul>{lines}</ul>"
            f"<p>Measured wall time: {meta['wall_seconds'] / 60:.1f} min over {meta['invocations']} invocation(s), "
            f"commit {html.escape(str(meta['git_commit']))}.</p>")
    write_sweep_report(out, entries, group_over_seeds(entries), title=f"echochamber study: {study.name}", lead=head)
    return summary


def study_sweep(name: str, overrides: list[str] = (), config: str | None = None) -> tuple[str, list[str], list[str]]:
    """The study's sweep: (config, --grid specs, overrides for every cell)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    study = STUDIES[name]
    return config or study.config, list(study.grid), [*study.overrides, *overrides]


def dry_run_study(name: str, out: str | Path, overrides: list[str] = (), config: str | None = None) -> str:
    """`study NAME --dry-run`: the study's question, then its sweep's dry run (sweep.dry_run); writes nothing."""
    return f"study {name}: {STUDIES[name].question}\n" + sweep_dry_run(*study_sweep(name, overrides, config), out,
                                                                          title=f"study {name}")


def run_study(name: str, out: str | Path, overrides: list[str] = (), config: str | None = None,
              progress: bool = True, launcher=None) -> dict | None:
    """Run (or resume) the study's sweep in OUT, then write OUT/study.json and OUT/report.html. launcher
    (launcher.LaunchOptions): the cells as cluster jobs; with slurm this returns None once they are submitted,
    and the sweep's last job writes the study's report."""
    config, grid, overrides = study_sweep(name, overrides, config)
    t0 = time.perf_counter()
    if launcher is None:
        entries = run_sweep(config, grid, overrides, out, progress=progress)
    else:
        from .launcher import launch_sweep

        finish = functools.partial(finish_study, name, out, config, grid, overrides, 0.0)
        entries = launch_sweep(config, grid, overrides, out, launcher,
                               finish=finish if launcher.kind == "slurm" else None)
        if entries is None:
            return None
    return finish_study(name, out, config, grid, overrides, time.perf_counter() - t0, entries)


def finish_study(name: str, out: str | Path, config: str, grid: list[str], overrides: list[str], seconds: float,
                 entries: list[dict]) -> dict:
    """OUT/study.json and OUT/report.html from the sweep's entries; `seconds` adds to the study's wall time."""
    study, out = STUDIES[name], Path(out)
    previous = json.loads((out / "study.json").read_text()) if (out / "study.json").exists() else {}
    meta = {"config": config, "grid": grid, "overrides": overrides, "git_commit": git_commit(),
            "wall_seconds": previous.get("wall_seconds", 0.0) + seconds,
            "invocations": previous.get("invocations", 0) + 1}
    summary = write_study_report(study, out, entries, meta)
    print(f"study {name}: {study.question}", flush=True)
    for line in summary["result_lines"]:
        print("  " + line, flush=True)
    print(f"  wall time {meta['wall_seconds'] / 60:.1f} min; report: {out / 'report.html'}", flush=True)
    return summary


def describe() -> str:
    """`echochamber study list`."""
    return "\n".join(f"{s.name:<12} {s.question}\n{'':<12} config {s.config}; grid {' x '.join(s.grid) or '(one cell)'}"
                     + (f"; {' '.join(s.overrides)}" if s.overrides else "") for s in STUDIES.values())

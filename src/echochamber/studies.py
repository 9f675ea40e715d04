"""`echochamber study NAME --out DIR`: the paper's findings in miniature, one command each.

    echochamber study list                                   # the studies, their questions and grids
    echochamber study collapse --out runs/study_collapse     # the quickstart over 3 seeds

A study is a sweep (sweep.py) with fixed settings, plus a report whose FIRST figure answers the study's question:

    collapse     does RL collapse the outputs onto one pretraining format, with the pass@1 jump? (3 seeds)
    algorithms   PPO vs GRPO vs Expert Iteration on the same budget of samples (3 RL seeds)
    kl           PPO's KL coefficient 0 / 0.01 / 0.1 / 0.3 / 1 (k1 in the reward): do minority formats survive, at
                 what cost in pass@1? (3 RL seeds; its length set by kl_pilot, one 96-step run and a fixed rule)
    long         4x the quickstart's GRPO steps: does pass@k at large k fall late while pass@1 rises? (3 RL seeds)
    failure      the frequent format made the less accurate one (a systematic error, at 2x and 8x): does RL amplify
                 it or find the accurate one? Forced-format probes before and after (3 RL seeds)
    refinement   pretrained on one code format alone: does RL refine how the model writes it? (3 RL seeds)
    mixture      the same model on mixtures with other repeat factors: does the winner move? (3 seeds)
    transfer     RL on train, evaluated on splits it never saw: unseen names, larger amounts, one more step
    interpreter  the collapse study with a real interpreter writing <llm-code-output> during generation
    scale        models of about 1M, 4M and 12M parameters (each with its pretraining rate) on the small-number
                 world: which format wins at each size?

DIR is the sweep's folder (DIR/sweep.json, DIR/cells/, DIR/pretrained/), so an interrupted study resumes by
running the same command again, and finished cells are skipped. The study adds:

    DIR/study.json     the study's question, settings, commit, wall time, and per group of cells (cells that
                       differ only in seed): every number record_metrics reads (pass@1, pass@k, format shares,
                       forced accuracies, within-format metrics, error categories) before and after RL as a mean
                       over seeds with its 95% bootstrap interval (intervals.py), each run's winner; then the
                       differences between groups and the changes through RL, established or not
    DIR/results.md     the study's results table and the error categories, before -> after with intervals
    DIR/report.html    the question, the study's figure, the results, then the sweep's own tables and figures

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
from .intervals import percent, separated, summarize
from .runio import atomic_write_json, atomic_write_text, git_commit
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


def end_metrics(runs: list[Run], dataset: str) -> tuple[list[dict], list[dict], list[str | None]]:
    """Each run's record_metrics at its first and its last evaluation of `dataset` (runs never evaluated on it
    are left out), and each run's winner (its largest greedy share at the last)."""
    first, last = first_last(runs, dataset)
    winners = [winner(d["format_share"]) for d in last]
    return ([record_metrics(d, w) for d, w in zip(first, winners)],
            [record_metrics(d, w) for d, w in zip(last, winners)], winners)


def _end_values(groups: list[Group], dataset: str, metric: str, when: str = "after") -> list[list[float]]:
    """Per group, each run's record_metrics[metric] at its last (when="after") or first evaluation of `dataset`."""
    out = []
    for _, _, runs in groups:
        before, after, _ = end_metrics(runs, dataset)
        out.append([m[metric] for m in (after if when == "after" else before) if metric in m])
    return out


def _dots_and_interval(ax, x: float, vals: list[float], color: str, **kw) -> None:
    """Each seed's value as a dot, their mean as a diamond with its 95% bootstrap interval as an error bar."""
    s = summarize(vals)
    if s is None:
        return
    ax.scatter([x] * len(vals), vals, color=color, s=12, alpha=0.5, lw=0)
    ax.errorbar([x], [s["mean"]], yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]], color=color, marker="D",
                ms=6, capsize=4, lw=1.5, **kw)


def fig_kl(groups: list[Group], dataset: str) -> Figure | None:
    """The dose-response: after RL, against the KL coefficient, the share of sampled outputs outside the run's
    winning format, pass@k and pass@1 (seeds as dots; mean and 95% interval); the value before RL in grey."""
    groups = [g for g in groups if any(dataset in r.datasets for r in g[2])]
    if not groups:
        return None
    fig, axes = _grid(1, 3, f"{dataset}: what the KL coefficient keeps, after RL (dots: seeds; diamond: mean, 95% "
                            f"interval; grey: before RL)")
    coefs = [str(v.get("rl.kl_coef", name)) for name, v, _ in groups]
    k = next((e["datasets"][dataset].get("k") for _, _, rs in groups for r in rs for e in r.evals
              if dataset in e.get("datasets", {}) and e["datasets"][dataset].get("k")), None)
    panels = (("outside_winner_sampled", "share of sampled outputs outside the winning format"),
              ("pass@k", f"pass@{k or 'k'}"), ("pass@1", "greedy pass@1"))
    for ax, (metric, title) in zip(axes[0], panels):
        for x, (before, after) in enumerate(zip(_end_values(groups, dataset, metric, "before"),
                                                _end_values(groups, dataset, metric))):
            _dots_and_interval(ax, x - 0.12, before, "0.6")
            _dots_and_interval(ax, x + 0.12, after, "C0")
        ax.set_xticks(range(len(coefs)), coefs)
        ax.set_xlabel("rl.kl_coef")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    return fig


def _interval_curves(runs: list[Run], get: Callable[[Run], dict[int, float]]) -> tuple[np.ndarray, ...]:
    """steps, mean, lo, hi of a per-step value over runs (95% bootstrap interval of the mean at each step; a run
    lacking a step is left out there)."""
    per_run = [get(r) for r in runs]
    steps = sorted({s for d in per_run for s in d})
    sums = [summarize(d.get(s) for d in per_run) for s in steps]
    return (np.array(steps),) + tuple(np.array([m[key] if m else np.nan for m in sums]) for key in ("mean", "lo", "hi"))


def fig_long(groups: list[Group], dataset: str) -> Figure | None:
    """pass@j for every j the evaluations drew (j = 1, 2, 4, ... 16) over RL steps: does pass@k at large k fall
    late in training while pass@1 rises? Mean over seeds, band the 95% interval; right: each relative to its
    value before RL."""
    runs = [r for _, _, rs in groups for r in rs if dataset in r.datasets]
    if not runs:
        return None
    js = sorted({int(j) for r in runs for e in r.evals for j in (e["datasets"].get(dataset, {}).get("pass@k_curve")
                                                                  or {})})
    fig, axes = _grid(1, 2, f"{dataset}: pass@k over a long RL run (line: mean over {len(runs)} seeds; band: 95% "
                            f"interval)")
    for i, j in enumerate(js or [1]):
        def at(run: Run, j=j) -> dict[int, float]:
            recs = [(e["step"], e["datasets"][dataset]) for e in run.evals if dataset in e.get("datasets", {})]
            return {s: (d.get("pass@k_curve") or {}).get(str(j), d["pass@1"] if j == 1 else None) for s, d in recs}

        def rel(run: Run, j=j) -> dict[int, float]:
            vals = {s: v for s, v in at(run).items() if v is not None}
            base = vals[min(vals)] if vals else None
            return {s: v - base for s, v in vals.items()} if base is not None else {}

        for ax, get in zip(axes[0], (at, rel)):
            steps, mean, lo, hi = _interval_curves(runs, get)
            _band(ax, steps, (mean, lo, hi), f"C{i}", len(runs) > 1, label=f"pass@{j}")
    axes[0][0].set_title("sampled pass@k (temperature 0.7)", fontsize=10)
    axes[0][0].set_ylim(0, 1.02)
    axes[0][1].set_title("change since step 0 (points / 100)", fontsize=10)
    axes[0][1].axhline(0, color="0.5", lw=0.8)
    for ax in axes[0]:
        _step_axis(ax, runs)
    _legend(fig, [Line2D([], [], color=f"C{i}", lw=1.8, label=f"pass@{j}") for i, j in enumerate(js or [1])])
    return fig


def fig_failure(groups: list[Group], dataset: str) -> Figure | None:
    """Left: greedy format shares before and after RL per mixture; right: each format's forced accuracy (probes)
    before and after RL, the accuracy RL could have chosen (seeds as dots; mean and 95% interval)."""
    groups = [g for g in groups if any(dataset in r.datasets for r in g[2])]
    if not groups:
        return None
    fig, axes = _grid(1, 2, f"{dataset}: does RL amplify the frequent, less accurate format?")
    xlabels = [str(v.get("data.mixture", name)) for name, v, _ in groups]
    seen = _before_after_on(axes[0][0], groups, dataset, xlabels)
    ax = axes[0][1]
    fmts = [f for f in ("tinygsm", "omi1", "text")
            if any(_end_values(groups, dataset, f"forced/{f}", "before"))]
    for gi in range(len(groups)):
        for fi, fmt in enumerate(fmts):
            for wi, when in enumerate(("before", "after")):
                vals = _end_values(groups, dataset, f"forced/{fmt}", when)[gi]
                x = gi + (fi - (len(fmts) - 1) / 2) * 0.25 + (wi - 0.5) * 0.1
                _dots_and_interval(ax, x, vals, _color(fmt), alpha=0.45 if when == "before" else 1.0)
    ax.set_xticks(range(len(groups)), xlabels)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("forced accuracy per format (faint, left: before RL)", fontsize=10)
    ax.grid(alpha=0.3)
    _legend(fig, [Patch(color=_color(lab), label=lab) for lab in _ordered(seen | set(fmts))]
            + [Line2D([], [], color="black", marker="D", lw=0, label="greedy pass@1")])
    return fig


def fig_refinement(groups: list[Group], dataset: str) -> Figure | None:
    """One row per single-format model: its within-format metrics of the rollouts (every RL step, the sampled
    responses in that format) and greedy pass@1; mean over seeds, band the 95% interval."""
    from .report import within_series

    groups = [g for g in groups if g[2]]
    if not groups:
        return None
    rows = []
    for name, values, runs in groups:
        series = [within_series(r).get("rollouts", {}) for r in runs]
        # the metrics of the format the runs write (their final greedy winner), not of a stray sample in another
        won = {winner(e["datasets"][dataset]["format_share"]) for r in runs for e in r.evals[-1:]
               if dataset in e.get("datasets", {})}
        keys = [k for k in dict.fromkeys(k for s in series for m in s.values() for k, v in m.items()
                                         if v is not None and k.split("/")[1] in won)]
        rows.append((name, runs, series, keys))
    ncols = max(len(keys) for *_, keys in rows) + 1
    fig, axes = _grid(len(rows), ncols, "Within one format: how RL changes the way the model writes it (rollouts; "
                                        "line: mean over seeds; band: 95% interval)")
    for (name, runs, series, keys), axrow in zip(rows, axes):
        for ax, key in zip(axrow, keys):
            by_run = dict(zip(map(id, runs), series))
            steps, mean, lo, hi = _interval_curves(runs, lambda r: {s: m.get(key) for s, m in by_run[id(r)].items()
                                                                    if m.get(key) is not None})
            _band(ax, steps, (mean, lo, hi), "C0", len(runs) > 1)
            ax.set_title(f"{name} · {key.removeprefix('within/')}", fontsize=9)
            _step_axis(ax, runs)
        ax = axrow[len(keys)]
        steps, mean, lo, hi = _interval_curves(runs, lambda r: {e["step"]: e["datasets"][dataset]["pass@1"]
                                                                for e in r.evals if dataset in e.get("datasets", {})})
        _band(ax, steps, (mean, lo, hi), "black", len(runs) > 1)
        ax.set_title(f"{name} · greedy pass@1 ({dataset})", fontsize=9)
        ax.set_ylim(0, 1.02)
        _step_axis(ax, runs)
        for ax in axrow[len(keys) + 1:]:
            ax.set_visible(False)
    return fig


def _stacked_bars(ax, x: float, shares: dict[str, float], width: float = 0.35) -> None:
    bottom = 0.0
    for lab in _ordered(shares):
        ax.bar(x, shares[lab], bottom=bottom, color=_color(lab), width=width)
        bottom += shares[lab]


def _before_after_on(ax, groups: list[Group], dataset: str, xlabels: list[str]) -> set[str]:
    """One pair of stacked bars per group on `ax`: greedy format shares before RL and after, pass@1 marked on
    each; returns the format labels drawn."""
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
    return seen


def _before_after_bars(groups: list[Group], dataset: str, title: str, xlabels: list[str]) -> Figure | None:
    """One pair of stacked bars per group: greedy format shares before RL and after, pass@1 marked on each."""
    groups = [g for g in groups if any(dataset in r.datasets for r in g[2])]
    if not groups:
        return None
    fig, axes = _grid(1, 1, title)
    seen = _before_after_on(axes[0, 0], groups, dataset, xlabels)
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
    # the numbers of its results table (record_metrics names), each before -> after RL with intervals
    table: tuple[str, ...] = ("pass@1", "pass@k", "outside_winner")


STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("collapse", "Does RL collapse the outputs onto one pretraining format, and does the collapse come with the "
          "pass@1 jump? (the quickstart over 3 seeds)",
          "RL collapses onto one format within about one pass over the training set; the collapse coincides with "
          "the largest pass@1 gain.",
          "quickstart", ("seed=0,1,2",), (), fig_collapse),
    Study("algorithms", "PPO vs GRPO vs Expert Iteration on the same budget of samples: gain and collapse.",
          "PPO is the most stable; GRPO collapses the same way; Expert Iteration lags, with a milder shift.",
          "quickstart", ("rl.algo=grpo,ppo,ei", "rl.seed=0,1,2"), (), fig_algorithms),
    # The KL dose-response (issue 19). PPO with k1 in the reward, the paper's form, on one pretrained quickstart
    # model, 3 RL seeds per coefficient. The range reaches where the penalty is comparable to the 0/1 reward (the
    # first kl study measured a drift of 0.03-0.04 nats per token after 24 steps, so 0.3-1.0 x ~115 tokens x that
    # drift is of order 1). Only the ends carry samples (pass@8, sampled shares); RL's length is set by KL_PILOT.
    Study("kl", "Does a larger KL coefficient keep minority formats alive and pass@k stable, and what does it cost "
          "in pass@1? (PPO, k1 in the reward, kl_coef 0 to 1, 3 RL seeds on one pretrained model)",
          "kl_coef 0.01 (vs 0.001) keeps minority formats and pass@64 stable (PPO; the paper's GRPO ran without "
          "an effective KL).",
          "quickstart", ("rl.kl_coef=0,0.01,0.1,0.3,1.0", "rl.seed=0,1,2"),
          ("rl.algo=ppo", "rl.kl_in=reward", "rl.kl_estimator=k1",
           "rl.steps=48",  # set by kl_pilot's rule: its kl_k1 was 0.0328 over steps 41-48, 125% of its 0.0263 over
           # steps 89-96 (it rose to ~0.034 by step 32 and stayed there or fell; 2026-12-07, commit bc534e6)
           "rl.eval_every=8", "eval.datasets=[synthetic:test]", "eval.n_samples=8", "eval.between_greedy_only=true"),
          fig_kl, ("outside_winner_sampled", "pass@k", "pass@1")),
    # The pilot that sets the kl study's length, with its rule fixed before it runs: PPO at kl_coef 0.01 (the
    # paper's value) for 96 steps, seed 0. The kl study then runs N steps, N the first of 48, 72, 96 at which the
    # pilot's KL to the pretrained model (metrics.jsonl kl_k1, mean of the 8 steps ending at N) has reached 80% of
    # its mean over steps 89-96; 96 if none has. (The drift must have grown before a coefficient can act on it.)
    Study("kl_pilot", "How fast does PPO's KL to the pretrained model grow over 96 steps? (sets the kl study's length)",
          "The paper's PPO ran about 1160 rollouts; its KL findings are about long runs.",
          "quickstart", (),
          ("rl.algo=ppo", "rl.kl_in=reward", "rl.kl_estimator=k1", "rl.kl_coef=0.01", "rl.steps=96", "rl.eval_every=8",
           "eval.datasets=[synthetic:test]", "eval.n_samples=8", "eval.between_greedy_only=true"), fig_kl,
          ("outside_winner_sampled", "pass@k", "pass@1")),
    Study("long", "Late in a long GRPO run (4x the quickstart's steps), does pass@k at large k fall while pass@1 "
          "rises, and when? (pass@1 to pass@16 at every evaluation, 3 RL seeds on one pretrained model)",
          "pass@1 and maj@k rise while pass@64 declines late in training.",
          "quickstart", ("rl.seed=0,1,2",),
          ("rl.steps=96", "rl.eval_every=8", "eval.datasets=[synthetic:test]", "eval.n_samples=16"), fig_long,
          ("pass@1", "sampled_pass@1", "sampled_pass@2", "sampled_pass@4", "sampled_pass@8", "sampled_pass@16",
           "maj@k")),
    # The paper's failure mode (8x OpenMathInstruct-1: the collapse goes to a less accurate format). The frequent
    # format here is omi1 made less accurate by its data's systematic error (every multiplication written as an
    # addition where the result stays exact and positive: 69% of them, synthetic.py "Errors"); TinyGSM and text
    # keep correct data. Two shares of the frequent format: 2x (half the documents) and 8x (80%), each pretrained
    # once and RL'd with 3 seeds; forced-format probes before and after RL give each format's accuracy.
    Study("failure", "When the most frequent format in pretraining is the less accurate one, does RL amplify it "
          "(and lose accuracy) or find the accurate format? (omi1 with a systematic *->+ error at 2x and 8x)",
          "With 8x OpenMathInstruct-1 the model collapses onto the less accurate format and accuracy drops.",
          "quickstart", ("data.mixture=tg_2xomi1_text,tg_8xomi1_text", "rl.seed=0,1,2"),
          ("data.synthetic.systematic_error={omi1: '*->+'}", "eval.datasets=[synthetic:test]", "eval.probe=true",
           "eval.between_greedy_only=true"), fig_failure,
          ("pass@1", "forced/tinygsm", "forced/omi1", "forced/text", "share/omi1", "outside_winner")),
    # RL inside one format (the paper's sixth finding): a model pretrained on one code format alone, RL'd with 3
    # seeds; the rollouts' within-format metrics (format_metrics.py) over RL steps say how its writing changes.
    Study("refinement", "Pretrained on one code format alone, does RL refine how the model writes it (length, "
          "docstrings, variables, code lines, invented outputs), and which way?",
          "RL refines inside the chosen format (e.g. consistent docstrings in TinyGSM code).",
          "quickstart", ("data.mixture=tg,omi1", "rl.seed=0,1,2"),
          ("eval.datasets=[synthetic:test]", "eval.between_greedy_only=true"), fig_refinement,
          ("pass@1", "within/tinygsm/length", "within/tinygsm/docstring", "within/tinygsm/question_copied",
           "within/tinygsm/n_variables", "within/omi1/length", "within/omi1/code_lines", "within/omi1/invented_output")),
    Study("mixture", "Does the winning format move when one format's share of pretraining grows (repeat factors)?",
          "The winner depends on the mixture; with 8x OMI1 the less accurate format wins and accuracy drops.",
          "quickstart", ("data.mixture=tg_omi1_4xtext,4xtg_omi1_4xtext,tg_4xomi1_4xtext", "seed=0,1,2"), (),
          fig_mixture),
    Study("transfer", "Does RL on the train split improve splits it never saw: people and objects no train "
          "problem names (synthetic:renamed), larger amounts than any train question states (synthetic:larger), "
          "and one more step than any train problem has (synthetic:longer)?",
          "RL on GSM8K improves MATH-500 (1B: about 33% -> 44%) and a little AIME.",
          "quickstart", ("rl.seed=0,1,2",),
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
COLLAPSED = 0.9  # a run has collapsed once one format holds this share of its greedy outputs

# The numbers compared between groups of a study (study.json "differences"): each after RL, mean over seeds.
COMPARED = ("pass@1", "pass@k", "outside_winner_sampled", "outside_winner")


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


def record_metrics(rec: dict, won: str | None) -> dict[str, float]:
    """The numbers a study reads from one evaluation record of one dataset, flat, for one run whose final winner
    is `won`:
        pass@1 (greedy), pass@k, maj@k        as evaluate writes them
        sampled_pass@J            eval's pass@k_curve: pass@J of the samples (J = 1 is the mean sample's accuracy,
                                  not greedy pass@1)
        outside_winner            share of greedy outputs in any other format than the run's final winner
                                  (unknown counts as outside); before RL, the share RL will have to move
        outside_winner_sampled    the same over the sampled outputs (eval.n_samples), where the run drew them
        share/LABEL               greedy format shares
        forced/FORMAT             forced accuracy in each format (eval.probe)
        within/...                the within-format metrics of the greedy outputs (format_metrics)
        errors/LABEL/CATEGORY     share of all greedy answers that are wrong, in that format, for that reason
                                  (error_categories.py; over every label, errors/all/... add up to 1 - pass@1)"""
    out = {"pass@1": rec["pass@1"]}
    out.update({k: rec[k] for k in ("pass@k", "maj@k") if rec.get(k) is not None})
    out.update({f"sampled_pass@{j}": v for j, v in (rec.get("pass@k_curve") or {}).items()})
    if won is not None:
        out["outside_winner"] = 1.0 - rec["format_share"].get(won, 0.0)
        if rec.get("sample_format_share"):
            out["outside_winner_sampled"] = 1.0 - rec["sample_format_share"].get(won, 0.0)
    out.update({f"share/{lab}": v for lab, v in rec["format_share"].items()})
    out.update({f"forced/{fmt}": p["forced_accuracy"] for fmt, p in (rec.get("probe") or {}).items()})
    out.update({k: v for k, v in (rec.get("within") or {}).items() if v is not None})
    for lab, table in (rec.get("error_categories") or {}).items():  # counts over ALL answers: rates that add up
        out.update({f"errors/{lab}/{cat}": k / rec["n"] for cat, k in table["counts"].items()})  # to 1 - pass@1
    return out


def _summaries(per_run: list[dict[str, float]]) -> dict[str, dict]:
    """{metric: intervals.summarize over the runs that have it}, metrics in first-seen order."""
    keys = list(dict.fromkeys(k for m in per_run for k in m))
    return {k: summarize(m.get(k) for m in per_run) for k in keys}


def group_result(name: str, values: dict, runs: list[Run], dataset: str) -> dict:
    """One group's numbers on `dataset` at its first and last evaluation: every record_metrics number as a mean
    over its runs (seeds) with a 95% bootstrap interval (intervals.summarize), in "before" and "after"; the
    headline ones also under their own keys."""
    runs = [r for r in runs if any(dataset in e.get("datasets", {}) for e in r.evals)]
    first, last = first_last(runs, dataset)
    before_runs, after_runs, winners = end_metrics(runs, dataset)
    before, after = _summaries(before_runs), _summaries(after_runs)
    return {"group": name, "values": values, "runs": len(runs), "finished": sum(bool(r.summary) for r in runs),
            "dataset": dataset, "seeds": [_run_seed(r) for r in runs],
            "pass1_before": before.get("pass@1"), "pass1_after": after.get("pass@1"),
            "passk_before": before.get("pass@k"), "passk_after": after.get("pass@k"),
            "k": (last[0].get("k") if last else None),
            "format_share_before": mean_shares(first), "format_share_after": mean_shares(last),
            "winner_per_run": winners, "before": before, "after": after,
            "rl_minutes": summarize([r.summary.get("wall_seconds", np.nan) / 60 for r in runs if r.summary]),
            "timing_per_run": [collapse_timing(r, dataset) for r in runs]}


def _run_seed(run: Run) -> int | None:
    """The seed that drove the run's RL (rl.seed, else the top-level seed), from its recorded config."""
    rl_seed = run.config.get("rl", {}).get("seed")
    return rl_seed if rl_seed is not None else run.config.get("seed")


def differences(results: list[dict]) -> list[dict]:
    """Every pair of groups on one dataset, for each COMPARED number after RL both have: the two means, their
    difference (second - first) and whether it is established (the 95% intervals do not overlap)."""
    out = []
    for metric in COMPARED:
        for i, a in enumerate(results):
            for b in results[i + 1:]:
                sa, sb = a["after"].get(metric), b["after"].get(metric)
                if a["dataset"] != b["dataset"] or not sa or not sb:
                    continue
                out.append({"dataset": a["dataset"], "metric": metric, "groups": [a["group"], b["group"]],
                            "means": [sa["mean"], sb["mean"]], "difference": sb["mean"] - sa["mean"],
                            "intervals": [[sa["lo"], sa["hi"]], [sb["lo"], sb["hi"]]],
                            "established": separated(sa, sb)})
    return out


def changes(results: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """Per group and each of `metrics` it has before and after RL: the two means, the change, and whether it is
    established (the intervals over seeds do not overlap; where the seeds share one pretrained model the value
    before RL is the same for all and its interval a point)."""
    out = []
    for g in results:
        for m in metrics:
            b, a = g["before"].get(m), g["after"].get(m)
            if b and a:
                out.append({"dataset": g["dataset"], "group": g["group"], "metric": m, "before": b["mean"],
                            "after": a["mean"], "change": a["mean"] - b["mean"], "established": separated(b, a)})
    return out


def result_lines(results: list[dict]) -> list[str]:
    """One line per group and dataset: pass@1 before -> after, pass@k (means with 95% intervals over seeds),
    leading format before -> after, each run's winner and timing."""
    lines = []
    for g in results:
        top_before = max(g["format_share_before"].items(), key=lambda kv: kv[1], default=("—", 0))
        top_after = max(g["format_share_after"].items(), key=lambda kv: kv[1], default=("—", 0))
        passk = (f", pass@{g['k']} {percent(g['passk_before'])} -> {percent(g['passk_after'])}"
                 if g["passk_after"] else "")
        timing = ", ".join(f"{t['collapse_step']}/{t['largest_gain_step']}" for t in g["timing_per_run"])
        lines.append(f"{g['group']} [{g['dataset']}, {g['runs']} seed{'s' * (g['runs'] != 1)}]: pass@1 "
                     f"{percent(g['pass1_before'])} -> {percent(g['pass1_after'])}"
                     f"{passk}; top format {top_before[0]} {top_before[1]:.0%} -> {top_after[0]} {top_after[1]:.0%}"
                     f" (winner per run: {', '.join(w or '—' for w in g['winner_per_run']) or '—'}; step of collapse "
                     f"/ of the largest pass@1 gain per run: {timing or '—'})")
    return lines


def difference_lines(diffs: list[dict], moves: list[dict] = ()) -> list[str]:
    """The established differences between groups and changes through RL, one line each; then how many were
    compared and not established."""
    est = [d for d in diffs if d["established"]]
    lines = [f"{d['metric']} [{d['dataset']}]: {d['groups'][1]} {d['means'][1]:.3g} vs {d['groups'][0]} "
             f"{d['means'][0]:.3g} ({d['difference']:+.3g}; intervals separate)" for d in est]
    if len(diffs) > len(est):
        lines.append(f"{len(diffs) - len(est)} of {len(diffs)} compared differences between groups are not "
                     f"established (their 95% intervals overlap, or a group has one seed)")
    moved = [c for c in moves if c["established"]]
    lines += [f"{c['group']} [{c['dataset']}]: {c['metric']} {c['before']:.3g} -> {c['after']:.3g} through RL "
              f"({c['change']:+.3g}; intervals separate)" for c in moved]
    if len(moves) > len(moved):
        lines.append(f"{len(moves) - len(moved)} of {len(moves)} changes through RL in the results table are not "
                     f"established")
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


def _cell(s: dict | None) -> str:
    """A number with its interval: shares as percent, other numbers (lengths, counts) as they are."""
    if not s:
        return "—"
    if all(0.0 <= s[k] <= 1.0 for k in ("min", "max")):
        return percent(s)
    return f"{s['mean']:.2f}" + (f" [{s['lo']:.2f}, {s['hi']:.2f}]" if s["n"] > 1 else "")


def results_table(results: list[dict], metrics: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per group and dataset, its seeds and each metric before -> after RL, mean [95% interval];
    metrics no group has are left out."""
    metrics = [m for m in metrics if any(g["before"].get(m) or g["after"].get(m) for g in results)]
    header = ["group", "dataset", "seeds", *metrics, "winner per seed"]
    rows = [[g["group"], g["dataset"], str(g["runs"]),
             *(f"{_cell(g['before'].get(m))} -> {_cell(g['after'].get(m))}" for m in metrics),
             ", ".join(w or "—" for w in g["winner_per_run"])] for g in results]
    return header, rows


def error_table(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per group, before and after RL, the share of all greedy answers that are wrong for each
    reason (error_categories.py; all formats together; the row adds up to 1 - pass@1), mean over seeds [95%
    interval]."""
    from .error_categories import CATEGORIES

    cats = [c for c in CATEGORIES if any((g[w].get(f"errors/all/{c}") or {}).get("max", 0) > 0 for g in results
                                         for w in ("before", "after"))]  # categories no answer fell in are left out
    rows = [[g["group"], g["dataset"], when, *(_cell(g[when].get(f"errors/all/{c}")) for c in cats)]
            for g in results for when in ("before", "after") if any(k.startswith("errors/") for k in g[when])]
    return ["group", "dataset", "", *cats], rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows]) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    cells = lambda r, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in r)
    return (f"<table><tr>{cells(header, 'th')}</tr>" + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
            + "</table>")


def write_study_report(study: Study, out: Path, entries: list[dict], meta: dict) -> dict:
    """study.json and report.html (the study's figure first) from the sweep's entries; returns study.json."""
    groups = _groups(out, entries)
    runs = [r for _, _, rs in groups for r in rs]
    datasets = _union(r.datasets for r in runs)
    results = [group_result(name, values, rs, ds) for ds in datasets for name, values, rs in groups if rs]
    diffs, moves = differences(results), changes(results, study.table)
    summary = {"study": study.name, "question": study.question, "paper": study.paper, **meta,
               "results": results, "result_lines": result_lines(results), "differences": diffs,
               "changes": moves, "difference_lines": difference_lines(diffs, moves)}
    atomic_write_json(out / "study.json", summary)
    tables = [("Results: before -> after RL, mean over seeds [95% bootstrap interval]", results_table(results, study.table)),
              ("Wrong greedy answers by error category (share of all answers), mean over seeds [95% interval]",
               error_table(results))]
    atomic_write_text(out / "results.md", "".join(f"### {title}\n\n{markdown(*t)}\n" for title, t in tables
                                                  if t[1]))
    lead = _embed(study.figure(groups, datasets[0]) if datasets else None, out, f"study_{study.name}",
                  study.question)
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary["result_lines"])
    diff_lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary["difference_lines"])
    head = (f"<p><b>Question.</b> {html.escape(study.question)}</p><p><b>The paper.</b> {html.escape(study.paper)}</p>"
            f"{lead}<h2>Result</h2><p>Means over seeds with their 95% bootstrap interval in brackets (points).</p>"
            f"<ul>{lines}</ul>" + "".join(f"<h3>{html.escape(title)}</h3>{_html_table(*t)}" for title, t in tables
                                          if t[1])
            + "<h3>Established differences (between groups, after RL) and changes (through RL)</h3>"
            f"<ul>{diff_lines or '<li>none compared</li>'}</ul>"
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
    for line in summary["result_lines"] + summary["difference_lines"]:
        print("  " + line, flush=True)
    print(f"  wall time {meta['wall_seconds'] / 60:.1f} min; report: {out / 'report.html'}", flush=True)
    return summary


def describe() -> str:
    """`echochamber study list`."""
    return "\n".join(f"{s.name:<12} {s.question}\n{'':<12} config {s.config}; grid {' x '.join(s.grid) or '(one cell)'}"
                     + (f"; {' '.join(s.overrides)}" if s.overrides else "") for s in STUDIES.values())

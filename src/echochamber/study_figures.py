"""The studies' own figures: each answers one study's question from its groups of runs.

Each takes the groups of finished (or running) cells (study_results.Group) and the summary dataset, and returns
None when nothing is drawn yet. Where a group has several seeds, a figure shows every seed and the mean with its
95% bootstrap interval (or, for the older studies, the min-max band).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .intervals import summarize
from .report import (Run, _color, _eval_series, _grid, _legend, _ordered, _step_axis, _union,
                     fig_sweep_format_shares, seed_band)
from .study_results import Group, common_pass1, end_metrics, first_last, mean_shares, winner


def _band(ax, x, band, color: str, spread: bool, **kw) -> None:
    """A mean line and, over several runs, its min-max band."""
    mean, lo, hi = band
    ax.plot(x, mean, color=color, marker="o", ms=3, lw=1.8, **kw)
    if spread:
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)


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
    """Greedy pass@1 (on the problems every evaluation answered) and the winning format's share against the
    samples drawn so far: a colour per algorithm, a line style per learning rate (mean over seeds, band the 95%
    interval)."""
    groups = [g for g in groups if any(dataset in r.datasets for r in g[2])]
    if not groups:
        return None
    algos = list(dict.fromkeys(str(v.get("rl.algo", name)) for name, v, _ in groups))
    rates = list(dict.fromkeys(str(v.get("rl.lr", "")) for _, v, _ in groups))
    styles = ("-", "--", ":", "-.")
    fig, axes = _grid(1, 2, f"{dataset}: the algorithms on one budget of samples (line: mean over seeds; band: 95% "
                            f"interval)")
    share = _winner_series(dataset)

    def winner_share(run: Run) -> dict[int, float]:
        steps, per_label, _ = share(run)
        return dict(zip(steps.tolist(), per_label["winner"].tolist()))

    for name, values, runs in groups:
        color = f"C{algos.index(str(values.get('rl.algo', name))) % 10}"
        style = styles[rates.index(str(values.get("rl.lr", ""))) % len(styles)]
        for ax, get in zip(axes[0], (lambda r: common_pass1(r, dataset), winner_share)):
            steps, mean, lo, hi = _interval_curves(runs, get)
            _band(ax, steps * _samples_per_step(runs[0]), (mean, lo, hi), color, len(runs) > 1, ls=style)
    for ax, title in zip(axes[0], ("greedy pass@1 (the problems every evaluation answered)",
                                   "share of the winning format (greedy outputs)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("samples drawn in RL")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    _legend(fig, [Line2D([], [], color=f"C{i % 10}", lw=1.8, label=a) for i, a in enumerate(algos)]
            + ([Line2D([], [], color="0.3", ls=styles[j % len(styles)], label=f"rate {j + 1} of {len(rates)}")
                for j in range(len(rates))] if len(rates) > 1 else []))
    return fig


def fig_ppo_critic(groups: list[Group], dataset: str) -> Figure | None:
    """PPO's critic, per arm (a colour each; mean over seeds, band the 95% interval): greedy pass@1 over steps, the
    critic's value mean (solid) against the reward mean (dashed) over steps, and its value-clip fraction."""
    groups = [g for g in groups if g[2]]
    if not groups:
        return None
    fig, axes = _grid(1, 3, "PPO's critic: pass@1, the value it predicts against the reward, and value clipping")
    series = ((0, lambda r: common_pass1(r, dataset), "-"), (1, lambda r: _metric(r, "critic/value_mean"), "-"),
              (1, lambda r: _metric(r, "reward_mean"), "--"), (2, lambda r: _metric(r, "critic/value_clip_frac"), "-"))
    for i, (name, _, runs) in enumerate(groups):
        for panel, get, style in series:
            steps, mean, lo, hi = _interval_curves(runs, get)
            if len(steps):
                _band(axes[0][panel], steps, (mean, lo, hi), f"C{i % 10}", len(runs) > 1, ls=style)
    titles = ("greedy pass@1 (the problems every evaluation answered)", "value mean (solid) vs reward mean (dashed)",
              "value-clip fraction")
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=10)
        _step_axis(ax, [r for _, _, rs in groups for r in rs])
        ax.grid(alpha=0.3)
    _legend(fig, [Line2D([], [], color=f"C{i % 10}", lw=1.8, label=g[0]) for i, g in enumerate(groups)])
    return fig


def _metric(run: Run, key: str) -> dict[int, float]:
    """{step: value} of one metrics.jsonl key over the run's RL steps (steps without it left out)."""
    return {m["step"]: m[key] for m in run.metrics if m.get(key) is not None}


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


def _size_label(values: dict, runs: list[Run]) -> str:
    """'olmo-12m, 11.9M params, lr 0.001': the preset, its parameter count (at the run's vocabulary) and rate."""
    import torch

    from .model import OLMo, ModelConfig

    model = runs[0].config.get("model", {}) if runs else {}
    vocab = int(runs[0].config.get("data", {}).get("vocab_size", 1024)) if runs else 1024
    try:
        with torch.device("meta"):  # the count without allocating the weights
            n = OLMo(ModelConfig(**{**model, "vocab_size": vocab})).num_params()
    except (TypeError, ValueError):
        return str(values.get("model.preset", ""))
    lr = runs[0].config.get("pretrain", {}).get("lr") if runs else None
    return f"{values.get('model.preset', '')}\n{n / 1e6:.1f}M params" + (f", lr {lr:g}" if lr else "")


CODE_FORMATS = ("tinygsm", "omi1")


def fig_scale(groups: list[Group], dataset: str) -> Figure | None:
    """The scale map: a cell per model size (rows) and world difficulty (columns, the largest number a question
    states). Its colour is the forced-accuracy gap before RL, text minus the better code format (probes; mean over
    seeds): blue where text is the more accurate format, red where code is. Its text: the format that wins after
    RL in most seeds (and in how many), and greedy pass@1 before -> after (means)."""
    groups = [g for g in groups if any(dataset in r.datasets for r in g[2])]
    if not groups:
        return None
    sizes = list(dict.fromkeys(str(v.get("model.preset", "")) for _, v, _ in groups))
    levels = sorted({int(v.get("data.synthetic.max_number", 0)) for _, v, _ in groups})
    gap = np.full((len(sizes), len(levels)), np.nan)
    fig, axes = _grid(1, 1, f"{dataset}: which format wins after RL, by model size and world difficulty")
    ax = axes[0, 0]
    labels = {}
    for _, values, runs in groups:
        row, col = sizes.index(str(values.get("model.preset", ""))), levels.index(int(values.get(
            "data.synthetic.max_number", 0)))
        labels[row] = _size_label(values, runs)
        before, after, winners = end_metrics(runs, dataset)
        gaps = [m["forced/text"] - max(m[f"forced/{f}"] for f in CODE_FORMATS) for m in before
                if "forced/text" in m and all(f"forced/{f}" in m for f in CODE_FORMATS)]
        gap[row, col] = np.mean(gaps) if gaps else np.nan
        counts = {w: winners.count(w) for w in dict.fromkeys(winners)}
        top = max(counts, key=counts.get) if counts else None
        text = (f"{top or '—'} {counts.get(top, 0)}/{len(winners)}\n"
                f"{np.mean([m['pass@1'] for m in before]):.0%} -> {np.mean([m['pass@1'] for m in after]):.0%}")
        ax.text(col, row, text, ha="center", va="center", fontsize=9)
    image = ax.imshow(gap, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label="forced accuracy before RL: text - the better code format")
    ax.set_xticks(range(len(levels)), [f"numbers up to {n}" for n in levels])
    ax.set_yticks(range(len(sizes)), [labels.get(i, s) for i, s in enumerate(sizes)])
    ax.set_xlabel("world difficulty (data.synthetic.max_number; max_factor and max_value move with it)")
    return fig


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



def fig_pilot(results: list[dict], by: str, choose: str, choice: dict) -> Figure | None:
    """A pretraining pilot: left, each cell's validation loss over pretraining steps (a colour per `by` value, a
    line style per `choose` value); right, the loss at the end against `choose`, the rule's choice ringed."""
    drawn = [r for r in results if r["val_loss_curve"]]
    if not drawn:
        return None
    keys = list(dict.fromkeys(str(r["values"][by]) for r in results))
    options = sorted({r["values"][choose] for r in results})
    styles = ("-", "--", ":", "-.")
    fig, axes = _grid(1, 2, f"Pretraining pilot: validation loss per {by} and {choose} (ringed: the rule's choice)")
    left, right = axes[0]
    for r in drawn:
        color = f"C{keys.index(str(r['values'][by])) % 10}"
        steps, losses = zip(*r["val_loss_curve"])
        left.plot(steps, losses, color=color, ls=styles[options.index(r["values"][choose]) % len(styles)], lw=1.5)
    for i, key in enumerate(keys):
        rs = sorted((r for r in drawn if str(r["values"][by]) == key and r["finished"]),
                    key=lambda r: r["values"][choose])
        if rs:
            right.plot([r["values"][choose] for r in rs], [r["val_loss"] for r in rs], color=f"C{i % 10}",
                       marker="o", lw=1.5)
        if key in choice:
            best = next(r for r in rs if r["values"][choose] == choice[key])
            right.scatter([choice[key]], [best["val_loss"]], s=160, facecolors="none", edgecolors=f"C{i % 10}", lw=2)
    left.set_xlabel("pretraining step")
    left.set_title("validation loss", fontsize=10)
    right.set_xscale("log")
    right.set_xlabel(choose)
    right.set_title("validation loss at the end", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    _legend(fig, [Line2D([], [], color=f"C{i % 10}", lw=1.8, label=k) for i, k in enumerate(keys)]
            + [Line2D([], [], color="0.3", ls=styles[j % len(styles)], label=f"{choose}={v:g}")
               for j, v in enumerate(options)])
    return fig

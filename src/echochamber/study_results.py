"""A study's numbers: what it reads from each run's evaluations, and how it summarises them over seeds.

Every number is read per run at its first and last evaluation of a dataset (record_metrics), then summarised
over a group's runs (cells that differ only in seed) as a mean with its 95% bootstrap interval
(intervals.summarize). Two groups differ, and a number changes through RL, only where the intervals separate
(differences, changes). The tables (results_table, error_table) are what study.json, results.md and the report
print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .intervals import percent, separated, summarize
from .report import Run, _union
from .runio import read_jsonl, read_metrics

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


def end_metrics(runs: list[Run], dataset: str) -> tuple[list[dict], list[dict], list[str | None]]:
    """Each run's record_metrics at its first and its last evaluation of `dataset` (runs never evaluated on it
    are left out), and each run's winner (its largest greedy share at the last)."""
    first, last = first_last(runs, dataset)
    winners = [winner(d["format_share"]) for d in last]
    return ([record_metrics(d, w) for d, w in zip(first, winners)],
            [record_metrics(d, w) for d, w in zip(last, winners)], winners)


def common_pass1(run: Run, dataset: str) -> dict[int, float]:
    """Greedy pass@1 at every evaluation of `dataset`, on the problems every one of them answered: RL's
    evaluations between the ends take the first eval.n_problems_between problems and the ends all of them, so
    this is the one curve on one set of problems (read from eval/step_N/DATASET_greedy.jsonl)."""
    answered = {}
    for e in run.evals:
        path = run.path / "eval" / f"step_{e['step']:06d}" / f"{dataset}_greedy.jsonl"
        if dataset in e.get("datasets", {}) and path.exists():
            answered[e["step"]] = {row["id"]: bool(row["correct"]) for row in read_jsonl(path)}
    common = set.intersection(*map(set, answered.values())) if answered else set()
    return {step: float(np.mean([rows[i] for i in common])) for step, rows in answered.items()} if common else {}


def run_course(run: Run, dataset: str) -> dict[str, float]:
    """What happened over the run, beside its last evaluation: the peak of greedy pass@1 (common_pass1) and its
    fall from there to the end (stability: 0 for a run that ends at its best), and the step at which it
    collapsed onto its winner (collapse_timing; absent if it did not)."""
    curve = common_pass1(run, dataset)
    out = {}
    if curve:
        peak = max(curve.values())
        out.update({"peak_pass@1": peak, "fall_from_peak": peak - curve[max(curve)]})
    collapse = collapse_timing(run, dataset)["collapse_step"]
    if collapse is not None:
        out["collapse_step"] = float(collapse)
    return out


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
    # the course of each run (peak, fall, collapse step) with its last evaluation: read here, once per group, not
    # by every figure that asks end_metrics for one number (it reads every evaluation's answers)
    after_runs = [{**m, **run_course(r, dataset)} for r, m in zip(runs, after_runs)]
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
             *(f"{_cell(g['before'].get(m))} -> {_cell(g['after'].get(m))}" if g["before"].get(m)
               else _cell(g["after"].get(m)) for m in metrics),
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


# ------------------------------------------------------------------------------------------------- pilots
def pretraining_result(name: str, values: dict, pretrain_dir: Path, shown_as: str) -> dict:
    """One pilot cell's pretraining as its metrics.jsonl holds it: the validation loss at every evaluation and at
    the last, the median throughput, whether it finished (its model/ folder)."""
    recs = read_metrics(pretrain_dir) if (pretrain_dir / "metrics.jsonl").exists() else []
    curve = [[r["step"], r["val_loss"]] for r in recs if r.get("val_loss") is not None]
    speeds = [r["tokens_per_s"] for r in recs if r.get("tokens_per_s")]
    return {"cell": name, "values": values, "pretrained": shown_as, "finished": (pretrain_dir / "model").is_dir(),
            "val_loss": curve[-1][1] if curve else None, "val_loss_curve": curve,
            "tokens_per_s": float(np.median(speeds)) if speeds else None}


def lowest_val_loss(by: str, choose: str) -> Callable[[list[dict]], tuple[dict, list[str]]]:
    """A pilot's rule: for each value of `by` (e.g. model.preset), the value of `choose` (e.g. pretrain.lr) whose
    pretraining ended with the lowest validation loss; decided only once every cell of that group has finished.
    Returns the rule as a function of the pilot's results: ({by value: chosen value}, one line per group)."""
    def rule(results: list[dict]) -> tuple[dict, list[str]]:
        groups: dict = {}
        for r in results:
            groups.setdefault(str(r["values"][by]), []).append(r)
        choice, lines = {}, []
        for key, rs in groups.items():
            losses = ", ".join(f"{r['values'][choose]:g}: " + (f"{r['val_loss']:.4f}" if r["finished"] else "not "
                                                                 "finished") for r in rs)
            if not all(r["finished"] and r["val_loss"] is not None for r in rs):
                lines.append(f"{by}={key}: not decided, {sum(r['finished'] for r in rs)} of {len(rs)} finished "
                             f"({losses})")
                continue
            best = min(rs, key=lambda r: r["val_loss"])
            choice[key] = best["values"][choose]
            lines.append(f"{by}={key}: {choose}={best['values'][choose]:g} (validation loss after pretraining: "
                         f"{losses})")
        return choice, lines
    return rule


def best_of(results: list[dict], key: str, metric: str = "pass@1") -> list[dict]:
    """For each value of grid key `key` (e.g. rl.algo), its group with the highest mean `metric` after RL among
    the groups with that value (e.g. the algorithm's best learning rate), per dataset. A choice by the same seeds
    it reports is biased upward (the best of three noisy means); the table says which setting won, and the
    curves of all of them stay in the report."""
    best: dict[tuple, dict] = {}
    for g in results:
        if key not in g["values"] or not g["after"].get(metric):
            continue
        slot = (g["dataset"], str(g["values"][key]))
        if slot not in best or g["after"][metric]["mean"] > best[slot]["after"][metric]["mean"]:
            best[slot] = g
    return list(best.values())


def best_table(results: list[dict], key: str, metrics: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): best_of's groups, the setting that won and each metric after RL, mean [95% interval]."""
    rows = [[str(g["values"][key]), g["dataset"], ", ".join(f"{k}={v}" for k, v in g["values"].items() if k != key),
             str(g["runs"]), *(_cell(g["after"].get(m)) for m in metrics)] for g in best_of(results, key)]
    return [key, "dataset", "at its best setting", "seeds", *metrics], rows

"""`echochamber study NAME --out DIR`: the paper's findings in miniature, one command each.

    echochamber study list                                   # the studies, their questions and grids
    echochamber study collapse --out runs/study_collapse     # the quickstart over 3 seeds

A study is a sweep (sweep.py) with fixed settings, plus a report whose FIRST figure answers the study's question:

    collapse     does RL collapse the outputs onto one pretraining format, with the pass@1 jump? (3 seeds)
    algorithms   GRPO vs PPO vs Expert Iteration on one budget of samples, each at its best of three rates
                 (3 RL seeds; PPO's critic rate from ppo_critic)
    ppo_critic   PPO's critic at 1x, 3x, 7x the actor's rate; log-probs at 0.7, no whitening, the actor frozen
                 for 4 rollouts (3 RL seeds)
    kl           PPO's KL coefficient 0 / 0.01 / 0.1 / 0.3 / 1 (k1 in the reward): do minority formats survive, at
                 what cost in pass@1? (3 RL seeds; its length set by kl_pilot, one 96-step run and a fixed rule)
    long         4x the quickstart's GRPO steps: does pass@k at large k fall late while pass@1 rises? (3 RL seeds)
    failure      the frequent format made the less accurate one (a systematic error, at 2x and 8x): does RL amplify
                 it or find the accurate one? Forced-format probes before and after (3 RL seeds)
    refinement   pretrained on one code format alone: does RL refine how the model writes it? (3 RL seeds)
    mixture      the same model on mixtures with other repeat factors: does the winner move? (3 seeds)
    transfer     RL on train, evaluated on splits it never saw: unseen names, larger amounts, one more step
    interpreter  the collapse study with a real interpreter writing <llm-code-output> during generation
    scale        the map: which format wins over model size (1M, 3.7M, 12M) x world difficulty (numbers up to 20,
                 35, 50)? (3 pretraining seeds; each size's rate from scale_rates)
    scale_rates  a pretraining pilot: per size, the pretraining rate with the lowest validation loss

A study whose grid waits for a pilot's choice refuses to run until it is filled in (Study.blocked). A
pretraining pilot (PretrainPilot) stops its cells before RL and applies its rule to their validation losses.

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

This module holds the definitions and runs them; study_results.py reads and summarises the numbers, and
study_figures.py draws each study's figure.
"""

from __future__ import annotations

import functools
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from matplotlib.figure import Figure

from .report import STYLE, _embed, _html_table, _union, load_run, write_sweep_report
from .runio import atomic_write_json, atomic_write_text, git_commit
from .study_figures import (fig_algorithms, fig_collapse, fig_failure, fig_kl, fig_long, fig_mixture,
                            fig_pilot, fig_ppo_critic, fig_refinement, fig_scale, fig_transfer)
from .study_results import (Group, best_table, changes, difference_lines, differences, error_table, group_result,
                            lowest_val_loss, markdown, pretraining_result, result_lines, results_table)
from .sweep import SweepError, dry_run as sweep_dry_run, group_over_seeds, is_seed_key, run_pretraining, run_sweep


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
    # set while a setting of its grid waits for a pilot's rule: what to run first (the study refuses until then)
    blocked: str | None = None
    # a grid key whose groups compete: the table of each value of it at its best setting (study_results.best_of)
    best_of: str | None = None


@dataclass(frozen=True)
class PretrainPilot:
    """A study that stops before RL: its cells only pretrain (sweep.run_pretraining), and a rule written with it,
    before it runs, picks a setting for a later study from their validation losses (`by` -> `choose`)."""
    name: str
    question: str
    paper: str
    config: str
    grid: tuple[str, ...]
    overrides: tuple[str, ...]
    by: str  # the setting the rule decides for (e.g. model.preset)
    choose: str  # the setting it chooses (e.g. pretrain.lr)

    @property
    def rule(self) -> Callable[[list[dict]], tuple[dict, list[str]]]:
        return lowest_val_loss(self.by, self.choose)


# What the pilots chose, each by the rule written in its definition below (filled in from the pilot's study.json,
# with the date and commit it ran at); a study whose grid needs an empty one refuses to run (Study.blocked).
SCALE_SIZES = ("olmo-tiny", "olmo-small", "olmo-12m")
SCALE_RATES: dict[str, float] = {}  # scale_rates: model.preset -> pretrain.lr. Not run yet.
# ppo_critic: the critic's peak rate / the actor's. Its rule picked 1x (mean final greedy pass@1 over 3 seeds: 62.2% at
# 1x, 59.8% at 3x, 61.8% at 7x; no difference established), 2026-12-07/08, commit 60f8947.
ALGORITHMS_CRITIC_RATIO: float | None = 1.0
ALGORITHM_RATES = (0.3, 1.0, 3.0)  # each algorithm's rates, relative to today's (rl.lr 1e-4; EI's rl.ei.lr 3e-4)
# A study's sweep decodes in one process for hours: there the decode step's compilation (about a minute on 2
# cores, once per process) pays back on a CPU too (bench/cell_time.py, docs/studies.md "Where a cell's time goes").
COMPILED_DECODING = ("rl.sample_compile=on", "eval.sample_compile=on")


def _scale_sizes() -> str:
    """The scale map's size axis, each preset linked to its chosen pretraining rate (or to its current one while
    the study is blocked: only the dry run and the tests read it then)."""
    rates = SCALE_RATES or {"olmo-tiny": 3e-3, "olmo-small": 3e-3, "olmo-12m": 1e-3}
    return "model.preset+pretrain.lr=" + ",".join(f"({p},{rates[p]:g})" for p in SCALE_SIZES)


def _algorithm_rates() -> str:
    """The algorithms grid's rate axis: rl.lr (GRPO, PPO), rl.ei.lr (EI's SFT) and PPO's critic peak and floor
    move together, one relative rate at a time."""
    ratio = ALGORITHMS_CRITIC_RATIO or 7.0
    return "rl.lr+rl.ei.lr+rl.ppo.critic_lr+rl.ppo.critic_min_lr=" + ",".join(
        f"({1e-4 * r:.2g},{3e-4 * r:.2g},{ratio * 1e-4 * r:.2g},{0.7 * 1e-4 * r:.2g})" for r in ALGORITHM_RATES)


STUDIES: dict[str, Study | PretrainPilot] = {s.name: s for s in (
    Study("collapse", "Does RL collapse the outputs onto one pretraining format, and does the collapse come with the "
          "pass@1 jump? (the quickstart over 3 seeds)",
          "RL collapses onto one format within about one pass over the training set; the collapse coincides with "
          "the largest pass@1 gain.",
          "quickstart", ("seed=0,1,2",), (), fig_collapse),
    # The algorithms, fairly (issue 20): each at three learning rates, the same relative grid around today's
    # (0.3x, 1x, 3x of GRPO's and PPO's 1e-4 and Expert Iteration's SFT rate 3e-4), 3 RL seeds each, on one shared
    # pretrained quickstart model and one budget of samples (6,144: 24 x 32 x 8, EI 3 x 64 x 32). Greedy answers
    # to 100 problems every 4 steps give the curve, its peak, the fall after it and the collapse step; pass@4 at
    # the ends. Each algorithm is reported at its best rate: the one with the highest mean greedy pass@1 at the
    # last evaluation (study_results.best_of). PPO's critic rate moves with the actor's at the ratio the
    # ppo_critic study's rule picks (ALGORITHMS_CRITIC_RATIO), its floor at 0.7x the actor's (the authors').
    Study("algorithms", "GRPO vs PPO vs Expert Iteration, each at its best of three learning rates, 3 RL seeds "
          "each, on one budget of samples: pass@1, pass@4, stability after the peak, and the collapse",
          "PPO is the most stable; GRPO collapses the same way; Expert Iteration lags, with a milder shift.",
          "quickstart", ("rl.algo=grpo,ppo,ei", _algorithm_rates(), "rl.seed=0,1,2"),
          ("rl.eval_every=4", "eval.datasets=[synthetic:test]", "eval.between_greedy_only=true", *COMPILED_DECODING),
          fig_algorithms,
          ("pass@1", "pass@k", "peak_pass@1", "fall_from_peak", "outside_winner"),
          blocked=None if ALGORITHMS_CRITIC_RATIO else "algorithms waits for PPO's critic ratio: run `echochamber "
          "study ppo_critic`, then set studies.ALGORITHMS_CRITIC_RATIO by its rule", best_of="rl.algo"),
    # PPO's critic, before the algorithms grid (issue 20): its rate, and two cheap diagnostics of why PPO fell
    # after its peak in the first algorithms study, each at the actor's 1e-4 with 3 RL seeds on one pretrained
    # quickstart model. The critic at 1x the actor's rate (what the authors' code ran), 3x and 7x (today's; the
    # ratio their configs name), each decaying to 7e-5 (0.7x the actor's, the authors' floor). Then, at 7x, three
    # diagnostics: log-probs at the rollout temperature 0.7 (the authors') instead of 1.0; advantages not whitened
    # (whitening keeps the step size as the real signal shrinks); and the actor frozen for the first 4 of the 24
    # rollouts while the critic learns (the near-zero initial critic gives the early tokens, where the format is
    # chosen, no outcome signal until it has). The critic logs its value mean (against the reward mean) and its
    # value-clip fraction every step. The rule for the algorithms grid, fixed here: of the three critic rates
    # (temperature 1.0, whitened, nothing frozen), the one with the highest mean greedy pass@1 at the last
    # evaluation.
    Study("ppo_critic", "PPO's critic at 1x, 3x and 7x the actor's rate, and three diagnostics at 7x (log-probs at "
          "temperature 0.7; advantages not whitened; the actor frozen for 4 rollouts): which keeps PPO's pass@1 "
          "after its peak? (3 RL seeds)",
          "The authors' PPO was the most stable of their algorithms; their critic ran at the actor's rate.",
          "quickstart",
          ("rl.ppo.critic_lr+rl.logprob_temperature+rl.ppo.whiten_advantages+rl.ppo.freeze_actor_steps="
           "(1e-4,1.0,true,0),(3e-4,1.0,true,0),(7e-4,1.0,true,0),(7e-4,0.7,true,0),(7e-4,1.0,false,0),"
           "(7e-4,1.0,true,4)", "rl.seed=0,1,2"),
          ("rl.algo=ppo", "rl.ppo.critic_min_lr=7e-5", "rl.eval_every=4", "eval.datasets=[synthetic:test]",
           "eval.between_greedy_only=true", *COMPILED_DECODING), fig_ppo_critic,
          ("pass@1", "pass@k", "peak_pass@1", "fall_from_peak", "outside_winner"), best_of="rl.ppo.critic_lr"),
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
    # The scale map (issue 20): which format wins, over model size x world difficulty, every cell run. Each size
    # pretrains at the rate scale_rates' rule chose (SCALE_RATES). Difficulty is the size of the numbers, every
    # other world setting the quickstart's: amounts up to 20 / 35 / 50, multipliers up to 5 / 8 / 12, results up
    # to 100 / 300 / 1000 (20 and 50 are the small_numbers and quickstart ranges). Every format's data is correct
    # at every level: small_numbers' systematic *->+ in the code formats is NOT used, so the axis changes the
    # numbers alone. 3 pretraining seeds per cell, the seed outermost so that the whole map of seed 0 lands first.
    # Forced-format probes at both ends give each format's accuracy before RL; greedy answers to 100 problems
    # every 8 steps between them.
    Study("scale", "Which format wins after RL, over model size (1M, 3.7M, 12M parameters) x world difficulty "
          "(numbers up to 20, 35, 50)? (3 pretraining seeds per cell)",
          "On the same mixture 150M models go to TinyGSM code, 1B models to natural language.",
          "quickstart",
          ("seed=0,1,2", _scale_sizes(),
           "data.synthetic.max_number+data.synthetic.max_factor+data.synthetic.max_value=(20,5,100),(35,8,300),"
           "(50,12,1000)"),
          ("eval.datasets=[synthetic:test]", "eval.probe=true", "eval.between_greedy_only=true", "rl.eval_every=8",
           *COMPILED_DECODING), fig_scale, ("pass@1", "forced/tinygsm", "forced/omi1", "forced/text", "outside_winner"),
          blocked=None if SCALE_RATES else "scale waits for its pretraining rates: run `echochamber study "
          "scale_rates`, then set studies.SCALE_RATES from its study.json \"choice\""),
    # The scale map's pretraining rates, by a rule fixed before either runs: each size pretrained on the
    # quickstart world (the map's hardest level) with seed 0 at 1e-3 (the paper's), 3e-3 (the quickstart's) and
    # 1e-2, for the full 1,200 steps the map's cells pretrain (a shorter pilot favours the larger rates: the 12M
    # model at 3e-3 ended worse than at 1e-3, docs/studies.md "scale"); per size, the rate with the lowest
    # validation loss at the end. The chosen models are the map's seed-0 models of that world (same settings,
    # same key): copying pretrained/ and data/ into the map's folder reuses them.
    PretrainPilot("scale_rates", "Which pretraining rate (1e-3, 3e-3, 1e-2) gives each model size its lowest "
                  "validation loss on the quickstart world? (sets the scale map's rates)",
                  "The paper pretrained its 150M and 1B models at one rate, 1e-3.",
                  "quickstart", (f"model.preset={','.join(SCALE_SIZES)}", "pretrain.lr=1e-3,3e-3,1e-2"), (),
                  by="model.preset", choose="pretrain.lr"),
)}


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
    diffs, moves = differences(results), changes(results, study.table)
    summary = {"study": study.name, "question": study.question, "paper": study.paper, **meta,
               "results": results, "result_lines": result_lines(results), "differences": diffs,
               "changes": moves, "difference_lines": difference_lines(diffs, moves),
               "complete": all(g["finished"] == g["runs"] for g in results)}
    atomic_write_json(out / "study.json", summary)
    tables = [("Results: before -> after RL, mean over seeds [95% bootstrap interval]",
               results_table(results, study.table)),
              ("Wrong greedy answers by error category (share of all answers), mean over seeds [95% interval]",
               error_table(results))]
    if study.best_of:
        tables.insert(0, (f"Each {study.best_of} at its best setting (highest mean greedy pass@1 after RL), after "
                          f"RL, mean over seeds [95% interval]", best_table(results, study.best_of, study.table)))
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
    if getattr(study, "blocked", None):
        raise SweepError(study.blocked)
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
    if isinstance(STUDIES[name], PretrainPilot):
        if launcher is not None:
            raise SweepError(f"{name} is a pretraining pilot: it runs here, one pretraining after another "
                             f"(--launcher is for the studies that run RL)")
        cells = run_pretraining(config, grid, overrides, out)
        return finish_pilot(STUDIES[name], Path(out), cells, _meta(out, config, grid, overrides,
                                                                   time.perf_counter() - t0))
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
    meta = _meta(out, config, grid, overrides, seconds)
    summary = write_study_report(study, out, entries, meta)
    print(f"study {name}: {study.question}", flush=True)
    for line in summary["result_lines"] + summary["difference_lines"]:
        print("  " + line, flush=True)
    print(f"  wall time {meta['wall_seconds'] / 60:.1f} min; report: {out / 'report.html'}", flush=True)
    return summary


def _meta(out: str | Path, config: str, grid: list[str], overrides: list[str], seconds: float) -> dict:
    """What study.json records of how it ran; the wall time and the invocations add up over resumptions."""
    path = Path(out) / "study.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    return {"config": config, "grid": grid, "overrides": overrides, "git_commit": git_commit(),
            "wall_seconds": previous.get("wall_seconds", 0.0) + seconds,
            "invocations": previous.get("invocations", 0) + 1}


PILOT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>echochamber study: {name}</title>
<style>{style}</style></head><body><h1>echochamber study: {name}</h1>{body}</body></html>
"""


def finish_pilot(pilot: PretrainPilot, out: Path, cells: list, meta: dict) -> dict:
    """OUT/study.json, results.md and report.html of a pretraining pilot: each cell's validation loss, and what
    its rule chose (decided for a group only once all its cells have finished)."""
    results = [pretraining_result(c.name, {**c.overrides(), pilot.by: c.setting(pilot.by),
                                           pilot.choose: c.setting(pilot.choose)},
                                  c.pretrain_dir, str(c.pretrain_dir.relative_to(out))) for c in cells]
    choice, lines = pilot.rule(results)
    summary = {"study": pilot.name, "question": pilot.question, "paper": pilot.paper, **meta, "results": results,
               "rule": f"per {pilot.by}, the {pilot.choose} with the lowest validation loss after pretraining",
               "choice": choice, "result_lines": lines, "complete": all(r["finished"] for r in results)}
    atomic_write_json(out / "study.json", summary)
    header = ["cell", "validation loss at the end", "tokens/s (median)", "pretrained"]
    rows = [[r["cell"], f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "—",
             f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "—", r["pretrained"]] for r in results]
    atomic_write_text(out / "results.md", f"### {summary['rule']}\n\n" + "".join(f"- {line}\n" for line in lines)
                      + "\n" + markdown(header, rows))
    figure = _embed(fig_pilot(results, pilot.by, pilot.choose, choice), out, f"study_{pilot.name}", pilot.question)
    body = (f"<p><b>Question.</b> {html.escape(pilot.question)}</p><p><b>Rule.</b> {html.escape(summary['rule'])}"
            f"</p>{figure}<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
            + _html_table(header, rows) + f"<p>Measured wall time: {meta['wall_seconds'] / 60:.1f} min over "
            f"{meta['invocations']} invocation(s), commit {html.escape(str(meta['git_commit']))}.</p>")
    atomic_write_text(out / "report.html", PILOT_PAGE.format(name=html.escape(pilot.name), style=STYLE, body=body))
    print(f"study {pilot.name}: {pilot.question}", flush=True)
    for line in lines:
        print("  " + line, flush=True)
    print(f"  wall time {meta['wall_seconds'] / 60:.1f} min; report: {out / 'report.html'}", flush=True)
    return summary


def describe() -> str:
    """`echochamber study list`."""
    def status(s) -> str:
        if isinstance(s, PretrainPilot):
            return f"\n{'':<12} a pretraining pilot: its cells stop before RL; per {s.by}, the {s.choose} with the " \
                   f"lowest validation loss"
        return f"\n{'':<12} WAITING: {s.blocked}" if s.blocked else ""

    return "\n".join(f"{s.name:<12} {s.question}\n{'':<12} config {s.config}; grid {' x '.join(s.grid) or '(one cell)'}"
                     + (f"; {' '.join(s.overrides)}" if s.overrides else "") + status(s) for s in STUDIES.values())


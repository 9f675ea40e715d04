"""echochamber study: linked grid keys, upgrades that keep finished cells, every study's settings resolve, the
study report (its own figure first, study.json's numbers), and one real smoke study from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from echochamber.config import RunConfig, to_dict
from echochamber.studies import STUDIES, write_study_report, _groups
from echochamber.study_figures import fig_kl
from echochamber.study_results import group_result
from echochamber.sweep import SweepError, _setting_changes, group_over_seeds, parse_grid, plan_cells


# ------------------------------------------------------------------------------------------------- the grid
def test_linked_grid_keys_move_together(tmp_path):
    grid = parse_grid(["rl.kl_coef+rl.lr=0.001,0.002", "seed=0,1"])
    cells = plan_cells("smoke", grid, [], tmp_path)
    assert len(cells) == 4  # 2 linked values x 2 seeds, not 2 x 2 x 2
    for cell in cells:
        assert cell.cfg.rl.kl_coef == cell.cfg.rl.lr
        assert set(cell.overrides()) == {"rl.kl_coef+rl.lr", "seed"}
    assert sorted({c.cfg.rl.lr for c in cells}) == [0.001, 0.002]
    assert cells[0].name == "rl.kl_coef+rl.lr=0.001,seed=0"


def test_linked_keys_take_one_value_each_from_parentheses(tmp_path):
    grid = parse_grid(["model.preset+pretrain.lr=(olmo-tiny,3e-3),(olmo-small,1e-3)", "seed=0,1"])
    cells = plan_cells("smoke", grid, [], tmp_path)
    assert [(c.cfg.model.preset, c.cfg.pretrain.lr, c.cfg.seed) for c in cells] == [
        ("olmo-tiny", 3e-3, 0), ("olmo-tiny", 3e-3, 1), ("olmo-small", 1e-3, 0), ("olmo-small", 1e-3, 1)]
    assert cells[2].name == "model.preset=olmo-small,pretrain.lr=1e-3,seed=0"
    assert cells[2].overrides() == {"model.preset": "olmo-small", "pretrain.lr": 1e-3, "seed": 0}
    assert cells[0].pretrain_dir != cells[2].pretrain_dir


@pytest.mark.parametrize("specs, why", [
    (["model.preset+pretrain.lr=(olmo-tiny,3e-3),(olmo-small)"], r"\(olmo-small\) has 1 values for 2 linked keys"),
    (["rl.lr+rl.lr=1,2"], "already a grid key"),
    (["rl.lr=1,2", "rl.kl_coef+rl.lr=1,2"], "already a grid key"),
    (["rl.lr+=1,2"], "empty key"),
    (["seed+out_dir=1,2"], "out_dir cannot be swept"),
])
def test_bad_linked_keys_are_one_line_each(specs, why):
    with pytest.raises(SweepError, match=why):
        parse_grid(specs)


def test_bad_value_of_a_linked_key_names_it(tmp_path):
    with pytest.raises(SweepError, match=r"--grid rl.kl_coef\+rl.lr=abc"):
        plan_cells("smoke", parse_grid(["rl.kl_coef+rl.lr=abc"]), [], tmp_path)


def test_a_key_added_since_a_cell_ran_is_a_change_only_when_it_is_not_at_its_default():
    now = to_dict(RunConfig())
    recorded = json.loads(json.dumps(now))
    del recorded["eval"]["n_problems_between"]  # as if the cell ran before the key existed
    assert _setting_changes(recorded, now) == []
    now["eval"]["n_problems_between"] = 7  # asked for a non-default value: the old cell did not run that way
    assert _setting_changes(recorded, now) == ["eval.n_problems_between"]
    recorded["rl"]["lr"] = 1.0  # a key both know, with another value
    assert "rl.lr" in _setting_changes(recorded, now)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_resolves_to_cells(name, tmp_path):
    study = STUDIES[name]
    cells = plan_cells(study.config, parse_grid(list(study.grid)), list(study.overrides), tmp_path)
    assert cells and study.question and study.paper


def test_a_study_dry_run_prints_its_cells_and_an_estimate_and_writes_nothing(tmp_path, capsys):
    from echochamber.cli import main

    out = tmp_path / "study"
    before = sorted(tmp_path.rglob("*"))
    main(["study", "collapse", "--config", "smoke", "--out", str(out), "--dry-run"])  # returns: exit status 0
    printed = capsys.readouterr().out
    assert not out.exists() and sorted(tmp_path.rglob("*")) == before
    assert printed.startswith(f"study collapse: {STUDIES['collapse'].question}\nstudy collapse: dry run of 3 cells")
    for i, seed in enumerate((0, 1, 2)):  # a pretraining per seed: nothing shared
        block = printed.split(f"[cell {i + 1}/3] seed={seed}\n")[1]
        assert block.startswith(f"  overrides   seed={seed}\n")
        assert "not started; used by this cell only" in block.split("\n")[2]
        assert block.split("\n")[4].startswith("  time left   ")
    assert "time left in all: " in printed and "timed now on this machine" in printed
    with pytest.raises(SystemExit) as e:  # a bad override: the sweep's one line, prefixed by the study
        main(["study", "collapse", "rl.nope=1", "--config", "smoke", "--out", str(out), "--dry-run"])
    assert str(e.value.code).startswith("study: config: ") and "unknown key 'rl.nope'" in str(e.value.code)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------- the report
def fake_cell(out: Path, name: str, overrides: dict, config: dict, evals: dict[int, dict], wall: float = 60.0,
              greedy_rows: bool = False) -> dict:
    """A finished cell as the sweep leaves it: DIR/cells/NAME/rl with eval/step_N.json (and, with greedy_rows, each
    evaluation's greedy answers: 10 problems unless the record says "problems", the first pass@1 x 10 right),
    rl_config.yaml and summary.json; returns its sweep.json entry."""
    rl = out / "cells" / name / "rl"
    (rl / "eval").mkdir(parents=True)
    for step, ds in evals.items():
        (rl / "eval" / f"step_{step:06d}.json").write_text(json.dumps({"step": step, "datasets": ds}))
        (rl / "eval" / f"step_{step:06d}").mkdir()
        for name_, rec in ds.items() if greedy_rows else ():
            right = round(rec["pass@1"] * 10)
            rows = [{"id": f"p{i}", "correct": i < right} for i in range(rec.get("problems", 10))]
            (rl / "eval" / f"step_{step:06d}" / f"{name_}_greedy.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows))
    (rl / "rl_config.yaml").write_text(yaml.safe_dump(config))
    (rl / "summary.json").write_text(json.dumps({"wall_seconds": wall}))
    first, last = evals[min(evals)]["synthetic_test"], evals[max(evals)]["synthetic_test"]
    return {"name": name, "overrides": overrides, "status": "done", "wall_seconds": wall,
            "out_dir": f"cells/{name}", "pass1_before": first["pass@1"], "pass1_after": last["pass@1"],
            "format_share_before": first["format_share"], "format_share_after": last["format_share"]}


def ds(p1: float, shares: dict, **extra) -> dict:
    return {"synthetic_test": {"pass@1": p1, "format_share": shares, **extra}}


def test_study_report_puts_the_study_figure_first_and_records_its_numbers(tmp_path):
    out = tmp_path / "study"
    cfg = {"rl": {"algo": "grpo", "prompts_per_step": 4, "samples_per_prompt": 2}}
    entries = [
        fake_cell(out, "rl.algo=grpo,seed=0", {"rl.algo": "grpo", "seed": 0}, cfg,
                  {0: ds(0.2, {"text": 0.6, "omi1": 0.4}), 4: ds(0.6, {"omi1": 0.9, "text": 0.1})}, greedy_rows=True),
        fake_cell(out, "rl.algo=grpo,seed=1", {"rl.algo": "grpo", "seed": 1}, cfg,
                  {0: ds(0.4, {"text": 0.95, "omi1": 0.05}), 4: ds(0.8, {"text": 0.7, "omi1": 0.3})},
                  greedy_rows=True),
        fake_cell(out, "rl.algo=ei,seed=0", {"rl.algo": "ei", "seed": 0},
                  {"rl": {"algo": "ei", "ei": {"prompts_per_round": 8, "samples_per_prompt": 4}}},
                  {0: ds(0.2, {"text": 1.0}), 1: ds(0.3, {"tinygsm": 1.0})}, greedy_rows=True),
    ]
    meta = {"config": "quickstart", "grid": [], "overrides": [], "git_commit": "abc", "wall_seconds": 600.0,
            "invocations": 1}
    summary = write_study_report(STUDIES["algorithms"], out, entries, meta)

    grpo, ei = summary["results"]
    assert grpo["group"] == "rl.algo=grpo" and grpo["runs"] == 2 and grpo["finished"] == 2
    assert grpo["pass1_before"]["mean"] == pytest.approx(0.3) and grpo["pass1_after"]["mean"] == pytest.approx(0.7)
    assert grpo["pass1_after"]["sd"] == pytest.approx(0.1)
    assert grpo["winner_per_run"] == ["omi1", "text"]  # each seed's own winner, not the mean's
    # seed 0 reaches 90% omi1 at step 4, where its pass@1 jumps; seed 1 starts at 95% text and ends at 70%:
    # never collapsed onto its winner
    assert grpo["timing_per_run"] == [{"collapse_step": 4, "largest_gain_step": 4},
                                      {"collapse_step": None, "largest_gain_step": 4}]
    assert grpo["format_share_after"]["omi1"] == pytest.approx(0.6)
    assert grpo["format_share_before"]["text"] == pytest.approx(0.775)
    assert ei["winner_per_run"] == ["tinygsm"] and ei["passk_after"] is None
    assert json.loads((out / "study.json").read_text()) == summary
    # means over seeds with their 95% bootstrap interval: 2 seeds at 20% and 40% give [20, 40]
    assert summary["result_lines"][0].startswith("rl.algo=grpo [synthetic_test, 2 seeds]: pass@1 30.0% [20.0, 40.0] "
                                                  "-> 70.0% [60.0, 80.0]")
    assert (grpo["pass1_after"]["lo"], grpo["pass1_after"]["hi"]) == pytest.approx((0.6, 0.8))
    # EI has one seed: its difference from GRPO is compared, never established
    (d,) = [d for d in summary["differences"] if d["metric"] == "pass@1"]
    assert d["groups"] == ["rl.algo=grpo", "rl.algo=ei"] and d["difference"] == pytest.approx(0.3 - 0.7)
    assert d["established"] is False

    page = (out / "report.html").read_text()
    assert page.index("study_algorithms") < page.index("sweep_format_shares_synthetic_test")  # the answer first
    assert (out / "study_algorithms.png").exists() and "Question." in page and "600" not in page[:200]
    fig = STUDIES["algorithms"].figure(_groups(out, entries), "synthetic_test")
    pass1_ax = fig.axes[0]
    xs = [line.get_xdata().tolist() for line in pass1_ax.lines]
    assert xs == [[0, 32], [0, 32]]  # x = samples drawn: GRPO 4 steps x 8 samples; EI 1 round x 32


def test_kl_figure_draws_each_coefficient_after_rl_with_its_seeds_and_their_mean(tmp_path):
    """The dose-response: one x position per coefficient; the share of sampled outputs outside each run's winning
    format after RL, every seed as a dot and the mean as a diamond with its interval."""
    out = tmp_path / "kl"
    entries = []
    for kl, minorities in ((0.0, (0.0, 0.1)), (0.3, (0.3, 0.5))):
        for seed, minority in enumerate(minorities):
            name = f"rl.kl_coef={kl},rl.seed={seed}"
            after = {"omi1": 1 - minority, "text": minority}
            entries.append(fake_cell(out, name, {"rl.kl_coef": kl, "rl.seed": seed}, {"rl": {"algo": "ppo"}},
                                     {0: ds(0.2, {"text": 0.5, "omi1": 0.5}, **{"pass@k": 0.5, "k": 8,
                                                                                  "sample_format_share": {"text": 0.5, "omi1": 0.5}}),
                                      4: ds(0.6, after, **{"pass@k": 0.7, "k": 8, "sample_format_share": after})}))
    groups = _groups(out, entries)
    assert [v for _, v, _ in groups] == [{"rl.kl_coef": 0.0}, {"rl.kl_coef": 0.3}]
    fig = fig_kl(groups, "synthetic_test")
    outside, passk, _ = fig.axes
    assert [t.get_text() for t in outside.get_xticklabels()] == ["0.0", "0.3"] and passk.get_title() == "pass@8"
    # the after-RL means (blue diamonds right of each tick): 5% and 40%; before RL every run had 50% outside omi1
    means = [line.get_ydata()[0] for line in outside.lines if line.get_marker() == "D"]
    assert means == pytest.approx([0.5, 0.05, 0.5, 0.4])


def test_group_result_reads_pass_at_k_and_ignores_unknown_as_winner(tmp_path):
    out = tmp_path / "g"
    entry = fake_cell(out, "base", {}, {"rl": {}}, {
        0: ds(0.1, {"unknown": 0.7, "text": 0.3}, **{"pass@k": 0.2, "k": 4}),
        2: ds(0.2, {"unknown": 0.6, "text": 0.4}, **{"pass@k": 0.5, "k": 4})})
    ((name, values, runs),) = _groups(out, [entry])
    g = group_result(name, values, runs, "synthetic_test")
    assert g["winner_per_run"] == ["text"] and g["k"] == 4
    assert g["passk_before"]["mean"] == pytest.approx(0.2) and g["passk_after"]["mean"] == pytest.approx(0.5)
    assert group_over_seeds([entry])[0][0] == "all cells"
    assert np.isclose(g["rl_minutes"]["mean"], 1.0)


def test_long_figure_draws_pass_at_each_k_over_steps_with_the_mean_over_seeds(tmp_path):
    out = tmp_path / "long"
    entries = [fake_cell(out, f"rl.seed={seed}", {"rl.seed": seed}, {"rl": {"algo": "grpo"}},
                         {step: ds(0.3 + 0.1 * step / 8, {"omi1": 1.0},
                                   **{"pass@k_curve": {"1": 0.3, "2": 0.5, "4": 0.7 - 0.1 * seed * step / 8}})
                          for step in (0, 8, 16)}) for seed in (0, 1)]
    ((name, values, runs),) = _groups(out, entries)
    g = group_result(name, values, runs, "synthetic_test")
    # greedy pass@1 stays greedy: the curve's pass@1 (the mean sample's accuracy) is another number
    assert g["pass1_after"]["mean"] == pytest.approx(0.5) and g["after"]["sampled_pass@1"]["mean"] == pytest.approx(0.3)
    assert g["after"]["sampled_pass@4"]["mean"] == pytest.approx(0.6)
    fig = STUDIES["long"].figure(_groups(out, entries), "synthetic_test")
    absolute, change = fig.axes[:2]
    pass4 = absolute.lines[2]  # pass@1, pass@2, pass@4 in order
    assert pass4.get_xdata().tolist() == [0, 8, 16]
    assert pass4.get_ydata() == pytest.approx([0.7, 0.65, 0.6])  # seed 1 falls by 0.1 per 8 steps, seed 0 holds
    assert change.lines[2].get_ydata() == pytest.approx([0.0, -0.05, -0.1])


def test_failure_figure_and_study_json_carry_forced_accuracy_before_and_after(tmp_path):
    out = tmp_path / "failure"
    probe = lambda tg, omi1: {"probe": {"tinygsm": {"forced_accuracy": tg}, "omi1": {"forced_accuracy": omi1}}}
    entries = [fake_cell(out, f"data.mixture={mix},rl.seed={seed}", {"data.mixture": mix, "rl.seed": seed},
                         {"rl": {"algo": "grpo"}},
                         {0: ds(0.3, {"omi1": 0.6, "tinygsm": 0.4}, **probe(0.5 + seed / 10, 0.3), n=10,
                                error_categories={"all": {"wrong": 7, "counts": {"code_crashed": 2, "wrong_operation": 5},
                                                          "share": {"code_crashed": 2 / 7, "wrong_operation": 5 / 7}}}),
                          4: ds(0.35, {"omi1": 1.0}, **probe(0.4, 0.3 + seed / 10))})
               for mix in ("tg_2xomi1_text", "tg_8xomi1_text") for seed in (0, 1, 2)]
    meta = {"config": "quickstart", "grid": [], "overrides": [], "git_commit": "abc", "wall_seconds": 60.0,
            "invocations": 1}
    summary = write_study_report(STUDIES["failure"], out, entries, meta)
    first = summary["results"][0]
    assert first["before"]["forced/tinygsm"]["mean"] == pytest.approx(0.6) and first["before"]["forced/tinygsm"]["n"] == 3
    assert first["after"]["forced/omi1"]["mean"] == pytest.approx(0.4)
    assert first["after"]["outside_winner"]["mean"] == 0.0 and first["before"]["outside_winner"]["mean"] == pytest.approx(0.4)
    # through RL: forced omi1 accuracy 30% (one shared model) -> 30/40/50% over seeds: the interval [30, 50] holds the
    # value before, so not established; pass@1 0.3 -> 0.35 for every seed is
    moves = {(c["group"], c["metric"]): c for c in summary["changes"]}
    assert moves[("data.mixture=tg_2xomi1_text", "forced/omi1")]["established"] is False
    assert moves[("data.mixture=tg_2xomi1_text", "pass@1")]["established"] is True
    assert "data.mixture=tg_2xomi1_text [synthetic_test]: pass@1 0.3 -> 0.35 through RL" in "\n".join(summary["difference_lines"])
    # results.md: the study's table, each number before -> after with its interval; formats no run probed are left out
    table = (out / "results.md").read_text().splitlines()
    assert table[2].startswith("| group | dataset | seeds | pass@1 | forced/tinygsm | forced/omi1 | share/omi1 |")
    row = table[4].split(" | ")
    assert row[0] == "| data.mixture=tg_2xomi1_text" and row[2] == "3"
    assert row[4] == "60.0% [50.0, 70.0] -> 40.0% [40.0, 40.0]"  # after RL every seed is at 40%: no spread
    # the error table: each category's share of ALL answers (5 of 10 answers a wrong operation), adding up to 1 - pass@1
    errors = table[table.index("| group | dataset |  | code_crashed | wrong_operation |"):]
    assert errors[2] == "| data.mixture=tg_2xomi1_text | synthetic_test | before | 20.0% [20.0, 20.0] | 50.0% [50.0, 50.0] |"
    fig = STUDIES["failure"].figure(_groups(out, entries), "synthetic_test")
    forced_ax = fig.axes[1]
    assert [t.get_text() for t in forced_ax.get_xticklabels()] == ["tg_2xomi1_text", "tg_8xomi1_text"]


def test_refinement_figure_follows_each_formats_rollout_metrics_over_steps(tmp_path):
    out = tmp_path / "refinement"
    entries = []
    for mix, fmt, key in (("tg", "tinygsm", "within/tinygsm/n_variables"), ("omi1", "omi1", "within/omi1/code_lines")):
        for seed in (0, 1):
            name = f"data.mixture={mix},rl.seed={seed}"
            entries.append(fake_cell(out, name, {"data.mixture": mix, "rl.seed": seed}, {"rl": {"algo": "grpo"}},
                                     {0: ds(0.3, {fmt: 1.0}), 2: ds(0.5, {fmt: 1.0})}))
            # a stray text sample at step 2: not the format these runs write, so not drawn
            rows = [{"step": s, key: 4.0 + s + seed, "within/text/length": 30.0 if s == 2 else None} for s in (1, 2)]
            (out / "cells" / name / "rl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = STUDIES["refinement"].figure(_groups(out, entries), "synthetic_test")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["data.mixture=tg · tinygsm/n_variables", "data.mixture=tg · greedy pass@1 (synthetic_test)",
                      "data.mixture=omi1 · omi1/code_lines", "data.mixture=omi1 · greedy pass@1 (synthetic_test)"]
    assert fig.axes[0].lines[0].get_ydata() == pytest.approx([5.5, 6.5])  # mean of the two seeds per step


# ------------------------------------------------------------------------------------------------- issue 20: pilots, maps, fairness
def test_lowest_val_loss_rule_chooses_per_group_and_waits_for_a_group_still_running():
    from echochamber.study_results import lowest_val_loss

    def res(preset, lr, loss, finished=True):
        return {"values": {"model.preset": preset, "pretrain.lr": lr}, "val_loss": loss, "finished": finished}

    results = [res("olmo-tiny", 1e-3, 0.30), res("olmo-tiny", 3e-3, 0.26), res("olmo-tiny", 1e-2, 0.28),
               res("olmo-12m", 1e-3, 0.25), res("olmo-12m", 3e-3, 0.24, finished=False)]
    choice, lines = lowest_val_loss("model.preset", "pretrain.lr")(results)
    assert choice == {"olmo-tiny": 3e-3}  # the 12M group waits: one of its rates has not finished
    assert lines[0].startswith("model.preset=olmo-tiny: pretrain.lr=0.003 (")
    assert lines[1].startswith("model.preset=olmo-12m: not decided, 1 of 2 finished")


def test_a_pretraining_pilot_only_pretrains_and_its_rule_picks_the_lowest_validation_loss(tmp_path, monkeypatch,
                                                                                          capsys):
    from echochamber import studies
    from echochamber.runio import read_metrics

    pilot = studies.PretrainPilot("tiny_rates", "which rate?", "the paper: 1e-3", "smoke", ("pretrain.lr=1e-3,3e-2",),
                                  ("pretrain.max_steps=12", "pretrain.eval_every=6", "pretrain.ckpt_every=6"),
                                  by="model.preset", choose="pretrain.lr")
    monkeypatch.setitem(studies.STUDIES, "tiny_rates", pilot)
    out = tmp_path / "pilot"
    summary = studies.run_study("tiny_rates", out)
    assert not list(out.glob("cells/*/rl"))  # nothing ran RL
    losses = {r["values"]["pretrain.lr"]: read_metrics(out / r["pretrained"])[-1]["val_loss"]
              for r in summary["results"]}
    assert len(losses) == 2 and all(r["finished"] for r in summary["results"]) and summary["complete"]
    assert summary["choice"] == {"olmo-tiny": min(losses, key=losses.get)}
    assert json.loads((out / "study.json").read_text())["choice"] == summary["choice"]
    assert (out / "study_tiny_rates.png").exists() and "which rate?" in (out / "report.html").read_text()
    capsys.readouterr()
    again = studies.run_study("tiny_rates", out)  # resumes: both pretrained earlier, nothing runs again
    assert capsys.readouterr().out.count("pretrained earlier, skipped") == 2
    assert again["choice"] == summary["choice"] and again["invocations"] == 2


def test_a_study_waiting_for_a_pilot_refuses_to_run_and_says_what_to_run_first(tmp_path, monkeypatch):
    import dataclasses

    from echochamber.cli import main

    # (scale and algorithms wait so until their pilots' choices are filled in: SCALE_RATES, ALGORITHMS_CRITIC_RATIO)
    waiting = dataclasses.replace(STUDIES["collapse"], name="waiting",
                                  blocked="waiting waits for its pilot: run `echochamber study collapse` first")
    monkeypatch.setitem(STUDIES, "waiting", waiting)
    with pytest.raises(SystemExit) as e:
        main(["study", "waiting", "--out", str(tmp_path / "waiting"), "--dry-run"])
    assert "echochamber study collapse" in str(e.value.code) and not (tmp_path / "waiting").exists()


def test_the_course_of_a_run_is_read_on_the_problems_every_evaluation_answered(tmp_path):
    from echochamber.report import load_run
    from echochamber.study_results import common_pass1, run_course

    out = tmp_path / "s"
    # the ends answer 20 problems, the evaluation between them the first 10: the curve uses those 10 throughout
    fake_cell(out, "c", {}, {"rl": {}}, {0: ds(0.1, {"text": 1.0}, problems=20),
                                          4: ds(0.8, {"omi1": 1.0}, problems=10),
                                          8: ds(0.5, {"omi1": 1.0}, problems=20)}, greedy_rows=True)
    run = load_run(out / "cells" / "c" / "rl")
    assert common_pass1(run, "synthetic_test") == pytest.approx({0: 0.1, 4: 0.8, 8: 0.5})
    course = run_course(run, "synthetic_test")
    assert course["peak_pass@1"] == pytest.approx(0.8) and course["fall_from_peak"] == pytest.approx(0.3)
    assert course["collapse_step"] == 4


def test_best_of_reports_each_algorithm_at_the_rate_with_its_highest_mean_pass1(tmp_path):
    from echochamber.study_results import best_of, best_table

    out = tmp_path / "s"
    entries = []
    for algo, rate, finals in (("grpo", "1e-4", (0.6, 0.7)), ("grpo", "3e-4", (0.8, 0.9)), ("ei", "1e-4", (0.5, 0.5)),
                               ("ei", "3e-4", (0.4, 0.2))):
        for seed, final in enumerate(finals):
            name = f"rl.algo={algo},rl.lr={rate},rl.seed={seed}"
            entries.append(fake_cell(out, name, {"rl.algo": algo, "rl.lr": float(rate), "rl.seed": seed},
                                     {"rl": {"algo": algo}}, {0: ds(0.2, {"text": 1.0}), 4: ds(final, {"omi1": 1.0})},
                                     greedy_rows=True))
    results = write_study_report(STUDIES["ppo_critic"], out, entries, {"config": "q", "grid": [], "overrides": [],
                                 "git_commit": "abc", "wall_seconds": 1.0, "invocations": 1})["results"]
    best = {g["values"]["rl.algo"]: g for g in best_of(results, "rl.algo")}
    assert best["grpo"]["values"]["rl.lr"] == 3e-4 and best["ei"]["values"]["rl.lr"] == 1e-4
    header, rows = best_table(results, "rl.algo", ("pass@1", "fall_from_peak"))
    assert header[:3] == ["rl.algo", "dataset", "at its best setting"]
    assert rows[0][2] == "rl.lr=0.0003" and rows[0][4].startswith("85.0% [80.0, 90.0]")


def test_scale_map_colours_each_cell_by_the_forced_gap_and_names_the_winner(tmp_path):
    out = tmp_path / "s"
    entries = []
    for preset in ("olmo-tiny", "olmo-small"):
        for n in (20, 50):
            text_acc = 0.8 if n == 20 else 0.2  # text the accurate format in the easy world, code in the hard one
            probe = {"tinygsm": {"forced_accuracy": 0.5}, "omi1": {"forced_accuracy": 0.4},
                     "text": {"forced_accuracy": text_acc}}
            won = "text" if n == 20 else "tinygsm"
            for seed in (0, 1):
                name = f"seed={seed},model.preset={preset},data.synthetic.max_number={n}"
                entries.append(fake_cell(out, name, {"seed": seed, "model.preset": preset,
                                                     "data.synthetic.max_number": n},
                                         {"model": {"preset": preset}},
                                         {0: ds(0.3, {"text": 0.5, "tinygsm": 0.5}, probe=probe),
                                          24: ds(0.6, {won: 1.0})}))
    fig = STUDIES["scale"].figure(_groups(out, entries), "synthetic_test")
    ax = fig.axes[0]
    gap = ax.images[0].get_array()
    assert gap.shape == (2, 2) and gap[0, 0] == pytest.approx(0.3) and gap[0, 1] == pytest.approx(-0.3)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts.count("text 2/2\n30% -> 60%") == 2 and texts.count("tinygsm 2/2\n30% -> 60%") == 2


def test_ppo_critic_figure_draws_the_value_mean_against_the_reward_mean(tmp_path):
    out = tmp_path / "s"
    entry = fake_cell(out, "rl.seed=0", {"rl.seed": 0}, {"rl": {"algo": "ppo"}},
                      {0: ds(0.2, {"text": 1.0}), 2: ds(0.5, {"omi1": 1.0})}, greedy_rows=True)
    (out / "cells" / "rl.seed=0" / "rl" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward_mean": r, "critic/value_mean": v, "critic/value_clip_frac": 0.01})
        + "\n" for s, r, v in ((1, 0.2, 0.0), (2, 0.4, 0.1))))
    fig = STUDIES["ppo_critic"].figure(_groups(out, [entry]), "synthetic_test")
    value_ax = fig.axes[1]
    ys = sorted(line.get_ydata().tolist() for line in value_ax.lines)
    assert ys == [pytest.approx([0.0, 0.1]), pytest.approx([0.2, 0.4])]

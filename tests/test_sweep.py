"""echochamber sweep: grid parsing, cells and their shared pretraining, grouping over seeds, the sweep report, and
(one smoke sweep, killed mid-cell and run again) skipping finished cells and resuming the unfinished one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from echochamber import sweep
from echochamber.cli import build_parser, main
from echochamber.report import _eval_series, fig_sweep_format_shares, load_run, seed_band, write_sweep_report
from echochamber.sweep import SweepError, cell_name, expand_grid, group_over_seeds, parse_grid, plan_cells, split_values


# ------------------------------------------------------------------------------------------------- the grid
def test_grid_values_split_on_top_level_commas_only():
    assert split_values("grpo,ppo,ei") == ["grpo", "ppo", "ei"]
    assert split_values("[synthetic:test,gsm8k:test],[x]") == ["[synthetic:test,gsm8k:test]", "[x]"]
    assert split_values("{a: 1, b: 2},3") == ["{a: 1, b: 2}", "3"]
    assert split_values("(olmo-tiny,[a,b]),(x,y)") == ["(olmo-tiny,[a,b])", "(x,y)"]


def test_grid_is_the_cartesian_product_last_axis_fastest():
    grid = parse_grid(["rl.algo=grpo,ppo,ei", "seed=0,1"])
    cells = expand_grid(grid)
    assert len(cells) == 6
    assert cells[:3] == [{"rl.algo": "grpo", "seed": "0"}, {"rl.algo": "grpo", "seed": "1"},
                         {"rl.algo": "ppo", "seed": "0"}]
    assert [cell_name(c) for c in cells[:2]] == ["rl.algo=grpo,seed=0", "rl.algo=grpo,seed=1"]
    assert expand_grid([]) == [{}] and cell_name({}) == "base"
    # A folder name never holds a path separator or a space.
    assert cell_name({"rl.init": "runs/a b/model"}) == "rl.init=runs_a_b_model"


def test_every_bad_grid_argument_is_one_line():
    with pytest.raises(SweepError) as e:
        parse_grid(["rl.lr", "out_dir=a,b", "seed=0,1", "seed=2", "rl.lr=1,,2", "rl.kl_coef=0,0"])
    lines = str(e.value).splitlines()
    assert len(lines) == 5
    for line, what in zip(lines, ["expected KEY=V1,V2", "out_dir cannot be swept", "already a grid key",
                                  "empty value", "repeated"]):
        assert what in line


def test_bad_values_are_caught_for_all_cells_before_anything_runs(tmp_path):
    out = tmp_path / "sweep"
    grid = parse_grid(["rl.lr=1e-4,fast", "seed=0,one", "rl.kl_coef=0,0.01"])
    with pytest.raises(SweepError) as e:
        plan_cells("smoke", grid, ["rl.steps=2"], out)
    lines = str(e.value).splitlines()
    assert len(lines) == 2  # one per bad value, not one per cell it appears in (4 + 4)
    assert lines[0].startswith("--grid rl.lr=fast:") and "rl.lr" in lines[0]
    assert lines[1].startswith("--grid seed=one:") and "integer" in lines[1]
    with pytest.raises(SweepError, match="^config: .*unknown key 'rl.nope'"):
        plan_cells("smoke", grid, ["rl.nope=1"], out)
    with pytest.raises(SweepError) as e:  # through run_sweep: a grid typo and a shared-override typo together
        sweep.run_sweep("smoke", ["rl.lr"], ["rl.nope=1"], out)
    assert len(str(e.value).splitlines()) == 2
    args = build_parser().parse_args(["sweep", "--config", "smoke", "--grid", "seed=x,1", "--out", str(out)])
    with pytest.raises(SystemExit) as e:  # the command line: the same lines, no traceback
        args.fn(args)
    assert str(e.value.code).splitlines() == ["sweep: --grid seed=x: smoke.seed: expected an integer, got 'x'"]
    assert not out.exists()  # nothing ran, nothing was written


def test_cells_share_data_and_pretraining_by_their_settings(tmp_path):
    out = tmp_path / "sweep"
    cells = plan_cells("smoke", parse_grid(["seed=0,1", "rl.lr=1e-4,2e-4"]), [], out)
    by = {c.name: c for c in cells}
    a, b, c = by["seed=0,rl.lr=1e-4"], by["seed=0,rl.lr=2e-4"], by["seed=1,rl.lr=1e-4"]
    assert a.pretrain_dir == b.pretrain_dir != c.pretrain_dir  # RL settings do not change the pretrained model
    assert a.cfg.rl.init == b.cfg.rl.init == str(a.pretrain_dir / "model")
    assert a.cfg.pretrain.data_dir == str(a.data_dir) and a.data_dir.parent == out / "data"
    assert a.cfg.out_dir == str(out / "cells" / "seed=0,rl.lr=1e-4")
    assert a.overrides() == {"seed": 0, "rl.lr": 1e-4}  # as the config parsed them
    # Pretraining settings split the pretrained models but not the dataset; a given rl.init pretrains nothing.
    cells = plan_cells("smoke", parse_grid(["pretrain.lr=1e-3,3e-3"]), [], out)
    assert cells[0].data_dir == cells[1].data_dir and cells[0].pretrain_dir != cells[1].pretrain_dir
    (cell,) = plan_cells("smoke", [], ["rl.init=/models/m1"], out)
    assert cell.pretrain_dir is None and cell.data_dir is None and cell.cfg.rl.init == "/models/m1"


def test_a_cell_folder_run_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "sweep"
    (cell,) = plan_cells("smoke", parse_grid(["rl.lr=1e-4"]), [], out)
    (cell.out).mkdir(parents=True)
    (cell.out / "cell.json").write_text(json.dumps({"config": cell.requested}))
    plan_cells("smoke", parse_grid(["rl.lr=1e-4"]), [], out)  # same settings: fine
    with pytest.raises(SweepError, match=r"cell rl.lr=1e-4: .* other settings \(rl.steps differ\)"):
        plan_cells("smoke", parse_grid(["rl.lr=1e-4"]), ["rl.steps=5"], out)


def test_cells_that_differ_only_in_seeds_form_one_group():
    cells = [{"name": n, "overrides": o} for n, o in [
        ("a", {"rl.algo": "grpo", "seed": 0}), ("b", {"rl.algo": "grpo", "seed": 1}),
        ("c", {"rl.algo": "ppo", "seed": 0}), ("d", {"rl.algo": "grpo", "seed": 2, "rl.seed": 5})]]
    groups = group_over_seeds(cells)
    assert [(name, [c["name"] for c in members]) for name, members in groups] == [
        ("rl.algo=grpo", ["a", "b", "d"]), ("rl.algo=ppo", ["c"])]
    assert group_over_seeds([{"overrides": {"seed": 0}}, {"overrides": {"seed": 1}}])[0][0] == "all cells"


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path / "sweep"
    missing = tmp_path / "no-model"
    cells = sweep.run_sweep("smoke", [f"rl.init={missing}/a,{missing}/b"], [], out, progress=False)
    assert [c["status"] for c in cells] == ["failed", "failed"]  # the second cell ran although the first failed
    assert all("FileNotFoundError" in c["error"] and c["pretrained"] is None for c in cells)
    assert json.loads((out / "sweep.json").read_text()) == cells
    assert "Traceback" in (out / cells[0]["out_dir"] / "error.log").read_text()
    assert not (out / "pretrained").exists()  # rl.init given: nothing to pretrain
    assert "<td>failed: FileNotFoundError" in (out / "report.html").read_text()
    assert capsys.readouterr().out.count(": FAILED: FileNotFoundError") == 2


# ------------------------------------------------------------------------------------------------- dry run
def snapshot(root: Path) -> dict[str, int]:
    """Every path under root (folders too) with its modification time: a dry run must change none of it."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_dry_run_prints_every_cell_and_an_estimate_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    (tmp_path / "elsewhere.txt").write_text("a file the dry run must leave alone")
    before = snapshot(tmp_path)
    main(["sweep", "--config", "smoke", "--grid", "rl.kl_coef=0,0.001", "--grid", "seed=0,1", "--out", str(out),
          "--dry-run"])  # returns: exit status 0
    printed = capsys.readouterr().out
    assert not out.exists() and snapshot(tmp_path) == before  # not even the sweep folder
    cells = plan_cells("smoke", parse_grid(["rl.kl_coef=0,0.001", "seed=0,1"]), [], out)
    for i, cell in enumerate(cells):
        block = printed.split(f"[cell {i + 1}/4] {cell.name}\n")[1].split("\n[cell")[0]
        other = next(c.name for c in cells if c.pretrain_dir == cell.pretrain_dir and c is not cell)
        assert f"  overrides   rl.kl_coef={cell.cfg.rl.kl_coef}, seed={cell.cfg.seed}" in block
        assert f"  pretrained  pretrained/{cell.pretrain_dir.name}: not started; shared with {other}" in block
        assert f"  RL          cells/{cell.name}/rl: not started" in block
        assert "  time left   " in block and "timed now" in block and "RL at most " in block
    # The shared pretraining is counted at the first of its two cells only.
    assert printed.count("pretraining 0 here (the shared model is counted at the first cell that uses it)") == 2
    assert "time left in all: " in printed and "optimizer step, 16 x 128 tokens" in printed
    assert "decoding, 8 prompts x 4 rows" in printed and "upper bounds" in printed


def test_dry_run_of_a_bad_grid_fails_like_the_sweep(tmp_path):
    out = tmp_path / "sweep"
    for extra in ([], ["--dry-run"]):
        with pytest.raises(SystemExit) as e:
            main(["sweep", "--config", "smoke", "--grid", "seed=x,1", "--grid", "rl.lr", "--out", str(out), *extra])
        assert str(e.value.code).splitlines() == [
            "sweep: --grid 'rl.lr': expected KEY=V1,V2,..., e.g. --grid rl.kl_coef=0,0.001"]
        with pytest.raises(SystemExit) as e:
            main(["sweep", "--config", "smoke", "--grid", "seed=x,1", "--out", str(out), *extra])
        assert str(e.value.code).splitlines() == ["sweep: --grid seed=x: smoke.seed: expected an integer, got 'x'"]
    assert not out.exists()


def fake_finished_cell(out: Path, cell, step_seconds: dict[str, float], wall: float, eval_steps: list[int]) -> None:
    """The files a finished cell leaves that the dry run reads: its shared dataset and pretrained model, and its RL
    run's summary.json, metrics.jsonl (time/* per step) and eval/step_N.json."""
    (cell.data_dir / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
    (cell.data_dir / "manifest.json").write_text(json.dumps({"vocab_size": 512, "caches": {}}))
    (cell.pretrain_dir / "model").mkdir(parents=True, exist_ok=True)
    rl = cell.out / "rl"
    (rl / "eval").mkdir(parents=True)
    for step in eval_steps:
        (rl / "eval" / f"step_{step:06d}.json").write_text(json.dumps({"step": step, "datasets": {}}))
    times = {f"time/{k}": v for k, v in step_seconds.items()}
    (rl / "metrics.jsonl").write_text("".join(json.dumps({"step": s, **times}) + "\n"
                                              for s in range(1, cell.cfg.rl.steps + 1)))
    (rl / "summary.json").write_text(json.dumps({
        "dataset": "synthetic_test", "pass1_before": 0.25, "pass1_after": 0.5, "wall_seconds": wall,
        "format_share_before": {"text": 1.0}, "format_share_after": {"omi1": 0.75, "text": 0.25}}))


def test_dry_run_reports_what_finished_and_times_the_rest_from_its_records(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--grid", "rl.seed=0,1,2"]
    done, fresh, stopped = plan_cells("smoke", parse_grid(["rl.seed=0,1,2"]), [], out)
    # rl.seed=0 finished: 3 steps of 4 s and 3 evaluations in 50 s, so 38 s of evaluations, 12.7 s each
    fake_finished_cell(out, done, {"generation": 2.0, "reward": 1.0, "advantages": 0.5, "update": 0.5}, 50.0,
                       [0, 2, 3])
    (stopped.out / "rl" / "checkpoints").mkdir(parents=True)  # rl.seed=2 stopped after its step-2 checkpoint
    (stopped.out / "rl" / "checkpoints" / "latest.json").write_text(json.dumps({"step": 2, "path": "step_000002"}))
    before = snapshot(tmp_path)
    main(["sweep", "--config", "smoke", *grid, "--out", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert snapshot(tmp_path) == before
    key = done.pretrain_dir.name
    assert f"  dataset     data/{done.data_dir.name}: built" in printed
    assert f"  pretrained  pretrained/{key}: finished (model/); shared with rl.seed=1, rl.seed=2" in printed
    assert ("  RL          cells/rl.seed=0/rl: finished (summary.json) (pass@1 25.0% -> 50.0%, formats text 100% -> "
            "omi1 75%, text 25%, RL 0.8 min)") in printed
    assert "  time left   0 s: pretraining 0 (finished); RL 0 (finished)" in printed
    # The cells that differ from it only in their seed take its times: 3 x 4 s + 3 x 12.7 s
    assert "  RL          cells/rl.seed=1/rl: not started" in printed
    assert "RL 50 s (3 steps x 4 s + 3 evaluations, 38 s in all; recorded in cells/rl.seed=0/rl)" in printed
    assert "  RL          cells/rl.seed=2/rl: stopped after step 2 of 3 (checkpoints/latest.json)" in printed
    assert "RL 17 s (1 step x 4 s + 1 evaluation, 13 s in all; recorded in cells/rl.seed=0/rl)" in printed
    assert "time left in all: 1.1 min = pretraining 0 s (each shared model once) + RL 1.1 min" in printed
    assert "timed now on this machine" not in printed  # everything came from the records


# ------------------------------------------------------------------------------------------------- the report
def fake_rl_run(root: Path, shares: dict[int, dict[str, float]], pass1: dict[int, float]) -> Path:
    """An RL folder with only eval/step_N.json, as `echochamber rl` writes them."""
    for step, share in shares.items():
        rec = {"step": step, "datasets": {"synthetic_test": {"pass@1": pass1[step], "format_share": share}}}
        (root / "eval").mkdir(parents=True, exist_ok=True)
        (root / "eval" / f"step_{step:06d}.json").write_text(json.dumps(rec))
    return root


def two_seeds(tmp_path: Path) -> list:
    s0 = fake_rl_run(tmp_path / "s0", {0: {"text": 0.8, "omi1": 0.2}, 4: {"text": 0.2, "omi1": 0.8}}, {0: 0.1, 4: 0.5})
    # Seed 1 is still training: evaluated at step 0 only.
    s1 = fake_rl_run(tmp_path / "s1", {0: {"text": 0.6, "omi1": 0.4}}, {0: 0.3})
    return [load_run(s0), load_run(s1)]


def test_seed_band_is_mean_and_min_max_over_the_runs_that_reached_a_step(tmp_path):
    steps, per_label, (acc, acc_lo, acc_hi) = seed_band(two_seeds(tmp_path), _eval_series("synthetic_test",
                                                                                           "format_share"))
    assert steps.tolist() == [0, 4]
    mean, lo, hi = per_label["text"]
    np.testing.assert_allclose(mean, [0.7, 0.2])
    np.testing.assert_allclose(lo, [0.6, 0.2])
    np.testing.assert_allclose(hi, [0.8, 0.2])
    np.testing.assert_allclose(acc, [0.2, 0.5])
    np.testing.assert_allclose(acc_hi - acc_lo, [0.2, 0.0])


def test_sweep_figure_has_one_panel_per_group_with_bands_over_seeds(tmp_path):
    runs = two_seeds(tmp_path)
    single = load_run(fake_rl_run(tmp_path / "other", {0: {"text": 1.0}, 4: {"omi1": 1.0}}, {0: 0.0, 4: 0.9}))
    fig = fig_sweep_format_shares([("rl.lr=1e-4", runs), ("rl.lr=2e-4", [single]), ("rl.lr=3e-4", [])],
                                  "synthetic_test")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["rl.lr=1e-4 · 2 runs", "rl.lr=2e-4 · 1 run", "rl.lr=3e-4 · 0 runs"]
    bands = [sum(isinstance(c, PolyCollection) for c in ax.collections) for ax in panels]
    assert bands == [3, 0, 0]  # text, omi1 and pass@1 bands where there are seeds to spread over
    assert len(panels[0].lines) == 3  # a mean line per format and pass@1
    assert fig_sweep_format_shares([("g", runs)], "gsm8k:test") is None


def test_sweep_report_lists_every_cell_and_draws_those_started(tmp_path):
    runs_root = tmp_path / "sweep"
    fake_rl_run(runs_root / "cells" / "rl.lr=1" / "rl", {0: {"text": 1.0}, 2: {"omi1": 1.0}}, {0: 0.0, 2: 0.5})
    cells = [{"name": "rl.lr=1", "overrides": {"rl.lr": 1.0}, "status": "done", "wall_seconds": 90.0,
              "out_dir": "cells/rl.lr=1", "pass1_before": 0.0, "pass1_after": 0.5,
              "format_share_before": {"text": 1.0, "omi1": 0.0}, "format_share_after": {"text": 0.0, "omi1": 1.0}},
             {"name": "rl.lr=<b>2</b>", "overrides": {"rl.lr": "<b>2</b>"}, "status": "pending",
              "wall_seconds": None, "out_dir": "cells/rl.lr=2", "pass1_before": None, "pass1_after": None,
              "format_share_before": None, "format_share_after": None}]
    path = write_sweep_report(runs_root, cells, group_over_seeds(cells))
    page = path.read_text()
    assert path == runs_root / "report.html" and (runs_root / "sweep_format_shares_synthetic_test.png").exists()
    assert page.count("data:image/png;base64,") == 1
    assert "<td>rl.lr=1</td>" in page and "<td>pending</td>" in page and "0 → 0.5" in page
    assert "<b>2</b>" not in page and "&lt;b&gt;2&lt;/b&gt;" in page  # values are escaped


# ------------------------------------------------------------------------------------------------- a real sweep
def mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_smoke_sweep_shares_pretraining_skips_finished_cells_and_resumes_a_killed_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    args = ["--config", "smoke", "--grid", "rl.kl_coef=0,0.001", "--out", str(out)]
    first, second = out / "cells" / "rl.kl_coef=0", out / "cells" / "rl.kl_coef=0.001"

    # 1. The whole sweep in a process of its own, killed (SIGKILL, no cleanup) once the second cell's RL has
    #    written its first checkpoint (step 2 of 3).
    proc = subprocess.Popen([sys.executable, "-m", "echochamber", "sweep", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not (second / "rl" / "checkpoints" / "latest.json").exists():
        assert time.monotonic() < deadline, "the sweep never reached the second cell's checkpoint"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sandbox and math-verify workers are in its process group
    stdout = proc.communicate()[0]
    assert not (second / "rl" / "summary.json").exists(), "the second cell finished before it could be killed"
    assert stdout.count("  pretraining ") == 1  # one pretraining for both cells
    # Every evaluation of the first cell on stdout as it came, named by the cell, then the cell's result line.
    first_cell = stdout[:stdout.index("[cell 2/2]")].splitlines()
    evals = [line for line in first_cell if ": eval step " in line]
    assert [line.split(": ")[:2] for line in evals] == [["[cell 1/2] rl.kl_coef=0", f"eval step {s}"]
                                                        for s in (0, 2, 3)]
    assert all("synthetic_test  n=24" in line and "pass@1 " in line and "formats: " in line for line in evals)
    assert first_cell[-2] == evals[-1] and first_cell[-1].startswith("[cell 1/2] rl.kl_coef=0: pass@1 ")
    status = {c["name"]: c["status"] for c in json.loads((out / "sweep.json").read_text())}
    assert status == {"rl.kl_coef=0": "done", "rl.kl_coef=0.001": "running"}
    (pretrained,) = (out / "pretrained").iterdir()
    pre_steps = [json.loads(l)["step"] for l in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert pre_steps == sorted(set(pre_steps)) and pre_steps[-1] == 60
    before = mtimes(out)

    # 2. The same command again, in this process, counting the stages it runs.
    calls = {"build_dataset": 0, "pretrain": 0, "run_rl": 0}
    for name in calls:
        def counted(*a, _name=name, _fn=getattr(sweep, name), **kw):
            calls[_name] += 1
            return _fn(*a, **kw)
        monkeypatch.setattr(sweep, name, counted)
    cells = sweep.run_sweep("smoke", ["rl.kl_coef=0,0.001"], [], out, progress=False)
    assert calls == {"build_dataset": 1, "pretrain": 0, "run_rl": 1}  # data found complete; RL of cell 2 only
    log = capsys.readouterr().out
    assert "[cell 1/2] rl.kl_coef=0: finished earlier, skipped" in log and "[cell 2/2] rl.kl_coef=0.001: resuming" in log
    # The resumed cell prints its one new evaluation (those of the killed attempt were printed then).
    assert [line.split(": ")[1] for line in log.splitlines() if ": eval step " in line] == ["eval step 3"]
    after = mtimes(out)
    for f in before:  # nothing of the finished cell, the shared model or the resumed cell's first steps was redone
        if f.startswith(("cells/rl.kl_coef=0/", "pretrained/")) or f in (
                "cells/rl.kl_coef=0.001/rl/eval/step_000000.json", "cells/rl.kl_coef=0.001/rl/eval/step_000002.json"):
            assert after.get(f) == before[f], f
    steps = [json.loads(l)["step"] for l in (second / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    saved = json.loads((out / "sweep.json").read_text())
    assert saved == cells and [c["status"] for c in saved] == ["done", "done"]
    for c, kl, name in zip(saved, (0.0, 0.001), ("rl.kl_coef=0", "rl.kl_coef=0.001")):
        assert c["name"] == name and c["overrides"] == {"rl.kl_coef": kl} and c["out_dir"] == f"cells/{name}"
        assert c["pretrained"] == f"pretrained/{pretrained.name}"
        assert 0 <= c["pass1_before"] <= 1 and 0 <= c["pass1_after"] <= 1 and c["wall_seconds"] > 0
        for key in ("format_share_before", "format_share_after"):
            assert sum(c[key].values()) == pytest.approx(1.0)
        summary = json.loads((out / c["out_dir"] / "rl" / "summary.json").read_text())
        assert c["pass1_after"] == summary["pass1_after"] and c["wall_seconds"] == summary["wall_seconds"]
    init = {json.loads((d / "rl" / "rl_run.json").read_text())["config"]["rl"]["init"] for d in (first, second)}
    assert init == {str(pretrained / "model")}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1  # one figure (one eval dataset), a panel per group
    assert "<td>rl.kl_coef=0.0</td><td>1/1</td>" in page and "<td>rl.kl_coef=0.001</td><td>1/1</td>" in page

    # 3. Once more: every cell is finished, nothing trains and no run file changes.
    calls.update(dict.fromkeys(calls, 0))
    again = mtimes(out)
    sweep.run_sweep("smoke", ["rl.kl_coef=0,0.001"], [], out, progress=False)
    assert calls == {"build_dataset": 0, "pretrain": 0, "run_rl": 0}
    changed = {f for f, t in mtimes(out).items() if again.get(f) != t}
    assert changed <= {"sweep.json", "report.html", "sweep_format_shares_synthetic_test.png", ".lock"}

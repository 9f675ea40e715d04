"""report.py: figures and a self-contained HTML page from fake run folders laid out as the contract says."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from echochamber.report import (FIGURES, _eval_series, _pick, _spread, fig_format_shares_eval, fig_training,
                                load_run, write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('pwned')</script>"
STEPS = 5


def shares_at(t: float) -> dict[str, float]:
    """Format shares drifting towards tinygsm as t goes 0 -> 1 (the echo chamber in miniature)."""
    tg = 0.3 + 0.6 * t
    return {"tinygsm": tg, "omi1": (1 - tg) * 0.5, "text": (1 - tg) * 0.4, "unknown": (1 - tg) * 0.1}


def make_run(root: Path, name: str, kl_coef: float, gain: float, *, evals: bool = True, rollouts: bool = True,
             summary: bool = True, nested_summary: bool = False, algo: str = "grpo") -> Path:
    """Write a fake RL run folder: metrics.jsonl, rollouts, eval json + greedy jsonl, summary, config, metadata."""
    run = root / name
    run.mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    config = {"seed": 7, "rl": {"algo": algo, "kl_coef": kl_coef, "lr": 1e-6}, "model": {"preset": "olmo-tiny"}}
    (run / "rl_config.yaml").write_text(yaml.safe_dump(config))
    (run / "rl_run.json").write_text(json.dumps({"stage": "rl", "git_commit": "abc1234+dirty", "time": "2025-01-01",
                                                 "argv": ["echochamber", "rl"], "versions": {"torch": "2.13"},
                                                 "config": config}))
    metrics = []
    for step in range(1, STEPS + 1):
        t = step / STEPS
        acc = 0.2 + gain * t
        rec = {"step": step, "reward_mean": acc, "accuracy": acc, "kl_k1": 0.01 * t, "kl_k3": 0.008 * t,
               "entropy": 0.9 - 0.3 * t, "response_len": 120 - 20 * t, "truncation_rate": 0.05, "loss": 0.1}
        rec.update({f"format_share/{k}": v for k, v in shares_at(t).items()})
        rec.update({f"format_acc/{k}": min(1.0, acc + d) for k, d in zip(shares_at(t), (0.1, -0.1, 0.0, -0.2))})
        metrics.append(rec)
        if rollouts:
            rows = [{"question": f"Q{step}.{i}: how many apples?",
                     "response": f"def simple_math_problem():\n    return {i}",
                     "label": lab, "answer": str(i), "gold": "3", "correct": i == 3, "reward": float(i == 3)}
                    for i, lab in enumerate(["tinygsm", "tinygsm", "omi1", "tinygsm", "text", "unknown"])]
            (run / "rollouts").mkdir(exist_ok=True)
            (run / "rollouts" / f"step_{step:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + '{"step": 6, "rew')  # torn tail
    if evals:
        for step in (0, 2, 4):
            t = step / STEPS
            p1 = 0.2 + gain * t + 0.01 * rng.random()
            ds = {"gsm8k": {"n": 6, "k": 8, "pass@1": p1, "pass@k": 0.7 - 0.05 * t, "maj@k": p1 + 0.05,
                            "format_share": shares_at(t), "format_acc": {"tinygsm": p1 + 0.1, "omi1": p1 - 0.1,
                                                                         "text": p1, "unknown": 0.0},
                            "sample_format_share": shares_at(t)},
                  "math500": {"n": 6, "k": 0, "pass@1": p1 / 3, "format_share": shares_at(t / 2),
                              "format_acc": {"tinygsm": p1 / 3}}}
            (run / "eval").mkdir(exist_ok=True)
            (run / "eval" / f"step_{step:06d}.json").write_text(json.dumps({"step": step, "datasets": ds}))
            gen = run / "eval" / f"step_{step:06d}"
            gen.mkdir()
            rows = [{"id": f"g{i}", "question": f"Tom has {i} & <b>bold</b> apples?",
                     "response": EVIL if i == 0 else f"Let's solve.\n<llm-code>\nx = {i}\nx\n</llm-code>",
                     "label": "text" if i == 0 else "omi1", "answer": str(i), "gold": "2", "correct": i == 2}
                    for i in range(4)]
            (gen / "gsm8k_greedy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary and nested_summary:  # per-dataset numbers: the table flattens them to pass1.gsm8k etc.
        (run / "summary.json").write_text(json.dumps({
            "pass1_before": {"gsm8k": 0.2}, "pass1_after": {"gsm8k": round(0.2 + gain, 3)},
            "format_share_before": {"gsm8k": shares_at(0)}, "format_share_after": {"gsm8k": shares_at(1)},
            "wall_seconds": 1234.5}))
    elif summary:  # the shape rl/train.py writes
        (run / "summary.json").write_text(json.dumps({
            "dataset": "gsm8k", "pass1_before": 0.2, "pass1_after": round(0.2 + gain, 3),
            "format_share_before": shares_at(0), "format_share_after": shares_at(1), "wall_seconds": 1234.5}))
    return run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = make_run(root, "kl_0", kl_coef=0.0, gain=0.42, nested_summary=True)
    b = make_run(root, "kl_0.01", kl_coef=0.01, gain=0.31)
    out = root / "report_out"
    return a, b, out, write_report([a, b], out)


def test_report_is_one_self_contained_file_with_every_figure(two_runs):
    a, b, out, page_path = two_runs
    assert page_path == out / "report.html" and page_path.exists()
    page = page_path.read_text()
    assert "http://" not in page and "https://" not in page and "<link" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for stem, _, _ in FIGURES:
        assert f'id="{stem}"' in page, stem
        png = (out / f"{stem}.png").read_bytes()
        assert png[:8] == PNG_MAGIC
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        with Image.open(io.BytesIO(png)) as im:
            assert im.size[0] > 400 and im.size[1] > 200
        # The embedded copy is the same image as the file beside the page.
        assert base64.b64encode(png).decode() in page


def test_sample_browser_escapes_model_text(two_runs):
    page = two_runs[3].read_text()
    assert "id=view" in page and "id=fmt" in page and 'class=sample' in page
    assert EVIL not in page
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "&lt;llm-code&gt;" in page
    assert page.count("<script>") == 1  # only the browser's own
    # Views for both sources, both runs, and the steps that were saved.
    for view in ("kl_0 · eval gsm8k (greedy) · step 4", "kl_0.01 · rollouts · step 5"):
        assert view in page
    assert "✓ correct" in page and "✗ wrong" in page


def test_table_compares_runs(two_runs):
    page = two_runs[3].read_text()
    table = page[page.index("<h2>Summary</h2>"):page.index("<h2>Figures</h2>")]
    assert "<th>kl_0</th>" in table and "<th>kl_0.01</th>" in table
    # pass1 before -> after of each run: nested per dataset (kl_0) and flat (kl_0.01) summaries side by side.
    assert re.search(r"<th>pass1.gsm8k</th><td>0.2 → 0.62</td><td>—</td>", table)
    assert re.search(r"<th>pass1</th><td>—</td><td>0.2 → 0.51</td>", table)
    assert "format_share.gsm8k.tinygsm" in table and "format_share.tinygsm" in table and "0.3 → 0.9" in table
    assert "1234" in table
    row = re.search(r"<tr class=diff><th>config: rl.kl_coef</th><td>([^<]*)</td><td>([^<]*)</td>", table)
    assert row and row.groups() == ("0", "0.01")
    assert "abc1234+dirty" in page


def test_eval_series_reads_what_was_written(two_runs):
    run = load_run(two_runs[0])
    assert run.datasets == ["gsm8k", "math500"]
    assert len(run.metrics) == STEPS  # the torn last line is skipped
    steps, shares, p1 = _eval_series("gsm8k", "format_share")(run)
    assert steps.tolist() == [0, 2, 4]
    assert np.allclose(shares["tinygsm"], [shares_at(s / STEPS)["tinygsm"] for s in (0, 2, 4)])
    assert np.all(np.diff(p1) > 0)
    steps, accs, _ = _eval_series("math500", "format_acc")(run)
    assert list(accs) == ["tinygsm"] and len(steps) == 3


def test_run_without_eval_or_summary_still_renders(tmp_path):
    run = make_run(tmp_path, "fresh", kl_coef=0.0, gain=0.1, evals=False, summary=False)
    page_path = write_report([run])
    assert page_path == run / "report.html"  # one run: the report goes into its folder
    page = page_path.read_text()
    assert "eval/step_*.json (not evaluated yet)" in page and "summary.json (run not finished?)" in page
    assert "pass_at_k: not drawn" in page and "format_shares_eval: not drawn" in page
    assert (run / "format_shares_rollouts.png").read_bytes()[:8] == PNG_MAGIC
    assert (run / "training.png").exists() and not (run / "pass_at_k.png").exists()
    assert "fresh · rollouts · step 1" in page


def test_run_with_only_a_config_renders(tmp_path):
    run = tmp_path / "just_started"
    run.mkdir()
    (run / "rl_config.yaml").write_text("seed: 3\n")
    page = write_report([run], tmp_path / "out").read_text()
    assert "No generations saved" in page and "metrics.jsonl (no RL step logged yet)" in page
    assert "config: seed" in page


@pytest.mark.parametrize("kind", ["absent", "empty_dir", "file"])
def test_not_a_run_folder_is_a_clear_error(tmp_path, kind):
    path = tmp_path / "not_a_run"
    if kind == "empty_dir":
        path.mkdir()
    elif kind == "file":
        path.write_text("hello")
    with pytest.raises(ValueError, match=r"not_a_run is not an RL run folder.*metrics\.jsonl"):
        write_report([path], tmp_path / "out")
    assert not (tmp_path / "out" / "report.html").exists()


def test_pipeline_folder_points_to_its_rl_run(tmp_path):
    make_run(tmp_path / "quickstart", "rl", kl_coef=0.0, gain=0.1)
    with pytest.raises(ValueError, match=r"did you mean .*quickstart/rl\?"):
        load_run(tmp_path / "quickstart")


def test_sample_picking_helpers():
    assert _spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert _spread([1, 2], 6) == [1, 2]
    rows = [{"i": i, "correct": i >= 4} for i in range(6)]
    assert [r["i"] for r in _pick(rows, 3)] == [4, 0, 5]
    assert [r["i"] for r in _pick(rows[:3], 2)] == [0, 1]


def test_step_axis_names_what_the_runs_count(tmp_path):
    """A GRPO run's axis reads "RL step", an Expert Iteration run's "Expert Iteration round" (its step is a round),
    and only a figure holding both says both (it read "RL step (Expert Iteration: round)" for every run)."""
    grpo = load_run(make_run(tmp_path, "grpo", 0.0, 0.3))
    ei = load_run(make_run(tmp_path, "ei", 0.0, 0.3, algo="ei"))
    def xlabels(fig):
        return {ax.get_xlabel() for ax in fig.axes if ax.get_visible() and ax.get_xlabel()}
    assert xlabels(fig_format_shares_eval([grpo])) == {"RL step"}
    assert xlabels(fig_format_shares_eval([ei])) == {"Expert Iteration round"}
    assert xlabels(fig_format_shares_eval([grpo, ei])) == {"RL step", "Expert Iteration round"}  # a panel per run
    assert xlabels(fig_training([grpo, ei])) == {"RL step (Expert Iteration: round)"}  # both on one panel

"""echochamber check: the whole check passes on a CPU with the tiny preset (every part, a real SIGKILL and resume
among them); the config it runs keeps the paper's shapes on synthetic data; a resume that repeats, skips or
changes steps and a memory peak over the plan are failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echochamber import preflight
from echochamber.cli import main
from echochamber.config import load_run_config
from echochamber.memory import MemoryPlan
from echochamber.preflight import check_config, eval_config, memory_figure, resume_figures


def test_the_check_passes_on_a_cpu_with_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "check"
    main(["check", "--config", "smoke", "--out", str(out), "device=cpu", "pretrain.max_steps=4",
          "rl.max_new_tokens=16", "eval.max_new_tokens=16"])  # no SystemExit: every part passed
    lines = capsys.readouterr().out.splitlines()
    parts = [line.strip() for line in lines if line.startswith("  ")]
    names = ["data", "pretrain (4 steps)", "kill and resume", *(f"rl {a} (3 steps)" for a in preflight.ARMS),
             "eval pass@k"]
    assert [p.split(":")[0] for p in parts] == [f"pass  {n}" for n in names]
    assert "tokens/s, MFU n/a on a CPU" in parts[1]
    assert "after the step-2 checkpoint" in parts[2] and "uninterrupted run 0 (allowed 0)" in parts[2]
    assert all("32 rows x 16 new tokens, rollout" in p for p in parts[3:6])  # smoke: 8 prompts x 4 samples
    assert "8 problems x 4 samples" in parts[6] and "pass@4" in parts[6]
    assert lines[-1].startswith(f"check: {len(names)}/{len(names)} parts passed")
    # The killed run died by the signal with its step-2 checkpoint complete, and the resumed one finished it.
    assert [r["step"] for r in map(json.loads, (out / "resume" / "metrics.jsonl").read_text().splitlines())] == \
        [1, 2, 3, 4]
    assert (out / "resume" / "model").is_dir() and (out / "rl_grpo" / "summary.json").exists()


def test_the_check_runs_the_configs_shapes_on_synthetic_data(tmp_path):
    given = load_run_config("paper_150m")
    cfg = check_config(given, tmp_path, 10)
    assert (cfg.data.mixture_kind, cfg.data.seq_len, cfg.data.vocab_size) == ("synthetic", 2048, 32000)
    assert cfg.data.tokenizer is None  # Llama-2's file is not here: a BPE trained on the synthetic text instead
    assert (cfg.model.preset, cfg.model.vocab_size) == ("olmo-150m", 32000)
    assert (cfg.pretrain.batch_size, cfg.pretrain.grad_accum, cfg.pretrain.global_batch) == (16, 4, 0)
    assert (cfg.pretrain.max_steps, cfg.pretrain.ckpt_every) == (10, 5)
    assert cfg.rl.prompts_per_step * cfg.rl.samples_per_prompt == 512 and cfg.rl.max_new_tokens == 1024
    assert cfg.rl.train_source == "synthetic:train" and cfg.rl.init == str(tmp_path / "pretrain" / "model")
    ecfg = eval_config(given, cfg).eval
    assert (ecfg.n_samples, ecfg.max_new_tokens, ecfg.n_problems) == (64, given.eval.max_new_tokens, 7)
    assert eval_config(given, cfg, 8).eval.n_problems == 56  # one full sampler call on each of 8 GPUs
    assert ecfg.datasets == ["synthetic:test"]
    with pytest.raises(ValueError, match="at least 2 steps"):
        preflight.run_check("smoke", ["pretrain.max_steps=1"], tmp_path / "x")
    (tmp_path / "used" / "pretrain").mkdir(parents=True)
    with pytest.raises(ValueError, match="is not empty"):  # an earlier check's runs would resume, not rerun
        preflight.run_check("smoke", [], tmp_path / "used")


def _metrics(run: Path, losses: dict[int, float], model: bool = True) -> Path:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in losses.items()))
    if model:
        (run / "model").mkdir()
    return run


def test_a_resume_that_repeats_skips_or_changes_steps_fails(tmp_path):
    base = _metrics(tmp_path / "a", {1: 5.0, 2: 4.0, 3: 3.0, 4: 2.0})
    same = _metrics(tmp_path / "b", {1: 5.0, 2: 4.0, 3: 3.0, 4: 2.0})
    assert resume_figures(base, same, 2, 4, cuda=False)[0]
    changed = _metrics(tmp_path / "c", {1: 5.0, 2: 4.0, 3: 3.01, 4: 2.0})
    ok, line = resume_figures(base, changed, 2, 4, cuda=False)
    assert not ok and "0.0033" in line
    assert resume_figures(base, changed, 2, 4, cuda=True)[0]  # within a GPU's 1%
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model").mkdir()
    (tmp_path / "d" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                                                          for s in (1, 2, 3, 3, 4)))
    ok, line = resume_figures(base, tmp_path / "d", 2, 4, cuda=False)
    assert not ok and "expected 1..4 once each" in line
    unfinished = _metrics(tmp_path / "e", {1: 5.0, 2: 4.0}, model=False)
    assert not resume_figures(base, unfinished, 2, 4, cuda=False)[0]


def test_a_memory_peak_over_the_plan_fails():
    plan = MemoryPlan("rl", {"weights": 4e9, "KV cache": 6e9}, budget=80e9)
    assert memory_figure(10e9, plan)[0] and memory_figure(11.4e9, plan)[0]
    ok, line = memory_figure(12e9, plan)
    assert not ok and "12.0 GB per GPU = 120% of the plan 10.0 GB (over the 15% tolerance)" in line
    assert "KV cache" in line  # the plan's table, to see what it undercounts
    assert memory_figure(None, plan) == (True, "memory peak n/a on a CPU (plan 10.0 GB)")

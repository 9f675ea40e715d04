"""The --dry-run plan and the batch / step rules pretraining shares with it."""

from types import SimpleNamespace

import pytest

from echochamber.config import load_run_config
from echochamber.model import ModelConfig, OLMo
from echochamber.plan import (model_numbers, pretrain_plan, resolve_grad_accum, resolve_pretrain_steps, rl_plan)


def test_grad_accum_is_checked_or_derived_from_the_global_batch():
    assert resolve_grad_accum(16, 4, 512, 8) == 4  # the paper's 150M on one node of 8
    assert resolve_grad_accum(16, 0, 512, 16) == 2  # derived on two nodes
    assert resolve_grad_accum(16, 3, 0, 8) == 3  # no global batch given: as configured
    with pytest.raises(ValueError, match=r"pretrain.global_batch 512 != pretrain.batch_size 16 x pretrain.grad_accum "
                                         r"4 x 16 processes = 1024; pretrain.grad_accum=2 makes it so"):
        resolve_grad_accum(16, 4, 512, 16)
    with pytest.raises(ValueError, match="not a multiple of pretrain.batch_size 16 x 3 processes = 48"):
        resolve_grad_accum(16, 0, 512, 3)
    with pytest.raises(ValueError, match="needs pretrain.global_batch"):
        resolve_grad_accum(16, 0, 0, 8)


def test_max_steps_zero_is_one_epoch():
    pcfg = SimpleNamespace(max_steps=0, batch_size=4, grad_accum=2, global_batch=0)
    assert resolve_pretrain_steps(pcfg, 10 * 16 + 15, world_size=2) == 10  # 16 sequences a step; the tail dropped
    assert resolve_pretrain_steps(SimpleNamespace(**{**vars(pcfg), "max_steps": 7}), 5, 2) == 7
    with pytest.raises(ValueError, match="15 train sequences are fewer than one global batch of 16"):
        resolve_pretrain_steps(pcfg, 15, 2)
    with pytest.raises(ValueError, match="pretrain.global_batch 32 != "):
        resolve_pretrain_steps(SimpleNamespace(**{**vars(pcfg), "global_batch": 32}), 1000, 2)


@pytest.mark.parametrize("preset, vocab", [("olmo-tiny", 1024), ("olmo-small", 700)])
def test_parameter_counts_match_a_real_model(preset, vocab):
    m = model_numbers(ModelConfig(preset=preset), vocab)
    real = OLMo(ModelConfig(preset=preset).resolve(vocab_size=vocab))
    assert m.params == real.num_params()
    # Tied: the one matrix is both the (free) lookup and the head's matmul, so every parameter does a matmul.
    assert m.matmul_params == m.params
    untied = model_numbers(ModelConfig(preset=preset, tie_embeddings=False), vocab)
    assert untied.params == m.params + vocab * m.config.d_model and untied.matmul_params == m.params


def test_paper_plans(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    plan = pretrain_plan(load_run_config("paper_150m", ["out_dir=/nonexistent/run"]))
    assert "162.4M (olmo-150m" in plan and "tokens per step  1,048,576 (512 x 2048)" in plan
    assert "512 sequences = batch_size 16 x grad_accum 4 x 8 GPUs" in plan
    assert "known once `echochamber data` has built" in plan and "hours per 10B tokens on 8 H100s at 40% MFU" in plan
    plan = pretrain_plan(load_run_config("paper_1b", ["out_dir=/nonexistent/run", "pretrain.max_steps=40000"]))
    assert "1,139.3M (olmo-1b" in plan and "steps            40,000 (pretrain.max_steps)" in plan
    assert "41.94B" in plan  # 40,000 x 1,048,576 tokens
    # Two nodes: with the paper's global batch set (pretrain.global_batch 512) the plan refuses 8 x 8 x 16 = 1024
    # and says what fixes it.
    monkeypatch.setenv("WORLD_SIZE", "16")
    cfg = load_run_config("paper_1b", ["pretrain.max_steps=1", "out_dir=/nonexistent/run"])
    assert cfg.pretrain.global_batch == 512  # the paper config sets it
    with pytest.raises(ValueError, match="pretrain.grad_accum=4 makes it so"):
        pretrain_plan(cfg)
    cfg.pretrain.grad_accum = 4
    assert "512 sequences = batch_size 8 x grad_accum 4 x 16 GPUs (pretrain.global_batch 512: checked)" in \
        pretrain_plan(cfg)


def test_plan_reads_the_built_mixture(tmp_path, monkeypatch):
    from echochamber.data import build_dataset

    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = load_run_config("smoke", [f"out_dir={tmp_path}", "data.n_problems=300", "data.seq_len=64",
                                    "pretrain.max_steps=0", "pretrain.batch_size=4"])
    m = build_dataset(cfg.data, tmp_path / "data", progress=False)
    plan = pretrain_plan(cfg)
    n = m["splits"]["train"]["sequences"]
    assert f"steps            {n // 4:,} (one epoch: {n:,} train sequences / 4)" in plan
    assert f"vocab {m['vocab_size']:,} from {tmp_path}/data/manifest.json" in plan


def test_rl_plan_and_cli_dry_run(capsys, monkeypatch):
    from echochamber.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    plan = rl_plan(load_run_config("paper_1b", ["out_dir=/nonexistent/run"]))
    if "gsm8k:train: 7,473 questions" not in plan:
        pytest.skip("../shared/data not present: GSM8K train is not here")
    assert "1,160 rollouts x 64 prompts = 9.93 passes" in plan and "9,280 optimizer steps" in plan
    for stage in ("pretrain", "rl", "data", "eval"):
        with pytest.raises(SystemExit) as e:
            main([stage, "--config", "paper_150m", "--dry-run", "out_dir=/nonexistent/run"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"plan: {stage}")
        assert stage == "data" or "memory per GPU (8 GPUs; memory.py)" in out and " fits " in out

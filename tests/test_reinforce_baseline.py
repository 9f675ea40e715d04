"""rl.algo=reinforce_baseline, the authors' REINFORCE arm: its advantages against a plain loop over tokens, its
KL placement, and the toy task of tests/test_rl.py learnt."""

import contextlib

import pytest
import torch

from echochamber.rl.config import ALGOS, RLConfig
from echochamber.rl.pg import PAPER_KL
from echochamber.rl.reinforce_baseline import ReinforceBaseline
from echochamber.rl.train import ALGORITHMS, build_algorithm
from test_rl import EOS, PROMPTS, p_target, tiny_model, toy_rollout


def make(tmp_path, model, **kw):
    cfg = RLConfig(algo="reinforce_baseline", lr=2e-2, minibatch_size=16, warmup_ratio=0.0, steps=15,
                   prompts_per_step=len(PROMPTS), samples_per_prompt=8, max_new_tokens=3, autocast="float32", **kw)
    model.save(tmp_path / "init")
    gen = torch.Generator().manual_seed(0)
    return build_algorithm(cfg, model, tmp_path / "init", pad_id=EOS, autocast=contextlib.nullcontext,
                           device="cpu", gen=gen), gen


def loop_advantages(rewards: list[float], old: list[list[float]], ref: list[list[float]], G: int,
                    beta: float) -> list[list[float]]:
    """OpenRLHF's reinforce_baseline written out one number at a time: reward minus the group mean; -beta * k1
    on every token and that on the last; returns-to-go (gamma 1); whitened over every token of the batch
    (unbiased std, eps 1e-8)."""
    returns = []
    for i, r in enumerate(rewards):
        group = rewards[(i // G) * G:(i // G + 1) * G]
        shaped = r - sum(group) / G
        per_token = [-beta * (o - f) for o, f in zip(old[i], ref[i])]
        per_token[-1] += shaped
        row, running = [0.0] * len(per_token), 0.0
        for t in reversed(range(len(per_token))):
            running += per_token[t]
            row[t] = running
        returns.append(row)
    flat = [x for row in returns for x in row]
    mean = sum(flat) / len(flat)
    std = (sum((x - mean) ** 2 for x in flat) / (len(flat) - 1)) ** 0.5
    return [[(x - mean) / (std + 1e-8) for x in row] for row in returns]


def test_advantages_equal_a_plain_loop(tmp_path):
    model = tiny_model(2)
    alg, gen = make(tmp_path, model, kl_coef=0.05)
    assert isinstance(alg, ReinforceBaseline) and alg.kl_in == "reward" and alg.kl_est.__name__ == "kl_k1"
    with torch.no_grad():  # the policy moves off the reference (saved at make), so the KL term is not 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    roll = toy_rollout(model, G=8, seed=1)
    # Rewards that differ within groups and a group without signal; responses of 1 to 3 tokens.
    roll.response_tokens = [t[:1 + i % 3] for i, t in enumerate(roll.response_tokens)]
    roll.rewards = torch.tensor([float((i * 7) % 5 == 0) for i in range(len(roll))])
    roll.rewards[8:16] = 1.0
    plan = alg.plan(roll, gen)
    alg.advantages(roll, plan)
    old = [t.tolist() for t in roll.token["old_logp"]]
    ref = [t.tolist() for t in roll.token["ref_logp"]]
    assert any(o != f for a, b in zip(old, ref) for o, f in zip(a, b))  # the reference differs: the KL acts
    want = loop_advantages(roll.rewards.tolist(), old, ref, 8, 0.05)
    got = [t.tolist() for t in roll.token["advantages"]]
    assert [len(g) for g in got] == [len(w) for w in want] and len({len(w) for w in want}) > 1
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-5, abs=1e-6)


def test_it_is_registered_everywhere_the_loop_looks():
    assert "reinforce_baseline" in ALGOS and ALGORITHMS["reinforce_baseline"] is ReinforceBaseline
    assert PAPER_KL["reinforce_baseline"] == ("reward", "k1")
    with pytest.raises(ValueError, match="samples_per_prompt must be >= 2"):
        RLConfig(algo="reinforce_baseline", samples_per_prompt=1)


def test_it_learns_the_toy_task(tmp_path):
    model = tiny_model()
    before = p_target(model)
    alg, gen = make(tmp_path, model)
    for it in range(15):
        roll = toy_rollout(model, G=8, seed=it)
        plan = alg.plan(roll, gen)
        alg.advantages(roll, plan)
        alg.update(roll, plan)
    assert before < 0.15 and p_target(model) > 0.8

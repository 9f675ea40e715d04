"""Every RL algorithm end to end on a toy task a random tiny model must learn in seconds: answer the prompt with
token 7; plus the loop's layout pieces (padding, mini-batch plan, prompt stream) and the exact first ratio.

The reward is a plain function of the sampled tokens (no formats, no sandbox), so the tests isolate the RL
machinery: rollouts from the sampler, each algorithm's advantages and update, mini-batches and optimizers.
"""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from echochamber.model import ModelConfig, OLMo
from echochamber.rl import rollout as ro
from echochamber.rl.config import RLConfig
from echochamber.rl.ei import EIConfig
from echochamber.rl.ppo import PPOConfig
from echochamber.rl.train import PromptStream, build_algorithm
from echochamber.sampler import SampleConfig, generate

EOS, TARGET = 0, 7
PROMPTS = [[1, 2, 3], [4, 5], [6, 8, 9, 10]]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return OLMo(ModelConfig(preset="custom", d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=32,
                            rope_theta=10000.0, tie_embeddings=True, init_std=0.02).resolve(vocab_size=16))


def toy_rollout(model, G, seed, temperature=1.0):
    gens = generate(model, PROMPTS, SampleConfig(max_new_tokens=3, temperature=temperature, n=G), eos_id=EOS,
                    seed=seed)
    correct = [g.tokens[0] == TARGET for g in gens]
    return ro.Rollout(problems=[None] * len(PROMPTS), prompt_tokens=[PROMPTS[i // G] for i in range(len(gens))],
                      response_tokens=[g.tokens for g in gens], texts=[""] * len(gens),
                      finished=[g.finished for g in gens], graded=[SimpleNamespace(correct=c) for c in correct],
                      rewards=torch.tensor([float(c) for c in correct]), group_size=G)


def p_target(model):
    with torch.no_grad():
        logits = torch.stack([model(torch.tensor([p]))[0, -1] for p in PROMPTS])
    return torch.softmax(logits.float(), -1)[:, TARGET].mean().item()


def make_algo(algo, model, init_dir, steps, **kw):
    kw = {"autocast": "float32", **kw}
    cfg = RLConfig(algo=algo, lr=2e-2, minibatch_size=16, epochs=1, warmup_ratio=0.0, steps=steps,
                   prompts_per_step=len(PROMPTS), samples_per_prompt=8, max_new_tokens=3, **kw)
    gen = torch.Generator().manual_seed(0)
    return build_algorithm(cfg, model, init_dir, pad_id=EOS, autocast=contextlib.nullcontext, device="cpu",
                           gen=gen), gen


@pytest.mark.parametrize("algo,extra", [
    ("grpo", {}), ("rloo", {}), ("drgrpo", {}), ("reinforce_pp", {"kl_coef": 1e-3}),
    ("ppo", {"ppo": PPOConfig(critic_lr=2e-2)}),
    ("ei", {"ei": EIConfig(rounds=3, lr=2e-2, epochs=10, batch_size=8)}),
])
def test_each_algorithm_learns_a_toy_task(tmp_path, algo, extra):
    model = tiny_model()
    model.save(tmp_path / "init")
    before = p_target(model)
    rounds = 3 if algo == "ei" else 15
    alg, gen = make_algo(algo, model, tmp_path / "init", rounds, **extra)
    for it in range(rounds):
        roll = toy_rollout(model, G=32 if algo == "ei" else 8, seed=it)
        plan = alg.plan(roll, gen)
        alg.advantages(roll, plan)
        alg.update(roll, plan)
    after = p_target(model)
    assert before < 0.15 and after > 0.8, (algo, before, after)


@pytest.mark.parametrize("algo", ["grpo", "ppo", "rloo", "drgrpo", "reinforce_pp"])
def test_ratio_is_exactly_one_on_the_first_minibatch(tmp_path, algo):
    model = tiny_model(1)
    model.save(tmp_path / "init")
    alg, gen = make_algo(algo, model, tmp_path / "init", 1, kl_coef=0.01, autocast="bfloat16")
    alg.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # the default precision: bf16 matmuls
    roll = toy_rollout(model, 8, seed=0)
    plan = alg.plan(roll, gen)
    alg.advantages(roll, plan)
    batch = ro.make_batch(roll, plan[0][0][0], EOS, alg.batch_fields())
    logp, _ = alg.logprobs(model, batch)
    m = batch.mask.bool()
    assert torch.equal(logp[m], batch["old_logp"][m])  # bit for bit, so rho = exp(0) = 1 exactly
    _, stats = alg.policy_loss(batch)
    assert stats["ratio_max"] == 1.0 and stats["clip_frac"] == 0.0


def test_prompt_stream_covers_every_prompt_each_pass_and_resumes():
    s = PromptStream(10, seed=3)
    first = s.take(10)
    assert sorted(first) == list(range(10))
    second = s.take(10)
    assert sorted(second) == list(range(10)) and second != first  # reshuffled each pass
    resumed = PromptStream(10, seed=3, position=10)
    assert resumed.take(10) == second


def test_make_batch_masks_exactly_the_response_tokens_and_lays_out_fields():
    roll = ro.Rollout(problems=[None], prompt_tokens=[[5, 6, 7], [5, 6]], response_tokens=[[1, 2], [3, 4, 0]],
                      texts=["", ""], finished=[False, True], graded=[None, None], rewards=torch.zeros(2),
                      group_size=2, token={"adv": [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])]})
    b = ro.make_batch(roll, [0, 1], pad_id=0, fields=("adv",))
    assert b.idx.tolist() == [[5, 6, 7, 1, 2], [5, 6, 3, 4, 0]]
    # mask[b, t] marks target idx[b, t + 1] as a response token
    assert b.mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert b["adv"].tolist() == [[0, 0, 1, 2], [0, 3, 4, 5]]


def test_plan_covers_every_sample_once_per_epoch():
    plan = ro.plan_minibatches(list(range(10)), minibatch_size=4, micro_batch_size=3, epochs=2,
                               gen=torch.Generator().manual_seed(0))
    for epoch in plan:
        flat = [i for mb in epoch for micro in mb for i in micro]
        assert sorted(flat) == list(range(10))
        assert [sum(len(m) for m in mb) for mb in epoch] == [4, 4, 2]
        assert all(len(m) <= 3 for mb in epoch for m in mb)
    assert plan[0] != plan[1]


def test_processes_split_each_minibatch_of_the_one_process_plan():
    # Two processes holding samples 0-5 and 6-11 take, from each mini-batch of the shared shuffle, their own
    # samples (as local indices): together exactly one process's plan.
    whole = ro.plan_minibatches(list(range(12)), 4, 0, 1, torch.Generator().manual_seed(3))
    halves = [ro.plan_minibatches(list(range(12)), 4, 0, 1, torch.Generator().manual_seed(3), offset, 6)
              for offset in (0, 6)]
    for k, mb in enumerate(whole[0]):
        mine = [sorted(i + off for micro in h[0][k] for i in micro) for h, off in zip(halves, (0, 6))]
        assert sorted(mine[0] + mine[1]) == sorted(mb[0])


def test_uneven_shares_of_a_step_sample_as_one_unit_each():
    # 7,473 prompts (Expert Iteration's whole GSM8K train set) over 8 processes: shares of 935 and 934. Each
    # process's share is its own seeding unit, numbered by rank; the divisibility rule binds only an explicit
    # rl.rollout_chunk_prompts (on eaace45 rank 1 stopped: 935 % 934 != 0).
    from echochamber import distributed as dist
    from echochamber.rl.train import seeding_units

    units = []
    for rank in range(8):
        ctx = dist.DistContext(rank, rank, 8, torch.device("cpu"))
        mine = dist.share(7473, ctx)
        units.append((mine, seeding_units(0, mine, 7473, ctx)))
    assert [u for _, u in units] == [(935, 0)] + [(934, r) for r in range(1, 8)]
    one = dist.DistContext(0, 0, 1, torch.device("cpu"))
    assert seeding_units(0, (0, 7473), 7473, one) == (0, 0)
    # rl.rollout_chunk_prompts=8 on 8 processes sharing 64 prompts: units numbered by their place in the step.
    ctx = dist.DistContext(3, 3, 8, torch.device("cpu"))
    assert seeding_units(8, dist.share(64, ctx), 64, ctx) == (8, 3)
    with pytest.raises(ValueError, match="rl.rollout_chunk_prompts=5 must divide"):
        seeding_units(5, dist.share(64, ctx), 64, ctx)

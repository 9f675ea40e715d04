"""The pieces of PPO, RLOO, Dr. GRPO, REINFORCE++ and Expert Iteration against values worked out by hand (and
loops), and the KL folded into the reward."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from echochamber.rl import rollout as ro
from echochamber.rl.config import RLConfig
from echochamber.rl.drgrpo import centered_advantages
from echochamber.rl.ei import keep_mask
from echochamber.rl.grpo import GRPO
from echochamber.rl.losses import clipped_value_loss, gae, kl_k1, returns_to_go, whiten
from echochamber.rl.ppo import RunningMoments
from echochamber.rl.rloo import leave_one_out_advantages


def test_gae_by_hand():
    # Two tokens, gamma 1, lambda 0.5: V = (1, 2), r = (0, 3); after the last token V = 0.
    r = torch.tensor([[0.0, 3.0]])
    v = torch.tensor([[1.0, 2.0]])
    m = torch.ones(1, 2)
    adv, ret = gae(r, v, m, gamma=1.0, lam=0.5)
    d1 = 3.0 + 0.0 - 2.0  # delta_1 = r_1 + V_2(=0) - V_1
    d0 = 0.0 + 2.0 - 1.0  # delta_0 = r_0 + V_1 - V_0
    assert adv[0].tolist() == pytest.approx([d0 + 0.5 * d1, d1])
    assert ret[0].tolist() == pytest.approx([d0 + 0.5 * d1 + 1.0, d1 + 2.0])


def test_gae_matches_a_plain_loop_on_ragged_rows():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 2, 7, 1]
    r, v = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    m = torch.zeros(4, 7)
    for i, n in enumerate(lengths):
        m[i, :n] = 1
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.95)
    for i, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            next_v = v[i, t + 1].item() if t + 1 < n else 0.0
            last = r[i, t].item() + 0.9 * next_v - v[i, t].item() + 0.9 * 0.95 * last
            assert adv[i, t].item() == pytest.approx(last, abs=1e-5)
            assert ret[i, t].item() == pytest.approx(last + v[i, t].item(), abs=1e-5)
        assert adv[i, n:].abs().sum() == 0 and ret[i, n:].abs().sum() == 0


def test_clipped_value_loss_by_hand():
    old = torch.tensor([1.0, 1.0, 1.0])
    new = torch.tensor([1.5, 1.1, 0.0])
    ret = torch.tensor([2.0, 0.0, 0.0])
    loss, clipped = clipped_value_loss(new, old, ret, clip=0.2)
    # token 0: V 1.5 -> clipped 1.2; max((1.5-2)^2, (1.2-2)^2) = 0.64 (the clipped one)
    # token 1: V 1.1 (inside the clip); (1.1)^2 both ways
    # token 2: V 0.0 -> clipped 0.8; max(0, 0.64) = 0.64
    assert loss.tolist() == pytest.approx([0.5 * 0.64, 0.5 * 1.21, 0.5 * 0.64])
    assert clipped.tolist() == [1.0, 0.0, 1.0]


def test_returns_to_go_and_whiten():
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert returns_to_go(r, m).tolist() == [[6.0, 5.0, 3.0], [4.0, 0.0, 0.0]]
    w = whiten(r, m)
    vals = w[m.bool()]
    assert vals.mean().item() == pytest.approx(0.0, abs=1e-6) and vals.std().item() == pytest.approx(1.0, abs=1e-6)
    assert w[1, 1:].tolist() == [0.0, 0.0]


def test_rloo_drgrpo_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])  # one prompt, G = 4
    # RLOO: r_i - mean of the other three: 1 - 1/3, 0 - 2/3, 0 - 2/3, 1 - 1/3
    assert leave_one_out_advantages(r, 4).tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # Dr. GRPO: r_i - mean, no std
    assert centered_advantages(r, 4).tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_ei_keeps_correct_unique_responses_per_prompt():
    G = 3
    responses = [[7, 0], [7, 0], [5, 0], [7, 0], [8, 0], [8, 0]]  # prompt 0: 3 samples; prompt 1: 3 samples
    correct = [True, True, False, True, True, False]
    roll = ro.Rollout(problems=[None, None], prompt_tokens=[[1]] * 6, response_tokens=responses, texts=[""] * 6,
                      finished=[True] * 6, graded=[SimpleNamespace(correct=c) for c in correct],
                      rewards=torch.tensor([float(c) for c in correct]), group_size=G)
    keep, dupes = keep_mask(roll)
    # prompt 0: [7,0] kept once (its copy dropped), [5,0] wrong; prompt 1: [7,0] is new for THIS prompt,
    # [8,0] correct, [8,0] wrong
    assert keep.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert dupes == 1


def test_running_moments_match_the_whole_sample():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, generator=g) * 3 + 1 for n in (5, 17, 2)]
    m = RunningMoments()
    for x in xs:
        m.update(x)
    allx = torch.cat(xs)
    assert m.mean == pytest.approx(allx.mean().item(), abs=1e-5)
    assert m.std == pytest.approx(allx.std(unbiased=False).item(), abs=1e-5)


def test_k1_in_the_reward_becomes_returns_to_go_on_top_of_the_sequence_advantage():
    # GRPO with rl.kl_in=reward: A_t = a_i + sum_{t' >= t} -beta * k1(pi_old, ref)_t'.
    torch.manual_seed(0)
    from echochamber.model import ModelConfig, OLMo

    def model():
        return OLMo(ModelConfig(preset="custom", d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16,
                                rope_theta=10000.0, tie_embeddings=True, init_std=0.02).resolve(vocab_size=12))

    policy, ref = model(), model()
    cfg = RLConfig(algo="grpo", kl_coef=0.1, kl_in="reward", kl_estimator="k1", steps=1, prompts_per_step=1,
                   samples_per_prompt=2, minibatch_size=2, autocast="float32")
    alg = GRPO(cfg, policy, ref, pad_id=0, autocast=contextlib.nullcontext)
    roll = ro.Rollout(problems=[None], prompt_tokens=[[1, 2], [1, 2]], response_tokens=[[3, 4, 0], [5, 0]],
                      texts=["", ""], finished=[True, True], graded=[None, None],
                      rewards=torch.tensor([1.0, 0.0]), group_size=2)
    plan = alg.plan(roll, torch.Generator().manual_seed(0))
    alg.advantages(roll, plan)
    seq_adv = [0.7071067811865475, -0.7071067811865475]  # (r - mean) / std over the group of two
    for i in range(2):
        kl = kl_k1(roll.token["old_logp"][i], roll.token["ref_logp"][i])
        expected = [seq_adv[i] - 0.1 * kl[t:].sum().item() for t in range(len(kl))]
        assert roll.token["advantages"][i].tolist() == pytest.approx(expected, abs=1e-5)
    assert alg.kl_in == "reward"


def test_whiten_over_processes_equals_whitening_the_whole_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g)
    m = (torch.rand(4, 5, generator=g) > 0.3).float()

    def sums(v, mk):  # what the other process contributes to the all-reduce
        vals = v[mk.bool()].double()
        return torch.stack([vals.sum(), (vals * vals).sum(), vals.new_tensor(float(vals.numel()))])

    top, bottom = (x[:2], m[:2]), (x[2:], m[2:])
    w_top = whiten(*top, sum_over_processes=lambda t: t + sums(*bottom))
    w_bottom = whiten(*bottom, sum_over_processes=lambda t: t + sums(*top))
    assert torch.allclose(torch.cat([w_top, w_bottom]), whiten(x, m), atol=1e-6)


def ppo(tied: bool, d_model: int = 16, **ppo_cfg):
    """A PPO over tiny models (tied or untied output head) and a rollout of 2 prompts x 4 random samples."""
    from echochamber.model import ModelConfig, OLMo
    from echochamber.rl.ppo import PPO, PPOConfig

    def model():
        return OLMo(ModelConfig(preset="custom", d_model=d_model, n_layers=1, n_heads=2, mlp_hidden=32,
                                max_seq_len=16, rope_theta=10000.0, tie_embeddings=tied,
                                init_std=0.02).resolve(vocab_size=12))

    torch.manual_seed(0)
    cfg = RLConfig(algo="ppo", steps=1, prompts_per_step=2, samples_per_prompt=4, minibatch_size=4, lr=1e-3,
                   autocast="float32", ppo=PPOConfig(**ppo_cfg))
    alg = PPO(cfg, model(), None, critic_body=model(), pad_id=0, autocast=contextlib.nullcontext)
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(1, 12, (n,), generator=g).tolist() + [0] for n in (1, 3, 2, 4, 2, 1, 3, 2)]
    roll = ro.Rollout(problems=[None, None], prompt_tokens=[[1, 2]] * 4 + [[3, 4]] * 4, response_tokens=responses,
                      texts=[""] * 8, finished=[True] * 8, graded=[None] * 8,
                      rewards=torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]), group_size=4)
    return alg, roll


@pytest.mark.parametrize("tied", [True, False])
def test_the_critic_trains_its_embedding_and_freezes_only_an_untied_head(tied):
    alg, roll = ppo(tied)
    body = alg.critic.body
    assert body.wte.weight.requires_grad  # tied: it is also the (unused) output head, and it still trains
    assert body.lm_head.weight.requires_grad == tied
    before = body.wte.weight.detach().clone()
    plan = alg.plan(roll, torch.Generator().manual_seed(0))
    alg.advantages(roll, plan)
    alg.update(roll, plan)
    assert not torch.equal(before, body.wte.weight.detach())


def test_the_value_head_starts_normal_with_std_one_over_d_plus_one():
    alg, _ = ppo(True, d_model=512)
    w = alg.critic.value_head.weight.detach().flatten()
    assert w.std().item() == pytest.approx(1 / 513, rel=0.2)  # 512 draws: the estimate's own spread is ~3%
    assert w.mean().abs().item() < 4 / 513 / 512 ** 0.5


def test_the_critic_runs_at_the_actors_rate_down_to_its_own_floor():
    from echochamber.training import cosine_lr

    # Default: the actor's rate (1e-3 here) and its min_lr_ratio; the floor the authors' critic had: absolute.
    for ppo_cfg, floor_ratio in (({}, 0.1), ({"critic_min_lr": 7e-4}, 0.7)):
        alg, roll = ppo(True, **ppo_cfg)
        plan = alg.plan(roll, torch.Generator().manual_seed(0))
        alg.advantages(roll, plan)
        stats = alg.update(roll, plan)  # two optimizer steps of the two in the run: the last at lr(1)
        assert stats["critic/lr"] == pytest.approx(cosine_lr(1, 2, 1e-3, 0, floor_ratio))
        assert stats["lr"] == pytest.approx(cosine_lr(1, 2, 1e-3, 0, 0.1))
    alg, _ = ppo(True, critic_lr=2e-3)
    assert alg.critic_opt.param_groups[0]["lr"] == 2e-3
    with pytest.raises(ValueError, match="critic_min_lr"):
        ppo(True, critic_lr=1e-4, critic_min_lr=2e-4)


def test_a_frozen_actor_waits_its_rollouts_while_the_critic_learns_and_both_schedules_run_on():
    from echochamber.training import cosine_lr

    alg, roll = ppo(True, freeze_actor_steps=1)
    actor = [p.detach().clone() for p in alg.policy.parameters()]
    critic = alg.critic.value_head.weight.detach().clone()
    plan = alg.plan(roll, torch.Generator().manual_seed(0))
    alg.advantages(roll, plan)
    stats = alg.update(roll, plan)
    assert all(torch.equal(a, p) for a, p in zip(actor, alg.policy.parameters()))  # the first rollout: critic only
    assert not torch.equal(critic, alg.critic.value_head.weight) and "loss" not in stats
    assert alg.opt_step == 2  # its two mini-batches count in the schedule
    alg.advantages(roll, plan)
    stats = alg.update(roll, plan)  # the second: both learn, at the schedule's third and fourth steps
    assert not all(torch.equal(a, p) for a, p in zip(actor, alg.policy.parameters()))
    assert stats["lr"] == pytest.approx(cosine_lr(3, 2, 1e-3, 0, 0.1)) and alg.opt_step == 4

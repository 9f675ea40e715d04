"""GRPO's pieces against values worked out by hand, and their equivalences."""

import math

import pytest
import torch

from echochamber.rl.grpo import group_advantages
from echochamber.rl.pg import pg_token_loss
from echochamber.rl.losses import aggregate, clipped_policy_loss, kl_k1, kl_k2, kl_k3


def test_group_advantages_by_hand():
    # Group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3); group 2: all equal -> 0.
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, group_size=4, eps=0.0)
    s = math.sqrt(1 / 3)
    expected = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]
    assert adv[:4].tolist() == pytest.approx(expected)
    adv_eps = group_advantages(r, group_size=4, eps=1e-9)
    assert adv_eps[4:].tolist() == [0.0, 0.0, 0.0, 0.0]  # no spread, no signal


def test_group_advantages_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (6 * 8,), generator=g).float()
    vec = group_advantages(r, 8, eps=1e-9)
    for p in range(6):
        grp = r[p * 8:(p + 1) * 8].tolist()
        mean = sum(grp) / 8
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / 7)
        for j in range(8):
            assert vec[p * 8 + j].item() == pytest.approx((grp[j] - mean) / (std + 1e-9), abs=1e-5)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(2)  # log pi - log ref
    assert kl_k1(logp, ref).item() == pytest.approx(d)
    assert kl_k2(logp, ref).item() == pytest.approx(d * d / 2)
    assert kl_k3(logp, ref).item() == pytest.approx(0.5 - 1 + d)  # ref/pi - 1 - log(ref/pi)
    same = torch.tensor([-1.3])
    assert kl_k3(same, same).item() == 0.0


def test_kl_estimators_are_unbiased_for_categorical():
    # Sample from pi exactly (enumerate) and weight by pi: E_pi[k1] = E_pi[k3] = KL(pi || ref).
    pi = torch.tensor([0.7, 0.2, 0.1])
    ref = torch.tensor([0.3, 0.3, 0.4])
    kl = (pi * (pi / ref).log()).sum().item()
    assert (pi * kl_k1(pi.log(), ref.log())).sum().item() == pytest.approx(kl)
    assert (pi * kl_k3(pi.log(), ref.log())).sum().item() == pytest.approx(kl)


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 1.5]))  # ratios 1.5, 0.5, 1.1, 1.5
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0])
    loss, clipped = clipped_policy_loss(logp, old, adv, clip_eps=0.2)
    # A>0, rho=1.5 -> min(1.5, 1.2)=1.2; A>0, rho=0.5 -> min(0.5, 0.8)=0.5;
    # A<0, rho=1.1 -> min(-2.2, -2.2); A<0, rho=1.5 -> min(-1.5, -1.2) = -1.5
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 2.2, 1.5])
    assert clipped.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_aggregation_token_vs_sequence():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(x, mask, "token").item() == pytest.approx(8 / 5)  # (4*1 + 4) / 5 tokens
    assert aggregate(x, mask, "sequence").item() == pytest.approx((1 + 4) / 2)
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(x, mask, "batch")


def test_grpo_loss_gradient_pushes_up_good_samples():
    # At rho = 1 the loss gradient w.r.t. logp is -A / n_tokens (token mean): correct samples gain probability.
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.ones(2, 3)
    adv = torch.tensor([1.0, -1.0])
    per_token, _, clipped = pg_token_loss(logp, logp.detach(), adv[:, None], clip_eps=0.2)
    aggregate(per_token, mask, "token").backward()
    assert logp.grad[0].tolist() == pytest.approx([-1 / 6] * 3)
    assert logp.grad[1].tolist() == pytest.approx([1 / 6] * 3)
    assert clipped.sum().item() == 0.0


def test_grpo_kl_term_adds_k3():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    mask = torch.ones(1, 2)
    zero_adv = torch.zeros(1)
    per_token, _, _ = pg_token_loss(logp, logp, zero_adv[:, None], clip_eps=0.2, ref_logp=ref, kl_coef=0.01)
    assert aggregate(per_token, mask, "token").item() == pytest.approx(0.01 * (0.5 - 1 + math.log(2)))


def test_kl_without_gradient_adds_the_value_but_no_gradient():
    # rl.kl_grad=false, the authors' packed-sample GRPO: the KL shows in the loss value, not in the gradient.
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    grads = []
    for kl_grad in (True, False):
        logp = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_(True)
        per_token, _, _ = pg_token_loss(logp, logp.detach(), torch.zeros(1, 1), clip_eps=0.2, ref_logp=ref,
                                        kl_coef=0.01, kl_grad=kl_grad)
        per_token.sum().backward()
        grads.append(logp.grad.abs().sum().item())
        assert per_token.sum().item() == pytest.approx(2 * 0.01 * (0.5 - 1 + math.log(2)))
    assert grads[0] > 0 and grads[1] == 0.0


def test_aggregation_constant_is_dr_grpo_sum_over_budget():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(x, mask, "constant", max_len=10).item() == pytest.approx((4 / 10 + 4 / 10) / 2)

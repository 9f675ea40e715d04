"""GRPO (Shao et al. 2024, DeepSeekMath) as the paper runs it: no critic; each prompt's G samples are their
own baseline; a k3 KL to the frozen pretrained model as a loss term (rl.kl_in=loss, rl.kl_estimator=k3).

    A_i  = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)              one advantage per sequence, every token
    L    = agg_t[ -min(rho_t A, clip(rho_t, 1-e, 1+e) A) + beta * k3_t ]    rho_t = pi(y_t) / pi_old(y_t)

Paper: G = 8, eps = 1e-9, e = 0.2, beta in {0, 1e-3, 1e-2}; std is torch's (unbiased), as in OpenRLHF. In the
authors' packed-sample runs the KL term carried no gradient (PAPER.md): rl.kl_grad=false reproduces that.
"""

from __future__ import annotations

import torch

from .pg import PolicyGradient


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-9) -> torch.Tensor:
    """rewards (N,) ordered group by group (prompt i's samples at i*G .. i*G+G-1) -> advantages (N,).
    A group whose rewards are all equal gets advantage 0: it carries no signal."""
    r = rewards.view(-1, group_size)  # (P, G)
    adv = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)
    return adv.flatten()


class GRPO(PolicyGradient):
    name = "grpo"

    def sequence_advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return group_advantages(rewards, group_size, self.cfg.adv_eps)

"""GRPO (Shao et al. 2024, DeepSeekMath) as the paper runs it: no critic; each prompt's G samples are their
own baseline; a k3 KL to the frozen pretrained model as a loss term.

    A_i  = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)              one advantage per sequence, every token
    L    = agg_t[ -min(rho_t A, clip(rho_t, 1-e, 1+e) A) + beta * k3_t ]    rho_t = pi(y_t) / pi_old(y_t)

Paper: G = 8, eps = 1e-9, e = 0.2, beta in {0, 1e-3, 1e-2}; std is torch's (unbiased), as in OpenRLHF.
"""

from __future__ import annotations

import torch

from .losses import Aggregation, aggregate, clipped_policy_loss, kl_k3


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-9) -> torch.Tensor:
    """rewards (N,) ordered group by group (prompt i's samples at i*G .. i*G+G-1) -> advantages (N,).
    A group whose rewards are all equal gets advantage 0: it carries no signal."""
    r = rewards.view(-1, group_size)  # (P, G)
    adv = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)
    return adv.flatten()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, *, clip_eps: float, kl_coef: float, agg: Aggregation) -> tuple[torch.Tensor, dict]:
    """logp, old_logp, ref_logp, mask: (B, T); advantages: (B,). Returns the loss and detached statistics."""
    pg, clipped = clipped_policy_loss(logp, old_logp, advantages[:, None], clip_eps)
    per_token = pg
    if kl_coef > 0:
        per_token = per_token + kl_coef * kl_k3(logp, ref_logp)
    loss = aggregate(per_token, mask, agg)
    stats = {"clip_frac": aggregate(clipped, mask, "token").item(), "pg_loss": aggregate(pg, mask, agg).item()}
    return loss, stats

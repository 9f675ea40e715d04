"""Per-token pieces every policy-gradient algorithm here shares: KL estimators, the clipped ratio objective,
and how a (B, T) tensor of per-token losses becomes one number.

Shapes: B sequences, T response positions; `mask` (B, T) is 1 on response tokens (EOS included), 0 on padding.
All log-probabilities are log p(token | prefix) in fp32.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token", "sequence"]


# KL(pi || ref) estimated from samples x ~ pi with log-ratio d = log pi(x) - log ref(x) (Schulman, "Approximating
# KL divergence", 2020). All three have expectation KL(pi || ref) (k2 only to second order); k3 is unbiased and
# never negative, which is why GRPO uses it as a loss term.
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = d = log pi - log ref."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = d^2 / 2."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(-d) - 1 + d = ref/pi - 1 - log(ref/pi)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - 1.0 - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, as a loss to minimise, per token:
        rho = exp(logp - old_logp)
        L   = -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)
    Returns (L, clipped) where clipped marks tokens whose gradient the clip removed."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: Aggregation) -> torch.Tensor:
    """One scalar from (B, T) per-token values over the response tokens.
    token:    sum_bt m_bt x_bt / sum_bt m_bt            (every token weighs the same; long answers weigh more)
    sequence: mean_b [ sum_t m_bt x_bt / sum_t m_bt ]   (every sequence weighs the same; GRPO paper's form)"""
    mask = mask.to(per_token.dtype)
    if how == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if how == "sequence":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean()
    raise ValueError(f"unknown loss aggregation {how!r}; expected 'token' or 'sequence'")

"""Per-token pieces the RL algorithms share: KL estimators, the clipped ratio objective, the clipped value loss,
returns and GAE, whitening, and how a (B, T) tensor of per-token losses becomes one number.

Shapes: B sequences, T response positions; `mask` (B, T) is 1 on response tokens (EOS included), 0 on padding.
All log-probabilities are log p(token | prefix) in fp32.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token", "sequence", "constant"]


# KL(pi || ref) estimated from samples x ~ pi with log-ratio d = log pi(x) - log ref(x) (Schulman, "Approximating
# KL divergence", 2020). All three have expectation KL(pi || ref) (k2 only to second order); k3 is unbiased and
# never negative, which is why GRPO uses it as a loss term; PPO (OpenRLHF) folds k1 into the reward.
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


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss, per token (OpenRLHF's ValueLoss):
        V_clip = V_old + clip(V - V_old, -c, c)
        L      = 0.5 * max((V - R)^2, (V_clip - R)^2)
    Returns (L, clipped) where clipped marks tokens where the clipped term is the larger one."""
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    surr_plain, surr_clip = (values - returns) ** 2, (v_clip - returns) ** 2
    return 0.5 * torch.maximum(surr_plain, surr_clip), (surr_clip > surr_plain).float()


def returns_to_go(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = sum_{t' >= t} r_t' over each row's response tokens (gamma = 1): (B, T) -> (B, T)."""
    r = token_rewards * mask
    return (r.flip(-1).cumsum(-1).flip(-1)) * mask


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded rows, the value after the last
    response token being 0 (the episode ends there, at EOS or at the length limit):
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                       (the critic's target)
    token_rewards, values, mask: (B, T). Returns (advantages, returns), 0 on padding."""
    r, v = token_rewards * mask, values * mask
    adv = torch.zeros_like(r)
    next_adv = torch.zeros_like(r[:, 0])
    next_value = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        adv[:, t] = next_adv
        next_value = v[:, t]
    return adv, (adv + v) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, sum_over_processes=None) -> torch.Tensor:
    """(x - mean) / (std + eps) over the masked entries of the whole batch (OpenRLHF whitens advantages over the
    rollout's tokens), std unbiased; padding stays 0. sum_over_processes(t) sums a tensor over the processes
    that hold the rest of the batch (None: this process holds all of it)."""
    vals = x[mask.bool()].double()
    sums = torch.stack([vals.sum(), (vals * vals).sum(), vals.new_tensor(float(vals.numel()))])  # (3,)
    if sum_over_processes is not None:
        sums = sum_over_processes(sums)
    total, squares, n = sums.tolist()
    if n < 2:
        return x * mask
    mean = total / n
    std = max(0.0, (squares - n * mean * mean) / (n - 1)) ** 0.5
    return ((x - mean) / (std + eps)) * mask


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: Aggregation, max_len: int = 1) -> torch.Tensor:
    """One scalar from (B, T) per-token values over the response tokens.
    token:    sum_bt m_bt x_bt / sum_bt m_bt            (every token weighs the same; long answers weigh more)
    sequence: mean_b [ sum_t m_bt x_bt / sum_t m_bt ]   (every sequence weighs the same; GRPO paper's form)
    constant: mean_b [ sum_t m_bt x_bt ] / max_len      (no length normalisation; Dr. GRPO)"""
    mask = mask.to(per_token.dtype)
    if how == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if how == "sequence":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean()
    if how == "constant":
        return (per_token * mask).sum(-1).mean() / max_len
    raise ValueError(f"unknown loss aggregation {how!r}; expected 'token', 'sequence' or 'constant'")

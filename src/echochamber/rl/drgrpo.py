"""Dr. GRPO, "GRPO done right" (Liu et al. 2025): GRPO without its two biases. The advantage is not divided by
the group's std (which up-weights prompts that are almost always or almost never solved), and the loss is not
normalised by each response's length (which favours long wrong answers): per-token terms are summed per
sequence and divided by a constant, the generation budget (rl.loss_agg=constant, set by this algorithm).

    A_i = r_i - mean(r_1..r_G)
    L   = mean_i [ sum_t -min(rho_t A_i, clip(rho_t, 1-e, 1+e) A_i) ] / max_new_tokens
"""

from __future__ import annotations

import torch

from .pg import PolicyGradient


def centered_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    r = rewards.view(-1, group_size)  # (P, G)
    return (r - r.mean(-1, keepdim=True)).flatten()


class DrGRPO(PolicyGradient):
    name = "drgrpo"
    loss_agg = "constant"

    def sequence_advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return centered_advantages(rewards, group_size)

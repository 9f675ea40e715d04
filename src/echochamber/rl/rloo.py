"""RLOO, REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): each sample's baseline is the mean
reward of the OTHER G-1 samples of its prompt; no std division; the KL (k1) in the reward, as OpenRLHF does.

    A_i = r_i - (1 / (G-1)) * sum_{j != i} r_j  =  G / (G-1) * (r_i - mean(r_1..r_G))
"""

from __future__ import annotations

import torch

from .pg import PolicyGradient


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (N,) grouped by prompt -> (N,) r_i minus the mean of the group's other rewards."""
    r = rewards.view(-1, group_size)  # (P, G)
    baseline = (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    return (r - baseline).flatten()


class RLOO(PolicyGradient):
    name = "rloo"

    def sequence_advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return leave_one_out_advantages(rewards, group_size)

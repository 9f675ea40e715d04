"""REINFORCE++ (Hu 2025, as in OpenRLHF): no critic and no per-prompt baseline; the k1 KL to the reference is
folded into the per-token reward, each token's return is the sum of what it and later tokens earn, and the
returns are whitened over the whole batch's tokens, which plays the baseline's part.

    r_t = -beta * k1_t  (+ r on the last token)      A_t = whiten_batch( sum_{t' >= t} r_t' )
"""

from __future__ import annotations

import torch

from .losses import whiten
from .pg import PolicyGradient


class ReinforcePP(PolicyGradient):
    name = "reinforce_pp"

    def sequence_advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return rewards.clone()

    def finish_advantages(self, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return whiten(adv, mask, sum_over_processes=self.sum_over_processes)

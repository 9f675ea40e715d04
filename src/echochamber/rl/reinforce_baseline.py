"""REINFORCE with a group-mean baseline ("reinforce_baseline" in OpenRLHF, one of the three arms of the authors'
sweep): each sample's reward minus the mean reward of its prompt's G samples, no division by the group's std;
the k1 KL to the reference folded into every token's reward (rl.kl_in=reward, as PPO); each token's return is
the sum of what it and later tokens earn (gamma = 1); then the returns are whitened over the whole batch's
response tokens (over all processes), as OpenRLHF whitens every estimator's advantages but GRPO's.

    a_i   = r_i - (1/G) sum_j r_j                                       (the prompt's G samples)
    r_i,t = -beta * k1(pi_old, ref)_t  (+ a_i on the last token)
    A_i,t = whiten_batch( sum_{t' >= t} r_i,t' )

Unlike RLOO the baseline includes the sample itself (a_i = (G-1)/G times RLOO's); unlike GRPO there is no std
division and the KL is in the reward, not the loss.
"""

from __future__ import annotations

import torch

from .drgrpo import centered_advantages
from .reinforce_pp import ReinforcePP


class ReinforceBaseline(ReinforcePP):
    """REINFORCE++'s per-token returns and batch whitening, on group-mean-centred rewards (Dr. GRPO's advantage)."""
    name = "reinforce_baseline"

    def sequence_advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        return centered_advantages(rewards, group_size)

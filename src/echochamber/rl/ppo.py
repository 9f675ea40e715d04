"""PPO with a critic (Schulman et al. 2017), as the authors ran it (OpenRLHF 0.6): a critic initialised from the
pretrained model with a new scalar value head, GAE, advantages whitened over the batch, the k1 KL to the
reference folded into the per-token reward, value clipping.

    r_t   = -beta * k1(pi_old, ref)_t   (+ r on the last token; r optionally normalised by running moments)
    A_t   = GAE(r, V; gamma, lambda) = sum_l (gamma lambda)^l delta_{t+l},  delta_t = r_t + gamma V_{t+1} - V_t
    A_t  <- whiten over the batch's tokens;  R_t = A_t (before whitening) + V_t, the critic's target
    actor:  L_pi = agg_t[ -min(rho_t A_t, clip(rho_t, 1-e, 1+e) A_t) ]
    critic: L_V  = mean_t 0.5 max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -c, c) - R_t)^2)

Paper: gamma 1, lambda 0.95, c 0.2, e 0.2, actor lr 1e-6, critic lr 7e-6, beta in {0, 1e-3, 1e-2}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import distributed as dist
from ..checks import check
from ..training import cosine_lr, make_optimizer
from . import rollout as ro
from .losses import aggregate, clipped_value_loss, gae, whiten
from .pg import PolicyGradient


@dataclass
class PPOConfig:
    critic_lr: float = 7e-6  # critic learning rate, cosine like the actor's (paper: 7e-6 with actor lr 1e-6)
    gamma: float = 1.0  # discount (paper: 1)
    gae_lambda: float = 0.95  # GAE lambda (paper: 0.95)
    value_clip: float = 0.2  # value clipping around the rollout's values (paper: 0.2)
    whiten_advantages: bool = True  # (paper: yes)
    normalize_reward: bool = False  # divide rewards by running moments (OpenRLHF --normalize_reward; paper: off)

    def __post_init__(self):
        check(self, positive=("critic_lr", "value_clip"), unit=("gamma", "gae_lambda"))


class Critic(nn.Module):
    """V(s_t): the pretrained decoder's final hidden states and a new linear value head (zero-initialised, so
    the first values are 0). The body's own lm_head is unused and frozen."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.body.lm_head.requires_grad_(False)
        self.value_head = nn.Linear(body.config.d_model, 1, bias=False)
        nn.init.zeros_(self.value_head.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> values (B, T) fp32: values[b, t] = V(idx[b, :t+1])."""
        return self.value_head(self.body.hidden(idx)).squeeze(-1).float()


class RunningMoments:
    """Running mean and variance of everything seen (Chan et al.'s parallel update), for reward normalisation."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        n, mean, var = x.numel(), x.mean().item(), x.var(unbiased=False).item()
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += var * n + delta ** 2 * self.n * n / total
        self.n = total

    @property
    def std(self) -> float:
        return (self.m2 / max(1, self.n)) ** 0.5


class PPO(PolicyGradient):
    name = "ppo"

    def __init__(self, cfg, policy, ref, *, critic_body: nn.Module, **kw):
        super().__init__(cfg, policy, ref, **kw)
        self.pcfg: PPOConfig = cfg.ppo
        self.critic = Critic(critic_body).to(self.device)
        self.critic_opt = make_optimizer(self.critic, self.pcfg.critic_lr, cfg.weight_decay, cfg.betas)
        self.reward_moments = RunningMoments()

    def values(self, batch: ro.Batch) -> torch.Tensor:
        with self.autocast():
            return self.critic(batch.idx[:, :-1])

    def advantages(self, roll: ro.Rollout, plan) -> None:
        self.score_logprobs(roll, plan)
        first_epoch = [micro for mb in plan[0] for micro in mb]
        self.critic.eval()
        roll.token["old_values"] = ro.score(self.values, roll, first_epoch, self.pad_id, self.device)
        self.critic.train()
        rewards = roll.rewards
        if self.pcfg.normalize_reward:  # moments of the whole step's rewards, over all processes
            self.reward_moments.update(torch.cat(dist.all_gather_objects(rewards.cpu(), self.ctx)))
            rewards = (rewards - self.reward_moments.mean) / (self.reward_moments.std + 1e-8)
        token_rewards, mask, lengths = self.token_rewards(roll, rewards)
        values, _ = ro.pad_responses(roll.token["old_values"])
        adv, returns = gae(token_rewards, values, mask, self.pcfg.gamma, self.pcfg.gae_lambda)
        if self.pcfg.whiten_advantages:
            adv = whiten(adv, mask, sum_over_processes=self.sum_over_processes)
        roll.token["advantages"] = ro.unpad(adv, lengths)
        roll.token["returns"] = ro.unpad(returns, lengths)

    def value_loss(self, batch: ro.Batch) -> tuple[torch.Tensor, dict]:
        values = self.values(batch)
        per_token, clipped = clipped_value_loss(values, batch["old_values"], batch["returns"], self.pcfg.value_clip)
        loss = aggregate(per_token, batch.mask, "token")
        with torch.no_grad():
            m = batch.mask.bool()
            stats = {"value_loss": loss.item(), "value_clip_frac": aggregate(clipped, batch.mask, "token").item(),
                     "value_mean": values[m].mean().item() if m.any() else 0.0}
        return loss, stats

    def update(self, roll: ro.Rollout, plan) -> dict:
        warmup = int(self.cfg.warmup_ratio * self.total_opt_steps)
        critic_stats = self.run_minibatches(
            roll, plan, self.critic, self.critic_opt, self.value_loss, ("old_values", "returns"),
            lambda k: cosine_lr(self.opt_step + k, self.total_opt_steps, self.pcfg.critic_lr, warmup,
                                self.cfg.min_lr_ratio), agg="token", prefix="critic/")
        return {**super().update(roll, plan), **critic_stats}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "critic": self.critic.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "reward_moments": vars(self.reward_moments).copy()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        vars(self.reward_moments).update(state["reward_moments"])

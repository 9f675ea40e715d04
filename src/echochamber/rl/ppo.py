"""PPO with a critic (Schulman et al. 2017), as the authors ran it (OpenRLHF 0.6): a critic initialised from the
pretrained model with a new scalar value head, GAE, advantages whitened over the batch, the k1 KL to the
reference folded into the per-token reward, value clipping.

    r_t   = -beta * k1(pi_old, ref)_t   (+ r on the last token; r optionally normalised by running moments)
    A_t   = GAE(r, V; gamma, lambda) = sum_l (gamma lambda)^l delta_{t+l},  delta_t = r_t + gamma V_{t+1} - V_t
    A_t  <- whiten over the batch's tokens;  R_t = A_t (before whitening) + V_t, the critic's target
    actor:  L_pi = agg_t[ -min(rho_t A_t, clip(rho_t, 1-e, 1+e) A_t) ]
    critic: L_V  = mean_t 0.5 max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -c, c) - R_t)^2)

Paper: gamma 1, lambda 0.95, c 0.2, e 0.2, actor lr 1e-6, critic lr 7e-6 as configured, beta in {0, 1e-3, 1e-2}.
The critic as it really ran (PAPER.md, "the critic's rate"): OpenRLHF builds every optimizer with the ACTOR's rate,
and the critic's cosine floor is 0.1 x its configured rate, an absolute value:
    lr_critic(t) = cosine from rl.lr (1e-6) down to critic_min_lr = 0.1 x 7e-6 = 7e-7   (0.7x, not 0.1x)
and its value head starts ~ N(0, (1 / (d_model + 1))^2), not at zero.
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
    critic_lr: float | None = None  # critic peak learning rate, cosine like the actor's; None = rl.lr, the rate the
    # authors' critic really ran at (their configs name 7e-6, but OpenRLHF hands every model the actor's 1e-6)
    critic_min_lr: float | None = None  # the critic's cosine floor, absolute; None = rl.min_lr_ratio x the critic's
    # peak (the authors': 0.1 x their nominal 7e-6 = 7e-7, with a peak of 1e-6)
    gamma: float = 1.0  # discount (paper: 1)
    gae_lambda: float = 0.95  # GAE lambda (paper: 0.95)
    value_clip: float = 0.2  # value clipping around the rollout's values (paper: 0.2)
    whiten_advantages: bool = True  # (paper: yes)
    normalize_reward: bool = False  # divide rewards by running moments (OpenRLHF --normalize_reward; paper: off)
    freeze_actor_steps: int = 0  # the first N rollouts train the critic alone (OpenRLHF --freezing_actor_steps;
    # paper: 0), so that its values carry the outcome to the early tokens before the actor follows them; the
    # learning-rate schedules run on meanwhile, so the run's length and its schedule stay those of the others

    def __post_init__(self):
        check(self, positive=("critic_lr", "critic_min_lr", "value_clip"), unit=("gamma", "gae_lambda"),
              at_least_0=("freeze_actor_steps",))


class Critic(nn.Module):
    """V(s_t): the pretrained decoder's final hidden states and a new linear value head, initialised as the
    authors' (OpenRLHF's) was: w ~ N(0, (1 / (d_model + 1))^2). The body's own output head is unused: frozen when
    it is a matrix of its own; with tied embeddings it IS the input embedding, which trains (as theirs did)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        if body.lm_head.weight is not body.wte.weight:
            self.body.lm_head.requires_grad_(False)
        d = body.config.d_model
        self.value_head = nn.Linear(d, 1, bias=False)
        nn.init.normal_(self.value_head.weight, mean=0.0, std=1.0 / (d + 1))

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
        self.critic_lr = cfg.lr if self.pcfg.critic_lr is None else self.pcfg.critic_lr
        critic_min_lr = (cfg.min_lr_ratio * self.critic_lr if self.pcfg.critic_min_lr is None
                         else self.pcfg.critic_min_lr)
        if critic_min_lr > self.critic_lr:
            raise ValueError(f"rl.ppo.critic_min_lr={critic_min_lr} is above the critic's peak rate {self.critic_lr} "
                             f"(rl.ppo.critic_lr, or rl.lr when that is unset)")
        self.critic_min_ratio = critic_min_lr / self.critic_lr
        self.critic_opt = make_optimizer(self.critic, self.critic_lr, cfg.weight_decay, cfg.betas)
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
        with torch.no_grad():  # on the device: run_minibatches reads them once per update
            stats = {"value_loss": loss.detach(), "value_clip_frac": aggregate(clipped, batch.mask, "token"),
                     "value_mean": aggregate(values, batch.mask, "token")}
        return loss, stats

    def update(self, roll: ro.Rollout, plan) -> dict:
        warmup = int(self.cfg.warmup_ratio * self.total_opt_steps)
        critic_stats = self.run_minibatches(
            roll, plan, self.critic, self.critic_opt, self.value_loss, ("old_values", "returns"),
            lambda k: cosine_lr(self.opt_step + k, self.total_opt_steps, self.critic_lr, warmup,
                                self.critic_min_ratio), agg="token", prefix="critic/")
        per_rollout = sum(len(epoch) for epoch in plan)
        if self.opt_step < self.pcfg.freeze_actor_steps * per_rollout:  # the actor waits (freeze_actor_steps)
            self.opt_step += per_rollout
            return critic_stats
        return {**super().update(roll, plan), **critic_stats}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "critic": self.critic.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "reward_moments": vars(self.reward_moments).copy()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        vars(self.reward_moments).update(state["reward_moments"])

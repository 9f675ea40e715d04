"""The shape every RL algorithm here has, and the clipped policy-gradient update GRPO, its variants and PPO's actor
share. The training loop (rl/train.py) knows no algorithm; each step it calls

    algo.advantages(roll, plan)   old / reference log-probs, then per-token advantages, into roll.token
    algo.update(roll, plan)       optimizer steps over the mini-batches of `plan`; returns statistics

An algorithm file subclasses PolicyGradient and says only how a rollout's rewards become advantages:

    sequence_advantages(r)   one number per sample from the (P*G,) rewards (GRPO: (r - mean) / std per group)

With the KL to the reference in the loss (rl.kl_in=loss, GRPO's form) every response token gets its sample's
advantage and the loss adds beta * k(pi, ref) per token. With the KL in the reward (rl.kl_in=reward, PPO's form)
each token earns -beta * k(pi_old, ref), the last token also the sample's advantage, and a token's advantage is
the sum of what it and later tokens earn (gamma = 1): A_t = a + sum_{t'>=t} -beta * k_t'.

    L = agg_t[ -min(rho_t A_t, clip(rho_t, 1-e, 1+e) A_t) + beta * k_t ]      rho_t = pi(y_t) / pi_old(y_t)
"""

from __future__ import annotations

import math

import torch

from .. import distributed as dist
from ..training import cosine_lr, make_optimizer, set_lr
from . import rollout as ro
from .losses import KL_ESTIMATORS, aggregate, clipped_policy_loss, kl_k1, kl_k3, returns_to_go

# Each algorithm's own KL placement and estimator (rl.kl_in / rl.kl_estimator "auto").
PAPER_KL = {"grpo": ("loss", "k3"), "drgrpo": ("loss", "k3"), "rloo": ("reward", "k1"),
            "reinforce_pp": ("reward", "k1"), "ppo": ("reward", "k1"), "ei": ("loss", "k3"),
            "reinforce_baseline": ("reward", "k1")}


def pg_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *, clip_eps: float,
                  ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0, kl_est=kl_k3,
                  kl_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss (B, T): -min(rho A, clip(rho) A) + beta * k(pi, ref) (the KL only when ref_logp is given;
    with kl_grad=False its value is added without gradient). Returns (loss, policy-gradient part, clipped)."""
    pg, clipped = clipped_policy_loss(logp, old_logp, advantages, clip_eps)
    per_token = pg
    if ref_logp is not None and kl_coef > 0:
        per_token = per_token + kl_coef * kl_est(logp if kl_grad else logp.detach(), ref_logp)
    return per_token, pg, clipped


def target_tokens(roll: ro.Rollout, indices: list[int]) -> int:
    """How many target tokens (make_batch's mask) the samples `indices` have, counted on the host: every response
    token, less the interpreter's output (rl.interpreter), which is no target."""
    if roll.written is None:
        return sum(len(roll.response_tokens[i]) for i in indices)
    return sum(sum(roll.written[i]) for i in indices)


class PolicyGradient:
    name = "pg"
    loss_agg: str | None = None  # an algorithm that fixes the loss aggregation (Dr. GRPO); None = rl.loss_agg

    def __init__(self, cfg, policy: torch.nn.Module, ref: torch.nn.Module | None, *, pad_id: int, autocast,
                 device="cpu", ctx: dist.DistContext | None = None):
        self.cfg, self.policy, self.ref = cfg, policy, ref
        self.pad_id, self.autocast, self.device = pad_id, autocast, device
        # Under torchrun each process holds its share of a step's samples; sums over all of them go through here.
        self.ctx = ctx or dist.DistContext(0, 0, 1, torch.device(device))
        auto_in, auto_est = PAPER_KL[cfg.algo]
        self.kl_in = auto_in if cfg.kl_in == "auto" else cfg.kl_in
        self.kl_est = KL_ESTIMATORS[auto_est if cfg.kl_estimator == "auto" else cfg.kl_estimator]
        self.opt = make_optimizer(policy, cfg.lr, cfg.weight_decay, cfg.betas)
        self.agg = self.loss_agg or cfg.loss_agg
        self.opt_step = 0
        n = cfg.prompts_per_step * cfg.samples_per_prompt
        self.total_opt_steps = cfg.steps * cfg.epochs * math.ceil(n / cfg.minibatch_size)

    # -- what a subclass says --------------------------------------------------------------------------------

    def sequence_advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
        raise NotImplementedError

    def finish_advantages(self, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A last transform of the (N, T) token advantages (REINFORCE++ whitens them over the batch)."""
        return adv

    # -- the shared steps ------------------------------------------------------------------------------------

    def sum_over_processes(self, t: torch.Tensor) -> torch.Tensor:
        return dist.all_reduce_sum(t, self.ctx)

    def plan(self, roll: ro.Rollout, gen: torch.Generator) -> list[list[list[int]]]:
        """This rollout's update layout (epochs x mini-batches x micro-batches of this process's samples)."""
        return ro.plan_minibatches(list(range(roll.n_global or len(roll))), self.cfg.minibatch_size,
                                   self.cfg.micro_batch_size, self.cfg.epochs, gen, roll.offset, len(roll))

    def logprobs(self, model, batch: ro.Batch, with_entropy: bool = False):
        with self.autocast():
            return ro.response_logprobs(model, batch, self.cfg.logprob_temperature, with_entropy)

    def score_logprobs(self, roll: ro.Rollout, plan) -> None:
        """Old-policy and (with a KL) reference log-probs of every response token, over the update's first-epoch
        micro-batches."""
        first_epoch = [micro for mb in plan[0] for micro in mb]
        roll.token["old_logp"] = ro.score(lambda b: self.logprobs(self.policy, b)[0], roll, first_epoch,
                                          self.pad_id, self.device)
        if self.ref is not None:
            roll.token["ref_logp"] = ro.score(lambda b: self.logprobs(self.ref, b)[0], roll, first_epoch,
                                              self.pad_id, self.device)

    def token_rewards(self, roll: ro.Rollout, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(N, T) per-token rewards: -beta * k(pi_old, ref) on every token when the KL is in the reward, plus
        `final` (N,) on each sample's last token; with their mask and the response lengths."""
        old, mask = ro.pad_responses(roll.token["old_logp"])
        rewards = torch.zeros_like(old)
        if self.kl_in == "reward" and self.cfg.kl_coef > 0 and self.ref is not None:
            ref, _ = ro.pad_responses(roll.token["ref_logp"])
            rewards = -self.cfg.kl_coef * self.kl_est(old, ref) * mask
        lengths = mask.sum(-1).long()
        rewards[torch.arange(len(roll), device=mask.device), (lengths - 1).clamp(min=0)] += final
        return rewards, mask, lengths.tolist()

    def advantages(self, roll: ro.Rollout, plan) -> None:
        self.score_logprobs(roll, plan)
        token_rewards, mask, lengths = self.token_rewards(roll, self.sequence_advantages(roll.rewards, roll.group_size))
        adv = self.finish_advantages(returns_to_go(token_rewards, mask), mask)
        roll.token["advantages"] = ro.unpad(adv, lengths)

    def policy_loss(self, batch: ro.Batch) -> tuple[torch.Tensor, dict]:
        """The clipped surrogate plus (kl_in=loss) beta * k(pi, ref) per token; loss over the batch's tokens."""
        cfg = self.cfg
        logp, entropy = self.logprobs(self.policy, batch, with_entropy=True)
        kl_in_loss = self.kl_in == "loss" and self.ref is not None
        per_token, pg, clipped = pg_token_loss(logp, batch["old_logp"], batch["advantages"], clip_eps=cfg.clip_eps,
                                               ref_logp=batch["ref_logp"] if kl_in_loss else None,
                                               kl_coef=cfg.kl_coef, kl_est=self.kl_est, kl_grad=cfg.kl_grad)
        loss = aggregate(per_token, batch.mask, self.agg, cfg.max_new_tokens)
        with torch.no_grad():  # statistics stay on the device (run_minibatches reads them once per update)
            m = batch.mask.bool()
            # KL of the current policy to the reference (or, with no reference, to the rollout policy).
            base = batch["ref_logp"] if self.ref is not None else batch["old_logp"]
            ratio = torch.exp(logp - batch["old_logp"]).masked_fill(~m, -torch.inf)
            stats = {"loss": loss.detach(), "pg_loss": aggregate(pg, batch.mask, self.agg, cfg.max_new_tokens),
                     "clip_frac": aggregate(clipped, batch.mask, "token"),
                     "ratio_max": torch.where(m.any(), ratio.max(), 1.0),
                     "kl_k1": aggregate(kl_k1(logp, base), batch.mask, "token"),
                     "kl_k3": aggregate(kl_k3(logp, base), batch.mask, "token"),
                     "entropy": aggregate(entropy, batch.mask, "token")}
        return loss, stats

    def batch_fields(self) -> tuple[str, ...]:
        return ("old_logp", "advantages") + (("ref_logp",) if self.ref is not None else ())

    def update(self, roll: ro.Rollout, plan) -> dict:
        """One optimizer step per mini-batch of `plan`; micro-batches weighted by their share of it."""
        stats = self.run_minibatches(roll, plan, self.policy, self.opt, self.policy_loss, self.batch_fields(),
                                     lambda k: cosine_lr(self.opt_step + k, self.total_opt_steps, self.cfg.lr,
                                                         int(self.cfg.warmup_ratio * self.total_opt_steps),
                                                         self.cfg.min_lr_ratio), self.agg)
        self.opt_step += sum(len(epoch) for epoch in plan)
        return stats

    def run_minibatches(self, roll, plan, model, opt, loss_fn, fields, lr_fn, agg: str,
                        prefix: str = "") -> dict:
        """Generic mini-batch loop: for the k-th mini-batch, set the lr to lr_fn(k), accumulate loss_fn over its
        micro-batches, each weighted by its share of the mini-batch's tokens (or sequences, for per-sequence
        aggregation) over ALL processes, so neither micro-batching nor the number of processes changes the loss;
        sum the gradients over the processes, clip the norm, step."""
        # No host synchronisation per micro-batch: the weights come from counts the host knows (summed over the
        # processes once, for all mini-batches), and the statistics are summed on the device (fp64, as the
        # host's sum of their values would be) and read back once, at the end.
        mb_counts = self.global_counts(roll, [mb for epoch in plan for mb in epoch])
        sums: dict[str, torch.Tensor] = {}
        n_steps, lr = 0, 0.0
        for epoch in plan:
            for mb in epoch:
                lr = lr_fn(n_steps)
                set_lr(opt, lr)
                n_seqs, n_tok = mb_counts[n_steps]
                for micro in mb:
                    b = ro.make_batch(roll, micro, self.pad_id, fields, self.device)
                    loss, st = loss_fn(b)
                    w = (target_tokens(roll, micro) / max(1.0, n_tok) if agg == "token"
                         else len(micro) / max(1.0, n_seqs))
                    (loss * w).backward()
                    for k, v in st.items():
                        sums[prefix + k] = sums.get(prefix + k, 0.0) + v.double() * w
                dist.all_reduce_grads(model.parameters(), self.ctx)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
                sums[prefix + "grad_norm"] = sums.get(prefix + "grad_norm", 0.0) + grad_norm.double() / self.ctx.world_size
                opt.step()
                opt.zero_grad(set_to_none=True)
                n_steps += 1
        keys = sorted(sums)
        if keys:  # the statistics, weighted by global shares, sum over the processes: one all-reduce, one copy
            totals = self.sum_over_processes(torch.stack([sums[k] for k in keys])).tolist()
            sums = dict(zip(keys, totals))
        out = {k: v / max(1, n_steps) for k, v in sums.items()}
        out[prefix + "lr"] = lr
        return out

    def global_counts(self, roll: ro.Rollout, minibatches: list[list[list[int]]]) -> list[tuple[float, float]]:
        """(sequences, target tokens) of each mini-batch over all processes, from the host's token lists (one
        all-reduce for all of them under torchrun; no device read)."""
        local = [[float(sum(len(micro) for micro in mb)), float(sum(target_tokens(roll, micro) for micro in mb))]
                 for mb in minibatches]
        if not (self.ctx.active and local):
            return [tuple(c) for c in local]
        counts = torch.tensor(local, dtype=torch.float64, device=self.ctx.device)
        return [tuple(c) for c in self.sum_over_processes(counts).tolist()]

    # -- checkpoint ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"opt_step": self.opt_step}

    def load_state_dict(self, state: dict) -> None:
        self.opt_step = state["opt_step"]


"""Expert Iteration (Anthony et al. 2017; as in Havrilla et al. 2024 and the paper): each round samples k
responses per training prompt from the current model, keeps the correct ones, drops exact duplicates, and
fine-tunes the ORIGINAL pretrained model on what was kept (loss on response tokens only). The next round samples
from the new model. A round is one step of the RL loop: metrics, rollouts and evaluations are logged per round.

    D_n = unique{ (x, y) : y ~ pi_{n-1}(. | x), k per x, r(x, y) = 1 }
    pi_n = argmin_theta  - sum_{(x,y) in D_n} sum_t log pi_theta(y_t | x, y_<t) / |tokens|,  from theta_0

Paper: k = 64 at temperature 1.0, top-p 0.95; SFT lr 1e-4 cosine to 1e-5, batch 256, 2 epochs; 3+ rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed as dist
from ..checks import check
from ..model import OLMo
from ..training import cosine_lr, make_optimizer
from . import rollout as ro
from .pg import PolicyGradient


@dataclass
class EIConfig:
    rounds: int = 3  # sample -> filter -> fine-tune rounds (paper: 3 or more)
    prompts_per_round: int = 0  # training prompts sampled per round; 0 = all of them (paper: all 7473)
    samples_per_prompt: int = 64  # k (paper: 64)
    temperature: float = 1.0  # (paper: 1.0)
    top_p: float = 0.95  # (paper: 0.95)
    lr: float = 1e-4  # SFT peak learning rate, cosine to lr * rl.min_lr_ratio (paper: 1e-4 -> 1e-5)
    epochs: int = 2  # SFT passes over the kept responses (paper: 2)
    batch_size: int = 256  # sequences per SFT optimizer step (paper: 256)

    def __post_init__(self):
        check(self, at_least_1=("rounds", "samples_per_prompt", "epochs", "batch_size"),
              at_least_0=("prompts_per_round", "temperature"), positive=("lr",), unit_open=("top_p",))


def keep_mask(roll: ro.Rollout) -> tuple[torch.Tensor, int]:
    """1.0 for each correct response that is the first of its exact (prompt, response) pair, else 0.0; and the
    number of correct duplicates dropped."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    keep = torch.zeros(len(roll), device=roll.rewards.device)
    dupes = 0
    for i, g in enumerate(roll.graded):
        if not g.correct:
            continue
        key = (i // roll.group_size, tuple(roll.response_tokens[i]))
        if key in seen:
            dupes += 1
            continue
        seen.add(key)
        keep[i] = 1.0
    return keep, dupes


class ExpertIteration(PolicyGradient):
    name = "ei"

    def __init__(self, cfg, policy, ref, *, init_dir: Path, gen: torch.Generator, **kw):
        super().__init__(cfg, policy, ref, **kw)
        self.ecfg: EIConfig = cfg.ei
        self.init_dir, self.gen = Path(init_dir), gen
        self.keep, self.dupes = torch.zeros(0), 0

    def advantages(self, roll: ro.Rollout, plan) -> None:
        self.keep, self.dupes = keep_mask(roll)  # this round's (N,) 1/0 and the duplicates dropped

    def sft_loss(self, batch: ro.Batch) -> tuple[torch.Tensor, dict]:
        with self.autocast():
            logp, _ = ro.response_logprobs(self.policy, batch)  # plain model (temperature 1)
        loss = -(logp * batch.mask).sum() / batch.mask.sum().clamp(min=1.0)
        return loss, {"sft_loss": loss.detach()}

    def update(self, roll: ro.Rollout, plan) -> dict:
        # The kept samples of every process, by global index: all draw the same SFT plan and keep their own.
        local = (self.keep.nonzero().flatten() + roll.offset).tolist()
        kept = [i for part in dist.all_gather_objects(local, self.ctx) for i in part]
        dupes = sum(dist.all_gather_objects(self.dupes, self.ctx))
        stats = {"ei/kept": len(kept), "ei/duplicates": dupes}
        if not kept:
            return stats  # nothing correct: the policy stays as it is
        # Fine-tune from the pretrained weights, with a fresh optimizer, on this round's kept responses.
        self.policy.load_state_dict(OLMo.load(self.init_dir, device=self.device).state_dict())
        opt = make_optimizer(self.policy, self.ecfg.lr, self.cfg.weight_decay, self.cfg.betas)
        sft_plan = ro.plan_minibatches(kept, self.ecfg.batch_size, self.cfg.micro_batch_size, self.ecfg.epochs,
                                       self.gen, roll.offset, len(roll))
        total = sum(len(epoch) for epoch in sft_plan)
        warmup = int(self.cfg.warmup_ratio * total)
        stats.update(self.run_minibatches(roll, sft_plan, self.policy, opt, self.sft_loss, (),
                                          lambda k: cosine_lr(k, total, self.ecfg.lr, warmup, self.cfg.min_lr_ratio),
                                          agg="token", prefix="ei/"))
        self.opt_step += total
        return stats


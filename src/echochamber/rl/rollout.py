"""Rollouts: sample G responses for each of P prompts, grade them, and lay them out as padded token batches.

A rollout is the unit of RL data: P x G (prompt, response) pairs with their rewards. The algorithm then attaches
per-token values to it (`Rollout.token`: old and reference log-probabilities, critic values, advantages,
returns), one (T_i,) tensor per sample, and the update reads them back as padded `Batch`es. Every
log-probability (policy, old policy, reference, Expert Iteration's SFT) comes from `response_logprobs` on a
`Batch` built by `make_batch`, so the first mini-batch's ratio pi / pi_old is exactly 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import formats
from ..model import OLMo
from ..rewards import reward
from ..sampler import SampleConfig, generate
from ..tasks import Problem
from ..tokenizer import Tokenizer


@dataclass
class Rollout:
    problems: list[Problem]  # (P,)
    prompt_tokens: list[list[int]]  # (P*G,) the question's tokens, repeated for each of its samples
    response_tokens: list[list[int]]  # (P*G,) generated tokens, EOS included when the sample finished
    texts: list[str]  # (P*G,) decoded responses (without EOS)
    finished: list[bool]  # (P*G,) stopped at EOS (False: cut at max_new_tokens)
    graded: list  # (P*G,) formats.Graded
    rewards: torch.Tensor  # (P*G,)
    group_size: int
    token: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # name -> (P*G,) tensors of (T_i,)
    seconds_generate: float = 0.0
    seconds_grade: float = 0.0

    def __len__(self) -> int:
        return len(self.response_tokens)

    def question(self, i: int) -> Problem:
        return self.problems[i // self.group_size]


def collect(model: OLMo, tok: Tokenizer, problems: list[Problem], scfg: SampleConfig, *, seed: int, mode: str,
            reward_sees_prompt: bool, pool=None, max_rows: int = 512) -> Rollout:
    """Sample scfg.n responses per problem and grade them (code runs in the sandbox pool). Generation runs in
    chunks of at most max_rows sequences (Expert Iteration samples thousands per round)."""
    t0 = time.perf_counter()
    prompts = tok.encode_batch([p.question for p in problems])
    per_call = max(1, max_rows // scfg.n)
    gens = []
    for c, start in enumerate(range(0, len(prompts), per_call)):
        gens += generate(model, prompts[start:start + per_call], scfg, eos_id=tok.eos_id, seed=seed + 7919 * c)
    t1 = time.perf_counter()
    G = scfg.n
    texts = tok.decode_batch([g.tokens[:-1] if g.finished else g.tokens for g in gens])
    # The paper's reward function is handed prompt + response (so "def" in a question can flip a label).
    prompt_texts = [problems[i // G].question if reward_sees_prompt else "" for i in range(len(gens))]
    graded = formats.grade_many(texts, [problems[i // G].answer for i in range(len(gens))], mode=mode, pool=pool,
                                prompts=prompt_texts)
    rewards = torch.tensor([reward(g) for g in graded], dtype=torch.float32)
    t2 = time.perf_counter()
    return Rollout(problems=problems, prompt_tokens=[prompts[i // G] for i in range(len(gens))],
                   response_tokens=[g.tokens for g in gens], texts=texts, finished=[g.finished for g in gens],
                   graded=graded, rewards=rewards, group_size=G,
                   seconds_generate=t1 - t0, seconds_grade=t2 - t1)


@dataclass
class Batch:
    """A padded micro-batch. idx (B, L): prompt + response tokens, right-padded (every row keeps positions
    0..len-1, so the causal forward needs no attention mask). mask (B, L-1): 1 where target idx[b, t+1] is a
    response token. fields: the rollout's per-token values laid out like mask, each (B, L-1)."""

    indices: list[int]
    idx: torch.Tensor
    mask: torch.Tensor
    fields: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.fields[name]

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum().item())


def make_batch(roll: Rollout, indices: list[int], pad_id: int, fields=(), device="cpu") -> Batch:
    seqs = [roll.prompt_tokens[i] + roll.response_tokens[i] for i in indices]
    L = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L - 1), dtype=torch.float32)
    for b, i in enumerate(indices):
        p, r = len(roll.prompt_tokens[i]), len(roll.response_tokens[i])
        idx[b, : p + r] = torch.tensor(seqs[b])
        mask[b, p - 1: p - 1 + r] = 1.0
    laid_out = {}
    for name in fields:
        out = torch.zeros_like(mask)
        for b, i in enumerate(indices):
            out[b][mask[b].bool()] = roll.token[name][i]
        laid_out[name] = out.to(device)
    return Batch(list(indices), idx.to(device), mask.to(device), laid_out)


def response_logprobs(model, batch: Batch, temperature: float = 1.0,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | prefix) (B, L-1) fp32 for the batch's tokens, from logits / temperature (the authors divide by
    the rollout temperature; 1 = the plain model); with_entropy: also the entropy of each position's
    distribution (no gradient). The ONE function for policy, old-policy, reference and SFT log-probs."""
    logits = model(batch.idx[:, :-1]).float()  # (B, L-1, V)
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, batch.idx[:, 1:, None]).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@torch.no_grad()
def score(fn, roll: Rollout, micro_batches: list[list[int]], pad_id: int, device="cpu") -> list[torch.Tensor]:
    """fn(batch) -> (B, L-1) values for every micro-batch, returned per sample as (T_i,) tensors (response
    positions only). Run over the update's own first-epoch micro-batches, so the same padded tensors are seen."""
    out: list[torch.Tensor | None] = [None] * len(roll)
    for indices in micro_batches:
        batch = make_batch(roll, indices, pad_id, device=device)
        values = fn(batch)
        for b, i in enumerate(indices):
            out[i] = values[b][batch.mask[b].bool()].float().cpu()
    return out  # type: ignore[return-value]


def plan_minibatches(n: int, minibatch_size: int, micro_batch_size: int, epochs: int,
                     gen: torch.Generator) -> list[list[list[int]]]:
    """The update's layout: for each epoch a fresh shuffle cut into mini-batches (one optimizer step each), each
    cut into micro-batches (one forward/backward each): plan[epoch][minibatch] = [micro index lists]."""
    micro = micro_batch_size or minibatch_size
    plan = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        mbs = [order[s: s + minibatch_size] for s in range(0, n, minibatch_size)]
        plan.append([[mb[s: s + micro] for s in range(0, len(mb), micro)] for mb in mbs])
    return plan


def pad_responses(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (T_i,) tensors -> right-padded (N, T) and its mask: the layout advantages are computed in."""
    T = max(1, max(len(v) for v in values))
    out = torch.zeros(len(values), T)
    mask = torch.zeros(len(values), T)
    for i, v in enumerate(values):
        out[i, : len(v)] = v
        mask[i, : len(v)] = 1.0
    return out, mask


def unpad(x: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    return [x[i, :n].clone() for i, n in enumerate(lengths)]

"""Rollouts: sample G responses for each of P prompts, grade them, and lay them out as padded token batches.

A rollout is the unit of RL data: P x G (prompt, response) pairs with their rewards. The algorithm then attaches
per-token values to it (`Rollout.token`: old and reference log-probabilities, critic values, advantages,
returns), one (T_i,) tensor per sample, and the update reads them back as padded `Batch`es. Every
log-probability (policy, old policy, reference, Expert Iteration's SFT) comes from `response_logprobs` on a
`Batch` built by `make_batch`, so the first mini-batch's ratio pi / pi_old is exactly 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .. import formats, memory
from ..interpreter import sample
from ..model import OLMo
from ..rewards import reward
from ..sampler import SampleConfig
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
    token: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # name -> (P*G,) tensors of (T_i,), T_i =
    # the sample's target tokens (Batch.mask): its response tokens, less interpreter output
    offset: int = 0  # under torchrun: the global index of this process's first sample (its share of the step)
    n_global: int = 0  # samples of the step over all processes (0 = len(self): one process)
    seconds_generate: float = 0.0
    seconds_grade: float = 0.0
    # rl.interpreter: (P*G,) per response token, did the policy write it (False: the interpreter's output, which
    # is no target: make_batch masks it out). None: every response token is the policy's.
    written: list[list[bool]] | None = None

    def __len__(self) -> int:
        return len(self.response_tokens)

    def question(self, i: int) -> Problem:
        return self.problems[i // self.group_size]


def collect(model: OLMo, tok: Tokenizer, problems: list[Problem], scfg: SampleConfig, *, seed: int, mode: str,
            reward_sees_prompt: bool, pool=None, chunk_prompts: int = 0, first_chunk: int = 0,
            device="cpu", interpreter: bool = False, free_bytes: float = math.inf) -> Rollout:
    """Sample scfg.n responses per problem and grade them (code runs in the sandbox pool). Generation runs in
    units of chunk_prompts prompts (0: as many as fit in 512 rows); unit c is seeded with seed + 7919 *
    (first_chunk + c), so a process sampling its share of a step draws what one process sampling the whole step
    draws. A unit whose KV cache does not fit in free_bytes (memory.MemoryPlan.sampling_room: the budget less
    what stays resident; inf on a CPU) is cut into equal calls that fit, call j seeded + j x memory.SUBCALL_SEED
    (memory.sampler_calls: the cut depends on the unit and the memory, not on the number of processes).
    interpreter: code blocks run in the sandbox while sampling (interpreter.py; rl.interpreter)."""
    t0 = time.perf_counter()
    prompts = tok.encode_batch([p.question for p in problems])
    fit = memory.rows_per_call(getattr(model, "module", model).config, scfg.max_new_tokens, free_bytes,
                               rows_per_prompt=scfg.n, prompt_tokens=max(map(len, prompts), default=0), cap=None,
                               element_bytes=memory.cache_element_bytes(scfg.dtype, torch.device(device).type))
    gens = []
    for start, stop, c, j in memory.sampler_calls(len(prompts), scfg.n, chunk_prompts, fit // scfg.n):
        gens += sample(model, tok, prompts[start:stop], scfg,
                       seed=seed + 7919 * (first_chunk + c) + memory.SUBCALL_SEED * j, interpreter=interpreter,
                       pool=pool)
    t1 = time.perf_counter()
    G = scfg.n
    texts = tok.decode_batch([g.tokens[:-1] if g.finished else g.tokens for g in gens])
    # The paper's reward function is handed prompt + response (so "def" in a question can flip a label).
    prompt_texts = [problems[i // G].question if reward_sees_prompt else "" for i in range(len(gens))]
    graded = formats.grade_many(texts, [problems[i // G].answer for i in range(len(gens))], mode=mode, pool=pool,
                                prompts=prompt_texts)
    rewards = torch.tensor([reward(g) for g in graded], dtype=torch.float32, device=device)
    t2 = time.perf_counter()
    return Rollout(problems=problems, prompt_tokens=[prompts[i // G] for i in range(len(gens))],
                   response_tokens=[g.tokens for g in gens], texts=texts, finished=[g.finished for g in gens],
                   graded=graded, rewards=rewards, group_size=G,
                   seconds_generate=t1 - t0, seconds_grade=t2 - t1,
                   written=[g.written for g in gens] if interpreter else None)


@dataclass
class Batch:
    """A padded micro-batch. idx (B, L): prompt + response tokens, right-padded (every row keeps positions
    0..len-1, so the causal forward needs no attention mask). mask (B, L-1): 1 where target idx[b, t+1] is a
    response token the policy wrote (interpreter output is no target). fields: the rollout's per-token values laid
    out like mask, each (B, L-1)."""

    indices: list[int]
    idx: torch.Tensor
    mask: torch.Tensor
    fields: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.fields[name]


def make_batch(roll: Rollout, indices: list[int], pad_id: int, fields=(), device="cpu") -> Batch:
    """The samples `indices` as one padded batch on `device` (one host-to-device copy of the tokens; the
    per-token fields, already on the device, are scattered into place there)."""
    seqs = [roll.prompt_tokens[i] + roll.response_tokens[i] for i in indices]
    L = max(len(s) for s in seqs)
    idx = torch.tensor([s + [pad_id] * (L - len(s)) for s in seqs], dtype=torch.long, device=device)  # (B, L)
    starts = torch.tensor([len(roll.prompt_tokens[i]) - 1 for i in indices], device=device)  # first target
    ends = starts + torch.tensor([len(roll.response_tokens[i]) for i in indices], device=device)
    pos = torch.arange(L - 1, device=device)
    mask = ((pos >= starts[:, None]) & (pos < ends[:, None])).float()  # (B, L-1)
    if roll.written is not None:  # interpreter output: no loss, no KL, no advantage, no value target
        rows = [[0.0] * (len(roll.prompt_tokens[i]) - 1) + [float(w) for w in roll.written[i]] for i in indices]
        mask = mask * torch.tensor([r + [0.0] * (L - 1 - len(r)) for r in rows], device=device)
    laid_out = {}
    for name in fields:
        out = torch.zeros_like(mask)
        out[mask.bool()] = torch.cat([roll.token[name][i] for i in indices]).to(device)  # row by row, in order
        laid_out[name] = out
    return Batch(list(indices), idx, mask, laid_out)


def response_logprobs(model, batch: Batch, temperature: float = 1.0,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | prefix) (B, L-1) fp32 for the batch's tokens, from logits / temperature (the authors divide by
    the rollout temperature; 1 = the plain model); with_entropy: also the entropy of each position's
    distribution (no gradient). The ONE function for policy, old-policy, reference and SFT log-probs.
    With z the logits and tau the temperature (model.head_logprobs computes both over chunks of rows, so the
    full (B, L-1, V) logits are never stored, in any precision):
        log p_tau(y) = z_y / tau - logsumexp(z / tau) ;   H = logsumexp(z / tau) - sum_v softmax(z / tau)_v z_v / tau
    It goes through model.forward (with targets), so a DistributedDataParallel wrapper sees the pass."""
    out = model(batch.idx[:, :-1], batch.idx[:, 1:], temperature=temperature, with_entropy=with_entropy)
    return out if with_entropy else (out, None)


@torch.no_grad()
def score(fn, roll: Rollout, micro_batches: list[list[int]], pad_id: int, device="cpu") -> list[torch.Tensor]:
    """fn(batch) -> (B, L-1) values for every micro-batch, returned per sample as (T_i,) tensors (response
    positions only). Run over the update's own first-epoch micro-batches, so the same padded tensors are seen."""
    out: list[torch.Tensor | None] = [None] * len(roll)
    for indices in micro_batches:
        batch = make_batch(roll, indices, pad_id, device=device)
        values = fn(batch)
        for b, i in enumerate(indices):
            out[i] = values[b][batch.mask[b].bool()].float()
    return out  # type: ignore[return-value]


def plan_minibatches(ids: list[int], minibatch_size: int, micro_batch_size: int, epochs: int, gen: torch.Generator,
                     offset: int = 0, n_local: int | None = None) -> list[list[list[int]]]:
    """The update's layout: for each epoch a fresh shuffle of the step's global sample ids cut into mini-batches
    (one optimizer step each); this process keeps its own samples of each (ids offset .. offset + n_local - 1,
    as local indices) cut into micro-batches (one forward/backward each): plan[epoch][minibatch] = [micro lists].
    Every process draws the same shuffle, so together they take the optimizer steps one process would."""
    micro = micro_batch_size or minibatch_size
    n_local = len(ids) if n_local is None else n_local
    plan = []
    for _ in range(epochs):
        order = [ids[j] for j in torch.randperm(len(ids), generator=gen).tolist()]
        mbs = [order[s: s + minibatch_size] for s in range(0, len(order), minibatch_size)]
        local = [[g - offset for g in mb if offset <= g < offset + n_local] for mb in mbs]
        plan.append([[mb[s: s + micro] for s in range(0, len(mb), micro)] for mb in local])
    return plan


def pad_responses(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (T_i,) tensors -> right-padded (N, T) and its mask: the layout advantages are computed in."""
    T = max(1, max(len(v) for v in values))
    out = torch.zeros(len(values), T, device=values[0].device)
    mask = torch.zeros(len(values), T, device=values[0].device)
    for i, v in enumerate(values):
        out[i, : len(v)] = v
        mask[i, : len(v)] = 1.0
    return out, mask


def unpad(x: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    return [x[i, :n].clone() for i, n in enumerate(lengths)]

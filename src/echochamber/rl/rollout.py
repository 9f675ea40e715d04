"""Rollouts: sample G responses for each of P prompts, grade them, and lay them out as padded token tensors.

A rollout is the unit of RL data: P x G (prompt, response) pairs with their rewards, the log-probabilities of
the policy that sampled them (recomputed by a full forward pass, the same computation the update uses, so the
ratio pi / pi_old starts at exactly 1) and, when a KL term is used, those of the frozen reference model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import formats
from ..model import OLMo, token_logprobs
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
    seconds_generate: float = 0.0
    seconds_grade: float = 0.0

    def __len__(self) -> int:
        return len(self.response_tokens)


def collect(model: OLMo, tok: Tokenizer, problems: list[Problem], scfg: SampleConfig, *, seed: int, mode: str,
            reward_sees_prompt: bool, pool=None) -> Rollout:
    """Sample scfg.n responses per problem and grade them (code runs in the sandbox pool)."""
    t0 = time.perf_counter()
    prompts = tok.encode_batch([p.question for p in problems])
    gens = generate(model, prompts, scfg, eos_id=tok.eos_id, seed=seed)
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


def pad_batch(rollout: Rollout, indices: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt+response sequences and the mask of response positions.

    Returns idx (B, L) and mask (B, L-1): mask[b, t] = 1 where target idx[b, t+1] is a response token, so that
    token_logprobs(model, idx[:, :-1], idx[:, 1:]) and mask line up. Right padding keeps every row's positions
    0..len-1, so the causal forward needs no attention mask."""
    seqs = [rollout.prompt_tokens[i] + rollout.response_tokens[i] for i in indices]
    L = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L - 1), dtype=torch.float32)
    for b, i in enumerate(indices):
        p, r = len(rollout.prompt_tokens[i]), len(rollout.response_tokens[i])
        idx[b, : p + r] = torch.tensor(seqs[b])
        mask[b, p - 1: p - 1 + r] = 1.0
    return idx, mask


@torch.no_grad()
def sequence_logprobs(model: OLMo, rollout: Rollout, batch_size: int, pad_id: int, autocast) -> list[torch.Tensor]:
    """log p(response token | prefix) under `model` for every sample, as a list of (T_i,) tensors."""
    out: list[torch.Tensor] = []
    for start in range(0, len(rollout), batch_size):
        indices = list(range(start, min(start + batch_size, len(rollout))))
        idx, mask = pad_batch(rollout, indices, pad_id)
        with autocast():
            lp = token_logprobs(model, idx[:, :-1], idx[:, 1:])  # (B, L-1)
        for b in range(len(indices)):
            out.append(lp[b][mask[b].bool()].float())
    return out


def gather_padded(per_sample: list[torch.Tensor], indices: list[int], mask: torch.Tensor) -> torch.Tensor:
    """Place per-sample response values (T_i,) into the (B, L-1) layout of `mask`."""
    out = torch.zeros_like(mask)
    for b, i in enumerate(indices):
        out[b][mask[b].bool()] = per_sample[i]
    return out

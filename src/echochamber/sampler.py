"""Batched sampling with a KV cache: the RL rollouts (64 prompts x 8 samples) and the evaluation samples.

    gens = generate(model, prompts, SampleConfig(max_new_tokens=300, temperature=0.7, n=8), eos_id=eos, seed=0)
    gens[i * 8 + j]          # sample j of prompt i: .tokens (ending in EOS when .finished), .logprobs

How it stays fast (a decode step at these widths costs in per-operation overhead, not arithmetic):
  * each distinct prompt is prefilled once (a right-padded batch under causal attention, so padding never
    reaches a real token), and its keys/values are stored once for all the samples that continue it: the
    attention over the prompt runs per prompt with its samples' queries stacked (model.SampleCache);
  * the generated-token cache is allocated once, at full length, and written in place, one write per step
    for all layers; masks hide unwritten slots, so prompts of different lengths decode together;
  * the host looks at the batch only every CHECK_EVERY tokens (on a GPU each look is a synchronisation);
    rows that stopped (EOS or length limit) are then dropped once a quarter of the batch has stopped, by
    moving the kept rows forward inside the same buffers (no second copy of the cache);
  * for big calls the decode step runs through torch.compile (dynamic shapes, eager fallback; see
    model.compiled_decode_step and SampleConfig.compile);
  * sampling is an exponential race, argmax(p / E) with E ~ Exp(1), which draws exactly from p in one pass;
  * SampleConfig.greedy_first makes row 0 of each prompt's n rows greedy and the others samples, so a greedy
    answer and n - 1 samples share one prefill and one decoding loop (evaluate.py);
  * optional stop sequences (token ids; the interpreter's "</llm-code>", see interpreter.py) are compared on the
    device with each row's last generated tokens, so they cost no extra synchronisation;
  * bf16 autocast is optional (SampleConfig.dtype); it decodes with a bf16 copy of the matmul weights
    (`sampling_model`, made once per call or once by the caller for several), so no step casts weights, with
    the tokens and log-probs autocast gives on the fp32 weights.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from .cpu import rebalance
from .model import OLMo, SampleCache


@dataclass
class SampleConfig:
    """How to sample. Paper: RL rollouts temperature 0.7, top_p 1.0, n 8, max 1024 new tokens; evaluation
    greedy (temperature 0) with max 2048 tokens, and 64 samples at temperature 0.7, top_p 0.95; Expert
    Iteration 64 samples at temperature 1.0, top_p 0.95."""

    max_new_tokens: int = 256  # stop a sample after this many generated tokens (paper: RL 1024, eval 2048)
    temperature: float = 0.7  # softmax temperature; 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus sampling: draw from the smallest set of tokens holding this much probability
    n: int = 1  # samples per prompt (paper: RL 8, evaluation 64)
    dtype: Literal["float32", "bfloat16"] = "float32"  # forward-pass precision (bfloat16: autocast, ~2x faster
    # on CPUs with bf16 units; the log-probabilities are still fp32 softmaxes, of bf16-rounded logits)
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile the decode step; auto: big calls on a GPU
    greedy_first: bool = False  # sample 0 of every prompt is greedy (argmax), samples 1..n-1 are drawn at
    # temperature / top_p: evaluation's greedy answer and its n - 1 samples in one call, from one prefill


@dataclass
class Generation:
    prompt_index: int  # which prompt this sample continues
    tokens: list[int]  # generated tokens, ending with the EOS when finished
    logprobs: list[float]  # log p(token | prefix) at temperature 1, fp32, one per token
    finished: bool  # True when it stopped at EOS, False when it hit max_new_tokens or the context length
    # Why it stopped: "eos" (finished), "stop_sequence" (its tokens end with one of generate's stop_sequences,
    # kept), "length" (max_new_tokens or the context length).
    stop: Literal["eos", "stop_sequence", "length"] = "length"


# Drop stopped rows from the batch once this fraction of it has stopped (each drop moves the kept rows' cache).
COMPACT_FRACTION = 0.25
# The host checks which rows have stopped every this many tokens: each check is a device synchronisation.
CHECK_EVERY = 8
# A step attends to its rows' generated-token cache up to a multiple of this many slots (few distinct shapes).
WIDTH_STEP = 32
# compile="auto" compiles the decode step on a GPU when a call decodes at least this many rows x tokens.
COMPILE_MIN_WORK = 64 * 256
# A compiled call never shrinks its batch below this many rows: torch.compile specialises sizes 0 and 1, so a
# batch of one row would compile the step again (about 25 s on 2 cores). Calls with fewer rows decode eagerly.
MIN_COMPILED_ROWS = 2


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator,
                greedy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from fp32 logits (B, V); returns (tokens (B,), log p(token) at temperature 1).
    greedy (B,) bool: rows that take the argmax whatever the temperature (they still consume random numbers)."""
    if temperature == 0:
        tok = logits.argmax(dim=-1)
    else:
        probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
        if top_p < 1.0:
            # Keep the most likely tokens until their mass reaches top_p (the first one always survives).
            sorted_p, order = probs.sort(dim=-1, descending=True)
            sorted_p.masked_fill_(sorted_p.cumsum(dim=-1) - sorted_p >= top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        # Exponential race: argmax_i p_i / E_i with E_i = -log U_i ~ Exp(1) is a draw from p (unnormalised p is
        # fine). -log U from torch.rand is ~6x faster on CPU than Tensor.exponential_.
        race = torch.rand(probs.shape, generator=gen, device=probs.device).log_().neg_()  # (B, V) ~ Exp(1)
        tok = (probs / race).argmax(dim=-1)
        if greedy is not None:  # the same argmax as temperature 0: greedy rows equal a greedy call's
            tok = torch.where(greedy, logits.argmax(dim=-1), tok)
    logp = logits.gather(-1, tok[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)  # log softmax(logits)[tok]
    return tok, logp


def sampling_model(model, cfg: SampleConfig) -> OLMo:
    """The model `generate` decodes with under `cfg`: the model itself (a DistributedDataParallel wrapper's
    module) for fp32 sampling; for bf16 sampling, a copy with bf16 matmul weights (model.OLMo.matmul_copy), unless
    they are bf16 already. A caller that samples several times from the same weights (a rollout's calls) makes it
    once and hands it to each call; it holds 2 bytes per parameter (less when untied) while it lives."""
    model = getattr(model, "module", model)
    linears = {m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Linear)}
    if cfg.dtype == "bfloat16":
        return model if linears == {torch.bfloat16} else model.matmul_copy(torch.bfloat16)
    if linears != {model.wte.weight.dtype}:
        raise ValueError(f"SampleConfig.dtype={cfg.dtype!r}: this model's matmul weights are "
                         f"{sorted(map(str, linears))} (a bf16 sampling copy?); sample in float32 from the model itself")
    return model


def cache_dtype(bf16: bool, device_type: str, compiled: bool, weight_dtype: torch.dtype) -> torch.dtype:
    """The dtype generate keeps its KV cache in (memory.py sizes calls by it). Sampling in bf16: bf16, except eager
    on a CPU, where the cache stays in the weights' fp32: single-query attention over a bf16 cache runs slower
    there (slow bf16 matrix-vector and elementwise kernels), which outweighs reading half the bytes. Compiled, a
    bf16 cache ran as fast as an fp32 one on 2 cores (bench/README.md), in half the memory."""
    return torch.bfloat16 if bf16 and (device_type != "cpu" or compiled) else weight_dtype


def use_compile(cfg: SampleConfig, rows: int, device: torch.device) -> bool:
    """Whether to decode through torch.compile. cfg.compile "on"/"off" decide; "auto" compiles on a GPU for
    calls of at least COMPILE_MIN_WORK rows x tokens, and stays eager on a CPU, where compiling costs about
    60 s on 2 cores (30 s with inductor's cache warm): only a process that decodes a lot wins that back (the
    quickstart's RL stage saves 33 s net, bench/README.md), and one call cannot tell. Calls of fewer than
    MIN_COMPILED_ROWS rows decode eagerly.
    The environment variable ECHOCHAMBER_COMPILE=1 or 0 turns "auto" on or off everywhere."""
    if rows < MIN_COMPILED_ROWS:
        return False
    if cfg.compile != "auto":
        return cfg.compile == "on"
    forced = os.environ.get("ECHOCHAMBER_COMPILE")
    if forced in ("0", "1"):
        return forced == "1"
    return device.type == "cuda" and rows * cfg.max_new_tokens >= COMPILE_MIN_WORK


def banned_start_table(banned_starts: Sequence[Sequence[int]], vocab_size: int,
                       device: torch.device) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{position t: (prefixes (K, t), last tokens (K,))} of the token sequences a response may not begin with."""
    by_len: dict[int, list[list[int]]] = {}
    for i, b in enumerate(banned_starts):
        if len(b) == 0 or min(b) < 0 or max(b) >= vocab_size:
            raise ValueError(f"banned_starts[{i}] must be a non-empty sequence of token ids in [0, {vocab_size})")
        by_len.setdefault(len(b) - 1, []).append(list(b))
    return {t: (torch.tensor([b[:-1] for b in bs], dtype=torch.long, device=device).view(len(bs), t),
                torch.tensor([b[-1] for b in bs], dtype=torch.long, device=device)) for t, bs in by_len.items()}


def mask_banned(logits: torch.Tensor, so_far: torch.Tensor, prefixes: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """-inf at logits[r, last[k]] for every row r whose tokens so far (B, t) equal prefixes[k] (K, t): the token
    that would complete a banned start. On the device, without a host sync (index_add_ counts the hits)."""
    match = (so_far[None] == prefixes[:, None]).all(dim=-1)  # (K, B); t = 0: all True
    hits = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)  # (B, V)
    hits.index_add_(1, last, match.T.float())
    return logits.masked_fill(hits > 0, float("-inf"))


def _check(model: OLMo, prompts: list[list[int]], cfg: SampleConfig) -> None:
    if (cfg.temperature < 0 or not 0 < cfg.top_p <= 1 or cfg.n < 1 or cfg.max_new_tokens < 0
            or cfg.compile not in ("auto", "on", "off")):
        raise ValueError(f"SampleConfig: need temperature >= 0, 0 < top_p <= 1, n >= 1, max_new_tokens >= 0, "
                         f"compile auto/on/off; got {cfg}")
    V, S = model.config.vocab_size, model.config.max_seq_len
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty (generation needs at least one token to condition on)")
        if len(p) >= S:
            raise ValueError(f"prompt {i} has {len(p)} tokens: no room left in the model's context of {S}")
        if min(p) < 0 or max(p) >= V:
            raise ValueError(f"prompt {i} has token ids outside [0, {V})")


@torch.inference_mode()
def generate(model: OLMo, prompts: list[list[int]], cfg: SampleConfig, *, eos_id: int, seed: int,
             progress: bool = False, banned_starts: Sequence[Sequence[int]] = (),
             stop_sequences: Sequence[Sequence[int]] = ()) -> list[Generation]:
    """Sample cfg.n continuations of every prompt; result i * n + j is sample j of prompt i.

    Sampling stops at `eos_id` (kept as the last token, finished=True), after cfg.max_new_tokens tokens, or at
    the model's context length (finished=False). The same seed, model and inputs give the same samples.
    banned_starts: token sequences no continuation may begin with; the last token of each is masked (-inf) in
    rows whose first tokens are the rest of it (probe.py forces a format by banning the others' openings).
    The logprobs are then those of the masked distribution, the one actually sampled.
    stop_sequences: a row also stops once its generated tokens end with one of these token-id sequences (kept;
    stop="stop_sequence"); rows that never meet one sample exactly what they would without them, as long as
    no row of the call stops at one (a row that stops early changes which rows share the later random draws).
    cfg.greedy_first: sample 0 of every prompt is its greedy continuation (the argmax of the same logits as a
    temperature-0 call), samples 1..n-1 are drawn at cfg.temperature / cfg.top_p."""
    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper samples with its module
    _check(model, prompts, cfg)
    if any(len(s) == 0 for s in stop_sequences):
        raise ValueError("generate: a stop sequence must hold at least one token id")
    bans = banned_start_table(banned_starts, model.config.vocab_size, model.wte.weight.device)
    n, N = cfg.n, len(prompts) * cfg.n
    if N == 0 or cfg.max_new_tokens == 0:
        return [Generation(i // n, [], [], False) for i in range(N)]
    model = sampling_model(model, cfg)
    device = model.wte.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    amp = cfg.dtype == "bfloat16"
    compiled = use_compile(cfg, N, device)
    min_rows = MIN_COMPILED_ROWS if compiled else 1  # dropping stopped rows never shrinks the batch below this
    kv_dtype = cache_dtype(amp, device.type, compiled, model.wte.weight.dtype)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    # Distinct prompts, each prefilled once; row r of the sampling batch continues prompt r // n.
    distinct: dict[tuple[int, ...], int] = {}
    for p in prompts:
        distinct.setdefault(tuple(p), len(distinct))
    uniq = list(distinct)
    row_src = torch.tensor([distinct[tuple(p)] for p in prompts for _ in range(n)], device=device)  # (N,)
    plen = torch.tensor([len(p) for p in uniq], device=device)  # (U,)
    S = model.config.max_seq_len
    limit = torch.clamp(S - plen, max=cfg.max_new_tokens)[row_src]  # (N,) new tokens each row may make

    out_tok = torch.full((N, cfg.max_new_tokens), -1, dtype=torch.long, device=device)
    out_lp = torch.zeros((N, cfg.max_new_tokens), dtype=torch.float32, device=device)
    stops = [torch.tensor(list(s), dtype=torch.long, device=device) for s in stop_sequences]

    from tqdm import tqdm

    bar = tqdm(total=int(limit.sum()), desc="generate", unit="tok", disable=not progress, dynamic_ncols=True)
    P = max(len(p) for p in uniq)
    idx = torch.tensor([list(p) + [0] * (P - len(p)) for p in uniq], device=device)  # right-padded; one copy
    with autocast:
        logits, pk, pv = model.prefill(idx, plen, kv_dtype)  # (U, V) at each prompt's last token; (L, U, H, P, hd)
        # Room for every row's longest continuation, allocated once (see model.SampleCache).
        capacity = int(limit.max())
        # One slot more than any row writes: the attended width then never spans a whole buffer row, which would
        # make its slice contiguous and a compiled step compile again.
        cache = SampleCache.start(pk, pv, plen, row_src, capacity + 1, kv_dtype)
        del pk, pv
        logits = logits[row_src]  # (N, V)

        rows = torch.arange(N, device=device)  # batch position -> output row
        row_limit = limit  # per batch position
        stopped = torch.zeros(N, dtype=torch.bool, device=device)  # per batch position
        greedy = rows % n == 0 if cfg.greedy_first else None  # per batch position: sample 0 of its prompt
        for t in range(cfg.max_new_tokens):
            if t in bans:  # banned starts: only the first few positions, each row by its own tokens so far
                logits = mask_banned(logits, out_tok[rows, :t], *bans[t])
            tok, lp = next_tokens(logits, cfg.temperature, cfg.top_p, gen, greedy)
            out_tok[rows, t] = tok  # entries after a row's stop are written but never read
            out_lp[rows, t] = lp
            stopped |= (tok == eos_id) | (row_limit == t + 1)
            for seq in stops:  # do the row's last len(seq) generated tokens spell it?
                if t + 1 >= len(seq):
                    stopped |= (out_tok[rows, t + 1 - len(seq):t + 1] == seq).all(dim=1)
            if t + 1 == capacity:
                break
            if (t + 1) % CHECK_EVERY == 0:  # the host looks at the batch (a device sync) every few tokens only
                rebalance()  # cpu.py: threads shared with other echochamber jobs (at most every 2 s; no-op on GPU)
                live = int((~stopped).sum())
                if progress:
                    bar.update(int(limit.clamp(max=t + 1).sum()) - bar.n)  # an upper bound until the end
                if live == 0:
                    break
                if len(rows) - live >= COMPACT_FRACTION * len(rows) and max(live, min_rows) < len(rows):
                    keep = (~stopped).nonzero()[:, 0]
                    if len(keep) < min_rows:  # pad with stopped rows: a compiled step would recompile for one row
                        keep = torch.cat((keep, stopped.nonzero()[:min_rows - len(keep), 0])).sort().values
                    cache.keep(keep, upto=t)  # slots 0..t-1 hold keys so far
                    rows, tok, stopped, row_limit = rows[keep], tok[keep], stopped[keep], row_limit[keep]
                    greedy = None if greedy is None else greedy[keep]
            # Stopped rows still in the batch keep decoding (their output is ignored); pin their write slot
            # to their last one, so they never pass the cache or the context. Running rows are below it.
            torch.minimum(cache.glen, row_limit - 1, out=cache.glen)
            width = min(capacity, max(1, -(-t // WIDTH_STEP)) * WIDTH_STEP)  # covers every row's glen <= t
            logits = model.decode(tok, cache, width, compiled=compiled)
    bar.update(bar.total - bar.n)
    bar.close()

    # Each row's tokens end at its first EOS (finished) or completed stop sequence, else at its limit; later
    # entries are never used.
    in_limit = torch.arange(cfg.max_new_tokens, device=device) < limit[:, None]  # (N, T)
    is_eos = (out_tok == eos_id) & in_limit
    ends_seq = torch.zeros_like(is_eos)  # (N, T): a stop sequence's last token is here
    for seq in stops:
        k = len(seq)
        if k <= cfg.max_new_tokens:
            ends_seq[:, k - 1:] |= (out_tok.unfold(1, k, 1) == seq).all(dim=-1)  # windows ending at k-1 .. T-1
    ends_seq &= in_limit
    ends = is_eos | ends_seq
    stopped_early = ends.any(dim=1)
    first = ends.int().argmax(dim=1)
    n_gen = torch.where(stopped_early, first + 1, limit)
    at_eos = stopped_early & is_eos.gather(1, first[:, None])[:, 0]  # EOS wins over a sequence ending on it
    tok_list, lp_list, n_list = out_tok.tolist(), out_lp.tolist(), n_gen.tolist()
    fin, early = at_eos.tolist(), stopped_early.tolist()
    return [Generation(r // n, tok_list[r][:n_list[r]], lp_list[r][:n_list[r]], fin[r],
                       "eos" if fin[r] else "stop_sequence" if early[r] else "length") for r in range(N)]

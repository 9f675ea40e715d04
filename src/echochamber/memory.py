"""Memory per GPU, by component, before anything is loaded: what `--dry-run` prints and refuses, and how many rows
the sampler takes per call (rl/rollout.collect, evaluate.greedy_and_samples).

A stage's peak is what stays resident plus the largest of its phases (rollout, update, evaluation): the KV cache
is freed before the update's activations are made, and gradients live only from the first backward to the
optimizer step (zero_grad(set_to_none=True)). Bytes, with N the parameters (a tied head counted once), C d_model,
F the SwiGLU width, L layers, H heads, V the vocabulary, S max_seq_len:

    weights         4 N                  fp32 master weights (FSDP: / world size)
    gradients       4 N_trainable        fp32 (FSDP: / world size, and 4 N more unsharded while micro-batches
                                         accumulate; PPO: the larger of policy and critic)
    DDP buckets     4 N                  DistributedDataParallel's own gradient buckets (pretraining, > 1 process)
    all-reduce      4 N                  RL's flat gradient buffer under torchrun (distributed.all_reduce_grads)
    optimizer       8 N_trainable        AdamW's two fp32 moments (FSDP: / world size)
    critic          4 (N + C) + 8 N_t    PPO: a second model, its value head, and its Adam moments
    reference       4 N                  kl_coef > 0: the starting policy, fp32, no gradients
    sampling        2 N_matmul           sampler.sampling_model's bf16 copy of the matmul weights that decoding
                                         reads (bf16 sampling), made for each rollout and evaluation
    activations     tokens x (L (22 C + 8 F + 4 H + 16) + 6 C + 24) + 2 N_matmul
                    what the backward keeps under bf16 autocast with flash attention, per token and layer: each
                    LayerNorm's fp32 input (2 x 4C) and its bf16 cast for the next matmul (2 x 2C), q, k, v and the
                    attention output (4 x 2C) and its projection's input (2C), the SwiGLU gate/up output (4F), the
                    silu output (2F) and the down projection's input (2F), the attention's fp32 log-sum-exp (4H)
                    and the LayerNorms' mean and rstd (16); per token: the final LayerNorm's input (4C) and the
                    head's bf16 input (2C), the token ids and targets (24); once: autocast's bf16 copy of every
                    matmul weight (2 N_matmul). 22 C + 8 F = 54 C at F = 4 C. Measured against
                    torch.autograd.graph.saved_tensors_hooks in tests/test_memory.py. Activation checkpointing
                    keeps each block's fp32 input (4 C) and recomputes one block at a time.
    logits          2^26 x 16            model.head_logprobs' chunk of (rows, V) logits on a GPU: bf16 logits and
                    their fp32 log-softmax, the backward's bf16 softmax, the entropy's fp32 temporaries
    KV cache        rows x (new + 1) x L x 2 x C x b  +  prompts x P x L x 2 x C x b
                    model.SampleCache: each row's generated-token keys and values at full length (+1 slot), and
                    each distinct prompt's once (P its longest prompt); b = 2 (bf16 sampling on a GPU) or 4
    sampling logits rows x V x 40       the decode step's fp32 (rows, V) temporaries: logits, softmax, top-p's
                    sort (values and int64 indices), cumsum and scatter, the exponential race and its quotient

Not counted: the CUDA context, NCCL's buffers and the allocator's fragmentation: the budget keeps RESERVE of the
device for them. torch.compile'd pretraining saves no more than the eager count above (inductor may recompute
cheap elementwise ops instead of saving them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .model import GPU_LOGIT_CHUNK, ModelConfig
from .sampler import cache_dtype

MAX_ROWS_PER_CALL = 512  # rows of one sampler call at most (memory permitting): the rollouts' and evaluation's cap
PLAN_DEVICE_BYTES = 80e9  # the dry run's device when this machine has no GPU: an 80 GB H100 (memory_gb overrides)
RESERVE = 0.05  # of a GPU's budget, kept for the CUDA context, NCCL buffers and allocator fragmentation
LOGIT_BYTES = 16  # bytes per chunk logit: bf16 logits, fp32 log-softmax, bf16 softmax (backward), fp32 entropy terms
SAMPLING_LOGIT_BYTES = 40  # bytes per (row, vocabulary entry) of a decode step's fp32 temporaries (sampler.next_tokens)
GB = 1e9


# ----------------------------------------------------------------------------- the model's sizes

@dataclass(frozen=True)
class Sizes:
    """The numbers the formulas above read off a resolved ModelConfig."""
    C: int
    L: int
    H: int
    F: int
    V: int
    S: int
    tied: bool

    @classmethod
    def of(cls, c: ModelConfig) -> "Sizes":
        return cls(c.d_model, c.n_layers, c.n_heads, c.mlp_hidden, c.vocab_size, c.max_seq_len, bool(c.tie_embeddings))

    @property
    def block_params(self) -> int:
        return self.L * (4 * self.C * self.C + 3 * self.C * self.F)  # qkv + proj, gate_up + down

    @property
    def params(self) -> int:
        """All parameters, a tied head counted once (= OLMo(...).num_params())."""
        return self.block_params + self.V * self.C * (1 if self.tied else 2)

    @property
    def matmul_params(self) -> int:
        """The weights that take part in matmuls (autocast copies them to bf16): blocks and the head."""
        return self.block_params + self.V * self.C

    @property
    def untied_head(self) -> int:
        return 0 if self.tied else self.V * self.C

    def kv_slot_bytes(self, element_bytes: int) -> int:
        """Keys and values of one token in every layer."""
        return self.L * 2 * self.C * element_bytes

    def layer_token_bytes(self) -> int:
        """Saved-for-backward bytes of one token in one block under bf16 autocast (module docstring)."""
        return 22 * self.C + 8 * self.F + 4 * self.H + 16


def activation_bytes(model_config: ModelConfig, tokens: int, checkpointing: bool = False,
                     weight_copies: bool = True) -> float:
    """Bytes the backward keeps for `tokens` tokens of a forward under bf16 autocast (module docstring).
    weight_copies: autocast's bf16 copy of every matmul weight (not under FSDP's bf16 parameters)."""
    s = Sizes.of(model_config)
    per_layer = s.layer_token_bytes()
    kept = 4 * s.C * s.L + per_layer if checkpointing else per_layer * s.L  # checkpointing: inputs + one block
    return tokens * (kept + 6 * s.C + 24) + (2 * s.matmul_params if weight_copies else 0)


def logits_bytes(model_config: ModelConfig, tokens: int) -> float:
    """The head's chunked log-probabilities: at most GPU_LOGIT_CHUNK logits at a time (>= 64 rows)."""
    V = model_config.vocab_size
    return min(tokens, max(64, GPU_LOGIT_CHUNK // V)) * V * LOGIT_BYTES


def cache_element_bytes(sample_dtype: str, device_type: str, compiled: bool = False) -> int:
    """Bytes of one cached key or value element as sampler.generate stores it (sampler.cache_dtype; fp32 weights)."""
    return cache_dtype(sample_dtype == "bfloat16", device_type, compiled, torch.float32).itemsize


def kv_cache_bytes(model_config: ModelConfig, rows: int, prompts: int, new_tokens: int, prompt_tokens: int,
                   element_bytes: int) -> float:
    """model.SampleCache of one sampler call: each row's generated-token keys and values at full length + 1 slot
    (a row never generates past the context: S less its prompt, at least 1 token), and each of the `prompts`
    distinct prompts' once, padded to the longest (prompt_tokens)."""
    s = Sizes.of(model_config)
    slots = min(new_tokens, s.S - 1) + 1
    return (rows * slots + prompts * min(prompt_tokens, s.S)) * s.kv_slot_bytes(element_bytes)


def call_bytes(model_config: ModelConfig, rows: int, prompts: int, new_tokens: int, prompt_tokens: int,
               element_bytes: int) -> float:
    """Bytes of one sampler call of `prompts` distinct prompts (the longest prompt_tokens long) and `rows` rows
    decoding up to new_tokens each: its KV cache (kv_cache_bytes) and the decode step's (rows, V) fp32
    temporaries."""
    return (kv_cache_bytes(model_config, rows, prompts, new_tokens, prompt_tokens, element_bytes)
            + rows * model_config.vocab_size * SAMPLING_LOGIT_BYTES)


def rows_per_call(model_config: ModelConfig, new_tokens: int, free_bytes: float, *, rows_per_prompt: int = 1,
                  prompt_tokens: int = 0, element_bytes: int = 2, cap: int | None = MAX_ROWS_PER_CALL) -> int:
    """The most rows one sampler call may take within free_bytes (call_bytes), a multiple of rows_per_prompt (a
    prompt's rows stay in one call), at most `cap` rows (None: no cap), and never fewer than one prompt's rows
    (which then may not fit: the plan says so). free_bytes inf (a CPU without memory_gb): the cap, or no limit."""
    n = max(1, rows_per_prompt)
    most = math.inf if cap is None else max(n, cap // n * n)
    if math.isinf(free_bytes):
        return most if not math.isinf(most) else 1 << 62
    per_prompt = call_bytes(model_config, n, 1, new_tokens, prompt_tokens, element_bytes)
    fit = max(1, int(free_bytes // per_prompt)) * n
    return int(min(most, fit))


# ----------------------------------------------------------------------------- the budget

def device_budget(cfg, device=None) -> float:
    """Bytes one process may use: memory_gb when set (> 0), else the device's memory: a GPU's total_memory; on a
    CPU no limit (inf: the laptop path never shrinks a call). device None: the plan's device, this machine's GPU
    if it has one, else an 80 GB H100 (PLAN_DEVICE_BYTES)."""
    import torch

    gb = getattr(cfg, "memory_gb", 0) or 0
    if gb > 0:
        return gb * GB
    if device is None:
        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else PLAN_DEVICE_BYTES
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    return math.inf


def _usable(budget: float) -> float:
    return budget if math.isinf(budget) else budget * (1 - RESERVE)


# ----------------------------------------------------------------------------- the plan

@dataclass
class MemoryPlan:
    """Per-GPU bytes of a stage by component. phases[name] is "resident" or the phase it lives in; the peak
    (`total`) is the resident sum plus the largest phase's. `fits`: total within the budget less RESERVE.
    advice: settings that would make it fit (empty when it fits). calls: how the sampler's calls are cut."""
    stage: str
    components: dict[str, float]
    budget: float
    phases: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    sampling_room: float = math.inf  # bytes a sampler call may take: usable budget less the resident components

    def phase_of(self, name: str) -> str:
        return self.phases.get(name, "resident")

    def _in(self, name: str, phase: str) -> bool:
        return phase in self.phase_of(name).split(", ")  # a component may live in several phases

    @property
    def resident(self) -> float:
        return sum(v for k, v in self.components.items() if self.phase_of(k) == "resident")

    @property
    def peaks(self) -> dict[str, float]:
        """Resident + each phase's components (a stage with no phases: {"resident": the sum})."""
        names = sorted({p for k in self.components for p in self.phase_of(k).split(", ")} - {"resident"})
        if not names:
            return {"resident": self.resident}
        return {p: self.resident + sum(v for k, v in self.components.items() if self._in(k, p)) for p in names}

    @property
    def total(self) -> float:
        return max(self.peaks.values())

    @property
    def usable(self) -> float:
        return _usable(self.budget)

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def table(self) -> str:
        rows = [(k, self.phase_of(k), f"{v / GB:,.2f}", self.notes.get(k, "")) for k, v in self.components.items()]
        peaks = self.peaks
        if len(peaks) > 1:
            rows += [(f"peak: {p}", "", f"{v / GB:,.2f}", "resident + this phase") for p, v in peaks.items()]
        budget = ("no limit (a CPU; memory_gb sets one)" if math.isinf(self.budget) else
                  f"{self.usable / GB:,.2f} of {self.budget / GB:,.1f} GB ({RESERVE:.0%} kept for the CUDA "
                  f"context, NCCL and the allocator)")
        rows.append(("total", "", f"{self.total / GB:,.2f}",
                     f"{'fits' if self.fits else 'DOES NOT FIT'} {budget}"))
        w = [max(len(r[i]) for r in rows + [("component", "phase", "GB", "")]) for i in range(3)]
        head = f"  {'component':<{w[0]}}  {'phase':<{w[1]}}  {'GB':>{w[2]}}"
        lines = [head] + [f"  {a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d}".rstrip() for a, b, c, d in rows]
        lines += [f"  {c}" for c in self.calls]
        if not self.fits:
            lines.append("  to fit: " + ("; or ".join(self.advice) if self.advice else "a device with more memory"))
        return "\n".join(lines)

    def refusal(self) -> str:
        """One line for a plan that does not fit: the peak, the budget and the settings to change."""
        return (f"the {self.stage} plan needs {self.total / GB:,.1f} GB per GPU, more than the "
                f"{self.usable / GB:,.1f} GB usable of {self.budget / GB:,.1f} GB (memory_gb); change "
                + ("; or ".join(self.advice) if self.advice else "to a device with more memory"))


def _resolved(cfg, model_config: ModelConfig | None) -> ModelConfig:
    if model_config is not None:
        return model_config
    c = cfg.model
    return c.resolve(vocab_size=c.vocab_size or getattr(cfg.data, "vocab_size", None))


def _gb(x: float) -> str:
    return f"{x / GB:,.1f} GB"


def pretrain_memory(cfg, world_size: int, model_config: ModelConfig | None = None,
                    budget: float | None = None) -> MemoryPlan:
    """Pretraining's peak per GPU: states (FSDP: sharded over world_size), DDP's buckets, one micro-batch's
    activations (pretrain.batch_size x data.seq_len) and the head's logits chunk."""
    p = cfg.pretrain
    mc = _resolved(cfg, model_config)
    s = Sizes.of(mc)
    N = s.params
    fsdp = bool(getattr(p, "fsdp", False)) and world_size > 1
    shard = world_size if fsdp else 1
    ckpt = bool(getattr(p, "activation_checkpointing", False))
    tokens = p.batch_size * cfg.data.seq_len
    bf16 = p.autocast == "bfloat16"
    comp = {"weights": 4 * N / shard, "gradients": 4 * N / shard, "optimizer": 8 * N / shard}
    notes = {"weights": f"fp32, {N / 1e6:,.1f}M parameters" + (f" / {world_size} (FSDP)" if fsdp else ""),
             "gradients": "fp32" + (f" / {world_size} (FSDP)" if fsdp else ""),
             "optimizer": "AdamW's two fp32 moments" + (f" / {world_size} (FSDP)" if fsdp else "")}
    if world_size > 1 and not fsdp:
        comp["DDP buckets"] = 4 * N
        notes["DDP buckets"] = "DistributedDataParallel's fp32 gradient buckets"
    accum = p.grad_accum or max(1, getattr(p, "global_batch", 0) // (p.batch_size * world_size))
    if fsdp and accum > 1:  # gradient sync on the last micro-batch only: the others accumulate unsharded
        comp["unsharded gradients"] = 4 * N
        notes["unsharded gradients"] = (f"fp32, accumulated over {accum} micro-batches before one reduce-scatter "
                                        "(distributed.maybe_no_sync)")
    act = activation_bytes(mc, tokens, ckpt, weight_copies=not fsdp)
    if fsdp and bf16:  # FSDP2's bf16 parameters: a block's gathered weights (and the next one's, prefetched)
        act += 2 * 2 * (s.block_params / s.L) + 2 * s.V * s.C
    if not bf16:  # fp32 matmuls: every saved tensor twice the bytes, no bf16 weight copies
        act = 2 * (act - 2 * s.matmul_params)
    comp["activations"] = act
    notes["activations"] = (f"micro-batch {p.batch_size} x {cfg.data.seq_len} tokens, {p.autocast}"
                            + (", activation checkpointing" if ckpt else ""))
    comp["logits"] = logits_bytes(mc, tokens)
    notes["logits"] = "the head's log-softmax chunk"
    plan = MemoryPlan("pretrain", comp, _budget(cfg, budget), notes=notes)
    if not plan.fits:
        fixed = plan.total - act - comp["logits"]
        for b in range(p.batch_size - 1, 0, -1):
            if fixed + activation_bytes(mc, b * cfg.data.seq_len, ckpt, not fsdp) + logits_bytes(
                    mc, b * cfg.data.seq_len) <= plan.usable:
                plan.advice.append(f"pretrain.batch_size={b} (with pretrain.grad_accum to keep the global batch)")
                break
        if not ckpt:
            plan.advice.append("pretrain.activation_checkpointing=true")
        if world_size > 1 and not fsdp:
            plan.advice.append("pretrain.fsdp=true")
    return plan


def _budget(cfg, budget: float | None) -> float:
    return device_budget(cfg) if budget is None else budget


def _sampling_weights(s: Sizes, sample_dtype: str) -> float:
    """sampler.sampling_model's bf16 copy of the matmul weights (bf16 sampling only)."""
    return 2 * s.matmul_params if sample_dtype == "bfloat16" else 0.0


SUBCALL_SEED = 104_729  # sub-call j of a seeding unit that memory cuts is seeded seed_of_the_unit + j x this


def call_size(total: int, want: int, fit: int) -> int:
    """Prompts per sampler call: `want` when `fit` prompts (what memory holds) are at least that many, else the
    total cut into the fewest calls that fit, of equal size (64 prompts with 37 fitting: 2 calls of 32)."""
    want = max(1, want)
    if fit >= want:
        return want
    fit = max(1, fit)
    return -(-total // -(-total // fit))


def sampler_calls(n_prompts: int, rows_per_prompt: int, unit: int, fit: int) -> list[tuple[int, int, int, int]]:
    """A rollout's sampler calls over n_prompts prompts, as (start, stop, c, j): call j of seeding unit c.
    unit 0 (rl.rollout_chunk_prompts 0 on one process): units of 512 rows' worth of prompts, one call each, or
    when fewer than that fit (`fit` prompts), the prompts cut into the fewest calls that fit, as equal as can
    be. unit > 0 (rl.rollout_chunk_prompts, or a process's share under torchrun): units of `unit` prompts, each
    seeded by its place whatever the number of processes, and each cut likewise when it does not fit (a cut
    depends on the unit and the memory, never on the processes)."""
    def cut(start: int, size: int, c0: int, per_unit: bool) -> list[tuple[int, int, int, int]]:
        k = -(-size // max(1, fit))  # the fewest calls that fit
        q, extra = divmod(size, k)
        bounds = [start]
        for i in range(k):
            bounds.append(bounds[-1] + q + (i < extra))
        return [(a, b, c0 if per_unit else c0 + i, i if per_unit else 0) for i, (a, b) in
                enumerate(zip(bounds, bounds[1:]))]

    if not unit:
        per = max(1, MAX_ROWS_PER_CALL // max(1, rows_per_prompt))
        if fit < per:
            return cut(0, n_prompts, 0, per_unit=False)
        return [(s, min(s + per, n_prompts), c, 0) for c, s in enumerate(range(0, n_prompts, per))]
    out = []
    for c, s in enumerate(range(0, n_prompts, unit)):
        u = min(unit, n_prompts - s)
        out += cut(s, u, c, per_unit=True) if fit < u else [(s, s + u, c, 0)]
    return out


def rl_memory(cfg, world_size: int, model_config: ModelConfig | None = None, budget: float | None = None, *,
              prompt_tokens: int = 256, eval_prompt_tokens: int | None = None,
              n_prompts: int | None = None) -> MemoryPlan:
    """RL's peak per GPU: policy, optimizer, critic (PPO) and reference (kl_coef > 0) stay resident; the bf16
    sampling copy and the rollout's KV cache, the update's gradients and activations, and the in-loop
    evaluation's cache are phases. Rollout calls take as many prompts as fit (sampling_room); prompt_tokens: the longest
    prompt; n_prompts: the training prompts (Expert Iteration's ei.prompts_per_round 0 samples all of them)."""
    r = cfg.rl
    mc = _resolved(cfg, model_config)
    s = Sizes.of(mc)
    N = s.params
    budget = _budget(cfg, budget)
    ei = r.algo == "ei"
    n = r.ei.samples_per_prompt if ei else r.samples_per_prompt
    comp: dict[str, float] = {"weights": 4 * N}
    phases: dict[str, str] = {}
    notes = {"weights": f"fp32 policy, {N / 1e6:,.1f}M parameters"}
    comp["optimizer"] = 8 * N
    notes["optimizer"] = "AdamW's two fp32 moments" + (", fresh each round (Expert Iteration's SFT)" if ei else "")
    if ei:
        phases["optimizer"] = "update"
    critic_trainable = N - s.untied_head + s.C
    if r.algo == "ppo":
        comp["critic"] = 4 * (N + s.C) + 8 * critic_trainable
        notes["critic"] = "PPO's value model: fp32 weights and AdamW moments"
    if r.kl_coef > 0:
        comp["reference"] = 4 * N
        notes["reference"] = f"fp32, no gradients (kl_coef {r.kl_coef})"
    sampling = _sampling_weights(s, r.sample_dtype)
    if sampling:  # made for each rollout (sampler.sampling_model), and for each evaluation
        comp["sampling weights"], phases["sampling weights"] = sampling, "rollout, evaluation"
        notes["sampling weights"] = "bf16 copy of the policy's matmul weights for decoding"
    resident = sum(v for k, v in comp.items() if k not in phases)
    room = _usable(budget) - resident - sampling
    elem = cache_element_bytes(r.sample_dtype, "cuda")

    # rollout
    per_step = (r.ei.prompts_per_round or n_prompts or r.train_problems) if ei else r.prompts_per_step
    share = -(-per_step // world_size)  # the largest process's share (dist.share)
    unit = r.rollout_chunk_prompts or (share if world_size > 1 else 0)  # rl/train.py's seeding unit
    fit = rows_per_call(mc, r.max_new_tokens, room, rows_per_prompt=n, prompt_tokens=prompt_tokens,
                        element_bytes=elem, cap=None) // n
    cut = sampler_calls(share, n, unit, fit)
    per_call = max(b - a for a, b, _, _ in cut)
    want = max(b - a for a, b, _, _ in sampler_calls(share, n, unit, 1 << 62))
    comp["KV cache"] = call_bytes(mc, per_call * n, per_call, r.max_new_tokens, prompt_tokens, elem)
    phases["KV cache"] = "rollout"
    notes["KV cache"] = (f"{per_call} prompts x {n} rows x {min(r.max_new_tokens, s.S - 1) + 1} slots "
                         f"(+ each prompt's {prompt_tokens}), {'bf16' if elem == 2 else 'fp32'}")
    calls = [f"rollout: {share} prompts x {n} samples per GPU in {len(cut)} call{'s' * (len(cut) != 1)} of up to "
             f"{per_call} prompts ({per_call * n} rows)"
             + (f"; {want} prompts per call would need "
                f"{_gb(call_bytes(mc, want * n, want, r.max_new_tokens, prompt_tokens, elem))}, {_gb(max(0, room))} "
                f"is free" if per_call < want else "")]

    # update
    micro = r.micro_batch_size or (r.ei.batch_size if ei else r.minibatch_size)
    seq = min(prompt_tokens + r.max_new_tokens, s.S)
    bf16 = r.autocast == "bfloat16"

    def update_bytes(m: int) -> tuple[float, float, float]:
        act = activation_bytes(mc, m * seq)
        if not bf16:
            act = 2 * (act - 2 * s.matmul_params)
        return act, logits_bytes(mc, m * seq), 4 * max(N, critic_trainable if r.algo == "ppo" else 0)

    act, logit, grads = update_bytes(micro)
    comp["gradients"], phases["gradients"] = grads, "update"
    notes["gradients"] = "fp32" + (" (policy or critic, one at a time)" if r.algo == "ppo" else "")
    if world_size > 1:
        comp["all-reduce buffer"], phases["all-reduce buffer"] = 4 * N, "update"
        notes["all-reduce buffer"] = "the flat fp32 gradient buffer summed over the processes"
    comp["activations"], phases["activations"] = act, "update"
    notes["activations"] = f"micro-batch {micro} x {seq} tokens (prompt + max_new_tokens), {r.autocast}"
    comp["logits"], phases["logits"] = logit, "update"
    notes["logits"] = "log-probs and entropy, chunked over the sequence"

    # in-loop evaluation
    ev = eval_calls_plan(cfg, mc, room, eval_prompt_tokens or prompt_tokens)
    comp["eval KV cache"], phases["eval KV cache"] = ev[0], "evaluation"
    notes["eval KV cache"] = ev[1]
    calls.append(ev[2])

    plan = MemoryPlan("rl", comp, budget, phases, notes, calls=calls, sampling_room=room)
    if not plan.fits:
        peaks = plan.peaks
        usable = plan.usable
        if peaks.get("update", 0) > usable:
            other = peaks["update"] - act - logit
            for m in range(micro - 1, 0, -1):
                a, lg, _ = update_bytes(m)
                if other + a + lg <= usable:
                    plan.advice.append(f"rl.micro_batch_size={m}")
                    break
        if peaks.get("rollout", 0) > usable or peaks.get("evaluation", 0) > usable:
            plan.advice.append(f"rl.max_new_tokens / eval.max_new_tokens smaller (one prompt's {n} rows need "
                               f"{_gb(call_bytes(mc, n, 1, r.max_new_tokens, prompt_tokens, elem))})")
        if r.kl_coef > 0 and plan.total - comp["reference"] <= usable:  # last: it changes the experiment
            plan.advice.append(f"rl.kl_coef=0 (no reference model: {_gb(comp['reference'])} less, but another "
                               f"experiment)")
    return plan


def eval_calls_plan(cfg, mc: ModelConfig, room: float, prompt_tokens: int) -> tuple[float, str, str]:
    """(bytes of the largest evaluation call, its note, its calls line) with `room` bytes free for the sampler:
    evaluate.greedy_and_samples' calls cut to what fits (eval_prompts_per_call)."""
    e = cfg.eval
    s = Sizes.of(mc)
    rows, want = eval_call_shape(e)
    elem = cache_element_bytes(e.sample_dtype, "cuda")
    per_call = eval_prompts_per_call(e, mc, room, prompt_tokens, elem)
    b = call_bytes(mc, per_call * rows, per_call, e.max_new_tokens, prompt_tokens, elem)
    note = (f"{per_call} prompts x {rows} row{'s' * (rows != 1)} x {min(e.max_new_tokens, s.S - 1) + 1} slots "
            f"(+ each prompt's {prompt_tokens}), {'bf16' if elem == 2 else 'fp32'}")
    what = ("greedy" if rows == 1 else f"greedy + {e.n_samples} samples" if rows == e.n_samples + 1 else
            f"{e.n_samples} samples")
    line = f"evaluation: {per_call} prompts x {rows} row{'s' * (rows != 1)} per call ({what}"
    if per_call < want:
        line += (f"); {want} per call would need "
                 f"{_gb(call_bytes(mc, want * rows, want, e.max_new_tokens, prompt_tokens, elem))}, "
                 f"{_gb(max(0, room))} is free")
    else:
        line += ", as configured)"
    return b, note, line


def fitted_prompts(model_config: ModelConfig, new_tokens: int, free_bytes: float, want: int, rows_per_prompt: int,
                   prompt_tokens: int, element_bytes: int, n_questions: int | None = None) -> int:
    """Prompts per sampler call: `want`, or when fewer fit in free_bytes, n_questions cut into the fewest equal
    calls that fit (call_size; n_questions None: the most that fit). At least one prompt."""
    fit = rows_per_call(model_config, new_tokens, free_bytes, rows_per_prompt=rows_per_prompt,
                        prompt_tokens=prompt_tokens, element_bytes=element_bytes, cap=None) // rows_per_prompt
    return call_size(n_questions, want, fit) if n_questions else max(1, min(want, fit))


def eval_prompts_per_call(e, mc: ModelConfig, free_bytes: float, prompt_tokens: int, element_bytes: int) -> int:
    """Prompts per call of an evaluation's largest calls (fitted_prompts): greedy + samples together
    (n_samples + 1 rows per prompt, 8 x eval.batch_prompts rows' worth), or greedy alone (eval.batch_prompts
    prompts), or with the interpreter the samples' own calls (n_samples rows, 8 x batch_prompts // n_samples
    prompts). evaluate.greedy_and_samples cuts its calls by the same rule."""
    rows, want = eval_call_shape(e)
    return fitted_prompts(mc, e.max_new_tokens, free_bytes, want, rows, prompt_tokens, element_bytes)


def eval_call_shape(e) -> tuple[int, int]:
    """(rows per prompt, prompts per call as configured) of an evaluation's largest calls (by rows)."""
    n = e.n_samples
    if n > 0 and not e.interpreter:
        return n + 1, max(1, 8 * e.batch_prompts // (n + 1))
    if n > 0:
        return max((1, e.batch_prompts), (n, max(1, 8 * e.batch_prompts // n)), key=lambda x: x[0] * x[1])
    return 1, e.batch_prompts


def eval_memory(cfg, world_size: int, model_config: ModelConfig | None = None, budget: float | None = None, *,
                prompt_tokens: int = 256) -> MemoryPlan:
    """`echochamber eval`'s peak per GPU: the fp32 weights, the bf16 sampling copy and one sampler call, cut to
    what fits (eval_prompts_per_call). world_size splits the problems, not the memory."""
    e = cfg.eval
    mc = _resolved(cfg, model_config)
    N = Sizes.of(mc).params
    budget = _budget(cfg, budget)
    comp = {"weights": 4 * N}
    notes = {"weights": f"fp32, {N / 1e6:,.1f}M parameters"}
    sampling = _sampling_weights(Sizes.of(mc), e.sample_dtype)
    if sampling:
        comp["sampling weights"] = sampling
        notes["sampling weights"] = "bf16 copy of the matmul weights for decoding"
    room = _usable(budget) - sum(comp.values())
    b, note, line = eval_calls_plan(cfg, mc, room, prompt_tokens)
    comp["KV cache"] = b
    notes["KV cache"] = note
    plan = MemoryPlan("eval", comp, budget, {"KV cache": "evaluation"}, notes, calls=[line], sampling_room=room)
    if not plan.fits:
        plan.advice.append("eval.max_new_tokens or eval.n_samples smaller (one prompt's rows do not fit)")
    return plan

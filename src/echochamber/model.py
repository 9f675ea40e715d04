"""The OLMo-1 decoder used by the paper, in one file.

Architecture (Groeneveld et al. 2024; Hugging Face `OlmoForCausalLM`): pre-norm transformer blocks with
LayerNorm WITHOUT learned parameters, rotary position embeddings (RoPE), multi-head causal self-attention,
a SwiGLU MLP, no biases anywhere, no dropout, optionally tied input/output embeddings, weights initialised
from N(0, 0.02^2) truncated at 3 sigma.

    x = wte[idx]                                  # (B, T, C) residual stream, fp32
    for each block:
        x = x + Attn(LN(x))                       # q, k, v = LN(x) W_qkv; RoPE(q, k); softmax(q k^T / sqrt(hd)) v
        x = x + W_down (silu(LN(x) W_gate) * LN(x) W_up)
    logits = LN(x) W_head                         # (B, T, V)

Speed notes (CPU, bf16 autocast; measured against HF OlmoForCausalLM in bench/train_throughput.py):
q/k/v and gate/up are one matmul each (HF runs five); the head split and RoPE are one autograd function
working on contiguous fp32 (`_SplitHeadsRope`); short-sequence attention keeps its probabilities in memory
(`_MaterializedCausalAttention`, faster than the CPU flash kernel below 512 tokens); the output head and its
log-softmax are fused (`_LinearLogprobs`) so the (N, V) logits make three memory passes instead of ten; and
`tune_cpu_allocator()` stops glibc from page-faulting every large activation in anew each step.
The sampler's entry points are `prefill` and `decode`; `SampleCache` stores each prompt's keys and values
once for all the samples that continue it; `decode_step` is one decoding step on tensors only, which
`torch.compile` can fuse (`compiled_decode_step`, with an eager fallback).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .runio import atomic_write_bytes, atomic_write_json

# Named sizes. `mlp_hidden` is the width of EACH SwiGLU branch (HF `intermediate_size`): the paper's "SwiGLU
# hidden 3072" for 150M is per branch, which is what makes the 150M model 162M parameters at vocab 32000
# (12 x (4 x 768^2 + 3 x 768 x 3072) + 2 x 32000 x 768) and the 1B model 1.14B (tied, 16 x (4 x 2048^2 +
# 3 x 2048 x 8192) + 32000 x 2048). Counts at the vocab sizes shown come from `OLMo(...).num_params()`.
PRESETS: dict[str, dict] = {
    # Laptop model: ~0.98M parameters at vocab 1024 (0.85M in the blocks). Trains in minutes on 2 CPU cores.
    # Two heads of 64 (the 150M model's head size): on CPU, attention with 64-wide heads runs 2-3x faster than
    # with four heads of 32 at the same width.
    "olmo-tiny": dict(d_model=128, n_layers=4, n_heads=2, mlp_hidden=384, max_seq_len=2048, tie_embeddings=True),
    # Laptop model: ~3.7M parameters at vocab 1024 (3.4M in the blocks).
    "olmo-small": dict(d_model=256, n_layers=4, n_heads=4, mlp_hidden=768, max_seq_len=2048, tie_embeddings=True),
    # The `scale` study's larger laptop models (studies.py): ~5.4M and ~12M parameters at vocab 1024.
    "olmo-5m": dict(d_model=256, n_layers=6, n_heads=4, mlp_hidden=768, max_seq_len=2048, tie_embeddings=True),
    "olmo-12m": dict(d_model=384, n_layers=6, n_heads=6, mlp_hidden=1152, max_seq_len=2048, tie_embeddings=True),
    # Single-GPU model between the laptop and paper sizes: ~43M parameters at vocab 32000 (27M in the blocks).
    "olmo-40m": dict(d_model=512, n_layers=8, n_heads=8, mlp_hidden=1536, max_seq_len=2048, tie_embeddings=True),
    # The paper's 150M (162.4M parameters at vocab 32000, untied).
    "olmo-150m": dict(d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072, max_seq_len=2048, tie_embeddings=False),
    # The paper's 1B (1.139B parameters at vocab 32000, tied).
    "olmo-1b": dict(d_model=2048, n_layers=16, n_heads=16, mlp_hidden=8192, max_seq_len=2048, tie_embeddings=True),
}
# Defaults every preset shares (OLMo-1 / the paper).
_COMMON = dict(rope_theta=10000.0, init_std=0.02)
_ARCH_FIELDS = ("d_model", "n_layers", "n_heads", "mlp_hidden", "max_seq_len", "rope_theta", "tie_embeddings",
                "init_std")
LN_EPS = 1e-5  # OLMo-1 / HF OlmoLayerNorm


@dataclass
class ModelConfig:
    """Model shape. Fields left None come from `preset`; `resolve()` makes every field concrete."""

    preset: str = "olmo-tiny"  # one of PRESETS (paper: "olmo-150m", "olmo-1b"), or "custom" with every field set
    d_model: Optional[int] = None  # residual width (paper 768 / 2048)
    n_layers: Optional[int] = None  # transformer blocks (paper 12 / 16)
    n_heads: Optional[int] = None  # attention heads; head dim = d_model / n_heads (paper 12 / 16, head dim 64 / 128)
    mlp_hidden: Optional[int] = None  # SwiGLU width per branch, HF `intermediate_size` (paper 3072 / 8192)
    max_seq_len: Optional[int] = None  # longest sequence RoPE tables cover (paper 2048)
    rope_theta: Optional[float] = None  # RoPE base (paper 10000)
    tie_embeddings: Optional[bool] = None  # output head shares the input embedding (paper: 150M no, 1B yes)
    init_std: Optional[float] = None  # std of the truncated (3 sigma) normal init (paper 0.02)
    clip_qkv: Optional[float] = None  # clamp q, k, v to [-c, c] (HF `clip_qkv`); None = off, as in the paper's models
    vocab_size: Optional[int] = None  # None = the tokenizer's size (paper: Llama-2 tokenizer, 32000)

    def resolve(self, vocab_size: int | None = None) -> "ModelConfig":
        """A copy with every field concrete: preset values fill the Nones; `vocab_size` (the tokenizer's) fills
        `self.vocab_size` when that is None. An explicit vocab_size smaller than the tokenizer's is an error."""
        if self.preset == "custom":
            base = dict(_COMMON)
        elif self.preset in PRESETS:
            base = {**_COMMON, **PRESETS[self.preset]}
        else:
            raise ValueError(f"model.preset: unknown preset {self.preset!r}; expected one of "
                             f"{sorted(PRESETS) + ['custom']}")
        values = {f: getattr(self, f) if getattr(self, f) is not None else base.get(f) for f in _ARCH_FIELDS}
        missing = [f for f, v in values.items() if v is None]
        if missing:
            raise ValueError(f"model: preset 'custom' needs {missing} set")
        vocab = self.vocab_size if self.vocab_size is not None else vocab_size
        if vocab is None:
            raise ValueError("model.vocab_size: not set and no tokenizer vocab size given to resolve()")
        if vocab_size is not None and vocab < vocab_size:
            raise ValueError(f"model.vocab_size={vocab} is smaller than the tokenizer's {vocab_size}")
        if values["d_model"] % values["n_heads"] or (values["d_model"] // values["n_heads"]) % 2:
            raise ValueError(f"model: d_model={values['d_model']} must split into n_heads={values['n_heads']} "
                             f"heads of even size (RoPE rotates pairs)")
        return dataclasses.replace(self, vocab_size=int(vocab), **values)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc only; a no-op elsewhere).

    glibc serves allocations above 128 KiB-32 MiB with fresh mmap()s and unmaps them on free, so every large
    activation of every step is page-faulted in anew: on a 2-core CPU that costs a quarter of a training step.
    Raising the mmap and trim thresholds lets PyTorch reuse the same memory each step (RSS stays at the peak).
    Call once at process start; returns whether it took effect."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False


# ----------------------------------------------------------------------------------------------- building blocks

def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without weight or bias, computed in fp32 (as OLMo does) and returned in x's dtype."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=LN_EPS).type_as(x)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables, each (max_seq_len, head_dim), fp32, laid out for `rotate`:
    cos_t = [cos a_t, cos a_t] and sin_t = [-sin a_t, sin a_t], with angles a_t[i] = t * theta^(-2i / head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (hd/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (S, hd/2)
    return torch.cat((angles.cos(), angles.cos()), -1), torch.cat((-angles.sin(), angles.sin()), -1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """RoPE: rotate the pairs (x_i, x_{i + hd/2}) of every head by the position's angle (HF / GPT-NeoX layout):
        out = x * cos + swap_halves(x) * sin  =  [x_1 cos - x_2 sin, x_2 cos + x_1 sin]
    The inverse rotation (for the backward pass) subtracts the second term. x: fp32 (..., hd), contiguous
    (full-width contiguous fp32 ops are several times faster on CPU than mixed-dtype ops on half-width views);
    cos, sin from `rope_tables`, broadcastable to x."""
    h = x.shape[-1] // 2
    swapped = torch.cat((x[..., h:], x[..., :h]), dim=-1)
    return (x * cos).addcmul_(swapped, sin, value=-1.0 if inverse else 1.0)


class _SplitHeadsRope(torch.autograd.Function):
    """qkv (B, T, 3C) -> q, k, v, each (B, H, T, hd) contiguous, with RoPE applied to q and k in fp32 (as OLMo).

    One function instead of view/unbind/rope/transpose/contiguous chains: each of q, k, v is written once, in
    the layout attention wants, and the backward (RoPE is a rotation, so its inverse is the rotation by -angle)
    writes the gradient straight into a (B, T, 3C) tensor. cos, sin: broadcastable to (B, T, 2, H, hd)."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int):
        B, T, C3 = qkv.shape
        x = qkv.view(B, T, 3, n_heads, C3 // (3 * n_heads))  # (B, T, 3, H, hd)
        rot = rotate(x[:, :, :2].float(), cos, sin)  # (B, T, 2, H, hd) fp32
        out = torch.empty((3, B, n_heads, T, x.shape[-1]), dtype=qkv.dtype, device=qkv.device)
        out[:2].copy_(rot.permute(2, 0, 3, 1, 4))  # cast + (B, T, 2, H, hd) -> (2, B, H, T, hd)
        out[2].copy_(x[:, :, 2].transpose(1, 2))
        ctx.save_for_backward(cos, sin)
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor):
        cos, sin = ctx.saved_tensors
        B, H, T, hd = dq.shape
        g = torch.stack((dq, dk), dim=0).permute(1, 3, 0, 2, 4)  # (B, T, 2, H, hd) view
        rot = rotate(g.to(torch.float32, memory_format=torch.contiguous_format), cos, sin, inverse=True)
        dqkv = torch.empty((B, T, 3, H, hd), dtype=dq.dtype, device=dq.device)
        dqkv[:, :, :2].copy_(rot)
        dqkv[:, :, 2].copy_(dv.transpose(1, 2))
        return dqkv.view(B, T, 3 * H * hd), None, None, None


class _MaterializedCausalAttention(torch.autograd.Function):
    """softmax(q k^T * scale + causal mask) v with the probabilities kept in memory, by blocks of query rows:
    rows [s, e) only ever see keys [0, e), so the blocks above the diagonal are never computed (T = 256 in
    blocks of 128 does 3/4 of the square). Each block is a few batched matmuls and one softmax each way. On
    CPU this is 1.5-3x faster than the flash-attention kernel for the short sequences (T <= 512) and head size
    (64) of the laptop presets, where flash's tiny tiles starve the matmul units. Per block (P = softmax(S)):
        O = P V ;  dV += P^T dO ;  dP = dO V^T ;  dS = P * (dP - rowsum(dP * P)) ;
        dQ = scale dS K ;  dK += scale dS^T Q"""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
        # block: query rows per block (ATTENTION_BLOCK), an argument so that torch.compile sees a constant int
        # (reading it off this class inside forward split the compiled graph at every layer's attention).
        B, H, T, D = q.shape
        scale = D ** -0.5
        q3, k3, v3 = q.reshape(B * H, T, D), k.reshape(B * H, T, D), v.reshape(B * H, T, D)
        mask = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)  # 0 on/below diagonal
        out = torch.empty_like(q3)
        probs = []
        for s in range(0, T, block):
            e = min(T, s + block)
            scores = torch.baddbmm(mask[s:e, :e], q3[:, s:e], k3[:, :e].transpose(1, 2), alpha=scale)  # (BH, e-s, e)
            p = torch.softmax(scores, dim=-1)
            out[:, s:e] = torch.bmm(p, v3[:, :e])  # (not bmm(out=view): torch.compile splits the graph there)
            probs.append(p)
        ctx.save_for_backward(q3, k3, v3, *probs)
        ctx.block = block
        return out.view(B, H, T, D)

    @staticmethod
    def backward(ctx, do: torch.Tensor):
        q3, k3, v3, *probs = ctx.saved_tensors
        B_H, T, D = q3.shape
        scale = D ** -0.5
        do3 = do.reshape(B_H, T, D).to(q3.dtype)
        dq, dk, dv = torch.empty_like(q3), torch.zeros_like(k3), torch.zeros_like(v3)
        for i, p in enumerate(probs):
            s = i * ctx.block
            e = s + p.shape[1]
            dv[:, :e].baddbmm_(p.transpose(1, 2), do3[:, s:e])
            ds = torch._softmax_backward_data(torch.bmm(do3[:, s:e], v3[:, :e].transpose(1, 2)), p, -1, p.dtype)
            dq[:, s:e] = torch.bmm(ds, k3[:, :e])
            dk[:, :e].baddbmm_(ds.transpose(1, 2), q3[:, s:e], alpha=scale)
        return dq.mul_(scale).view(do.shape), dk.view(do.shape), dv.view(do.shape), None


ATTENTION_BLOCK = 128  # query rows per block of _MaterializedCausalAttention

# Sequences up to this length use the materialized attention on CPU (beyond it the T^2 probabilities cost
# more than flash attention's recomputation), as long as they fit in this many probability elements.
MATERIALIZE_MAX_T = 512
MATERIALIZE_MAX_ELEMENTS = 1 << 28


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention, q, k, v: (B, H, T, hd) -> (B, H, T, hd). Picks the faster kernel for the shape."""
    B, H, T, _ = q.shape
    if q.device.type == "cpu" and T <= MATERIALIZE_MAX_T and B * H * T * T <= MATERIALIZE_MAX_ELEMENTS:
        return _MaterializedCausalAttention.apply(q, k, v, ATTENTION_BLOCK)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@dataclass
class SampleCache:
    """Keys and values for sampling continuations of U distinct prompts with B rows (samples).

    Each prompt's keys/values are stored ONCE (`pk`, `pv`), however many samples continue it; each row stores
    only its own generated tokens (`k`, `v`). A decode step attends to both parts and merges the two softmaxes
    (see `_decode_attention`), so n samples of a prompt read its cache once per step instead of n times (on a
    CPU single-token decoding is bound by reading the cache). The generated-token buffers are allocated once,
    at full length, and written in place: the live rows are the first B of them (`rows`), and dropping
    finished rows moves the kept ones forward inside the same buffers (`keep`), so no step ever holds two
    copies of the cache (512 rows x 1024 tokens of the 1B model in bf16 is 32 GiB each for k and v).
    Row b continues prompt group[b] as its slot[b]-th sample; it holds glen[b] generated tokens (slots past
    that are stale)."""

    pk: torch.Tensor  # (L, U, H, P, hd) prompt keys, right-padded
    pv: torch.Tensor  # (L, U, H, P, hd)
    plen: torch.Tensor  # (U,) prompt lengths
    prompt_bias: torch.Tensor  # (U, 1, 1, P): 0 on each prompt's real positions, -inf on its padding
    k: torch.Tensor  # (L, R, H, G, hd) generated-token keys for R >= B rows, G = capacity
    v: torch.Tensor  # (L, R, H, G, hd)
    glen: torch.Tensor  # (B,) generated tokens stored per live row
    group: torch.Tensor  # (B,) which prompt each row continues
    slot: torch.Tensor  # (B,) index of the row among its prompt's rows, < n_slots
    n_slots: int  # most rows any prompt has

    @classmethod
    def start(cls, pk: torch.Tensor, pv: torch.Tensor, plen: torch.Tensor, group: torch.Tensor, capacity: int,
              dtype: torch.dtype) -> "SampleCache":
        """Rows continuing prompts `group` (B,), none generated yet, room for `capacity` new tokens each."""
        L, U, H, P, hd = pk.shape
        counts, slots = [0] * U, []
        for g in group.tolist():  # the r-th row of prompt g gets slot r
            slots.append(counts[g])
            counts[g] += 1
        slot = torch.tensor(slots, dtype=torch.long, device=group.device)
        bias = torch.zeros((U, 1, 1, P), dtype=dtype, device=pk.device)
        bias.masked_fill_((torch.arange(P, device=pk.device) >= plen[:, None])[:, None, None], MASKED)
        # Zeros, not torch.empty: masked slots get probability 0, but 0 * NaN garbage would still be NaN.
        shape = (L, len(group), H, capacity, hd)
        return cls(pk.to(dtype), pv.to(dtype), plen, bias, torch.zeros(shape, dtype=dtype, device=pk.device),
                   torch.zeros(shape, dtype=dtype, device=pk.device), torch.zeros_like(group), group, slot,
                   max(counts))

    def keep(self, rows: torch.Tensor, upto: int, chunk: int = 16) -> None:
        """Keep only the live rows `rows` (ascending), in place: row rows[j] moves to row j of the buffers.
        Only the first `upto` slots (those written so far) move, `chunk` rows at a time through a small
        buffer; writing rows [j, j + chunk) never overwrites a later source, since rows[j'] >= j' for all j'."""
        for j in range(0, len(rows), chunk):
            src = rows[j:j + chunk]
            for buf in (self.k, self.v):
                buf[:, j:j + len(src), :, :upto] = buf[:, src, :, :upto]
        self.glen, self.group, self.slot = self.glen[rows], self.group[rows], self.slot[rows]

    @property
    def rows(self) -> int:
        return len(self.glen)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


# Score added to masked cache slots: finite, so that a row with every slot masked (no generated token yet) gets
# weight exp(MASKED - m) = 0 for the block instead of exp(-inf + inf) = NaN. Representable in bf16.
MASKED = -1e30


def _decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, pk: torch.Tensor,
                      pv: torch.Tensor, prompt_bias: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      own_bias: torch.Tensor, group: torch.Tensor, slot: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Attention of one new query per row over its prompt, its earlier generated tokens and itself -> (B, H, hd).

    q, k_new, v_new (B, H, hd): the new token's; one layer's prompt keys/values pk, pv (U, H, P, hd) and cached
    generated keys/values k, v (B, H, W, hd). The prompt part runs per prompt with that prompt's rows stacked
    as a matrix of queries (U, H, n, hd), so its keys are read once; the cached part runs per row; the new
    token is its own block (it is written to the cache after the step). Each block gives an unnormalised
    output o, its max score m and its softmax mass l; they merge exactly (flash attention's block merge):
        out = sum_j o_j e^(m_j - m) / sum_j l_j e^(m_j - m),  m = max_j m_j
    prompt_bias (U, 1, 1, P) and own_bias (B, 1, W, 1) are 0 where a key is visible, MASKED elsewhere."""
    B, H, hd = q.shape
    scale = hd ** -0.5
    # Prompt part, (U, H, n_slots, .) layout; empty slots hold zero queries whose results are never read.
    qg = q.new_zeros((pk.shape[0], n_slots, H, hd))
    qg[group, slot] = q
    s = torch.matmul(qg.transpose(1, 2), pk.transpose(-1, -2)).mul_(scale).add_(prompt_bias)
    m_a = s.amax(dim=-1, keepdim=True)  # (U, H, n, 1)
    p = s.sub_(m_a).exp_()
    l_a = p.sum(dim=-1, keepdim=True)
    o_a = torch.matmul(p, pv)  # (U, H, n, hd)
    o_a, m_a, l_a = (t[group, :, slot] for t in (o_a, m_a, l_a))  # (B, H, hd), (B, H, 1) x 2
    # Cached part: the row's earlier generated tokens. Scores as K q (matrix-vector), which CPU BLAS runs ~1.5x
    # faster than q K^T (vector-matrix).
    s = torch.matmul(k, q[..., None]).mul_(scale).add_(own_bias)  # (B, H, W, 1)
    m_b = s.amax(dim=-2)  # (B, H, 1)
    p = s.sub_(m_b[:, :, None]).exp_()
    l_b = p.sum(dim=-2)  # (B, H, 1)
    o_b = torch.matmul(p.transpose(-1, -2), v)[:, :, 0]  # (B, H, hd)
    # The new token: one score per row and head, mass e^0 = 1 at its own max.
    m_c = (q * k_new).sum(dim=-1, keepdim=True).mul_(scale)  # (B, H, 1)
    m = torch.maximum(torch.maximum(m_a, m_b), m_c)
    w_a, w_b, w_c = (m_a - m).exp_(), (m_b - m).exp_(), (m_c - m).exp_()
    return (o_a * w_a + o_b * w_b + v_new * w_c) / (l_a * w_a + l_b * w_b + w_c)


def decode_step(model: "OLMo", tokens: torch.Tensor, glen: torch.Tensor, plen: torch.Tensor, group: torch.Tensor,
                slot: torch.Tensor, n_slots: int, pk: torch.Tensor, pv: torch.Tensor, prompt_bias: torch.Tensor,
                k: torch.Tensor, v: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step on tensors only (what `torch.compile` sees), which reads the cache and writes nothing:
    rows' new tokens (B,) -> fp32 logits (B, V) and the new tokens' keys and values, each (L, B, H, hd), for
    the caller to store at slot glen[b] (one write for all layers). Row b attends to its prompt (pk, pv
    (L, U, H, P, hd)), to its cached tokens, slots [0, glen[b]) of the buffers k, v (L, R >= B, H, G, hd)
    (read up to slot `width`), and to itself. The buffers come whole, sliced here, so that their strides
    never change between calls (a compiled graph guards on strides)."""
    B = tokens.shape[0]
    pos = plen[group] + glen  # (B,) absolute position of the new token
    hidden = torch.arange(width, device=tokens.device) >= glen[:, None]  # (B, W): slots not written yet
    own_bias = torch.zeros(hidden.shape, dtype=k.dtype, device=k.device).masked_fill_(hidden, MASKED)
    own_bias = own_bias[:, None, :, None]  # (B, 1, W, 1)
    cos, sin = model.rope_cos[pos][:, None, None, None, :], model.rope_sin[pos][:, None, None, None, :]
    keys, values = [], []
    x = model.wte(tokens[:, None])  # (B, 1, C)
    for i, block in enumerate(model.blocks):

        def attend(q_i, k_i, v_i, i=i):  # each (B, H, 1, hd)
            keys.append(k_i[:, :, 0].to(k.dtype))
            values.append(v_i[:, :, 0].to(v.dtype))
            with torch.autocast(x.device.type, enabled=False):  # read the cache in its own dtype
                y = _decode_attention(q_i[:, :, 0].to(k.dtype), keys[-1], values[-1], pk[i], pv[i], prompt_bias,
                                      k[i, :B, :, :width], v[i, :B, :, :width], own_bias, group, slot, n_slots)
            return y[:, :, None].to(v_i.dtype)

        x = block(x, cos, sin, attend)
    return model.lm_head(layer_norm(x[:, 0])).float(), torch.stack(keys), torch.stack(values)


def distinct_sizes():
    """A context in which torch.compile gives every dynamic size its own symbol. By default it ties sizes that are
    equal at the first call ("duck sizing": 500 rows and 500 cache rows became one symbol), and the decode step
    compiled again, about 25 s on 2 cores, once they parted as rows finished."""
    import torch.fx.experimental._config as fx_config

    if not hasattr(fx_config, "use_duck_shape"):  # a torch without the switch
        return contextlib.nullcontext()
    return fx_config.patch(use_duck_shape=False)


@contextlib.contextmanager
def deterministic_algorithms():
    """torch's deterministic algorithms on (warn_only) for the block, and the process's setting back after it. A
    compiled graph depends on that setting: inductor lowers it differently with it on, and torch.compile guards
    on it, so a compiled call made once with it off and once with it on compiles twice and samples other tokens."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


# `decode_step` under torch.compile: None until first use, False once compilation failed in this process.
_COMPILED_DECODE = None


def compiled_decode_step():
    """`decode_step` compiled by torch.compile (inductor: the dozens of small operations of a decode step fused
    into a few kernels), or the eager `decode_step` where compilation failed before. Shapes are dynamic, so the
    batch shrinking and the attended width growing reuse one compiled graph (sizes 0 and 1 would get their own:
    the sampler keeps at least two rows in a compiled call).
    Compiled code is cached on disk by inductor (TORCHINDUCTOR_CACHE_DIR, default /tmp/torchinductor_$USER), so
    later processes skip its code generation: the quickstart model's first compiled call took 65 s with the cache
    empty and 32 s with it warm, on 2 cores (tracing the step is most of the rest)."""
    global _COMPILED_DECODE
    if _COMPILED_DECODE is None:
        print("decoding through torch.compile (its first call compiles the step: about a minute on 2 cores, once "
              "per process)", file=sys.stderr)
        compiled = torch.compile(decode_step, dynamic=True, fullgraph=True)

        def step(*args):
            # The sizes it sees at its first call must not be tied (see distinct_sizes). Deterministic algorithms
            # always: a compiled pretraining turns them on for the rest of its process (CompiledForTraining), and
            # a sweep's cell must sample what the same cell run alone samples.
            with distinct_sizes(), deterministic_algorithms():
                return compiled(*args)

        _COMPILED_DECODE = step
    return _COMPILED_DECODE or decode_step


def warn_compile_failed(what: str, err: Exception) -> None:
    """One warning when torch.compile of `what` failed and it runs eagerly instead."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    warnings.warn(f"torch.compile of {what} failed ({type(err).__name__}: {first}); running it eagerly")


def _disable_compile(err: Exception) -> None:
    global _COMPILED_DECODE
    warn_compile_failed("the decode step", err)
    _COMPILED_DECODE = False


class CompiledForTraining(nn.Module):
    """`model`'s forward (and so its backward) through torch.compile, for training steps on one fixed batch shape:
    inductor fuses the elementwise work around the matmuls (casts, RoPE, SwiGLU, norms), which is about half of
    an eager CPU step at laptop widths (bench/README.md). The first call compiles (about 30 s on 2 cores; inductor
    caches the result on disk); if compiling fails there, one warning and eager calls from then on. It turns on
    torch's deterministic algorithms, so that a compiled run is reproducible from its seed. Parameters,
    buffers and state_dict are the wrapped model's, under `model.`; save the model itself, not this wrapper."""

    def __init__(self, model: nn.Module):
        super().__init__()
        # Process-wide, and needed before the first call compiles: without it, two processes with the same seed
        # trained to different weights (inductor picks lowerings whose accumulation order varies from run to run);
        # with it they agree bit for bit. warn_only: ops without a deterministic kernel warn instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = model
        # Set past nn.Module's registration: the compiled wrapper shares `model`'s parameters, registered once.
        object.__setattr__(self, "_compiled", torch.compile(model))
        self._eager = False

    def forward(self, *args, **kwargs):
        if not self._eager:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as e:  # compilation unavailable or failed: an error of the model itself recurs below
                self._eager = True
                warn_compile_failed("the training step", e)
        return self.model(*args, **kwargs)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.clip = cfg.n_heads, cfg.head_dim, cfg.clip_qkv
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # rows: [W_q; W_k; W_v]
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend=causal_attention) -> torch.Tensor:
        """x: (B, T, C). `attend(q, k, v)` maps the RoPE'd heads (B, H, T, hd) to outputs (B, H, T, hd): plain
        causal attention by default; prefill and decode pass ones that also store / read a KV cache."""
        B, T, C = x.shape
        qkv = self.qkv(x)  # (B, T, 3C)
        if self.clip is not None:
            qkv = qkv.clamp(-self.clip, self.clip)
        q, k, v = _SplitHeadsRope.apply(qkv, cos, sin, self.n_heads)  # each (B, H, T, hd), RoPE on q and k
        y = attend(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.mlp_hidden, bias=False)  # rows: [W_gate; W_up]
        self.down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, F) each
        return self.down(F.silu(gate) * up)  # SwiGLU: W_down (silu(x W_gate) * x W_up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attend=causal_attention):
        x = x + self.attn(layer_norm(x), cos, sin, attend)
        return x + self.mlp(layer_norm(x))


# ----------------------------------------------------------------------------------------------- the model

class OLMo(nn.Module):
    """OLMo-1 decoder. `forward(idx)` gives logits; `forward(idx, targets)` gives log p(targets) per token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None or config.d_model is None:
            config = config.resolve()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._build_rope()
        self.reset_parameters()

    def _build_rope(self) -> None:
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta)
        device = self.wte.weight.device
        # Non-persistent: derived from the config, never saved.
        self.register_buffer("rope_cos", cos.to(device), persistent=False)  # (S, hd)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every weight ~ N(0, init_std^2) truncated at +-3 init_std (the paper's "normal" init)."""
        std = self.config.init_std
        for p in self.parameters():
            nn.init.trunc_normal_(p, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once each (a tied head is not counted twice); optionally without embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    # -- full-sequence forward (training, scoring) -----------------------------------------------------------

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (B, T, C) for a causal pass over idx (B, T), positions 0..T-1."""
        T = idx.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model max_seq_len {self.config.max_seq_len}")
        cos, sin = self.rope_cos[:T, None, None, :], self.rope_sin[:T, None, None, :]  # (T, 1, 1, hd)
        x = self.wte(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin)
        return layer_norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, temperature: float = 1.0,
                with_entropy: bool = False):
        """idx (B, T) -> logits (B, T, V); with targets (B, T): log p(targets[b, t] | idx[b, :t+1]) as (B, T)
        fp32, from logits / temperature, computed by the fused head (`head_logprobs`: the (B, T, V) logits are
        never stored); with_entropy: (log-probs, entropies (B, T) fp32, no gradient). The pretraining loss is
        `-model(x, y).mean()`; the RL log-probs are `model(x, y, temperature, with_entropy)`; all forms run through
        forward so a DistributedDataParallel wrapper sees them."""
        h = self.hidden(idx)
        if targets is None:
            return self.lm_head(h)
        return head_logprobs(self.lm_head, h, targets, temperature=temperature, with_entropy=with_entropy)

    # -- KV-cache entry points for the sampler ---------------------------------------------------------------

    def prefill(self, idx: torch.Tensor, lengths: torch.Tensor,
                dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded prompts idx (U, P) (row u real for its first lengths[u] tokens) -> fp32 logits (U, V) at
        each prompt's last token, and the keys and values of every layer, each (L, U, H, P, hd) in `dtype`
        (default: the weights'), written straight into one buffer each. Causal attention means the padding
        after a prompt never affects its real positions; decode masks it out."""
        U, P = idx.shape
        cfg = self.config
        cos, sin = self.rope_cos[:P, None, None, :], self.rope_sin[:P, None, None, :]  # (P, 1, 1, hd)
        shape = (cfg.n_layers, U, cfg.n_heads, P, cfg.head_dim)
        dtype = self.wte.weight.dtype if dtype is None else dtype
        keys = torch.empty(shape, dtype=dtype, device=idx.device)
        values = torch.empty(shape, dtype=dtype, device=idx.device)
        x = self.wte(idx)
        for i, block in enumerate(self.blocks):

            def attend(q, k, v, i=i):
                keys[i].copy_(k)
                values[i].copy_(v)
                return causal_attention(q, k, v)

            x = block(x, cos, sin, attend)
        last = x[torch.arange(U, device=idx.device), lengths - 1]  # (U, C)
        return self.lm_head(layer_norm(last)).float(), keys, values

    def decode(self, tokens: torch.Tensor, cache: SampleCache, width: int, compiled: bool = False) -> torch.Tensor:
        """Append one token per live row (tokens (B,)) after its prompt and generated tokens; returns fp32
        logits (B, V). Each row attends to the first `width` slots of its generated-token cache, which must
        cover its glen (the caller rounds it up so that compiled code sees few distinct shapes); then the new
        keys and values go to slot glen of every row, for all layers at once. No host synchronisation: the
        caller keeps glen < capacity and prompt + generated < max_seq_len.
        compiled: run `decode_step` through torch.compile (see `compiled_decode_step`)."""
        step = compiled_decode_step() if compiled else decode_step
        B = len(tokens)
        args = (tokens, cache.glen, cache.plen, cache.group, cache.slot, cache.n_slots, cache.pk, cache.pv,
                cache.prompt_bias, cache.k, cache.v, width)
        try:
            logits, k, v = step(self, *args)
        except Exception as e:  # compilation unavailable or failed here: decode eagerly from now on
            if step is decode_step:
                raise
            _disable_compile(e)
            logits, k, v = decode_step(self, *args)
        rows = torch.arange(B, device=tokens.device)
        cache.k[:, rows, :, cache.glen] = k.transpose(0, 1)  # (B, L, H, hd): row b's token at its slot glen[b]
        cache.v[:, rows, :, cache.glen] = v.transpose(0, 1)
        cache.glen = cache.glen + 1
        return logits

    @torch.no_grad()
    def matmul_copy(self, dtype: torch.dtype) -> "OLMo":
        """An inference-only model whose matmul weights (attention, MLP and output head) are copies of these in
        `dtype`, and whose embedding and RoPE tables are these very tensors (shared, not copied).

        For sampling under autocast to `dtype`: autocast casts every fp32 weight to `dtype` for each matmul at
        every decode step (4x the weight traffic of reading bf16 weights) and keeps the embedding lookup, norms
        and softmaxes in fp32. With the matmul weights already in `dtype` its casts are no-ops and everything it
        kept in fp32 still reads fp32 tensors, so decoding gives the same tokens and log-probs bit for bit
        (`.to(dtype)` rounds as autocast's cast does). A tied head gets its own copy (the lookup stays fp32), so
        the copy takes 2 bytes per parameter of a tied model, less for an untied one (its input embedding is
        shared). Make it after each weight update: it does not follow later ones."""
        with torch.device("meta"):
            copy = OLMo(self.config)
        copy.wte.weight = self.wte.weight
        for name, module in copy.named_modules():
            if isinstance(module, nn.Linear):  # (a tied head is untied here: lm_head gets its own tensor)
                module.weight = nn.Parameter(self.get_submodule(name).weight.detach().to(dtype), requires_grad=False)
        copy.rope_cos, copy.rope_sin = self.rope_cos, self.rope_sin
        return copy.eval()

    # -- persistence -------------------------------------------------------------------------------------------

    def save(self, dir: str | Path) -> None:
        """Write dir/model.safetensors (fp32-or-native weights; a tied head stored once) and dir/model_config.json."""
        from safetensors.torch import save as st_save

        dir = Path(dir)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            state.pop("lm_head.weight")
        atomic_write_bytes(dir / "model.safetensors", st_save(state, metadata={"format": "pt"}))
        atomic_write_json(dir / "model_config.json", dataclasses.asdict(self.config))

    @classmethod
    def load(cls, dir: str | Path, device: str | torch.device = "cpu") -> "OLMo":
        """Read a folder written by `save`."""
        from safetensors.torch import load_file

        dir = Path(dir)
        cfg_path, weights = dir / "model_config.json", dir / "model.safetensors"
        for p in (cfg_path, weights):
            if not p.exists():
                raise FileNotFoundError(f"{p}: missing (expected a model folder written by OLMo.save)")
        config = config_from_dict(json.loads(cfg_path.read_text()), str(cfg_path))
        return from_state_dict(config, load_file(str(weights), device=str(device)), str(weights), device)


def config_from_dict(d: dict, where: str) -> ModelConfig:
    """ModelConfig from a JSON object; unknown keys are an error naming `where`."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown model config keys {unknown}")
    return ModelConfig(**d).resolve()


def from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], where: str,
                    device: str | torch.device = "cpu") -> OLMo:
    """Build an OLMo holding exactly `state` (in our parameter names) without running the random init."""
    with torch.device("meta"):
        model = OLMo(config)
    model = model.to_empty(device=device)
    if config.tie_embeddings:
        model.lm_head.weight = model.wte.weight
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_embeddings else set())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the config (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")
    for name, t in state.items():
        want = model.state_dict()[name].shape
        if t.shape != want:
            raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, the config gives {tuple(want)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model._build_rope()
    return model


def _scaled_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """z / temperature for one chunk of rows, z = h W^T in the matmul dtype. At temperature 1 the logits stay in
    that dtype (the softmaxes upcast as they read them); otherwise they are divided in fp32, as the full-logits
    `logits.float() / temperature` did."""
    logits = h @ weight.t()  # (n, V)
    return logits if temperature == 1.0 else logits.float().div_(temperature)


class _LinearLogprobs(torch.autograd.Function):
    """log p_tau(target) and optionally the entropy of p_tau, fused with the output head, over row chunks, where
    p_tau = softmax(z / tau) and z = h W^T (tau: the log-prob temperature; 1 for pretraining).

    Why not `F.cross_entropy(logits.float(), ...)`: on CPU every pass over the (N, V) logits costs a DRAM round
    trip, and that path makes about ten of them (fp32 copy, log-softmax, its backward, a zero-filled one-hot
    gradient, casts back); this one makes three each way and never stores the logits (backward recomputes
    them: one extra small matmul). On a GPU the point is memory: RL's micro-batch of 64 rows x 1200 tokens x
    32000 vocab is 10 GB per fp32 copy of the logits; here one chunk's are alive at a time. The softmax is
    always accumulated in fp32.
        forward:  lp_n = z_ny / tau - logsumexp(z_n / tau)                              (fp32)
                  H_n = -sum_v p_nv log p_nv = logsumexp(z_n / tau) - sum_v p_nv z_nv / tau  (fp32, no gradient)
        backward: dz_n = g_n (onehot(y_n) - p_n) / tau ;  dh = dz W ;  dW = dz^T h
    The entropy is computed as -sum exp(lp) lp from the log-softmax the log-prob needs anyway: the form the
    full-logits code had, so its values did not move.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
                rows: int, temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        hc, wc = h.to(dtype), weight.to(dtype)  # (N, C), (V, C) in the matmul dtype
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        entropy = torch.empty(h.shape[0] if with_entropy else 0, dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], rows):
            logp = F.log_softmax(_scaled_logits(hc[s:s + rows], wc, temperature), -1, dtype=torch.float32)  # (n, V)
            out[s:s + rows] = logp.gather(1, targets[s:s + rows, None])[:, 0]
            if with_entropy:
                entropy[s:s + rows] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(hc, wc, targets)
        ctx.mark_non_differentiable(entropy)
        ctx.rows, ctx.temperature, ctx.h_dtype, ctx.w_dtype = rows, temperature, h.dtype, weight.dtype
        return out, entropy

    @staticmethod
    def backward(ctx, g: torch.Tensor, _g_entropy: torch.Tensor):
        hc, wc, targets = ctx.saved_tensors
        dh = torch.empty_like(hc)
        dw = None
        for s in range(0, hc.shape[0], ctx.rows):
            h_s, y_s = hc[s:s + ctx.rows], targets[s:s + ctx.rows]
            g_s = (g[s:s + ctx.rows, None] / ctx.temperature).to(hc.dtype)  # (n, 1): d lp / d z carries 1 / tau
            # p_tau: fp32 accumulation, stored in the matmul dtype
            grad = torch.softmax(_scaled_logits(h_s, wc, ctx.temperature), dim=-1).to(hc.dtype)  # (n, V)
            grad.mul_(-g_s)
            flat = torch.arange(len(y_s), device=y_s.device) * grad.shape[1] + y_s
            grad.view(-1).index_put_((flat,), g_s[:, 0], accumulate=True)  # + g at the target: g (onehot - p) / tau
            dh[s:s + ctx.rows] = grad @ wc
            part = (grad.t() @ h_s).float()
            dw = part if dw is None else dw.add_(part)
        return dh.to(ctx.h_dtype), dw.to(ctx.w_dtype), None, None, None, None, None


# Logits per chunk of the fused head (head_logprobs): on a CPU small enough that a chunk's fp32 temporaries stay
# in cache; elsewhere a memory cap (memory.py counts one chunk's fp32 temporaries).
CPU_LOGIT_CHUNK = 1 << 20
GPU_LOGIT_CHUNK = 1 << 26


def head_logprobs(lm_head: nn.Linear, h: torch.Tensor, targets: torch.Tensor, max_logits: int | None = None,
                  temperature: float = 1.0, with_entropy: bool = False):
    """log p(targets) (B, T) fp32 from final hidden states h (B, T, C) and the output head, at softmax
    `temperature` (logits / temperature), over chunks of rows holding at most `max_logits` logits (default:
    2^20 on CPU, where a chunk's fp32 temporaries then stay in cache, 2^26 elsewhere, a memory cap), so long
    sequences and big vocabularies fit. with_entropy: (log-probs, entropies (B, T) fp32 without gradient)."""
    B, T, C = h.shape
    V = lm_head.weight.shape[0]
    if not temperature > 0:
        raise ValueError(f"head_logprobs: temperature must be > 0, got {temperature}")
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    if max_logits is None:
        max_logits = CPU_LOGIT_CHUNK if h.device.type == "cpu" else GPU_LOGIT_CHUNK
    rows = max(64, max_logits // V)  # at least 64 rows keep the chunk's matmul efficient
    lp, entropy = _LinearLogprobs.apply(h.reshape(B * T, C), lm_head.weight, targets.reshape(B * T), dtype, rows,
                                        float(temperature), with_entropy)
    return (lp.view(B, T), entropy.view(B, T)) if with_entropy else lp.view(B, T)


def token_logprobs(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) fp32 log p(targets[b, t] | idx[b, :t+1]) under `model` (an OLMo or a DDP wrapper of one): the
    RL policy's and reference model's token log-probabilities. Memory-aware over the time axis."""
    return model(idx, targets)

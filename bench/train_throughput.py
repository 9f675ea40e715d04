"""Pretraining throughput: echochamber's OLMo vs Hugging Face OlmoForCausalLM on the same weights.

One training step = forward + backward + AdamW step on the same (B, T) batch, same loss (mean next-token
cross-entropy with an fp32 softmax; ours through `-model(x, y).mean()`, HF's logits through F.cross_entropy),
same optimizer (fused AdamW), same autocast, steps interleaved ours/HF so background load hits both alike.
Also reports the achieved training FLOP/s (6 N per token + causal attention) as a fraction of a plain bf16
(2048 x 2048) matmul's FLOP/s measured in this run. Ours runs twice: eager, and through torch.compile
(model.CompiledForTraining, what `pretrain.compile` uses), whose first step (the compilation, or its load from
inductor's disk cache) is timed apart.

    python bench/train_throughput.py                   # laptop preset, ~15 seconds on 2 cores
    python bench/train_throughput.py --preset olmo-small --batch 16 --seq-len 512
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from echochamber.hf import export_hf
from echochamber.model import CompiledForTraining, ModelConfig, OLMo, tune_cpu_allocator


def matmul_flops(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul in `dtype`: the machine's practical peak for this precision."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        iters += 1
    return 2 * n ** 3 * iters / (time.perf_counter() - t0)


def train_flops_per_token(cfg: ModelConfig, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token: 6 N for the weights (forward 2N, backward 4N; embedding lookups excluded)
    plus 6 x (2 L T C / 2) for causal attention scores and values (half the T x T square is computed)."""
    # Matmul weights: every parameter except an untied input embedding (a tied one is also the output head).
    n_matmul = n_params - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
    return 6 * n_matmul + 6 * cfg.n_layers * seq_len * cfg.d_model


def time_interleaved(steps: dict, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each step function, calling them in turn (A, B, A, B, ...) so that load from other
    jobs on the shared cores hits all of them alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="olmo-tiny")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="autocast dtype")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's allocator at its defaults")
    ap.add_argument("--compile", choices=["on", "off"], default="on", help="also time ours through torch.compile")
    args = ap.parse_args()
    if not args.no_malloc_tuning:
        tune_cpu_allocator()  # helps both models alike: fewer page faults on large activations
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = ModelConfig(preset=args.preset).resolve(args.vocab)
    ours = OLMo(cfg)
    ours_c = OLMo(cfg)
    ours_c.load_state_dict(ours.state_dict())
    try:
        from transformers import OlmoForCausalLM
    except ImportError:
        raise SystemExit("transformers is not installed (pip install -e '.[test]'): it is the comparison peer")
    with tempfile.TemporaryDirectory() as d:
        export_hf(ours, d)
        hf = OlmoForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa")
    hf.train()

    rows = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1))
    x, y = rows[:, :-1], rows[:, 1:]
    amp = (contextlib.nullcontext() if args.dtype == "float32"
           else torch.autocast("cpu", dtype=getattr(torch, args.dtype)))

    def make_step(model, loss_fn):
        # Same AdamW for both (fused CPU kernel; the paper's betas / weight decay).
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

        def step():
            with amp:
                loss = loss_fn(model)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    ours_step = make_step(ours, lambda m: -m(x, y).mean())
    steps = {"echochamber OLMo": ours_step}
    compile_s = None
    if args.compile == "on":
        steps["echochamber compiled"] = make_step(CompiledForTraining(ours_c), lambda m: -m(x, y).mean())
        t0 = time.perf_counter()
        steps["echochamber compiled"]()  # the compilation (or its load from inductor's cache), timed apart
        compile_s = time.perf_counter() - t0
    # HF's logits through the same fp32 cross-entropy (cheaper for HF than its `labels=` path, which copies shifts).
    hf_step = make_step(hf, lambda m: F.cross_entropy(m(x).logits.float().flatten(0, 1), y.flatten()))

    # Sanity: same weights give the same loss.
    with torch.no_grad(), amp:
        l_ours = (-ours(x, y).mean()).item()
        l_hf = F.cross_entropy(hf(x).logits.float().flatten(0, 1), y.flatten()).item()

    peak = matmul_flops(getattr(torch, args.dtype))
    tokens = args.batch * args.seq_len
    times = time_interleaved({**steps, "HF OlmoForCausalLM": hf_step}, args.warmup, args.steps)
    results = {name: statistics.median(t) for name, t in times.items()}
    peak = (peak + matmul_flops(getattr(torch, args.dtype))) / 2  # before and after: the cores are shared

    fpt = train_flops_per_token(cfg, args.seq_len, ours.num_params())
    print(f"\npreset {args.preset} ({ours.num_params() / 1e6:.2f}M params, vocab {cfg.vocab_size}), batch "
          f"{args.batch} x {args.seq_len} tokens, autocast {args.dtype}, {torch.get_num_threads()} threads")
    print(f"loss on the same batch: ours {l_ours:.5f}  HF {l_hf:.5f}")
    print(f"{args.dtype} matmul peak (2048^3): {peak / 1e9:.0f} GFLOP/s\n")
    print(f"{'model':<20} {'s/step':>8} {'tokens/s':>10} {'GFLOP/s':>9} {'of peak':>8}")
    for name, sec in results.items():
        flops = fpt * tokens / sec
        print(f"{name:<20} {sec:>8.3f} {tokens / sec:>10.0f} {flops / 1e9:>9.1f} {flops / peak:>8.1%}")
    print()
    for name in steps:
        ratio = results["HF OlmoForCausalLM"] / results[name]
        print(f"speed-up {name} / HF: {ratio:.2f}x tokens/s")
    if compile_s is not None:
        print(f"first compiled step (compilation or cache load): {compile_s:.1f} s")
    print("(timings are medians; other jobs on the cores add noise)")


if __name__ == "__main__":
    main()

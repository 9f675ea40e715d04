"""Generation throughput: echochamber's sampler vs Hugging Face `generate` on the same weights.

The RL rollout shape, scaled down: P prompts of mixed lengths x n samples each (default 8 x 8 = a batch of
64 sequences), temperature 0.7, top_p 1.0, up to --max-new tokens. Our model is exported to an HF folder and
loaded with transformers' OlmoForCausalLM, so both sample from the same distribution. Tokens/s counts
generated tokens (through EOS, padding excluded) over wall time, prefill included. Two workloads:

  no EOS    every row generates --max-new tokens: raw decoding speed.
  EOS       rows stop at an end token at varied lengths, as RL responses do: before timing, the random model
            is trained for a few seconds on random documents that end with probability 1 / --max-new per
            token, so it learns to emit EOS at that rate. HF keeps computing finished rows until the last
            one ends; ours drops them.

    python bench/generate_throughput.py                        # laptop preset, about a minute on 2 cores
    python bench/generate_throughput.py --prompts 64 --n 8     # the full RL rollout batch (slower)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import tempfile
import time

import torch

from echochamber.hf import export_hf
from echochamber.model import ModelConfig, OLMo, tune_cpu_allocator
from echochamber.sampler import SampleConfig, generate


def run_ours(model: OLMo, prompts: list[list[int]], cfg: SampleConfig, eos: int | None) -> tuple[float, int]:
    t0 = time.perf_counter()
    gens = generate(model, prompts, cfg, eos_id=-1 if eos is None else eos, seed=0)
    return time.perf_counter() - t0, sum(len(g.tokens) for g in gens)


def run_hf(hf, prompts: list[list[int]], cfg: SampleConfig, eos: int | None) -> tuple[float, int]:
    """HF generate with the same sampling settings; prompts left-padded with an attention mask (HF's way)."""
    pad = 0 if eos is None else eos
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    amp = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.dtype == "bfloat16" else contextlib.nullcontext())
    t0 = time.perf_counter()
    with torch.inference_mode(), amp:
        out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=cfg.temperature > 0,
                          temperature=cfg.temperature if cfg.temperature > 0 else None, top_p=cfg.top_p, top_k=0,
                          max_new_tokens=cfg.max_new_tokens, min_new_tokens=0, num_return_sequences=cfg.n,
                          eos_token_id=eos, pad_token_id=pad)
    seconds = time.perf_counter() - t0
    new = out[:, width:]
    if eos is None:
        return seconds, new.numel()
    # Generated tokens per row: up to and including the first EOS (HF pads after it with pad = EOS).
    is_eos = new == eos
    lengths = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, new.shape[1])
    return seconds, int(lengths.sum())


def median_run(fn, repeats: int, *args) -> tuple[float, int]:
    """(seconds, tokens) of the run with the median time among `repeats` calls of fn(*args)."""
    runs = sorted((fn(*args) for _ in range(repeats)), key=lambda r: r[0])
    return runs[len(runs) // 2]


def teach_eos(model: OLMo, eos: int, rate: float, steps: int = 40) -> None:
    """Train the random model briefly on random documents that end (EOS) with probability `rate` per token,
    so that it stops its samples at varied lengths like a real policy (its other tokens stay near uniform)."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, model.config.vocab_size - 1, (16, 129), generator=g)
        rows[torch.rand(rows.shape, generator=g) < rate] = eos
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = -model(rows[:, :-1], rows[:, 1:]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="olmo-tiny")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--prompts", type=int, default=8, help="distinct prompts")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt (batch = prompts x n)")
    ap.add_argument("--prompt-len", type=int, nargs=2, default=(20, 120), help="prompt lengths drawn from this range")
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"],
                    help="generation precision(s) to compare (bfloat16 = autocast for both samplers)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="on",
                    help="SampleConfig.compile for our sampler (auto: eager on a CPU)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per sampler and workload (median shown)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    torch.manual_seed(0)
    rng = random.Random(0)

    cfg = ModelConfig(preset=args.preset).resolve(args.vocab)
    ours = OLMo(cfg)
    eos = cfg.vocab_size - 1
    teach_eos(ours, eos, rate=1.0 / args.max_new)
    try:
        from transformers import OlmoForCausalLM
    except ImportError:
        raise SystemExit("transformers is not installed (pip install -e '.[test]'): it is the comparison peer")
    with tempfile.TemporaryDirectory() as d:
        export_hf(ours, d)
        hf = OlmoForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()

    prompts = [[rng.randrange(eos) for _ in range(rng.randint(*args.prompt_len))]
               for _ in range(args.prompts)]
    print(f"\npreset {args.preset} ({ours.num_params() / 1e6:.2f}M params, vocab {cfg.vocab_size}), "
          f"{args.prompts} prompts x {args.n} samples = batch {args.prompts * args.n}, prompt lengths "
          f"{args.prompt_len[0]}-{args.prompt_len[1]}, up to {args.max_new} new tokens, temperature "
          f"{args.temperature}, top_p {args.top_p}, {torch.get_num_threads()} threads, compile {args.compile}, "
          f"median of {args.repeats} runs\n")
    print(f"{'dtype':<9} {'workload':<8} {'sampler':<22} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
    for dtype in args.dtype:
        scfg = SampleConfig(max_new_tokens=args.max_new, temperature=args.temperature, top_p=args.top_p, n=args.n,
                            dtype=dtype, compile=args.compile)
        # The first call compiles the decode step (or loads it from inductor's on-disk cache): timed apart.
        first = {workload: run_ours(ours, prompts, scfg, end)[0] for workload, end in (("no EOS", None), ("EOS", eos))}
        run_hf(hf, prompts[:1], dataclasses.replace(scfg, max_new_tokens=4, n=1), None)  # HF warm-up
        for workload, end in (("no EOS", None), ("EOS", eos)):
            rows = {"echochamber generate": median_run(run_ours, args.repeats, ours, prompts, scfg, end),
                    "HF generate": median_run(run_hf, args.repeats, hf, prompts, scfg, end)}
            for name, (sec, toks) in rows.items():  # tokens: sum over rows of tokens through EOS
                print(f"{dtype:<9} {workload:<8} {name:<22} {sec:>8.2f} {toks:>7d} {toks / sec:>9.0f}")
            (s_o, t_o), (s_h, t_h) = rows["echochamber generate"], rows["HF generate"]
            print(f"{dtype:<9} {workload:<8} speed-up ours / HF: {(t_o / s_o) / (t_h / s_h):.2f}x tokens/s "
                  f"(first call, compile included: {first[workload]:.2f} s = "
                  f"{(t_o / first[workload]) / (t_h / s_h):.2f}x)\n")
    print("(medians on shared cores: expect noise of 10-20%)")


if __name__ == "__main__":
    main()

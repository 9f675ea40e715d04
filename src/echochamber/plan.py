"""What a stage will do before it does it: `echochamber <stage> --config paper_1b --dry-run` prints the plan.

The plan is arithmetic on the config (and on the built data when it is there), nothing is loaded onto a GPU:

    parameters       OLMo(...).num_params() of the configured preset at the tokenizer's vocabulary
    tokens per step  global batch (batch_size x grad_accum x world size) x seq_len
    steps            pretrain.max_steps, or with max_steps 0 one epoch over the built mixture
    FLOPs per token  6 N + 12 L d T  (PaLM, Chowdhery et al. 2022, appendix B): N the parameters that do matmuls
                     (every block, and the output head; not the input embedding, a lookup), L layers, d width,
                     T the context; forward 1/3 of it, backward 2/3
    memory per GPU   memory.py's model by component (weights, gradients, optimizer, critic, reference, sampling
                     weights, KV cache, logits, activations), its peak against the device's budget, and how the
                     sampler's calls are cut to fit; `--dry-run` refuses a plan that does not fit
    checkpoint       fp32 weights (4 bytes/parameter) + AdamW moments (8 bytes/parameter)
    hours            total FLOPs / (GPUs x 989 TFLOP/s x MFU): H100 SXM dense bf16 peak, at the MFU stated

It also holds the two rules pretraining applies to its config (`resolve_grad_accum`, `resolve_pretrain_steps`),
so the plan and the run cannot disagree about steps or batch.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import memory
from .model import ModelConfig, OLMo

H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak of one H100 SXM (NVIDIA datasheet; 1979e12 is with sparsity)
PLAN_GPUS = 8  # the plan's machine: one node of 8 H100s (WORLD_SIZE overrides it)
PLAN_MFU = 0.40  # model FLOPs utilisation the hours assume; nanoGPT-style DDP training of 0.1-1B models on H100s
# reaches roughly 30-50%; generation (RL rollouts) is memory-bound and runs far below it


# ----------------------------------------------------------------------------- the rules pretraining applies

def resolve_grad_accum(batch_size: int, grad_accum: int, global_batch: int, world_size: int) -> int:
    """Micro-batches per optimizer step. global_batch 0: grad_accum as given. Otherwise the global batch in
    sequences (paper: 512) must equal batch_size x grad_accum x world_size; grad_accum 0 means "whatever makes
    it so". A mismatch is an error naming the keys, never a silently different batch."""
    if batch_size < 1 or world_size < 1 or grad_accum < 0 or global_batch < 0:
        raise ValueError(f"pretrain.batch_size ({batch_size}) and the world size ({world_size}) must be >= 1, "
                         f"pretrain.grad_accum ({grad_accum}) and pretrain.global_batch ({global_batch}) >= 0")
    if global_batch == 0:
        if grad_accum == 0:
            raise ValueError("pretrain.grad_accum 0 (derive it) needs pretrain.global_batch > 0")
        return grad_accum
    per_micro = batch_size * world_size
    if grad_accum == 0:
        if global_batch % per_micro:
            raise ValueError(f"pretrain.global_batch {global_batch} is not a multiple of pretrain.batch_size "
                             f"{batch_size} x {world_size} processes = {per_micro}")
        return global_batch // per_micro
    if grad_accum * per_micro != global_batch:
        hint = (f"; pretrain.grad_accum={global_batch // per_micro} makes it so" if global_batch % per_micro == 0
                else "")
        raise ValueError(f"pretrain.global_batch {global_batch} != pretrain.batch_size {batch_size} x "
                         f"pretrain.grad_accum {grad_accum} x {world_size} processes = "
                         f"{grad_accum * per_micro}{hint} (or pretrain.grad_accum=0 to derive it)")
    return grad_accum


def resolve_pretrain_steps(pcfg, n_train_sequences: int, world_size: int) -> int:
    """Optimizer steps of a pretraining run: pretrain.max_steps, or when it is 0 one epoch over the mixture,
    floor(train sequences / global batch) (the last partial batch is dropped, as OLMo's drop_last does)."""
    if pcfg.max_steps < 0:
        raise ValueError(f"pretrain.max_steps must be >= 0 (0 = one epoch over the mixture), got {pcfg.max_steps}")
    if pcfg.max_steps > 0:
        return pcfg.max_steps
    accum = resolve_grad_accum(pcfg.batch_size, pcfg.grad_accum, getattr(pcfg, "global_batch", 0), world_size)
    global_batch = pcfg.batch_size * accum * world_size
    steps = n_train_sequences // global_batch
    if steps < 1:
        raise ValueError(f"pretrain.max_steps 0 means one epoch over the mixture, but its {n_train_sequences} "
                         f"train sequences are fewer than one global batch of {global_batch}")
    return steps


# ----------------------------------------------------------------------------- model arithmetic

@dataclass
class ModelNumbers:
    config: ModelConfig
    params: int  # all parameters (a tied head counted once)
    matmul_params: int  # the parameters that do matmuls per token: blocks + output head

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per token, forward + backward: 6 N + 12 L d T (see the module docstring)."""
        c = self.config
        return 6 * self.matmul_params + 12 * c.n_layers * c.d_model * context


def model_numbers(model_cfg: ModelConfig, vocab_size: int) -> ModelNumbers:
    """Parameter counts of the configured model, from an instance on the meta device (no memory)."""
    config = model_cfg.resolve(vocab_size=vocab_size)
    with torch.device("meta"):
        model = OLMo(config)
    params = sum(p.numel() for p in model.parameters())
    embedding = config.vocab_size * config.d_model
    return ModelNumbers(config, params, params - embedding + (embedding if config.tie_embeddings else 0))


def run_model_config(cfg) -> ModelConfig:
    """The model a run trains: cfg.model resolved at the vocabulary the run will have (see _vocab)."""
    return cfg.model.resolve(vocab_size=_vocab(cfg)[0])


def _vocab(cfg) -> tuple[int, str]:
    """The vocabulary the run will have, and where that number comes from."""
    from .data import load_manifest
    from .tokenizer import Tokenizer

    data_dir = Path(cfg.pretrain.data_dir) if cfg.pretrain.data_dir else Path(cfg.out_dir) / "data"
    if (data_dir / "manifest.json").exists():
        return load_manifest(data_dir)["vocab_size"], f"{data_dir}/manifest.json"
    if cfg.data.tokenizer and Path(cfg.data.tokenizer).exists():
        return Tokenizer.load(cfg.data.tokenizer).vocab_size, f"data.tokenizer {cfg.data.tokenizer}"
    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    where = f"data.tokenizer {cfg.data.tokenizer} (not here yet)" if cfg.data.tokenizer else "data.vocab_size"
    return cfg.data.vocab_size, where


def _world_size() -> tuple[int, str]:
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]), "WORLD_SIZE"
    return PLAN_GPUS, f"one node of {PLAN_GPUS} assumed; set WORLD_SIZE for another count"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def _hours(flops: float, gpus: int) -> float:
    return flops / (gpus * H100_BF16_FLOPS * PLAN_MFU) / 3600


def _rows(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


# ----------------------------------------------------------------------------- plans

def _plan_model(cfg) -> tuple[int, str, int, str, ModelNumbers]:
    """What every plan starts from: (GPUs, where that count comes from, vocabulary, where it comes from, the
    model's numbers at that vocabulary)."""
    world, world_src = _world_size()
    vocab, vocab_src = _vocab(cfg)
    return world, world_src, vocab, vocab_src, model_numbers(cfg.model, vocab)


def _pretrain(cfg) -> tuple[str, memory.MemoryPlan]:
    from .data import load_manifest

    pcfg = cfg.pretrain
    world, world_src, vocab, vocab_src, m = _plan_model(cfg)
    c = m.config
    T = cfg.data.seq_len
    global_batch_key = getattr(pcfg, "global_batch", 0)
    accum = resolve_grad_accum(pcfg.batch_size, pcfg.grad_accum, global_batch_key, world)
    global_batch = pcfg.batch_size * accum * world
    tokens_per_step = global_batch * T
    data_dir = Path(pcfg.data_dir) if pcfg.data_dir else Path(cfg.out_dir) / "data"
    manifest = load_manifest(data_dir) if (data_dir / "manifest.json").exists() else None
    flops_token = m.flops_per_token(T)
    rows = [
        ("parameters", f"{m.params / 1e6:,.1f}M ({c.preset}: d {c.d_model}, {c.n_layers} layers, {c.n_heads} heads, "
                       f"SwiGLU {c.mlp_hidden}, {'tied' if c.tie_embeddings else 'untied'} embeddings; "
                       f"vocab {vocab:,} from {vocab_src})"),
        ("GPUs", f"{world} ({world_src})"),
        ("global batch", f"{global_batch} sequences = batch_size {pcfg.batch_size} x grad_accum {accum} x {world} "
                         f"GPUs" + (f" (pretrain.global_batch {global_batch_key}: checked)" if global_batch_key else "")),
        ("tokens per step", f"{tokens_per_step:,} ({global_batch} x {T})"),
    ]
    if manifest is None and pcfg.max_steps == 0:
        per = 10e9
        rows += [
            ("steps", "one epoch over the mixture (pretrain.max_steps 0): known once `echochamber data` has built "
                      f"{data_dir}; {per / tokens_per_step:,.0f} steps per 10B tokens"),
            ("tokens", "the mixture's train tokens (manifest.json totals.train_tokens, repeats included)"),
        ]
        steps = tokens = None
    else:
        steps = resolve_pretrain_steps(pcfg, manifest["splits"]["train"]["sequences"] if manifest else 0, world)
        tokens = steps * tokens_per_step
        what = ("pretrain.max_steps" if pcfg.max_steps else
                f"one epoch: {manifest['splits']['train']['sequences']:,} train sequences / {global_batch}")
        rows += [("steps", f"{steps:,} ({what}); warmup {pcfg.warmup_steps:,}"),
                 ("tokens", f"{tokens / 1e9:,.2f}B")]
        if manifest:
            rows.append(("mixture", f"{manifest['mixture']}: {manifest['totals']['train_tokens'] / 1e9:,.2f}B train "
                                    f"tokens; {tokens / manifest['totals']['train_tokens']:.2f} epochs"))
    mem = memory.pretrain_memory(cfg, world, c)
    rows += [
        ("checkpoint", f"{_gb(12 * m.params)} each (fp32 weights {_gb(4 * m.params)} + AdamW moments "
                       f"{_gb(8 * m.params)}); the last {pcfg.keep_checkpoints} kept, every {pcfg.ckpt_every:,} steps"),
        ("FLOPs per token", f"{flops_token / 1e9:,.2f} GFLOP (6 x {m.matmul_params / 1e6:,.1f}M + "
                            f"12 x {c.n_layers} x {c.d_model} x {T})"),
    ]
    if tokens is None:
        rows.append(("time", f"{_hours(flops_token * 10e9, world):,.1f} hours per 10B tokens on {world} H100s at "
                             f"{PLAN_MFU:.0%} MFU ({H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16 peak each)"))
    else:
        rows.append(("time", f"{_hours(flops_token * tokens, world):,.1f} hours on {world} H100s at {PLAN_MFU:.0%} "
                             f"MFU ({H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16 peak each; "
                             f"{flops_token * tokens:.2e} FLOPs)"))
    return (f"plan: pretrain {c.preset} on {cfg.data.mixture or 'the listed sources'}\n" + _rows(rows)
            + _memory_rows(mem, world)), mem


def _memory_rows(mem: memory.MemoryPlan, world: int) -> str:
    return f"\nmemory per GPU ({world} GPU{'s' * (world != 1)}; memory.py)\n" + mem.table()


ASSUMED_PROMPT = (100.0, 300)  # (mean, longest) prompt tokens assumed where the prompts cannot be read here


def _prompt_lengths(cfg, problems) -> tuple[float, int, str]:
    """(mean, longest) prompt length in tokens, with the tokenizer the RL run will use when it is here (else
    characters / 4 for the mean and / 3 for the longest, a bound: numbers are split into digits), and where
    they come from."""
    from .tokenizer import Tokenizer

    init = Path(cfg.rl.init) if cfg.rl.init else Path(cfg.out_dir) / "pretrain" / "model"
    candidates = [(init / "tokenizer.json", f"{init}'s tokenizer")]
    if cfg.data.tokenizer:
        candidates.append((Path(cfg.data.tokenizer), "data.tokenizer"))
    for path, what in candidates:
        if path.exists():
            ids = Tokenizer.load(path).encode_batch([p.question for p in problems])
            return sum(map(len, ids)) / len(ids), max(map(len, ids)), what
    chars = [len(p.question) for p in problems]
    return sum(chars) / len(chars) / 4, -(-max(chars) // 3), "characters / 4 (longest: / 3): no tokenizer here yet"


def train_prompt_lengths(cfg, n: int | None = None) -> tuple[int, float, int, str]:
    """(how many prompts RL draws from, their mean and longest length in tokens, where those come from), from the
    first n problems of rl.train_source (default: rl.train_problems of them); ASSUMED_PROMPT where the source
    cannot be read here."""
    from .evaluate import load_dataset

    r = cfg.rl
    try:
        problems = load_dataset(r.train_source, r.train_problems if n is None else n, cfg, cfg.eval.data_path)
        return len(problems), *_prompt_lengths(cfg, problems)
    except (FileNotFoundError, ImportError, ValueError) as e:
        return r.train_problems, *ASSUMED_PROMPT, f"assumed ({e})"


def train_prompts(cfg, n: int | None = None) -> tuple[int, float, str]:
    """(how many prompts RL draws from, their mean length in tokens, where that length comes from)
    (train_prompt_lengths)."""
    count, mean, _, src = train_prompt_lengths(cfg, n)
    return count, mean, src


def eval_prompt_lengths(cfg) -> tuple[int, str]:
    """The longest prompt of the evaluation datasets that can be read here (a hub dataset is not downloaded for
    an estimate), and where it comes from; ASSUMED_PROMPT's where none can."""
    from .evaluate import load_dataset

    longest, where = 0, []
    for spec in cfg.eval.datasets:
        if spec.partition(":")[0] == "hub":
            continue
        try:
            problems = load_dataset(spec, cfg.eval.n_problems, cfg, cfg.eval.data_path)
        except (FileNotFoundError, ImportError, ValueError):
            continue
        if problems:
            _, most, src = _prompt_lengths(cfg, problems)
            longest, where = max(longest, most + cfg.eval.add_bos), where + [f"{spec} ({src})"]
    if not longest:
        return ASSUMED_PROMPT[1], "assumed: no evaluation set here"
    return longest, ", ".join(where)


def _rl(cfg) -> tuple[str, memory.MemoryPlan]:
    r = cfg.rl
    world, world_src, vocab, vocab_src, m = _plan_model(cfg)
    n_prompts, prompt, longest, prompt_src = train_prompt_lengths(cfg)
    eval_longest, _ = eval_prompt_lengths(cfg)
    mem = memory.rl_memory(cfg, world, m.config, prompt_tokens=longest, eval_prompt_tokens=eval_longest,
                           n_prompts=n_prompts)
    rollout = r.prompts_per_step * r.samples_per_prompt
    seq = prompt + r.max_new_tokens
    tokens_step = rollout * seq  # upper bound: every response runs to max_new_tokens
    opt_steps = r.steps * r.epochs * -(-rollout // r.minibatch_size)
    # Per rollout: generation (2N per token), log-probs of the rollout policy (2N) and of the reference (2N, when
    # kl_coef > 0), and the update's forward + backward (6N).
    per_token = m.flops_per_token(int(seq)) * (1 + (2 + 2 + (2 if r.kl_coef > 0 else 0)) / 6)
    flops = per_token * tokens_step * r.steps
    micro = r.micro_batch_size or r.minibatch_size
    c = m.config
    rows = [
        ("parameters", f"{m.params / 1e6:,.1f}M policy ({c.preset}, vocab {vocab:,} from {vocab_src})"
                       + (f" + the same again as the reference model (kl_coef {r.kl_coef})" if r.kl_coef else
                          "; no reference model (kl_coef 0)")),
        ("GPUs", f"{world} ({world_src})"),
        ("prompts", f"{r.train_source}: {f'{n_prompts:,}' if n_prompts else 'an unknown number of'} questions "
                    f"(rl.train_problems {r.train_problems}: "
                    f"{'all' if not r.train_problems else 'the first ' + str(r.train_problems)}), "
                    f"{prompt:,.0f} tokens each on average, the longest {longest:,} ({prompt_src})"),
        # (the passes are unknown where the source cannot be read here and rl.train_problems 0 means all of it)
        ("steps", f"{r.steps:,} rollouts x {r.prompts_per_step} prompts = "
                  f"{f'{r.steps * r.prompts_per_step / n_prompts:.2f}' if n_prompts else 'an unknown number of'} "
                  f"passes over the prompts; {opt_steps:,} optimizer steps (mini-batch {r.minibatch_size}, "
                  f"{r.epochs} epoch)"),
        ("global batch", f"{rollout} sequences per rollout ({r.prompts_per_step} x {r.samples_per_prompt} samples), "
                         f"{r.minibatch_size} per optimizer step, {micro} per forward/backward"),
        ("tokens per step", f"up to {tokens_step:,.0f} ({rollout} x ({prompt:,.0f} prompt + {r.max_new_tokens} new); "
                            f"responses that stop at EOS are shorter)"),
        ("tokens", f"up to {tokens_step * r.steps / 1e9:,.2f}B generated and trained on"),
        ("checkpoint", f"{_gb(12 * m.params)} each (fp32 weights + Adam moments), every {r.ckpt_every} steps"),
        ("evaluation", f"{', '.join(cfg.eval.datasets)} every {r.eval_every} steps: greedy"
                       + (f" + {cfg.eval.n_samples} samples per problem" if cfg.eval.n_samples else " only")
                       + f", up to {cfg.eval.max_new_tokens} new tokens"),
        ("time", f"{_hours(flops, world):,.1f} hours on {world} H100s at {PLAN_MFU:.0%} MFU for "
                 f"{flops:.2e} FLOPs of training and rollouts (upper bound on tokens; generation is memory-bound "
                 f"and runs well below {PLAN_MFU:.0%} MFU, evaluation not included)"),
    ]
    return (f"plan: rl ({r.algo}) from {r.init or Path(cfg.out_dir) / 'pretrain' / 'model'}\n" + _rows(rows)
            + _memory_rows(mem, world)), mem


def _eval(cfg) -> tuple[str, memory.MemoryPlan]:
    e = cfg.eval
    world, world_src, vocab, vocab_src, m = _plan_model(cfg)
    longest, longest_src = eval_prompt_lengths(cfg)
    mem = memory.eval_memory(cfg, world, m.config, prompt_tokens=longest)
    rows = [
        ("model", f"{e.model or Path(cfg.out_dir) / 'pretrain' / 'model'}: {m.params / 1e6:,.1f}M parameters "
                  f"({m.config.preset}, vocab {vocab:,} from {vocab_src})"),
        ("GPUs", f"{world} ({world_src}); each evaluates its share of the problems"),
        ("datasets", f"{', '.join(e.datasets)}: " + (f"the first {e.n_problems:,}" if e.n_problems else "all")
                     + " problems each; the longest prompt " + f"{longest:,} tokens ({longest_src})"),
        ("generation", "greedy" + (f" + {e.n_samples} samples at temperature {e.temperature}, top-p {e.top_p}"
                                   if e.n_samples else " only") + f", up to {e.max_new_tokens} new tokens, "
                                                                  f"{e.sample_dtype}"),
    ]
    return f"plan: eval {m.config.preset}\n" + _rows(rows) + _memory_rows(mem, world), mem


def pretrain_plan(cfg) -> str:
    """The pretraining plan's text (_pretrain: with its memory plan)."""
    return _pretrain(cfg)[0]


def rl_plan(cfg) -> str:
    """The RL plan's text (_rl: with its memory plan)."""
    return _rl(cfg)[0]


def data_plan(cfg) -> str:
    """The sources, the tokenizer and which token caches are already there."""
    from .data import cache_folder, resolve_sources
    from .tokenizer import Tokenizer

    d = cfg.data
    sources = resolve_sources(d)
    cache_root = Path(d.cache_dir) if d.cache_dir else Path(cfg.out_dir) / "token_cache"
    rows = []
    tok = None
    if d.tokenizer:
        if Path(d.tokenizer).exists():
            tok = Tokenizer.load(d.tokenizer, what="data.tokenizer")
            rows.append(("tokenizer", f"{d.tokenizer}: {tok.vocab_size:,} tokens, EOS {tok.eos_token!r}"))
        else:
            rows.append(("tokenizer", f"{d.tokenizer}: MISSING (the build stops with an error until it is there)"))
    else:
        rows.append(("tokenizer", f"a {d.vocab_size:,}-token BPE trained on {d.tokenizer_docs:,} documents"))
    for s in sources:
        where = s.path if s.kind != "synthetic" else f"synthetic {s.format}, {s.n:,} problems"
        status = ("its token cache is keyed by the tokenizer trained in the build" if not d.tokenizer else
                  "its token cache is known once the tokenizer is there")
        if tok is not None:
            folder = cache_folder(s, d, tok.sha256(), cache_root)
            if (folder / "meta.json").exists():
                import json

                meta = json.loads((folder / "meta.json").read_text())
                status = f"cached in {folder}: {meta['documents']:,} documents, {meta['tokens']:,} tokens"
            else:
                status = f"to tokenize into {folder}"
        rows.append((f"source {s.name}", f"{s.kind} {where}, x{s.repeat}; {status}"))
    rows.append(("rows", f"{d.seq_len} tokens + 1; {d.val_fraction:.1%} of each source's documents held out"))
    return f"plan: data {d.mixture or 'the listed sources'} -> {Path(cfg.out_dir) / 'data'}\n" + _rows(rows)


# ----------------------------------------------------------------------------- wall time on this machine

MEASURE_FLOPS = 3e12  # the largest piece of work Stopwatch times (about 10 s on 2 cores); above it: not timed
MEASURE_SAMPLE = 256  # training prompts the estimate's mean prompt length is taken over


class Stopwatch:
    """Short in-memory timings of a freshly initialised model on this machine, for a sweep's dry run: an optimizer
    step and the sampler's decode step, each shape timed once (a few seconds for the quickstart model), nothing
    written. Work above MEASURE_FLOPS is not timed (None): a large model would take minutes here."""

    def __init__(self, device: str = "auto"):
        use_gpu = device in ("auto", "cuda") and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        threads = torch.get_num_threads()
        self.machine = torch.cuda.get_device_name() if use_gpu else f"cpu, {threads} thread{'s' * (threads != 1)}"
        self.timed: dict[tuple, float | None] = {}
        self.notes: list[str] = []  # one line per timing, what was timed and its result

    def _seconds(self, fn) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    def _model(self, model_cfg: ModelConfig) -> OLMo:
        torch.manual_seed(0)
        return OLMo(model_cfg).to(self.device)

    def train_step(self, model_cfg: ModelConfig, rows: int, seq_len: int, autocast: str) -> float | None:
        """Seconds of one optimizer step (forward, backward, AdamW, under `autocast`) on rows x seq_len random
        tokens: the second of two steps, the first paying the one-off allocations. model_cfg: resolved."""
        key = ("train", dataclasses.astuple(model_cfg), rows, seq_len, autocast)
        flops = model_numbers(model_cfg, model_cfg.vocab_size).flops_per_token(seq_len) * rows * seq_len
        if key not in self.timed:
            seconds = None if 2 * flops > MEASURE_FLOPS else self._train_step(model_cfg, rows, seq_len, autocast)
            self.timed[key] = seconds
            self.notes.append(f"{model_cfg.preset} optimizer step, {rows} x {seq_len} tokens, {autocast}: "
                              + (f"{seconds:.3g} s" if seconds is not None else f"not timed ({flops:.1e} FLOPs)"))
        return self.timed[key]

    def _train_step(self, model_cfg: ModelConfig, rows: int, seq_len: int, autocast: str) -> float:
        from .training import autocast_ctx, make_optimizer

        model = self._model(model_cfg).train()
        opt = make_optimizer(model, 1e-4, 0.1, (0.9, 0.95))
        batch = torch.randint(0, model_cfg.vocab_size, (rows, seq_len + 1), device=self.device)

        def step():
            with autocast_ctx(self.device, autocast):
                loss = -model(batch[:, :-1], batch[:, 1:]).mean()  # pretrain.lm_loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        return self._seconds(step)

    def decode_token(self, model_cfg: ModelConfig, prompts: int, samples: int, context: int,
                     dtype: str) -> float | None:
        """Seconds per token sampler.generate decodes for `prompts` distinct prompts x `samples` rows each, with
        about `context` tokens (prompt + generated) in the cache: (t(12 new tokens) - t(4)) / 8, so the prompts'
        prefill cancels out. model_cfg: resolved."""
        key = ("decode", dataclasses.astuple(model_cfg), prompts, samples, context, dtype)
        per_token = model_numbers(model_cfg, model_cfg.vocab_size).flops_per_token(context) / 3  # a forward
        flops = per_token * (3 * prompts * context + 18 * prompts * samples)  # three prefills, 18 new tokens
        if key not in self.timed:
            seconds = None if flops > MEASURE_FLOPS else self._decode_token(model_cfg, prompts, samples, context,
                                                                             dtype)
            self.timed[key] = seconds
            self.notes.append(f"{model_cfg.preset} decoding, {prompts} prompts x {samples} rows at {context} tokens "
                              f"of context, {dtype}: " + (f"{seconds * 1e3:.3g} ms/token" if seconds is not None
                                                          else f"not timed ({flops:.1e} FLOPs)"))
        return self.timed[key]

    def _decode_token(self, model_cfg: ModelConfig, prompts: int, samples: int, context: int, dtype: str) -> float:
        from .sampler import SampleConfig, generate

        model = self._model(model_cfg).eval()
        plen = max(1, min(context, model_cfg.max_seq_len) - 12)
        ids = torch.randint(0, model_cfg.vocab_size, (prompts, plen)).tolist()

        def run(new_tokens: int):
            # eos_id -1 never comes up: every row decodes all its tokens, as the bound assumes
            scfg = SampleConfig(max_new_tokens=new_tokens, temperature=0.7, n=samples, dtype=dtype, compile="off")
            return lambda: generate(model, ids, scfg, eos_id=-1, seed=0)

        run(2)()  # one-off allocations
        return max(0.0, self._seconds(run(12)) - self._seconds(run(4))) / 8


def rollout_calls(r, n_prompts: int) -> tuple[int, int, int]:
    """(sampler calls, prompts per call, samples per prompt) of one RL step's rollout (Expert Iteration: a round,
    prompts_per_round 0 = all n_prompts); calls hold at most 512 rows unless rl.rollout_chunk_prompts says
    otherwise (memory.sampler_calls, rollout.collect's rule, on a machine without a memory limit)."""
    if r.algo == "ei":
        prompts, n = r.ei.prompts_per_round or n_prompts, r.ei.samples_per_prompt
    else:
        prompts, n = r.prompts_per_step, r.samples_per_prompt
    calls = memory.sampler_calls(prompts, n, r.rollout_chunk_prompts, 1 << 62)  # no memory limit: a CPU
    return len(calls), max(b - a for a, b, _, _ in calls), n


def eval_calls(e, n_problems: int) -> tuple[int, int, int]:
    """(sampler calls, prompts per call, rows per prompt) of evaluating one dataset of n_problems: greedy calls of
    eval.batch_prompts prompts, or with n_samples one call for the greedy answer and the samples together, of
    8 x batch_prompts // (n_samples + 1) prompts (evaluate.greedy_and_samples). A last, smaller call is counted
    as a full one."""
    rows = e.n_samples + 1
    per_call = min(max(1, 8 * e.batch_prompts // rows) if e.n_samples else e.batch_prompts, max(1, n_problems))
    return -(-n_problems // per_call), per_call, rows


def rl_eval_steps(r) -> list[int]:
    """The steps after which RL evaluates: 0 (before the first), every eval_every, the last (EI: every round)."""
    total, every = (r.ei.rounds, 1) if r.algo == "ei" else (r.steps, r.eval_every)
    return [0] + [s for s in range(1, total + 1) if s % every == 0 or s == total]


def _count_problems(cfg, spec: str) -> int:
    """How many problems an evaluation dataset holds (eval.n_problems 0 = all of them); 0 where it cannot be read
    here (a hub dataset is not downloaded for an estimate)."""
    from .evaluate import load_dataset

    if spec.partition(":")[0] == "hub":
        return 0
    try:
        return len(load_dataset(spec, 0, cfg, cfg.eval.data_path))
    except (FileNotFoundError, ImportError, ValueError):
        return 0


@dataclass
class RLSeconds:
    """Upper bounds of one RL step's parts and of an evaluation, in seconds (None: not timed here)."""
    generation: float | None
    update: float | None
    evaluation: dict[int, float | None]  # problems per dataset -> seconds of one evaluation

    @property
    def step(self) -> float | None:
        return None if self.generation is None or self.update is None else self.generation + self.update


def rl_seconds(cfg, model_cfg: ModelConfig, watch: Stopwatch) -> RLSeconds:
    """Upper bounds of an RL step and of its evaluations from timings on this machine (Stopwatch):

        step        = generation + update                                   (Expert Iteration: a round)
        generation  = calls x rl.max_new_tokens x decode(rows per call)     rows: prompts x samples (rollout_calls)
        update      = rows x (prompt + max_new_tokens) x train(token) x passes
                      passes: rl.epochs (x2 for PPO's critic) + 1/3 for each forward-only pass (the rollout
                      policy's log-probs, the reference's with kl_coef > 0); EI: ei.epochs of SFT on every sample
        evaluation  = sum over eval.datasets of calls x eval.max_new_tokens x decode(rows per call)  (eval_calls)

    decode(rows) is a decoded token's seconds at that batch with the cache filled to prompt + max_new_tokens (the
    slowest, last token); train(token) an optimizer step's seconds at pretrain.batch_size x data.seq_len over its
    tokens. Every response is counted at its max_new_tokens: responses that stop at EOS make the real run shorter.
    Not counted: grading in the sandbox (RL's time/reward), eval.probe's forced passes. model_cfg: resolved."""
    r, e, p = cfg.rl, cfg.eval, cfg.pretrain
    n_prompts, prompt, _ = train_prompts(cfg, MEASURE_SAMPLE if r.algo != "ei" or r.ei.prompts_per_round else None)
    context = int(prompt) + r.max_new_tokens
    calls, per_call, n = rollout_calls(r, n_prompts)
    decode = watch.decode_token(model_cfg, per_call, n, context, r.sample_dtype)
    generation = None if decode is None else calls * r.max_new_tokens * decode
    step = watch.train_step(model_cfg, p.batch_size, cfg.data.seq_len, r.autocast)
    passes = r.ei.epochs if r.algo == "ei" else r.epochs * (2 if r.algo == "ppo" else 1) + (1 + (r.kl_coef > 0)) / 3
    update = None if step is None else \
        calls * per_call * n * context * step / (p.batch_size * cfg.data.seq_len) * passes

    def evaluation(n_problems: int) -> float | None:
        seconds = 0.0
        for spec in e.datasets:
            full = e.n_problems or _count_problems(cfg, spec)
            _, per_call, rows = eval_calls(e, full)  # a smaller evaluation's calls are counted as full ones
            tok = watch.decode_token(model_cfg, per_call, rows, int(prompt) + e.max_new_tokens, e.sample_dtype)
            if tok is None:
                return None
            seconds += -(-(n_problems or full) // per_call) * e.max_new_tokens * tok
        return seconds

    sizes = {e.n_problems, e.n_problems_between or e.n_problems}
    return RLSeconds(generation, update, {k: evaluation(k) for k in sizes})


# stage -> its plan: (the text --dry-run prints, the memory plan it refuses when it does not fit, or None)
PLANS = {"data": lambda cfg: (data_plan(cfg), None), "pretrain": _pretrain, "rl": _rl, "eval": _eval}

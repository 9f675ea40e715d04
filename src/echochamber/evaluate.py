"""Evaluation: greedy pass@1, sampled pass@k and maj@k, and which solution format each output is in.

    echochamber eval --config quickstart eval.model=runs/quickstart/rl/final eval.n_samples=64

For every dataset: one greedy generation per problem (pass@1, format shares, per-format accuracy) and, when
n_samples > 0, n samples at temperature 0.7 / top-p 0.95 (pass@k with the unbiased estimator, maj@k). Every
generation is saved with its label, answer and verdict.

With n_samples > 0 (and eval.interpreter off) the greedy answer and the n samples of a problem come from one
sampler call (SampleConfig.greedy_first: n + 1 rows per prompt, row 0 greedy), which prefills the prompt once and
decodes all its rows together (quickstart model, 100 problems, n_samples 4, bf16: 6.4-7.0 s -> 5.4-5.8 s). The
greedy answers are the argmax of the same logits, so they are a greedy-only evaluation's: token for token in fp32
(200 of 200 quickstart problems). In bf16 the larger, differently shaped batch can round a near-tie the other
way: 1 of those 200 problems changed at 320 new tokens (none of 100 at the quickstart's 256), while a greedy-only
evaluation's eval.batch_prompts (32 to 200) changed none. The samples are other draws from the same
distributions than before this change (the random stream is shared with the greedy rows), not the same draws.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch


from . import distributed as dist
from . import formats, memory
from . import probe as forced
from .checks import check
from .error_categories import categorise, has_computation, tabulate
from .format_metrics import within_format
from .formats import LABELS
from .interpreter import finished, generate_texts
from .model import OLMo
from .runio import atomic_write_json, write_jsonl
from .sampler import SampleConfig, sampling_model
from .tasks import Problem, load_problems
from .tokenizer import Tokenizer


@dataclass
class EvalConfig:
    datasets: list[str] = field(default_factory=lambda: ["synthetic:test"])  # SOURCE:SPLIT; e.g. gsm8k:test, math500:test, aime:2024
    n_problems: int = 200  # problems per dataset (0 = all; paper: all of GSM8K test, 1319)
    n_problems_between: int = 0  # RL's evaluations between the first and the last: only the first this many
    # problems of each dataset (a fixed subset, cheaper); 0 = n_problems every time
    max_new_tokens: int = 320  # (paper: 2048)
    n_samples: int = 0  # samples per problem for pass@k / maj@k (paper: 64); 0 = greedy only
    temperature: float = 0.7  # sampling temperature for pass@k (paper: 0.7)
    top_p: float = 0.95  # (paper: 0.95)
    batch_prompts: int = 64  # prompts per generate() call for greedy decoding (sampling packs 8x as many rows)
    sample_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # generation precision: bfloat16 (~2x faster on CPU) or float32
    sample_compile: Literal["auto", "on", "off"] = "auto"  # torch.compile the decode step (SampleConfig.compile):
    # auto = on a GPU; "on" pays on a CPU only in a process that decodes for long (a study's sweep), since the
    # compilation costs about a minute on 2 cores, once per process
    mode: str = "structure"  # format labelling: structure | paper (see formats.py)
    add_bos: bool = False  # prepend the tokenizer's BOS to each question (the authors' vLLM + Llama-2 eval: <s>)
    grade_sees_prompt: bool = False  # grade question + response (mode paper only), as the authors' in-loop
    # evaluation did (their RL reward function); their offline evaluation graded the response alone
    data_path: str | None = None  # folder holding gsm8k/, math500/, aime/ (default: ../shared/data if present)
    model: str | None = None  # model folder for `echochamber eval` (default OUT_DIR/pretrain/model)
    probe: bool = False  # also answer every problem forced into each format (probe.py; 3 more greedy passes),
    # stored as datasets[NAME]["probe"] in step_N.json: each format's forced accuracy over RL steps
    interpreter: bool = False  # run each <llm-code> block in the sandbox as it closes and write its real output
    # for the model to go on from (interpreter.py; OpenMathInstruct-1's own inference). Paper: off
    between_greedy_only: bool = False  # RL's evaluations between the first and the last decode greedily only: no
    # samples (pass@k) and no probes there, which keep them at the ends (before and after RL), where studies read them

    def __post_init__(self):
        check(self, at_least_1=("max_new_tokens", "batch_prompts"),
              at_least_0=("n_problems", "n_problems_between", "n_samples", "temperature"),
              unit_open=("top_p",))
        if not self.datasets:
            raise ValueError("datasets must name at least one SOURCE:SPLIT")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    pass@k = 1 - C(n - c, k) / C(n, k), computed as a product to stay exact for large n."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def same_answer(a: str, b: str) -> bool:
    """The grader's equality for votes: plain numbers as numbers within float rounding (formats.numbers_equal, so
    "29", "29.0", "1,000" = "1000" and code's 17.999999999999996 = 18), anything else as the same text."""
    x, y = formats.plain_number(a), formats.plain_number(b)
    if x is not None and y is not None:
        return formats.numbers_equal(x, y)
    return a.strip() == b.strip()


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """maj@k: the most common answer (votes pooled by same_answer; ties go to the one seen first) decides; no
    answer never wins."""
    clusters: list[list[int]] = []  # indices of answers that are one answer, in order of first appearance
    for i, a in enumerate(answers):
        if a is None:
            continue
        for c in clusters:
            if same_answer(answers[c[0]], a):
                c.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return False
    winner = max(clusters, key=len)  # max keeps the first of equal lengths
    return bool(correct[winner[0]])


def label_table(labels: list[str], correct: list[bool]) -> tuple[dict[str, float], dict[str, float | None]]:
    """(share, accuracy) of each label, from formats.format_stats."""
    table = formats.format_stats(labels, correct)
    return {lab: table[lab]["share"] for lab in LABELS}, {lab: table[lab]["accuracy"] for lab in LABELS}


def load_dataset(spec: str, n: int, cfg, data_path: str | None) -> list[Problem]:
    """'synthetic:test' -> the synthetic test split of this run's generator; 'gsm8k:test' -> local files."""
    source, _, split = spec.partition(":")
    kwargs = {}
    if source == "synthetic":
        kwargs["cfg"] = cfg.data.synthetic
    elif data_path:
        kwargs["data_dir"] = data_path
    return load_problems(source, split or "test", n=n or None, **kwargs)


def evaluate_dataset(model: OLMo, tok: Tokenizer, problems: list[Problem], ecfg: EvalConfig, *, seed: int,
                     out_dir: Path | None, name: str, pool=None, progress: bool = True,
                     ctx: dist.DistContext | None = None, free_bytes: float = math.inf) -> dict:
    """Greedy pass@1 and format shares (and, with n_samples, pass@k, maj@k and sampled shares) of one dataset.
    Under torchrun each process generates and grades its slice of the problems; the rows are gathered, every
    process computes the same result, and rank 0 writes the rows."""
    ctx = ctx or dist.DistContext(0, 0, 1, torch.device("cpu"))
    lo, hi = dist.share(len(problems), ctx)
    mine = problems[lo:hi]
    questions, golds = [p.question for p in mine], [p.answer for p in mine]
    greedy, samples = greedy_and_samples(model, tok, questions, ecfg, seed=seed, rank=ctx.rank, name=name,
                                         progress=progress, pool=pool, free_bytes=free_bytes)
    graded = formats.grade_many(greedy, golds, mode=ecfg.mode, pool=pool,
                                prompts=questions if ecfg.grade_sees_prompt else None)
    # tokens: the response re-encoded (no EOS), the length format_metrics averages per format.
    lengths = [len(ids) for ids in tok.encode_batch(greedy)]
    rows = [{"id": p.id, "question": p.question, **_verdict(p, r, g), "boxed": g.boxed, "tokens": n,
             "transcript": g.transcript} for p, r, g, n in zip(mine, greedy, graded, lengths)]
    rows = [r for part in dist.all_gather_objects(rows, ctx) for r in part]
    share, acc = label_table([r["label"] for r in rows], [r["correct"] for r in rows])
    result = {"n": len(rows), "pass@1": sum(r["correct"] for r in rows) / max(1, len(rows)), "format_share": share,
              "format_acc": acc, "within": within_format(rows)}
    categorised = has_computation(problems)  # the synthetic world: why each wrong answer is wrong, per format
    if categorised:
        result["error_categories"] = tabulate([r["error"] for r in rows], [r["label"] for r in rows])
    if out_dir and ctx.is_main:
        write_jsonl(out_dir / f"{name}_greedy.jsonl", rows)

    if samples is not None:
        n = ecfg.n_samples
        flat = [s for group in samples for s in group]
        sgraded = formats.grade_many(flat, [g for g in golds for _ in range(n)], mode=ecfg.mode, pool=pool,
                                     prompts=[q for q in questions for _ in range(n)] if ecfg.grade_sees_prompt
                                     else None)
        srows = [{"id": p.id, "sample": j, **_verdict(p, s, g)}
                 for i, (p, texts) in enumerate(zip(mine, samples)) for j, (s, g) in
                 enumerate(zip(texts, sgraded[i * n:(i + 1) * n]))]
        srows = [r for part in dist.all_gather_objects(srows, ctx) for r in part]
        per_problem = [srows[i * n:(i + 1) * n] for i in range(len(rows))]
        result["k"] = n
        result["pass@k"] = sum(pass_at_k(n, sum(r["correct"] for r in rs), n) for rs in per_problem) / len(rows)
        # pass@j for j = 1, 2, 4, ... up to n from the same n samples (unbiased for every j <= n): how the chance that
        # one of j tries is right grows with j, the curve the paper watches fall late in training at large j
        correct_counts = [sum(r["correct"] for r in rs) for rs in per_problem]
        result["pass@k_curve"] = {str(j): sum(pass_at_k(n, c, j) for c in correct_counts) / len(rows)
                                  for j in sorted({*(2 ** i for i in range(n.bit_length()) if 2 ** i <= n), n})}
        result["maj@k"] = sum(majority_correct([r["answer"] for r in rs], [r["correct"] for r in rs])
                              for rs in per_problem) / len(rows)
        result["sample_format_share"], result["sample_format_acc"] = label_table([r["label"] for r in srows],
                                                                                 [r["correct"] for r in srows])
        if categorised:
            result["sample_error_categories"] = tabulate([r["error"] for r in srows], [r["label"] for r in srows])
        if out_dir and ctx.is_main:
            write_jsonl(out_dir / f"{name}_samples.jsonl", srows)
    return result


def _verdict(problem: Problem, text: str, g: formats.Graded) -> dict:
    """A graded response's row fields, greedy or sampled: finished = the sampler stopped at EOS (not cut at
    max_new_tokens); error = its error_categories category (None when right or not synthetic)."""
    done = finished(text)
    return {"response": str(text), "label": g.label, "answer": g.answer, "gold": problem.answer,
            "correct": g.correct, "finished": done, "error": categorise(problem, text, g, done)}


def greedy_and_samples(model: OLMo, tok: Tokenizer, questions: list[str], ecfg: EvalConfig, *, seed: int,
                       rank: int, name: str, progress: bool, pool=None,
                       free_bytes: float = math.inf) -> tuple[list[str], list[list[str]] | None]:
    """(the greedy response to each question, its ecfg.n_samples samples or None when n_samples is 0). Greedy
    calls take batch_prompts prompts, sampled calls about 8 x batch_prompts rows, or when their KV cache does not
    fit in free_bytes (memory.MemoryPlan.sampling_room; inf on a CPU) the questions cut into the fewest equal
    calls that fit (memory.fitted_prompts)."""
    n = ecfg.n_samples
    greedy_cfg = SampleConfig(max_new_tokens=ecfg.max_new_tokens, temperature=0.0, n=1, dtype=ecfg.sample_dtype,
                              compile=ecfg.sample_compile)
    sample_cfg = dataclasses.replace(greedy_cfg, temperature=ecfg.temperature, top_p=ecfg.top_p, n=n)
    sample_seed = seed + 10_000 + rank
    if not math.isinf(free_bytes):  # a memory limit: what one prompt's rows hold, known once
        longest = max(map(len, tok.encode_batch(questions, add_bos=ecfg.add_bos)), default=0)
        base = getattr(model, "module", model)  # (a DistributedDataParallel wrapper samples with its module)
        elem = memory.cache_element_bytes(ecfg.sample_dtype, base.wte.weight.device.type)

    def per_call(want: int, rows: int) -> int:
        if math.isinf(free_bytes):  # no memory limit (a CPU): the configured calls
            return want
        return memory.fitted_prompts(base.config, ecfg.max_new_tokens, free_bytes, want, rows, longest, elem,
                                     len(questions))

    if n > 0 and not ecfg.interpreter:
        # One call per chunk for both: row 0 of a problem's n + 1 rows is greedy, all from one prefill. (With the
        # interpreter they stay two calls: its later rounds continue every row alone, n = 1, where greedy_first
        # could not tell the greedy row from the samples.)
        both = generate_texts(model, tok, questions, dataclasses.replace(sample_cfg, n=n + 1, greedy_first=True),
                              sample_seed, per_call(max(1, 8 * ecfg.batch_prompts // (n + 1)), n + 1),
                              f"eval {name} greedy + x{n}", progress, ecfg.add_bos)
        return [t[0] for t in both], [t[1:] for t in both]
    greedy = [t[0] for t in generate_texts(model, tok, questions, greedy_cfg, seed, per_call(ecfg.batch_prompts, 1),
                                           f"eval {name} greedy", progress, ecfg.add_bos, ecfg.interpreter, pool)]
    if n == 0:
        return greedy, None
    return greedy, generate_texts(model, tok, questions, sample_cfg, sample_seed,
                                  per_call(max(1, 8 * ecfg.batch_prompts // n), n), f"eval {name} x{n}", progress,
                                  ecfg.add_bos, ecfg.interpreter, pool)


def evaluate(model: OLMo, tok: Tokenizer, cfg, *, step: int, out_root: Path, pool=None,
             progress: bool = True, extra: dict | None = None, n_problems: int | None = None,
             ctx: dist.DistContext | None = None, free_bytes: float | None = None, greedy_only: bool = False) -> dict:
    """Evaluate on every dataset of cfg.eval (n_problems of each, default eval.n_problems); writes
    out_root/step_N.json (with `extra`'s keys, e.g. which weights were evaluated) and out_root/step_N/*.jsonl
    (rank 0 under torchrun, where the problems are split over the processes). free_bytes: what the sampler's
    calls may take (RL passes its plan's); None: `echochamber eval`'s plan (memory.eval_memory). greedy_only:
    greedy decoding alone (no samples, no probes), whatever cfg.eval asks."""
    ecfg: EvalConfig = dataclasses.replace(cfg.eval, n_samples=0, probe=False) if greedy_only else cfg.eval
    if free_bytes is None:
        base = getattr(model, "module", model)
        free_bytes = memory.eval_memory(cfg, ctx.world_size if ctx else 1, base.config,
                                        memory.device_budget(cfg, base.wte.weight.device)).sampling_room
    step_dir = out_root / f"step_{step:06d}"
    was_training = model.training
    model.eval()
    # One bf16 copy of the weights serves every sampler call of this evaluation (not one per call).
    sampler_model = sampling_model(model, SampleConfig(dtype=ecfg.sample_dtype))
    results, seconds, t0 = {}, {}, time.perf_counter()
    for spec in ecfg.datasets:
        name = spec.replace(":", "_")
        problems = load_dataset(spec, ecfg.n_problems if n_problems is None else n_problems, cfg, ecfg.data_path)
        t = time.perf_counter()
        results[name] = evaluate_dataset(sampler_model, tok, problems, ecfg, seed=cfg.seed, out_dir=step_dir,
                                         name=name, pool=pool, progress=progress, ctx=ctx, free_bytes=free_bytes)
        seconds[name] = time.perf_counter() - t
        if ecfg.probe:
            t = time.perf_counter()
            results[name]["probe"] = forced.probe_dataset(sampler_model, tok, problems, ecfg, seed=cfg.seed,
                                                          unforced=results[name], pool=pool, out_dir=step_dir,
                                                          prefix=f"{name}_", progress=progress, ctx=ctx)
            seconds[f"{name}/probe"] = time.perf_counter() - t
    model.train(was_training)
    # Wall times beside the results, not in them: where a study cell's time goes (bench/cell_time.py), while two
    # runs with equal results still have equal "datasets".
    summary = {"step": step, **(extra or {}), "datasets": results,
               "seconds": {**seconds, "total": time.perf_counter() - t0}}
    if ctx is None or ctx.is_main:
        atomic_write_json(out_root / f"step_{step:06d}.json", summary)
    return summary


def format_results(summary: dict) -> str:
    """A short table of one evaluation for the terminal."""
    lines = []
    for name, r in summary["datasets"].items():
        extra = f"  pass@{r['k']} {r['pass@k']:.3f}  maj@{r['k']} {r['maj@k']:.3f}" if "k" in r else ""
        share = " ".join(f"{lab} {v:.2f}" for lab, v in r["format_share"].items() if v > 0)
        lines.append(f"{name:>20}  n={r['n']:<5} pass@1 {r['pass@1']:.3f}{extra}  formats: {share}")
    return "\n".join(lines)


def load_policy(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[OLMo, Tokenizer]:
    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer.json").exists():
        raise FileNotFoundError(f"{model_dir}: no tokenizer.json here; expected a model folder written by "
                                f"pretrain or rl")
    return OLMo.load(model_dir, device=device), Tokenizer.load(model_dir / "tokenizer.json")

"""Forced-format probes: how well does a model solve each problem in each format when it is made to use it?

    echochamber probe runs/quickstart/pretrain/model --dataset synthetic:test --out probe/
    echochamber rl --config quickstart eval.probe=true        (every RL evaluation carries the probe)

The greedy evaluation shows the format a model PICKS and how accurate it is there; RL drives the pick towards
one format (the echo chamber). Whether RL also improves the losing formats, or only the winner, the paper could
not measure. Here every problem is answered once in each format, greedily:

    tinygsm   forced by its opening: prompt = question + "\\n\\n" + "def simple_math_problem() -> int:"
    omi1      forced by its opening: prompt = question + "\\n\\n" + OMI1_INTRO + "\\n<llm-code>"
    text      has no fixed opening: the code formats' openings are banned instead, the response may not begin
              with "\\n\\ndef", "\\n\\nLet", "\\n\\n<llm" or more whitespace (TEXT_BANNED; sampler.generate's
              banned_starts, with every token sequence that spells them, not only the tokenizer's own spelling)

A forced prompt is encoded as ONE string, as the training documents (question + "\\n\\n" + solution + EOS) are,
so the opening's tokens are the ones the model saw in pretraining. The graded response is "\\n\\n" + opening +
continuation, graded as the evaluation grades (formats.grade_many in eval.mode, eval.max_new_tokens, bf16).

probe.json "formats" holds, per format:
    forced_accuracy     share of the problems answered correctly when forced into the format
    forced_label_share  share of the forced responses the grader labels as that format (did the forcing work?)
    unforced_share      share of the plain greedy responses in the format (what the model picks by itself)
    unforced_accuracy   accuracy of those greedy responses (None when there are none)
"""

from __future__ import annotations

from pathlib import Path

from . import distributed as dist
from . import formats
from .formats import FORMATS, OMI1_INTRO
from .model import OLMo
from .runio import write_jsonl
from .interpreter import generate_texts
from .sampler import SampleConfig
from .tasks import Problem
from .tokenizer import Tokenizer

SEPARATOR = "\n\n"  # between question and solution in every training document
# The fixed openings, exactly as formats.render_tinygsm / render_omi1 write them.
OPENINGS = {"tinygsm": "def simple_math_problem() -> int:", "omi1": OMI1_INTRO + "\n<llm-code>"}
# What a text-forced response may not begin with (after SEPARATOR): the first word of each code format's
# opening, and a code block without its intro. Only the first word: banned "Let's solve", the quickstart model
# wrote "Let's this problem using Python code." and went on in omi1. Synthetic text solutions begin with a name,
# a pronoun or "Now", "The", "After"..., never so (OpenMathInstruct-2's "Let's denote ..." would lose its "Let").
# Nor with more whitespace or an apostrophe: after PPO, the quickstart model answered 131 of 200 text-forced
# probes "\n\n\nLet's solve this problem using Python code." (a third newline, then the omi1 opening) and 10
# "\n\n's solve this problem ..."; no synthetic text solution begins so.
TEXT_BANNED = ("def", "Let", "<llm", "\n", " ", "'")
MAX_SPELLINGS = 20_000  # token sequences per banned text; more means a prefix too long for this vocabulary


def spellings(tok: Tokenizer, text: str) -> list[list[int]]:
    """Every token sequence whose decoded text begins with `text`, cut at the token that reaches its end.

    Banning them all (sampler.generate's banned_starts) forbids the TEXT, however the model would spell it:
    after "\\n\\n" + "def" is masked, "\\n\\n" + "d" + "ef" is still a way to write it."""
    vocab = tok.decode_batch([[i] for i in range(tok.vocab_size)])
    special = {tok.eos_id, tok.bos_id}
    by_first: dict[str, list[tuple[int, str]]] = {}
    for i, s in enumerate(vocab):
        if s and i not in special:
            by_first.setdefault(s[0], []).append((i, s))
    out: list[list[int]] = []

    def walk(pos: int, head: list[int]) -> None:
        rest = text[pos:]
        for i, s in by_first.get(rest[0], []):
            if s.startswith(rest):
                out.append(head + [i])
            elif rest.startswith(s):
                walk(pos + len(s), head + [i])
            if len(out) > MAX_SPELLINGS:
                raise ValueError(f"probe: {text!r} has more than {MAX_SPELLINGS} spellings in this vocabulary; "
                                 f"ban a shorter prefix")

    walk(0, [])
    return out


def forced_prompts(questions: list[str], fmt: str) -> list[str]:
    """The prompt texts that force `fmt`: question + separator + opening (text: the bare question)."""
    if fmt not in FORMATS:
        raise ValueError(f"probe: unknown format {fmt!r}; expected one of {FORMATS}")
    return [q + SEPARATOR + OPENINGS[fmt] if fmt in OPENINGS else q for q in questions]


def banned_starts(tok: Tokenizer, fmt: str) -> list[list[int]]:
    """The token sequences a response forced into `fmt` may not begin with (none for a format with an opening)."""
    return [] if fmt in OPENINGS else [s for t in TEXT_BANNED for s in spellings(tok, SEPARATOR + t)]


def forced_responses(model: OLMo, tok: Tokenizer, questions: list[str], fmt: str, scfg: SampleConfig, *,
                     batch_prompts: int, add_bos: bool, seed: int, progress: bool = True) -> list[str]:
    """One response per question forced into `fmt`, in batches of batch_prompts; each response is what the
    model saw after the question ("\\n\\n" + opening + its continuation, or the text continuation)."""
    lead = SEPARATOR + OPENINGS[fmt] if fmt in OPENINGS else ""
    texts = generate_texts(model, tok, forced_prompts(questions, fmt), scfg, seed, batch_prompts, f"probe {fmt}",
                           progress, add_bos, banned_starts=banned_starts(tok, fmt))
    return [lead + t[0] for t in texts]


def probe_dataset(model: OLMo, tok: Tokenizer, problems: list[Problem], ecfg, *, seed: int, unforced: dict,
                  pool=None, out_dir: Path | None = None, prefix: str = "", progress: bool = True,
                  ctx: dist.DistContext | None = None) -> dict[str, dict]:
    """The probe.json "formats" object of one dataset: {format: {forced_accuracy, forced_label_share,
    unforced_share, unforced_accuracy}}.

    ecfg: the evaluation's settings (an evaluate.EvalConfig: max_new_tokens, batch_prompts, sample_dtype, mode,
    add_bos). unforced: evaluate.evaluate_dataset's greedy result on the same problems (its format_share and
    format_acc). Rows go to out_dir/{prefix}probe_{format}.jsonl. Under torchrun each process answers its slice
    of the problems and every process returns the same object (rank 0 writes the rows)."""
    ctx = ctx or dist.DistContext(0, 0, 1, model.wte.weight.device)
    lo, hi = dist.share(len(problems), ctx)
    mine = problems[lo:hi]
    scfg = SampleConfig(max_new_tokens=ecfg.max_new_tokens, temperature=0.0, n=1, dtype=ecfg.sample_dtype,
                        compile=ecfg.sample_compile)
    responses = {fmt: forced_responses(model, tok, [p.question for p in mine], fmt, scfg,
                                       batch_prompts=ecfg.batch_prompts, add_bos=ecfg.add_bos, seed=seed,
                                       progress=progress) for fmt in FORMATS}
    # One grade_many call for all formats: the sandbox runs every response's code in one batch.
    flat = [r for fmt in FORMATS for r in responses[fmt]]
    graded = iter(formats.grade_many(flat, [p.answer for p in mine] * len(FORMATS), mode=ecfg.mode, pool=pool))
    result = {}
    for fmt in FORMATS:
        rows = [{"id": p.id, "forced": fmt, "question": p.question, "response": r, "label": g.label,
                 "answer": g.answer, "gold": p.answer, "correct": g.correct}
                for p, r, g in zip(mine, responses[fmt], graded)]
        rows = [r for part in dist.all_gather_objects(rows, ctx) for r in part]
        if out_dir and ctx.is_main:
            write_jsonl(Path(out_dir) / f"{prefix}probe_{fmt}.jsonl", rows)
        n = max(1, len(rows))
        result[fmt] = {"forced_accuracy": sum(r["correct"] for r in rows) / n,
                       "forced_label_share": sum(r["label"] == fmt for r in rows) / n,
                       "unforced_share": unforced["format_share"][fmt],
                       "unforced_accuracy": unforced["format_acc"][fmt]}
    return result


def format_probe(result: dict[str, dict]) -> str:
    """A fixed-width table of probe_dataset's result for the terminal."""
    lines = [f"{'format':<8} {'forced acc':>10} {'forced label':>12} {'unforced share':>14} {'unforced acc':>12}"]
    for fmt, r in result.items():
        acc = "-" if r["unforced_accuracy"] is None else f"{r['unforced_accuracy']:.3f}"
        lines.append(f"{fmt:<8} {r['forced_accuracy']:>10.3f} {r['forced_label_share']:>12.3f} "
                     f"{r['unforced_share']:>14.3f} {acc:>12}")
    return "\n".join(lines)

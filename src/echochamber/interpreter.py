"""A real Python interpreter in the loop of generation, the way OpenMathInstruct-1 was written. Optional and off
by default, as in the paper: `rl.interpreter`, `eval.interpreter`, `echochamber sample --interpreter`.

    gens = generate_with_interpreter(model, tok, prompts, SampleConfig(max_new_tokens=320, n=8), seed=0)
    gens[i].tokens      # sample i % n of prompt i // n, with the interpreter's output blocks in it
    gens[i].written     # per token: True where the model wrote it, False for inserted interpreter output

NeMo-Skills generated OpenMathInstruct-1 with an interpreter: when the model closed a code block, the block ran
and its REAL output went into the text, and the model went on from there (formats.render_omi1):

    Let's solve this problem using Python code.\\n<llm-code>\\n{code}\\n</llm-code>\\n<llm-code-output>\\n{output}
    \\n</llm-code-output>\\n{the rest, e.g. "Thus Ava has \\\\boxed{527} dollars now."}

A model pretrained on such documents writes the output block itself (the grader tells invented transcripts from
genuine ones, formats.py). With the interpreter in the loop the output is real. Batched, in rounds:

  round 1   every row decodes in one sampler.generate call with "</llm-code>" as a stop sequence: a row that
            closes a block stops there, the others decode on to EOS or the length limit in the same call (no
            row waits for the interpreter, and none waits for them);
  run       the blocks closed in the round run in ONE SandboxPool.run_many call, each exactly as the grader
            runs the text so far (formats.code_job: the earlier blocks first, as one interpreter session), and
            what the cell shows (formats.interpreter_output: its prints, then its final value or its error) is
            appended as OUTPUT_BLOCK, "\\n<llm-code-output>\\n{output}\\n</llm-code-output>\\n";
  round k   those rows continue from prompt + response so far (prefilled again) in the next generate call,
until every row has stopped at EOS, at max_new_tokens (inserted tokens count: a response never exceeds it) or
at the context length. A row's blocks after its first MAX_CODE_BLOCKS are not run (it goes on by itself), and a
"</llm-code>" that closes no block (no "<llm-code>" before it in the response) runs nothing.

The stop sequence is the tokenizer's own spelling of "</llm-code>" (byte-level BPE cuts it into pieces: "</"
"llm" "-" "code" ">"). A model may spell it with other tokens, which the device does not see, so the host also
reads every round's decoded text and cuts it after its first "</llm-code>" (the rest of that round's tokens,
drawn as if there were no interpreter, are dropped).

Same as the plain sampler: round 1 is sampler.generate plus a stop sequence, so when no row of a call closes a
code block the results are the plain sampler's, token for token (same seed). When some rows stop at a block
earlier than they would have, the other rows of the call draw different random numbers (the batch shrinks at
other steps): at temperature > 0 they are other draws from the same distribution; greedy rows are unchanged.
Round k is seeded with seed + ROUND_SEED * k, so results are reproducible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import formats
from .model import OLMo
from .sampler import Generation, SampleConfig, generate
from .sandbox import CodeJob, SandboxPool, shared_pool
from .tokenizer import Tokenizer

CODE_CLOSE = "</llm-code>"
# What follows a closed block in OpenMathInstruct-1 (render_omi1 joins "</llm-code>", "<llm-code-output>", the
# output, "</llm-code-output>" and the next sentence with "\n").
OUTPUT_BLOCK = "\n<llm-code-output>\n{}\n</llm-code-output>\n"
MAX_CODE_BLOCKS = 8  # blocks run per response; later ones are left to the model (a loop of tiny blocks ends)
ROUND_SEED = 1_000_003  # round k of a call samples with seed + ROUND_SEED * k


@dataclass
class InterpretedGeneration(Generation):
    """A Generation whose tokens may hold interpreter output (`stop` says why its last round stopped)."""

    written: list[bool] = field(default_factory=list)  # per token: the model wrote it (False: interpreter output,
    # whose logprobs entries are 0.0 and mean nothing)
    code_blocks: int = 0  # code blocks the interpreter ran for it


def stop_sequences(tok: Tokenizer) -> list[list[int]]:
    """The token sequences that spell "</llm-code>" where the documents put it (after a newline), and alone:
    the tail of each context's encoding that decodes to exactly the tag."""
    seqs: list[list[int]] = []
    for context in ("\n", ""):
        ids = tok.encode(context + CODE_CLOSE)
        tail = next((ids[j:] for j in range(len(ids) - 1, -1, -1) if tok.decode(ids[j:]) == CODE_CLOSE), None)
        if tail and tail not in seqs:
            seqs.append(tail)
    if not seqs:
        raise ValueError(f"the tokenizer has no token sequence that decodes to exactly {CODE_CLOSE!r}")
    return seqs


def cut_after_close(tok: Tokenizer, tokens: list[int]) -> tuple[int, list[int]] | None:
    """Where a round's tokens close their first code block: (k, extra) such that tokens[:k] + extra decodes to
    the text up to and including the first "</llm-code>"; extra is empty unless the tag ends inside token k+1
    (">." is one token), then it re-spells the tag's end. None when the text has no "</llm-code>"."""
    text = tok.decode(tokens)
    at = text.find(CODE_CLOSE)
    if at < 0:
        return None
    end = at + len(CODE_CLOSE)
    if end == len(text):
        return len(tokens), []  # the usual case: the sampler stopped right after the tag
    lo, hi = 1, len(tokens)  # the shortest prefix whose text holds the tag (holding it is monotone in the length)
    while lo < hi:
        mid = (lo + hi) // 2
        if CODE_CLOSE in tok.decode(tokens[:mid]):
            hi = mid
        else:
            lo = mid + 1
    if tok.decode(tokens[:lo]).endswith(CODE_CLOSE):
        return lo, []
    before = tok.decode(tokens[:lo - 1])
    if text[:end].startswith(before):
        return lo - 1, tok.encode(text[len(before):end])
    return lo, []  # (a multi-byte character split at the boundary; keep the straddling token)


@dataclass
class _Row:
    """One response being built over rounds."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    written: list[bool] = field(default_factory=list)
    blocks: int = 0
    finished: bool = False
    stop: str = "length"
    goes_on: bool = False  # continues in the next round

    def add(self, tokens: list[int], logprobs: list[float] | None = None) -> None:
        """Append the model's tokens (with their logprobs) or, logprobs None, inserted ones."""
        self.tokens += tokens
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(tokens)
        self.written += [logprobs is not None] * len(tokens)


def _take_round(row: _Row, g: Generation, tok: Tokenizer, max_new_tokens: int, max_blocks: int) -> CodeJob | None:
    """Add one round's generation to its row; returns the code to run when the round closed a block."""
    room = max_new_tokens - len(row.tokens)
    toks, lps = g.tokens[:room], g.logprobs[:room]
    stop = g.stop if len(g.tokens) <= room else "length"
    body = toks[:-1] if stop == "eos" else toks
    cut = cut_after_close(tok, body)
    if cut is None:  # no block closed: the response ends here
        row.add(toks, lps)
        row.finished, row.stop, row.goes_on = stop == "eos", stop, False
        return None
    k, extra = cut
    row.add(body[:k], lps[:k])
    row.add(extra[:room - k])  # re-spelled end of the tag (rare): not the model's tokens
    row.stop, row.goes_on = "stop_sequence", True
    label, job = formats.code_job(tok.decode(row.tokens), "structure")
    if label != "omi1" or job is None or row.blocks >= max_blocks:
        return None  # no "<llm-code>" opened this block, or the row ran enough: it goes on without output
    row.blocks += 1
    return job


def generate_with_interpreter(model: OLMo, tok: Tokenizer, prompts: list[list[int]], cfg: SampleConfig, *,
                              seed: int, pool: SandboxPool | None = None, max_blocks: int = MAX_CODE_BLOCKS,
                              progress: bool = False) -> list[InterpretedGeneration]:
    """sampler.generate with the sandbox's real output written after every closed code block (module docstring);
    result i * n + j is sample j of prompt i. pool None = the process-wide sandbox pool (started on first need)."""
    if cfg.greedy_first:  # later rounds continue each row alone (n = 1), which would make every row greedy
        raise ValueError("SampleConfig.greedy_first with the interpreter in the loop is not supported")
    n, eos = cfg.n, tok.eos_id
    context = getattr(model, "module", model).config.max_seq_len
    stops = stop_sequences(tok)
    rows = [_Row(prompt=list(prompts[r // n])) for r in range(len(prompts) * n)]
    waiting = list(range(len(rows)))  # the rows the latest generate call continued, in its order
    gens = generate(model, prompts, cfg, eos_id=eos, seed=seed, progress=progress, stop_sequences=stops)
    k = 0
    while waiting:
        jobs = {r: job for r, g in zip(waiting, gens)
                if (job := _take_round(rows[r], g, tok, cfg.max_new_tokens, max_blocks)) is not None}
        if jobs:  # every block closed in this round, in one sandbox call
            results = (pool if pool is not None else shared_pool()).run_many(list(jobs.values()))
            for r, res in zip(jobs, results):
                block = tok.encode(OUTPUT_BLOCK.format(formats.interpreter_output(res)))
                rows[r].add(block[:cfg.max_new_tokens - len(rows[r].tokens)])
        for r in waiting:
            row = rows[r]
            if row.goes_on and (len(row.tokens) >= cfg.max_new_tokens or len(row.prompt) + len(row.tokens) >= context):
                row.goes_on, row.stop = False, "length"  # no room left to write after the output
        waiting = [r for r in waiting if rows[r].goes_on]
        if waiting:
            k += 1
            budget = max(cfg.max_new_tokens - len(rows[r].tokens) for r in waiting)
            gens = generate(model, [rows[r].prompt + rows[r].tokens for r in waiting],
                            dataclasses.replace(cfg, n=1, max_new_tokens=budget), eos_id=eos,
                            seed=seed + ROUND_SEED * k, progress=progress, stop_sequences=stops)
    return [InterpretedGeneration(r // n, row.tokens, row.logprobs, row.finished, row.stop, row.written, row.blocks)
            for r, row in enumerate(rows)]


def sample(model: OLMo, tok: Tokenizer, prompts: list[list[int]], cfg: SampleConfig, *, seed: int,
           interpreter: bool = False, pool: SandboxPool | None = None, banned_starts=()) -> list[Generation]:
    """sampler.generate, or with the interpreter in the loop (generate_with_interpreter): the one switch between
    the two for RL rollouts and evaluation. banned_starts (the probe's text forcing) is for the plain sampler."""
    if not interpreter:
        return generate(model, prompts, cfg, eos_id=tok.eos_id, seed=seed, banned_starts=banned_starts)
    if banned_starts:
        raise ValueError("banned_starts with the interpreter in the loop is not supported")
    return generate_with_interpreter(model, tok, prompts, cfg, seed=seed, pool=pool)


class Response(str):
    """A generated text that knows whether the sampler finished it (stopped at EOS) or cut it at max_new_tokens
    or the context length (sampler.Generation.finished)."""

    finished: bool

    def __new__(cls, text: str, finished: bool) -> "Response":
        out = super().__new__(cls, text)
        out.finished = finished
        return out

    def __reduce__(self):  # pickles (all_gather_objects) with its flag
        return Response, (str(self), self.finished)


def finished(text: str) -> bool:
    """Did the sampler finish this text? A Response says; a plain str (a text given, not generated) is whole."""
    return getattr(text, "finished", True)


def generate_texts(model: OLMo, tok: Tokenizer, questions: list[str], scfg: SampleConfig, seed: int,
                   batch_prompts: int, desc: str, progress: bool = True, add_bos: bool = False,
                   interpreter: bool = False, pool=None, banned_starts=()) -> list[list[Response]]:
    """Generate n responses per question (any prompt text) in chunks of batch_prompts; returns
    texts[question][sample], without the EOS, each a Response (a str with .finished). Chunk c is seeded with
    seed + c; `sample` does each chunk. The one text-level generation loop of evaluation, `sample` and the
    probe."""
    from tqdm import tqdm

    out: list[list[str]] = []
    chunks = range(0, len(questions), batch_prompts)
    for ci, start in enumerate(tqdm(chunks, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True)):
        prompts = tok.encode_batch(questions[start:start + batch_prompts], add_bos=add_bos)
        gens = sample(model, tok, prompts, scfg, seed=seed + ci, interpreter=interpreter, pool=pool,
                      banned_starts=banned_starts)
        texts = [Response(t, g.finished)
                 for t, g in zip(tok.decode_batch([g.tokens[:-1] if g.finished else g.tokens for g in gens]), gens)]
        out.extend(texts[i * scfg.n:(i + 1) * scfg.n] for i in range(len(prompts)))
    return out

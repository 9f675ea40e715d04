"""The three solution formats of the study: render them, recognise them in model output, grade them.

    tinygsm   a Python function `def simple_math_problem() -> int:` whose return value is the answer (TinyGSM)
    omi1      prose + `<llm-code>` block + `<llm-code-output>` + a sentence with \\boxed{} (OpenMathInstruct-1)
    text      natural-language chain of thought ending in \\boxed{answer} (OpenMathInstruct-2)
    unknown   output that commits to no answer at all

For every generated text `grade` gives its format label, the answer it commits to and whether that answer equals
the gold answer. For the code formats the answer is what the code COMPUTES (as in the paper); the text's own
\\boxed{} is recorded beside it (`Graded.boxed`). Model-written code runs only in the sandbox pool
(echochamber.sandbox), never in this process; `grade_many` sends a whole batch's code in one `run_many` call.

Two labelling modes:

paper      the paper's grader (openrlhf/utils/math_verifier.py of rosieyzh/openrlhf-pretrain), quirks included:
           1. the substring `<llm-code>` => omi1: run the FIRST `<llm-code>...</llm-code>` block (stripped), answer =
              str(eval(its last line)) afterwards, so a last line `print(x)` answers "None" (a wrong answer, not
              a failure); the model's own output and \\boxed{} are ignored.
           2. else (or when 1 gave nothing) the substring `def` => tinygsm: exec "def" + the text after the last
              "\\ndef" with separate empty globals and a locals dict, answer = str(simple_math_problem()). (A
              text that starts with "def" and has no "\\ndef" runs "defdef ...": fine in practice, since the
              model's response starts with the "\\n\\n" that separates question and solution.)
           3. else (or when execution gave nothing): math-verify's parse of the whole text (its last \\boxed{} or
              its last number). The label keeps the type of the last marker seen even when execution failed,
              so prose containing "define" counts as tinygsm. A text with no marker and nothing that math-verify
              can parse is `unknown`.
           During RL the paper's reward sees prompt + response (grade(prompt=...) prepends it in this mode only).
structure  (default) labels by what is really there:
           omi1     a closed `<llm-code>...</llm-code>` block. The blocks run as one interpreter session (earlier
                    blocks first, their errors and prints swallowed); the answer is the value of the last block's
                    final expression, or, when that is None or the block ends in a statement (e.g. `print(x)`),
                    the last line the block printed.
           tinygsm  a top-level `def name(...)` that parses as Python (checked with `ast`); the function
                    `simple_math_problem` (else the last function defined) is called and its return value is
                    the answer. Prose that says "define" is not code.
           text     a closed final \\boxed{...}. Its content is the answer only when every \\boxed{} in the text
                    agrees and it is at most MAX_BOXED_CHARS long: two different boxed answers or an
                    over-long box commit to nothing (answer None, scored 0).
           unknown  none of the above: no code, and no closed final box (no box at all, or a truncated
                    `\\boxed{12` at the end, which must not fall back to an earlier box).
           A code format whose code fails has answer None; it does not fall back to its \\boxed{}.

Equality (`answers_equal`): two plain numbers ("72", "72.00", "1,000", "\\$5", "-3", "1e-05") compare as
numbers without sympy (exact, or within float rounding 1e-9 relative when either is not an integer); anything
else goes through math-verify (`verify_latex`, gold and answer wrapped in $...$, so \\frac12 = 0.5). Batches run
math-verify in killable worker processes (echochamber.rewards.MathVerifyPool): its own timeout uses
signal.alarm, which fails off the main thread, and some inputs (\\boxed{9^{9^{9^9}}}) never finish.
The same equality serves both modes, so paper-mode correctness can differ from the paper's in math-verify's
corner cases (e.g. 17.999999999999996 vs 18 is equal here, not in math-verify).
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Callable, Literal, NamedTuple, Protocol, Sequence

from .sandbox import CodeJob, CodeResult, SandboxPool, shared_pool

LABELS = ("tinygsm", "omi1", "text", "unknown")  # "unknown": output with no answer at all
FORMATS = ("tinygsm", "omi1", "text")  # the renderable ones
Mode = Literal["paper", "structure"]
MODES = ("paper", "structure")

MAX_BOXED_CHARS = 100  # a longer \boxed{} content is not an answer (no essays, no "5 or 6 or 7 or ..." lists)
TINYGSM_ENTRY = "simple_math_problem"  # the function TinyGSM solutions define and the paper's grader calls
OMI1_INTRO = "Let's solve this problem using Python code."
MV_TIMEOUT_S = 2  # math-verify's own (signal.alarm) timeout per parse / comparison, when on the main thread


@dataclass(frozen=True)
class Graded:
    """The verdict on one generated text."""

    label: str  # one of LABELS
    answer: str | None  # the answer it commits to (for code: what the code computed); None = no answer
    boxed: str | None  # the text's own final \boxed{} content (recorded beside a code answer), None if none
    correct: bool  # answer equals the gold answer
    error: str | None = None  # why there is no answer: the code's error, "truncated \boxed{", ...


class Verifier(Protocol):
    """What grade_many needs for math-verify work; rewards.MathVerifyPool runs it in killable processes."""

    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]: ...  # verify_latex over (answer, gold)

    def extract_many(self, texts: Sequence[str]) -> list[str | None]: ...  # parse_answer over texts


# ----------------------------------------------------------------------------------------------------------
# Rendering: the three formats exactly as their datasets write them (used by the synthetic generator)


def render_tinygsm(question: str, body: list[str]) -> str:
    """TinyGSM: a function whose docstring restates the question and whose body computes `result`.

    body: unindented Python lines; the last one assigns `result` (e.g. ["eggs = 16", "result = eggs - 3"]).
    """
    if not body or not re.match(r"result\s*=[^=]", body[-1].strip()):
        raise ValueError(f"render_tinygsm: the body's last line must assign `result`, got {body[-1:]!r}")
    quote = "'''" if '"""' in question else '"""'
    lines = ["def simple_math_problem() -> int:", f"    {quote}"]
    lines += [f"    {q}".rstrip() for q in question.strip().split("\n")]
    lines += [f"    {quote}"] + [f"    {b}".rstrip() for b in body] + ["    return result"]
    return "\n".join(lines)


def render_omi1(code: list[str], output: str, answer: str, conclusion: str) -> str:
    """OpenMathInstruct-1: intro, code block, its interpreter output, and a conclusion with \\boxed{answer}.

    code: the block's lines (its last line is usually the expression whose value is `output`);
    output: what the interpreter showed (e.g. "29.0"); conclusion: a sentence containing "{answer}" once, where
    \\boxed{answer} goes (e.g. "Thus Martha has {answer} crayons in total.").
    """
    if conclusion.count("{answer}") != 1:
        raise ValueError(f"render_omi1: the conclusion must contain '{{answer}}' exactly once: {conclusion!r}")
    return "\n".join([OMI1_INTRO, "<llm-code>", *code, "</llm-code>", "<llm-code-output>", output,
                      "</llm-code-output>", conclusion.replace("{answer}", f"\\boxed{{{answer}}}")])


def render_text(sentences: list[str], answer: str) -> str:
    """OpenMathInstruct-2 (GSM8K style): one sentence per line, the answer in \\boxed{} in the last one.

    One sentence may contain "{answer}" (usually the last: "Thus, Eva needs to drive {answer} miles."), which
    becomes \\boxed{answer}; without it "Thus, the answer is \\boxed{answer}." is appended.
    """
    n = sum(s.count("{answer}") for s in sentences)
    if n > 1:
        raise ValueError(f"render_text: '{{answer}}' may appear once, found {n} times")
    if n == 0:
        sentences = [*sentences, "Thus, the answer is {answer}."]
    return "\n".join(s.replace("{answer}", f"\\boxed{{{answer}}}") for s in sentences)


# ----------------------------------------------------------------------------------------------------------
# Recognition: \boxed{}, <llm-code> blocks, Python functions


class Boxed(NamedTuple):
    answer: str | None  # the committed answer: the content of the final box, when unambiguous
    closed: bool  # the text ends its last \boxed{ with a matching brace (it is a text-format answer)
    error: str | None  # why answer is None: "no \boxed{}", "truncated \boxed{", "different \boxed{}...", ...


_BOXED = re.compile(r"\\boxed\s*\{")
NO_BOX, TRUNCATED_BOX = "no \\boxed{}", "truncated \\boxed{"


def final_boxed(text: str) -> Boxed:
    """The answer of the text's \\boxed{}es: the final one, closed, bounded, and agreeing with every other."""
    contents: list[str] = []
    end = 0
    for m in _BOXED.finditer(text):
        if m.start() < end:
            continue  # a box inside the previous box's content
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "\\":  # \{ and \} are literal braces (sets), not grouping
                i += 2
                continue
            depth += (c == "{") - (c == "}")
            i += 1
        if depth:  # never closed: the output was cut off inside its answer
            return Boxed(None, False, TRUNCATED_BOX)
        contents.append(" ".join(text[m.end():i - 1].split()))
        end = i
    if not contents:
        return Boxed(None, False, NO_BOX)
    last = contents[-1]
    if any(c != last for c in contents):
        return Boxed(None, True, f"different \\boxed{{}} answers: {' | '.join(dict.fromkeys(contents))}"[:200])
    if not last:
        return Boxed(None, True, "empty \\boxed{}")
    if len(last) > MAX_BOXED_CHARS:
        return Boxed(None, True, f"\\boxed{{}} longer than {MAX_BOXED_CHARS} characters")
    return Boxed(last, True, None)


_LLM_CODE = re.compile(r"<llm-code>(.*?)</llm-code>", re.DOTALL)
_TOP_DEF = re.compile(r"def[ \t]+[A-Za-z_]\w*[ \t]*\(")  # at the start of a line: a top-level function
_TOP_IMPORT = re.compile(r"(?:import|from)[ \t]+[A-Za-z_]")
_NEWLINE = re.compile(r"\r\n|\r|\n")  # what `ast` counts as line ends
# What ast.parse raises on bad input: SyntaxError; ValueError for NUL bytes and lone surrogates; MemoryError
# (parser stack overflow) and RecursionError for absurdly nested expressions.
_PARSE_ERRORS = (SyntaxError, ValueError, MemoryError, RecursionError)


def python_function(text: str) -> tuple[str, str] | None:
    """The Python program in a text that defines a top-level function, and the function to call; or None.

    The program starts at the first line `def name(` (with any import lines right above it) and runs to the
    longest stretch that parses, so prose or a truncated statement after the code is dropped. The entry is
    `simple_math_problem` when defined, else the last top-level function.
    """
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _TOP_DEF.match(line)]
    if not starts:
        return None
    first = starts[0]
    while first > 0 and _TOP_IMPORT.match(lines[first - 1]):
        first -= 1
    end = len(lines)
    while end > first:
        src = "\n".join(lines[first:end])
        try:
            tree = ast.parse(src)
        except _PARSE_ERRORS as e:
            # Retry with the text before the line the parser stopped at (and at least one line less).
            stop = getattr(e, "lineno", None) or (end - first)
            end = min(end - 1, first + max(stop - 1, 0))
            continue
        funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        if not funcs:
            return None
        return src, TINYGSM_ENTRY if TINYGSM_ENTRY in funcs else funcs[-1]
    return None


def _split_last_expression(src: str) -> tuple[str, str | None]:
    """Split code into (statements, final expression) the way an interpreter cell shows its last value.

    Returns (src, None) when the code does not parse or does not end in an expression statement.
    """
    try:
        tree = ast.parse(src)
    except _PARSE_ERRORS:
        return src, None  # run as is: the sandbox reports the error
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return src, None
    last = tree.body[-1]
    starts = [0] + [m.end() for m in _NEWLINE.finditer(src)]
    line_start = starts[last.lineno - 1]
    line = src[line_start:starts[last.lineno] if last.lineno < len(starts) else len(src)]
    head = src[:line_start] + line.encode()[:last.col_offset].decode()  # col_offset counts UTF-8 bytes
    # Newlines around it: the expression may span lines and end in a comment.
    return head, "(\n" + ast.get_source_segment(src, last) + "\n)"


def _session_prelude(blocks: list[str]) -> str:
    """Code that runs earlier <llm-code> blocks first, as the interpreter session of OMI1 did: their errors are
    swallowed (the model saw them and went on) and their prints hidden (the answer is the last block's)."""
    return ("import contextlib as _ec_contextlib, io as _ec_io\n"
            f"for _ec_block in {blocks!r}:\n"
            "    try:\n"
            "        with _ec_contextlib.redirect_stdout(_ec_io.StringIO()):\n"
            "            exec(_ec_block)\n"
            "    except BaseException:\n"
            "        pass\n")


@dataclass(frozen=True)
class _Attempt:
    """One code execution a grader tries; `job` is None when the marker was seen but nothing can run."""

    label: str  # "omi1" | "tinygsm"
    job: CodeJob | None


def _paper_attempts(text: str) -> list[_Attempt]:
    """The paper's grader, in its order: <llm-code> first, then `def`; each marker sets the label."""
    attempts = []
    if "<llm-code>" in text:
        job = None
        if m := _LLM_CODE.search(text):
            code = m.group(1).strip()
            last = code.split("\n")[-1]
            # exec in a fresh dict, then str(eval(last line)) in it, exactly as the paper (a statement -> error).
            job = CodeJob(f"_ec_g = {{}}\nexec({code!r}, _ec_g)\n", f"str(eval({last!r}, _ec_g))")
        attempts.append(_Attempt("omi1", job))
    if "def" in text:
        code = "def" + text.split("\ndef")[-1]
        # exec(code, {}, locals) then str(locals["simple_math_problem"]()), exactly as the paper (its separate
        # globals and locals included: a top-level helper is invisible inside the function).
        attempts.append(_Attempt("tinygsm", CodeJob(f"_ec_ns = {{}}\nexec({code!r}, {{}}, _ec_ns)\n",
                                                    f"str(_ec_ns[{TINYGSM_ENTRY!r}]())")))
    return attempts


def _structure_attempts(text: str) -> list[_Attempt]:
    """At most one attempt: the real code block or function the text contains (omi1 before tinygsm)."""
    blocks = _LLM_CODE.findall(text)
    if blocks:
        *earlier, last = [b.strip("\n") for b in blocks]
        head, expr = _split_last_expression(last)
        prelude = _session_prelude(earlier) if earlier else ""
        # expr None: the block ends in a statement; its printed output is the answer.
        return [_Attempt("omi1", CodeJob(prelude + head, expr or "None"))]
    if found := python_function(text):
        program, entry = found
        return [_Attempt("tinygsm", CodeJob(program, f"{entry}()"))]
    return []


def _attempts(text: str, mode: Mode) -> list[_Attempt]:
    if mode == "paper":
        return _paper_attempts(text)
    if mode == "structure":
        return _structure_attempts(text)
    raise ValueError(f"unknown grading mode {mode!r}; expected one of {MODES}")


def code_job(response: str, mode: Mode = "structure", prompt: str = "") -> tuple[str, CodeJob | None]:
    """(label guess, the first code job to run) for one response; ("text", None) when it has no code marker.

    In paper mode a text with both markers gets a second job if the first gives nothing (grade_many runs both).
    """
    text = prompt + response if mode == "paper" else response
    attempts = _attempts(text, mode)
    return (attempts[0].label, attempts[0].job) if attempts else ("text", None)


def _code_answer(res: CodeResult | None, mode: Mode, label: str) -> tuple[str | None, str | None]:
    """(answer, error) from a snippet's result."""
    if res is None:
        return None, "no closed <llm-code> block"
    if not res.ok:
        return None, res.error or "failed"
    if res.value is not None:
        return (repr(res.value) if isinstance(res.value, float) else str(res.value)), None
    if mode == "structure" and label == "omi1":
        printed = [line.strip() for line in res.stdout.splitlines() if line.strip()]
        if printed:
            return printed[-1], None
        return None, "the code neither printed nor ended in a value"
    return None, "the code returned None"


# ----------------------------------------------------------------------------------------------------------
# Equality


_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.\d*)?(?:[eE][-+]?\d{1,3})?")


def plain_number(s: str) -> Fraction | None:
    """The exact value of a plain number written as people and Python write them, else None.

    "72", "72.0", "-3", "1,000", "1{,}000", "\\$5", "$5", ".5", "1e-05" are plain; "\\frac12", "5%", "x=5" are not.
    """
    s = s.strip().replace("{,}", ",").replace("\\,", "").replace("\\!", "")
    if s.startswith("\\$"):
        s = s[2:]
    s = s.strip("$ ")
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(Decimal(s.replace(",", "")))
    except (InvalidOperation, ValueError):
        return None


def numbers_equal(a: Fraction, b: Fraction) -> bool:
    """Exact for integers; otherwise equal up to float rounding (|a - b| <= 1e-9 max(|a|, |b|)), so that code's
    17.999999999999996 and 0.1 + 0.2 match 18 and 0.3, while 1000000 and 1000001 stay different."""
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False
    return abs(a - b) <= Fraction(1, 10**9) * max(abs(a), abs(b))


def _numeric_verdict(answer: str, gold: str) -> bool | None:
    """True/False when numbers settle it (no sympy needed); None when math-verify must decide."""
    g = plain_number(gold)
    if g is None:
        return None
    a = plain_number(answer)
    if a is not None:
        return numbers_equal(a, g)
    if not re.search(r"\d", answer):
        return False  # "None", "True", prose: no number can equal a numeric gold
    return None


def _strip_dollars(s: str) -> str:
    """Drop raw $ delimiters around an answer (\\$ stays), so wrapping it in $...$ gives one math span."""
    s = s.strip()
    while s.startswith("$"):
        s = s[1:]
    while s.endswith("$") and not s.endswith("\\$"):
        s = s[:-1]
    return s.strip()


def _alarm_timeout() -> int | None:
    """math-verify's own timeout works only on the main thread (signal.alarm); elsewhere it must be off."""
    return MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def verify_latex(answer: str, gold: str) -> bool:
    """math-verify: does `answer` (LaTeX or plain, e.g. a \\boxed{} content or a code value) equal `gold`?

    Both are wrapped in $...$ (math-verify then parses 3\\sqrt2 and \\sqrt{18} alike). Runs sympy: call it in
    killable worker processes (rewards.MathVerifyPool) on anything a model wrote.
    """
    from math_verify import parse, verify

    t = _alarm_timeout()
    g = parse(f"${_strip_dollars(gold)}$", parsing_timeout=t)
    a = parse(f"${_strip_dollars(answer)}$", parsing_timeout=t)
    return bool(g and a and verify(g, a, timeout_seconds=t))


def parse_answer(text: str) -> str | None:
    """The paper's text answer: math-verify's parse of the whole text (its last \\boxed{} or number), as a string."""
    from math_verify import parse

    found = parse(text, parsing_timeout=_alarm_timeout())
    if not found:
        return None
    strings = [p for p in found if isinstance(p, str)]
    return strings[-1] if strings else str(found[0])


def answers_equal(answer: str | None, gold: str | None,
                  latex_verifier: Callable[[str, str], bool] | None = None) -> bool:
    """Is `answer` the gold answer? Plain numbers compare as numbers; the rest through `latex_verifier`
    (default: verify_latex in this process, e.g. rewards.MathVerifyPool.verify for a killable one)."""
    if answer is None or gold is None:
        return False
    verdict = _numeric_verdict(answer, gold)
    if verdict is not None:
        return verdict
    return (latex_verifier or verify_latex)(answer, gold)


# ----------------------------------------------------------------------------------------------------------
# Grading


def format_stats(labels: Sequence[str], correct: Sequence[bool]) -> dict[str, dict]:
    """The paper's per-step view of a batch of verdicts: for every label in LABELS and for "all",
    {"n", "correct", "share" (of all responses), "accuracy" (within the label; None when it has no response)}."""
    total = len(labels)

    def row(flags: list[bool]) -> dict:
        k = sum(flags)
        return {"n": len(flags), "correct": k, "share": len(flags) / total if total else 0.0,
                "accuracy": k / len(flags) if flags else None}

    out = {lab: row([bool(c) for la, c in zip(labels, correct) if la == lab]) for lab in LABELS}
    out["all"] = row([bool(c) for c in correct])
    return out




def grade(response: str, gold: str | None, *, mode: Mode = "structure", pool: SandboxPool | None = None,
          prompt: str = "", verifier: Verifier | None = None) -> Graded:
    """Grade one response (see grade_many)."""
    return grade_many([response], [gold], mode=mode, pool=pool, prompts=[prompt], verifier=verifier)[0]


def grade_many(responses: Sequence[str], golds: Sequence[str | None], *, mode: Mode = "structure",
               pool: SandboxPool | None = None, prompts: Sequence[str] | None = None,
               verifier: Verifier | None = None) -> list[Graded]:
    """Label, extract and check a batch of responses.

    All code runs in ONE `pool.run_many` call (pool None = the process-wide sandbox pool, started only when
    some response has code); all math-verify work goes to `verifier` in batches (None = the process-wide
    killable rewards.MathVerifyPool, started only when needed). `prompts` are prepended in paper mode only
    (the paper's RL reward sees prompt + response; its evaluation the response alone).
    """
    n = len(responses)
    if len(golds) != n or (prompts is not None and len(prompts) != n):
        raise ValueError(f"grade_many: {n} responses but {len(golds)} golds"
                         + ("" if prompts is None else f" and {len(prompts)} prompts"))
    if mode not in MODES:
        raise ValueError(f"unknown grading mode {mode!r}; expected one of {MODES}")
    texts = [(prompts[i] if prompts is not None else "") + responses[i] if mode == "paper" else responses[i]
             for i in range(n)]
    attempts = [_attempts(t, mode) for t in texts]
    jobs = [a.job for atts in attempts for a in atts if a.job is not None]
    results = iter((pool if pool is not None else shared_pool()).run_many(jobs) if jobs else [])

    labels: list[str] = []
    answers: list[str | None] = []
    errors: list[str | None] = []
    boxes = [final_boxed(r) for r in responses]
    to_parse: list[int] = []  # paper mode: responses whose answer comes from math-verify's parse of the text
    for i, atts in enumerate(attempts):
        # Every job of a response ran (paper mode may have two): take each result in order, first answer wins.
        outcomes = [_code_answer(next(results) if a.job is not None else None, mode, a.label) for a in atts]
        label, answer, error = "text", None, None
        for a, (ans, err) in zip(atts, outcomes):
            label, error = a.label, err
            if ans is not None:
                answer, error = ans, None
                break
        if not atts:  # no code: the text's own answer
            if mode == "structure":
                label = "text" if boxes[i].closed else "unknown"
                answer, error = boxes[i].answer, boxes[i].error
            else:
                to_parse.append(i)
        elif answer is None and mode == "paper":
            to_parse.append(i)  # the paper falls back to the text; the label keeps the marker's type
        labels.append(label)
        answers.append(answer)
        errors.append(error)

    get_verifier = _lazy(verifier)
    if to_parse:
        for i, parsed in zip(to_parse, get_verifier().extract_many([texts[i] for i in to_parse])):
            answers[i] = parsed
            errors[i] = None if parsed is not None else (errors[i] or "math-verify found no answer")
            if parsed is None and labels[i] == "text":
                labels[i] = "unknown"

    correct = [False] * n
    pending: list[int] = []  # answers only math-verify can judge
    for i in range(n):
        if answers[i] is None or golds[i] is None:
            continue
        verdict = _numeric_verdict(answers[i], golds[i])
        if verdict is None:
            pending.append(i)
        else:
            correct[i] = verdict
    if pending:
        for i, ok in zip(pending, get_verifier().verify_many([(answers[i], golds[i]) for i in pending])):
            correct[i] = bool(ok)
    return [Graded(labels[i], answers[i], boxes[i].answer, correct[i], errors[i]) for i in range(n)]


def _lazy(verifier: Verifier | None) -> Callable[[], Verifier]:
    """The verifier to use, created on first need (the default pool costs worker processes)."""
    def get() -> Verifier:
        if verifier is not None:
            return verifier
        from .rewards import shared_verifier  # rewards builds on this module; import at use, not at load

        return shared_verifier()

    return get

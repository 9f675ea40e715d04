"""The three solution formats of the study: render them, recognise them in model output, grade them.

    tinygsm   a Python function `def simple_math_problem() -> int:` whose return value is the answer (TinyGSM)
    omi1      prose + `<llm-code>` block + `<llm-code-output>` + a sentence with \\boxed{} (OpenMathInstruct-1)
    text      natural-language chain of thought ending in \\boxed{answer} (OpenMathInstruct-2)
    unknown   output that commits to no answer at all

For every generated text `grade` gives its format label, the answer it commits to and whether that answer equals
the gold answer. For the code formats the answer is what the code COMPUTES (as in the paper), except for a
genuine interpreter transcript in structure mode (below); the text's own \\boxed{} is recorded beside it
(`Graded.boxed`). Model-written code runs only in the sandbox pool
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
                    blocks first, their errors and prints swallowed). What the code computes is the value of the
                    last block's final expression, or, when that is None or the block ends in a statement (e.g.
                    `print(x)`), the last line the block printed. Then the <llm-code-output> written after the
                    last block is compared with what the code really shows (`outputs_agree`: its prints, then
                    its final value or error; whitespace, quotes and float digits past 1e-6 do not matter):
                      genuine   they agree: the text was written with a real interpreter (OpenMathInstruct-1,
                                whose code often computes an intermediate value, prints a sentence, or prints
                                sympy notation, and whose prose then boxes the answer). The answer is the final
                                \\boxed{} (same rules as text), or what the code computes if there is no box.
                      invented  they disagree: the model made the output up. The answer is what the code
                                computes.
                    No written output block: the answer is what the code computes. The verdict and both outputs
                    are recorded (`Graded.transcript`, `.written_output`, `.real_output`).
           tinygsm  a top-level `def name(...)` that parses as Python (checked with `ast`); the function
                    `simple_math_problem` (else the last function defined) is called and its return value is
                    the answer. Prose that says "define" is not code.
           text     a closed final \\boxed{...}. Its content is the answer only when every \\boxed{} in the text
                    agrees and it is at most MAX_BOXED_CHARS long: two different boxed answers or an
                    over-long box commit to nothing (answer None, scored 0).
           unknown  none of the above: no code, and no closed final box (no box at all, or a truncated
                    `\\boxed{12` at the end, which must not fall back to an earlier box).
           A code format whose code fails has answer None; it does not fall back to its \\boxed{} (unless the
           text's written output shows that very error: a genuine omi1 transcript, answered by its box).

Equality (`answers_equal`): two plain numbers ("72", "72.00", "1,000", "\\$5", "-3", "1e-05") compare as
numbers without sympy (exact, or within float rounding 1e-9 relative when either is not an integer); anything
else goes through math-verify (`verify.verify_latex`, gold and answer wrapped in $...$, so \\frac12 = 0.5).
Structure mode also counts sympy's printed notation as its LaTeX form (`18 + 10*I` = 18+10i, `Interval(0, oo)`
= [0, \\infty); `verify.sympy_to_latex`, no eval) and does not send answers over MAX_VERIFIED_CHARS to
math-verify (they score 0). Batches run math-verify in killable worker processes
(verify.MathVerifyPool): its own timeout uses signal.alarm, which fails off the main thread, and some inputs
(\\boxed{9^{9^{9^9}}}) never finish. Paper mode leaves the sympy-notation step out, so its correctness differs
from the paper's only in math-verify's corner cases (e.g. 17.999999999999996 vs 18 is equal here, not in
math-verify).
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Callable, Literal, NamedTuple, Sequence

from .sandbox import CodeJob, CodeResult, SandboxPool, shared_pool
from .verify import Verifier, shared_verifier, verify_latex

LABELS = ("tinygsm", "omi1", "text", "unknown")  # "unknown": output with no answer at all
FORMATS = ("tinygsm", "omi1", "text")  # the renderable ones
Mode = Literal["paper", "structure"]
MODES = ("paper", "structure")

MAX_BOXED_CHARS = 100  # a longer \boxed{} content is not an answer (no essays, no "5 or 6 or 7 or ..." lists)
# Structure mode: a longer answer (a code's printed line of 4096 characters) is not sent to math-verify, whose
# parse of it can spend a whole deadline; it scores 0. Plain numbers of any length compare without it.
MAX_VERIFIED_CHARS = 400
TINYGSM_ENTRY = "simple_math_problem"  # the function TinyGSM solutions define and the paper's grader calls
OMI1_INTRO = "Let's solve this problem using Python code."
OUTPUT_RECORD_CHARS = 1000  # Graded.written_output / real_output keep this much (NeMo-Skills cut at 1000 too)


@dataclass(frozen=True)
class Graded:
    """The verdict on one generated text."""

    label: str  # one of LABELS
    answer: str | None  # the answer it commits to (for code: what the code computed); None = no answer
    boxed: str | None  # the text's own final \boxed{} content (recorded beside a code answer), None if none
    correct: bool  # answer equals the gold answer
    error: str | None = None  # why there is no answer: the code's error, "truncated \boxed{", ...
    # Structure mode, omi1 only (None elsewhere): is the interpreter output the text shows real?
    transcript: str | None = None  # "genuine" | "invented" | None (no written output after the last block)
    written_output: str | None = None  # the <llm-code-output> written after the last code block
    real_output: str | None = None  # what that code really shows when run: its prints, then its value or error
    # Code formats: what the code computes (the answer before a genuine transcript's \boxed{} replaces it);
    # None for text, or when the code failed, timed out or showed nothing (error_categories reads it)
    computed: str | None = None


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
        return _value_text(res.value), None
    if mode == "structure" and label == "omi1":
        printed = [line.strip() for line in res.stdout.splitlines() if line.strip()]
        if printed:
            return printed[-1], None
        return None, "the code neither printed nor ended in a value"
    return None, "the code returned None"


def _value_text(value: int | float | str) -> str:
    """A snippet's value as an interpreter shows it (repr for floats: 0.1 + 0.2 is 0.30000000000000004)."""
    return repr(value) if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------------------
# Code-interpreter transcripts: is the <llm-code-output> a text shows what its code really prints?
#
# OpenMathInstruct-1 solutions were written WITH an interpreter: the output block is real, and the code often
# computes only an intermediate value (a GCD, then prose factors the expression), prints a sentence around
# the value, or prints sympy notation for what the text boxes in LaTeX. The answer of such a GENUINE transcript
# is its final \boxed{}. A model that learned the format without an interpreter INVENTS the output block;
# then the answer is what its code computes. Which one a text is, running the code tells: compare.


def code_blocks(text: str) -> list[str]:
    """The contents of the text's closed <llm-code>...</llm-code> blocks, in order (an unclosed one is not code)."""
    return _LLM_CODE.findall(text)


def written_output(text: str) -> str | None:
    """The <llm-code-output> block right after the text's last closed <llm-code> block, or None."""
    last = None
    for last in _LLM_CODE.finditer(text):
        pass
    m = _WRITTEN_OUTPUT.match(text, last.end()) if last else None
    return m.group(1).strip() if m else None


_WRITTEN_OUTPUT = re.compile(r"\s*<llm-code-output>(.*?)</llm-code-output>", re.DOTALL)


def real_output(res: CodeResult) -> str:
    """What an interpreter cell shows for the snippet: what it printed, then its final value (unless None) or
    its error (as the last line of a traceback: "NameError: name 'x' is not defined")."""
    shown = res.stdout.strip()
    last = (res.error or "failed") if not res.ok else None if res.value is None else _value_text(res.value)
    return "\n".join(part for part in (shown, last) if part)


_OUTPUT_CUT = "<output cut>"  # NeMo-Skills' interpreter kept the first 1000 characters and appended this


def interpreter_output(res: CodeResult) -> str:
    """What an interpreter in the loop shows the model after a code block (interpreter.py): the real output,
    cut after OUTPUT_RECORD_CHARS characters with "<output cut>" appended, as NeMo-Skills' interpreter wrote
    OpenMathInstruct-1 (`outputs_agree` counts such an output as genuine)."""
    shown = real_output(res)
    return shown if len(shown) <= OUTPUT_RECORD_CHARS else shown[:OUTPUT_RECORD_CHARS] + _OUTPUT_CUT


_OUTPUT_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NUMPY_SCALAR = re.compile(r"np\.(?:float|int|uint|complex)\d*\(([^()]*)\)")  # numpy 2's repr in containers


def _squash(output: str) -> str:
    """An output without whitespace, surrounding quotes (a str value) or numpy 2 scalar reprs."""
    out = "".join(_NUMPY_SCALAR.sub(r"\1", output).split())
    while len(out) >= 2 and out[0] == out[-1] and out[0] in "'\"":
        out = out[1:-1]
    return out


def outputs_agree(written: str, res: CodeResult) -> bool:
    """Does the written output show what the code really shows? Whitespace and quotes around a string do not
    matter, numbers agree to 1e-6 relative (floats print differently across versions); failing code agrees
    with a written traceback that ends in the same error."""
    written = written.strip()
    cut = written.endswith(_OUTPUT_CUT)
    w, r = _squash(written[:-len(_OUTPUT_CUT)] if cut else written), _squash(real_output(res))
    if not res.ok:
        return bool(res.error) and _squash(res.error) in w
    if cut:
        return r.startswith(w)
    w_nums, r_nums = _OUTPUT_NUMBER.findall(w), _OUTPUT_NUMBER.findall(r)
    return (_OUTPUT_NUMBER.split(w) == _OUTPUT_NUMBER.split(r) and len(w_nums) == len(r_nums)
            and all(math.isclose(float(a), float(b), rel_tol=1e-6) for a, b in zip(w_nums, r_nums)))


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


def answers_equal(answer: str | None, gold: str | None,
                  latex_verifier: Callable[[str, str], bool] | None = None) -> bool:
    """Is `answer` the gold answer? Plain numbers compare as numbers; the rest through `latex_verifier`
    (default: verify_latex in this process, e.g. verify.MathVerifyPool.verify for a killable one)."""
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
    killable verify.MathVerifyPool, started only when needed). `prompts` are prepended in paper mode only
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
    computed: list[str | None] = []  # code formats: the code's own answer (Graded.computed)
    boxes = [final_boxed(r) for r in responses]
    transcripts: dict[int, tuple[str | None, str | None, str]] = {}  # structure omi1: (verdict, written, real)
    to_parse: list[int] = []  # paper mode: responses whose answer comes from math-verify's parse of the text
    for i, atts in enumerate(attempts):
        # Every job of a response ran (paper mode may have two): take each result in order, first answer wins.
        ran = [next(results) if a.job is not None else None for a in atts]
        label, answer, error = "text", None, None
        for a, res in zip(atts, ran):
            ans, err = _code_answer(res, mode, a.label)
            label, error = a.label, err
            if ans is not None:
                answer, error = ans, None
                break
        computed.append(answer if atts else None)
        if mode == "structure" and label == "omi1" and ran[0] is not None:
            written = written_output(texts[i])
            verdict = None if written is None else "genuine" if outputs_agree(written, ran[0]) else "invented"
            transcripts[i] = (verdict, written, real_output(ran[0]))
            if verdict == "genuine" and boxes[i].error != NO_BOX:
                answer, error = boxes[i].answer, boxes[i].error  # the text's own answer (None if ambiguous)
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
        if verdict is None and not (mode == "structure" and len(answers[i]) > MAX_VERIFIED_CHARS):
            pending.append(i)
        else:
            correct[i] = bool(verdict)
    if pending:
        # Structure mode: code prints sympy notation (18 + 10*I) for what golds write in LaTeX (18+10i).
        checked = get_verifier().verify_many([(answers[i], golds[i]) for i in pending],
                                             sympy_notation=mode == "structure")
        for i, ok in zip(pending, checked):
            correct[i] = bool(ok)

    def graded(i: int) -> Graded:
        verdict, written, real = transcripts.get(i, (None, None, None))
        cap = (lambda x: None if x is None else x[:OUTPUT_RECORD_CHARS])
        return Graded(labels[i], answers[i], boxes[i].answer, correct[i], errors[i], verdict, cap(written), cap(real),
                      computed[i])

    return [graded(i) for i in range(n)]


def _lazy(verifier: Verifier | None) -> Callable[[], Verifier]:
    """The verifier to use, created on first need (the default pool costs worker processes)."""
    return (lambda: verifier) if verifier is not None else shared_verifier

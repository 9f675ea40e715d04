"""Within-format metrics: how the model writes inside each solution format, per RL step.

The format shares say WHICH format the model uses; these say how it writes in it (what the paper inspected by
hand, e.g. "RL refines inside the format: consistent docstrings"). Each metric is a function of one response,
None when the response has nothing to measure; `within_format` averages them over a batch of rows
(rollouts/step_N.jsonl or eval/step_N/NAME_greedy.jsonl rows: dicts with question, response, label, tokens,
transcript), each over the responses that carry the metric's label:

    within/<label>/length           every label   mean response length in tokens (`tokens`: RL counts the
                                                  generated tokens, EOS included when the sample finished;
                                                  evaluation counts the response re-encoded, without EOS)
    within/tinygsm/docstring        tinygsm       share whose function has a non-empty docstring
    within/tinygsm/question_copied  tinygsm       share whose docstring contains the question verbatim
    within/tinygsm/n_variables      tinygsm       mean number of distinct variables the function assigns
    within/omi1/code_lines          omi1          mean lines of code over all <llm-code> blocks
    within/omi1/invented_output     omi1          share whose written <llm-code-output> is not what the code
                                                  really shows, among those that write one
    within/text/n_equations         text          mean number of written-out arithmetic equations

A mean is None when no response of that label has a value (no such response in the batch, or none measurable).
Exact definitions are in each function's docstring. Pure Python (ast, regex): nothing here runs model code; the
invented-output verdict is the grader's (formats.grade_many ran the code in the sandbox and recorded
`Graded.transcript`), never re-derived here, so rows without `transcript` (written before it was recorded)
count as unknown, not as genuine.
"""

from __future__ import annotations

import ast
import functools
import re
from typing import Callable, Iterable

from .formats import LABELS, code_blocks, python_function


def _squash(s: str) -> str:
    """Whitespace-normalised text: runs of whitespace become one space, none at the ends."""
    return " ".join(s.split())


@functools.lru_cache(maxsize=1024)  # three metrics read the same response's function: parse it once
def tinygsm_function(response: str) -> ast.FunctionDef | None:
    """The function a TinyGSM-style response defines (formats.python_function's program and entry:
    `simple_math_problem`, else the last top-level function), parsed; None when there is none. (Cached:
    do not modify the tree.)"""
    found = python_function(response)
    if found is None:
        return None
    program, entry = found
    return next(n for n in ast.parse(program).body if isinstance(n, ast.FunctionDef) and n.name == entry)


def docstring(response: str) -> str | None:
    """The docstring of the response's function: the string literal that is its first statement, as written
    (''' or \"\"\"); None when there is no function or it has no docstring."""
    fn = tinygsm_function(response)
    return None if fn is None else ast.get_docstring(fn, clean=False)


def has_docstring(response: str) -> bool | None:
    """Does the function have a docstring with some non-whitespace text? None when there is no function."""
    if tinygsm_function(response) is None:
        return None
    return bool((docstring(response) or "").strip())


def question_copied(question: str, response: str) -> bool | None:
    """Does the function's docstring contain the whole question verbatim? Both are whitespace-normalised
    (line breaks and indentation do not matter) and compared case-sensitively as a substring; no fuzzy
    matching, so one changed word or name is "not copied". False when the function has no docstring; None when
    there is no function or no question."""
    if tinygsm_function(response) is None or not question.strip():
        return None
    return _squash(question) in _squash(docstring(response) or "")


def n_variables(response: str) -> int | None:
    """How many distinct variable names the function assigns: every plain name stored to anywhere inside it
    (`x = ...`, `a, b = ...`, `x += ...`, `x: int = ...`, `(x := ...)`, for / with / comprehension targets);
    parameters, attributes (`self.x`) and subscripts (`d[k]`) are not variables. None when there is no
    function."""
    fn = tinygsm_function(response)
    if fn is None:
        return None
    return len({n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)})


def code_lines(response: str) -> int | None:
    """Lines of code in ALL the response's closed <llm-code> blocks together: lines that are neither blank
    nor only a `#` comment. None when the response has no closed block."""
    blocks = code_blocks(response)
    if not blocks:
        return None
    return sum(1 for b in blocks for line in b.split("\n") if line.strip() and not line.strip().startswith("#"))


def invented_output(transcript: str | None) -> bool | None:
    """Is the <llm-code-output> the response writes after its last code block invented? From the grader's
    verdict (Graded.transcript, structure mode): "invented" -> True, "genuine" -> False; None when there is no
    verdict (no written output, paper mode, or a row written before transcripts were recorded)."""
    return {"invented": True, "genuine": False}.get(transcript)  # type: ignore[arg-type]


# An arithmetic equation written out: operand (op operand)+ = result, on one line, e.g. "43 * 12 = 516",
# "1 + 112 + 111 = 224", "$120 \times \frac{1}{3} = 40$", "(5 + 3) * 2 = 16", "-4 + 9 = 5". Operands and the
# result are numbers (digits, optional thousands commas and decimals, an optional leading $ or \$ and trailing %)
# or \frac{n}{m} / \dfrac / \tfrac of numbers; an operand may have a minus sign and parentheses around it.
# Operators: + - * / x × ÷ · \times \cdot \div (x only with spaces around it); spaces and tabs between tokens.
# Not equations: "x = y", "a = 1" (no operator), "m \cdot n = 27000" (letters), "2 + 3" (no result), "5x9=45".
# A number glued on its left to a letter, digit, dot, ^, _ or { ("x^2 + 3 = 5") does not start one.
# Counted in one left-to-right pass over maximal chains "operand (op operand)*": a chain with an operator that is
# followed by "= result" is one equation. So "a + b = c = d" counts once and "1 + 2 = 3 + 4 = 7" twice. (One pass,
# not a regex search for the whole equation: a 4000-character "1 + 1 + ..." with no "=" would be searched
# from every number, quadratic time.)
_NUMBER = r"(?:\\?\$)?\d+(?:,\d{3})*(?:\.\d+)?%?"
_VALUE = rf"(?:{_NUMBER}|\\[dt]?frac\{{{_NUMBER}\}}\{{{_NUMBER}\}})"
_OPERAND = rf"\(*-?{_VALUE}\)*"
_OPERATOR = r"(?:[-+*/×÷·]|\\times|\\cdot|\\div|(?<=\s)x(?=\s))"
_CHAIN = re.compile(rf"(?<![\w.^_{{]){_OPERAND}(?P<ops>(?:[ \t]*{_OPERATOR}[ \t]*{_OPERAND})*)")
_RESULT = re.compile(rf"[ \t]*=[ \t]*-?{_VALUE}")


def equations(response: str) -> list[tuple[str, str]]:
    """The arithmetic equations the response writes out, in order, as (left side, result) texts: "24 - 5 = 19"
    -> ("24 - 5", "19") (exact rule above _CHAIN; error_categories checks their operands and arithmetic)."""
    out = []
    for m in _CHAIN.finditer(response):
        if m.group("ops") and (r := _RESULT.match(response, m.end())):
            out.append((m.group(0), r.group(0).strip().lstrip("=").strip()))
    return out


def n_equations(response: str) -> int:
    """How many arithmetic equations the response writes out (`a op b = c` style; exact rule above _CHAIN)."""
    return len(equations(response))


# label -> (metric name, value of one row); a row is a dict with question, response, label, tokens, transcript.
FORMAT_METRICS: dict[str, tuple[tuple[str, Callable[[dict], float | bool | None]], ...]] = {
    "tinygsm": (("docstring", lambda r: has_docstring(r["response"])),
                ("question_copied", lambda r: question_copied(r.get("question") or "", r["response"])),
                ("n_variables", lambda r: n_variables(r["response"]))),
    "omi1": (("code_lines", lambda r: code_lines(r["response"])),
             ("invented_output", lambda r: invented_output(r.get("transcript")))),
    "text": (("n_equations", lambda r: n_equations(r["response"])),),
}


def _tokens(row: dict) -> int | None:
    """The length metric of every label: the row's token count (None when the row has none)."""
    return row.get("tokens")


def _metrics(label: str) -> tuple[tuple[str, Callable[[dict], float | bool | None]], ...]:
    return (("length", _tokens), *FORMAT_METRICS.get(label, ()))


def within_keys(labels: Iterable[str] = LABELS) -> list[tuple[str, str, str]]:
    """(key, label, metric name) of every within-format metric of these labels, in the order within_format
    writes them: each label's length first, then its format's own metrics."""
    return [(f"within/{lab}/{name}", lab, name) for lab in labels for name, _ in _metrics(lab)]


def _mean(values: Iterable[float | bool | None]) -> float | None:
    """Mean of the values that are not None (bools as 0/1); None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def within_format(rows: list[dict]) -> dict[str, float | None]:
    """The within-format metrics of a batch of rows, flat (keys in the module docstring): each the mean over
    the rows whose `label` is the metric's format and whose value is not None, or None when there is none.
    Every key of every label in formats.LABELS is present (labels outside LABELS get a length key too)."""
    labels = list(dict.fromkeys([*LABELS, *(r["label"] for r in rows)]))
    return {f"within/{lab}/{name}": _mean(fn(r) for r in rows if r["label"] == lab)
            for lab in labels for name, fn in _metrics(lab)}

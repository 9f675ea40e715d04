"""Exact error categories: why a wrong answer to a synthetic problem is wrong, one category per answer.

The synthetic world knows each problem's computation (tasks/synthetic.py: the numbers the question states, in
order, and the steps `var = left op right`; `SyntheticProblem.to_problem()` carries them as
Problem.meta["givens"] and meta["computation"]). So a wrong answer can be put in one category exactly, from the
response, the grader's verdict (formats.Graded: the sandbox ran the code) and that computation. This replaces,
for the synthetic world, the paper's GPT-4.5 comparison of sample pairs. Problems of other sources (gsm8k, ...)
have no computation and get no category (None); neither does a correct answer.

The categories, tried in this order (the first that applies is the answer's category):

    truncated        the response was cut at max_new_tokens (or the context length) without finishing: the
                     sampler's own verdict (sampler.Generation.finished: it did not stop at EOS)
    code_crashed     tinygsm / omi1: the program failed in the sandbox: an error, a timeout, or nothing shown
                     (a function returning None, a block that neither prints nor ends in a value):
                     Graded.computed is None
    no_answer        the response finished but commits to no answer: label `unknown` (no code and no closed
                     \\boxed{}), or \\boxed{}es that disagree (formats.final_boxed), also after code that ran
    copy_error       a number copied wrong. Code: a number literal in the program (the function's body, every
                     <llm-code> block) that the question does not state, or a given's own name assigned another
                     number than the question states for it (`packs = 6` where the question says 4 packs).
                     Text: an equation operand that is neither a number the question states nor the result of
                     an earlier equation
    wrong_operation  the numbers are copied right, but the computation does not reach the gold: a step with a
                     different operation or operands, or a step left out. Code: neither what the code computes
                     (Graded.computed) nor the value of its last arithmetic assignment (below) is the gold.
                     Text: the equations redone with right arithmetic (each result replaced by the true value
                     of its left side, and every later use of that result by the corrected value) do not end in
                     the gold; a text with no equation at all is here too (it writes no computation)
    arithmetic_slip  text: the operations are right, but an equation "a op b = c" is written with c != a op b
                     (the model's own arithmetic); the slip then carries to the answer
    invented_output  omi1: the computation reaches the gold, but the <llm-code-output> the model wrote is not
                     what the code really shows (Graded.transcript "invented"), and what the code really shows
                     (the graded answer) is not the gold: the model wrote an output instead of reading one
    boxed_wrong      the computation reaches the gold (code: its last arithmetic assignment or what it computes;
                     text: its last equation), but the final answer is not the gold: a \\boxed{} that does not
                     follow a genuine output, a function that returns another variable
    other            a wrong answer of a label outside formats.LABELS; every label the graders give is covered
                     by the categories above, so on the grader's output it never occurs

Why this order. A cut response never reached its end, so what it did wrong up to the cut is not its verdict
(truncated first). Crashed code and a missing answer leave nothing to compare with the problem (then). Among
answers that were computed, the errors are ordered along the path from question to answer, and the first one
is the cause: the numbers (copy_error), then the operations on them (wrong_operation), then the arithmetic
(arithmetic_slip; redoing the equations with right arithmetic is what separates a wrong operation from a slip,
so both can be told apart even when one text has both), then how the computed value became the final answer
(invented_output, boxed_wrong). In the code formats the grader answers an invented transcript with what the
code computes, so an invented output alone makes an answer wrong only when the code computes the gold in its
last step but shows another value (`invented_output`); a wrong code computation with an invented output is
counted under its computation (copy_error / wrong_operation), which is what made the graded answer wrong.

The code's last arithmetic assignment: the assignments `name = expression` of the program's top-level
statements (the function body; every block in order), evaluated over exact fractions by a tiny evaluator of
numbers, names and + - * / // % ** (never Python's eval: this runs no model code); the value of the last one
whose expression has an operator. A program with an assignment that is not plain arithmetic (a call) or
another kind of statement (a loop, a branch, `x += 1`; expressions, return, import and pass are fine) has no
such value, and then only Graded.computed counts.

Text equations are format_metrics.equations' (the rule n_equations counts); their operands are numbers,
\\frac{n}{m}, $ amounts and percentages (as fractions of 1); parentheses that do not pair are dropped.

Ambiguity in text: an operand equal to an earlier written result is taken as that result (the latest), not as
a stated number of the same value.

`categorise` gives one answer's category, `tabulate` a batch's per label; evaluate.evaluate_dataset writes
both into step_N.json. Pure Python (ast, regex): the sandbox ran the code, its result is Graded.computed.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from typing import Iterable

from .format_metrics import _NUMBER, equations, tinygsm_function
from .formats import LABELS, Graded, code_blocks, numbers_equal, plain_number
from .tasks import Problem

CATEGORIES = ("truncated", "code_crashed", "no_answer", "copy_error", "wrong_operation", "arithmetic_slip",
              "invented_output", "boxed_wrong", "other")  # in precedence order
CODE_LABELS = ("tinygsm", "omi1")
MAX_BITS = 4096  # `arithmetic` gives up on a value larger than this (numerator or denominator)


def categorise(problem: Problem, response: str, graded: Graded, finished: bool) -> str | None:
    """The category (CATEGORIES, module docstring) of one graded response to `problem`; None when the answer is
    correct or the problem has no known computation (not synthetic). finished: the sampler stopped the response
    at EOS (sampler.Generation.finished)."""
    givens = problem.meta.get("givens")
    if graded.correct or givens is None or "computation" not in problem.meta:
        return None
    if not finished:
        return "truncated"
    label = graded.label
    if label not in LABELS:
        return "other"
    if label in CODE_LABELS and graded.computed is None:
        return "code_crashed"
    if label == "unknown" or graded.answer is None:
        return "no_answer"
    gold = plain_number(problem.answer)
    stated = {Fraction(value) for _, value in givens}
    if label == "text":
        return _text_category(response, stated, gold)
    statements = _program(response, label)
    if _copied_wrong(statements, dict(givens), stated):
        return "copy_error"
    computed = plain_number(graded.computed)
    last_step = _last_step_value(statements)
    if not any(_equal(v, gold) for v in (computed, last_step)):
        return "wrong_operation"
    if label == "omi1" and graded.transcript == "invented":
        return "invented_output"
    return "boxed_wrong"


def _equal(value: Fraction | None, gold: Fraction | None) -> bool:
    """The grader's equality of numbers (formats.numbers_equal: exact for integers, float rounding else)."""
    return value is not None and gold is not None and numbers_equal(value, gold)


def tabulate(categories: Iterable[str | None], labels: Iterable[str]) -> dict[str, dict]:
    """Per label (formats.LABELS, then "all"): {"wrong": categorised wrong answers, "counts": {category: n},
    "share": {category: n / wrong, None when wrong is 0}} over the answers that have a category."""
    pairs = [(c, lab) for c, lab in zip(categories, labels, strict=True) if c is not None]

    def row(cats: list[str]) -> dict:
        counts = {c: cats.count(c) for c in CATEGORIES}
        return {"wrong": len(cats), "counts": counts,
                "share": {c: (k / len(cats) if cats else None) for c, k in counts.items()}}

    table = {lab: row([c for c, la in pairs if la == lab]) for lab in LABELS}
    table["all"] = row([c for c, _ in pairs])
    return table


def has_computation(problems: Iterable[Problem]) -> bool:
    """Does any of these problems carry its computation (the synthetic world's)? Then a batch gets categories."""
    return any("computation" in p.meta for p in problems)


# -- code ----------------------------------------------------------------------------------------------------

def _program(response: str, label: str) -> list[ast.stmt]:
    """The top-level statements the code format runs: the entry function's body (format_metrics.tinygsm_function,
    formats.python_function's reading), or every <llm-code> block's, in order (formats.code_blocks; a block that
    does not parse adds nothing). Read only: the function's tree is cached."""
    if label == "tinygsm":
        fn = tinygsm_function(response)
        return [] if fn is None else fn.body
    statements: list[ast.stmt] = []
    for block in code_blocks(response):
        try:
            statements += ast.parse(block.strip("\n")).body
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
    return statements


def _is_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _copied_wrong(statements: list[ast.stmt], givens: dict[str, int], stated: set[Fraction]) -> bool:
    """A number literal the question does not state, or a given's name assigned another number."""
    for stmt in statements:
        for node in ast.walk(stmt):
            if _is_number(node) and Fraction(node.value) not in stated:
                return True
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id in givens and _is_number(stmt.value)
                and Fraction(stmt.value.value) != givens[stmt.targets[0].id]):
            return True
    return False


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: lambda a, b: a ** b if b.denominator == 1 and abs(b) <= 64 else _fail()}


def _fail():
    raise ValueError("not plain arithmetic")


def arithmetic(node: ast.AST, names: dict[str, Fraction]) -> Fraction:
    """The exact value of a plain arithmetic expression: numbers, names bound in `names`, unary -/+, and
    + - * / // % ** (small integer powers). Anything else (a call, an unknown name) raises ValueError, as does a
    division by zero. Evaluates a parsed tree; never runs code."""
    if _is_number(node):
        return Fraction(node.value)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        x = arithmetic(node.operand, names)
        return -x if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        try:
            value = _BINOPS[type(node.op)](arithmetic(node.left, names), arithmetic(node.right, names))
        except ZeroDivisionError:
            _fail()
        if max(abs(value.numerator), value.denominator).bit_length() > MAX_BITS:
            _fail()  # 9 ** 9 ** 9 ...: no answer of this world is that large, and its digits would take minutes
        return value
    _fail()


def _last_step_value(statements: list[ast.stmt]) -> Fraction | None:
    """The value of the program's last arithmetic assignment (module docstring); None when it has none or some
    statement assigns in another way (then the program is not plain arithmetic)."""
    names: dict[str, Fraction] = {}
    last = None
    for stmt in statements:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                names[stmt.targets[0].id] = value = arithmetic(stmt.value, names)
            except ValueError:
                return None
            if isinstance(stmt.value, ast.BinOp):
                last = value
        elif not isinstance(stmt, (ast.Expr, ast.Return, ast.Import, ast.ImportFrom, ast.Pass)):
            return None  # a loop, a branch, an augmented assignment: not the straight line this reads
    return last


# -- text ----------------------------------------------------------------------------------------------------

# One operand of an equation's side, as format_metrics' equation rule writes them: \frac{n}{m} or a number.
_OPERAND = re.compile(rf"\\[dt]?frac\{{({_NUMBER})\}}\{{({_NUMBER})\}}|({_NUMBER})")
_TIMES = re.compile(r"\\times|\\cdot|×|·|(?<=\s)x(?=\s)")
_DIVIDED = re.compile(r"\\div|÷")


def _number(text: str) -> Fraction:
    """A written number ("1,000", "\\$5", "50%") as an exact value (a percentage as a fraction of 1)."""
    value = plain_number(text.rstrip("%"))
    if value is None:
        raise ValueError(f"not a number: {text!r}")
    return value / 100 if text.endswith("%") else value


def _operand(m: re.Match) -> Fraction:
    """The value of one _OPERAND match: \\frac{n}{m} or a number."""
    if m.group(1):
        numerator, denominator = _number(m.group(1)), _number(m.group(2))
        return numerator / denominator if denominator else Fraction(0)  # \frac{1}{0}: written nonsense, 0
    return _number(m.group(3))


def _result(text: str) -> Fraction:
    """An equation's written result ("19", "-4", "\\frac{1}{2}") as an exact value."""
    value = _operand(_OPERAND.search(text))
    return -value if text.startswith("-") else value


def _side(text: str) -> tuple[ast.expr, list[Fraction]]:
    """An equation's left side as a parsed expression over names n0, n1, ... and those operands' values.
    Parentheses that do not pair ("(5 + 3 = 8": the equation rule takes each operand's own) are dropped."""
    values: list[Fraction] = []

    def name(m: re.Match) -> str:
        values.append(_operand(m))
        return f" n{len(values) - 1} "

    expr = _DIVIDED.sub("/", _TIMES.sub("*", _OPERAND.sub(name, text))).strip()
    try:
        return ast.parse(expr, mode="eval").body, values
    except SyntaxError:
        return ast.parse(expr.replace("(", " ").replace(")", " ").strip(), mode="eval").body, values


def _value(expr: ast.expr, names: dict[str, Fraction | None]) -> Fraction | None:
    """`arithmetic` of an equation's side; None when it has no value (a division by zero, an operand whose
    corrected value is None)."""
    if any(v is None for v in names.values()):
        return None
    try:
        return arithmetic(expr, names)
    except ValueError:
        return None


def _text_category(response: str, stated: set[Fraction], gold: Fraction | None) -> str:
    results: list[Fraction] = []  # written results, in order
    corrected: list[Fraction] = []  # ... each as the equations redone with right arithmetic give it
    slipped = False
    for left, right in equations(response):
        expr, operands = _side(left)
        written = _result(right)
        redone = {}
        for i, v in enumerate(operands):
            earlier = [j for j, r in enumerate(results) if r == v]
            if earlier:
                redone[f"n{i}"] = corrected[earlier[-1]]
            elif v in stated:
                redone[f"n{i}"] = v
            else:
                return "copy_error"
        true, fixed = _value(expr, {f"n{i}": v for i, v in enumerate(operands)}), _value(expr, redone)
        slipped |= true != written
        results.append(written)
        corrected.append(fixed)
    if not corrected or not _equal(corrected[-1], gold):
        return "wrong_operation"
    if slipped:
        return "arithmetic_slip"
    return "boxed_wrong"


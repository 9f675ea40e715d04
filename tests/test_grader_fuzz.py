"""Fuzzing the grader: thousands of random and adversarial responses, both modes.

Whatever a model writes (unbalanced braces, nested or endless boxes, huge numbers, broken or hostile code,
binary noise), grading must give every record a label in LABELS and a verdict, raise nothing, and finish each
record within the deadlines of the sandbox and of the math-verify workers. The generator is seeded
(ECHOCHAMBER_FUZZ_SEED picks another seed) and composes responses from the fragments below.
"""

import json
import os
import random
import time

import pytest

from echochamber import formats
from echochamber.rewards import grade_file
from echochamber.sandbox import SandboxConfig, SandboxPool
from echochamber.verify import MathVerifyPool, VerifyConfig

SEED = int(os.environ.get("ECHOCHAMBER_FUZZ_SEED", "0"))
N = 1500  # responses per mode

# Cheap fragments: a response is a few of them, with noise in between.
BOXES = ["\\boxed{", "}", "{", "\\boxed{5}", "\\boxed{ 5 }", "\\boxed{\\boxed{5}}", "\\boxed{\\frac{1}{2}}",
         "\\boxed{x^2+1}", "\\boxed{}", "\\boxed{" + "9" * 400 + "}", "\\boxed{1e999999}", "\\boxed{-0.0}",
         "\\boxed{\\{1, 2\\}}", "\\boxed{\\}", "$\\boxed{18+10i}$", "\\boxed{5 or 6 or 7}", "\\boxed{" + "{" * 50,
         "}" * 50, "\\boxed{\\text{\\boxed{3}}}", "#### 72", "The answer is 42.", "\\$1,000", "nan", "inf"]
CODE = ["print(5)", "5", "x = 2 * 3\nx", "1 / 0", "x = (", "print('\\x00\\ud800')", "print('a' * 100000)",
        "import sympy\nsympy.sqrt(8)", "exit()", "raise SystemExit(3)", "import os\nos.fork()",
        "open('/etc/passwd').read()", "2 ** 100000", "[1, 2.5, 'x']", "None", "print(1)\n1.5",
        "import numpy as np\nnp.float64(2.0)", "def f(:\n  pass", "\tprint(1)", "from sympy import I\n18 + 10*I",
        "bytearray(10**10)", "float('nan')", "True"]
MARKERS = ["<llm-code>", "</llm-code>", "<llm-code-output>", "</llm-code-output>", "\ndef ", "def simple_math_problem():",
           "    return 5", "    return result", "import math", "\n\n", "def", "define", "'''", '"""']
# Expensive on purpose, one record each: they spend a deadline.
SLOW = [
    "<llm-code>\nwhile True:\n    pass\n</llm-code>\n<llm-code-output>\n5\n</llm-code-output>\n\\boxed{5}",
    "\n\ndef simple_math_problem():\n    while True:\n        pass\n",
    "<llm-code>\nx = [0] * 10**10\n</llm-code>",
    "<llm-code>\n10 ** 10 ** 10\n</llm-code>",
    "So \\boxed{9^{9^{9^9}}}.",  # math-verify never finishes this one against a symbolic gold
]


def noise(rng: random.Random) -> str:
    kind = rng.randrange(4)
    n = rng.randrange(1, 40)
    if kind == 0:
        return rng.randbytes(n).decode("latin-1")  # binary noise, NUL and control bytes included
    if kind == 1:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000),
                                       rng.randrange(0xD800, 0xE000)])) for _ in range(n))  # lone surrogates too
    if kind == 2:
        return " ".join(str(rng.randrange(-10**6, 10**6)) for _ in range(rng.randrange(1, 4)))
    return rng.choice([" ", "\n", "\r\n", "\t", "."])


def response(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(1, 9)):
        r = rng.random()
        if r < 0.3:
            parts.append(rng.choice(BOXES))
        elif r < 0.5:
            parts.append(rng.choice(MARKERS))
        elif r < 0.65:  # a whole code block, closed or not, with an output block or not
            block = f"<llm-code>\n{rng.choice(CODE)}\n" + ("</llm-code>\n" if rng.random() < 0.8 else "")
            if rng.random() < 0.5:
                block += f"<llm-code-output>\n{noise(rng)}\n</llm-code-output>\n"
            parts.append(block)
        elif r < 0.7:
            parts.append("\n\ndef simple_math_problem():\n    " + rng.choice(CODE).replace("\n", "\n    "))
        else:
            parts.append(noise(rng))
    return "".join(parts)


@pytest.fixture(scope="module")
def fuzz_pools():
    """Short deadlines so the slow records cost little; fallback sandbox mode is fine for these properties."""
    with SandboxPool(SandboxConfig(workers=2, timeout_s=0.5, grace_s=2.0)) as pool, \
            MathVerifyPool(VerifyConfig(workers=1, timeout_s=1.0)) as verifier:
        yield pool, verifier


def check(graded: list, n: int) -> None:
    assert len(graded) == n
    for g in graded:
        assert g.label in formats.LABELS
        assert type(g.correct) is bool
        assert g.answer is None or type(g.answer) is str
        assert g.transcript in (None, "genuine", "invented")
        assert g.label == "omi1" or g.transcript is None


@pytest.mark.parametrize("mode", formats.MODES)
def test_fuzz_batch(mode, fuzz_pools):
    pool, verifier = fuzz_pools
    rng = random.Random(f"{SEED}-{mode}")
    responses = [response(rng) for _ in range(N)]
    golds = [rng.choice(["5", "\\frac12", "x^2+1", "18+10i", None, "", "\\boxed{", "9" * 400]) for _ in range(N)]
    prompts = [noise(rng) for _ in range(N)]
    graded = formats.grade_many(responses, golds, mode=mode, pool=pool, prompts=prompts, verifier=verifier)
    check(graded, N)
    labels = {g.label for g in graded}
    assert {"text", "unknown", "omi1", "tinygsm"} <= labels  # the generator reaches every label
    if mode == "structure":
        assert {g.transcript for g in graded} >= {None, "genuine", "invented"}


@pytest.mark.parametrize("mode", formats.MODES)
def test_fuzz_slow_records_are_bounded(mode, fuzz_pools):
    # Each of these spends a deadline (sandbox 0.5 s + 2 s grace, math-verify 1 s, plus replacing a killed
    # worker): graded alone, none may take much longer. A hang would take forever.
    pool, verifier = fuzz_pools
    for text in SLOW:
        t0 = time.monotonic()
        g = formats.grade(text, "x^2", mode=mode, pool=pool, verifier=verifier)
        took = time.monotonic() - t0
        check([g], 1)
        assert not g.correct
        assert took < 30, (text, took)


def test_fuzz_grade_file_round_trips_any_string(tmp_path, fuzz_pools):
    # Lone surrogates, NUL and control characters go through JSONL in and out; records stay in order.
    pool, verifier = fuzz_pools
    rng = random.Random(f"{SEED}-file")
    recs = [{"i": i, "response": response(rng), "gold": rng.choice(["5", 5, 2.5, "#### 7"])} for i in range(200)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out.jsonl"
    summary = grade_file(src, out, pool=pool, verifier=verifier, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["i"] for r in rows] == list(range(200))
    # (JSON itself joins an escaped surrogate pair into one character: compare with what JSON gives back.)
    assert [r["response"] for r in rows] == [json.loads(json.dumps(r["response"])) for r in recs]
    assert all(r["label"] in formats.LABELS for r in rows) and summary["all"]["n"] == 200

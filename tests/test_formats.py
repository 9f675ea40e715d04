"""formats: rendering, labelling in both modes (the paper's quirks included), answer extraction, equality."""

import ast

import pytest

from echochamber import formats
from echochamber.formats import answers_equal, final_boxed, grade, grade_many
from echochamber.verify import sympy_to_latex, verify_latex


def run(responses, golds, mode, pool, verifier, prompts=None):
    return grade_many(responses, golds, mode=mode, pool=pool, verifier=verifier, prompts=prompts)


class CountingPool:
    """A sandbox pool that records its run_many calls."""

    def __init__(self, pool):
        self.pool, self.calls = pool, []

    def run_many(self, jobs):
        self.calls.append(list(jobs))
        return self.pool.run_many(jobs)


TG = formats.render_tinygsm("Janet's ducks lay 16 eggs per day.\nShe eats 3. How many are left?",
                            ["eggs = 16", "eaten = 3", "result = eggs - eaten"])
OMI1 = formats.render_omi1(["lost = 18 / 2", "total = lost + 20", "total"], "29.0", "29",
                           "Thus Martha has {answer} crayons in total.")
TEXT = formats.render_text(["Eva drives 20 * 10 = 200 miles.", "Thus, Eva needs to drive {answer} miles."], "40")


# -- rendering ---------------------------------------------------------------------------------------------

def test_render_tinygsm_shape():
    tree = ast.parse(TG)
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef) and fn.name == "simple_math_problem"
    assert ast.get_docstring(fn).splitlines() == ["Janet's ducks lay 16 eggs per day.", "She eats 3. How many are left?"]
    lines = TG.split("\n")
    assert lines[0] == "def simple_math_problem() -> int:" and lines[-1] == "    return result"
    assert "    Janet's ducks lay 16 eggs per day." in lines and "    result = eggs - eaten" in lines
    with pytest.raises(ValueError, match="result"):
        formats.render_tinygsm("q", ["x = 1"])


def test_render_omi1_and_text_shape():
    lines = OMI1.split("\n")
    assert lines[0] == "Let's solve this problem using Python code."
    assert lines[1] == "<llm-code>" and lines[5] == "</llm-code>"
    assert lines[6:9] == ["<llm-code-output>", "29.0", "</llm-code-output>"]
    assert lines[9] == "Thus Martha has \\boxed{29} crayons in total."
    with pytest.raises(ValueError, match="answer"):
        formats.render_omi1(["1"], "1", "1", "no placeholder")
    assert TEXT.split("\n") == ["Eva drives 20 * 10 = 200 miles.", "Thus, Eva needs to drive \\boxed{40} miles."]
    assert formats.render_text(["2 + 2 = 4."], "4") == "2 + 2 = 4.\nThus, the answer is \\boxed{4}."
    with pytest.raises(ValueError):
        formats.render_text(["{answer}", "{answer}"], "4")


def test_rendered_formats_grade_by_their_computation(pool, verifier):
    # The model continues the question with "\n\n" (documents are question + "\n\n" + solution).
    responses = ["\n\n" + TG, "\n\n" + OMI1, "\n\n" + TEXT]
    for mode in ("structure", "paper"):
        graded = run(responses, ["13", "29", "40"], mode, pool, verifier)
        assert [g.label for g in graded] == ["tinygsm", "omi1", "text"], mode
        assert [g.correct for g in graded] == [True, True, True], (mode, graded)
        assert [g.boxed for g in graded] == [None, "29", "40"]
    assert graded[0].answer == "13" and graded[1].answer == "29.0"  # what the code computed, not the box


# -- \boxed{} ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer, closed", [
    ("so \\boxed{12}.", "12", True),
    ("so \\boxed{\\frac{1}{2}} cm", "\\frac{1}{2}", True),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", True),  # escaped braces are content
    ("first \\boxed{7} then \\boxed{ 7 }", "7", True),  # the same answer twice
    ("first \\boxed{7} then \\boxed{8}", None, True),  # two different answers: none
    ("first \\boxed{7} then \\boxed{12", None, False),  # truncated final box: no fallback to the earlier one
    ("\\boxed{" + "1+" * 60 + "1}", None, True),  # over-long
    ("no box, the answer is 5", None, False),
])
def test_final_boxed(text, answer, closed):
    b = final_boxed(text)
    assert (b.answer, b.closed) == (answer, closed)
    assert (b.error is None) == (answer is not None)


# -- structure mode ----------------------------------------------------------------------------------------

def test_structure_labels(pool, verifier):
    responses = [
        "\n\ndef solve():\n    return 6 * 7\n\nThe function above gives the answer.",  # any real function
        "We define x as the eggs left: 16 - 3 = 13. So \\boxed{13}.",  # prose that says "define"
        "We define x as the eggs left: 16 - 3 = 13.",  # no code, no box
        "\n\ndef simple_math_problem() -> int:\n    \"\"\"\n    Janet's ducks",  # truncated function
        "def foo(x) is not Python, so \\boxed{13}",
        "Total: \\boxed{13",  # truncated box
        "\\boxed{12} or maybe \\boxed{13}",
        "",
    ]
    graded = run(responses, ["42", "13", "13", "13", "13", "13", "13", "13"], "structure", pool, verifier)
    assert [g.label for g in graded] == ["tinygsm", "text", "unknown", "unknown", "text", "unknown", "text",
                                         "unknown"]
    assert [g.correct for g in graded] == [True, True, False, False, True, False, False, False]
    assert graded[0].answer == "42"
    assert graded[5].error == formats.TRUNCATED_BOX and "different" in graded[6].error


def test_absurd_nesting_is_not_code(pool, verifier):
    deep = "\n\ndef simple_math_problem():\n    return " + "-" * 100_000 + "1"
    assert formats.python_function(deep) is None  # the parser's stack overflow is a parse failure
    g = grade(deep, "1", mode="structure", pool=pool, verifier=verifier)
    assert (g.label, g.correct) == ("unknown", False)


def test_structure_omi1_uses_printed_output_and_ignores_claims(pool, verifier):
    printed = "Let's compute.\n<llm-code>\nx = 2 * 30\nprint(x)\n</llm-code>\n<llm-code-output>\n60\n</llm-code-output>\nSo \\boxed{60}."
    lying = "<llm-code>\n29 + 1 - 1\n</llm-code>\n<llm-code-output>\n30\n</llm-code-output>\nSo \\boxed{30}."
    failing = "<llm-code>\nundefined_name + 1\n</llm-code>\n<llm-code-output>\n5\n</llm-code-output>\nSo \\boxed{5}."
    graded = run([printed, lying, failing], ["60", "29", "5"], "structure", pool, verifier)
    assert [g.label for g in graded] == ["omi1"] * 3
    assert (graded[0].answer, graded[0].correct) == ("60", True)
    assert (graded[1].answer, graded[1].boxed, graded[1].correct) == ("29", "30", True)
    # Code that fails has no answer, whatever its box says.
    assert graded[2].answer is None and not graded[2].correct and "NameError" in graded[2].error


def test_structure_omi1_session_of_blocks(pool, verifier):
    text = ("<llm-code>\na = 6\n1 / 0\n</llm-code>\n<llm-code-output>\nZeroDivisionError\n</llm-code-output>\n"
            "Fix it.\n<llm-code>\nprint('working')\nb = a * 7  # uses the first block's a\n(b +\n 0)  # multi-line\n"
            "</llm-code>\n<llm-code-output>\n42\n</llm-code-output>\n\\boxed{42}")
    g = grade(text, "42", mode="structure", pool=pool, verifier=verifier)
    assert (g.label, g.answer, g.correct) == ("omi1", "42", True)


def test_structure_function_with_imports_and_trailing_prose(pool, verifier):
    text = ("Here is code.\nimport math\ndef simple_math_problem() -> int:\n    result = math.sqrt(16)\n"
            "    return result\nThis returns 4.")
    g = grade(text, "4", mode="structure", pool=pool, verifier=verifier)
    assert (g.label, g.answer, g.correct) == ("tinygsm", "4.0", True)


def test_structure_ignores_prompt(pool, verifier):
    g = grade("So \\boxed{5}.", "5", mode="structure", pool=pool, verifier=verifier, prompt="What does def mean?")
    assert (g.label, g.correct) == ("text", True)


# -- structure mode: genuine or invented interpreter transcripts ------------------------------------------

def omi1(code: str, output: str | None, after: str) -> str:
    """An OpenMathInstruct-1 style solution: code block, written output block (None: none), then prose."""
    out = "" if output is None else f"<llm-code-output>\n{output}\n</llm-code-output>\n"
    return f"Let's use Python.\n<llm-code>\n{code}\n</llm-code>\n{out}{after}"


def test_genuine_transcript_is_answered_by_its_box(pool, verifier):
    # Real OpenMathInstruct-1 habits: the code computes a step, prints a sentence, or prints sympy notation.
    gcd = omi1("from sympy import gcd\ngcd(12, 18)", "6", "So $12x + 18 = \\boxed{6(2x + 3)}$.")
    sentence = omi1("total = 5 * 19\nprint(f'The weekly profit is {total} dollars.')",
                    "The weekly profit is 95 dollars.", "Laran makes \\boxed{95} dollars.")
    sympy_out = omi1("from sympy import I, expand\nprint(expand(2 * (9 + 5*I)))", "18 + 10*I",
                     "So the product is $\\boxed{18+10i}$.")
    failing = omi1("1 / 0", "Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero",
                   "Dividing by zero is undefined, so the answer is \\boxed{0}.")
    graded = run([gcd, sentence, sympy_out, failing], ["6(2x+3)", "95", "18+10i", "0"], "structure", pool,
                 verifier)
    assert [g.transcript for g in graded] == ["genuine"] * 4
    assert [g.answer for g in graded] == ["6(2x + 3)", "95", "18+10i", "0"]
    assert [g.correct for g in graded] == [True] * 4
    assert (graded[1].written_output, graded[1].real_output) == ("The weekly profit is 95 dollars.",) * 2
    assert graded[3].real_output == "ZeroDivisionError: division by zero"
    # Paper mode is the paper's grader: its first block's last line, whatever the transcript.
    paper = run([gcd, sentence], ["6(2x+3)", "95"], "paper", pool, verifier)
    assert [(g.answer, g.correct, g.transcript) for g in paper] == [("6", False, None), ("None", False, None)]


def test_invented_transcript_is_answered_by_its_code(pool, verifier):
    lying = omi1("29 + 1 - 1", "30", "So \\boxed{30}.")
    silent = omi1("x = 4 * 10\nprint(x)", None, "So \\boxed{41}.")  # no output block written: the code answers
    graded = run([lying, silent], ["29", "40"], "structure", pool, verifier)
    assert [(g.transcript, g.answer, g.boxed, g.correct) for g in graded] == [
        ("invented", "29", "30", True), (None, "40", "41", True)]
    assert (graded[0].written_output, graded[0].real_output) == ("30", "29")
    assert graded[1].written_output is None and graded[1].real_output == "40"


def test_genuine_transcript_without_a_clear_box(pool, verifier):
    # No box: the real output is the answer, and sympy notation equals its LaTeX form (structure mode only).
    interval = omi1("from sympy import Interval, oo\nprint(Interval(0, oo))", "Interval(0, oo)",
                    "So the range is all nonnegative numbers.")
    two = omi1("print(7)", "7", "It is \\boxed{7}, or maybe \\boxed{8}.")  # two different boxes: no answer
    cut = omi1("print('1' * 1500)", "1" * 1000 + "<output cut>", "So \\boxed{5}.")  # NeMo cut long output
    graded = run([interval, two, cut], ["[0,\\infty)", "7", "5"], "structure", pool, verifier)
    assert [g.transcript for g in graded] == ["genuine"] * 3
    assert (graded[0].answer, graded[0].correct) == ("Interval(0, oo)", True)
    assert graded[1].answer is None and not graded[1].correct and "different" in graded[1].error
    assert (graded[2].answer, graded[2].correct) == ("5", True)
    assert len(graded[2].real_output) == formats.OUTPUT_RECORD_CHARS  # recorded outputs are capped


@pytest.mark.parametrize("written, value, stdout, agree", [
    ("29.0", 29.0, "", True),
    ("  [1, 2,\n 3] ", "[1, 2, 3]", "", True),  # an interpreter's line wrapping
    ("'abc'", "abc", "", True),  # a string value is shown quoted
    ("[2.0, 5.0]", "[np.float64(2.0), np.float64(5.0)]", "", True),  # numpy 2's repr of what numpy 1 printed
    ("0.333333333333333", 0.3333333333333333, "", True),  # float digits past 1e-6
    ("60", None, "60\n", True),
    ("working\n42", 42, "working\n", True),
    ("42", 42, "working\n", False),  # a print the written output leaves out
    ("30", 29, "", False),
    ("0.34", 0.3333333333333333, "", False),
    ("The total is 95", None, "The total was 95\n", False),
])
def test_outputs_agree(written, value, stdout, agree):
    from echochamber.sandbox import CodeResult

    assert formats.outputs_agree(written, CodeResult(True, value, stdout, None)) is agree


def test_failing_code_agrees_only_with_its_own_error():
    from echochamber.sandbox import CodeResult

    res = CodeResult(False, None, "", "NameError: name 'y' is not defined")
    assert formats.outputs_agree("Traceback ...\nNameError: name 'y' is not defined", res)
    assert not formats.outputs_agree("5", res) and not formats.outputs_agree("NameError: name 'x'", res)


# -- paper mode: the paper's grader, quirks included ------------------------------------------------------

def test_paper_define_prose_is_tinygsm(pool, verifier):
    prose = "\n\nWe define x as the eggs left: 16 - 3 = 13. So \\boxed{13}."
    g = grade(prose, "13", mode="paper", pool=pool, verifier=verifier)
    # Execution failed but the label keeps the marker's type; the answer comes from math-verify on the text.
    assert (g.label, g.answer, g.correct) == ("tinygsm", "13", True)


def test_paper_print_last_line_answers_none(pool, verifier):
    text = "<llm-code>\nx = 2 * 30\nprint(x)\n</llm-code>\n<llm-code-output>\n60\n</llm-code-output>\nSo \\boxed{60}."
    paper = grade(text, "60", mode="paper", pool=pool, verifier=verifier)
    assert (paper.label, paper.answer, paper.correct, paper.boxed) == ("omi1", "None", False, "60")
    assert grade(text, "60", mode="structure", pool=pool, verifier=verifier).correct


def test_paper_runs_only_first_block_and_falls_back_to_text(pool, verifier):
    two = "<llm-code>\n{'a': 1}\n</llm-code>\nthen\n<llm-code>\n42\n</llm-code>\n\\boxed{42}"
    failing = "<llm-code>\nx = 1\ny = x +\n</llm-code>\nSo \\boxed{7}."
    graded = run([two, failing], ["42", "7"], "paper", pool, verifier)
    assert graded[0].answer == "{'a': 1}" and not graded[0].correct
    # A failed block gives nothing: the paper parses the whole text; the label stays omi1.
    assert (graded[1].label, graded[1].answer, graded[1].correct) == ("omi1", "7", True)


def test_paper_unclosed_block_then_def_relabels_tinygsm(pool, verifier):
    text = "<llm-code>\ndef f():\n    return 3\nf()\nSo \\boxed{3}"
    g = grade(text, "3", mode="paper", pool=pool, verifier=verifier)
    assert g.label == "tinygsm"  # the last marker seen wins
    assert grade(text, "3", mode="structure", pool=pool, verifier=verifier).label == "tinygsm"


def test_paper_tinygsm_quirks(pool, verifier):
    # The paper keeps only the text after the LAST "\ndef" and execs it with separate globals/locals.
    imports = "\n\nimport math\ndef simple_math_problem():\n    result = math.sqrt(16)\n    return result"
    # Without a newline before `def` the paper's code is "defdef ...": a SyntaxError.
    no_newline = "def simple_math_problem():\n    return 12"
    graded = run([imports, no_newline], ["4", "12"], "paper", pool, verifier)
    assert graded[0].label == "tinygsm" and not graded[0].correct  # NameError: math; the fallback parse fails
    assert graded[1].label == "tinygsm" and graded[1].answer == "12"  # from math-verify's parse of the text
    structure = run([imports, no_newline], ["4", "12"], "structure", pool, verifier)
    assert [(g.answer, g.correct) for g in structure] == [("4.0", True), ("12", True)]


def test_paper_prompt_can_flip_label(pool, verifier):
    response = "\n\nThe defective eggs: 16 - 3 = 13. So \\boxed{13}."
    alone = grade(response, "13", mode="paper", pool=pool, verifier=verifier)
    assert alone.label == "tinygsm"  # "defective" contains "def"
    clean = "\n\nThe broken eggs: 16 - 3 = 13. So \\boxed{13}."
    assert grade(clean, "13", mode="paper", pool=pool, verifier=verifier).label == "text"
    flipped = grade(clean, "13", mode="paper", pool=pool, verifier=verifier, prompt="How many are not defective?")
    assert (flipped.label, flipped.correct) == ("tinygsm", True)


def test_paper_unknown_only_without_any_answer(pool, verifier):
    graded = run(["\n\nNo numbers here at all.", "\n\nThe answer is 5."], ["5", "5"], "paper", pool, verifier)
    assert [g.label for g in graded] == ["unknown", "text"]
    assert [g.correct for g in graded] == [False, True]


def test_grade_many_runs_code_in_one_call(pool, verifier):
    counting = CountingPool(pool)
    responses = ["\n\n" + TG, "\n\n" + OMI1, "\n\n" + TEXT, "\n\nWe define it. \\boxed{5}"] * 3
    golds = ["13", "29", "40", "5"] * 3
    for mode, jobs_per_4 in (("structure", 2), ("paper", 3)):
        counting.calls.clear()
        graded = grade_many(responses, golds, mode=mode, pool=counting, verifier=verifier)
        assert len(counting.calls) == 1 and len(counting.calls[0]) == 3 * jobs_per_4
        assert all(g.correct for g in graded)
    counting.calls.clear()
    grade_many(["\\boxed{1}"], ["1"], pool=counting, verifier=verifier)
    assert counting.calls == []  # no code, no sandbox


def test_code_job():
    label, job = formats.code_job("\n\n" + TG)
    assert label == "tinygsm" and job.expr == "simple_math_problem()"
    assert formats.code_job("\\boxed{3}") == ("text", None)
    assert formats.code_job("We define it.", "paper")[0] == "tinygsm"
    with pytest.raises(ValueError, match="mode"):
        formats.code_job("x", "strict")


# -- equality ----------------------------------------------------------------------------------------------

def _no_latex(answer, gold):
    raise AssertionError(f"numbers must not need math-verify: {answer!r} vs {gold!r}")


@pytest.mark.parametrize("answer, gold, equal", [
    ("72", "72", True), ("72.0", "72", True), ("72.00", "72", True), ("1,000", "1000", True),
    ("1{,}000", "1000", True), ("\\$5", "5", True), ("$5", "5", True), ("-3", "-3", True), ("-3", "3", False),
    ("17.999999999999996", "18", True), ("0.30000000000000004", "0.3", True), ("1e-05", "0.00001", True),
    ("1000001", "1000000", False), ("17.5", "18", False), ("033", "33", True), ("None", "5", False),
    ("True", "1", False),
])
def test_numeric_equality_without_sympy(answer, gold, equal):
    assert answers_equal(answer, gold, latex_verifier=_no_latex) is equal


@pytest.mark.parametrize("answer, gold, equal", [
    ("\\frac12", "0.5", True), ("3\\sqrt2", "\\sqrt{18}", True), ("2/5", "\\frac{2}{5}", True),
    ("\\frac{1}{3}", "\\frac{2}{5}", False), ("(1, 4)", "(1,4)", True), ("5 or 6 or 7", "7", False),
    ("18 \\text{ dollars}", "18", True),
])
def test_latex_equality(answer, gold, equal, verifier):
    assert verify_latex(answer, gold) is equal  # in this process (main thread)
    assert answers_equal(answer, gold, latex_verifier=verifier.verify) is equal  # in the killable worker


@pytest.mark.parametrize("printed, latex, gold", [
    ("18 + 10*I", "18 + 10 i", "18+10i"), ("Interval(0, oo)", "\\left[0, \\infty\\right)", "[0,\\infty)"),
    ("[-2, 3]", "\\left\\{-2, 3\\right\\}", "-2, 3"), ("x**2 + 1", "x^{2} + 1", "x^2+1"),
    ("pi/4", "\\frac{\\pi}{4}", "\\frac{\\pi}{4}"), ("[1.00000000000000, 3]", "\\left\\{1.0, 3\\right\\}", "1, 3"),
    ("Union(Interval.open(-oo, 1), Interval.open(2, oo))", "\\left(-\\infty, 1\\right) \\cup \\left(2, \\infty\\right)",
     "(-\\infty,1)\\cup(2,\\infty)"),
])
def test_sympy_notation_equals_its_latex(printed, latex, gold, verifier):
    assert sympy_to_latex(printed) == latex
    assert not verify_latex(printed, gold)  # math-verify alone (paper mode) does not see it
    assert verifier.verify_many([(printed, gold)], sympy_notation=True) == [True]
    assert verifier.verify_many([(printed, gold)]) == [False]


def test_sympy_to_latex_evaluates_nothing():
    # Only numbers, names, arithmetic and sympy's own function names are rebuilt; nothing is eval'd or run.
    for text in ["__import__('os').system('true')", "(lambda: 1)()", "x.__class__", "'a' * 10", "open('f')",
                 "Interval(0, 1, left_open=True)", "Matrix(['__import__(\\'os\\')'])", "", "5 or 6",
                 "[" * 10_000 + "]" * 10_000, "-" * 10_000 + "1", "9" * 5000]:
        assert sympy_to_latex(text) is None, text
    assert sympy_to_latex("2**10**10**10") == "2^{10^{10^{10}}}"  # unevaluated: instant


def test_structure_does_not_verify_overlong_answers(pool):
    class NoVerifier:
        def verify_many(self, pairs, sympy_notation=False):
            assert all(len(a) <= formats.MAX_VERIFIED_CHARS for a, _ in pairs), "an over-long answer was verified"
            return [False] * len(pairs)

    long_line = omi1("print('x' * 4000)", None, "")
    number = omi1("print(2 ** 5000)", None, "")  # plain numbers of any length still compare
    graded = run([long_line, number], ["x", str(2 ** 5000)], "structure", pool, NoVerifier())
    assert [g.correct for g in graded] == [False, True] and len(graded[0].answer) == 4000


def test_missing_answer_or_gold_is_wrong():
    assert not answers_equal(None, "5") and not answers_equal("5", None)

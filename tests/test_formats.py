"""formats: rendering, labelling in both modes (the paper's quirks included), answer extraction, equality."""

import ast

import pytest

from echochamber import formats
from echochamber.formats import answers_equal, final_boxed, grade, grade_many
from echochamber.verify import verify_latex


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


def test_missing_answer_or_gold_is_wrong():
    assert not answers_equal(None, "5") and not answers_equal("5", None)

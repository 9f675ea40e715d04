"""Error categories on hand-written solutions of a real synthetic problem: each category from one hand edit of
the generator's correct solution, the precedence where several apply, and the evaluation hook."""

import json

import pytest

from echochamber import evaluate as ev
from echochamber import formats
from echochamber.error_categories import CATEGORIES, arithmetic, categorise, tabulate
from echochamber.interpreter import Response
from echochamber.tasks import Problem, synthetic

# syn-test-000000 of seed 0 (the test checks it is still this problem):
#   Noah has 22 candies. He keeps 2 for himself and shares the rest equally among 2 friends. Then Ava gives each
#   friend 28 more.  candies_to_share = 22 - 2 = 20; candies_per_friend = 20 / 2 = 10; answer 10 + 28 = 38
PROBLEM = synthetic.generate("test", 1)[0]
TINYGSM, OMI1, TEXT = (synthetic.render_solution(PROBLEM, f) for f in synthetic.FORMAT_NAMES)


def edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


# (response, the category it must get); every one is a hand edit of the correct solution above.
CASES = {
    # code: a given copied wrong, a literal the question does not state, a wrong operation, a crash
    "tinygsm copies 28 as 29": (edit(TINYGSM, ("more_each = 28", "more_each = 29")), "copy_error"),
    "tinygsm swaps two givens": (edit(TINYGSM, ("candies = 22", "candies = 2"), ("kept_candies = 2", "kept_candies = 22")),
                                 "copy_error"),
    "omi1 uses an unstated 30": (edit(OMI1, ("candies_per_friend + more_each", "candies_per_friend + 30")),
                                 "copy_error"),
    "tinygsm multiplies instead of adding": (edit(TINYGSM, ("candies_per_friend + more_each",
                                                            "candies_per_friend * more_each")), "wrong_operation"),
    "omi1 leaves a step out": (edit(OMI1, ("candies_to_share // friends", "candies_to_share")), "wrong_operation"),
    "tinygsm misspells a name": (edit(TINYGSM, ("candies_per_friend + more_each", "candies_per_friend + more")),
                                 "code_crashed"),
    "tinygsm returns nothing": (edit(TINYGSM, ("    return result", "    pass")), "code_crashed"),
    "omi1 divides by zero": (edit(OMI1, ("candies_to_share // friends", "candies_to_share // (friends - friends)")),
                             "code_crashed"),
    # code: the computation reaches 38 but the answer is not 38
    "tinygsm returns an intermediate": (edit(TINYGSM, ("result = candies_each_now", "result = candies_per_friend")),
                                        "boxed_wrong"),
    "omi1 boxes 39 after a real 38": (edit(OMI1, ("\\boxed{38}", "\\boxed{39}")), "boxed_wrong"),
    "omi1 shows 10, writes 38": (edit(OMI1, ("\ncandies_each_now\n</llm-code>", "\ncandies_per_friend\n</llm-code>")),
                                 "invented_output"),
    # text
    "text copies 22 as 23": (edit(TEXT, ("22 - 2 = 20", "23 - 2 = 21"), ("20 / 2 = 10", "21 / 2 = 10.5"),
                                  ("10 + 28 = 38", "10.5 + 28 = 38.5"), ("{38}", "{38.5}")), "copy_error"),
    "text multiplies instead of adding": (edit(TEXT, ("10 + 28 = 38", "10 * 28 = 280"), ("{38}", "{280}")),
                                          "wrong_operation"),
    "text stops a step early": (edit(TEXT, ("Each friend now has 10 + 28 = 38 candies.\n", ""), ("{38}", "{10}")),
                                "wrong_operation"),
    "text writes 20 / 2 = 11": (edit(TEXT, ("20 / 2 = 10", "20 / 2 = 11"), ("10 + 28 = 38", "11 + 28 = 39"),
                                     ("{38}", "{39}")), "arithmetic_slip"),
    "text boxes 37 after 38": (edit(TEXT, ("{38}", "{37}")), "boxed_wrong"),
    "text has no box": (edit(TEXT, ("\\boxed{38}", "38")), "no_answer"),
    "text boxes two answers": (edit(TEXT, ("Thus", "So \\boxed{10}. Thus")), "no_answer"),
    # precedence: several errors in one response, the earliest in CATEGORIES wins
    "text copies wrong and slips": (edit(TEXT, ("22 - 2 = 20", "23 - 2 = 20"), ("{38}", "{37}")), "copy_error"),
    "text slips and multiplies": (edit(TEXT, ("20 / 2 = 10", "20 / 2 = 11"), ("10 + 28 = 38", "11 * 28 = 308"),
                                       ("{38}", "{308}")), "wrong_operation"),
    "tinygsm copies wrong and crashes": (edit(TINYGSM, ("more_each = 28", "more_each = 29"),
                                              ("candies_per_friend + more_each", "candies_per_friend + more")),
                                         "code_crashed"),
    "omi1 invents and multiplies": (edit(OMI1, ("candies_per_friend + more_each", "candies_per_friend * more_each")),
                                    "wrong_operation"),
}


@pytest.fixture(scope="module")
def graded(pool):
    responses = [TINYGSM, OMI1, TEXT] + [r for r, _ in CASES.values()]
    return dict(zip(["tinygsm", "omi1", "text", *CASES], formats.grade_many(responses, [PROBLEM.gold] * len(responses),
                                                                              pool=pool)))


def test_the_problem_is_the_one_the_edits_were_written_for():
    assert PROBLEM.answer == 38 and [v for _, v in PROBLEM.givens] == [22, 2, 2, 28]
    meta = PROBLEM.to_problem().meta
    assert meta["givens"] == [list(g) for g in PROBLEM.givens] and len(meta["computation"]) == meta["steps"] == 3
    json.dumps(meta)  # JSON-ready


def test_correct_solutions_get_no_category(graded):
    problem = PROBLEM.to_problem()
    for fmt, response in zip(("tinygsm", "omi1", "text"), (TINYGSM, OMI1, TEXT)):
        assert graded[fmt].correct and categorise(problem, response, graded[fmt], True) is None


@pytest.mark.parametrize("case", list(CASES))
def test_each_hand_edit_gets_its_category(graded, case):
    response, category = CASES[case]
    assert not graded[case].correct
    assert categorise(PROBLEM.to_problem(), response, graded[case], finished=True) == category


def test_truncated_comes_first_and_other_problems_get_none(graded):
    response, _ = CASES["text copies 22 as 23"]
    assert categorise(PROBLEM.to_problem(), response, graded["text copies 22 as 23"], finished=False) == "truncated"
    plain = Problem("gsm-1", PROBLEM.question, PROBLEM.gold)  # no computation: not the synthetic world
    assert categorise(plain, response, graded["text copies 22 as 23"], finished=False) is None


def test_other_only_for_a_label_the_graders_never_give(graded):
    g = graded["text boxes 37 after 38"]
    odd = formats.Graded("latex", g.answer, g.boxed, False)
    assert categorise(PROBLEM.to_problem(), "", odd, True) == "other"


def test_arithmetic_evaluates_numbers_only():
    import ast
    names = {"a": 4}
    assert arithmetic(ast.parse("a * 6 - 10 // 3", mode="eval").body, names) == 21
    for bad in ("__import__('os')", "b + 1", "1 / 0", "[1][0]"):
        with pytest.raises(ValueError):
            arithmetic(ast.parse(bad, mode="eval").body, names)


def test_tabulate_shares_per_label():
    table = tabulate(["copy_error", None, "boxed_wrong", "copy_error", "truncated"],
                     ["tinygsm", "tinygsm", "text", "tinygsm", "unknown"])
    assert table["tinygsm"]["wrong"] == 2 and table["tinygsm"]["share"]["copy_error"] == 1.0
    assert table["text"]["counts"]["boxed_wrong"] == 1 and table["omi1"]["wrong"] == 0
    assert table["omi1"]["share"]["copy_error"] is None
    assert table["all"]["wrong"] == 4 and table["all"]["share"]["copy_error"] == 0.5
    assert set(table["all"]["counts"]) == set(CATEGORIES)


def test_evaluation_rows_and_result_carry_the_categories(tmp_path, monkeypatch, pool):
    """evaluate_dataset with generation replaced by fixed responses (the sampler's finished flag included):
    each row gets its category, the result the per-format table, greedy and sampled."""
    from echochamber.tokenizer import train_tokenizer

    problem = PROBLEM.to_problem()
    slip, _ = CASES["text writes 20 / 2 = 11"]
    greedy = [Response(TINYGSM, True), Response(slip, True), Response(TEXT[:40], False)]
    samples = [[Response(CASES["tinygsm copies 28 as 29"][0], True), Response(OMI1, True)]] * 3
    tok = train_tokenizer([PROBLEM.question, TINYGSM, OMI1, TEXT] * 3, vocab_size=300)

    def fake_generate_texts(model, tok, questions, scfg, *a, **k):  # one call: greedy row first, then samples
        return [[g, *s] for g, s in zip(greedy, samples)]

    monkeypatch.setattr(ev, "generate_texts", fake_generate_texts)
    result = ev.evaluate_dataset(None, tok, [problem] * 3, ev.EvalConfig(n_samples=2), seed=0, out_dir=tmp_path,
                                 name="toy", pool=pool, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "toy_greedy.jsonl").read_text().splitlines()]
    assert [(r["finished"], r["error"]) for r in rows] == [(True, None), (True, "arithmetic_slip"),
                                                           (False, "truncated")]
    table = result["error_categories"]
    assert table["text"]["wrong"] == 1 and table["text"]["share"]["arithmetic_slip"] == 1.0
    assert table["unknown"]["counts"]["truncated"] == 1 and table["all"]["wrong"] == 2
    assert result["sample_error_categories"]["tinygsm"]["counts"]["copy_error"] == 3
    assert result["sample_error_categories"]["omi1"]["wrong"] == 0
    json.dumps(result)


def test_datasets_without_computation_have_no_table(tmp_path, monkeypatch, pool):
    from echochamber.tokenizer import train_tokenizer

    plain = Problem("gsm-1", PROBLEM.question, PROBLEM.gold)
    tok = train_tokenizer([PROBLEM.question, TEXT] * 3, vocab_size=300)
    monkeypatch.setattr(ev, "generate_texts", lambda model, tok, questions, *a, **k: [[Response("\\boxed{1}", True)]])
    result = ev.evaluate_dataset(None, tok, [plain], ev.EvalConfig(), seed=0, out_dir=tmp_path, name="g",
                                 pool=pool, progress=False)
    assert "error_categories" not in result
    assert json.loads((tmp_path / "g_greedy.jsonl").read_text())["error"] is None


def test_report_tables_the_first_and_last_evaluation(tmp_path):
    from echochamber.report import write_report

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    for step, cats in ((0, ["copy_error", "copy_error", "truncated"]), (5, ["boxed_wrong"]), (9, ["arithmetic_slip"])):
        labels = ["text"] * len(cats)
        record = {"step": step, "datasets": {"synthetic_test": {"n": 4, "pass@1": 0.5,
                                                                "error_categories": tabulate(cats, labels)}}}
        (run / "eval" / f"step_{step:06d}.json").write_text(json.dumps(record))
    page = write_report([run], tmp_path / "out").read_text()
    section = page[page.index("<h2>Error categories</h2>"):page.index("<h2>Sample generations</h2>")]
    assert "<td>0</td><td>text</td><td>3</td>" in section and "67% (2)" in section  # step 0: 2 of 3 copied wrong
    assert "<td>9</td><td>text</td><td>1</td>" in section and "<td>5</td>" not in section  # last, not middle


@pytest.mark.parametrize("text, category", [
    # unpaired parenthesis, a \frac result, a $ amount: still read as equations
    ("He shares (22 - 2 = 20 candies.\nEach gets 20 / 2 = \\frac{20}{2}.\n10 + 28 = \\$38.\n\\boxed{37}", "boxed_wrong"),
    # a division by zero has no value: a slip, and what follows from it has no corrected value
    ("2 - 2 = 0.\n22 / 0 = 7.\n7 + 28 = 35.\n\\boxed{35}", "wrong_operation"),
    ("Each friend gets 38 candies.\n\\boxed{38.5}", "wrong_operation"),  # no equation: no computation written
])
def test_text_edge_cases(text, category):
    """Text needs no sandbox: the grader's verdict is built by hand (label text, the box as answer)."""
    boxed = formats.final_boxed(text).answer
    g = formats.Graded("text", boxed, boxed, False)
    assert categorise(PROBLEM.to_problem(), text, g, True) == category


def test_huge_powers_are_not_evaluated():
    import ast
    for huge in ("9 ** 64 ** 64", "(2 ** 64) ** 64"):  # an exponent over 64; a value over MAX_BITS bits
        with pytest.raises(ValueError):
            arithmetic(ast.parse(huge, mode="eval").body, {})
    assert arithmetic(ast.parse("(2 ** 63) ** 64", mode="eval").body, {}) == 2 ** 4032

"""format_metrics: each within-format metric on hand-written responses, the per-format aggregate, the invented-output
share from real sandbox grading, and the three hooks (RL step record, evaluation result, report figure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from echochamber import evaluate as ev
from echochamber import formats
from echochamber.format_metrics import (code_lines, has_docstring, invented_output, n_equations, n_variables,
                                        question_copied, within_format, within_keys)
from echochamber.formats import LABELS, grade_many
from echochamber.report import fig_within_format, load_run, within_from_rows, within_series, write_report
from echochamber.rl import rollout as ro
from echochamber.rl.train import rollout_rows, rollout_stats
from echochamber.tasks import Problem
from echochamber.tokenizer import train_tokenizer

QUESTION = "Ava has 5 bags of peanuts with 8 peanuts in each bag.\nShe eats 37 of them. How many are left?"
BODY = ["bags = 5", "per_bag = 8", "eaten = 37", "peanuts = bags * per_bag", "result = peanuts - eaten"]
COPIED = "\n\n" + formats.render_tinygsm(QUESTION, BODY)  # docstring = the question, re-indented
KEYS = [k for k, _, _ in within_keys()]


def tinygsm(doc: str | None, body: str = "    result = 3\n    return result") -> str:
    head = "def simple_math_problem() -> int:\n"
    return "\n\n" + head + (f'    """\n    {doc}\n    """\n' if doc is not None else "") + body


def omi1(*blocks: str, output: str | None = "3") -> str:
    code = "".join(f"<llm-code>\n{b}\n</llm-code>\n" for b in blocks)
    out = "" if output is None else f"<llm-code-output>\n{output}\n</llm-code-output>\n"
    return f"Let's solve this problem using Python code.\n{code}{out}Thus the answer is \\boxed{{3}}."


# -- TinyGSM --------------------------------------------------------------------------------------------------

def test_docstring_present():
    assert has_docstring(COPIED) is True
    assert has_docstring(tinygsm("Some other words.")) is True
    assert has_docstring(tinygsm(None)) is False
    assert has_docstring(tinygsm("")) is False  # a docstring of whitespace says nothing
    single = "def simple_math_problem():\n    '''Tom has 3 apples.'''\n    return 3"
    assert has_docstring(single) is True
    assert has_docstring("We define x as the number of apples. \\boxed{3}") is None  # no function: nothing to measure


def test_question_copied_into_the_docstring():
    assert question_copied(QUESTION, COPIED) is True  # line breaks and indentation do not matter
    assert question_copied(" ".join(QUESTION.split()), COPIED) is True
    renamed = tinygsm(QUESTION.replace("Ava", "Maya").replace("\n", " "))
    assert question_copied(QUESTION, renamed) is False  # one changed name is not a copy
    first_half = tinygsm(QUESTION.split("\n")[0])
    assert question_copied(QUESTION, first_half) is False
    longer = tinygsm("Here is the problem: " + QUESTION.replace("\n", " ") + " Answer in bags.")
    assert question_copied(QUESTION, longer) is True  # the whole question is inside
    assert question_copied(QUESTION, tinygsm(None)) is False  # no docstring: not copied
    assert question_copied(QUESTION, "The answer is \\boxed{3}.") is None
    assert question_copied("", COPIED) is None


def test_number_of_variables():
    assert n_variables(COPIED) == 5  # bags, per_bag, eaten, peanuts, result
    # Reassignment counts once; tuple targets, +=, annotations, walrus, for/with/comprehension targets count;
    # parameters, attributes and subscripts do not; a helper function outside the entry is not looked at.
    body = "\n".join([
        "def helper(a):",
        "    unused = a",
        "    return unused",
        "def simple_math_problem(n=3) -> int:",
        "    x = 1",
        "    x = x + 1",
        "    y, z = 2, 3",
        "    total: int = 0",
        "    total += y",
        "    for i in range(n):",
        "        total += i",
        "    squares = [k * k for k in range(3)]",
        "    if (w := 4) > 3:",
        "        squares[0] = w",
        "    obj = type('O', (), {})()",
        "    obj.attr = 5",
        "    result = total + x",
        "    return result",
    ])
    assert n_variables(body) == 10  # x y z total i squares k w obj result
    assert n_variables("def simple_math_problem():\n    return 7") == 0
    assert n_variables("No code here, \\boxed{7}.") is None


# -- OpenMathInstruct-1 ---------------------------------------------------------------------------------------

def test_lines_of_code_over_all_blocks():
    assert code_lines(omi1("a = 1\nb = 2\na + b")) == 3
    assert code_lines(omi1("a = 1\n\n   \n# add them up\nb = 2  # two\n\na + b")) == 3  # blank and comment lines
    assert code_lines(omi1("a = 1\nb = 2", "c = a * b\nc")) == 4  # both blocks
    assert code_lines("<llm-code>\nx = 1\ny = 2") is None  # never closed: not code
    assert code_lines("So \\boxed{3}.") is None


def test_invented_output_comes_from_the_graders_verdict():
    assert invented_output("invented") is True
    assert invented_output("genuine") is False
    assert invented_output(None) is None


def test_invented_output_share_from_real_grading(pool, verifier):
    genuine = omi1("x = 4 * 10\nx", output="40")
    invented = omi1("x = 4 * 10\nx", output="41")  # the model wrote an output its code does not print
    silent = omi1("x = 4 * 10\nx", output=None)  # no output block: no verdict
    responses = [genuine, invented, silent]
    graded = grade_many(responses, ["40"] * 3, mode="structure", pool=pool, verifier=verifier)
    assert [g.transcript for g in graded] == ["genuine", "invented", None]
    rows = [{"question": "q", "response": r, "label": g.label, "tokens": 10, "transcript": g.transcript}
            for r, g in zip(responses, graded)]
    w = within_format(rows)
    assert w["within/omi1/invented_output"] == 0.5  # 1 invented of the 2 that wrote an output
    assert w["within/omi1/code_lines"] == 2.0
    # Paper mode records no verdict: the share is unknown, not 0.
    paper = grade_many(responses, ["40"] * 3, mode="paper", pool=pool, verifier=verifier)
    rows = [{**row, "transcript": g.transcript} for row, g in zip(rows, paper)]
    assert within_format(rows)["within/omi1/invented_output"] is None


# -- text -----------------------------------------------------------------------------------------------------

def test_equations_in_text():
    assert n_equations("Tom has 3 apples and buys more, so x = y.\nThus \\boxed{5}.") == 0
    assert n_equations("Let a = 1 and b = 2. Then 2 + 3 makes five. So 7 - 2\n= 5 too.") == 0
    two = "She saves 43 * 12 = 516 dollars.\nShe has 516 - 33 = 483 left, since x = y.\nThus \\boxed{483}."
    assert n_equations(two) == 2
    three = ("The plates cost 27 * 4 = 108 dollars, that is $\\$108$.\n"
             "With delivery she pays $108 + 37 + 5 = 150$ dollars.\n"
             "Each of 2 friends pays $150 \\div 2 = 75$ so \\boxed{75}.")
    assert n_equations(three) == 3
    # LaTeX operators and fractions, parentheses, decimals, thousands commas, and a chain counted once.
    assert n_equations("$120 \\times \\frac{1}{3} = 40$ and $(5 + 3) \\cdot 2 = 16$") == 2
    assert n_equations("1,000 + 2.5 = 1,002.5 = 1002.5") == 1
    assert n_equations("5 x 9 = 45 but 5x9=45 is a word") == 1
    # Letters are not numbers: m \cdot n = 27000 is not arithmetic, and 2 in x^2 does not start an equation.
    assert n_equations("$m \\cdot n = 27000$ and $x^2 + 3 = 5$") == 0


def test_equations_are_fast_on_degenerate_output():
    # A model that repeats "1 + " for a thousand tokens: one linear pass, not a search from every number.
    assert n_equations("1 + " * 5000 + "1") == 0
    assert n_equations("1 + " * 5000 + "1 = 5001") == 1


# -- the aggregate --------------------------------------------------------------------------------------------

def test_aggregate_means_per_format():
    rows = [
        {"question": QUESTION, "response": COPIED, "label": "tinygsm", "tokens": 100},
        {"question": QUESTION, "response": tinygsm(None), "label": "tinygsm", "tokens": 50},
        # Paper mode labels prose saying "define" tinygsm: it has no function, so no docstring value.
        {"question": QUESTION, "response": "We define x. \\boxed{3}", "label": "tinygsm", "tokens": 30},
        {"question": QUESTION, "response": omi1("a = 1\nb = 2", "a + b"), "label": "omi1", "tokens": 80,
         "transcript": "invented"},
        {"question": QUESTION, "response": "2 + 2 = 4 and 4 * 3 = 12. \\boxed{12}", "label": "text", "tokens": 20},
        {"question": QUESTION, "response": "5 - 1 = 4. \\boxed{4}", "label": "text", "tokens": 10},
    ]
    w = within_format(rows)
    assert list(w) == KEYS  # every key, in order, whatever the batch holds
    assert w["within/tinygsm/length"] == 60.0  # (100 + 50 + 30) / 3
    assert w["within/tinygsm/docstring"] == 0.5  # of the 2 with a function
    assert w["within/tinygsm/question_copied"] == 0.5
    assert w["within/tinygsm/n_variables"] == 3.0  # (5 + 1) / 2
    assert w["within/omi1/length"] == 80.0 and w["within/omi1/code_lines"] == 3.0
    assert w["within/omi1/invented_output"] == 1.0
    assert w["within/text/length"] == 15.0 and w["within/text/n_equations"] == 1.5
    assert w["within/unknown/length"] is None  # no unknown output in the batch


def test_aggregate_of_an_empty_label_and_of_old_rows():
    w = within_format([{"question": "q", "response": "So \\boxed{1}.", "label": "text"}])  # no tokens saved
    assert w["within/text/n_equations"] == 0.0 and w["within/text/length"] is None
    assert all(w[k] is None for k in KEYS if not k.startswith("within/text/"))
    assert within_format([]) == dict.fromkeys(KEYS)
    # A label outside formats.LABELS gets its length too.
    assert within_format([{"response": "", "label": "other", "tokens": 4}])["within/other/length"] == 4.0


# -- hooks ----------------------------------------------------------------------------------------------------

def graded_rollout(pool, verifier) -> ro.Rollout:
    problems = [Problem("p0", QUESTION, "3"), Problem("p1", "How many?", "40")]
    texts = [COPIED, "2 + 1 = 3 so \\boxed{3}.", omi1("x = 4 * 10\nx", output="41"), "No idea."]
    graded = grade_many(texts, ["3", "3", "40", "40"], mode="structure", pool=pool, verifier=verifier)
    return ro.Rollout(problems=problems, prompt_tokens=[[1]] * 4, response_tokens=[[5] * n for n in (9, 7, 5, 3)],
                      texts=texts, finished=[True] * 4, graded=graded,
                      rewards=torch.tensor([float(g.correct) for g in graded]), group_size=2)


def test_rl_step_record_has_the_within_format_metrics(pool, verifier):
    rows = rollout_rows(graded_rollout(pool, verifier))
    assert [r["transcript"] for r in rows] == [None, None, "invented", None]
    stats = rollout_stats(rows, group_size=2)
    assert set(KEYS) <= set(stats) and "format_share/omi1" in stats
    assert stats["within/tinygsm/question_copied"] == 1.0 and stats["within/tinygsm/length"] == 9.0
    assert stats["within/omi1/invented_output"] == 1.0 and stats["within/text/n_equations"] == 1.0
    assert stats["within/unknown/length"] == 3.0
    json.dumps(stats)  # a metrics.jsonl record (None -> null)


def test_evaluation_result_has_the_within_format_metrics(tmp_path, monkeypatch, pool, verifier):
    """evaluate_dataset with generation replaced by fixed responses: its rows carry tokens and transcript,
    its result the aggregate of them."""
    responses = [COPIED, omi1("x = 4 * 10\nx", output="40"), "1 + 2 = 3. \\boxed{3}"]
    problems = [Problem(f"p{i}", QUESTION, "3") for i in range(3)]
    tok = train_tokenizer([QUESTION, *responses] * 5, vocab_size=300)
    monkeypatch.setattr(ev, "generate_texts", lambda model, tok, questions, *a, **k: [[r] for r in responses])
    result = ev.evaluate_dataset(None, tok, problems, ev.EvalConfig(), seed=0, out_dir=tmp_path, name="toy",
                                 pool=pool, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "toy_greedy.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [len(tok.encode(r)) for r in responses]
    assert [r["transcript"] for r in rows] == [None, "genuine", None]
    assert result["within"] == within_format(rows)
    assert result["within"]["within/omi1/invented_output"] == 0.0
    assert result["within"]["within/tinygsm/question_copied"] == 1.0


# -- report ---------------------------------------------------------------------------------------------------

def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_reads_new_runs_and_recomputes_old_ones(tmp_path):
    old_row = {"question": QUESTION, "response": omi1("a = 1\nb = 2\na + b", output="5"), "label": "omi1",
               "answer": "3", "gold": "3", "correct": True}  # written before tokens and transcripts were saved
    # An old run: metrics without within/ keys, saved rollouts and eval rows only.
    old = tmp_path / "old"
    write_rows(old / "metrics.jsonl", [{"step": s, "accuracy": 0.5} for s in (1, 2)])
    for s in (1, 2):
        write_rows(old / "rollouts" / f"step_{s:06d}.jsonl", [old_row, {**old_row, "label": "text"}])
    (old / "eval").mkdir()
    (old / "eval" / "step_000000.json").write_text(json.dumps({"datasets": {"gsm8k": {"pass@1": 0.5}}}))
    write_rows(old / "eval" / "step_000000" / "gsm8k_greedy.jsonl", [old_row])
    assert within_from_rows(old / "eval" / "step_000000" / "gsm8k_greedy.jsonl")["within/omi1/code_lines"] == 3.0
    series = within_series(load_run(old))
    assert list(series) == ["rollouts", "gsm8k"] and list(series["rollouts"]) == [1, 2]
    assert series["gsm8k"][0]["within/omi1/code_lines"] == 3.0
    assert series["gsm8k"][0]["within/omi1/invented_output"] is None  # no verdict saved: never guessed
    assert series["gsm8k"][0]["within/omi1/length"] is None  # no tokens and no tokenizer in the folder
    # With the run's tokenizer beside it, old rows get their length as evaluation counts it now.
    tok = train_tokenizer([old_row["response"]] * 3, vocab_size=300)
    tok.save(old / "final" / "tokenizer.json")
    series = within_series(load_run(old))
    assert series["gsm8k"][0]["within/omi1/length"] == len(tok.encode(old_row["response"]))

    # A new run: the logged values are used as they are (the rows are not re-read).
    new = tmp_path / "new"
    logged = {**dict.fromkeys(KEYS), "within/text/n_equations": 2.5}
    write_rows(new / "metrics.jsonl", [{"step": s, "accuracy": 0.5, **logged} for s in (1, 2, 3)])
    (new / "eval").mkdir()
    (new / "eval" / "step_000000.json").write_text(json.dumps({"datasets": {"gsm8k": {"within": logged}}}))
    series = within_series(load_run(new))
    assert series == {"rollouts": {1: logged, 2: logged, 3: logged}, "gsm8k": {0: logged}}

    fig = fig_within_format([load_run(old), load_run(new)])
    assert fig is not None
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert "omi1 · lines of code" in titles and "text · arithmetic equations written" in titles
    page = write_report([old, new], tmp_path / "out").read_text()
    assert 'id="within_format"' in page and (tmp_path / "out" / "within_format.png").exists()


def test_report_without_within_data_has_no_figure(tmp_path):
    run = tmp_path / "fresh"
    write_rows(run / "metrics.jsonl", [{"step": 1, "accuracy": 0.5}])
    assert within_series(load_run(run)) == {}
    assert fig_within_format([load_run(run)]) is None
    assert "within_format: not drawn" in write_report([run], tmp_path / "out").read_text()


def test_labels_are_the_graders():
    assert {k.split("/")[1] for k in KEYS} == set(LABELS)

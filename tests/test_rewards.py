"""rewards and verify: 1/0 rewards, the killable math-verify workers, grading files, real-data acceptance."""

import json
import threading
import time
from pathlib import Path

import pytest

from echochamber import formats
from echochamber.rewards import compute_rewards, format_summary_table, grade_file, reward
from echochamber.verify import MathVerifyPool, VerifyConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_reward_is_correctness(pool, verifier):
    responses = ["So \\boxed{13}.", "So \\boxed{12}.", "no answer", "\n\ndef simple_math_problem():\n    return 13"]
    rewards, graded = compute_rewards(responses, ["13"] * 4, mode="structure", pool=pool, verifier=verifier)
    assert rewards == [1.0, 0.0, 0.0, 1.0]
    assert rewards == [reward(g) for g in graded] == [float(g.correct) for g in graded]
    assert [g.label for g in graded] == ["text", "text", "unknown", "tinygsm"]


def test_verify_many_in_order_and_off_the_main_thread(verifier):
    pairs = [("\\frac12", "0.5"), ("\\frac13", "0.5"), ("3\\sqrt2", "\\sqrt{18}"), ("x^2", "x^3")] * 3
    out: list = []
    # math-verify's own timeout (signal.alarm) raises off the main thread; the workers do not care.
    t = threading.Thread(target=lambda: out.append(verifier.verify_many(pairs)))
    t.start()
    t.join(60)
    assert out == [[True, False, True, False] * 3]
    assert verifier.extract_many(["so \\boxed{12} then", "no numbers"]) == ["12", None]


def test_pathological_check_is_killed_and_scored_zero():
    with MathVerifyPool(VerifyConfig(workers=1, timeout_s=0.5)) as v:
        v.verify("1", "1")  # started
        t0 = time.monotonic()
        assert v.verify_many([("9^{9^{9^9}}", "5"), ("\\frac{1}{2}", "0.5")]) == [False, True]
        assert time.monotonic() - t0 < 10  # 0.5 s deadline + a fresh worker's start
        assert v.timeouts == 1


def test_dead_worker_is_replaced(verifier):
    verifier.verify("1", "1")
    victim = verifier._workers[0]
    victim.kill()  # a worker this test's pool started
    victim.wait()
    assert verifier.verify_many([("\\frac{4}{8}", "\\frac12")] * 3) == [True] * 3


def test_grade_text_and_tinygsm_defaults_use_killable_workers(verifier):
    # grade_many's math-verify work goes through the verifier, never math-verify in this thread.
    calls = []

    class Spy:
        def verify_many(self, pairs, sympy_notation=False):
            calls.append(list(pairs))
            return verifier.verify_many(pairs, sympy_notation)

        def extract_many(self, texts):
            calls.append(list(texts))
            return verifier.extract_many(texts)

    graded = formats.grade_many(["So \\boxed{\\frac{2}{4}}.", "So \\boxed{3}."], ["\\frac12", "3"], verifier=Spy())
    assert [g.correct for g in graded] == [True, True]
    assert calls == [[("\\frac{2}{4}", "\\frac12")]]  # one batch, numbers settled without it


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_grade_file_order_fields_and_summary(tmp_path, pool, verifier):
    recs = [
        {"id": 0, "question": "q0", "response": "\n\ndef simple_math_problem():\n    return 5", "gold": "5"},
        {"id": 1, "question": "q1", "response": "So \\boxed{7}.", "gold": 8},  # numeric gold
        {"id": 2, "question": "q2", "response": "nothing", "gold": "3", "answer": "kept"},  # a colliding field
        {"id": 3, "question": "q3", "response": "So \\boxed{18}.", "gold": "16 + 2 = 18\n#### 18"},  # GSM8K style
    ]
    src = write(tmp_path / "in.jsonl", [json.dumps(r) for r in recs[:2]] + [""] + [json.dumps(r) for r in recs[2:]])
    out = tmp_path / "sub" / "out.jsonl"
    summary = grade_file(src, out, mode="structure", pool=pool, verifier=verifier, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3]
    assert [(r["label"], r["answer"], r["correct"]) for r in rows] == [
        ("tinygsm", "5", True), ("text", "7", False), ("unknown", None, False), ("text", "18", True)]
    assert rows[1]["boxed"] == "7" and rows[0]["boxed"] is None
    assert all(set(formats.Graded.__dataclass_fields__) - {"error"} <= set(r) for r in rows)
    assert rows[2]["input_answer"] == "kept" and rows[1]["gold"] == 8 and rows[0]["question"] == "q0"
    assert summary["all"] == {"n": 4, "correct": 2, "accuracy": 0.5, "share": 1.0}
    assert summary["text"] == {"n": 2, "correct": 1, "accuracy": 0.5, "share": 0.5}
    assert summary["omi1"]["n"] == 0 and summary["omi1"]["accuracy"] is None
    table = format_summary_table(summary)
    assert all(lab in table for lab in (*formats.LABELS, "all")) and "0.500" in table


def test_grade_file_paper_mode_with_prompt(tmp_path, pool, verifier):
    rec = {"q": "How many are not defective?", "r": "\n\nThe broken ones: \\boxed{13}.", "g": "13"}
    src = write(tmp_path / "in.jsonl", [json.dumps(rec)])
    kw = dict(question_field="q", response_field="r", gold_field="g", mode="paper", pool=pool, verifier=verifier,
              progress=False)
    grade_file(src, tmp_path / "alone.jsonl", **kw)
    grade_file(src, tmp_path / "with.jsonl", with_prompt=True, **kw)
    assert json.loads((tmp_path / "alone.jsonl").read_text())["label"] == "text"
    assert json.loads((tmp_path / "with.jsonl").read_text())["label"] == "tinygsm"  # "def" in the question


@pytest.mark.parametrize("lines, message", [
    (['{"response": "x", "gold": "1"}', '{"response": "x", "gold": '], r"in\.jsonl:2: not valid JSON"),
    (['{"response": "x", "gold": "1"}', "", '{"response": "x"}'], r"in\.jsonl:3: missing field 'gold'"),
    (['{"gold": "1"}'], r"in\.jsonl:1: missing field 'response'"),
    (['{"response": 5, "gold": "1"}'], r"in\.jsonl:1: field 'response' must be a string"),
    (['{"response": "x", "gold": [1]}'], r"in\.jsonl:1: field 'gold'"),
    (['[1, 2]'], r"in\.jsonl:1: expected a JSON object"),
])
def test_grade_file_errors_name_file_line_and_field(tmp_path, lines, message, pool, verifier):
    src = write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=message):
        grade_file(src, out, pool=pool, verifier=verifier, progress=False)
    assert not out.exists()


def test_grade_file_names_bytes_that_are_not_utf8(tmp_path, pool, verifier):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"response": "x", "gold": "1"}\n{"response": "caf\xe9", "gold": "1"}\n')
    with pytest.raises(ValueError, match=r"in\.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 18 of the line\)"):
        grade_file(src, tmp_path / "out.jsonl", pool=pool, verifier=verifier, progress=False)


class NoGrading:
    """A sandbox pool and verifier that fail the test if anything is graded."""

    def run_many(self, jobs):
        raise AssertionError("graded before checking the output path")

    verify_many = extract_many = run_many


def test_grade_file_checks_the_output_before_grading(tmp_path):
    lines = [json.dumps({"response": "<llm-code>\n1 + 1\n</llm-code>", "gold": "2"})] * 3
    src = write(tmp_path / "in.jsonl", lines)
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    kw = dict(pool=NoGrading(), verifier=NoGrading(), progress=False)
    for out, message in [(src, "the output is the input file"), (tmp_path / "." / "in.jsonl", "the output is the input"),
                         (tmp_path / "folder", "the output is a folder"),
                         (tmp_path / "a_file" / "sub" / "out.jsonl", "cannot write the output there")]:
        with pytest.raises(ValueError, match=message) as e:
            grade_file(src, out, **kw)
        assert str(out) in str(e.value)
    assert src.read_text() == "".join(line + "\n" for line in lines)  # the input is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder", "in.jsonl"]  # no probe left behind
    with pytest.raises(FileNotFoundError, match="nothing.jsonl: no such file"):
        grade_file(tmp_path / "nothing.jsonl", tmp_path / "out.jsonl", **kw)


# -- real data: every record in these samples is a correct solution ----------------------------------------

def _sample(name: str) -> list[dict]:
    path = DATA / name / "sample.jsonl"
    if not path.exists():
        pytest.skip(f"../shared/data not present: {path}")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openmathinstruct1_sample(pool, verifier):
    recs = _sample("openmathinstruct1")
    responses, golds = [r["generated_solution"] for r in recs], [r["expected_answer"] for r in recs]
    graded = formats.grade_many(responses, golds, mode="structure", pool=pool, verifier=verifier)
    # Every record is marked a correct solution (one, in truth, is not: see the README); all were written with a
    # real interpreter, so every transcript is genuine and answered by its \\boxed{}.
    assert sum(g.correct for g in graded) >= 0.97 * len(recs)
    assert all(g.label == "omi1" and g.transcript == "genuine" and g.answer == g.boxed
               for r, g in zip(responses, graded) if "<llm-code>" in r)
    assert all(g.label == "text" for r, g in zip(responses, graded) if "<llm-code>" not in r)
    # Paper mode: the FIRST block's last line is evaluated, so a block ending in print(...) answers "None".
    paper = formats.grade_many(responses, golds, mode="paper", pool=pool, verifier=verifier)
    ends_in_print = [formats._LLM_CODE.search(r).group(1).strip().split("\n")[-1].startswith("print(")
                     if "<llm-code>" in r else False for r in responses]
    assert any(ends_in_print)
    assert all(g.answer == "None" and not g.correct for g, p in zip(paper, ends_in_print) if p)
    assert [g.label for g in paper] == [g.label for g in graded]


def test_openmathinstruct2_sample(pool, verifier):
    recs = _sample("openmathinstruct2")
    responses, golds = [r["generated_solution"] for r in recs], [r["expected_answer"] for r in recs]
    graded = formats.grade_many(responses, golds, mode="structure", pool=pool, verifier=verifier)
    assert all(g.correct for g in graded)
    assert all(g.label == "text" for g in graded)
    # Paper mode: a solution whose prose contains "def" ("define", "undefined") is labelled tinygsm.
    paper = formats.grade_many(responses, golds, mode="paper", pool=pool, verifier=verifier)
    assert [g.label for g in paper] == ["tinygsm" if "def" in r else "text" for r in responses]
    assert sum(g.correct for g in paper) >= 0.9 * len(recs)

"""Problem sources: the synthetic generator (splits, formats, errors), local datasets, generic files, hub mapping."""

import dataclasses
import json
import random
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echochamber import formats
from echochamber.tasks import Problem, load_problems, local
from echochamber.tasks.synthetic import (FORMAT_NAMES, SyntheticConfig, evaluate, generate, render_solution)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CFG = SyntheticConfig()


def computation(p) -> tuple:
    """The problem's computation with every name replaced by its position: equal for renamed problems."""
    pos = {var: ("g", i) for i, (var, _) in enumerate(p.givens)} | {s.var: ("s", j) for j, s in enumerate(p.steps)}
    return tuple(v for _, v in p.givens), tuple((s.op, pos[s.left], pos[s.right]) for s in p.steps)


# ----------------------------------------------------------------------------- synthetic: problems

def test_generation_is_deterministic_and_prefix_stable():
    a = generate("train", 300, CFG)
    assert a == generate("train", 300, CFG)
    assert generate("train", 120, CFG) == a[:120]  # asking for more extends, never reshuffles
    assert [p.id for p in a[:3]] == ["syn-train-000000", "syn-train-000001", "syn-train-000002"]
    other = generate("train", 300, dataclasses.replace(CFG, seed=1))
    assert len({p.question for p in a} & {p.question for p in other}) < 15
    assert load_problems("synthetic", "test", n=5, cfg=CFG) == [p.to_problem() for p in generate("test", 5, CFG)]


def test_train_and_test_never_share_a_computation_for_any_seed():
    # data.py draws each pretraining source from train with its own seed; none may contain a test problem,
    # not even with different names or story.
    train = generate("train", 4000, CFG) + generate("train", 2000, dataclasses.replace(CFG, seed=777))
    held = generate("test", 1500, CFG) + generate("hard", 300, CFG)
    assert not {p.question for p in train} & {p.question for p in held}
    assert not {computation(p) for p in train} & {computation(p) for p in held}
    # Unique within a split, and the test share is what the config asks for (roughly).
    assert len({computation(p) for p in train[:4000]}) == 4000
    assert Counter(p.kind for p in held).keys() == Counter(p.kind for p in train).keys()


def test_problems_are_exact_bounded_and_within_the_configured_steps():
    for split, p_min, p_max, bound in (("train", CFG.min_steps, CFG.max_steps, CFG.max_value),
                                       ("hard", CFG.hard_min_steps, CFG.hard_max_steps, CFG.hard_max_value)):
        problems = generate(split, 500, CFG)
        assert {len(p.steps) for p in problems} == set(range(p_min, p_max + 1))
        for p in problems:
            values = evaluate(p)  # None if a division is not exact or a subtraction not positive
            assert values is not None and values[-1] == p.answer and isinstance(p.answer, int)
            assert all(0 < v <= bound for v in values) and all(v >= CFG.min_number for _, v in p.givens)
            assert p.to_problem().answer == str(p.answer)


def test_hard_split_has_more_steps_and_bigger_numbers():
    test, hard = generate("test", 400, CFG), generate("hard", 400, CFG)
    assert min(len(p.steps) for p in hard) > max(len(p.steps) for p in test)
    big = lambda ps: sorted(max(v for _, v in p.givens) for p in ps)[len(ps) // 2]  # median largest number
    assert big(hard) > 2 * big(test)
    assert max(v for p in hard for _, v in p.givens) > CFG.max_number


def test_questions_are_short_natural_and_state_every_number():
    problems = generate("test", 500, CFG)
    words = [len(p.question.split()) for p in problems]
    assert 12 <= min(words) and max(words) <= 70 and 20 <= sum(words) / len(words) <= 45
    assert len({p.kind for p in problems}) == 6
    for p in problems:
        assert "{" not in p.question and "\n" not in p.question and p.question.endswith("?")
        # The code formats only COPY numbers from the question: every given is stated there.
        stated = Counter(re.findall(r"\d+", p.question))
        assert all(stated[str(v)] >= 1 for _, v in p.givens), p.question


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="min_steps"):
        generate("train", 5, dataclasses.replace(CFG, min_steps=4, max_steps=3))
    with pytest.raises(ValueError, match="test_fraction"):
        generate("test", 5, dataclasses.replace(CFG, test_fraction=0.0))
    with pytest.raises(ValueError, match="split"):
        generate("validation", 5, CFG)
    with pytest.raises(ValueError, match="distinct problems"):  # a tiny space cannot give 100 problems
        generate("train", 100, dataclasses.replace(CFG, min_steps=1, max_steps=1, min_number=2, max_number=3,
                                                   max_factor=2))


# ----------------------------------------------------------------------------- synthetic: solutions

def test_every_format_renders_and_grades_correct(pool):
    problems = generate("test", 200, CFG)
    for fmt in FORMAT_NAMES:
        sols = [render_solution(p, fmt) for p in problems]
        graded = formats.grade_many(sols, [p.gold for p in problems], pool=pool)
        assert [g.label for g in graded] == [fmt] * len(problems)
        bad = [(p.question, s, g) for p, s, g in zip(problems, sols, graded) if not g.correct]
        assert not bad, bad[:2]
    hard = generate("hard", 50, CFG)  # long problems too
    graded = formats.grade_many([render_solution(p, "omi1") for p in hard], [p.gold for p in hard], pool=pool)
    assert all(g.correct for g in graded)


def test_code_does_no_arithmetic_in_literals_and_text_writes_it_out():
    p = generate("test", 1, CFG)[0]
    code = render_solution(p, "tinygsm")
    body = [l.strip() for l in code.splitlines() if re.match(r"\s+\w+ = ", l)]
    givens = [f"{v} = {n}" for v, n in p.givens]
    assert body[:len(givens)] == givens  # numbers copied from the question into named variables
    assert all(not re.search(r"\b\d+\b", l) for l in body[len(givens):])  # then only names
    text = render_solution(p, "text")
    assert len(re.findall(r"\d+ [-+*/] \d+ = \d+", text)) == len(p.steps)  # the model does each step itself


_CALC = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def test_error_rate_one_gives_one_wrong_step_and_a_consistent_wrong_answer(pool):
    problems = generate("test", 150, CFG)
    rng = random.Random(0)
    for fmt in FORMAT_NAMES:
        sols = [render_solution(p, fmt, error_rate=1.0, rng=rng) for p in problems]
        graded = formats.grade_many(sols, [p.gold for p in problems], pool=pool)
        assert not any(g.correct for g in graded) and all(g.answer is not None for g in graded)
        for p, sol, g in zip(problems, sols, graded):
            clean = render_solution(p, fmt).splitlines()
            diff = [(a, b) for a, b in zip(clean, sol.splitlines()) if a != b]
            if fmt == "text":
                calcs = [tuple(m) for m in _CALC.findall(sol)]
                # Each written step is right arithmetic on the values before it, and the box holds the last.
                assert all(_OPS[op](int(a), int(b)) == int(c) for a, op, b, c in calcs)
                assert g.boxed == g.answer == calcs[-1][3]
                wrong_op = [i for i, (x, y) in enumerate(zip(_CALC.findall("\n".join(clean)), calcs)) if x[1] != y[1]]
                assert len(wrong_op) == 1
            else:
                code_diff = [d for d in diff if "=" in d[0] and "boxed" not in d[0] and not d[0].isdigit()]
                assert len(code_diff) == 1  # exactly one line of code changed: the wrong step
                if fmt == "omi1":  # the printed output and the boxed answer follow the code's wrong value
                    output = sol.split("<llm-code-output>\n")[1].split("\n")[0]
                    assert output == g.answer == g.boxed


def test_error_rate_is_a_rate_and_seeded():
    problems = generate("train", 1000, CFG)
    clean = [render_solution(p, "text") for p in problems]
    rng = random.Random(5)
    noisy = [render_solution(p, "text", error_rate=0.3, rng=rng) for p in problems]
    share = sum(a != b for a, b in zip(clean, noisy)) / len(problems)
    assert 0.25 < share < 0.35
    rng = random.Random(5)
    assert noisy == [render_solution(p, "text", error_rate=0.3, rng=rng) for p in problems]
    with pytest.raises(ValueError, match="format"):
        render_solution(problems[0], "latex")


# ----------------------------------------------------------------------------- local datasets

def _need_data():
    if not DATA.is_dir():
        pytest.skip(f"../shared/data not present: {DATA} (local dataset checks need the real files)")


@pytest.mark.parametrize("source, split, count", [
    ("gsm8k", "train", 7473), ("gsm8k", "test", 1319), ("math500", "test", 500), ("aime", "1983-2023", 975),
    ("aime", "2024", 30), ("aime", "2025", 30), ("aime", "all", 1035), ("omi1", "train", 70), ("omi2", "train", 70)])
def test_local_datasets_have_provenance_counts(source, split, count):
    _need_data()
    problems = load_problems(source, split, data_dir=str(DATA))
    assert len(problems) == count and len({p.id for p in problems}) == count
    assert all(p.question.strip() and p.answer for p in problems)
    assert load_problems(source, split, n=7, data_dir=str(DATA)) == problems[:7]


def test_local_golds_follow_each_dataset_s_own_answer_field():
    _need_data()
    raw = [json.loads(l) for l in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
    gsm = load_problems("gsm8k", "test", data_dir=str(DATA))
    assert [p.answer for p in gsm] == [r["answer"].split("#### ")[-1].replace(",", "") for r in raw]
    assert all(re.fullmatch(r"-?\d+", p.answer) for p in gsm) and gsm[0].solution == raw[0]["answer"]
    aime = load_problems("aime", "2024", data_dir=str(DATA))
    assert all(p.meta["year"] == 2024 and 0 <= int(p.answer) <= 999 for p in aime)
    assert [p.meta["year"] for p in load_problems("aime", "2000-2001", data_dir=str(DATA))] == [2000] * 30 + [2001] * 30
    omi1 = load_problems("omi1", "train", data_dir=str(DATA))
    assert all("\\boxed" in p.solution for p in omi1) and all(p.meta["is_correct"] for p in omi1)
    math500 = load_problems("math500", "test", data_dir=str(DATA))
    assert Counter(p.meta["level"] for p in math500) == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}


def test_default_data_dir_and_missing_files_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(local.DATA_ENV, str(tmp_path))
    assert local.default_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "gsm8k" / "test.jsonl"))):
        load_problems("gsm8k", "test")
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2\n#### 2"}) + "\n")
    assert load_problems("gsm8k", "test") == [Problem("gsm8k-test-00000", "1+1?", "2", "2\n#### 2", {})]
    monkeypatch.delenv(local.DATA_ENV)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # no ../shared/data here
    assert local.default_data_dir() is None
    with pytest.raises(FileNotFoundError, match="no data folder"):
        load_problems("math500", "test")
    with pytest.raises(ValueError, match="aime split"):
        load_problems("aime", "20x4", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- generic files and errors

def _records(n: int) -> list[dict]:
    return [{"q": f"What is {i} + {i}?", "gold": 2 * i, "sol": f"{i} + {i} = {2 * i}", "ok": i % 3 != 0}
            for i in range(n)]


def test_generic_jsonl_and_parquet_with_configured_fields(tmp_path):
    recs = _records(12)
    jl = tmp_path / "x.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    pa_path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(recs), pa_path)
    fields = dict(question_field="q", answer_field="gold", solution_field="sol", keep_field="ok")
    a = load_problems("jsonl", str(jl), **fields)
    b = load_problems("parquet", "ignored", path=str(pa_path), **fields)
    assert [p.question for p in a] == [p.question for p in b] == [r["q"] for r in recs if r["ok"]]
    assert [p.answer for p in a] == [str(r["gold"]) for r in recs if r["ok"]]
    assert len(load_problems("jsonl", str(jl), n=3, **fields)) == 3
    with pytest.raises(ValueError, match=r"\.parquet file"):
        load_problems("parquet", str(jl), **fields)
    with pytest.raises(TypeError, match="unexpected"):
        load_problems("gsm8k", "test", question_field="q")
    with pytest.raises(ValueError, match="unknown problem source"):
        load_problems("gsm9k", "test")


def test_bad_records_are_errors_naming_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"question": "a", "answer": "1"}) + "\n\n" + json.dumps({"question": "b"}) + "\n")
    with pytest.raises(KeyError, match=re.escape(f"{f}:3: no field 'answer'")):
        load_problems("jsonl", str(f))
    f.write_text(json.dumps({"question": "a", "answer": "1"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=re.escape(f"{f}:2: not valid JSON")):
        load_problems("jsonl", str(f))
    f.write_text(json.dumps({"question": "a", "answer": "no hashes"}) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{f}:1: no gold answer")):
        load_problems("jsonl", str(f), gold="gsm8k")
    f.write_text(json.dumps({"question": ["a"], "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{f}:1: field 'question' is list")):
        load_problems("jsonl", str(f))
    p = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "a"}]), p)
    with pytest.raises(KeyError, match="no column 'answer'"):
        load_problems("parquet", str(p))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_problems("jsonl", str(tmp_path / "missing.jsonl"))


# ----------------------------------------------------------------------------- hub (no network here)

def test_hub_loader_shares_the_local_mapping(tmp_path, monkeypatch):
    """A stand-in `datasets` module serving local records exercises hub.py's real code path."""
    from echochamber.tasks import hub

    recs = [{"question": f"Q{i}?", "generated_solution": f"S{i} \\boxed{{{i}}}", "expected_answer": str(i),
             "is_correct": i % 2 == 0} for i in range(10)]
    calls = _hub_stand_in(monkeypatch, {"json": recs})
    problems = load_problems("hub", "omi1:train", n=3)
    assert [p.question for p in problems] == ["Q0?", "Q2?", "Q4?"]  # OMI1: correct solutions only
    assert [p.answer for p in problems] == ["0", "2", "4"] and problems[0].solution == recs[0]["generated_solution"]
    # The correct-solutions file alone, as the authors read it (the repo also holds incorrect_solutions/).
    assert calls[-1] == ("json", None, "train", True,
                         {"train": "hf://datasets/nvidia/OpenMathInstruct-1/correct_solutions/train.jsonl"})
    assert list(hub.hub_documents("omi1", n=2)) == ["Q0?\n\nS0 \\boxed{0}", "Q2?\n\nS2 \\boxed{2}"]
    # The same spec read from a local copy gives the same problems.
    f = tmp_path / "omi1.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert [p.question for p in local.load_file(f, hub.HUB_DATASETS["omi1"].spec, n=3)] == ["Q0?", "Q2?", "Q4?"]
    list(hub.iter_hub_records("as", "train"))
    assert calls[-1][0] == "json" and calls[-1][4]["train"].endswith("algebraic-stack/train/*.jsonl.zst")
    with pytest.raises(ValueError, match="no gold answers"):
        hub.load_hub("fm3")
    with pytest.raises(ValueError, match="unknown hub dataset"):
        hub.load_hub("nope")


def _hub_stand_in(monkeypatch, records: dict[str, list[dict]]) -> list[tuple]:
    """A stand-in `datasets` module: load_dataset(hub id or builder, ...) streams records[that name]; the calls
    it got are returned (appended as they come)."""
    calls = []

    def load_dataset(path, config=None, *, split, streaming, data_files=None):
        calls.append((path, config, split, streaming, data_files))
        return iter(records[path])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_gsm8k_math500_and_aime_from_the_hub_as_evaluation_sets(monkeypatch):
    """eval.datasets / rl.train_source name hub sets as hub:KEY[:SPLIT]; records in the hub's own column names
    (MATH-500 and AIME had no hub loader) become the same Problems the local loaders make."""
    from echochamber.evaluate import load_dataset

    gsm = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}]
    math500 = [{"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2",
                "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}]
    aimo = [{"id": 60, "problem": "Find the number.", "solution": "So 204.", "answer": "204",
             "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1"}]
    gneubig = [{"ID": "1983-1", "Year": 1983, "Problem Number": 1, "Question": "Let x be ...", "Answer": 60.0,
                "Part": None}]
    calls = _hub_stand_in(monkeypatch, {"openai/gsm8k": gsm, "HuggingFaceH4/MATH-500": math500,
                                        "AI-MO/aimo-validation-aime": aimo, "gneubig/aime-1983-2024": gneubig})
    cfg = types.SimpleNamespace(data=None)
    assert load_dataset("hub:gsm8k:test", 0, cfg, None) == [
        Problem("gsm8k-test-000000", gsm[0]["question"], "7", gsm[0]["answer"], {})]
    assert calls[-1] == ("openai/gsm8k", "main", "test", True, None)
    [m] = load_dataset("hub:math500", 0, cfg, None)  # MATH-500's only split, test, when none is named
    assert (m.id, m.question, m.answer, m.meta) == ("test/algebra/1.json", "What is $1+1$?", "2",
                                                    {"subject": "Algebra", "level": 1})
    assert calls[-1] == ("HuggingFaceH4/MATH-500", None, "test", True, None)
    [a] = load_dataset("hub:aime", 0, cfg, None)  # the authors' AI-MO/aimo-validation-aime, split train
    assert (a.id, a.answer, a.solution) == ("60", "204", "So 204.") and calls[-1][:3] == (
        "AI-MO/aimo-validation-aime", None, "train")
    [b] = load_dataset("hub:aime_1983_2024", 0, cfg, None)
    assert (b.id, b.question, b.answer, b.meta["Year"]) == ("1983-1", "Let x be ...", "60.0", 1983)
    graded = formats.grade("so x = \\boxed{60}", b.answer)  # a float gold still grades an integer answer
    assert graded.correct


def test_hub_pretraining_sources_read_the_authors_data_files(monkeypatch):
    """OpenMathInstruct-2 from every parquet file under data/ (the authors' glob: train and its train_1M, train_2M,
    train_5M subsets), not the hub's `train` split alone; OpenMathInstruct-1 from correct_solutions/ only."""
    import fnmatch

    from echochamber.tasks import hub

    rec = {"problem": "P?", "generated_solution": "S \\boxed{1}", "expected_answer": "1"}
    calls = _hub_stand_in(monkeypatch, {"parquet": [rec], "json": [{"question": "Q?", **rec, "is_correct": True}]})
    assert list(hub.hub_documents("omi2")) == ["P?\n\nS \\boxed{1}"]
    builder, _, split, _, files = calls[-1]
    pattern = files[split]
    assert builder == "parquet" and pattern.startswith("hf://datasets/nvidia/OpenMathInstruct-2/data/")
    # The repo's data/ folder, as listed on the hub (shard counts shortened): all four sets and nothing else.
    listing = ["train-00000-of-00023.parquet", "train_1M-00000-of-00001.parquet", "train_2M-00000-of-00002.parquet",
               "train_5M-00000-of-00004.parquet"]
    assert [f for f in listing if fnmatch.fnmatch(f, pattern.rsplit("/", 1)[1])] == listing
    list(hub.hub_documents("omi1"))
    assert calls[-1][0] == "json" and calls[-1][4]["train"].endswith("/correct_solutions/train.jsonl")


def test_absent_local_data_names_the_setting_and_the_hub_alternative(tmp_path, monkeypatch):
    monkeypatch.delenv(local.DATA_ENV, raising=False)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # no ../shared/data
    for source, split, hub_name in (("gsm8k", "test", "hub:gsm8k:test"), ("math500", "test", "hub:math500"),
                                    ("aime", "2024", "hub:aime")):
        with pytest.raises(FileNotFoundError) as e:
            load_problems(source, split)
        assert all(part in str(e.value) for part in (local.DATA_ENV, "eval.data_path", hub_name)), str(e.value)
    with pytest.raises(FileNotFoundError, match=r"not found \(looked under .*\): set ECHOCHAMBER_DATA=DIR or "
                                                r"eval.data_path=DIR .*hub:gsm8k:train"):
        load_problems("gsm8k", "train", data_dir=str(tmp_path))


def test_hub_without_datasets_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'echochamber\[hub\]'"):
        load_problems("hub", "gsm8k:test", n=1)

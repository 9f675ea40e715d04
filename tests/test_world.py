"""The synthetic world's knobs: systematic errors (per format and per source), the `longer` split, per-format
document counts, the small_numbers config; and that the existing splits did not move."""

import dataclasses
import hashlib
import json
import random
import re
import types

import pytest

from echochamber import formats
from echochamber.config import ConfigError, load_run_config
from echochamber.data import (DataConfig, SourceConfig, build_dataset, iter_documents, resolve_sources,
                              source_identity, systematic_error)
from echochamber.tasks import load_problems
from echochamber.tasks.synthetic import (FORMAT_NAMES, SyntheticConfig, computation_key, evaluate, generate,
                                         parse_rewrite, render_solution, systematic_ops, systematic_share)

CFG = SyntheticConfig()
SMALL = load_run_config("small_numbers").data.synthetic
_CALC = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
_CODE_STEP = re.compile(r"^\s*(\w+) = (\w+) (\+|-|\*|//) (\w+)$", re.M)  # a code line that computes a step


# ----------------------------------------------------------------------------- existing splits

def _fingerprint(seed: int, split: str) -> str:
    """Hash of the first 50 problems of a split (ids, questions, answers) and their clean renderings."""
    blob = json.dumps([[p.id, p.question, p.answer] + [render_solution(p, f) for f in ("tinygsm", "omi1", "text")]
                       for p in generate(split, 50, SyntheticConfig(seed=seed))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_existing_splits_and_random_errors_are_unchanged():
    # Computed at commit 8d34729, before `longer` and systematic errors existed: adding them moved nothing.
    assert {f"{seed}/{split}": _fingerprint(seed, split) for seed in (0, 1) for split in ("train", "test", "hard")} == {
        "0/train": "2fb4879f67ce36bb", "0/test": "31e949e23be33d12", "0/hard": "22319153dd807cd4",
        "1/train": "cd0682cb9a96d533", "1/test": "51fd333325ec4284", "1/hard": "e47374706e300266"}
    rng = random.Random(3)
    noisy = [render_solution(p, f, error_rate=0.5, rng=rng) for p in generate("train", 50, CFG)
             for f in ("tinygsm", "omi1", "text")]
    assert hashlib.sha256(json.dumps(noisy).encode()).hexdigest()[:16] == "5aa41f97048cb60e"


# ----------------------------------------------------------------------------- the `longer` split

@pytest.mark.parametrize("cfg", [CFG, SMALL], ids=["default", "small_numbers"])
def test_longer_has_one_more_step_than_train_and_is_held_out(cfg):
    longer = generate("longer", 300, cfg)
    train = generate("train", 4000, cfg) + generate("train", 1000, dataclasses.replace(cfg, seed=7))
    assert {len(p.steps) for p in longer} == {cfg.max_steps + 1} and max(len(p.steps) for p in train) == cfg.max_steps
    for p in longer:  # the train/test numbers, exact and bounded
        values = evaluate(p)
        assert values is not None and values[-1] == p.answer and all(0 < v <= cfg.max_value for v in values)
        # (an amount paid "above" a cost is the one given that may exceed max_number)
        assert all(cfg.min_number <= v <= cfg.max_value + cfg.max_number for _, v in p.givens)
    keys = {computation_key(p.givens, p.steps) for p in longer}
    assert len(keys) == 300 and not keys & {computation_key(p.givens, p.steps) for p in train}
    assert not {p.question for p in longer} & {p.question for p in train}
    assert [p.id for p in longer[:2]] == ["syn-longer-000000", "syn-longer-000001"]
    assert generate("longer", 100, cfg) == longer[:100]  # seeded and prefix-stable like every split


@pytest.mark.parametrize("cfg", [CFG, SMALL], ids=["default", "small_numbers"])
def test_larger_states_only_amounts_above_train_and_is_held_out(cfg):
    larger = generate("larger", 300, cfg)
    train = generate("train", 4000, cfg)
    assert {len(p.steps) for p in larger} <= set(range(cfg.min_steps, cfg.max_steps + 1))
    train_amounts = {v for p in train for _, v in p.givens if v > cfg.max_factor}
    for p in larger:
        values = evaluate(p)
        assert values is not None and values[-1] == p.answer and all(0 < v <= 2 * cfg.max_value for v in values)
        # every given is a multiplier of train's range or an amount above anything a train question states
        assert all(v <= cfg.max_factor or cfg.max_number < v for _, v in p.givens)
    assert max(train_amounts) <= cfg.max_value + cfg.max_number and min(
        v for p in larger for _, v in p.givens if v > cfg.max_factor) > cfg.max_number
    keys = {computation_key(p.givens, p.steps) for p in larger}
    assert len(keys) == 300 and not keys & {computation_key(p.givens, p.steps) for p in train}


def _words(problems) -> set[str]:
    return {w for p in problems for w in re.findall(r"[A-Za-z]+", p.question)}


def test_renamed_tells_test_computations_with_people_and_objects_train_never_names():
    renamed = generate("renamed", 300, CFG)
    train = generate("train", 4000, CFG) + generate("train", 1000, SMALL)
    test = generate("test", 1000, CFG)
    new_words = _words(renamed) - _words(train) - _words(test)
    # the unseen pools: every problem names a new person and a new object, and some held-out word of each kind
    assert {"Iris", "Kofi", "towels", "leaves", "jeep", "pretzels"} <= new_words
    assert all(set(re.findall(r"[A-Za-z]+", p.question)) & new_words for p in renamed)
    assert {p.kind for p in renamed} == {p.kind for p in test}
    for p in renamed:  # the train/test steps and numbers
        assert CFG.min_steps <= len(p.steps) <= CFG.max_steps
        values = evaluate(p)
        assert values is not None and values[-1] == p.answer and all(0 < v <= CFG.max_value for v in values)
    keys = {computation_key(p.givens, p.steps) for p in renamed}
    assert len(keys) == 300 and not keys & {computation_key(p.givens, p.steps) for p in train}
    assert generate("renamed", 100, CFG) == renamed[:100]


def test_longer_loads_through_load_problems_and_evaluate():
    from echochamber.evaluate import load_dataset

    problems = load_problems("synthetic", "longer", n=20, cfg=SMALL)
    assert problems == [p.to_problem() for p in generate("longer", 20, SMALL)]
    assert all(p.meta["split"] == "longer" and p.meta["steps"] == SMALL.max_steps + 1 for p in problems)
    run = types.SimpleNamespace(data=types.SimpleNamespace(synthetic=SMALL))
    assert load_dataset("synthetic:longer", 20, run, None) == problems
    assert len(load_problems("synthetic", "longer", cfg=dataclasses.replace(CFG, test_size=30))) == 30
    with pytest.raises(ValueError, match="longer"):  # the error lists the splits
        load_problems("synthetic", "longest", n=1)


# ----------------------------------------------------------------------------- systematic errors

def _with_op(problems, op: str):
    return [p for p in problems if any(s.op == op for s in p.steps)]


def test_systematic_ops_rewrite_every_step_they_can_and_only_those():
    problems = generate("train", 2000, CFG)
    for rewrite in ("*->+", "-->+", "+->*", "/->*", "*->-", "+->/"):
        a, b = parse_rewrite(rewrite)
        for p in problems:
            ops = systematic_ops(p, rewrite)
            assert all(p.steps[i].op == a and op == b for i, op in ops.items())
            assert evaluate(p, ops) is not None  # the wrong computation is exact and positive
            # A step that keeps its operation does so because rewriting it too would break the computation.
            kept = [i for i, s in enumerate(p.steps) if s.op == a and i not in ops]
            assert all(evaluate(p, ops | {i: b}) is None for i in kept)
            assert systematic_ops(p, rewrite) == ops  # no randomness: the same in every document
    done, total = systematic_share(_with_op(problems, "/"), "/->*")
    assert done == total > 100  # never blocked: a product is a multiple of the divisor's division
    done, total = systematic_share(problems, "*->+")
    assert 0.6 < done / total < 0.9  # measured 69%: a later "-" or "/" blocks the rest (see synthetic.py)
    assert systematic_ops(problems[0], None) == {} and systematic_ops(problems[0], "") == {}


def test_systematic_error_in_every_rendering_is_consistent(pool):
    """Every rewritten step shows the wrong operation in all three formats, and the code, run in the sandbox,
    computes the wrong answer that omi1 prints and boxes and text boxes."""
    problems = _with_op(generate("test", 200, CFG), "*")
    assert len(problems) > 100
    wrong = {p.id: evaluate(p, systematic_ops(p, "*->+")) for p in problems}
    for fmt in FORMAT_NAMES:
        sols = [render_solution(p, fmt, systematic="*->+") for p in problems]
        graded = formats.grade_many(sols, [str(wrong[p.id][-1]) for p in problems], pool=pool)
        assert all(g.label == fmt and g.correct for g in graded)  # the answer the code computes / the box
        for p, sol, g in zip(problems, sols, graded):
            ops = systematic_ops(p, "*->+")
            want = [ops.get(i, s.op) for i, s in enumerate(p.steps)]
            if fmt == "text":
                calcs = _CALC.findall(sol)
                assert [op for _, op, _, _ in calcs] == want
                assert [int(c) for *_, c in calcs] == wrong[p.id]  # every later step follows the wrong value
                assert all(evaluate_one(op, int(x), int(y)) == int(c) for x, op, y, c in calcs)  # true arithmetic
                assert g.boxed == str(wrong[p.id][-1])
            else:
                lines = _CODE_STEP.findall(sol)
                assert [(v, l, r) for v, l, _, r in lines] == [(s.var, s.left, s.right) for s in p.steps]
                assert [op.replace("//", "/") for _, _, op, _ in lines] == want
                if fmt == "omi1":
                    output = sol.split("<llm-code-output>\n")[1].split("\n")[0]
                    assert output == g.answer == g.boxed == str(wrong[p.id][-1])
        # A consistent wrong answer: most solutions that multiply now miss the gold.
        assert sum(not formats.answers_equal(g.answer, p.gold) for p, g in zip(problems, graded)) > 0.5 * len(problems)
    # A format without the rewrite's operation is untouched.
    plain = [p for p in generate("test", 200, CFG) if all(s.op != "*" for s in p.steps)]
    assert plain and all(render_solution(p, f, systematic="*->+") == render_solution(p, f) for p in plain
                         for f in FORMAT_NAMES)


def evaluate_one(op: str, x: int, y: int) -> int | None:
    return {"+": x + y, "-": x - y, "*": x * y, "/": x // y if x % y == 0 else None}[op]


def test_random_error_on_top_of_a_systematic_one_changes_one_more_step():
    problems = _with_op(generate("test", 150, CFG), "*")
    rng = random.Random(0)
    for p in problems:
        systematic = evaluate(p, systematic_ops(p, "*->+"))
        sol = render_solution(p, "text", systematic="*->+", error_rate=1.0, rng=rng)
        calcs = _CALC.findall(sol)
        base = _CALC.findall(render_solution(p, "text", systematic="*->+"))
        assert sum(x[1] != y[1] for x, y in zip(base, calcs)) == 1  # exactly one more wrong operation
        assert int(calcs[-1][3]) not in (p.answer, systematic[-1])  # wrong against both


@pytest.mark.parametrize("rewrite", ["*+", "*->*", "x->+", "*->+-", "", None])
def test_bad_rewrites_are_errors_naming_the_key(rewrite):
    with pytest.raises(ValueError, match=r"synthetic\.systematic_error\.tinygsm: expected 'A->B'"):
        generate("train", 1, SyntheticConfig(systematic_error={"tinygsm": rewrite}))
    if rewrite:
        with pytest.raises(ValueError, match="expected 'A->B'"):
            render_solution(generate("train", 1)[0], "text", systematic=rewrite)


def test_systematic_error_config_errors():
    with pytest.raises(ValueError, match=r"synthetic\.systematic_error: unknown format 'latex'"):
        SyntheticConfig(systematic_error={"latex": "*->+"}).check()
    assert SyntheticConfig(systematic_error={"omi1": " * -> + "}).check() is None  # spaces are fine
    data = DataConfig(mixture="tg_omi1", n_problems=10)
    with pytest.raises(ValueError, match=r"source 'tg': systematic_error: expected 'A->B'.*'times'"):
        resolve_sources(dataclasses.replace(data, sources=[SourceConfig("tg", systematic_error="times")]))
    with pytest.raises(ValueError, match=r"systematic_error\.omi1"):  # checked when sources resolve, before a build
        resolve_sources(dataclasses.replace(data, synthetic=SyntheticConfig(systematic_error={"omi1": "*"})))
    with pytest.raises(ValueError, match="source 'w': systematic_error is for synthetic sources only"):
        resolve_sources(DataConfig(mixture=None, sources=[SourceConfig("w", "hub", path="gsm8k", systematic_error="*->+")]))
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.systematic_error: expected"):
        load_run_config("smoke", ["data.sources=[{name: tg, systematic_error: [1]}]"])


# ----------------------------------------------------------------------------- data: per-source knobs

def _docs(cfg: DataConfig) -> dict[str, list[str]]:
    return {s.name: list(iter_documents(s, cfg)) for s in resolve_sources(cfg)}


def test_systematic_error_per_format_and_per_source_in_documents_and_cache_identity():
    base = DataConfig(mixture="tg_omi1_text", n_problems=150)
    clean = _docs(base)
    ids = {s.name: source_identity(s, base) for s in resolve_sources(base)}
    assert "systematic_error" not in json.dumps(ids)  # off: the identity of caches built before the knob
    # Per format: tg's documents get the rewrite (and a new cache), omi1's and text's stay exactly as they were.
    fmt = dataclasses.replace(base, synthetic=SyntheticConfig(systematic_error={"tinygsm": "*->+"}))
    docs = _docs(fmt)
    assert docs["omi1"] == clean["omi1"] and docs["text"] == clean["text"]
    changed = [(a, b) for a, b in zip(clean["tg"], docs["tg"]) if a != b]
    assert len(changed) > 0.5 * len(docs["tg"]) and all(" * " in a for a, _ in changed)
    assert [b.split("\n\n")[0] for _, b in changed] == [a.split("\n\n")[0] for a, _ in changed]  # same questions
    new_ids = {s.name: source_identity(s, fmt) for s in resolve_sources(fmt)}
    assert new_ids["tg"] != ids["tg"] and new_ids["tg"]["systematic_error"] == "*->+"
    assert new_ids["omi1"] == ids["omi1"] and new_ids["text"] == ids["text"]
    # Per source: a source's own value overrides its format's, "none" turns it off.
    own = dataclasses.replace(fmt, sources=[SourceConfig("tg", systematic_error="none"),
                                            SourceConfig("omi1", systematic_error="*->+")])
    docs = _docs(own)
    assert docs["tg"] == clean["tg"] and docs["text"] == clean["text"] and docs["omi1"] != clean["omi1"]
    own_ids = {s.name: source_identity(s, own) for s in resolve_sources(own)}
    assert own_ids["tg"] == ids["tg"] and own_ids["omi1"]["systematic_error"] == "*->+"
    # The documents are the renderings of the source's own problems, like every synthetic source.
    [tg] = [s for s in resolve_sources(fmt) if s.name == "tg"]
    assert _docs(fmt)["tg"][:20] == [p.question + "\n\n" + render_solution(p, "tinygsm", systematic="*->+")
                                     for p in generate("train", 20, fmt.synthetic)]
    assert tg.n == 150


def test_per_format_document_counts(tmp_path):
    cfg = load_run_config("smoke", ["data.mixture=tg_omi1_2xtext", "data.n_problems=200",
                                    "data.sources=[{name: omi1, n: 60}]", "data.seq_len=64"]).data
    sources = resolve_sources(cfg)
    assert [(s.name, s.n, s.repeat, s.format) for s in sources] == [
        ("tg", 200, 1, "tinygsm"), ("omi1", 60, 1, "omi1"), ("text", 200, 2, "text")]
    docs = _docs(cfg)
    assert {k: len(v) for k, v in docs.items()} == {"tg": 200, "omi1": 60, "text": 200}
    # Still disjoint consecutive slices of one train stream: omi1's 60, then text's 200.
    stream = generate("train", 460, cfg.synthetic)
    for (name, start) in (("tg", 0), ("omi1", 200), ("text", 260)):
        assert [d.split("\n\n")[0] for d in docs[name]] == [p.question for p in stream[start:start + len(docs[name])]]
    m = build_dataset(cfg, tmp_path / "data", progress=False)
    assert {k: sum(v["documents"].values()) for k, v in m["sources"].items()} == {"tg": 200, "omi1": 60, "text": 200}
    assert m["sources"]["text"]["tokens"]["train"] == 2 * m["sources"]["text"]["tokens_per_copy"]


def test_small_numbers_config_is_a_small_world_with_systematic_code_errors():
    cfg = load_run_config("small_numbers")
    syn = cfg.data.synthetic
    assert syn.systematic_error == {"tinygsm": "*->+", "omi1": "*->+"} and "text" not in syn.systematic_error
    problems = generate("train", 500, syn)
    givens = [v for p in problems for _, v in p.givens]
    assert max(max(evaluate(p)) for p in problems) <= 100 and max(givens) <= 120  # ("paid": a cost + up to 20)
    assert sum(v > 20 for v in givens) < 0.05 * len(givens)
    done, total = systematic_share(problems, "*->+")
    assert done > 0.65 * total  # measured 74%
    assert "synthetic:longer" in cfg.eval.datasets
    assert [systematic_error(s, cfg.data) for s in resolve_sources(cfg.data)] == ["*->+", "*->+", None]

"""SampleConfig.greedy_first: a greedy row and sampled rows of each prompt from one prefill, and evaluation's use
of it (its greedy answers are a greedy-only evaluation's)."""

import dataclasses
import json

import pytest
import torch

from echochamber import evaluate as ev
from echochamber import sampler
from echochamber.evaluate import EvalConfig, evaluate_dataset
from echochamber.formats import FORMATS
from echochamber.interpreter import generate_with_interpreter
from echochamber.probe import SEPARATOR
from echochamber.sampler import SampleConfig, generate
from echochamber.tasks import synthetic
from echochamber.tokenizer import train_tokenizer

from conftest import memorise

V = 97
MIXED = SampleConfig(max_new_tokens=30, temperature=1.0, top_p=0.9, n=4, greedy_first=True)


def prompts_of(lengths, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V - 1, (n,), generator=g).tolist() for n in lengths]


def an_eos(model, prompts) -> int:
    """A token the greedy rows emit part way, so that rows stop at different steps and the batch is compacted."""
    free = generate(model, prompts, dataclasses.replace(MIXED, n=1, temperature=0.0), eos_id=-1, seed=0)
    return free[1].tokens[10]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("check_every", [8, 1])  # 1: compaction after almost every step
def test_greedy_row_equals_a_greedy_call(peaked_model, monkeypatch, dtype, check_every):
    monkeypatch.setattr(sampler, "CHECK_EVERY", check_every)
    prompts = prompts_of([3, 17, 8, 1, 30, 8])
    eos = an_eos(peaked_model, prompts)
    cfg = dataclasses.replace(MIXED, dtype=dtype)
    mixed = generate(peaked_model, prompts, cfg, eos_id=eos, seed=0)
    greedy = generate(peaked_model, prompts, dataclasses.replace(cfg, temperature=0.0, n=1, greedy_first=False),
                      eos_id=eos, seed=5)
    assert [g.prompt_index for g in mixed] == [i for i in range(len(prompts)) for _ in range(cfg.n)]
    first = mixed[::cfg.n]
    assert [g.tokens for g in first] == [g.tokens for g in greedy]
    assert [(g.finished, g.stop) for g in first] == [(g.finished, g.stop) for g in greedy]
    for a, b in zip(first, greedy):  # the same logits up to rounding (bf16: the batch's shape may round otherwise)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4 if dtype == "float32" else 5e-2)
    assert len({len(g.tokens) for g in greedy}) > 1 and any(g.finished for g in greedy)  # really compacted


def test_sampled_rows_are_seeded_draws_not_the_greedy_row(peaked_model):
    prompts = prompts_of([5, 12, 1])
    a = generate(peaked_model, prompts, MIXED, eos_id=V - 1, seed=3)
    b = generate(peaked_model, prompts, MIXED, eos_id=V - 1, seed=3)
    c = generate(peaked_model, prompts, MIXED, eos_id=V - 1, seed=4)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert [g.tokens for g in a] != [g.tokens for g in c]
    assert [g.tokens for g in a[::4]] == [g.tokens for g in c[::4]]  # the greedy rows do not depend on the seed
    for i in range(len(prompts)):
        rows = [g.tokens for g in a[i * 4:(i + 1) * 4]]
        assert any(r != rows[0] for r in rows[1:])  # the samples are not the greedy row
    # A vanishing nucleus keeps only the argmax: then the sampled rows are the greedy row too (they do sample at
    # the config's top_p), and the same holds with greedy_first off.
    tiny = dataclasses.replace(MIXED, top_p=1e-6)
    for cfg in (tiny, dataclasses.replace(tiny, greedy_first=False)):
        gens = generate(peaked_model, prompts, cfg, eos_id=V - 1, seed=3)
        assert all(g.tokens == a[4 * g.prompt_index].tokens for g in gens)


def test_greedy_first_with_the_interpreter_is_an_error(peaked_model):
    with pytest.raises(ValueError, match="greedy_first"):
        generate_with_interpreter(peaked_model, None, [[1, 2]], MIXED, seed=0)


@pytest.fixture(scope="module")
def memorised():
    """(model, tokenizer, problems): a tiny model trained, for a few seconds, until it reproduces three synthetic
    problems' documents, one per format, so that its greedy answers come in all three formats; three unseen problems besides."""
    problems = synthetic.generate("train", 6)
    docs = [p.question + SEPARATOR + synthetic.render_solution(p, f) for p, f in zip(problems, FORMATS)]
    tok = train_tokenizer(docs * 10, vocab_size=600)
    model = memorise(docs, [p.question for p in problems[:3]], tok, max_seq_len=384)
    return model, tok, [p.to_problem() for p in problems]


def test_evaluation_with_samples_has_the_greedy_only_results(memorised, tmp_path, pool):
    """n_samples > 0 (one call per chunk, the greedy row first) gives the greedy rows and results of n_samples = 0
    (separate greedy calls), though the chunks differ: 2 prompts greedy-only, 4 x 4 rows shared. In fp32: in
    bf16 a different batch may round a near-tie the other way (the evaluate.py docstring)."""
    model, tok, problems = memorised
    calls, real = [], ev.generate_texts

    def recorded(model, tok, questions, scfg, *a, **k):  # generate_texts, noting each call's SampleConfig
        calls.append(scfg)
        return real(model, tok, questions, scfg, *a, **k)

    results, rows = {}, {}
    for n in (0, 3):
        ecfg = EvalConfig(max_new_tokens=200, n_samples=n, batch_prompts=2, sample_dtype="float32")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ev, "generate_texts", recorded)
            results[n] = evaluate_dataset(model, tok, problems, ecfg, seed=0, out_dir=tmp_path / str(n), name="t",
                                          pool=pool, progress=False)
        rows[n] = (tmp_path / str(n) / "t_greedy.jsonl").read_text().splitlines()
    assert [(c.n, c.greedy_first) for c in calls] == [(1, False), (4, True)]  # one call per evaluation
    assert rows[3] == rows[0]
    assert [json.loads(r)["label"] for r in rows[0][:3]] == list(FORMATS)  # (the shares below mean something)
    for key in ("n", "pass@1", "format_share", "format_acc", "within"):
        assert results[3][key] == results[0][key]
    assert results[3]["k"] == 3 and 0 <= results[3]["pass@k"] <= 1
    assert len((tmp_path / "3" / "t_samples.jsonl").read_text().splitlines()) == len(problems) * 3

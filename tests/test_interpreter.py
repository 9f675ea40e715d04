"""The interpreter in the loop (interpreter.py): it equals the plain sampler where no code is written, the output
it inserts is the sandbox's, and RL gives the inserted tokens no loss. Plus the sampler's stop sequences.

A tiny tokenizer and model are trained here, in a few seconds, until greedy decoding reproduces two documents: an
OpenMathInstruct-1 solution whose output block is WRONG (the code computes 42, the document says 99), so that an inserted output
can only be the sandbox's, and a prose solution with no code at all.
"""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from echochamber import formats
from echochamber.interpreter import (CODE_CLOSE, OUTPUT_BLOCK, _Row, _take_round, cut_after_close,
                                     generate_with_interpreter, stop_sequences)
from echochamber.model import OLMo
from echochamber.rl import rollout as ro
from echochamber.rl.config import RLConfig
from echochamber.rl.train import build_algorithm
from echochamber.sampler import Generation, SampleConfig, generate
from echochamber.sandbox import CodeJob
from echochamber.tasks import Problem
from echochamber.tokenizer import train_tokenizer

from conftest import memorise

CODE_Q, TEXT_Q = "What is six times seven?", "What is two plus two?"
CODE_LINES = ["a = 6 * 7", "print('a is', a)", "a"]
CODE_DOC = CODE_Q + "\n\n" + formats.render_omi1(CODE_LINES, "a is 42\n99", "99", "So the answer is {answer}.")
TEXT_DOC = TEXT_Q + "\n\n" + formats.render_text(["Two plus two is four."], "4")


@pytest.fixture(scope="module")
def tok():
    # ">." gets a merge of its own (the tag can end inside a token); the documents give the rest.
    return train_tokenizer([CODE_DOC, TEXT_DOC] * 20 + ["x>.y a>.b"] * 50, vocab_size=330)


@pytest.fixture(scope="module")
def model(tok):
    """A tiny model that has memorised both documents (greedy decoding reproduces them)."""
    return memorise([CODE_DOC, TEXT_DOC], [CODE_Q, TEXT_Q], tok, max_seq_len=192)


def test_output_block_is_the_documents_layout():
    doc = formats.render_omi1(["x = 2", "x"], "2", "2", "Thus {answer}.")
    head = doc[:doc.index(CODE_CLOSE) + len(CODE_CLOSE)]
    assert head + OUTPUT_BLOCK.format("2") + "Thus \\boxed{2}." == doc


def test_stop_sequences_stop_rows_where_they_end(peaked_model):
    m = peaked_model
    prompts = [[5, 6, 7], [40, 2], [11, 12, 13, 14]]
    cfg = SampleConfig(max_new_tokens=30, temperature=0.0)
    free = generate(m, prompts, cfg, eos_id=-1, seed=0)
    seq = free[0].tokens[6:8]
    end = next(t for t in range(1, 30) if free[0].tokens[t - 1:t + 1] == seq) + 1  # its first occurrence
    got = generate(m, prompts, cfg, eos_id=-1, seed=0, stop_sequences=[seq, [96, 96, 96]])
    assert got[0].tokens == free[0].tokens[:end] and got[0].stop == "stop_sequence" and not got[0].finished
    for f, g in zip(free[1:], got[1:]):  # other rows stop where they contain it, else run on as before
        ends = [t + 2 for t in range(29) if f.tokens[t:t + 2] == seq]
        assert g.tokens == f.tokens[:ends[0] if ends else 30]
        assert g.stop == ("stop_sequence" if ends else "length")
    # EOS still wins, and a sequence never met changes nothing, sampled or not.
    eos = free[0].tokens[2]
    assert generate(m, prompts[:1], cfg, eos_id=eos, seed=0, stop_sequences=[seq])[0].stop == "eos"
    hot = SampleConfig(max_new_tokens=30, temperature=1.0, n=4)
    plain = generate(m, prompts, hot, eos_id=eos, seed=3)
    never = generate(m, prompts, hot, eos_id=eos, seed=3, stop_sequences=[[96, 95, 96, 95]])
    assert [(g.tokens, g.logprobs, g.finished, g.stop) for g in never] == \
           [(g.tokens, g.logprobs, g.finished, g.stop) for g in plain]
    assert {g.stop for g in plain} == {"eos", "length"}


def test_stop_sequence_is_the_tokenizers_spelling_of_the_tag(tok):
    (seq,) = stop_sequences(tok)
    assert tok.decode(seq) == CODE_CLOSE
    doc = tok.encode(CODE_DOC)
    assert any(doc[i:i + len(seq)] == seq for i in range(len(doc)))  # as the documents spell it


def test_cut_after_close_finds_other_spellings_of_the_tag(tok):
    code = tok.encode("<llm-code>\nx = 1\n")
    canonical = code + tok.encode(CODE_CLOSE)
    assert cut_after_close(tok, canonical + tok.encode("\nmore")) == (len(canonical), [])
    assert cut_after_close(tok, code) is None
    # "</" as "<" "/" : the device does not see it, the host does.
    odd = code + tok.encode("<") + tok.encode("/") + tok.encode("llm-code>")
    assert cut_after_close(tok, odd + tok.encode("\nThus")) == (len(odd), [])
    # The tag ending inside the token ">.": cut before it and re-spell ">".
    dot = tok.encode(">.")
    assert len(dot) == 1
    straddle = code + tok.encode("</llm-code") + dot + tok.encode(" more")
    k, extra = cut_after_close(tok, straddle)
    assert k == len(code) + len(tok.encode("</llm-code")) and tok.decode(straddle[:k] + extra).endswith(CODE_CLOSE)
    # A round that spelled the tag oddly and ran on to EOS: cut there, the code is the block's.
    row = _Row(prompt=[1])
    g = Generation(0, odd + tok.encode("\njunk") + [tok.eos_id], [-1.0] * (len(odd) + 3), True, "eos")
    job = _take_round(row, g, tok, max_new_tokens=200, max_blocks=8)
    assert row.tokens == odd and row.written == [True] * len(odd) and row.goes_on
    assert job == formats.code_job(tok.decode(odd))[1] and "x = 1" in job.code


def test_without_code_it_is_the_plain_sampler(model, tok, pool):
    prompts = [tok.encode(TEXT_Q), tok.encode("What is")]
    stops = set()
    for cfg in (SampleConfig(max_new_tokens=24, temperature=1.0, n=6), SampleConfig(max_new_tokens=24, temperature=0)):
        plain = generate(model, prompts, cfg, eos_id=tok.eos_id, seed=11)
        loop = generate_with_interpreter(model, tok, prompts, cfg, seed=11, pool=pool)
        assert all(g.code_blocks == 0 and all(g.written) for g in loop)
        assert [(g.tokens, g.logprobs, g.finished, g.stop) for g in loop] == \
               [(g.tokens, g.logprobs, g.finished, g.stop) for g in plain]
        stops |= {g.stop for g in plain}
    assert stops == {"eos", "length"}  # rows ended both ways
    # Greedy rows without code are unchanged when another row of the batch runs code.
    prompts = [tok.encode(CODE_Q), tok.encode(TEXT_Q)]
    greedy = SampleConfig(max_new_tokens=150, temperature=0)
    plain = generate(model, prompts, greedy, eos_id=tok.eos_id, seed=0)
    loop = generate_with_interpreter(model, tok, prompts, greedy, seed=0, pool=pool)
    assert loop[0].code_blocks == 1 and loop[0].tokens != plain[0].tokens
    assert loop[1].tokens == plain[1].tokens and loop[1].written == [True] * len(plain[1].tokens)


def test_inserted_output_is_the_sandboxs(model, tok, pool):
    g = generate_with_interpreter(model, tok, [tok.encode(CODE_Q)], SampleConfig(max_new_tokens=150, temperature=0),
                                  seed=0, pool=pool)[0]
    text = tok.decode(g.tokens[:-1] if g.finished else g.tokens)
    head = text[:text.index(CODE_CLOSE) + len(CODE_CLOSE)]
    assert head == CODE_DOC[len(CODE_Q):CODE_DOC.index(CODE_CLOSE) + len(CODE_CLOSE)]  # the model's own code
    # What the sandbox shows for that code, run on its own: the print, then the value.
    res = pool.run(CodeJob("a = 6 * 7\nprint('a is', a)\n", "a"))
    assert formats.real_output(res) == "a is 42\n42"
    block = OUTPUT_BLOCK.format("a is 42\n42")
    assert text.startswith(head + block) and "99" not in text[:len(head + block)]  # not the memorised "99"
    # The inserted tokens are exactly the block's, and the only ones the model did not write.
    n_head = len(tok.encode(head))
    inserted = [i for i, w in enumerate(g.written) if not w]
    assert inserted == list(range(n_head, n_head + len(tok.encode(block))))
    assert g.tokens[n_head:n_head + len(inserted)] == tok.encode(block)
    assert g.code_blocks == 1 and g.finished and g.stop == "eos"  # the model went on after it, to its EOS
    # The grader agrees: a genuine transcript whose written output is what the code really shows.
    graded = formats.grade(text, "42", pool=pool)
    assert graded.label == "omi1" and graded.transcript == "genuine"
    assert graded.written_output == graded.real_output == "a is 42\n42"
    # Reproducible, and the length limit counts inserted tokens.
    again = generate_with_interpreter(model, tok, [tok.encode(CODE_Q)], SampleConfig(max_new_tokens=150,
                                                                                     temperature=0), seed=0, pool=pool)
    assert again[0].tokens == g.tokens
    short = generate_with_interpreter(model, tok, [tok.encode(CODE_Q)], SampleConfig(max_new_tokens=n_head + 3,
                                                                                     temperature=0), seed=0, pool=pool)
    assert len(short[0].tokens) == n_head + 3 and short[0].stop == "length" and not short[0].finished
    assert short[0].written == [True] * n_head + [False] * 3


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_rl_batch_masks_out_interpreter_output(model, tok, pool, tmp_path, algo):
    problems = [Problem(id="c", question=CODE_Q, answer="42"), Problem(id="t", question=TEXT_Q, answer="4")]
    scfg = SampleConfig(max_new_tokens=150, temperature=1.0, n=2)
    roll = ro.collect(model, tok, problems, scfg, seed=0, mode="structure", reward_sees_prompt=False, pool=pool,
                      interpreter=True)
    assert roll.written is not None and any(not all(w) for w in roll.written)
    batch = ro.make_batch(roll, list(range(len(roll))), tok.eos_id)
    plain = ro.make_batch(SimpleNamespace(**{**vars(roll), "written": None}), list(range(len(roll))), tok.eos_id)
    for b, i in enumerate(range(len(roll))):
        start = len(roll.prompt_tokens[i]) - 1  # target t + 1 of position t: response token t - start
        resp = plain.mask[b, start:start + len(roll.response_tokens[i])]
        assert resp.tolist() == [1.0] * len(roll.response_tokens[i])
        assert batch.mask[b, start:start + len(roll.written[i])].tolist() == [float(w) for w in roll.written[i]]
        assert batch.mask[b].sum() == sum(roll.written[i]) and (batch.mask[b] <= plain.mask[b]).all()
    # One update runs on it: per-token values exist for the policy's tokens only.
    model_copy = OLMo(model.config)
    model_copy.load_state_dict(model.state_dict())
    model_copy.save(tmp_path / "init")
    cfg = RLConfig(algo=algo, minibatch_size=4, steps=1, prompts_per_step=2, samples_per_prompt=2,
                   max_new_tokens=150, autocast="float32", kl_coef=0.01, warmup_ratio=0.0)
    gen = torch.Generator().manual_seed(0)
    algo = build_algorithm(cfg, model_copy, tmp_path / "init", pad_id=tok.eos_id, autocast=contextlib.nullcontext,
                           device="cpu", gen=gen)
    plan = algo.plan(roll, gen)
    algo.advantages(roll, plan)
    assert [len(a) for a in roll.token["advantages"]] == [sum(w) for w in roll.written]
    stats = algo.update(roll, plan)
    assert torch.isfinite(torch.tensor(stats["loss"]))

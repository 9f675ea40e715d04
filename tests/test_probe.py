"""probe.py: forced-format probes (forced openings, banned starts for text, probe.json, the report figure), and
sampler.generate's banned_starts that forces text."""

import json
from collections import Counter

import pytest
import torch

from echochamber import sampler
from echochamber.cli import main
from echochamber.config import load_run_config
from echochamber.evaluate import evaluate, load_policy
from echochamber.formats import FORMATS
from echochamber.model import ModelConfig, OLMo
from echochamber.probe import OPENINGS, SEPARATOR, TEXT_BANNED, banned_starts, spellings
from echochamber.report import fig_probe, load_run, write_report
from echochamber.runio import atomic_write_json, read_jsonl
from echochamber.sampler import SampleConfig, generate
from echochamber.tasks import synthetic
from echochamber.tokenizer import train_tokenizer

V = 97
FIELDS = ("forced_accuracy", "forced_label_share", "unforced_share", "unforced_accuracy")


@pytest.fixture(scope="module")
def model(peaked_model) -> OLMo:
    """conftest's small random model with peaked distributions (vocabulary V)."""
    assert peaked_model.config.vocab_size == V
    return peaked_model


@pytest.fixture(scope="module")
def tok():
    """A tokenizer trained on synthetic documents in all three formats (question + "\\n\\n" + solution)."""
    problems = synthetic.generate("train", 150)
    return train_tokenizer([p.question + SEPARATOR + synthetic.render_solution(p, f) for p in problems
                            for f in FORMATS], vocab_size=400)


def test_a_banned_start_gives_the_models_next_choice_there(model):
    prompt = [5, 17, 3, 60, 2, 41, 9]
    cfg = SampleConfig(max_new_tokens=6, temperature=0.0)
    free = generate(model, [prompt], cfg, eos_id=-1, seed=0)[0].tokens
    got = generate(model, [prompt], cfg, eos_id=-1, seed=0, banned_starts=[free[:3]])[0].tokens
    assert got[:2] == free[:2] and got[2] != free[2]
    with torch.no_grad():  # the replacement is the argmax once the banned token is masked (no cache)
        logits = model(torch.tensor([prompt + free[:2]]))[0, -1]
    logits[free[2]] = float("-inf")
    assert got[2] == int(logits.argmax())
    # A ban whose first tokens the row does not write never applies; nor does one longer than the response.
    other = (free[0] + 1) % V
    assert generate(model, [prompt], cfg, eos_id=-1, seed=0, banned_starts=[[other, free[1]], free + [1]])[0].tokens \
        == free
    with pytest.raises(ValueError, match="banned_starts"):
        generate(model, [prompt], cfg, eos_id=-1, seed=0, banned_starts=[[V]])


@pytest.mark.parametrize("check_every", [8, 1])
def test_sampled_rows_never_begin_with_a_banned_start(model, monkeypatch, check_every):
    # check_every 1 with any stopped row compacting the batch: the bans must follow rows as they move.
    monkeypatch.setattr(sampler, "CHECK_EVERY", check_every)
    monkeypatch.setattr(sampler, "COMPACT_FRACTION", 1e-9)
    prompts = [[4, 8, 15, 16], [23, 42, 7, 7, 1, 30, 2, 11, 5]]
    cfg = SampleConfig(max_new_tokens=8, temperature=0.7, n=64)
    free = generate(model, prompts, cfg, eos_id=-1, seed=1)
    eos = Counter(g.tokens[1] for g in free).most_common(1)[0][0]  # rows stop early, others go on
    free = generate(model, prompts, cfg, eos_id=eos, seed=1)
    # The model's favourite starts: its most frequent first token, and most frequent 3-token start.
    one = Counter(g.tokens[0] for g in free).most_common(1)[0][0]
    three = Counter(tuple(g.tokens[:3]) for g in free if len(g.tokens) >= 3 and g.tokens[0] != one).most_common(1)[0]
    assert three[1] >= 2 and sum(g.tokens[0] == one for g in free) >= 10  # the bans have something to ban
    banned = generate(model, prompts, cfg, eos_id=eos, seed=1, banned_starts=[[one], list(three[0])])
    assert not any(g.tokens[0] == one or tuple(g.tokens[:3]) == three[0] for g in banned)
    assert any(g.finished and len(g.tokens) < 8 for g in banned)  # rows did stop early


def test_spellings_are_every_way_to_write_a_text(tok):
    text = SEPARATOR + "def"
    found = spellings(tok, text)
    assert tok.encode(text) in found  # the tokenizer's own spelling
    assert [tok.encode(c)[0] for c in text] in found  # one byte at a time
    assert len({tuple(s) for s in found}) == len(found)
    for s in found:
        assert tok.decode(s).startswith(text) and len(tok.decode(s[:-1])) < len(text)  # cut where text is reached
    # Text is forced by banning the other formats' openings; formats with an opening ban nothing.
    bans = banned_starts(tok, "text")
    assert all(any(tok.decode(b).startswith(SEPARATOR + t) for t in TEXT_BANNED) for b in bans)
    assert banned_starts(tok, "tinygsm") == banned_starts(tok, "omi1") == []


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    """A random model folder speaking the tokenizer's vocabulary."""
    torch.manual_seed(0)
    cfg = ModelConfig(preset="custom", d_model=32, n_layers=1, n_heads=2, mlp_hidden=48, max_seq_len=256,
                      tie_embeddings=True, init_std=0.3, vocab_size=tok.vocab_size).resolve()
    out = tmp_path_factory.mktemp("probe_model")
    OLMo(cfg).save(out)
    tok.save(out / "tokenizer.json")
    return out


def test_probe_writes_every_format_forced_and_unforced(model_dir, tmp_path):
    out = tmp_path / "probe"
    # (argparse: the overrides right after MODEL, both positional)
    main(["probe", str(model_dir), "eval.max_new_tokens=10", "--config", "smoke", "--n", "6", "--out", str(out)])
    result = json.loads((out / "probe.json").read_text())
    assert result["n"] == 6 and set(result["formats"]) == set(FORMATS)
    unforced = read_jsonl(out / "unforced_greedy.jsonl")
    for fmt, r in result["formats"].items():
        assert set(FIELDS) <= set(r)
        assert all(0 <= r[k] <= 1 for k in FIELDS if r[k] is not None)
        assert (r["unforced_accuracy"] is None) == (r["unforced_share"] == 0)
        rows = read_jsonl(out / f"probe_{fmt}.jsonl")
        assert len(rows) == 6 and all(row["forced"] == fmt for row in rows)
        assert r["forced_accuracy"] == sum(row["correct"] for row in rows) / 6
        assert r["forced_label_share"] == sum(row["label"] == fmt for row in rows) / 6
        assert r["unforced_share"] == sum(row["label"] == fmt for row in unforced) / 6
        for row in rows:
            if fmt in OPENINGS:
                assert row["response"].startswith(SEPARATOR + OPENINGS[fmt])
            else:
                assert not any(row["response"].startswith(SEPARATOR + t) for t in TEXT_BANNED)


def test_eval_probe_puts_the_probe_in_every_step_file_and_the_report(model_dir, tmp_path):
    run = tmp_path / "rl"
    cfg = load_run_config("smoke", ["eval.probe=true", "eval.n_problems=3", "eval.max_new_tokens=6",
                                    "eval.n_samples=0"])
    summary = evaluate(*load_policy(model_dir), cfg, step=0, out_root=run / "eval", progress=False)
    probe = json.loads((run / "eval" / "step_000000.json").read_text())["datasets"]["synthetic_test"]["probe"]
    assert probe == summary["datasets"]["synthetic_test"]["probe"] and set(probe) == set(FORMATS)
    assert all(len(read_jsonl(run / "eval" / "step_000000" / f"synthetic_test_probe_{f}.jsonl")) == 3
               for f in FORMATS)
    assert fig_probe([load_run(run)]) is not None


def test_eval_and_its_probes_decode_as_eval_sample_compile_says(model_dir, tmp_path, monkeypatch):
    asked = []  # every generate call's compile setting (answered "eager": this test compiles nothing)
    monkeypatch.setattr(sampler, "use_compile", lambda cfg, rows, device: asked.append(cfg.compile) or False)
    cfg = load_run_config("smoke", ["eval.probe=true", "eval.n_problems=3", "eval.max_new_tokens=6",
                                    "eval.n_samples=2", "eval.sample_compile=on"])
    evaluate(*load_policy(model_dir), cfg, step=0, out_root=tmp_path / "eval", progress=False)
    assert len(asked) >= 1 + len(FORMATS) and set(asked) == {"on"}  # the answers, then a probe per format


def _eval_step(run, step: int, probe: bool) -> None:
    share = {"tinygsm": 0.3 + 0.1 * step, "omi1": 0.1, "text": 0.6 - 0.1 * step, "unknown": 0.0}
    ds = {"n": 10, "pass@1": 0.4, "format_share": share, "format_acc": {lab: 0.5 for lab in share}}
    if probe:
        ds["probe"] = {fmt: {"forced_accuracy": 0.2 + 0.1 * step, "forced_label_share": 1.0,
                             "unforced_share": share[fmt], "unforced_accuracy": 0.5} for fmt in FORMATS}
    atomic_write_json(run / "eval" / f"step_{step:06d}.json", {"step": step, "datasets": {"synthetic_test": ds}})


@pytest.mark.parametrize("probe", [True, False])
def test_report_draws_the_probe_only_when_steps_carry_it(tmp_path, probe):
    run = tmp_path / "rl"
    for step in (0, 2, 4):
        _eval_step(run, step, probe)
    assert (fig_probe([load_run(run)]) is not None) == probe
    page = write_report([run], tmp_path / "report").read_text()
    assert ('id="probe"' in page) == probe and (tmp_path / "report" / "probe.png").exists() == probe

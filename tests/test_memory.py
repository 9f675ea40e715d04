"""The memory model (memory.py) against what torch really holds, and the sampler calls it cuts: the paper's 1B
rollout and pass@64 evaluation chunked to fit one 80 GB GPU, the CPU path's calls and seeds unchanged."""

import math

import pytest
import torch

from echochamber import memory, sampler
from echochamber.config import load_run_config
from echochamber.model import ModelConfig, OLMo, SampleCache
from echochamber.sampler import SampleConfig
from echochamber.training import make_optimizer

# Two blocks, head size 64, F = 4 C: big enough for the per-token terms to dominate, small enough to run in a blink.
SMALL = ModelConfig(preset="custom", d_model=128, n_layers=2, n_heads=2, mlp_hidden=512, max_seq_len=2048,
                    tie_embeddings=True, vocab_size=1000).resolve()


def saved_bytes(model: OLMo, idx: torch.Tensor) -> int:
    """Bytes of the tensors a forward under bf16 autocast saves for its backward, each storage counted once,
    the parameters themselves (and the RoPE tables, buffers) not counted."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx[:, :-1], idx[:, 1:])
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    return sum(n for ptr, n in storages.items() if ptr not in own)


@pytest.mark.parametrize("tie", [True, False])
def test_activations_are_what_the_backward_saves(tie):
    # 600 tokens per row: past model.MATERIALIZE_MAX_T, so the CPU runs the flash-style kernel a GPU runs.
    config = ModelConfig(**{**SMALL.__dict__, "tie_embeddings": tie})
    torch.manual_seed(0)
    model = OLMo(config)
    idx = torch.randint(0, config.vocab_size, (2, 601))
    measured = saved_bytes(model, idx)
    modelled = memory.activation_bytes(config, 2 * 600)
    assert abs(modelled - measured) / measured < 0.05, (modelled, measured)
    # the old plan's 34 bytes x d_model per token and layer (and no bf16 weight copies) was far below it
    assert 34 * 1200 * config.d_model * config.n_layers < 0.75 * measured


def test_weights_and_optimizer_are_exact():
    for tie in (True, False):
        config = ModelConfig(**{**SMALL.__dict__, "tie_embeddings": tie})
        model = OLMo(config)
        s = memory.Sizes.of(config)
        assert s.params == model.num_params()
        assert 4 * s.params == sum(p.nbytes for p in model.parameters())
        opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
        model(torch.randint(0, 1000, (1, 9)), torch.randint(0, 1000, (1, 9))).mean().backward()
        opt.step()
        moments = sum(v.nbytes for st in opt.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq"))
        assert moments == 8 * s.params
        # the sampling copy (sampler.sampling_model): every Linear's weight in bf16, a tied head included
        linears = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert linears == memory._sampling_weights(s, "bfloat16")
    cfg = load_run_config("paper_1b")
    with torch.device("meta"):
        n = OLMo(plan_config(cfg)).num_params()  # 1,139.3M
    plan = memory.rl_memory(cfg, 1, prompt_tokens=300)
    assert plan.components["weights"] == 4 * n and plan.components["optimizer"] == 8 * n


def test_kv_cache_is_what_the_sampler_allocates(monkeypatch):
    torch.manual_seed(0)
    model = OLMo(SMALL)
    made = []
    start = SampleCache.start.__func__

    def recording_start(cls, *args, **kwargs):
        cache = start(cls, *args, **kwargs)
        made.append(sum(t.nbytes for t in (cache.pk, cache.pv, cache.k, cache.v)))
        return cache

    monkeypatch.setattr(SampleCache, "start", classmethod(recording_start))
    prompts = [[5] * 7, [6] * 19, [7] * 3]  # padded to the longest, 19
    cfg = SampleConfig(max_new_tokens=24, n=4, temperature=1.0, compile="off")
    sampler.generate(model, prompts, cfg, eos_id=-1, seed=0)  # eos -1: nothing stops early
    element = memory.cache_element_bytes(cfg.dtype, "cpu")
    assert made == [memory.kv_cache_bytes(SMALL, 12, 3, 24, 19, element)]


def test_one_80gb_gpu_chunks_the_1b_rollout_and_pass_at_64():
    cfg = load_run_config("paper_1b", ["rl.algo=ppo", "eval.n_samples=64", "eval.max_new_tokens=2048"])
    budget = 80e9
    plan = memory.rl_memory(cfg, 1, budget=budget, prompt_tokens=300)
    assert plan.fits, plan.table()
    # 512 rows in one call would be the 68.8 GB of generated-token cache alone
    assert memory.kv_cache_bytes(plan_config(cfg), 512, 0, 1024, 0, 2) == pytest.approx(68.8e9, rel=1e-3)
    rows = memory.rows_per_call(plan_config(cfg), 1024, plan.sampling_room, rows_per_prompt=8, prompt_tokens=300)
    assert 8 <= rows < 512 and rows % 8 == 0
    calls = memory.sampler_calls(64, 8, 0, rows // 8)
    assert len(calls) > 1 and sum(b - a for a, b, _, _ in calls) == 64
    ev = memory.eval_memory(cfg, 1, budget=budget, prompt_tokens=300)
    assert ev.fits, ev.table()
    per_call = memory.eval_prompts_per_call(cfg.eval, plan_config(cfg), ev.sampling_room, 300, 2)
    assert 1 <= per_call < 7  # 7 prompts x 65 rows (the configured call) would need ~120 GB
    assert ev.components["KV cache"] <= ev.sampling_room


def plan_config(cfg) -> ModelConfig:
    return cfg.model.resolve()


def test_cpu_calls_and_seeds_are_as_before():
    """No memory limit (a CPU): units of 512 rows' worth of prompts, or rl.rollout_chunk_prompts, one call each,
    seeded by the unit alone: what collect did before it knew about memory."""
    fit = memory.rows_per_call(SMALL, 320, math.inf, rows_per_prompt=8, cap=None) // 8
    for n_prompts, n, unit in [(64, 8, 0), (100, 8, 0), (20, 64, 0), (64, 8, 16), (7, 8, 3), (5000, 64, 0)]:
        per = unit or max(1, 512 // n)
        old = [(s, min(s + per, n_prompts), c, 0) for c, s in enumerate(range(0, n_prompts, per))]
        assert memory.sampler_calls(n_prompts, n, unit, fit) == old
    assert memory.rows_per_call(SMALL, 320, math.inf, rows_per_prompt=8) == 512
    assert memory.rows_per_call(SMALL, 320, math.inf, rows_per_prompt=1000) == 1000  # one prompt at least


def test_a_unit_is_cut_the_same_whatever_the_processes():
    # rl.rollout_chunk_prompts 8: one process samples units 0..3 of a 32-prompt step, four processes one each
    # (first_chunk = rank); memory holding 3 prompts cuts every unit into the same equal calls 3 + 3 + 2.
    whole = memory.sampler_calls(32, 8, 8, 3)
    assert [(b - a, c, j) for a, b, c, j in whole[:3]] == [(3, 0, 0), (3, 0, 1), (2, 0, 2)]
    for rank in range(4):
        mine = memory.sampler_calls(8, 8, 8, 3)
        assert [(a + 8 * rank, b + 8 * rank, c + rank, j) for a, b, c, j in mine] == \
            [t for t in whole if t[2] == rank]
    # with nothing to cut, one unseeded-by-j call per unit, as before
    assert memory.sampler_calls(32, 8, 8, 8) == [(s, s + 8, s // 8, 0) for s in range(0, 32, 8)]
    # no unit set (one process): the fewest equal calls that fit, 64 prompts with 37 fitting: 2 of 32
    assert [b - a for a, b, _, _ in memory.sampler_calls(64, 8, 0, 37)] == [32, 32]


def test_collect_cuts_its_calls_to_the_memory_it_is_given(monkeypatch):
    from echochamber.rl import rollout
    from echochamber.tasks import Problem

    calls = []

    def fake_sample(model, tok, prompts, scfg, *, seed, interpreter=False, pool=None):
        calls.append((len(prompts), seed))
        return [sampler.Generation(i // scfg.n, [1], [0.0], False) for i in range(len(prompts) * scfg.n)]

    class Tok:
        eos_id = 0

        def encode_batch(self, texts):
            return [[1] * 10 for _ in texts]

        def decode_batch(self, ids):
            return ["x" for _ in ids]

    monkeypatch.setattr(rollout, "sample", fake_sample)
    monkeypatch.setattr(rollout.formats, "grade_many", lambda texts, golds, **kw: [None] * len(texts))
    monkeypatch.setattr(rollout, "reward", lambda g: 0.0)
    model = OLMo(SMALL)
    problems = [Problem(id=str(i), question="q", answer="1") for i in range(16)]
    scfg = SampleConfig(max_new_tokens=100, n=8)
    kw = dict(seed=5, mode="paper", reward_sees_prompt=False)
    rollout.collect(model, Tok(), problems, scfg, **kw)  # no limit: one call of all 16 prompts (128 rows)
    assert calls == [(16, 5)]
    calls.clear()
    three = memory.call_bytes(SMALL, 3 * 8, 3, 100, 10, memory.cache_element_bytes("float32", "cpu"))
    rollout.collect(model, Tok(), problems, scfg, **kw, free_bytes=three)  # 3 prompts fit: 6 calls of 3, 3, ...
    assert [n for n, _ in calls] == [3, 3, 3, 3, 2, 2] and [s for _, s in calls] == [5 + 7919 * c for c in range(6)]
    calls.clear()
    rollout.collect(model, Tok(), problems, scfg, **kw, chunk_prompts=8, first_chunk=2, free_bytes=three)
    assert calls == [(3, 5 + 7919 * 2), (3, 5 + 7919 * 2 + memory.SUBCALL_SEED), (2, 5 + 7919 * 2 + 2 *
                     memory.SUBCALL_SEED), (3, 5 + 7919 * 3), (3, 5 + 7919 * 3 + memory.SUBCALL_SEED),
                     (2, 5 + 7919 * 3 + 2 * memory.SUBCALL_SEED)]


def test_evaluation_calls_fit_or_stay_as_configured(monkeypatch):
    from echochamber import evaluate

    seen = []

    def fake_generate_texts(model, tok, questions, scfg, seed, batch_prompts, *args, **kwargs):
        seen.append((scfg.n, batch_prompts))
        return [["t"] * scfg.n for _ in questions]

    class Tok:
        def encode_batch(self, texts, add_bos=False):
            return [[1] * 12 for _ in texts]

    monkeypatch.setattr(evaluate, "generate_texts", fake_generate_texts)
    model = OLMo(SMALL)
    ecfg = evaluate.EvalConfig(n_samples=8, max_new_tokens=64, batch_prompts=16, sample_dtype="float32")
    questions = ["q"] * 40
    kw = dict(seed=0, rank=0, name="x", progress=False)
    evaluate.greedy_and_samples(model, Tok(), questions, ecfg, **kw)
    assert seen == [(9, 8 * 16 // 9)]  # as before: 14 prompts x 9 rows
    seen.clear()
    five = memory.call_bytes(SMALL, 5 * 9, 5, 64, 12, 4)
    evaluate.greedy_and_samples(model, Tok(), questions, ecfg, **kw, free_bytes=five)
    assert seen == [(9, 5)]  # 40 questions in 8 calls of 5
    seen.clear()
    ecfg.n_samples = 0
    seven = memory.call_bytes(SMALL, 7, 7, 64, 12, 4)
    evaluate.greedy_and_samples(model, Tok(), questions, ecfg, **kw, free_bytes=seven)
    assert seen == [(1, 7)]  # 40 greedy questions, 7 fit: 6 calls of 7 (16 configured)


def test_dry_run_prints_the_table_and_refuses_what_does_not_fit(capsys, monkeypatch):
    from echochamber.cli import main

    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as e:
        main(["eval", "--config", "paper_1b", "--dry-run", "out_dir=/nonexistent/run", "eval.n_samples=64",
              "memory_gb=80"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "KV cache" in out and "fits" in out and "65 rows per call" in out
    with pytest.raises(SystemExit) as e:
        main(["rl", "--config", "paper_1b", "--dry-run", "out_dir=/nonexistent/run", "rl.algo=ppo", "memory_gb=60"])
    out = capsys.readouterr().out
    assert "critic" in out and "DOES NOT FIT" in out
    assert "rl.micro_batch_size=" in str(e.value.code) and "60.0 GB" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--config", "paper_1b", "--dry-run", "out_dir=/nonexistent/run", "pretrain.grad_accum=0",
              "memory_gb=40"])
    assert "pretrain.activation_checkpointing=true" in str(e.value.code)


def test_fsdp_shards_the_states_but_accumulates_whole_gradients():
    cfg = load_run_config("paper_1b", ["pretrain.fsdp=true", "pretrain.grad_accum=0"])
    fsdp = memory.pretrain_memory(cfg, 8, budget=80e9)
    cfg.pretrain.fsdp = False
    ddp = memory.pretrain_memory(cfg, 8, budget=80e9)
    n = memory.Sizes.of(plan_config(cfg)).params
    assert fsdp.components["optimizer"] == 8 * n / 8 and ddp.components["optimizer"] == 8 * n
    # 512 sequences = 8 x 8 GPUs x 8 micro-batches: the first 7 accumulate unsharded (no reduce-scatter)
    assert fsdp.components["unsharded gradients"] == 4 * n and "DDP buckets" in ddp.components
    assert fsdp.total < ddp.total and ddp.fits

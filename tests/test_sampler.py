"""Batched KV-cache sampling: agrees with plain recomputation, is seeded, and stops where it should."""

import dataclasses

import pytest
import torch

from echochamber.model import OLMo, token_logprobs
from echochamber import sampler
from echochamber.sampler import SampleConfig, generate

V = 97


@pytest.fixture(scope="module")
def model(peaked_model) -> OLMo:
    """conftest's small random model with peaked distributions (vocabulary V)."""
    assert peaked_model.config.vocab_size == V
    return peaked_model


def prompts_of(lengths, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V - 1, (n,), generator=g).tolist() for n in lengths]


def argmax_decode(model: OLMo, prompt: list[int], steps: int, eos: int | None = None) -> list[int]:
    """Greedy decoding by recomputing the full forward pass each step (no cache)."""
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            seq.append(nxt)
            out.append(nxt)
            if nxt == eos:
                break
    return out


@pytest.mark.parametrize("width_step, check_every", [(32, 8), (3, 1)])  # 3: the attended width grows often
def test_cached_greedy_equals_uncached_argmax(model, monkeypatch, width_step, check_every):
    monkeypatch.setattr(sampler, "WIDTH_STEP", width_step)
    monkeypatch.setattr(sampler, "CHECK_EVERY", check_every)
    prompts = prompts_of([5, 1, 12])
    gens = generate(model, prompts, SampleConfig(max_new_tokens=25, temperature=0.0), eos_id=V - 1, seed=0)
    for p, g in zip(prompts, gens):
        assert g.tokens == argmax_decode(model, p, 25, eos=V - 1)


def test_mixed_length_batch_equals_one_prompt_at_a_time(model):
    prompts = prompts_of([3, 17, 8, 1, 30, 8])
    cfg = SampleConfig(max_new_tokens=30, temperature=0.0)
    # An EOS the model actually emits, so rows stop at different steps and the batch gets compacted.
    free = generate(model, prompts, cfg, eos_id=-1, seed=0)
    eos = free[1].tokens[10]
    batch = generate(model, prompts, cfg, eos_id=eos, seed=0)
    singles = [generate(model, [p], cfg, eos_id=eos, seed=0)[0] for p in prompts]
    assert [g.tokens for g in batch] == [g.tokens for g in singles]
    assert [g.finished for g in batch] == [g.finished for g in singles]
    assert len({len(g.tokens) for g in batch}) > 1  # rows really stopped at different lengths


def test_eos_stops_a_row_and_ends_its_tokens(model):
    prompt = prompts_of([6])[0]
    free = generate(model, [prompt], SampleConfig(max_new_tokens=30, temperature=0.0), eos_id=-1, seed=0)[0]
    assert not free.finished and len(free.tokens) == 30  # without EOS: runs to max_new_tokens
    eos = free.tokens[7]
    first = free.tokens.index(eos)
    g = generate(model, [prompt], SampleConfig(max_new_tokens=30, temperature=0.0), eos_id=eos, seed=0)[0]
    assert g.finished and g.tokens == free.tokens[:first + 1] and g.tokens[-1] == eos
    assert len(g.logprobs) == len(g.tokens)


def test_context_length_stops_a_row_unfinished(model):
    prompt = prompts_of([90])[0]  # max_seq_len 96: room for 6 tokens
    g = generate(model, [prompt], SampleConfig(max_new_tokens=50, temperature=1.0), eos_id=-1, seed=0)[0]
    assert len(g.tokens) == 6 and not g.finished
    with pytest.raises(ValueError, match="prompt 0"):
        generate(model, [list(range(96))], SampleConfig(), eos_id=0, seed=0)


def test_same_seed_same_samples_other_seed_other_samples(model):
    prompts = prompts_of([4, 9])
    cfg = SampleConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, n=3)
    a = generate(model, prompts, cfg, eos_id=V - 1, seed=7)
    b = generate(model, prompts, cfg, eos_id=V - 1, seed=7)
    c = generate(model, prompts, cfg, eos_id=V - 1, seed=8)
    assert [g.tokens for g in a] == [g.tokens for g in b] and [g.logprobs for g in a] == [g.logprobs for g in b]
    assert [g.tokens for g in a] != [g.tokens for g in c]


def test_tiny_top_p_is_greedy(model):
    prompts = prompts_of([5, 11])
    greedy = generate(model, prompts, SampleConfig(max_new_tokens=20, temperature=0.0), eos_id=V - 1, seed=0)
    nucleus = generate(model, prompts, SampleConfig(max_new_tokens=20, temperature=1.0, top_p=1e-6, n=2),
                       eos_id=V - 1, seed=3)
    assert [g.tokens for g in nucleus] == [g.tokens for g in greedy for _ in range(2)]


def test_n_samples_are_grouped_by_prompt(model):
    prompts = prompts_of([3, 14, 6])
    n = 4
    gens = generate(model, prompts, SampleConfig(max_new_tokens=12, temperature=1.0, n=n), eos_id=V - 1, seed=0)
    assert len(gens) == len(prompts) * n
    assert [g.prompt_index for g in gens] == [i for i in range(len(prompts)) for _ in range(n)]
    # Sample j of prompt i continues prompt i: its first token's log-prob is that of prompt i's next-token law.
    with torch.no_grad():
        first_lp = [torch.log_softmax(model(torch.tensor([p]))[0, -1], -1) for p in prompts]
    for r, g in enumerate(gens):
        assert abs(g.logprobs[0] - first_lp[r // n][g.tokens[0]].item()) < 1e-4
    assert len({tuple(g.tokens) for g in gens[:n]}) > 1  # the n samples differ


def test_duplicate_prompts_are_fine(model):
    p = prompts_of([7])[0]
    gens = generate(model, [p, p], SampleConfig(max_new_tokens=10, temperature=0.0, n=2), eos_id=V - 1, seed=0)
    assert [g.prompt_index for g in gens] == [0, 0, 1, 1]
    assert len({tuple(g.tokens) for g in gens}) == 1


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.0, 0.8), (0.0, 1.0)])
def test_logprobs_equal_full_forward_recomputation(model, temperature, top_p):
    prompts = prompts_of([4, 13, 9])
    gens = generate(model, prompts, SampleConfig(max_new_tokens=20, temperature=temperature, top_p=top_p, n=2),
                    eos_id=V - 1, seed=1, progress=True)
    for g in gens:
        p = prompts[g.prompt_index]
        seq = torch.tensor([p + g.tokens])
        with torch.no_grad():
            lp = token_logprobs(model, seq[:, :-1], seq[:, 1:])[0, len(p) - 1:]
        torch.testing.assert_close(torch.tensor(g.logprobs), lp, atol=1e-4, rtol=0)


def test_bfloat16_generation_tracks_autocast_logprobs(model):
    prompts = prompts_of([6, 10])
    gens = generate(model, prompts, SampleConfig(max_new_tokens=15, temperature=1.0, n=2, dtype="bfloat16"),
                    eos_id=V - 1, seed=0)
    for g in gens:
        p = prompts[g.prompt_index]
        seq = torch.tensor([p + g.tokens])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lp = token_logprobs(model, seq[:, :-1], seq[:, 1:])[0, len(p) - 1:]
        # bf16 rounding differs between a cached and a full pass; the values must still agree closely.
        assert (torch.tensor(g.logprobs) - lp).abs().max() < 0.15


def test_bad_inputs_are_errors(model):
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[]], SampleConfig(), eos_id=0, seed=0)
    with pytest.raises(ValueError, match="outside"):
        generate(model, [[V]], SampleConfig(), eos_id=0, seed=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1]], SampleConfig(top_p=0.0), eos_id=0, seed=0)
    assert generate(model, [], SampleConfig(), eos_id=0, seed=0) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_greedy_matches_cpu(model):
    prompts = prompts_of([5, 13, 2])
    cfg = SampleConfig(max_new_tokens=15, temperature=0.0, n=2)
    cpu = generate(model, prompts, cfg, eos_id=V - 1, seed=0)
    gpu_model = OLMo(model.config).cuda()
    gpu_model.load_state_dict(model.state_dict())
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu = generate(gpu_model.eval(), prompts, cfg, eos_id=V - 1, seed=0)
    assert [g.tokens for g in gpu] == [g.tokens for g in cpu]
    sampled = generate(gpu_model, prompts, SampleConfig(max_new_tokens=15, temperature=1.0, n=2, dtype="bfloat16"),
                       eos_id=V - 1, seed=0)
    assert all(len(g.tokens) == len(g.logprobs) > 0 for g in sampled)


def test_compiled_decoding_gives_the_eager_greedy_tokens(model, monkeypatch):
    """torch.compile'd decode steps (dynamic shapes: rows stop at EOS and the batch shrinks, the attended width
    grows) give the same greedy tokens as eager ones, from ONE compilation: the batch starts as large as the cache
    (torch.compile's duck sizing would tie the two sizes) and shrinks to a single running row (a batch of one
    would be specialised), and neither compiles the step again."""
    import echochamber.model as M
    from torch._dynamo.utils import counters

    monkeypatch.setattr(M, "_COMPILED_DECODE", None)  # compile afresh here, whatever ran before
    prompts = prompts_of([3, 17, 8, 1, 30, 8])
    free = generate(model, prompts, SampleConfig(max_new_tokens=40, temperature=0.0, compile="off"), eos_id=-1, seed=0)
    # An EOS the model emits early in every row but one: rows stop at different steps and get dropped, down to one.
    eos = next((t for t in range(V) if sum(t not in g.tokens[:30] for g in free) == 1), None)
    assert eos is not None, "no token ends all rows but one; pick other prompts"
    cfg = SampleConfig(max_new_tokens=40, temperature=0.0)
    eager = generate(model, prompts, dataclasses.replace(cfg, compile="off"), eos_id=eos, seed=0)
    graphs = counters["stats"]["unique_graphs"]
    compiled = generate(model, prompts, dataclasses.replace(cfg, compile="on"), eos_id=eos, seed=0)
    assert M._COMPILED_DECODE, "torch.compile failed on this machine (see the warning)"
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert [g.tokens for g in compiled] == [g.tokens for g in eager]
    assert [g.finished for g in compiled] == [g.finished for g in eager]
    assert sum(not g.finished for g in eager) == 1 and len({len(g.tokens) for g in eager}) > 2
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(e.logprobs), atol=1e-4, rtol=0)


def test_compiled_decoding_does_not_depend_on_what_the_process_ran_before(model, monkeypatch):
    """A compiled pretraining leaves torch's deterministic algorithms on for the rest of its process; a sweep's
    RL cell after it must decode as the same cell run alone: one graph, the same tokens."""
    import echochamber.model as M
    from torch._dynamo.utils import counters

    monkeypatch.setattr(M, "_COMPILED_DECODE", None)
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    prompts = prompts_of([3, 17, 8, 1, 30, 8])
    cfg = SampleConfig(max_new_tokens=24, temperature=1.0, n=2, compile="on")
    try:
        torch.use_deterministic_algorithms(False)  # a process that ran nothing before
        graphs = counters["stats"]["unique_graphs"]
        alone = generate(model, prompts, cfg, eos_id=V - 1, seed=0)
        assert not torch.are_deterministic_algorithms_enabled()  # the call leaves the process's setting as it was
        torch.use_deterministic_algorithms(True, warn_only=True)  # as after a compiled pretraining
        after_pretraining = generate(model, prompts, cfg, eos_id=V - 1, seed=0)
        assert M._COMPILED_DECODE, "torch.compile failed on this machine (see the warning)"
        assert counters["stats"]["unique_graphs"] - graphs == 1
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
    assert [g.tokens for g in after_pretraining] == [g.tokens for g in alone]


def test_failed_compilation_falls_back_to_eager_decoding(model, monkeypatch):
    import echochamber.model as M

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler found")
        return compiled

    monkeypatch.setattr(M, "_COMPILED_DECODE", None)
    monkeypatch.setattr(torch, "compile", broken_compile)
    prompts = prompts_of([5, 9])
    cfg = SampleConfig(max_new_tokens=12, temperature=0.0)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        fallback = generate(model, prompts, dataclasses.replace(cfg, compile="on"), eos_id=V - 1, seed=0)
    assert M._COMPILED_DECODE is False
    eager = generate(model, prompts, dataclasses.replace(cfg, compile="off"), eos_id=V - 1, seed=0)
    assert [g.tokens for g in fallback] == [g.tokens for g in eager]


def autocast_on_fp32_weights(model, cfg):
    """The sampler as it was before its bf16 weight copy: autocast casts the fp32 weights at every step."""
    return getattr(model, "module", model)


@pytest.mark.parametrize("tied", [True, False])
def test_bf16_weight_copy_samples_exactly_what_autocast_on_fp32_weights_samples(model, monkeypatch, tied):
    """Decoding with bf16 copies of the matmul weights gives the tokens and log-probs (bit for bit) of autocast
    casting the fp32 weights, for a tied and an untied head: sampled rows, nucleus rows, greedy rows, rows that
    stop at an EOS (the batch shrinks) and at stop sequences."""
    torch.manual_seed(1)
    untied = OLMo(dataclasses.replace(model.config, tie_embeddings=False)).eval()
    m = model if tied else untied
    prompts = prompts_of([3, 17, 8, 1, 9])
    free = generate(m, prompts, SampleConfig(max_new_tokens=30, temperature=0.0), eos_id=-1, seed=0)
    eos = free[1].tokens[6]  # a token the model emits, so that some rows stop early
    calls = [dict(cfg=SampleConfig(max_new_tokens=30, temperature=0.7, n=3, dtype="bfloat16")),
             dict(cfg=SampleConfig(max_new_tokens=30, temperature=1.0, top_p=0.8, n=2, greedy_first=True,
                                   dtype="bfloat16"), stop_sequences=[free[0].tokens[2:4]])]
    for kw in calls:
        copy = generate(m, prompts, eos_id=eos, seed=3, **kw)
        with monkeypatch.context() as patch:
            patch.setattr(sampler, "sampling_model", autocast_on_fp32_weights)
            cast = generate(m, prompts, eos_id=eos, seed=3, **kw)
        assert [(g.tokens, g.logprobs, g.stop) for g in copy] == [(g.tokens, g.logprobs, g.stop) for g in cast]
        assert len({len(g.tokens) for g in copy}) > 2 and any(g.finished for g in copy)


class Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts, while active, the operations of interest to the tests below."""

    # Operations that make the host wait for the device (a value read back, or an output size that depends on data).
    SYNCS = {torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
             torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default, torch.ops.aten.equal.default}

    def __init__(self, weights=()):
        super().__init__()
        self.weights = {w.data_ptr() for w in weights}
        self.syncs = self.host_tensors = self.weight_casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.syncs += func in self.SYNCS
        self.host_tensors += func is torch.ops.aten.lift_fresh.default  # torch.tensor(host data): a host-to-device copy
        x = args[0] if args else None
        self.weight_casts += (isinstance(x, torch.Tensor) and x.data_ptr() in self.weights
                              and isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16)
        return out


def test_bf16_sampling_casts_each_matmul_weight_once_per_call(model):
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    casts = []
    for tokens in (4, 20):
        with Recorder(linears) as rec:
            generate(model, prompts_of([5, 9]), SampleConfig(max_new_tokens=tokens, n=2, dtype="bfloat16"),
                     eos_id=-1, seed=0)
        casts.append(rec.weight_casts)
    assert casts == [len(linears)] * 2  # (with autocast casting them, 5 times per token decoded)


def test_decoding_loop_waits_for_the_device_only_at_the_periodic_looks(model, monkeypatch):
    """Host synchronisations and host-to-device copies per call do not grow with the tokens decoded between two
    looks at the batch (sampler.CHECK_EVERY), nor with the number of prompts."""
    monkeypatch.setattr(sampler, "CHECK_EVERY", 8)
    counts = []
    for n_prompts, tokens in ((2, 9), (6, 15)):  # one look (after token 8) in both; no row stops (eos_id -1)
        with Recorder() as rec:
            generate(model, prompts_of([4, 11, 7, 2, 9, 5][:n_prompts]), SampleConfig(max_new_tokens=tokens, n=2),
                     eos_id=-1, seed=0)
        counts.append((rec.syncs, rec.host_tensors))
    assert counts[0] == counts[1], counts
    assert counts[0][0] > 0  # (the look itself is seen)


def test_a_bf16_sampling_copy_cannot_sample_in_float32(model):
    copy = sampler.sampling_model(model, SampleConfig(dtype="bfloat16"))
    assert sampler.sampling_model(copy, SampleConfig(dtype="bfloat16")) is copy  # a copy is not copied again
    with pytest.raises(ValueError, match="SampleConfig.dtype='float32'"):
        generate(copy, [[1, 2]], SampleConfig(max_new_tokens=3), eos_id=-1, seed=0)

"""OLMo model: sizes, causality, tying, persistence, and the hand-written kernels against plain PyTorch."""

import json

import pytest
import torch
import torch.nn.functional as F

from echochamber.model import (PRESETS, CompiledForTraining, ModelConfig, SampleCache, OLMo,
                               _MaterializedCausalAttention, _SplitHeadsRope, head_logprobs, rope_tables, token_logprobs)


def small_config(**overrides) -> ModelConfig:
    base = dict(preset="custom", d_model=64, n_layers=2, n_heads=2, mlp_hidden=96, max_seq_len=64,
                tie_embeddings=True, vocab_size=97)
    return ModelConfig(**{**base, **overrides}).resolve()


def olmo_param_count(d: int, layers: int, hidden: int, vocab: int, tied: bool) -> int:
    """OLMo-1 without biases or norm weights: per layer W_q, W_k, W_v, W_o (d x d each) and the SwiGLU
    W_gate, W_up (d x hidden) and W_down (hidden x d); an embedding, plus an output head unless tied."""
    return layers * (4 * d * d + 3 * d * hidden) + vocab * d * (1 if tied else 2)


@pytest.mark.parametrize("preset, tied, nominal", [("olmo-150m", False, 162e6), ("olmo-1b", True, 1.14e9)])
def test_paper_sizes_on_meta_device(preset, tied, nominal):
    with torch.device("meta"):
        model = OLMo(ModelConfig(preset=preset).resolve(vocab_size=32000))
    p = PRESETS[preset]
    expected = olmo_param_count(p["d_model"], p["n_layers"], p["mlp_hidden"], 32000, tied)
    assert model.num_params() == expected
    assert abs(model.num_params() - nominal) / nominal < 0.01
    assert model.config.tie_embeddings is tied
    assert model.num_params(non_embedding=True) == expected - 32000 * p["d_model"] * (1 if tied else 2)


def test_laptop_presets_are_small():
    for name in ("olmo-tiny", "olmo-small"):
        with torch.device("meta"):
            n = OLMo(ModelConfig(preset=name).resolve(1024)).num_params()
        assert 0.5e6 < n < 5e6, (name, n)


def test_resolve_fills_from_preset_and_keeps_overrides():
    cfg = ModelConfig(preset="olmo-tiny", n_layers=2, rope_theta=500.0).resolve(vocab_size=300)
    assert cfg.n_layers == 2 and cfg.rope_theta == 500.0 and cfg.vocab_size == 300
    assert cfg.d_model == PRESETS["olmo-tiny"]["d_model"] and cfg.init_std == 0.02
    assert ModelConfig(vocab_size=512).resolve(vocab_size=300).vocab_size == 512  # padded vocab is allowed
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig(preset="olmo-7b").resolve(100)
    with pytest.raises(ValueError, match="custom"):
        ModelConfig(preset="custom", d_model=64).resolve(100)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        ModelConfig(vocab_size=100).resolve(vocab_size=300)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig().resolve()
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(preset="olmo-tiny", n_heads=3).resolve(100)


def test_init_is_truncated_normal():
    torch.manual_seed(0)
    model = OLMo(small_config(d_model=128, mlp_hidden=256))
    w = torch.cat([p.flatten() for p in model.parameters()])
    assert w.abs().max() <= 3 * 0.02 + 1e-7
    # std of N(0, 0.02^2) truncated at 3 sigma is 0.02 * 0.9866
    assert abs(w.std().item() - 0.02 * 0.9866) < 0.0005
    assert not any("bias" in n for n, _ in model.named_parameters())


def test_forward_shapes_and_logprobs_match_log_softmax():
    torch.manual_seed(0)
    model = OLMo(small_config(init_std=0.2))
    x = torch.randint(0, 97, (3, 20))
    y = torch.randint(0, 97, (3, 20))
    logits = model(x)
    assert logits.shape == (3, 20, 97)
    lp = token_logprobs(model, x, y)
    assert lp.shape == (3, 20) and lp.dtype == torch.float32
    ref = torch.log_softmax(logits.double(), -1).gather(-1, y[..., None])[..., 0]
    torch.testing.assert_close(lp.double(), ref, atol=1e-5, rtol=0)
    # Under bf16 autocast: an fp32 log-softmax of the bf16 logits, the same logits forward(x) gives.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp16, logits16 = model(x, y), model(x)
    assert lp16.dtype == torch.float32 and logits16.dtype == torch.bfloat16
    ref16 = torch.log_softmax(logits16.double(), -1).gather(-1, y[..., None])[..., 0]
    torch.testing.assert_close(lp16.double(), ref16, atol=1e-4, rtol=0)


def test_causal_future_tokens_do_not_change_past():
    torch.manual_seed(0)
    model = OLMo(small_config(init_std=0.2))
    x = torch.randint(0, 97, (2, 30))
    x2 = x.clone()
    x2[:, 17:] = torch.randint(0, 97, (2, 13))
    a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :17], b[:, :17], atol=1e-5, rtol=0)
    assert (a[:, 17:] - b[:, 17:]).abs().max() > 1e-3  # and they do change the future


@pytest.mark.parametrize("tied", [True, False])
def test_weight_tying(tied):
    model = OLMo(small_config(tie_embeddings=tied))
    assert (model.lm_head.weight is model.wte.weight) is tied
    untied_extra = 0 if tied else 97 * 64
    assert model.num_params() == olmo_param_count(64, 2, 96, 97, True) + untied_extra
    x = torch.randint(0, 97, (2, 10))
    (-model(x[:, :-1], x[:, 1:]).mean()).backward()
    assert model.wte.weight.grad is not None and model.lm_head.weight.grad is not None
    if tied:  # one tensor, so one gradient that includes the head's contribution
        assert model.wte.weight.grad is model.lm_head.weight.grad


@pytest.mark.parametrize("tied", [True, False])
def test_save_load_round_trip(tmp_path, tied):
    torch.manual_seed(0)
    model = OLMo(small_config(tie_embeddings=tied, clip_qkv=0.3, rope_theta=123.0))
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "model_config.json"]
    loaded = OLMo.load(tmp_path / "m")
    assert loaded.config == model.config
    assert (loaded.lm_head.weight is loaded.wte.weight) is tied
    x = torch.randint(0, 97, (2, 16))
    assert torch.equal(model(x), loaded(x))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        OLMo.load(tmp_path)
    model = OLMo(small_config())
    model.save(tmp_path)
    cfg = json.loads((tmp_path / "model_config.json").read_text())
    (tmp_path / "model_config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(ValueError, match=r"model_config.json.*n_layer"):
        OLMo.load(tmp_path)
    (tmp_path / "model_config.json").write_text(json.dumps({**cfg, "n_layers": 3}))
    with pytest.raises(ValueError, match="blocks.2"):
        OLMo.load(tmp_path)


def test_chunked_head_equals_one_chunk_with_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(3, 71, 16, requires_grad=True)  # 213 rows: chunks of 70, 70, 70, 3
    y = torch.randint(0, 50, (3, 71))
    grads = []
    for max_logits in (1 << 20, 50 * 70):  # one chunk; chunks of 70 rows (the minimum 64 would do the same)
        h.grad, head.weight.grad = None, None
        lp = head_logprobs(head, h, y, max_logits=max_logits)
        (lp * torch.linspace(-1, 1, 213).view(3, 71)).sum().backward()
        grads.append((lp.detach(), h.grad.clone(), head.weight.grad.clone()))
    ref_lp = torch.log_softmax(head(h), -1).gather(-1, y[..., None])[..., 0]
    ref_h, ref_w = torch.autograd.grad((ref_lp * torch.linspace(-1, 1, 213).view(3, 71)).sum(), (h, head.weight))
    for lp, gh, gw in grads:
        torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(gh, ref_h, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gw, ref_w, atol=1e-5, rtol=1e-4)


def full_logits_logprobs(head, h, y, temperature):
    """The plain form the fused head replaces (RL's log-probs before it): fp32 logits / temperature, a log-softmax,
    a gather, and the entropy -sum p log p without gradient."""
    logp_all = F.log_softmax(head(h).float() / temperature, -1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, y[..., None])[..., 0], entropy


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_head_at_a_temperature_equals_full_logits_with_entropy_and_gradients(temperature, autocast):
    """log p_tau(y) and the entropy from the chunked head equal the full-logits computation; so do the gradients,
    to fp32 rounding in fp32. Under bf16 autocast both gradients round their matmul outputs to bf16 at different
    points (the chunks' dW sums in fp32), so they agree to bf16 rounding and are equally far from the fp32 one."""
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 300, bias=False)
    head.weight.data.mul_(10)  # peaked distributions: entropies well below log V
    h = torch.randn(3, 71, 32, requires_grad=True)  # 213 rows in chunks of 70, 70, 70, 3
    y = torch.randint(0, 300, (3, 71))
    weights = torch.linspace(-1, 1, 213).view(3, 71)

    def run(fused: bool, amp: bool):
        h.grad, head.weight.grad = None, None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            if fused:
                lp, ent = head_logprobs(head, h, y, max_logits=300 * 70, temperature=temperature, with_entropy=True)
            else:
                lp, ent = full_logits_logprobs(head, h, y, temperature)
        (lp * weights).sum().backward()
        return lp.detach(), ent, h.grad.clone(), head.weight.grad.clone()

    lp, ent, gh, gw = run(True, autocast)
    ref_lp, ref_ent, ref_gh, ref_gw = run(False, autocast)
    assert not ent.requires_grad and ent.dtype == lp.dtype == torch.float32
    assert ent.max() < 0.9 * torch.log(torch.tensor(300.0))  # (a uniform distribution would hide a wrong temperature)
    torch.testing.assert_close(lp, ref_lp, atol=1e-6, rtol=1e-6)  # (a chunk's matmul may round unlike the whole's)
    torch.testing.assert_close(ent, ref_ent, atol=1e-6, rtol=1e-6)
    if not autocast:
        torch.testing.assert_close(gh, ref_gh, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gw, ref_gw, atol=1e-6, rtol=1e-5)
    else:
        _, _, fp32_gh, fp32_gw = run(False, False)
        for fused_g, full_g, exact in ((gh, ref_gh, fp32_gh), (gw, ref_gw, fp32_gw)):
            assert rel_err(fused_g, full_g) < 2 ** -8  # bf16 rounding (measured 2e-3 to 3e-3)
            assert rel_err(fused_g, exact) < 1.25 * rel_err(full_g, exact)  # as accurate as the full-logits form


def test_fused_head_rejects_a_nonpositive_temperature():
    head = torch.nn.Linear(8, 10, bias=False)
    with pytest.raises(ValueError, match="temperature"):
        head_logprobs(head, torch.randn(1, 2, 8), torch.zeros(1, 2, dtype=torch.long), temperature=0.0)


@pytest.mark.parametrize("tied", [True, False])
def test_matmul_copy_has_bf16_matmul_weights_and_shares_the_fp32_embedding(tied):
    model = OLMo(small_config(tie_embeddings=tied))
    copy = model.matmul_copy(torch.bfloat16)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, lin in linears.items():
        w = copy.get_submodule(name).weight
        assert w.dtype == torch.bfloat16 and not w.requires_grad
        assert torch.equal(w, lin.weight.detach().to(torch.bfloat16))
    assert copy.wte.weight is model.wte.weight and copy.wte.weight.dtype == torch.float32
    assert copy.rope_cos is model.rope_cos and copy.rope_sin is model.rope_sin
    assert copy.lm_head.weight.data_ptr() != copy.wte.weight.data_ptr()  # a tied head gets its own bf16 copy
    assert not copy.training and not any(p.is_meta for p in copy.parameters())
    copied = sum(m.weight.numel() * m.weight.element_size() for m in copy.modules() if isinstance(m, torch.nn.Linear))
    # What the memory plan counts: 2 bytes per parameter of a tied model; an untied one's embedding is shared.
    assert copied == 2 * (model.num_params() - (0 if tied else model.wte.weight.numel()))


@pytest.mark.parametrize("block", [128, 5])  # one block; blocks of 5 query rows (the last one partial)
def test_materialized_attention_matches_sdpa_forward_and_backward(block):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ours = _MaterializedCausalAttention.apply(q, k, v, block)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g))


def test_split_heads_rope_matches_reference_rotation():
    """RoPE as HF writes it (q cos + rotate_half(q) sin), head split by view/transpose, with gradients."""
    torch.manual_seed(0)
    B, T, H, hd = 2, 7, 3, 8
    qkv = torch.randn(B, T, 3 * H * hd, requires_grad=True)
    cos, sin = rope_tables(hd, 16, 10000.0)
    cos, sin = cos[:T, None, None, :], sin[:T, None, None, :]
    q, k, v = _SplitHeadsRope.apply(qkv, cos, sin, H)

    def rotate_half(x):
        return torch.cat((-x[..., hd // 2:], x[..., :hd // 2]), -1)

    c = cos[:, 0]  # (T, 1, hd): [cos, cos]
    s = torch.cat((sin[..., hd // 2:], sin[..., hd // 2:]), -1)[:, 0]  # the table holds [-sin, sin]
    x = qkv.view(B, T, 3, H, hd)
    refs = [(x[:, :, i] * c + rotate_half(x[:, :, i]) * s).transpose(1, 2) for i in (0, 1)]
    refs.append(x[:, :, 2].transpose(1, 2))
    for ours, ref in zip((q, k, v), refs):
        torch.testing.assert_close(ours, ref)
        assert ours.is_contiguous()
    w = [torch.randn_like(t) for t in refs]
    g_ours = torch.autograd.grad(sum((a * b).sum() for a, b in zip((q, k, v), w)), qkv)[0]
    g_ref = torch.autograd.grad(sum((a * b).sum() for a, b in zip(refs, w)), qkv)[0]
    torch.testing.assert_close(g_ours, g_ref)


def test_prefill_and_decode_match_full_forward():
    """Two prompts of different lengths; prompt 1 has two samples that decode different tokens."""
    torch.manual_seed(0)
    model = OLMo(small_config(init_std=0.2))
    x = torch.randint(0, 97, (2, 12))
    lengths = torch.tensor([12, 7])
    with torch.no_grad():
        first, pk, pv = model.prefill(x, lengths)
        full = model(x)
        torch.testing.assert_close(first[0], full[0, 11], atol=1e-5, rtol=0)
        torch.testing.assert_close(first[1], full[1, 6], atol=1e-5, rtol=0)
        assert pk.shape == (2, 2, 2, 12, 32)
        cache = SampleCache.start(pk, pv, lengths, torch.tensor([0, 1, 1]), 8, torch.float32)
        assert cache.slot.tolist() == [0, 0, 1] and cache.n_slots == 2
        seqs = [x[0].tolist(), x[1, :7].tolist(), x[1, :7].tolist()]
        for step in range(3):
            nxt = torch.tensor([5 + step, 9, 40 + step])
            logits = model.decode(nxt, cache, width=4 if step < 2 else 8)  # any width covering glen + 1
            for r in range(3):
                seqs[r].append(int(nxt[r]))
                torch.testing.assert_close(logits[r], model(torch.tensor([seqs[r]]))[0, -1], atol=1e-5, rtol=0)
        assert cache.glen.tolist() == [3, 3, 3]
        k_row2 = cache.k[:, 2, :, :3].clone()
        cache.keep(torch.tensor([2]), upto=3)  # drop rows 0 and 1: row 2 moves to the front, in place
        assert cache.rows == 1 and cache.k.shape[1] == 3 and torch.equal(cache.k[:, 0, :, :3], k_row2)
        logits = model.decode(torch.tensor([7]), cache, width=4)
        torch.testing.assert_close(logits[0], model(torch.tensor([seqs[2] + [7]]))[0, -1], atol=1e-5, rtol=0)


def test_keep_moves_rows_in_place_in_chunks():
    """Compaction with chunks smaller than the shift between rows: every kept row's cache arrives intact."""
    L, R, H, G, hd = 2, 9, 2, 5, 4
    pk = torch.zeros(L, 1, H, 3, hd)
    cache = SampleCache.start(pk, pk, torch.tensor([3]), torch.zeros(R, dtype=torch.long), G, torch.float32)
    cache.k.copy_(torch.randn(cache.k.shape))
    cache.v.copy_(torch.randn(cache.v.shape))
    before_k, before_v = cache.k.clone(), cache.v.clone()
    cache.glen = torch.arange(R)
    keep = torch.tensor([1, 2, 5, 6, 7])
    cache.keep(keep, upto=4, chunk=2)
    torch.testing.assert_close(cache.k[:, :5, :, :4], before_k[:, keep, :, :4], rtol=0, atol=0)
    torch.testing.assert_close(cache.v[:, :5, :, :4], before_v[:, keep, :, :4], rtol=0, atol=0)
    assert cache.glen.tolist() == keep.tolist() and cache.slot.tolist() == keep.tolist()


def test_training_step_learns_a_repeated_batch():
    torch.manual_seed(0)
    model = OLMo(small_config())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = torch.randint(0, 97, (4, 33))
    losses = []
    for _ in range(40):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = -model(rows[:, :-1], rows[:, 1:]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 4.0 and losses[-1] < 0.5 * losses[0]


def loss_and_grads(model, rows):
    loss = -model(rows[:, :-1], rows[:, 1:]).mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.fixture
def deterministic_restored():
    """CompiledForTraining turns torch's deterministic algorithms on for the process; put the setting back."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_compiled_training_gives_the_eager_loss_and_gradients(deterministic_restored):
    """CompiledForTraining (pretrain.compile): the same loss and gradients as the eager model, through the custom
    attention and RoPE autograd functions; its parameters and state_dict are the wrapped model's, each once."""
    torch.manual_seed(0)
    eager = OLMo(small_config())
    model = OLMo(small_config())
    model.load_state_dict(eager.state_dict())
    wrapper = CompiledForTraining(model)
    assert torch.are_deterministic_algorithms_enabled()  # a compiled run is reproducible from its seed
    assert [id(p) for p in wrapper.parameters()] == [id(p) for p in model.parameters()]
    assert set(wrapper.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    rows = torch.randint(0, 97, (4, 33))
    loss_e, grads_e = loss_and_grads(eager, rows)
    loss_c, grads_c = loss_and_grads(wrapper, rows)
    assert not wrapper._eager, "torch.compile failed on this machine (see the warning)"
    torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=0)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[f"model.{name}"], g, atol=1e-5, rtol=1e-4)


def test_the_training_forward_compiles_as_one_graph():
    """No graph break (a break per layer's attention once made the compiled step 15% slower): the whole forward,
    with the custom attention, RoPE and head functions, is one graph for inductor to fuse."""
    model = OLMo(small_config())
    rows = torch.randint(0, 97, (2, 17))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(rows[:, :-1], rows[:, 1:])
    assert explained.graph_break_count == 0, [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_failed_training_compilation_falls_back_to_eager(monkeypatch, deterministic_restored):
    def broken_compile(module, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no C++ compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = OLMo(small_config())
    wrapper = CompiledForTraining(model)
    rows = torch.randint(0, 97, (2, 17))
    with pytest.warns(UserWarning, match="the training step failed .*no C\\+\\+ compiler found"):
        loss_c, _ = loss_and_grads(wrapper, rows)
    assert wrapper._eager
    model.zero_grad()
    torch.testing.assert_close(loss_c, loss_and_grads(model, rows)[0])

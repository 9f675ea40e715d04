"""RL's token log-probs (rl/rollout.response_logprobs): log p_tau(y) and the entropy from the model's fused head,
equal to the full-logits computation (values and gradients), without ever holding the (B, L-1, V) logits, and
through a DistributedDataParallel wrapper."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from echochamber.model import ModelConfig, OLMo
from echochamber.rl.rollout import Batch, response_logprobs


def small_model(vocab: int = 97, tied: bool = True) -> OLMo:
    torch.manual_seed(0)
    return OLMo(ModelConfig(preset="custom", d_model=64, n_layers=2, n_heads=2, mlp_hidden=96, max_seq_len=320,
                            tie_embeddings=tied, init_std=0.1, vocab_size=vocab).resolve())


def a_batch(vocab: int, rows: int = 3, length: int = 40) -> Batch:
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, vocab, (rows, length), generator=g)
    return Batch(list(range(rows)), idx, torch.ones(rows, length - 1), {})


def full_logits_logprobs(model, batch: Batch, temperature: float):
    """response_logprobs as it was: fp32 (B, L-1, V) logits / temperature, a log-softmax, -sum p log p."""
    logp_all = F.log_softmax(model(batch.idx[:, :-1]).float() / temperature, dim=-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp_all.gather(-1, batch.idx[:, 1:, None])[..., 0], entropy


def values_and_grads(model, fn):
    model.zero_grad()
    logp, entropy = fn()
    (logp * torch.linspace(-1, 1, logp.numel()).view(logp.shape)).sum().backward()
    return logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_equal_the_full_logits_form_with_gradients(temperature, tied):
    model, batch = small_model(tied=tied), a_batch(97)
    lp, ent, grads = values_and_grads(model, lambda: response_logprobs(model, batch, temperature, with_entropy=True))
    ref_lp, ref_ent, ref_grads = values_and_grads(model, lambda: full_logits_logprobs(model, batch, temperature))
    torch.testing.assert_close(lp, ref_lp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent, ref_ent, atol=1e-6, rtol=1e-6)
    assert not ent.requires_grad
    for g, ref in zip(grads, ref_grads):  # fp32 rounding: sums over rows and the vocabulary run in other orders
        assert (g - ref).norm() <= 1e-5 * ref.norm()
    assert response_logprobs(model, batch, temperature)[1] is None  # no entropy unless asked


class LargestTensor(TorchDispatchMode):
    """The most elements any operation's output has while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("autocast", [False, True])
def test_response_logprobs_never_hold_the_full_logits(autocast):
    """Forward, entropy and backward work on chunks of rows: no tensor as large as the (B, L-1, V) logits is made
    (on a GPU an RL micro-batch's fp32 logits are tens of GB)."""
    vocab = 4096  # the fused head's chunks hold 2^20 logits on CPU: 256 rows of this vocabulary
    model, batch = small_model(vocab=vocab), a_batch(vocab, rows=4, length=301)
    with LargestTensor() as largest, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logp, entropy = response_logprobs(model, batch, 0.7, with_entropy=True)
        logp.sum().backward()
    full = batch.idx.shape[0] * (batch.idx.shape[1] - 1) * vocab
    assert largest.numel <= full // 4, (largest.numel, full)


def test_response_logprobs_run_through_a_ddp_wrapper(tmp_path):
    """The pass goes through the wrapper's forward (so DistributedDataParallel sees it and reduces the gradients),
    with the same values and gradients as the bare model's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model, batch = small_model(), a_batch(97)
        ddp = DistributedDataParallel(model)
        calls = []
        ddp.register_forward_pre_hook(lambda module, args: calls.append(1))
        lp, ent, grads = values_and_grads(model, lambda: response_logprobs(ddp, batch, 0.7, with_entropy=True))
        assert calls == [1]
        ref_lp, ref_ent, ref_grads = values_and_grads(model, lambda: response_logprobs(model, batch, 0.7, True))
        assert torch.equal(lp, ref_lp) and torch.equal(ent, ref_ent)
        for g, ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, ref, atol=0, rtol=0)
    finally:
        if started:
            dist.destroy_process_group()

"""Fixtures shared by several test files: one sandbox pool and one math-verify pool per session, the smoke
config's pretrained model, a small random model with peaked distributions, memorise(), and a jobs
registry folder of the session's own."""

import os

import pytest

from echochamber.verify import MathVerifyPool, VerifyConfig
from echochamber.sandbox import SandboxConfig, SandboxPool


@pytest.fixture(scope="session", autouse=True)
def own_folders(tmp_path_factory):
    """Folders the code would otherwise take under the user's temp dir, which the tests did not create, point into
    the test session's own: the jobs registry of CLI commands (echochamber.cpu) and torch.compile's inductor
    cache (tests that compile then compile from scratch)."""
    names = {"ECHOCHAMBER_JOBS_DIR": "jobs", "TORCHINDUCTOR_CACHE_DIR": "inductor"}
    old = {key: os.environ.get(key) for key in names}
    for key, name in names.items():
        os.environ[key] = str(tmp_path_factory.mktemp(name))
    yield
    for key, value in old.items():
        if value is None:
            del os.environ[key]
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def pool():
    """A two-worker sandbox (bubblewrap where installed) for tests that grade code."""
    with SandboxPool(SandboxConfig(workers=2)) as p:
        yield p


@pytest.fixture(scope="session")
def verifier():
    """A one-worker math-verify pool for tests that compare LaTeX answers."""
    with MathVerifyPool(VerifyConfig(workers=1)) as v:
        yield v


@pytest.fixture(scope="session")
def smoke_pretrained(tmp_path_factory):
    """A run folder with the `smoke` config's data and pretrained model (built once, about 10 s)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("smoke_pretrained")
    for stage in ("data", "pretrain"):
        proc = subprocess.run([sys.executable, "-m", "echochamber", stage, "--config", "smoke", f"out_dir={out}"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def peaked_model():
    """A small random model over 97 tokens with peaked distributions (init std 0.3): greedy choices are not
    near-ties, and it has favourite tokens (sampler, probe and interpreter tests)."""
    import torch

    from echochamber.model import ModelConfig, OLMo

    torch.manual_seed(0)
    cfg = ModelConfig(preset="custom", d_model=64, n_layers=2, n_heads=2, mlp_hidden=96, max_seq_len=96,
                      tie_embeddings=True, init_std=0.3, vocab_size=97).resolve()
    return OLMo(cfg).eval()


def memorise(docs: list[str], tok, *, max_seq_len: int, steps: int):
    """A tiny OLMo (d_model 64, 2 layers) trained full-batch with Adam until it has memorised `docs` (each
    followed by EOS), so that greedy decoding from a document's question reproduces it; returned in eval mode."""
    import torch

    from echochamber.model import ModelConfig, OLMo

    torch.manual_seed(0)
    model = OLMo(ModelConfig(preset="custom", d_model=64, n_layers=2, n_heads=2, mlp_hidden=128,
                             max_seq_len=max_seq_len, tie_embeddings=True,
                             init_std=0.02).resolve(vocab_size=tok.vocab_size))
    ids = [tok.encode(d) + [tok.eos_id] for d in docs]
    longest = max(len(d) for d in ids)
    idx = torch.tensor([d + [tok.eos_id] * (longest - len(d)) for d in ids])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()

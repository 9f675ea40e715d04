"""Fixtures shared by several test files: one sandbox pool and one math-verify pool per session."""

import pytest

from echochamber.verify import MathVerifyPool, VerifyConfig
from echochamber.sandbox import SandboxConfig, SandboxPool


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

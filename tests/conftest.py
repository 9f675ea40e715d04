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

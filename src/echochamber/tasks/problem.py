"""A problem: a question with its gold answer (every source yields these)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """A question with its gold answer: what RL prompts with and evaluation grades against."""
    id: str
    question: str
    answer: str  # gold answer as a string ("41", "\\frac{2}{5}")
    solution: str | None = None  # a reference solution in its dataset's own format, if it has one
    meta: dict = field(default_factory=dict)

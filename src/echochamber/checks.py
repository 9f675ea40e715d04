"""Value checks a config section runs when it is built, so a bad value fails at load time with its key's name
(`rl.samples_per_prompt=0` -> "samples_per_prompt must be >= 1, got 0") instead of deep inside a run."""

from __future__ import annotations


def check(section, *, at_least_1=(), at_least_0=(), positive=(), unit=(), unit_open=()) -> None:
    """Raise ValueError naming the first field out of range: at_least_1 / at_least_0 (integers), positive (> 0),
    unit ([0, 1]), unit_open ((0, 1])."""
    rules = [(at_least_1, lambda v: v >= 1, ">= 1"), (at_least_0, lambda v: v >= 0, ">= 0"),
             (positive, lambda v: v > 0, "> 0"), (unit, lambda v: 0 <= v <= 1, "in [0, 1]"),
             (unit_open, lambda v: 0 < v <= 1, "in (0, 1]")]
    for names, ok, text in rules:
        for name in names:
            value = getattr(section, name)
            if value is not None and not ok(value):
                raise ValueError(f"{name} must be {text}, got {value!r}")

"""Means over seeds with 95% bootstrap intervals, and when a difference between two of them is established.

A study repeats each cell over seeds; what a reader needs from the repeats is how far the mean could move, so
every figure a study reports is `summarize(values)`: the mean, and the percentile bootstrap interval of the mean
(resample the seeds' values with replacement, take the mean, 2.5th and 97.5th percentiles of 10,000 such means).
With 3 seeds this interval lies inside the values' range and is narrower than it; it says nothing about effects
smaller than the seed-to-seed spread, which is why a difference is only called established when the two
intervals do not overlap (`separated`), a deliberately strict rule for so few seeds.

(The bootstrap is a few lines of numpy; scipy.stats.bootstrap does the same but scipy is not a dependency.)
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000


def bootstrap_interval(values: Iterable[float], level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (fixed seed: the same values give the same interval).
    One value gives the point (no spread is known)."""
    a = np.asarray(list(values), dtype=float)
    if a.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if a.size == 1:
        return float(a[0]), float(a[0])
    means = np.random.default_rng(seed).choice(a, size=(resamples, a.size), replace=True).mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def summarize(values: Iterable[float | None]) -> dict | None:
    """{mean, lo, hi (the 95% bootstrap interval of the mean), sd, min, max, n} over the values that are not None
    or NaN; None when there are none."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    a = np.array(vals)
    lo, hi = bootstrap_interval(a)
    return {"mean": float(a.mean()), "lo": lo, "hi": hi, "sd": float(a.std()), "min": float(a.min()),
            "max": float(a.max()), "n": len(a)}


def separated(a: dict | None, b: dict | None) -> bool:
    """Whether two summaries' intervals do not overlap: the only differences a study calls established. A
    summary of one value has no interval, so nothing is established from it."""
    if not a or not b or a["n"] < 2 or b["n"] < 2:
        return False
    return a["hi"] < b["lo"] or b["hi"] < a["lo"]


def percent(s: dict | None) -> str:
    """'76.0% [71.5, 80.5]' (the mean and its interval in points), or the value alone for one seed."""
    if not s:
        return "—"
    if s["n"] < 2:
        return f"{s['mean']:.1%}"
    return f"{s['mean']:.1%} [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}]"

"""
Figures from samples: nearest-rank percentiles and ratios.

A percentile here is the nearest-rank one (the smallest sample with at
least p % of the samples at or below it), so every figure reported is a
sample that was actually measured; the median is the 50th percentile in
that sense.  Every summary carries its C{n}.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["percentile", "ratio", "summary"]


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank C{p}th percentile of C{ordered} (sorted, not empty)."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(samples: Iterable[float]) -> dict[str, float]:
    """C{n}, C{median}, C{p90}, C{p99}, C{max} (and C{min}) of C{samples}; C{n=0} when empty."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "min": ordered[0],
        "median": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """C{numerator / denominator}, or C{None} when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator

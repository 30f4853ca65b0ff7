"""Summaries of latency samples: percentiles (nearest rank) and a compact CDF for the plots.

Samples are nanoseconds; summaries are milliseconds, rounded to microseconds. Pure code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CDF_POINTS = (0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 99.9, 100)


def percentile(ordered: Sequence[int], q: float) -> float:
    """The nearest-rank `q`th percentile of already-sorted `ordered`, in ms (0.0 if empty)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return round(ordered[rank] / 1e6, 3)


def summarize(samples_ns: Sequence[int]) -> dict[str, float]:
    """count, p50, p95, p99, p999 and max (ms) of a latency sample."""
    ordered = sorted(samples_ns)
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "p999_ms": percentile(ordered, 99.9),
        "max_ms": percentile(ordered, 100),
    }


def cdf(samples_ns: Sequence[int]) -> list[tuple[float, float]]:
    """`(percentile, ms)` pairs at `CDF_POINTS`, enough to draw a latency CDF."""
    ordered = sorted(samples_ns)
    return [(q, percentile(ordered, q)) for q in CDF_POINTS] if ordered else []

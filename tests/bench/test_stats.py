"""Latency summaries: nearest-rank percentiles in milliseconds."""

from __future__ import annotations

from bench import stats


def test_percentiles_use_nearest_rank() -> None:
    """For 1..100 ms the p50 is 50 ms, the p99 99 ms and the max 100 ms."""
    samples = [ms * 1_000_000 for ms in range(100, 0, -1)]
    summary = stats.summarize(samples)
    assert summary["count"] == 100
    assert (summary["p50_ms"], summary["p99_ms"], summary["max_ms"]) == (50.0, 99.0, 100.0)


def test_empty_sample_summarizes_to_zeros() -> None:
    """No samples: zero count and zero percentiles, and an empty CDF."""
    assert stats.summarize([])["count"] == 0
    assert stats.summarize([])["p99_ms"] == 0.0
    assert stats.cdf([]) == []


def test_cdf_is_monotonic() -> None:
    """The CDF's latencies never decrease as the percentile rises."""
    points = stats.cdf([5, 1, 9, 3, 7] * 100)
    values = [ms for _, ms in points]
    assert values == sorted(values)
    assert points[-1][0] == 100

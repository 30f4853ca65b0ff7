"""chaos.trend: the least-squares slope of a soak's series and the report's table (pure)."""

from __future__ import annotations

import pytest

from chaos import trend


def test_fit_recovers_a_known_line() -> None:
    """Points on v = 2 t + 5 give slope 2 and intercept 5, noise around it averages out."""
    line = trend.fit([(t, 2 * t + 5 + (0.5 if t % 2 else -0.5)) for t in range(100)])
    assert line.slope == pytest.approx(2, abs=0.01)
    assert line.intercept == pytest.approx(5, abs=0.6)
    assert trend.fit([(3.0, 7.0)]) == trend.Fit(0.0, 7.0, 7.0)
    with pytest.raises(ValueError, match="at least one point"):
        trend.fit([])


def test_verdict_calls_a_climb_a_leak_and_a_wobble_flat() -> None:
    """A series that grows 50 % of its mean over the run grows; one that wobbles is flat."""
    climbing = [(float(t), 100 + t) for t in range(0, 600, 10)]
    wobbling = [(float(t), 100 + (3 if t % 20 else -3)) for t in range(0, 600, 10)]
    assert trend.verdict(trend.fit(climbing), 590).startswith("grows")
    assert trend.verdict(trend.fit(wobbling), 590) == "flat"
    assert trend.verdict(trend.fit([(0.0, 0.0), (1.0, 0.0)]), 1) == "flat"


def test_table_reports_slope_per_hour_and_skips_empty_series() -> None:
    """The slope is given per hour; a series without samples has no row."""
    rss = trend.Series("gateway RSS", "MB", [(0.0, 100.0), (60.0, 101.0), (120.0, 102.0)])
    table = trend.table([rss, trend.Series("never sampled", "count")])
    assert "| gateway RSS (MB) | 3 | 100.0 | 102.0 | 100.0 | 102.0 | +60.00 | flat |" in table
    assert "never sampled" not in table

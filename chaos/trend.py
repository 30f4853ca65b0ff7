"""Series sampled over a soak, their linear trend, and the soak report's table. Pure.

A leak shows as a slope: each series is fitted with a least-squares line over time, and the
report gives the slope per hour and what the line says the series grew by over the run, as a
share of its mean. A series is called flat when that share is under `FLAT_SHARE`: a soak's
series wobble with load and garbage collection, a leak keeps climbing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

FLAT_SHARE = 0.05  # growth over the run below 5 % of the mean: flat


@dataclass
class Series:
    """One sampled quantity: (seconds since the start, value) pairs."""

    name: str
    unit: str
    points: list[tuple[float, float]] = field(default_factory=list)

    def add(self, at: float, value: float) -> None:
        self.points.append((at, value))


@dataclass(frozen=True)
class Fit:
    slope: float  # unit per second
    intercept: float
    mean: float

    def growth(self, seconds: float) -> float:
        """What the line grows by over `seconds`."""
        return self.slope * seconds


def fit(points: Sequence[tuple[float, float]]) -> Fit:
    """Least-squares line through `points`; a single point (or equal times) fits flat."""
    if not points:
        raise ValueError("expected at least one point, got none")
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return Fit(0.0, mean_v, mean_v)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
    return Fit(slope, mean_v - slope * mean_t, mean_v)


def verdict(line: Fit, seconds: float) -> str:
    """`flat`, or `grows` / `shrinks` with the share of the mean the line moved by."""
    if line.mean == 0:
        return "flat" if line.slope == 0 else "grows from 0"
    share = line.growth(seconds) / abs(line.mean)
    if abs(share) < FLAT_SHARE:
        return "flat"
    return f"{'grows' if share > 0 else 'shrinks'} {abs(share) * 100:.0f} % of its mean"


def table(series: Sequence[Series]) -> str:
    """The markdown table: first, last, min, max, slope per hour, verdict (series with points)."""
    lines = [
        "| series | samples | first | last | min | max | slope per hour | over the run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for one in series:
        if not one.points:
            continue
        values = [v for _, v in one.points]
        seconds = one.points[-1][0] - one.points[0][0]
        line = fit(one.points)
        lines.append(
            f"| {one.name} ({one.unit}) | {len(values)} | {values[0]:,.1f} | {values[-1]:,.1f} | "
            f"{min(values):,.1f} | {max(values):,.1f} | {line.slope * 3600:+,.2f} | "
            f"{verdict(line, seconds)} |"
        )
    return "\n".join(lines) + "\n"

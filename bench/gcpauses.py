"""The gateway's garbage-collection pauses and event-loop lag over a window of a scenario, read
from its /metrics.

Every collection stops the event loop for as long as it runs; the gateway times each one
(`gateway.heap.CollectionTimer`, the `gateway_gc_pause_seconds` histogram by generation). A window
is the difference of two scrapes: how many collections ran, how long they took together, how
many exceeded the stall budget, and the bucket bound of the longest (the histogram keeps no exact
maximum). Beside them, how late the gateway's own 5 ms timer ran (`gateway.looplag`, the
`gateway_event_loop_lag_seconds` histogram): the stalls of its loop, whatever caused them,
without the network and the probe's own scheduling that the probe's round trips include; and of
the ticks later than 20 ms, how many the loop's thread spent mostly running, waiting for a CPU,
or asleep (`gateway_event_loop_stalls_total`). The lean reference has no such series:
its windows are None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

_FAMILY = "gateway_gc_pause_seconds"
_CPU_FAMILY = "gateway_gc_cpu_seconds"  # a counter: the parser drops the `_total` suffix
_LAG_FAMILY = "gateway_event_loop_lag_seconds"
_STALLS_FAMILY = "gateway_event_loop_stalls"  # a counter, by cause


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counts: per (generation, bucket bound) and in all, the summed wall seconds and
    the summed CPU seconds; the loop lag's ticks per bucket bound, its stalls per cause."""

    buckets: dict[tuple[str, float], float]
    count: float
    seconds: float
    cpu_seconds: float
    lag: dict[float, float]
    stalls: dict[str, float]


def scrape(metrics_url: str | None) -> Snapshot | None:
    if metrics_url is None:
        return None
    return parse(httpx.get(metrics_url, timeout=10.0).text)


def parse(text: str) -> Snapshot:
    """The pause and lag histograms out of a Prometheus text exposition."""
    buckets: dict[tuple[str, float], float] = {}
    lag: dict[float, float] = {}
    stalls: dict[str, float] = {}
    count = seconds = cpu_seconds = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == _STALLS_FAMILY:
            stalls.update(
                (s.labels["cause"], s.value) for s in family.samples if s.name.endswith("_total")
            )
        if family.name == _CPU_FAMILY:
            cpu_seconds += sum(s.value for s in family.samples if s.name.endswith("_total"))
        if family.name == _LAG_FAMILY:
            lag.update(
                (float(s.labels["le"]), s.value)
                for s in family.samples
                if s.name.endswith("_bucket")
            )
        if family.name != _FAMILY:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = (sample.labels["generation"], float(sample.labels["le"]))
                buckets[key] = sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                seconds += sample.value
    return Snapshot(buckets, count, seconds, cpu_seconds, lag, stalls)


def window(before: Snapshot | None, after: Snapshot | None, budget_ms: float) -> dict[str, Any]:
    """What ran between two scrapes: `gc_collections`, `gc_ms` (summed wall time), `gc_cpu_ms`
    (summed CPU time: far below `gc_ms`, the core was busy with others), `gc_over_budget`
    (collections longer than `budget_ms`, which must be a bucket bound), the same by generation
    (`gc_over_budget_by_generation`, only those with any) and `gc_longest` (the longest one's
    bucket, e.g. "<= 20 ms"; "none" when none ran); and of the loop's lag, `lag_ticks`,
    `lag_over_budget` (ticks later than `budget_ms`), `lag_longest` (the latest one's bucket)
    and, from a gateway that counts them, `lag_stalls` (ticks later than 20 ms by cause: `busy`,
    `waiting_for_cpu`, `asleep`; `off_cpu` from one that cannot tell the last two apart).
    """
    if before is None or after is None:
        return {}

    def ran(generation: str, bound: float) -> float:
        key = (generation, bound)
        return after.buckets[key] - before.buckets.get(key, 0.0)

    budget = budget_ms / 1000
    over: dict[str, int] = {}
    longest = 0.0
    for generation in sorted({g for g, _ in after.buckets}):
        in_all = ran(generation, math.inf)
        if not in_all:
            continue
        if in_all > ran(generation, budget):
            over[generation] = int(in_all - ran(generation, budget))
        bounds = sorted(b for g, b in after.buckets if g == generation)
        longest = max(longest, next(b for b in bounds if ran(generation, b) == in_all))
    return {
        "gc_collections": int(after.count - before.count),
        "gc_ms": round((after.seconds - before.seconds) * 1000, 1),
        "gc_cpu_ms": round((after.cpu_seconds - before.cpu_seconds) * 1000, 1),
        "gc_over_budget": sum(over.values()),
        "gc_over_budget_by_generation": over,
        "gc_longest": _bucket_text(longest, [b for _, b in after.buckets]),
        **_lag_window(before, after, budget),
    }


def _lag_window(before: Snapshot, after: Snapshot, budget: float) -> dict[str, Any]:
    if not after.lag:
        return {}

    def ticks(bound: float) -> float:
        return after.lag[bound] - before.lag.get(bound, 0.0)

    bounds = sorted(after.lag)
    in_all = ticks(math.inf)
    latest = next((b for b in bounds if ticks(b) == in_all), 0.0) if in_all else 0.0
    found: dict[str, Any] = {
        "lag_ticks": int(in_all),
        "lag_over_budget": int(in_all - ticks(budget)),
        "lag_longest": _bucket_text(latest, bounds),
    }
    if after.stalls:
        found["lag_stalls"] = {
            cause: int(count - before.stalls.get(cause, 0.0))
            for cause, count in sorted(after.stalls.items())
        }
    return found


# `gateway.looplag`'s causes; `off_cpu` from a gateway that cannot tell the last two apart.
_CAUSES_IN_WORDS = {
    "busy": "busy",
    "waiting_for_cpu": "waiting for a CPU",
    "asleep": "asleep",
    "off_cpu": "off the CPU",
}


def stall_causes(causes: dict[str, int]) -> str:
    """Stalls by cause (`lag_stalls`) in words: in how many the loop's thread was mostly busy,
    waiting for a CPU, or asleep."""
    counted = [
        f"{words} in {causes[cause]}"
        for cause, words in _CAUSES_IN_WORDS.items()
        if cause in causes
    ]
    return "its thread mostly " + ", ".join(counted)


def _bucket_text(bound: float, bounds: list[float]) -> str:
    if not bound:
        return "none"
    if math.isfinite(bound):
        return f"<= {bound * 1000:g} ms"
    return f"> {max(b for b in bounds if math.isfinite(b)) * 1000:g} ms"

"""The gateway's garbage-collection pauses over a window of a scenario, read from its /metrics.

Every collection stops the event loop for as long as it runs; the gateway times each one
(`gateway.heap.CollectionTimer`, the `gateway_gc_pause_seconds` histogram by generation). A window
is the difference of two scrapes: how many collections ran, how long they took together, how
many exceeded the stall budget, and the bucket bound of the longest (the histogram keeps no exact
maximum). The lean reference has no such series: its windows are None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

_FAMILY = "gateway_gc_pause_seconds"
_CPU_FAMILY = "gateway_gc_cpu_seconds"  # a counter: the parser drops the `_total` suffix


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counts: per (generation, bucket bound) and in all, the summed wall seconds and
    the summed CPU seconds."""

    buckets: dict[tuple[str, float], float]
    count: float
    seconds: float
    cpu_seconds: float


def scrape(metrics_url: str | None) -> Snapshot | None:
    if metrics_url is None:
        return None
    return parse(httpx.get(metrics_url, timeout=10.0).text)


def parse(text: str) -> Snapshot:
    """The pause histogram out of a Prometheus text exposition."""
    buckets: dict[tuple[str, float], float] = {}
    count = seconds = cpu_seconds = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == _CPU_FAMILY:
            cpu_seconds += sum(s.value for s in family.samples if s.name.endswith("_total"))
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
    return Snapshot(buckets, count, seconds, cpu_seconds)


def window(before: Snapshot | None, after: Snapshot | None, budget_ms: float) -> dict[str, Any]:
    """What ran between two scrapes: `gc_collections`, `gc_ms` (summed wall time), `gc_cpu_ms`
    (summed CPU time: far below `gc_ms`, the core was busy with others), `gc_over_budget`
    (collections longer than `budget_ms`, which must be a bucket bound), the same by generation
    (`gc_over_budget_by_generation`, only those with any) and `gc_longest` (the longest one's
    bucket, e.g. "<= 20 ms"; "none" when none ran)."""
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
        "gc_longest": _bucket_text(longest, after),
    }


def _bucket_text(bound: float, snapshot: Snapshot) -> str:
    if not bound:
        return "none"
    if math.isfinite(bound):
        return f"<= {bound * 1000:g} ms"
    last = max(b for _, b in snapshot.buckets if math.isfinite(b))
    return f"> {last * 1000:g} ms"

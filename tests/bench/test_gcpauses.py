"""`bench.gcpauses`: a window of the gateway's collection pauses and event-loop lag, from two
scrapes of the same histograms the gateway exposes (built here with prometheus_client, as the
gateway builds them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bench import gcpauses
from gateway import metrics


def _histogram() -> tuple[CollectorRegistry, Histogram, Counter]:
    registry = CollectorRegistry()
    histogram = Histogram(
        "gateway_gc_pause_seconds",
        "pauses",
        ["generation"],
        buckets=metrics.GC_PAUSE_BUCKETS,
        registry=registry,
    )
    cpu = Counter("gateway_gc_cpu_seconds", "cpu", ["generation"], registry=registry)
    return registry, histogram, cpu


def test_window_counts_what_ran_between_two_scrapes() -> None:
    """Collections before the first scrape are not counted; of those between, the ones over the
    budget are counted, and the longest is named by its bucket."""
    registry, histogram, cpu = _histogram()
    histogram.labels(generation="2").observe(1.5)  # before the window
    cpu.labels(generation="2").inc(1.0)
    before = gcpauses.parse(generate_latest(registry).decode())
    histogram.labels(generation="0").observe(0.004)
    histogram.labels(generation="0").observe(0.015)
    histogram.labels(generation="2").observe(0.045)
    cpu.labels(generation="0").inc(0.010)
    cpu.labels(generation="2").inc(0.020)
    after = gcpauses.parse(generate_latest(registry).decode())
    window = gcpauses.window(before, after, 20.0)
    assert window == {
        "gc_collections": 3,
        "gc_ms": 64.0,
        "gc_cpu_ms": 30.0,
        "gc_over_budget": 1,
        "gc_over_budget_by_generation": {"2": 1},
        "gc_longest": "<= 50 ms",
    }


def test_window_names_a_pause_past_the_last_bucket_and_an_empty_window() -> None:
    registry, histogram, _ = _histogram()
    before = gcpauses.parse(generate_latest(registry).decode())
    assert gcpauses.window(before, before, 20.0)["gc_longest"] == "none"
    histogram.labels(generation="1").observe(3.0)
    after = gcpauses.parse(generate_latest(registry).decode())
    assert gcpauses.window(before, after, 20.0)["gc_longest"] == "> 2000 ms"


def test_no_metrics_no_window() -> None:
    """The lean reference exposes no collections: nothing is scraped, the window is empty."""
    assert gcpauses.scrape(None) is None
    assert gcpauses.window(None, None, 20.0) == {}


def test_window_counts_the_loop_lag_over_the_budget() -> None:
    """Ticks before the first scrape are not counted; of those between, the ones later than the
    budget are counted and the latest is named by its bucket. Without the lag series (an older
    gateway) the window has only the collections."""
    registry, _, _ = _histogram()
    before_lag = gcpauses.parse(generate_latest(registry).decode())
    assert "lag_ticks" not in gcpauses.window(before_lag, before_lag, 20.0)
    lag = Histogram(
        "gateway_event_loop_lag_seconds", "lag", buckets=metrics.LOOP_LAG_BUCKETS, registry=registry
    )
    lag.observe(0.5)  # before the window
    before = gcpauses.parse(generate_latest(registry).decode())
    for seconds in (0.0004, 0.0004, 0.012, 0.025, 0.021):
        lag.observe(seconds)
    after = gcpauses.parse(generate_latest(registry).decode())
    window = gcpauses.window(before, after, 20.0)
    assert (window["lag_ticks"], window["lag_over_budget"], window["lag_longest"]) == (
        5,
        2,
        "<= 30 ms",
    )
    assert gcpauses.window(after, after, 20.0)["lag_longest"] == "none"
    assert "lag_stalls" not in window


def test_window_counts_the_loop_stalls_by_cause() -> None:
    """A gateway that counts its stalls by cause: the window has those counted between the two
    scrapes, each cause on its own."""
    registry, _, _ = _histogram()
    lag = Histogram(
        "gateway_event_loop_lag_seconds", "lag", buckets=metrics.LOOP_LAG_BUCKETS, registry=registry
    )
    stalls = Counter("gateway_event_loop_stalls_total", "stalls", ["cause"], registry=registry)
    busy, waiting = stalls.labels("busy"), stalls.labels("waiting_for_cpu")
    stalls.labels("asleep")  # exposed at 0, as the gateway exposes every cause
    busy.inc()  # before the window
    before = gcpauses.parse(generate_latest(registry).decode())
    for seconds, counter in ((0.025, busy), (0.04, waiting), (0.03, waiting)):
        lag.observe(seconds)
        counter.inc()
    after = gcpauses.parse(generate_latest(registry).decode())
    window = gcpauses.window(before, after, 20.0)
    assert window["lag_over_budget"] == 3
    assert window["lag_stalls"] == {"asleep": 0, "busy": 1, "waiting_for_cpu": 2}

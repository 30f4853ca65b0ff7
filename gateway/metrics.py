"""The gateway's Prometheus metrics (exposed on `/metrics` by `shared.http.metrics_route`).

Counters are incremented in batches on the fan-out path (one call per published message, not one
per recipient), so metrics cost stays flat as connections grow. The two the fan-out touches for
every message, `FRAMES_OUT` and `FANOUT_LATENCY`, are the event loop's own (`LoopCounter`,
`LoopHistogram`): prometheus_client takes a lock on every update, 0.7 µs for a counter and more
for a histogram, for a thread safety that code running on one event loop does not need; the
scrape, which runs on the same loop, reads them as they are.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.looplag import STALL_CAUSES


class LoopCounter:
    """A counter updated from the event loop's thread only (no lock); exposed as `<name>_total`
    by `LoopMetrics`."""

    __slots__ = ("documentation", "name", "value")

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def family(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, value=self.value)


class LoopHistogram:
    """A histogram updated from the event loop's thread only (no lock): a count per bucket
    (`le` bounds, then +Inf) and the sum, made cumulative when scraped."""

    __slots__ = ("_bounds", "_counts", "_sum", "documentation", "name")

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = sorted(buckets)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def family(self) -> Metric:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(repr, self._bounds), "+Inf"], self._counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self._sum
        )


class LoopMetrics(Collector):
    """Hands the loop's own counters and histograms to a scrape."""

    def __init__(self, *metrics: LoopCounter | LoopHistogram) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield metric.family()


OPEN_CONNECTIONS = Gauge("gateway_ws_connections", "WebSocket connections open on this instance")
HANDSHAKES = Counter(
    "gateway_ws_handshakes_total",
    "WebSocket handshakes answered (their log line is sampled unless WS_LOG_HANDSHAKES)",
)
FRAMES_IN = Counter("gateway_ws_frames_in_total", "Client frames received")
FRAMES_OUT = LoopCounter("gateway_ws_frames_out", "Frames queued for clients")
DROPPED = Counter(
    "gateway_ws_frames_dropped_total", "Frames not delivered to a connection, by reason", ["reason"]
)
CLOSES = Counter(
    "gateway_ws_closes_total", "Connections closed, by close code and reason", ["code", "reason"]
)
FANOUT_LATENCY = LoopHistogram(
    "gateway_fanout_latency_seconds",
    "Publish (EnvelopeMeta.ts) to frame queued on every local recipient",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REGISTRY.register(LoopMetrics(FRAMES_OUT, FANOUT_LATENCY))
# Client closes set aside by the inbound budget (`gateway.turns`): non-zero only
# when more clients closed in one loop turn than it answers (a mass disconnect).
INBOUND_DEFERRED = Counter(
    "gateway_inbound_deferred_total",
    "Client closes and hang-ups handled on a later event-loop turn than they came (inbound budget)",
)
# New connections whose first request waited for a later turn (`gateway.httpprotocol`):
# non-zero only when more arrived in one loop turn than it admits (a storm of connects).
HANDSHAKES_DEFERRED = Counter(
    "gateway_handshakes_deferred_total",
    "New connections whose request was read on a later event-loop turn (handshake budget)",
)
PUBSUB_RECONNECTS = Counter("gateway_pubsub_reconnects_total", "Redis pub/sub reconnections")
GAP_FILLS = Counter("gateway_gap_fill_frames_total", "Notifications delivered by replay")
# Their ratio is the replay's batching: pages asked for per call to notifications_svc.
REPLAY_ASKS = Counter("gateway_replay_asks_total", "Replay pages asked for (resumes, baselines)")
REPLAY_CALLS = Counter("gateway_replay_calls_total", "Replay calls made to notifications_svc")
# Every garbage collection stops the event loop for its whole length: the stall budget (20 ms at
# 10k connections) is judged on this histogram (`gateway.heap.CollectionTimer` feeds it).
GC_PAUSE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
GC_PAUSES = Histogram(
    "gateway_gc_pause_seconds",
    "Garbage collections, by generation: wall time the event loop was stopped",
    ["generation"],
    buckets=GC_PAUSE_BUCKETS,
)
GC_CPU = Counter(
    "gateway_gc_cpu_seconds_total",
    "CPU time spent in garbage collections, by generation (beside their wall time above)",
    ["generation"],
)
_GC_BY_GENERATION = [
    (GC_PAUSES.labels(generation=str(g)), GC_CPU.labels(generation=str(g))) for g in range(3)
]


# How late the event loop ran a timer (`gateway.looplag`): what every connection waited, at
# worst, behind the callbacks of one turn; the stall budget's buckets are 15, 20 and 30 ms.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOP_LAG = Histogram(
    "gateway_event_loop_lag_seconds",
    "How late the event loop ran a repeating 5 ms timer: a lower bound of each stall",
    buckets=LOOP_LAG_BUCKETS,
)


# Stalls of the loop (ticks later than `gateway.looplag.STALL`) by where the thread spent the
# delay (`gateway.looplag.STALL_CAUSES`); each cause is exposed from the start, at 0.
LOOP_STALLS = Counter(
    "gateway_event_loop_stalls_total",
    "Ticks of the 5 ms timer more than 20 ms late, by where the loop's thread spent the delay: "
    "busy running, waiting_for_cpu (runnable, another process or a CPU limit had the core), "
    "asleep (a blocking call or a paused machine), or off_cpu where the kernel cannot tell",
    ["cause"],
)
for _cause in STALL_CAUSES:
    LOOP_STALLS.labels(_cause)


def observe_loop_stall(cause: str) -> None:
    LOOP_STALLS.labels(cause).inc()


def observe_gc_pause(generation: int, seconds: float, cpu_seconds: float) -> None:
    pauses, cpu = _GC_BY_GENERATION[generation]
    pauses.observe(seconds)
    cpu.inc(cpu_seconds)


def _running_tasks() -> float:
    """Tasks of the running event loop (the scrape runs on it); 0 outside one."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0


TASKS = Gauge("gateway_asyncio_tasks", "asyncio tasks alive in the gateway's event loop")
TASKS.set_function(_running_tasks)

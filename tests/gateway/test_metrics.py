"""/metrics of a gateway: the Prometheus series operators watch."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import LoopCounter, LoopHistogram, LoopMetrics
from tests.conftest import SpawnService
from tests.gateway.conftest import WS_PATHS, Cluster, open_ws, publish, recv_json
from tests.support.processes import ServiceProcess

Token = Callable[..., str]


async def test_metrics_exposed(cluster: Cluster, token_for: Token) -> None:
    """/metrics carries connections, frames, closes, the fan-out latency histogram, the
    collections' pauses, the event loop's lag (its timer has been ticking since start-up) and
    the process's own series (`shared.process_metrics`)."""
    user = uuid.uuid4()
    ws = await open_ws(cluster.a, uuid.uuid4(), token_for(user))
    assert (await publish(cluster.b, user_id=str(user), frame={"type": "x"})).status_code == 202
    assert (await recv_json(ws))["type"] == "x"
    async with httpx.AsyncClient() as client:
        text = (await client.get(cluster.a.url + "/metrics")).text
    await ws.close()
    for name in (
        "gateway_ws_connections ",
        "gateway_ws_frames_in_total",
        "gateway_ws_frames_out_total",
        "gateway_ws_closes_total",
        "gateway_ws_frames_dropped_total",
        "gateway_fanout_latency_seconds_bucket",
        'gateway_gc_pause_seconds_bucket{generation="2",le="0.02"}',
        'gateway_gc_cpu_seconds_total{generation="0"}',
        'gateway_event_loop_lag_seconds_bucket{le="0.02"}',
        'gateway_event_loop_stalls_total{cause="busy"}',
        'gateway_event_loop_stalls_total{cause="waiting_for_cpu"}',
        'gateway_event_loop_stalls_total{cause="asleep"}',
        "log_lines_dropped_total 0.0",
        "process_open_fds ",
        "process_max_fds ",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ):
        assert name in text, name

    def count(family: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(family + "_count"))
        return float(line.split()[-1])

    assert count("gateway_fanout_latency_seconds") >= 1
    assert count("gateway_event_loop_lag_seconds") >= 1


@pytest.fixture(scope="module")
def asgi_read(cluster: Cluster, spawn_service: SpawnService) -> ServiceProcess:
    """A gateway reading its connections through ASGI: one task per connection."""
    return spawn_service("gateway", **WS_PATHS["asgi"], **cluster.upstream_env)


async def test_task_count_gauge_counts_the_loops_tasks(
    asgi_read: ServiceProcess, token_for: Token
) -> None:
    """`gateway_asyncio_tasks` is the running loop's task count: a connection read through
    ASGI adds its task (an adopted one, the default, adds none while idle)."""

    async def tasks() -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(asgi_read.url + "/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("gateway_asyncio_tasks "))
        return float(line.split()[-1])

    idle = await tasks()
    ws = await open_ws(asgi_read, uuid.uuid4(), token_for(uuid.uuid4()))
    try:
        assert idle >= 1 and await tasks() > idle
    finally:
        await ws.close()


def test_loop_metrics_expose_what_prometheus_client_would() -> None:
    """The event loop's own counter and histogram scrape like prometheus_client's: a counter's
    `_total`, a histogram's cumulative `le` buckets (a value on a bound counts in it), `+Inf`,
    count and sum."""
    registry = CollectorRegistry()
    counter = LoopCounter("t_frames", "frames")
    histogram = LoopHistogram("t_latency_seconds", "latency", buckets=(0.01, 0.001, 0.1))
    registry.register(LoopMetrics(counter, histogram))
    counter.inc()
    counter.inc(4)
    for seconds in (0.0005, 0.001, 0.05, 7.0):
        histogram.observe(seconds)
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("t_frames_total", None)] == 5
    bounds = ("0.001", "0.01", "0.1", "+Inf")
    assert [samples[("t_latency_seconds_bucket", le)] for le in bounds] == [2, 2, 3, 4]
    assert samples[("t_latency_seconds_count", None)] == 4
    assert samples[("t_latency_seconds_sum", None)] == 0.0005 + 0.001 + 0.05 + 7.0

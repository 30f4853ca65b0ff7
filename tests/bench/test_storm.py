"""The reconnect-storm scenario at toy scale against real gateways, nginx, notifications_svc and
agent_svc: every client comes back on the survivor with every notification once. No timing is
asserted; `summarize` is checked on its own with made-up records."""

from __future__ import annotations

import os
import subprocess
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from bench import local_nginx, system
from bench.progress import Progress
from bench.run import GATEWAY_ENV
from bench.scale import SCALES
from bench.scenarios import storm
from bench.stack import Stack
from shared.settings import Settings

TINY = replace(SCALES["small"], storm_clients=30, storm_rate=40, storm_warm_seconds=0.3)


@pytest.fixture(scope="module")
def storm_result(settings: Settings) -> Iterator[dict[str, Any]]:
    if local_nginx.nginx_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: .ci/run should have installed Debian's nginx")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    cores = system.plan_cores()
    environ = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    with Stack(cores, environ) as stack:
        stack.start("notifications_svc", "notifications_svc", stack.ports["notifications_svc"])
        stack.start(
            "agent_svc", "agent_svc", stack.ports["agent_svc"], extra_env={"AGENT_WORKERS": "0"}
        )
        yield storm.run(stack, TINY, cores, Progress(storm.STEPS), "gateway", GATEWAY_ENV)


def test_every_client_is_back_with_every_notification_once(storm_result: dict[str, Any]) -> None:
    """All 30 clients reconnect to the survivor; each notification created arrives once."""
    assert storm_result["clients"] == 30
    assert storm_result["created"] > 0
    assert (storm_result["lost"], storm_result["duplicates"]) == (0, 0)
    assert storm_result["all_caught_up_s"] >= storm_result["all_connected_s"] > 0
    assert storm_result["connects_per_s"] > 0


def test_report_shows_the_storm_and_its_targets(storm_result: dict[str, Any]) -> None:
    """The report section and the two target rows are rendered from the result."""
    assert "## Reconnect storm" in storm.report_lines(storm_result)
    names = [row[0] for row in storm.targets(storm_result)]
    assert names == ["reconnect storm", "connect rate"]


def test_the_load_sides_cpu_is_metered_and_each_cores_share_reported(
    storm_result: dict[str, Any],
) -> None:
    """nginx (its workers with it) and the storm clients are metered beside the survivor, and
    the report says how busy each core was while the clients came back."""
    cpu = storm_result["cpu_seconds"]
    # 30 clients may cost less than a clock tick (10 ms): only that each is metered is asserted.
    assert {"gateway_b", "nginx", "storm_clients"} <= cpu.keys()
    text = "\n".join(storm.report_lines(storm_result))
    assert "the survivor's core was" in text and "the load core" in text


def test_the_survivors_own_loop_is_reported_over_the_storm(storm_result: dict[str, Any]) -> None:
    """The survivor's loop lag and collections from the kill until every client was back, read
    from its /metrics, its stalls by cause; the report says what its loop did meanwhile."""
    loop = storm_result["survivor_loop"]
    assert loop["lag_ticks"] > 0
    assert loop["lag_stalls"].keys() == {"busy", "waiting_for_cpu", "asleep"}
    assert sum(loop["lag_stalls"].values()) == loop["lag_over_budget"]
    assert loop["gc_collections"] >= 0
    text = "\n".join(storm.report_lines(storm_result))
    assert f"late in {loop['lag_over_budget']} of its {loop['lag_ticks']:,} ticks" in text


def test_children_lists_a_process_child() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in system.children(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert system.children(child.pid) == []  # gone


def _q(*values: int) -> bytes:
    return array("q", values).tobytes()


def test_summarize_counts_missed_lost_duplicates_and_catch_up() -> None:
    """Client 0 missed seq 2 (created while away) and got it 3 s after the kill, after the last
    client was back; client 1's seq 1 never arrived (lost); one duplicate, one retry."""
    second = 1_000_000_000
    producer = storm.Producer("http://unused", "t", [uuid.uuid4(), uuid.uuid4()], 10)
    for user, seq, answered in ((0, 1, 0), (0, 2, 1 * second), (1, 1, 1 * second)):
        producer.user_index.append(user)
        producer.seq.append(seq)
        producer.answered_ns.append(answered)
    reply = {
        "index": _q(0, 1),
        "reconnected_ns": _q(2 * second, 5 * second // 2),
        "dropped_seq": _q(1, 0),
        "attempts": 5,
        "arrival_index": _q(0, 0),
        "arrival_seq": _q(1, 2),
        "arrival_ns": _q(0, 3 * second),
        "duplicates": 1,
        "errors": {},
    }
    result = storm.summarize([reply], producer, 0, 0.5)
    assert result["missed"] == 2  # client 0's seq 2, client 1's seq 1
    assert (result["lost"], result["duplicates"], result["attempts"]) == (1, 1, 1)
    assert (result["first_connected_s"], result["all_connected_s"]) == (2.0, 2.5)
    assert result["connected_quantiles_s"] == {"p10": 2.0, "p50": 2.0, "p90": 2.5, "p99": 2.5}
    assert result["all_caught_up_s"] == 3.0  # client 0's replayed seq 2
    assert result["connects_per_s"] == 4.0  # two clients back within 0.5 s
    assert result["survivor_cpu_ms_per_connect"] == 250.0

"""The report: target verdicts from results, and the Markdown built from them."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from bench import report, system
from bench.scenarios import websocket


def fanout_step(step: int, rate: int, p99: float, lost: int = 0) -> dict[str, Any]:
    return {
        "step": step,
        "offered_rate": rate,
        "achieved_rate": rate,
        "delivered_rate": rate,
        "lost": lost,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
        "p99_ms": p99,
        "max_ms": p99 + 1,
        "cdf": [(50, 1.0), (99, p99), (100, p99 + 1)],
        "cpu": {"server": 0.9, "generator": 0.5, "redis": 0.1},
        "worst_stall_ms": 5.0 + step,
        "passed": lost == 0 and p99 < 50,
    }


def server(best_rate: int, stall: float = 4.0) -> dict[str, Any]:
    steps = [fanout_step(0, best_rate, 10.0), fanout_step(1, best_rate * 2, 900.0, lost=3)]
    return {
        "idle": [
            {
                "connections": 10_000,
                "open": 10_000,
                "connect_seconds": 9.5,
                "connect_rate": 1052.6,
                "rss_per_connection_bytes": 8_000,
                "worst_stall_connecting_ms": 11.0,
                "worst_stall_ms": stall,
                "gc_connecting": {
                    "gc_collections": 12,
                    "gc_ms": 40.5,
                    "gc_cpu_ms": 30.5,
                    "gc_over_budget": 0,
                    "gc_longest": "<= 10 ms",
                },
                "gc_held": {},
            }
        ],
        "fanout": {
            "users": 10_000,
            "steps": steps,
            "best_passing_rate": best_rate,
            "best_passing_step": 0,
            "stop_reason": "lost 3 messages",
        },
        "broadcast": {
            "receivers": 10_000,
            "repeats": [{}] * 3,
            "all_received": True,
            "completion_p50_ms": 60.0,
            "completion_p99_ms": 80.0,
            "completion_max_ms": 80.0,
            "recipient_latency": {"count": 30_000, "p50_ms": 30.0, "p99_ms": 79.0},
            "probe_latency": {"count": 600, "p50_ms": 1.0, "p99_ms": 8.0, "max_ms": 25.0},
            "probe_in_flight": 150,
            "probe_lost": 0,
            "probe_target_ms": 20.0,
            "probe_met": False,
            "server_cpu_ms_per_broadcast": 90.0,
            "receivers_cpu_ms_per_broadcast": 70.0,
            "worst_stall_ms": 12.0,
        },
        "disconnect": {
            "connections": 10_000,
            "closed": 10_000,
            "closing_seconds": 1.2,
            "window_seconds": 5.0,
            "worst_stall_ms": 9.0,
            "gc": {
                "gc_collections": 3,
                "gc_ms": 20.0,
                "gc_over_budget": 0,
                "gc_longest": "<= 10 ms",
            },
        },
    }


RESULTS: dict[str, Any] = {
    "scale": {"name": "full"},
    "websocket": {"gateway": server(24_000), "lean": server(20_000)},
    "chat": {"error": "RuntimeError: model down\ntrace"},
}


def test_targets_report_met_unmet_and_unmeasured() -> None:
    """Each target gets a verdict from the numbers; a failed scenario counts as not measured."""
    verdicts = {row["name"]: row["met"] for row in report.targets(RESULTS)}
    assert verdicts["idle connections"] is True
    assert verdicts["targeted fan-out"] is True
    assert verdicts["broadcast"] is True
    assert verdicts["broadcast: other connections"] is False
    assert verdicts["fan-out vs lean reference"] is True
    assert verdicts["SSE per-token latency"] is None
    assert verdicts["REST list"] is None


def test_broadcast_delay_of_other_connections_is_a_row_and_a_column() -> None:
    """The probe frames' worst delay has its target row (with how many overlapped the
    broadcast) and a column in each broadcast table."""
    row = next(r for r in report.targets(RESULTS) if r["name"] == "broadcast: other connections")
    assert row["measured"].startswith("max 25.0 ms, p99 8.0 ms over 600 targeted frames")
    assert "150 of them sent before the last client had the broadcast" in row["measured"]
    assert "| 8.0 / 25.0 (150 in flight) | 90.0 / 70.0 |" in report.markdown(RESULTS, [])


def test_a_broadcast_that_reached_nobody_is_not_tabled_as_zero_latency() -> None:
    """A server that lost its subscription before the broadcast (the lean reference never
    re-subscribes) received nothing: its row says so instead of 0 ms figures."""
    results = copy.deepcopy(RESULTS)
    broadcast = results["websocket"]["gateway"]["broadcast"]
    empty = {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    broadcast |= {"all_received": False, "recipient_latency": empty, "probe_latency": empty}
    broadcast |= dict.fromkeys(("completion_p50_ms", "completion_p99_ms"), 0.0)
    text = report.markdown(results, [])
    assert "| no | none received | none received | none received | none received |" in text
    assert "| 0.0 |" not in text.split("### Broadcast")[1].split("###")[0]


def test_broadcast_verdict_names_this_machines_floor() -> None:
    """The send floor measured in the run is the broadcast target's evidence and has its own
    table; the verdict stays the broadcast's own figure."""
    floor = {
        "connections": 10_000,
        "frame_bytes": 124,
        "rounds": 20,
        "cpu_ms_p50": 97.4,
        "cpu_ms_min": 85.6,
        "cpu_ms_max": 130.7,
        "wall_ms_p50": 97.5,
        "wall_ms_p99": 130.8,
        "us_per_write_p50": 9.74,
    }
    results = RESULTS | {"send_floor": floor}
    row = next(r for r in report.targets(results) if r["name"] == "broadcast")
    assert row["met"] is True
    assert row["measured"].endswith(
        "; this machine's floor: 10,000 bare loopback writes of one frame from one process "
        "cost 97.4 ms of CPU p50 (85.6-130.7 ms over 20 rounds)"
    )
    text = report.markdown(results, [])
    assert "## The floor under a broadcast: bare socket writes" in text
    assert "| 10,000 | 20 | 97.4 / 85.6 / 130.7 | 9.74 | 97.5 / 130.8 |" in text
    assert (
        "floor"
        not in next(r for r in report.targets(RESULTS) if r["name"] == "broadcast")["measured"]
    )


def test_sse_verdict_is_what_the_gateway_adds() -> None:
    """With the gateway's share measured, the SSE target is judged on it, and the whole
    pipeline's figure is named beside it."""
    summary = {"p50_ms": 40.0, "p95_ms": 80.0, "p99_ms": 90.0, "max_ms": 100.0}
    chat = {
        "streams": 200,
        "completed": 200,
        "added_per_token": summary,
        "gateway_added_per_token": summary | {"p50_ms": 1.2, "p99_ms": 4.0},
    }
    row = next(r for r in report.targets(RESULTS | {"chat": chat}) if r["name"].startswith("SSE"))
    assert row["met"] is True
    assert row["measured"].startswith("1.20 ms p50, 4.00 ms p99 (200 streams")
    assert "whole pipeline from the model 40.00 ms p50" in row["measured"]
    assert "Redis and the client alone" not in row["measured"]


def test_sse_floor_is_named_beside_the_gateways_share() -> None:
    """The Redis floor (no gateway) is reported beside the gateway's share, in the target row
    and the chat table; the verdict stays the gateway's upper bound."""
    summary = {"p50_ms": 6.0, "p95_ms": 12.0, "p99_ms": 20.0, "max_ms": 30.0}
    floor = summary | {"p50_ms": 4.5, "p99_ms": 15.0}
    chat = {
        "streams": 200,
        "completed": 200,
        "tokens_per_answer": 40,
        "token_interval_ms": 20.0,
        "tokens_received": 8000,
        "tokens_expected": 8000,
        "time_to_first_token": summary,
        "added_per_token": summary,
        "gateway_added_per_token": summary,
        "redis_floor_per_entry": floor,
        "client_read_delay": summary | {"p50_ms": 1.1, "p99_ms": 9.0},
        "cpu": {"gateway": 0.2},
    }
    row = next(r for r in report.targets(RESULTS | {"chat": chat}) if r["name"].startswith("SSE"))
    assert row["met"] is False
    assert "(200 streams, reply stream to the client's socket, upper bound)" in row["measured"]
    assert "Redis and the client alone (no gateway, same seconds) 4.50 ms p50" in row["measured"]
    text = report.markdown(RESULTS | {"chat": chat}, [])
    assert "| 4.5 / 12.0 / 15.0 / 30.0 | 1.1 / 9.0 |" in text
    assert "the client's own read delay, in none of the other figures" in text


def test_stall_counts_only_sustained_load() -> None:
    """The overloaded step past the best passing one does not count against the stall target."""
    assert report.worst_stall(RESULTS["websocket"]["gateway"]) == 12.0
    verdicts = {row["name"]: row["met"] for row in report.targets(RESULTS)}
    assert verdicts["event-loop stall"] is True


def _stall_row(results: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in report.targets(results) if r["name"] == "event-loop stall")


def test_stall_verdict_covers_connecting_and_the_mass_disconnect() -> None:
    """A stall while the last level's clients connect, or after every client disconnected at
    once, fails the stall target like one with the connections held; so does a collection the
    gateway timed over the budget though the probe saw no stall."""
    assert _stall_row(RESULTS)["met"] is True
    gateway = RESULTS["websocket"]["gateway"]
    for path, value in (
        (("idle", 0, "worst_stall_connecting_ms"), 45.0),
        (("disconnect", "worst_stall_ms"), 60.0),
        (("disconnect", "gc", "gc_over_budget"), 2),
    ):
        changed = copy.deepcopy(gateway)
        target = changed
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        row = _stall_row(RESULTS | {"websocket": {"gateway": changed, "lean": gateway}})
        assert row["met"] is False, path
    over = copy.deepcopy(gateway)
    over["disconnect"]["gc"]["gc_over_budget"] = 2
    row = _stall_row(RESULTS | {"websocket": {"gateway": over, "lean": gateway}})
    assert row["measured"].endswith("; 2 garbage collections over the budget")


def test_stall_verdict_counts_the_gateways_own_loop_lag() -> None:
    """Loop-lag ticks later than the budget in any window the target names fail it though the
    probe saw no stall; the latest tick's bucket is reported. Ticks in the overloaded fan-out
    step past the best passing one do not count."""
    gateway = copy.deepcopy(RESULTS["websocket"]["gateway"])
    quiet = {"lag_ticks": 600, "lag_over_budget": 0, "lag_longest": "<= 15 ms"}
    gateway["idle"][0]["gc_connecting"] |= quiet
    gateway["fanout"]["steps"][1]["gc"] = quiet | {"lag_over_budget": 9, "lag_longest": "> 2500 ms"}
    gateway["disconnect"]["gc"] |= quiet
    row = _stall_row(RESULTS | {"websocket": {"gateway": gateway, "lean": gateway}})
    assert row["met"] is True
    assert row["measured"].endswith("more than 20 ms late 0 times (latest <= 15 ms)")
    gateway["disconnect"]["gc"] |= {"lag_over_budget": 2, "lag_longest": "<= 50 ms"}
    row = _stall_row(RESULTS | {"websocket": {"gateway": gateway, "lean": gateway}})
    assert row["met"] is False
    assert row["measured"].endswith("more than 20 ms late 2 times (latest <= 50 ms)")


def test_stall_verdict_names_the_causes_of_the_late_ticks() -> None:
    """A gateway that counted its stalls by cause has them named beside the late ticks, summed
    over the target's windows; the verdict is the same (a late tick fails it either way)."""
    gateway = copy.deepcopy(RESULTS["websocket"]["gateway"])
    quiet = {
        "lag_ticks": 600,
        "lag_over_budget": 0,
        "lag_longest": "<= 15 ms",
        "lag_stalls": {"busy": 0, "waiting_for_cpu": 0, "asleep": 0},
    }
    gateway["idle"][0]["gc_connecting"] |= quiet | {
        "lag_over_budget": 1,
        "lag_longest": "<= 30 ms",
        "lag_stalls": {"busy": 1, "waiting_for_cpu": 0, "asleep": 0},
    }
    for step in gateway["fanout"]["steps"]:
        step["gc"] = quiet
    gateway["disconnect"]["gc"] |= quiet | {
        "lag_over_budget": 2,
        "lag_stalls": {"busy": 0, "waiting_for_cpu": 2, "asleep": 0},
    }
    row = _stall_row(RESULTS | {"websocket": {"gateway": gateway, "lean": gateway}})
    assert row["met"] is False
    assert row["measured"].endswith(
        "more than 20 ms late 3 times (latest <= 30 ms; its thread mostly busy in 1, "
        "waiting for a CPU in 2, asleep in 0)"
    )


def test_collections_and_the_mass_disconnect_are_tabled() -> None:
    text = report.markdown(RESULTS, [])
    assert (
        "| 10,000 | 10,000 | 9.5 | 1052.6 | 8.0 KB | 11.0 | 4.0 | "
        "12 (40.5 ms, CPU 30.5 ms), 0 over budget, longest <= 10 ms | - |"
    ) in text
    assert "### Every client disconnects at once" in text
    assert (
        "| 10,000 | 10,000 | 1.2 | 9.0 | 3 (20.0 ms, CPU - ms), 0 over budget, longest <= 10 ms |"
        in text
    )


def test_markdown_has_a_table_per_scenario_and_the_failure() -> None:
    """The Markdown carries the target table, both servers' tables and the failed scenario."""
    text = report.markdown(RESULTS, [])
    assert "## Targets" in text
    assert text.count("### Targeted fan-out") == 2
    assert "| 24,000 | 24,000 | 0 |" in text
    assert "Failed: `RuntimeError: model down`" in text


def test_write_draws_plots(tmp_path: Path) -> None:
    """report.md links PNG files that exist (`make test` installs matplotlib with the bench
    extra, so this runs everywhere the suite does)."""
    path = report.write(RESULTS, tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "fanout_latency_vs_rate.png" in pngs
    assert all(f"]({name})" in path.read_text() for name in pngs)


def rest_run(via: str, endpoint: str, concurrency: int, p99: float) -> dict[str, Any]:
    return {
        "via": via,
        "endpoint": endpoint,
        "concurrency": concurrency,
        "count": 100,
        "p50_ms": p99 / 2,
        "p95_ms": p99 * 0.9,
        "p99_ms": p99,
        "max_ms": p99 + 1,
        "statuses": {"200": 100},
        "throughput": 500.0,
        "cpu": {"gateway": 0.2, "notifications_svc": 0.4},
        "cpu_ms_per_request": {"gateway": 0.4, "notifications_svc": 0.8},
    }


def test_rest_verdict_is_the_latency_with_one_request_in_flight() -> None:
    """The REST target is judged on the gateway list with the fewest requests in flight; the
    loaded levels are named beside it and tabled with their CPU per request."""
    rest = {
        "users": 10_000,
        "load": {"rows": 1_000_000, "copy_seconds": 20.0},
        "runs": [
            rest_run("gateway", "list", 1, 8.5),
            rest_run("notifications_svc", "list", 1, 4.0),
            rest_run("gateway", "list", 8, 40.0),
        ],
    }
    results = {**RESULTS, "rest": rest}
    row = next(r for r in report.targets(results) if r["name"] == "REST list")
    assert row["met"] is True
    assert "8.5 ms p99" in row["measured"] and "40.0 ms with 8 in flight" in row["measured"]
    slow = {**rest, "runs": [rest_run("gateway", "list", 1, 12.0)]}
    assert (
        next(
            r["met"] for r in report.targets({**RESULTS, "rest": slow}) if r["name"] == "REST list"
        )
        is False
    )
    text = report.markdown(results, [])
    assert "| gateway | list | 8 | 100 | 20.0 | 36.0 | 40.0 | 41.0 | 500.0 | 0.4 | 0.8 |" in text


def test_pubsub_section_shows_both_figures_or_why_not() -> None:
    """The read-loop step lists one Redis beside the cluster, or says why it was skipped."""
    measured = {
        "channels": 10,
        "messages": 100,
        "single_redis_us_per_message": 8.1,
        "cluster_us_per_message": 7.5,
        "runs": {"single": [8.1, 9.0], "cluster": [7.5, 7.9]},
    }
    text = report.markdown({"pubsub": measured}, None)
    assert "| one server | 8.1 |" in text and "| 3-primary cluster | 7.5 |" in text
    skipped = report.markdown({"pubsub": {"skipped": "needs redis-server 7"}}, None)
    assert "Skipped: needs redis-server 7." in skipped


def test_steal_and_machine_speed_are_stated_under_the_machine() -> None:
    """A run's steal share per core and its reference loop's timings are printed with the
    machine; a run without them prints neither."""
    plain = report.markdown(RESULTS, [])
    assert "CPU steal" not in plain and "Machine speed" not in plain
    text = report.markdown(
        RESULTS
        | {"steal_share": {"1": 0.031, "0": 0.0042}, "reference_loop_seconds": [0.081, 0.0926]},
        [],
    )
    assert "core 0 0.4%, core 1 3.1%." in text
    assert "took 0.081 s before the run and 0.093 s after" in text


def test_the_redis_server_is_named_with_the_packages() -> None:
    """A run that recorded its Redis server names its version and allocator; one that did not
    names none."""
    assert "Redis " not in report.markdown(RESULTS, []).split("## ")[0]
    text = report.markdown(
        RESULTS | {"redis_server": {"version": "7.0.15", "allocator": "jemalloc-5.3.0"}}, []
    )
    assert "Redis 7.0.15 (jemalloc-5.3.0)." in text.split("## ")[0]


def test_steal_seconds_reads_each_cores_steal_column() -> None:
    """`/proc/stat`'s eighth number of each `cpuN` line, in clock ticks; the all-cores line and
    anything else are skipped."""
    ticks = os.sysconf("SC_CLK_TCK")
    stat = (
        "cpu  10 0 5 100 0 0 0 30 0 0\n"
        "cpu0 5 0 2 50 0 0 0 10 0 0\n"
        "cpu1 5 0 3 50 0 0 0 20 0 0\n"
        "intr 12345 0 0\n"
    )
    assert system.steal_seconds(stat) == {0: 10 / ticks, 1: 20 / ticks}
    assert set(system.steal_seconds()) == set(range(os.cpu_count() or 1))


def test_profiles_of_every_phase_and_the_storms_survivor_are_tabled() -> None:
    """With `BENCH_PROFILE=1`, the report tables each profiled phase, the reconnect storm's
    survivor included (the evidence for the connect-rate target), and says how many lines of
    torn samples it left out."""
    profile = {
        "samples": 1200,
        "functions": [
            {
                "function": "write_frames (gateway/wsprotocol.py)",
                "self_pct": 56.8,
                "total_pct": 56.8,
            }
        ],
    }
    results = copy.deepcopy(RESULTS)
    results["websocket"]["gateway"]["profiles"] = {"broadcast": profile}
    results["storm"] = {"profile": profile | {"samples": 1561, "torn_lines": 14}}
    text = report.markdown(results, [])
    assert "### gateway, broadcast (1,200 samples)" in text
    assert (
        "### gateway B (the survivor), reconnect storm "
        "(1,561 samples; 14 lines of torn samples left out)"
    ) in text
    assert "| `write_frames (gateway/wsprotocol.py)` | 56.8 | 56.8 |" in text


def test_the_fanout_ramp_stops_at_a_failed_step_that_saturated_the_server() -> None:
    """A step that failed with the server's core full ends the ramp (a faster one can only fail,
    and may cost the server its Redis link); a failed step with headroom does not."""
    step = {"lost": 0, "connections_dropped": 0, "p99_ms": 150.0, "achieved_rate": 41_000}
    saturated = step | {"passed": False, "cpu": {"server": 0.98}}
    assert "saturated" in websocket._failure(saturated, 41_322)
    assert websocket._failure(step | {"passed": False, "cpu": {"server": 0.7}}, 41_322) == ""
    assert websocket._failure(step | {"passed": True, "cpu": {"server": 0.99}}, 41_322) == ""

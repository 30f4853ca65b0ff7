"""WebSocket scenarios, run against one server (the gateway or the lean reference) in turn:

a. idle connections: connect in levels (1k, 5k, 10k), time to connect and RSS per connection;
b. targeted fan-out: one random connected user per message, offered rate rising step by step
   until the server fails (a message lost, a connection dropped, p99 over a second) or the step
   budget ends; per step delivered/lost, latency percentiles, CPU of every side, worst stall;
c. broadcast: one frame to everyone connected, repeated; time until the last client has it, and
   how long targeted frames to one other connection (the "probe frames", published every
   millisecond while the broadcast runs) took meanwhile;
d. mass disconnect: every client closes at once, and the server is watched for the scale's
   `disconnect_window` seconds after (when a real fleet's clients would be reconnecting).

Every step records the worst event-loop stall seen by a probe connection that pings the server
every `PROBE_INTERVAL` (a WebSocket ping is answered by the server's event loop, so a stall of the
loop delays the pong by as much), and for the gateway the garbage collections that ran in it, as
the gateway itself timed them (`bench.gcpauses`): the probe sees a stall from outside, the
collections say whether the collector caused it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import gcpauses, stats, system
from bench.loadside import LoadSide
from bench.profile import Profiler, hot_functions
from bench.progress import Progress
from bench.scale import Scale
from shared.auth import mint_token
from shared.settings import Settings

PROBE_INTERVAL = 0.01
LATENCY_TARGET_MS = 50.0  # a step "passes" with p99 below this and nothing lost
FAILURE_P99_MS = 1000.0  # past this the server is overloaded: the ramp stops
# A failed step with the server's core this busy is saturation: a faster step can only fail too,
# and pushing on can make Redis drop a subscriber link that a server (the lean reference) never
# re-establishes, which would leave the broadcast after the ramp nobody to reach.
SATURATED_CPU = 0.95
SETTLE_SECONDS = 1.0
# A frame not received after QUIET_SECONDS without any arrival (or DRAIN_TIMEOUT in all) is lost:
# long enough to ride out a garbage-collection pause, short enough to bound a step.
QUIET_SECONDS = 3.0
DRAIN_TIMEOUT = 15.0
# Probe frames: one every PROBE_EVERY seconds for PROBE_SECONDS after each broadcast is published
# (longer than a broadcast to 10k takes), to a connection of the probe process, which is not
# busy receiving the broadcast the way the generator workers are.
PROBE_SECONDS = 0.3
PROBE_EVERY = 0.001
PROBE_DELAY_TARGET_MS = 20.0  # no other connection's frame may be held up longer by a broadcast
STALL_BUDGET_MS = 20.0  # no collection may stop the loop longer (a bucket bound of the histogram)


@dataclass(frozen=True)
class Server:
    """The server under test and the processes whose CPU a step reports."""

    name: str
    pid: int
    redis_pid: int | None
    metrics_url: str | None = None  # the gateway's /metrics (its collections); None: not exposed


def ws_path(settings: Settings, user_id: uuid.UUID) -> str:
    token = mint_token(settings, user_id, ttl=6 * 3600)
    return f"/api/v1/ws/{uuid.uuid4()}?token={token}"


def steps_planned(scale: Scale) -> int:
    return len(scale.idle_levels) + scale.rate_steps + 2


def run(
    server: Server,
    load: LoadSide,
    scale: Scale,
    settings: Settings,
    progress: Progress,
    profiles: Path | None = None,
) -> dict[str, Any]:
    """All three scenarios against `server`; with `profiles`, each phase is sampled with py-spy
    into `<profiles>/<server>-<phase>.txt` and summarized under `profiles` in the result."""
    users = [uuid.uuid4() for _ in range(max(scale.idle_levels))]
    load.start_probe(ws_path(settings, uuid.uuid4()), PROBE_INTERVAL)

    def phase(name: str) -> contextlib.AbstractContextManager[object]:
        if profiles is None:
            return contextlib.nullcontext()
        return Profiler(server.pid, profiles / f"{server.name}-{name}.txt")

    try:
        with phase("connect"):
            idle, connected = idle_connections(server, load, scale, settings, users, progress)
        if not connected:
            raise RuntimeError(f"no client could connect: {idle[-1]['errors'] if idle else {}}")
        load.publish("users", [str(user) for user in connected])
        with phase("fanout"):
            fanout = targeted_fanout(server, load, scale, progress, len(connected))
        with phase("broadcast"):
            broadcast = broadcast_all(server, load, scale, settings, progress, idle[-1]["open"])
        with phase("disconnect"):
            disconnect = mass_disconnect(server, load, scale, progress, idle[-1]["open"])
    finally:
        load.close_all()
    result: dict[str, Any] = {
        "idle": idle,
        "fanout": fanout,
        "broadcast": broadcast,
        "disconnect": disconnect,
    }
    if profiles is not None:
        result["profiles"] = {
            name: hot_functions(profiles / f"{server.name}-{name}.txt")
            for name in ("connect", "fanout", "broadcast", "disconnect")
        }
    return result


def _stall(load: LoadSide) -> dict[str, float]:
    rtts = load.probe_rtts()
    summary = stats.summarize(rtts)
    return {"worst_stall_ms": summary["max_ms"], "probe_rtt_p99_ms": summary["p99_ms"]}


def idle_connections(
    server: Server,
    load: LoadSide,
    scale: Scale,
    settings: Settings,
    users: list[uuid.UUID],
    progress: Progress,
) -> tuple[list[dict[str, Any]], list[uuid.UUID]]:
    """Connect level after level. A connection that fails is retried once (as a client would);
    returns the rows and the users whose connection is open."""
    time.sleep(SETTLE_SECONDS)
    rss0 = system.rss_bytes(server.pid)
    load.probe_rtts()
    rows: list[dict[str, Any]] = []
    connected: list[uuid.UUID] = []
    reached, connect_seconds = 0, 0.0
    for level in scale.idle_levels:
        batch = users[reached:level]
        reached = level
        collections = gcpauses.scrape(server.metrics_url)
        cpu = system.CpuMeter([server.pid])
        cpu.start()
        result = load.connect([ws_path(settings, u) for u in batch], scale.connect_concurrency)
        first_failures = len(result["failed"])
        errors = result["errors"]
        if result["failed"]:
            batch_retry = [batch[i] for i in result["failed"]]
            connect_seconds += result["seconds"]
            result = load.connect(
                [ws_path(settings, u) for u in batch_retry], scale.connect_concurrency
            )
            failed = {batch_retry[i] for i in result["failed"]}
        else:
            failed = set()
        server_cpu = cpu.stop()
        connect_seconds += result["seconds"]
        connected += [u for u in batch if u not in failed]
        time.sleep(SETTLE_SECONDS)
        rss = system.rss_bytes(server.pid)
        status = load.status()
        # Two windows: while this level's clients connected (handshakes, registry writes, the
        # heap growing), then with all of them held and nothing arriving.
        connecting = _stall(load)
        collected_connecting = gcpauses.scrape(server.metrics_url)
        time.sleep(scale.held_seconds)
        row = {
            "connections": level,
            "open": status["open"],
            "failed": level - status["open"],
            "failed_first_try": first_failures,
            "errors": errors,
            "connect_seconds": round(connect_seconds, 3),
            "connect_rate": round(level / connect_seconds, 1) if connect_seconds else 0.0,
            "server_cpu_while_connecting": round(server_cpu, 3),
            "rss_bytes": rss,
            "rss_baseline_bytes": rss0,
            "rss_per_connection_bytes": round((rss - rss0) / level) if level else 0,
            "worst_stall_connecting_ms": connecting["worst_stall_ms"],
            **_stall(load),
            "gc_connecting": gcpauses.window(collections, collected_connecting, STALL_BUDGET_MS),
            "gc_held": gcpauses.window(
                collected_connecting, gcpauses.scrape(server.metrics_url), STALL_BUDGET_MS
            ),
        }
        rows.append(row)
        progress.step(
            f"{server.name} idle {level} connections: {status['open']} open in "
            f"{connect_seconds:.1f}s, {row['rss_per_connection_bytes'] / 1024:.1f} KiB each, "
            f"worst stall {row['worst_stall_connecting_ms']:.1f} ms while connecting, "
            f"{row['worst_stall_ms']:.1f} ms held{_over_budget(row['gc_connecting'])}"
            f"{_lag(row['gc_connecting'])}"
        )
        if status["open"] < level * 0.99:
            break
    return rows, connected


def mass_disconnect(
    server: Server, load: LoadSide, scale: Scale, progress: Progress, connections: int
) -> dict[str, Any]:
    """Every generator connection closes at once; the probe's stalls and the server's
    collections are taken over the close and the `disconnect_window` seconds after (the heap
    freezer's collection after churn, and the registry detaches, run in them)."""
    before = gcpauses.scrape(server.metrics_url)
    load.probe_rtts()
    started = time.monotonic()
    closed = sum(reply["closed"] for reply in load.ask_all("close_all", 30.0, timeout=60.0))
    closing_seconds = time.monotonic() - started
    time.sleep(scale.disconnect_window)
    row = {
        "connections": connections,
        "closed": closed,
        "closing_seconds": round(closing_seconds, 3),
        "window_seconds": scale.disconnect_window,
        **_stall(load),
        "gc": gcpauses.window(before, gcpauses.scrape(server.metrics_url), STALL_BUDGET_MS),
    }
    gc = row["gc"]
    collected = (
        f", {gc['gc_collections']} collections ({gc['gc_over_budget']} over "
        f"{STALL_BUDGET_MS:.0f} ms {gc['gc_over_budget_by_generation']}, longest "
        f"{gc['gc_longest']})"
        if gc
        else ""
    )
    progress.step(
        f"{server.name} mass disconnect of {closed:,}: closed in {closing_seconds:.1f}s, worst "
        f"stall {row['worst_stall_ms']:.1f} ms in the {scale.disconnect_window:g}s after{collected}"
        f"{_lag(gc)}"
    )
    return row


def _over_budget(window: dict[str, Any]) -> str:
    if not window:
        return ""
    return (
        f", collections while connecting: {window['gc_collections']}, "
        f"{window['gc_over_budget']} over {STALL_BUDGET_MS:.0f} ms "
        f"{window['gc_over_budget_by_generation']}"
    )


def _lag(window: dict[str, Any]) -> str:
    """The gateway's own loop lag over a window, for the progress line ('' without one)."""
    if "lag_ticks" not in window:
        return ""
    causes = window.get("lag_stalls")
    return (
        f", loop lag: {window['lag_over_budget']} of {window['lag_ticks']} ticks over "
        f"{STALL_BUDGET_MS:.0f} ms, latest {window['lag_longest']}"
        + (f" ({gcpauses.stall_causes(causes)})" if causes and window["lag_over_budget"] else "")
    )


def _wait_delivered(load: LoadSide, kind: str, expected: int, timeout: float) -> int:
    """Poll until `expected` frames of `kind` arrived, or none arrived for `QUIET_SECONDS`, or
    `timeout` passes. Returns the count seen."""
    deadline = time.monotonic() + timeout
    seen, last_change = -1, time.monotonic()
    while True:
        count = load.received(kind)
        now = time.monotonic()
        if count != seen:
            seen, last_change = count, now
        if count >= expected or now > deadline or now - last_change > QUIET_SECONDS:
            return count
        time.sleep(0.02)


def targeted_fanout(
    server: Server, load: LoadSide, scale: Scale, progress: Progress, users: int
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    stop_reason = f"step budget ({scale.rate_steps} steps) exhausted"
    rate = float(scale.rate_start)
    closed_before = load.status()["closed"]
    groups = {
        "server": [server.pid],
        "redis": [server.redis_pid] if server.redis_pid else [],
        "generator": load.generator_pids,
    }
    for step in range(scale.rate_steps):
        load.probe_rtts()
        pauses = gcpauses.scrape(server.metrics_url)
        meters = {name: system.CpuMeter(pids) for name, pids in groups.items()}
        for meter in meters.values():
            meter.start()
        began = time.monotonic()
        published = load.publish("targeted", step, rate, scale.step_seconds)
        _wait_delivered(load, "targeted", published["sent"], DRAIN_TIMEOUT)
        elapsed = time.monotonic() - began
        cpu = {name: round(meter.stop(), 3) for name, meter in meters.items()}
        latencies, distinct = load.targeted(step)
        status = load.status()
        summary = stats.summarize(latencies)
        lost = published["sent"] - distinct
        row = {
            "step": step,
            "offered_rate": round(rate),
            "achieved_rate": round(published["achieved_rate"]),
            "sent": published["sent"],
            "delivered": distinct,
            "lost": lost,
            "duplicates": len(latencies) - distinct,
            "unrouted": published["unrouted"],
            "delivered_rate": round(distinct / published["seconds"]),
            **{k: v for k, v in summary.items() if k != "count"},
            "cdf": stats.cdf(latencies),
            "cpu": cpu,
            "publisher_cpu": round(published["cpu"], 3),
            "server_us_per_message": round(cpu["server"] / distinct * elapsed * 1e6, 1)
            if distinct
            else None,
            "connections_dropped": status["closed"] - closed_before,
            **_stall(load),
            "gc": gcpauses.window(pauses, gcpauses.scrape(server.metrics_url), STALL_BUDGET_MS),
        }
        row["passed"] = lost == 0 and summary["p99_ms"] < LATENCY_TARGET_MS
        steps.append(row)
        progress.step(
            f"{server.name} fan-out {rate:,.0f}/s: delivered {distinct}/{published['sent']} "
            f"p50 {summary['p50_ms']:.1f} p99 {summary['p99_ms']:.1f} max "
            f"{summary['max_ms']:.1f} ms, server cpu {cpu['server']:.2f}, generator cpu "
            f"{cpu['generator']:.2f}, worst stall {row['worst_stall_ms']:.1f} ms"
            f"{_lag(row['gc'])}"
        )
        reason = _failure(row, rate)
        if reason:
            stop_reason = reason
            break
        rate *= scale.rate_factor
    passing = [s for s in steps if s["passed"]]
    best = max(passing, key=lambda s: s["delivered_rate"]) if passing else None
    return {
        "users": users,
        "steps": steps,
        "stop_reason": stop_reason,
        "best_passing_rate": best["delivered_rate"] if best else 0,
        "best_passing_step": best["step"] if best else None,
    }


def _failure(row: dict[str, Any], rate: float) -> str:
    """Why the ramp stops after this step ('' to go on)."""
    if row["lost"] > 0:
        return f"lost {row['lost']} messages at {rate:,.0f}/s"
    if row["connections_dropped"] > 0:
        return f"{row['connections_dropped']} connections dropped at {rate:,.0f}/s"
    if row["p99_ms"] > FAILURE_P99_MS:
        return f"p99 {row['p99_ms']:.0f} ms at {rate:,.0f}/s (overloaded)"
    if not row["passed"] and row["cpu"]["server"] >= SATURATED_CPU:
        return (
            f"p99 {row['p99_ms']:.0f} ms at {rate:,.0f}/s with the server's core "
            f"{row['cpu']['server']:.0%} busy (saturated)"
        )
    if row["achieved_rate"] < 0.9 * rate:
        return f"publisher reached only {row['achieved_rate']:,}/s of {rate:,.0f}/s offered"
    return ""


def broadcast_all(
    server: Server,
    load: LoadSide,
    scale: Scale,
    settings: Settings,
    progress: Progress,
    receivers: int,
) -> dict[str, Any]:
    """`scale.broadcasts` broadcasts, one at a time; during each, probe frames to one more
    connection (its own user) measure how long the broadcast holds up other users' frames."""
    probe_user = uuid.uuid4()
    load.add_probe_connection(ws_path(settings, probe_user))
    load.publish("probe_user", str(probe_user))
    repeats: list[dict[str, Any]] = []
    everything: array[int] = array("q")
    probes: array[int] = array("q")
    worst_stall = 0.0
    cpu = system.CpuMeter([server.pid])
    # CPU seconds of the server and of the generator workers that receive the broadcast: which
    # of the two sides a broadcast's completion time is made of.
    sides = {"server": [server.pid], "receivers": [w.pid for w in load.workers]}
    used = dict.fromkeys(sides, 0.0)
    pauses = gcpauses.scrape(server.metrics_url)
    for k in range(scale.broadcasts):
        load.probe_rtts()
        before = {side: sum(map(system.cpu_seconds, pids)) for side, pids in sides.items()}
        cpu.start()
        published = load.publish("broadcast", k, PROBE_SECONDS, PROBE_EVERY)
        _wait_delivered(load, "broadcast", receivers, DRAIN_TIMEOUT)
        server_cpu = cpu.stop()
        for side, pids in sides.items():
            used[side] += sum(map(system.cpu_seconds, pids)) - before[side]
        latencies = load.broadcast_latencies(k)
        everything.extend(latencies)
        summary = stats.summarize(latencies)
        probe = _probe_frames(load, k, published, int(summary["max_ms"] * 1e6))
        probes.extend(probe.pop("latencies"))
        stall = _stall(load)
        worst_stall = max(worst_stall, stall["worst_stall_ms"])
        repeats.append(
            {
                "received": summary["count"],
                "completion_ms": summary["max_ms"],
                "p50_ms": summary["p50_ms"],
                "server_cpu": round(server_cpu, 3),
                **probe,
                **stall,
            }
        )
        time.sleep(0.2)
    completions = sorted(int(r["completion_ms"] * 1e6) for r in repeats)
    probe_latency = stats.summarize(probes)
    result = {
        "receivers": receivers,
        "repeats": repeats,
        "all_received": all(r["received"] == receivers for r in repeats),
        "completion_p50_ms": stats.percentile(completions, 50),
        "completion_p99_ms": stats.percentile(completions, 99),
        "completion_max_ms": stats.percentile(completions, 100),
        "recipient_latency": stats.summarize(everything),
        "probe_latency": probe_latency,
        "probe_in_flight": sum(r["probe_in_flight"] for r in repeats),
        "probe_lost": sum(r["probe_lost"] for r in repeats),
        "probe_target_ms": PROBE_DELAY_TARGET_MS,
        "worst_stall_ms": worst_stall,
        # per broadcast, the probe frames' share included (a few hundred targeted frames)
        "server_cpu_ms_per_broadcast": round(used["server"] * 1000 / len(repeats), 1),
        "receivers_cpu_ms_per_broadcast": round(used["receivers"] * 1000 / len(repeats), 1),
        "gc": gcpauses.window(pauses, gcpauses.scrape(server.metrics_url), STALL_BUDGET_MS),
        # reads timed when the generator read them, not when they arrived (bench.wsclient)
        "unstamped_reads": load.status()["unstamped"],
    }
    result["probe_met"] = (
        result["probe_in_flight"] > 0
        and result["probe_lost"] == 0
        and probe_latency["max_ms"] <= PROBE_DELAY_TARGET_MS
    )
    progress.step(
        f"{server.name} broadcast to {receivers}: last client after p50 "
        f"{result['completion_p50_ms']:.1f} / p99 {result['completion_p99_ms']:.1f} ms "
        f"({len(repeats)} repeats), another user's frames meanwhile p99 "
        f"{probe_latency['p99_ms']:.1f} / max {probe_latency['max_ms']:.1f} ms, "
        f"worst stall {worst_stall:.1f} ms, CPU per broadcast: server "
        f"{result['server_cpu_ms_per_broadcast']} ms, receiving clients "
        f"{result['receivers_cpu_ms_per_broadcast']} ms{_lag(result['gc'])}"
    )
    return result


def _probe_frames(
    load: LoadSide, k: int, published: dict[str, Any], completion_ns: int
) -> dict[str, Any]:
    """Collect broadcast `k`'s probe frames (waiting a little for the last ones); how many
    were sent before the last client had the broadcast (`in_flight`), how many never came."""
    sent: array[int] = array("q")
    latencies: array[int] = array("q")
    deadline = time.monotonic() + QUIET_SECONDS
    while True:
        more_sent, more_latencies = load.probe_frames(k)
        sent.extend(more_sent)
        latencies.extend(more_latencies)
        if len(latencies) >= published["probes"] or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    finished = published["sent_ns"] + completion_ns
    return {
        "probe_frames": published["probes"],
        "probe_in_flight": sum(1 for s in sent if s < finished),
        "probe_lost": published["probes"] - len(latencies),
        "probe_max_ms": round(max(latencies, default=0) / 1e6, 3),
        "latencies": latencies,
    }

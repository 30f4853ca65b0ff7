"""Turning `results.json` into what people read: `report.md` (targets met or not, then one table
per scenario) and PNG plots (fan-out latency CDF per server, latency against offered rate, chat
per-token latency CDF).

`targets()` and `markdown()` are pure functions of the results; `write()` adds the files. Plots
need matplotlib (the `bench` extra); without it the report says so and carries no plots.
`python -m bench.report results.json [out-dir]` rebuilds the report from saved results;
`python -m bench.report --summary results.json` prints the targets table (the README's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

from bench import gcpauses

STALL_TARGET_MS = 20.0


def _gateway(results: dict[str, Any], name: str = "gateway") -> dict[str, Any]:
    body = results.get("websocket", {}).get(name) or {}
    return body if "error" not in body else {}


def _fanout_window(server: dict[str, Any]) -> list[dict[str, Any]]:
    """Fan-out steps up to and including the best passing one (the load the server sustains)."""
    fanout = server.get("fanout") or {}
    best = fanout.get("best_passing_step")
    steps = fanout.get("steps", [])
    return [s for s in steps if best is not None and s["step"] <= best]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 6 with what was measured and whether it is met (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: str, met: bool | None) -> None:
        rows.append({"name": name, "target": target, "measured": measured, "met": met})

    gateway, lean = _gateway(results), _gateway(results, "lean")
    idle = (gateway.get("idle") or [{}])[-1]
    if idle.get("connections"):
        per = idle["rss_per_connection_bytes"]
        add(
            "idle connections",
            "10k idle connections at <= 10 KB each",
            f"{idle['open']:,} open, {per / 1000:.1f} KB each",
            idle["open"] >= 10_000 and per <= 10_000,
        )
    else:
        add("idle connections", "10k idle connections at <= 10 KB each", "not measured", None)
    fanout = gateway.get("fanout") or {}
    if fanout:
        best = fanout.get("best_passing_rate", 0)
        add(
            "targeted fan-out",
            ">= 20k notifications/s delivered, p99 < 50 ms, nothing lost",
            f"{best:,}/s (highest passing step)",
            best >= 20_000,
        )
    else:
        add("targeted fan-out", ">= 20k/s, p99 < 50 ms, nothing lost", "not measured", None)
    broadcast = gateway.get("broadcast") or {}
    if broadcast:
        p99 = broadcast["completion_p99_ms"]
        add(
            "broadcast",
            "broadcast to 10k clients complete in < 100 ms p99",
            f"{broadcast['receivers']:,} clients, the last one's socket had it after "
            f"{p99:.1f} ms p99"
            + ("" if broadcast["all_received"] else " (some missed it)")
            + _floor_note(results.get("send_floor")),
            broadcast["receivers"] >= 10_000 and p99 < 100 and broadcast["all_received"],
        )
    else:
        add("broadcast", "10k clients in < 100 ms p99", "not measured", None)
    probe = broadcast.get("probe_latency")
    if probe:
        add(
            "broadcast: other connections",
            f"no other connection's frame delayed > {broadcast['probe_target_ms']:.0f} ms "
            "while a broadcast to 10k runs",
            f"max {probe['max_ms']:.1f} ms, p99 {probe['p99_ms']:.1f} ms over "
            f"{probe['count']:,} targeted frames to another user, "
            f"{broadcast['probe_in_flight']:,} of them sent before the last client had the "
            f"broadcast" + (f", {broadcast['probe_lost']} lost" if broadcast["probe_lost"] else ""),
            broadcast["receivers"] >= 10_000 and broadcast["probe_met"],
        )
    else:
        add(
            "broadcast: other connections",
            "<= 20 ms delay during a broadcast",
            "not measured",
            None,
        )
    chat = results.get("chat") or {}
    if "gateway_added_per_token" in chat:
        gateway_added, pipeline = chat["gateway_added_per_token"], chat["added_per_token"]
        floor = chat.get("redis_floor_per_entry")
        beside = (
            f"; Redis and the client alone (no gateway, same seconds) {floor['p50_ms']:.2f} ms "
            f"p50, {floor['p99_ms']:.2f} ms p99"
            if floor
            else ""
        )
        add(
            "SSE per-token latency",
            "the gateway adds < 2 ms p50 per token (SSE, 200 streams)",
            f"{gateway_added['p50_ms']:.2f} ms p50, {gateway_added['p99_ms']:.2f} ms p99 "
            f"({chat['streams']} streams, reply stream to the client's socket, upper bound)"
            f"{beside}; whole "
            f"pipeline from the model {pipeline['p50_ms']:.2f} ms p50",
            gateway_added["p50_ms"] < 2 and chat["completed"] == chat["streams"],
        )
    elif "added_per_token" in chat:
        p50 = chat["added_per_token"]["p50_ms"]
        add(
            "SSE per-token latency",
            "the SSE pipeline adds < 2 ms p50 per token",
            f"{p50:.2f} ms p50 ({chat['streams']} streams)",
            p50 < 2 and chat["completed"] == chat["streams"],
        )
    else:
        add("SSE per-token latency", "< 2 ms p50 per token", "not measured", None)
    rest = results.get("rest") or {}
    listings = sorted(
        (r for r in rest.get("runs", []) if (r["via"], r["endpoint"]) == ("gateway", "list")),
        key=lambda r: r["concurrency"],
    )
    if listings:
        rows_loaded, latency = rest["load"]["rows"], listings[0]
        under_load = "".join(
            f"; {r['p99_ms']:.1f} ms with {r['concurrency']} in flight" for r in listings[1:]
        )
        add(
            "REST list",
            "REST list p99 < 10 ms at 1M rows",
            f"{latency['p99_ms']:.1f} ms p99 at {rows_loaded:,} rows through the gateway, "
            f"{latency['concurrency']} in flight{under_load}",
            latency["p99_ms"] < 10 and rows_loaded >= 1_000_000,
        )
    else:
        add("REST list", "p99 < 10 ms at 1M rows", "not measured", None)
    if fanout and lean.get("fanout"):
        ours, theirs = fanout["best_passing_rate"], lean["fanout"]["best_passing_rate"]
        ratio = ours / theirs if theirs else 0.0
        add(
            "fan-out vs lean reference",
            "at least 0.8x the lean reference",
            f"{ratio:.2f}x ({ours:,}/s vs {theirs:,}/s)",
            ratio >= 0.8,
        )
    else:
        add("fan-out vs lean reference", ">= 0.8x", "not measured", None)
    storm = results.get("storm") or {}
    if "clients" in storm:
        from bench.scenarios.storm import targets as storm_targets  # runs that measured it

        for name, target, measured, met in storm_targets(storm):
            add(name, target, measured, met)
    else:
        add("reconnect storm", "10k clients caught up within 5 s", "not measured", None)
        add("connect rate", ">= 2,500 connects/s per gateway", "not measured", None)
    stall = worst_stall(gateway)
    if stall is not None:
        over = _collections_over_budget(gateway)
        lag = loop_lag(gateway)
        add(
            "event-loop stall",
            f"no stall over {STALL_TARGET_MS:.0f} ms at 10k connections",
            f"{stall:.1f} ms worst (probe ping RTT while connecting, with every connection up: "
            f"idle, sustained fan-out, broadcast, and after all disconnect at once)"
            + ("" if over is None else f"; {over} garbage collections over the budget")
            + (
                ""
                if lag is None
                else f"; the gateway's own loop ran its 5 ms timer more than "
                f"{STALL_TARGET_MS:.0f} ms late {lag.over} times (latest {lag.latest}"
                + _stall_causes(lag)
                + ")"
            ),
            stall <= STALL_TARGET_MS
            and not over
            and not (lag and lag.over)
            and idle.get("open", 0) >= 10_000,
        )
    else:
        add("event-loop stall", f"<= {STALL_TARGET_MS:.0f} ms at 10k", "not measured", None)
    return rows


def worst_stall(server: dict[str, Any]) -> float | None:
    """Worst probe RTT over the windows the stall target names: the last idle level (while its
    clients connected, then held), sustained fan-out, broadcast, the mass disconnect."""
    samples: list[float] = []
    if server.get("idle"):
        last = server["idle"][-1]
        samples.append(last["worst_stall_ms"])
        samples.append(last.get("worst_stall_connecting_ms", 0.0))
    samples += [s["worst_stall_ms"] for s in _fanout_window(server)]
    for step in ("broadcast", "disconnect"):
        if server.get(step):
            samples.append(server[step]["worst_stall_ms"])
    return max(samples) if samples else None


class LoopLag(NamedTuple):
    """The gateway's loop lag over the stall target's windows: ticks later than the budget, the
    latest one's bucket, and those stalls by where the loop's thread spent the delay (None from
    a gateway that did not count them; the causes of `gateway.looplag`)."""

    over: int
    latest: str
    causes: dict[str, int] | None


def _stall_causes(lag: LoopLag) -> str:
    if not lag.over or lag.causes is None:
        return ""
    return "; " + gcpauses.stall_causes(lag.causes)


def loop_lag(server: dict[str, Any]) -> LoopLag | None:
    """Over the windows of `worst_stall`: how many of the gateway's loop-lag ticks were later
    than the budget, the latest one's bucket and their causes; None where the lag was not
    measured."""
    windows = []
    if server.get("idle"):
        last = server["idle"][-1]
        windows += [last.get("gc_connecting"), last.get("gc_held")]
    windows += [s.get("gc") for s in _fanout_window(server)]
    windows += [(server.get(step) or {}).get("gc") for step in ("broadcast", "disconnect")]
    measured = [w for w in windows if w and "lag_ticks" in w]
    if not measured:
        return None
    latest = max(measured, key=lambda w: _bucket_bound(w["lag_longest"]))["lag_longest"]
    causes: dict[str, int] | None = None
    if all("lag_stalls" in w for w in measured):
        causes = {}
        for w in measured:
            for cause, count in w["lag_stalls"].items():
                causes[cause] = causes.get(cause, 0) + count
    return LoopLag(sum(w["lag_over_budget"] for w in measured), latest, causes)


def _bucket_bound(text: str) -> float:
    """Orders `bench.gcpauses` bucket texts: "none" < "<= 5 ms" < "<= 30 ms" < "> 2500 ms"."""
    if text == "none":
        return 0.0
    bound = float(text.split()[1])
    return bound if text.startswith("<=") else bound + 0.5


def _collections_over_budget(server: dict[str, Any]) -> int | None:
    """Collections longer than the budget in the last idle level and the mass disconnect, as the
    gateway timed them; None where they were not measured."""
    windows = []
    if server.get("idle"):
        last = server["idle"][-1]
        windows += [last.get("gc_connecting"), last.get("gc_held")]
    if server.get("disconnect"):
        windows.append(server["disconnect"].get("gc"))
    counted = [w["gc_over_budget"] for w in windows if w]
    return sum(counted) if counted else None


def _gc_cell(window: dict[str, Any] | None) -> str:
    if not window:
        return "-"
    by_generation = window.get("gc_over_budget_by_generation") or {}
    which = ", ".join(f"gen {g}: {n}" for g, n in sorted(by_generation.items()))
    return (
        f"{window['gc_collections']} ({window['gc_ms']} ms, "
        f"CPU {window.get('gc_cpu_ms', '-')} ms), "
        f"{window['gc_over_budget']} over budget{f' ({which})' if which else ''}, "
        f"longest {window['gc_longest']}"
    )


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def summary(results: dict[str, Any]) -> str:
    """The targets table alone, for the README."""
    rows = [[t["target"], t["measured"], _mark(t["met"])] for t in targets(results)]
    return "\n".join(_table(["Target", "Measured", "Verdict"], rows)) + "\n"


def _redis_server(server: dict[str, str] | None) -> str:
    """The Redis the run used, when the run recorded it."""
    if not server:
        return ""
    return f" Redis {server['version']} ({server['allocator']})."


def _mark(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def markdown(
    results: dict[str, Any], plots: list[str] | None = None, matplotlib_missing: bool = False
) -> str:
    machine = results.get("machine", {})
    scale = results.get("scale", {})
    cores = results.get("cores", {})
    out = [
        "# Benchmark report",
        "",
        f"Run {results.get('started_at', '?')} to {results.get('finished_at', '?')}, scale "
        f"`{scale.get('name', '?')}`. Machine: {machine.get('cpu', '?')}, "
        f"{machine.get('cores', '?')} cores, {machine.get('memory_gib', '?')} GiB, Linux "
        f"{machine.get('kernel', '?')}, Python {machine.get('python', '?')}. Server under test "
        f"pinned to core(s) {cores.get('server')}, load generator, publisher, Redis, PostgreSQL "
        f"and the other services to {cores.get('load')}"
        + (" (shared: one core only)." if cores.get("shared") else ".")
        + (
            " Scheduling priority raised (server nice -10, load side nice -5)."
            if results.get("raised_priority")
            else ""
        ),
        "",
        "Packages: "
        + ", ".join(f"{k} {v}" for k, v in sorted(machine.get("packages", {}).items()))
        + "."
        + _redis_server(results.get("redis_server")),
        "",
    ]
    reference = results.get("reference_loop_seconds")
    if reference:
        out += [
            "Machine speed: a fixed pure-Python loop (1M iterations, best of 3, on the load "
            f"core) took {reference[0]:.3f} s before the run and {reference[1]:.3f} s after; "
            "compare with another run's to tell a slower machine from slower code.",
            "",
        ]
    steal = results.get("steal_share")
    if steal:
        out += [
            "CPU steal over the run (the host gave this virtual machine's cores to others while "
            "they wanted to run; above a few percent the run measured a noisy host): "
            + ", ".join(f"core {core} {share:.1%}" for core, share in sorted(steal.items()))
            + ".",
            "",
        ]
    if scale.get("name") != "full":
        out += [
            "Targets are defined at full scale; this run is smaller, so verdicts are not "
            "comparable to them.",
            "",
        ]
    out += ["## Targets", ""]
    out += _table(
        ["Target", "Measured", "Verdict"],
        [[t["target"], t["measured"], _mark(t["met"])] for t in targets(results)],
    )
    for name in ("gateway", "lean"):
        server = results.get("websocket", {}).get(name)
        if server is None:
            continue
        title = "Gateway" if name == "gateway" else "Lean reference (websockets + redis-py)"
        out += ["", f"## {title}", ""]
        if "error" in server:
            out += [f"Failed: `{server['error'].splitlines()[0]}`"]
            continue
        out += _websocket_sections(server)
    out += _send_floor_section(results.get("send_floor"))
    out += _chat_section(results.get("chat"))
    out += _rest_section(results.get("rest"))
    out += _fairness_section(results.get("fairness"))
    out += _pubsub_section(results.get("pubsub"))
    out += _profile_section(results)
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    elif matplotlib_missing:
        out += ["", "## Plots", "", "matplotlib not installed: no plots."]
    return "\n".join(out) + "\n"


def _websocket_sections(server: dict[str, Any]) -> list[str]:
    out = ["### Idle connections", ""]
    out += _table(
        [
            "Connections",
            "Open",
            "Time to connect all (s)",
            "Connects/s",
            "RSS per connection",
            "Worst stall while connecting (ms)",
            "Worst stall held (ms)",
            "Collections while connecting",
            "Collections held",
        ],
        [
            [
                f"{r['connections']:,}",
                f"{r['open']:,}",
                r["connect_seconds"],
                r["connect_rate"],
                f"{r['rss_per_connection_bytes'] / 1000:.1f} KB",
                r.get("worst_stall_connecting_ms", "-"),
                r["worst_stall_ms"],
                _gc_cell(r.get("gc_connecting")),
                _gc_cell(r.get("gc_held")),
            ]
            for r in server.get("idle", [])
        ],
    )
    fanout = server.get("fanout") or {}
    out += ["", f"### Targeted fan-out ({fanout.get('users', 0):,} users connected)", ""]
    out += _table(
        [
            "Offered/s",
            "Delivered/s",
            "Lost",
            "p50",
            "p95",
            "p99",
            "max (ms)",
            "Server CPU",
            "Server µs/msg",
            "Generator CPU",
            "Redis CPU",
            "Worst stall (ms)",
            "Pass",
        ],
        [
            [
                f"{s['offered_rate']:,}",
                f"{s['delivered_rate']:,}",
                s["lost"],
                s["p50_ms"],
                s["p95_ms"],
                s["p99_ms"],
                s["max_ms"],
                s["cpu"]["server"],
                s.get("server_us_per_message") or "-",
                s["cpu"]["generator"],
                s["cpu"].get("redis", "-"),
                s["worst_stall_ms"],
                "yes" if s["passed"] else "no",
            ]
            for s in fanout.get("steps", [])
        ],
    )
    out += [
        "",
        f"Highest passing rate (p99 < 50 ms, nothing lost): "
        f"**{fanout.get('best_passing_rate', 0):,}/s**. Ramp stopped: "
        f"{fanout.get('stop_reason', '?')}. CPU is in cores (1.0 = one core busy); server "
        "µs/msg is the server's CPU time per delivered message.",
    ]
    broadcast = server.get("broadcast") or {}
    if broadcast:
        latency = broadcast["recipient_latency"]
        out += ["", "### Broadcast", ""]
        out += _table(
            [
                "Clients",
                "Repeats",
                "All received",
                "Last client p50 (ms)",
                "Last client p99 (ms)",
                "Last client max (ms)",
                "Per-client p50 / p99 (ms)",
                "Other user's frames meanwhile p99 / max (ms)",
                "CPU per broadcast: server / clients (ms)",
                "Worst stall (ms)",
            ],
            [
                [
                    f"{broadcast['receivers']:,}",
                    len(broadcast["repeats"]),
                    "yes" if broadcast["all_received"] else "no",
                    *(
                        [
                            broadcast["completion_p50_ms"],
                            broadcast["completion_p99_ms"],
                            broadcast["completion_max_ms"],
                            f"{latency['p50_ms']} / {latency['p99_ms']}",
                            _probe_cell(broadcast),
                        ]
                        if latency["count"]
                        else ["none received"] * 5
                    ),
                    f"{broadcast.get('server_cpu_ms_per_broadcast', '-')} / "
                    f"{broadcast.get('receivers_cpu_ms_per_broadcast', '-')}",
                    broadcast["worst_stall_ms"],
                ]
            ],
        )
    disconnect = server.get("disconnect") or {}
    if disconnect:
        out += ["", "### Every client disconnects at once", ""]
        out += _table(
            [
                "Connections",
                "Closed",
                "Close took (s)",
                f"Worst stall in the {disconnect['window_seconds']:g} s after (ms)",
                "Collections (total time), over the budget, longest",
            ],
            [
                [
                    f"{disconnect['connections']:,}",
                    f"{disconnect['closed']:,}",
                    disconnect["closing_seconds"],
                    disconnect["worst_stall_ms"],
                    _gc_cell(disconnect.get("gc")),
                ]
            ],
        )
    return out


def _send_floor_section(floor: dict[str, Any] | None) -> list[str]:
    if not floor or "cpu_ms_p50" not in floor:
        return []
    out = ["", "## The floor under a broadcast: bare socket writes", ""]
    out += _table(
        [
            "Connections",
            "Rounds",
            "CPU per round p50 / min / max (ms)",
            "µs per write p50",
            "Wall per round p50 / p99 (ms)",
        ],
        [
            [
                f"{floor['connections']:,}",
                floor["rounds"],
                f"{floor['cpu_ms_p50']} / {floor['cpu_ms_min']} / {floor['cpu_ms_max']}",
                floor["us_per_write_p50"],
                f"{floor['wall_ms_p50']} / {floor['wall_ms_p99']}",
            ]
        ],
    )
    return [
        *out,
        "",
        f"One process pinned to the server core writes one {floor['frame_bytes']}-byte frame to "
        "each of as many loopback connections as the broadcast reaches, read by a process on the "
        "load core, round after round (`bench.sendfloor`): on loopback each write also runs the "
        "receiver's TCP input and wakes its reader inside the sender's system call. This is the "
        "kernel's share of a broadcast to that many clients on this machine, whatever the server.",
    ]


def _floor_note(floor: dict[str, Any] | None) -> str:
    """The broadcast target's evidence: this machine's floor (`bench.sendfloor`)."""
    if not floor or "cpu_ms_p50" not in floor:
        return ""
    return (
        f"; this machine's floor: {floor['connections']:,} bare loopback writes of one frame "
        f"from one process cost {floor['cpu_ms_p50']:.1f} ms of CPU p50 "
        f"({floor['cpu_ms_min']:.1f}-{floor['cpu_ms_max']:.1f} ms over {floor['rounds']} rounds)"
    )


def _probe_cell(broadcast: dict[str, Any]) -> str:
    probe = broadcast.get("probe_latency")
    if not probe:
        return "not measured"
    return f"{probe['p99_ms']} / {probe['max_ms']} ({broadcast['probe_in_flight']:,} in flight)"


def _percentiles(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "not measured"
    return f"{summary['p50_ms']} / {summary['p95_ms']} / {summary['p99_ms']} / {summary['max_ms']}"


def _chat_section(chat: dict[str, Any] | None) -> list[str]:
    if not chat:
        return []
    out = ["", "## Chat (SSE through gateway, agent, Redis streams; fake model)", ""]
    if "error" in chat:
        return [*out, f"Failed: `{chat['error'].splitlines()[0]}`"]
    first, added = chat["time_to_first_token"], chat["added_per_token"]
    out += _table(
        [
            "Streams",
            "Completed",
            "Tokens received",
            "First token p50 / p99 (ms)",
            "Added per token p50 / p95 / p99 / max (ms)",
            "Added by the gateway p50 / p95 / p99 / max (ms)",
            "Redis floor p50 / p95 / p99 / max (ms)",
            "Client's own read delay p50 / p99 (ms)",
            "CPU (cores)",
        ],
        [
            [
                chat["streams"],
                chat["completed"],
                f"{chat['tokens_received']:,} of {chat['tokens_expected']:,}",
                f"{first['p50_ms']} / {first['p99_ms']}",
                f"{added['p50_ms']} / {added['p95_ms']} / {added['p99_ms']} / {added['max_ms']}",
                _percentiles(chat.get("gateway_added_per_token")),
                _percentiles(chat.get("redis_floor_per_entry")),
                _read_delay(chat.get("client_read_delay")),
                ", ".join(f"{k} {v}" for k, v in chat["cpu"].items()),
            ]
        ],
    )
    out += [
        "",
        f"The fake model writes {chat['tokens_per_answer']} tokens "
        f"{chat['token_interval_ms']:.0f} ms apart; first-token time includes that first "
        "interval. Arrival = when the bytes reached the client's socket, as the kernel stamped "
        "them (SO_TIMESTAMPNS, `bench.arrivals`), not when the client — one process reading every "
        "stream on the load core — read them: that delay is the client's own read delay, in none "
        "of the other figures. Added per token = arrival minus the model's write time (the "
        "whole pipeline: agent worker, Redis, gateway). Added by the gateway = arrival of each "
        "`token` event minus when the worker wrote it to its reply stream (its entry id's "
        "millisecond, or the model's write of its last delta if later): an upper bound, at most "
        "1 ms above the true figure. The agent workers run on the load core, not the gateway's. "
        "Redis floor = the same measurement of a probe stream this client reads straight from "
        "Redis, written at the model's pacing by a process beside the workers, in the same "
        "seconds (`bench.redis_probe`): what the hops around the gateway cost on this machine.",
    ]
    if chat.get("errors"):
        out += ["", "Errors: " + ", ".join(f"`{k}` x{v}" for k, v in chat["errors"].items())]
    return out


def _read_delay(delay: dict[str, Any] | None) -> str:
    return f"{delay['p50_ms']} / {delay['p99_ms']}" if delay else "-"


def _fairness_section(fairness: dict[str, Any] | None) -> list[str]:
    if not fairness:
        return []
    out = ["", "## Fair queue (user B's first token while user A floods; one worker)", ""]
    rows = []
    for mode, label in (
        ("fifo", "before: first come, first served"),
        ("fair", "after: fair queue"),
    ):
        found = fairness.get(mode)
        if not found:
            continue
        if "error" in found:
            rows.append([label, "failed", found["error"].splitlines()[0], "", ""])
            continue
        rows.append(
            [
                label,
                found["flood"],
                f"{found['b_first_token_ms']:.0f}",
                found["a_answers_started_before_b"],
                f"{found['a_completed']} / {found['flood']}, B {found['b_completed']}",
            ]
        )
    out += _table(
        [
            "Mode",
            "A's questions",
            "B's first token (ms)",
            "A's answers started before B's first token",
            "Completed",
        ],
        rows,
    )
    out += [
        "",
        "A asks all questions at once; B asks once the gateway accepted all of them. "
        "Fair: at most one per-user place in `chat:requests` (CHAT_MAX_STREAMING_PER_USER=1), "
        'so B waits for A\'s answer in progress only (docs/chat.md, "Fair use").',
    ]
    return out


def _rest_section(rest: dict[str, Any] | None) -> list[str]:
    if not rest:
        return []
    out = ["", "## REST", ""]
    if "error" in rest:
        return [*out, f"Failed: `{rest['error'].splitlines()[0]}`"]
    load = rest["load"]
    out += [
        f"{load['rows']:,} notifications over {rest['users']:,} users, bulk-loaded with COPY "
        f"in {load['copy_seconds']} s. The gateway and notifications_svc share the server core; "
        "the client and PostgreSQL run on the load core. CPU is server CPU time per request.",
        "",
    ]
    rows = []
    for r in rest["runs"]:
        cpu = r["cpu_ms_per_request"]
        rows.append(
            [
                r["via"],
                r["endpoint"],
                r["concurrency"],
                r["count"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["max_ms"],
                r["throughput"],
                cpu["gateway"],
                cpu["notifications_svc"],
                ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
            ]
        )
    out += _table(
        [
            "Via",
            "Endpoint",
            "In flight",
            "Requests",
            "p50",
            "p95",
            "p99",
            "max (ms)",
            "Requests/s",
            "Gateway CPU (ms)",
            "notifications_svc CPU (ms)",
            "Statuses",
        ],
        rows,
    )
    return out


def _pubsub_section(pubsub: dict[str, Any] | None) -> list[str]:
    if pubsub is None:
        return []
    out = ["", "## Fan-out read loop: one Redis beside a Redis Cluster", ""]
    if "error" in pubsub:
        return [*out, f"Failed: `{pubsub['error'].splitlines()[0]}`"]
    if "skipped" in pubsub:
        return [*out, f"Skipped: {pubsub['skipped']}."]
    out += [
        f"The gateway's fan-out alone, {pubsub['channels']} user channels, "
        f"{pubsub['messages']} messages; subscriber CPU per delivered message, best of "
        f"{len(pubsub['runs']['single'])} runs (bench/scenarios/pubsub.py).",
        "",
    ]
    return out + _table(
        ["Redis", "CPU µs per message", "runs"],
        [
            ["one server", pubsub["single_redis_us_per_message"], pubsub["runs"]["single"]],
            ["3-primary cluster", pubsub["cluster_us_per_message"], pubsub["runs"]["cluster"]],
        ],
    )


def _profile_section(results: dict[str, Any]) -> list[str]:
    found: list[tuple[str, dict[str, Any]]] = []
    for name, server in results.get("websocket", {}).items():
        for phase, profile in (server.get("profiles") or {}).items():
            found.append((f"{name}, {phase}", profile))
    for name, title in (
        ("chat", "gateway, chat"),
        ("rest", "gateway, rest"),
        ("storm", "gateway B (the survivor), reconnect storm"),
    ):
        profile = (results.get(name) or {}).get("profile")
        if profile:
            found.append((title, profile))
    if not found:
        return []
    out = ["", "## Profiles (py-spy, busy samples only)", ""]
    for title, profile in found:
        torn = profile.get("torn_lines", 0)
        left_out = f"; {torn:,} lines of torn samples left out" if torn else ""
        out += [f"### {title} ({profile['samples']:,} samples{left_out})", ""]
        out += _table(
            ["Function", "Own %", "Inclusive %"],
            [[f"`{f['function']}`", f["self_pct"], f["total_pct"]] for f in profile["functions"]],
        )
        out.append("")
    return out


def plot(results: dict[str, Any], out: Path) -> list[str] | None:
    """Write the PNG plots; returns their file names (None without matplotlib; [] when the
    scenarios run have nothing to plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names: list[str] = []
    servers = {n: s for n, s in results.get("websocket", {}).items() if "error" not in s}
    for name, server in servers.items():
        steps = (server.get("fanout") or {}).get("steps", [])
        if not steps:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for s in steps:
            if s["cdf"]:
                ax.plot(
                    [ms for _, ms in s["cdf"]],
                    [q for q, _ in s["cdf"]],
                    label=f"{s['offered_rate']:,}/s",
                )
        ax.set_xscale("log")
        ax.set_xlabel("publish-to-receive latency (ms, log)")
        ax.set_ylabel("percentile")
        ax.set_title(f"{name}: targeted fan-out latency CDF per offered rate")
        ax.legend(fontsize="small", ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        file = f"fanout_cdf_{name}.png"
        fig.savefig(out / file, dpi=110, bbox_inches="tight")
        plt.close(fig)
        names.append(file)
    if servers:
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, server in servers.items():
            steps = (server.get("fanout") or {}).get("steps", [])
            rates = [s["offered_rate"] for s in steps]
            ax.plot(rates, [s["p50_ms"] for s in steps], "o--", label=f"{name} p50")
            ax.plot(rates, [s["p99_ms"] for s in steps], "o-", label=f"{name} p99")
        ax.axhline(50, color="grey", linestyle=":", label="50 ms target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (messages/s, log)")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title("Targeted fan-out: latency against offered rate")
        ax.legend(fontsize="small")
        ax.grid(True, which="both", alpha=0.3)
        fig.savefig(out / "fanout_latency_vs_rate.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        names.append("fanout_latency_vs_rate.png")
    chat = results.get("chat") or {}
    if chat.get("added_per_token_cdf"):
        fig, ax = plt.subplots(figsize=(8, 5))
        cdf = chat["added_per_token_cdf"]
        ax.plot([ms for _, ms in cdf], [q for q, _ in cdf])
        ax.set_xlabel("latency added per token (ms)")
        ax.set_ylabel("percentile")
        ax.set_title(f"Chat: per-token latency added by the pipeline ({chat['streams']} streams)")
        ax.grid(True, alpha=0.3)
        fig.savefig(out / "chat_token_latency_cdf.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        names.append("chat_token_latency_cdf.png")
    return names


def write(results: dict[str, Any], out: Path) -> Path:
    """Write the plots and `report.md` into `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    names = plot(results, out)
    path = out / "report.md"
    text = markdown(results, names or [], matplotlib_missing=names is None)
    topic_result = results.get("topics")
    if isinstance(topic_result, dict) and "error" not in topic_result:
        from bench.scenarios.topics import report_lines  # only runs that measured topics

        text = text.rstrip("\n") + "\n\n" + "\n".join(report_lines(topic_result))
    storm_result = results.get("storm")
    if isinstance(storm_result, dict) and "error" not in storm_result:
        from bench.scenarios.storm import report_lines as storm_lines

        text = text.rstrip("\n") + "\n\n" + "\n".join(storm_lines(storm_result))
    path.write_text(text)
    return path


def main(argv: list[str]) -> int:
    if not argv or (argv[0] == "--summary" and len(argv) < 2):
        print(
            "usage: python -m bench.report results.json [out-dir]\n"
            "       python -m bench.report --summary results.json   (targets table to stdout)",
            file=sys.stderr,
        )
        return 2
    if argv[0] == "--summary":
        print(summary(json.loads(Path(argv[1]).read_text())), end="")
        return 0
    source = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else source.parent
    print(write(json.loads(source.read_text()), out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

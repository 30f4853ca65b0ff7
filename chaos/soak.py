"""`make soak` / `python -m chaos.soak`: hours of steady traffic, watching for leaks.

The chaos run's system (`chaos.system`: devstack, two gateways behind nginx, two agents) with
`--clients` WebSocket clients through nginx (counters only, no per-arrival record, so the
generator's own memory stays flat), a tenth of them closing and resuming with `?last_seq=`
every `--churn-every` seconds, and a producer creating `--rate` notifications/s. Every
`--sample` seconds it records, for each gateway, its RSS and open file descriptors (from /proc),
its asyncio task count (`gateway_asyncio_tasks` on its /metrics) and connections, and Redis's
`used_memory` (INFO memory). At the end: every series with its linear fit (`chaos.trend`) in
`--out` (bench/SOAK.md) with a plot beside it, and what the clients received against what
committed. Loopback only, bounded by `--duration`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from bench.local_nginx import nginx_binary
from chaos import trend
from chaos.load import Client, Producer
from chaos.system import INTERNAL_TOKEN, System
from shared.auth import mint_token
from shared.settings import Settings

GATEWAYS = ("gateway", "gateway2")
RAMP = 250  # clients connecting at once


@dataclass(frozen=True)
class Config:
    clients: int = 5000
    rate: float = 1000.0  # creates per second
    duration: float = 1800.0  # seconds of steady traffic, sampled
    churn_every: float = 60.0  # seconds between two churns of a tenth of the clients
    churn_share: float = 0.1
    sample: float = 10.0  # seconds between two samples


def _say(text: str) -> None:
    print(f"soak: {text}", file=sys.stderr, flush=True)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for pid {pid}")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise LookupError(f"{name} not in /metrics")


def make_series() -> dict[str, trend.Series]:
    found: dict[str, trend.Series] = {}
    for gateway in GATEWAYS:
        found[f"{gateway} rss"] = trend.Series(f"{gateway} RSS", "MB")
        found[f"{gateway} fds"] = trend.Series(f"{gateway} open file descriptors", "count")
        found[f"{gateway} tasks"] = trend.Series(f"{gateway} asyncio tasks", "count")
        found[f"{gateway} connections"] = trend.Series(f"{gateway} connections", "count")
    found["redis"] = trend.Series("Redis used_memory", "MB")
    return found


async def _sample(
    system: System,
    redis: aioredis.Redis,
    http: httpx.AsyncClient,
    series: dict[str, trend.Series],
    at: float,
) -> None:
    for gateway in GATEWAYS:
        pid = system.pid_of(gateway)
        series[f"{gateway} rss"].add(at, _rss_mb(pid))
        series[f"{gateway} fds"].add(at, len(os.listdir(f"/proc/{pid}/fd")))
        text = (await http.get(system.url(gateway) + "/metrics")).text
        series[f"{gateway} tasks"].add(at, _metric(text, "gateway_asyncio_tasks"))
        series[f"{gateway} connections"].add(at, _metric(text, "gateway_ws_connections"))
    memory = await redis.info("memory")
    series["redis"].add(at, int(memory["used_memory"]) / 2**20)


async def _churn(clients: list[Client], config: Config) -> None:
    """Every `churn_every` seconds close a random tenth of the clients (they resume)."""
    while True:
        await asyncio.sleep(config.churn_every)
        chosen = random.sample(clients, max(1, int(len(clients) * config.churn_share)))
        await asyncio.gather(*(client.reconnect() for client in chosen))


@dataclass
class Outcome:
    series: dict[str, trend.Series]
    committed: int
    expected: int  # committed notifications times the clients of their users
    received: int
    backwards: int  # duplicated or reordered arrivals
    drops: int
    missing: int  # per client, committed for its user and not received (duplicates aside)
    offline: int  # clients not connected at the end
    late_creates: int  # creates started over 0.1 s after their due time
    requested: int  # creates the producer sent
    held_back: int  # creates that fell due and were never offered (the producer's lanes full)
    produced_seconds: float  # from the producer's start until every create was answered
    connect_seconds: float


async def soak(system: System, config: Config) -> Outcome:
    settings = Settings.from_env(system.env)
    users = [uuid.uuid4() for _ in range(max(1, config.clients // 2))]
    clients = [
        Client(
            f"{system.nginx_url.replace('http', 'ws', 1)}/api/v1/ws/{uuid.uuid4()}"
            f"?token={mint_token(settings, user, 24 * 3600)}",
            user,
            f"127.0.0.{1 + index // 50}",  # nginx: limit_conn 100 per address
            record=False,
            open_timeout=30,  # a reconnect storm of thousands on 2 cores is slow, not refused
        )
        for index in range(config.clients)
        for user in [users[index % len(users)]]
    ]
    producer = Producer(
        system.url("notifications_svc"), INTERNAL_TOKEN, users, config.rate, record=False
    )
    state = json.loads((system.root / "data" / "infra.json").read_text())
    redis = aioredis.from_url(state["redis_url"])
    series = make_series()
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    try:
        async with asyncio.timeout(600):
            for first in range(0, len(clients), RAMP):  # in batches: no self-made storm
                batch = clients[first : first + RAMP]
                tasks += [asyncio.create_task(c.run()) for c in batch]
                for client in batch:
                    await client.connected.wait()
        connect_seconds = time.monotonic() - started
        _say(f"{len(clients)} clients connected in {connect_seconds:.1f} s; {config.rate:g}/s")
        background = [
            asyncio.create_task(producer.run()),
            asyncio.create_task(_churn(clients, config)),
        ]
        tasks += background
        begin = time.monotonic()
        async with httpx.AsyncClient(timeout=10) as http:
            while (now := time.monotonic()) - begin < config.duration:
                await _sample(system, redis, http, series, now - begin)
                await asyncio.sleep(config.sample - (time.monotonic() - now) % config.sample)
        background[0].cancel()  # the producer sees every create it started through
        await asyncio.gather(background[0], return_exceptions=True)
        produced_seconds = time.monotonic() - begin
        background[1].cancel()
        committed = producer.committed
        for _ in range(300):  # at most 60 s for the last notifications to arrive
            if all(c.count - c.backwards >= committed[c.user] for c in clients):
                break
            await asyncio.sleep(0.2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
    return Outcome(
        series=series,
        committed=sum(committed.values()),
        expected=sum(committed[c.user] for c in clients),
        received=sum(c.count for c in clients),
        backwards=sum(c.backwards for c in clients),
        drops=sum(len(c.drops) for c in clients),
        missing=sum(max(0, committed[c.user] - (c.count - c.backwards)) for c in clients),
        offline=sum(1 for c in clients if not c.connected.is_set()),
        late_creates=producer.late,
        requested=producer.requested,
        held_back=producer.held_back,
        produced_seconds=produced_seconds,
        connect_seconds=connect_seconds,
    )


def report(config: Config, outcome: Outcome, plot_name: str, note: str) -> str:
    """bench/SOAK.md: what ran, the table of series with their slopes, the counts."""
    return (
        "# Soak run (`make soak`)\n\n"
        "The chaos run's set-up (`make run`'s devstack, a second gateway and a second agent, "
        f"nginx in front of both gateways). {config.clients} WebSocket clients through nginx "
        f"(two sessions per user, 50 per loopback address), {config.churn_share:.0%} of them "
        f"closing and resuming with `?last_seq=` every {config.churn_every:g} s; a producer "
        f"creating {config.rate:g} notifications/s through notifications_svc; "
        f"{config.duration / 60:.1f} minutes sampled every {config.sample:g} s after every client "
        f"had connected ({outcome.connect_seconds:.1f} s). Each series is fitted with a "
        "least-squares line (`chaos/trend.py`): the slope per hour, and what the line grows by "
        f"over the run as a share of its mean (under {trend.FLAT_SHARE:.0%}: flat).\n\n"
        f"Run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({os.cpu_count()} cores shared with other work, load average "
        f"{os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}."
        f"{(' ' + note) if note else ''}\n\n"
        f"{trend.table(list(outcome.series.values()))}\n"
        f"![every series over time]({plot_name})\n\n"
        f"Delivery: {outcome.committed:,} notifications committed; clients should hold "
        f"{outcome.expected:,} and received {outcome.received:,}, of which "
        f"{outcome.backwards:,} duplicated or reordered, {outcome.missing:,} missing; "
        f"{outcome.drops:,} drops (churn and others), {outcome.offline} clients not connected "
        f"at the end. The producer (batches through `POST /internal/v1/notifications/batch`) "
        f"requested {outcome.requested / outcome.produced_seconds:.0f} creates/s and had "
        f"{outcome.committed / outcome.produced_seconds:.0f}/s committed over the "
        f"{outcome.produced_seconds:.0f} s from its start until its last answer; "
        f"{outcome.held_back:,} creates fell due while their lane already held a full batch and "
        f"were never offered; it started {outcome.late_creates:,} creates more than 0.1 s late "
        "(the load generator is one Python process on the same cores).\n"
    )


def draw(series: dict[str, trend.Series], out: Path) -> bool:
    """One panel per quantity, both gateways together, each with its fitted line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    kinds = ("rss", "fds", "tasks", "connections")
    fig, axes = plt.subplots(len(kinds) + 1, 1, figsize=(9, 12), sharex=True)
    groups = [[series[f"{g} {kind}"] for g in GATEWAYS] for kind in kinds] + [[series["redis"]]]
    for axis, group in zip(axes, groups, strict=True):
        for one in group:
            if not one.points:
                continue
            times = [t / 60 for t, _ in one.points]
            axis.plot(times, [v for _, v in one.points], label=one.name, linewidth=0.9)
            line = trend.fit(one.points)
            axis.plot(
                times,
                [line.intercept + line.slope * t * 60 for t in times],
                linestyle="--",
                linewidth=0.8,
            )
        axis.set_ylabel(group[0].unit)
        axis.legend(fontsize=7)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Steady traffic with churn; leaks as slopes.")
    parser.add_argument("--clients", type=int, default=Config.clients)
    parser.add_argument("--rate", type=float, default=Config.rate, help="creates per second")
    parser.add_argument("--duration", type=float, default=Config.duration, help="seconds")
    parser.add_argument("--churn-every", type=float, default=Config.churn_every, help="seconds")
    parser.add_argument("--sample", type=float, default=Config.sample, help="seconds")
    parser.add_argument("--note", default="", help="a sentence added to the report")
    parser.add_argument("--out", type=Path, default=Path("bench/SOAK.md"))
    parser.add_argument("--logs", type=Path, default=Path("bench/results/soak"), help="logs kept")
    args = parser.parse_args(argv)
    config = Config(
        clients=args.clients,
        rate=args.rate,
        duration=args.duration,
        churn_every=args.churn_every,
        sample=args.sample,
    )
    binary = nginx_binary()
    if binary is None:
        print("soak: nginx is not installed (Debian: apt-get install nginx)", file=sys.stderr)
        return 2
    with System(binary) as system:
        try:
            outcome = asyncio.run(soak(system, config))
        finally:
            system.keep_logs(args.logs)
    picture = args.out.with_suffix(".png")
    draw(outcome.series, picture)
    text = report(config, outcome, picture.name, args.note)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

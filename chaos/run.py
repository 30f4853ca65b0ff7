"""`make chaos` / `python -m chaos`: one run of every fault, one after another, under load.

Starts the system (`chaos.system`), connects the clients through nginx (two sessions per user,
so each user's frames fan out to both gateways), starts the producer, and then for each fault:
steady traffic for `lead` seconds, the fault, and the wait until every part answers its probe
again and every client has caught up (bounded by `settle_timeout`); then the fault's `restore`.
After the last step the producer stops, every create it started is answered, and every client is
given the time to receive everything; the report is computed from what was recorded and written
to `--out` (default bench/CHAOS.md). Exit status 0 when no step lost, duplicated or reordered a
notification and the producer never saw a 500; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chaos import report
from chaos.faults import Fault, faults
from chaos.load import Client, Producer
from chaos.system import INTERNAL_TOKEN, System, nginx_binary
from shared.auth import mint_token
from shared.settings import Settings


@dataclass(frozen=True)
class Config:
    clients: int = 300
    rate: float = 150.0  # creates per second
    pause: float = 10.0  # seconds a SIGSTOP lasts
    lead: float = 2.0  # seconds of steady traffic before each fault
    settle_timeout: float = 90.0  # seconds a step may take to recover before it is given up
    only: tuple[str, ...] = ()  # fault names to run (all when empty)


def _say(text: str) -> None:
    print(f"chaos: {text}", file=sys.stderr, flush=True)


async def _until(what: str, check: Callable[[], bool], timeout: float) -> bool:
    """Poll `check()` every 50 ms until true; False (and a message) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            _say(f"gave up waiting: {what}")
            return False
        await asyncio.sleep(0.05)
    return True


def _caught_up(clients: list[Client], producer: Producer, until: float) -> bool:
    """Every create requested up to `until` is answered and held by every client of its user."""
    if not producer.answered(until):
        return False
    due: dict[uuid.UUID, set[int]] = {}
    for create in producer.creates:
        if create.requested_at <= until and create.seq is not None:
            due.setdefault(create.user, set()).add(create.seq)
    for client in clients:
        needed = due.get(client.user)
        if needed and not needed <= {seq for seq, _ in client.received}:
            return False
    return True


def _behind(clients: list[Client], producer: Producer, until: float) -> str:
    """Why `_caught_up` is false, for the log: unanswered creates, clients missing seqs."""
    unanswered = sum(1 for c in producer.creates if c.requested_at <= until and c.seq is None)
    due: dict[uuid.UUID, set[int]] = {}
    for create in producer.creates:
        if create.requested_at <= until and create.seq is not None:
            due.setdefault(create.user, set()).add(create.seq)
    missing = [
        len(due.get(client.user, set()) - {seq for seq, _ in client.received}) for client in clients
    ]
    behind = sum(1 for count in missing if count)
    offline = sum(1 for client in clients if not client.connected.is_set())
    examples = [
        f"user {client.user} missing "
        f"{sorted(due.get(client.user, set()) - {seq for seq, _ in client.received})[:5]}"
        f" (dropped {len(client.drops)}x)"
        for client, count in zip(clients, missing, strict=True)
        if count
    ][:5]
    refusals = sum((client.refusals for client in clients), Counter[str]())
    return (
        f"reconnects refused: {dict(refusals)}; "
        f"{unanswered} creates unanswered; {behind} clients missing {sum(missing)} "
        f"notifications; {offline} clients not connected; " + "; ".join(examples)
    )


async def _step(
    fault: Fault, system: System, clients: list[Client], producer: Producer, config: Config
) -> tuple[float, float]:
    """Inject `fault` and wait until the system recovered; (fault start, fault end)."""
    await asyncio.sleep(config.lead)
    _say(f"fault: {fault.title}")
    fault_at = time.monotonic()
    await fault.inject(system)
    fault_end = time.monotonic()
    deadline = time.monotonic() + config.settle_timeout
    while not await asyncio.to_thread(system.ready):  # probes block: off the clients' loop
        if time.monotonic() > deadline:
            _say(f"gave up waiting: {fault.name}: every part ready")
            break
        await asyncio.sleep(0.1)
    if not await _until(
        f"{fault.name}: clients caught up",
        lambda: _caught_up(clients, producer, time.monotonic() - 0.5),
        config.settle_timeout,
    ):
        _say(_behind(clients, producer, time.monotonic() - 0.5))
    await fault.restore(system)
    return fault_at, fault_end


async def run(system: System, config: Config) -> list[report.Row]:
    chosen = [f for f in faults(config.pause) if not config.only or f.name in config.only]
    settings = Settings.from_env(system.env)
    users = [uuid.uuid4() for _ in range(max(1, config.clients // 2))]
    clients = [
        Client(
            f"{system.nginx_url.replace('http', 'ws', 1)}/api/v1/ws/{uuid.uuid4()}"
            f"?token={mint_token(settings, user, 24 * 3600)}",
            user,
        )
        for index in range(config.clients)
        for user in [users[index % len(users)]]
    ]
    producer = Producer(system.url("notifications_svc"), INTERNAL_TOKEN, users, config.rate)
    client_tasks = [asyncio.create_task(c.run()) for c in clients]
    producer_task: asyncio.Task[None] | None = None
    steps: list[report.Step] = []
    try:
        async with asyncio.timeout(120):
            for client in clients:
                await client.connected.wait()
        _say(f"{len(clients)} clients connected; producing {config.rate:g}/s")
        producer_task = asyncio.create_task(producer.run())
        for index, fault in enumerate(chosen):
            producer.step = index
            fault_at, fault_end = await _step(fault, system, clients, producer, config)
            steps.append(report.Step(fault.title, fault_at, fault_end, 0.0))
        step_ends = [s.fault_at for s in steps[1:]] + [time.monotonic()]
        steps = [
            report.Step(s.title, s.fault_at, s.fault_end, end)
            for s, end in zip(steps, step_ends, strict=True)
        ]
        producer_task.cancel()
        await asyncio.gather(producer_task, return_exceptions=True)
        if not await _until(
            "every client received everything",
            lambda: _caught_up(clients, producer, time.monotonic()),
            config.settle_timeout,
        ):
            _say(_behind(clients, producer, time.monotonic()))
    finally:
        _say(f"finished: {_behind(clients, producer, time.monotonic())}")
        for task in [*client_tasks, *([producer_task] if producer_task else [])]:
            task.cancel()
        await asyncio.gather(*client_tasks, return_exceptions=True)
    return report.rows(steps, producer.creates, clients, producer.errors)


def header(config: Config) -> str:
    return (
        "# Chaos run (`make chaos`)\n\n"
        "The README's \"Two gateways behind nginx\" set-up on one machine: `make run`'s devstack "
        "(embedded PostgreSQL and Redis, notifications_svc, agent_svc, a gateway, all "
        "supervised), a second gateway started by hand, Debian's nginx with `deploy/nginx.conf` "
        f"in front of both. {config.clients} WebSocket clients through nginx (two sessions per "
        f"user) resume with `?last_seq=`; a producer creates {config.rate:g} notifications/s "
        "through notifications_svc, each with its own `Idempotency-Key`, retried until answered "
        "(5 s timeout). One fault at a time, in this order; columns as defined in "
        "`chaos/report.py`. The clients and the producer run in one Python process on the same "
        "machine: its own lag under load is part of the times.\n\n"
        f"Run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end: times "
        f"stretch with the load), Python {platform.python_version()}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inject faults under load; write the table.")
    parser.add_argument("--clients", type=int, default=Config.clients)
    parser.add_argument("--rate", type=float, default=Config.rate, help="creates per second")
    parser.add_argument("--pause", type=float, default=Config.pause, help="SIGSTOP seconds")
    parser.add_argument("--faults", default="", help="comma-separated names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/CHAOS.md"))
    parser.add_argument("--logs", type=Path, default=Path("bench/results/chaos"), help="logs kept")
    args = parser.parse_args(argv)
    config = Config(
        clients=args.clients,
        rate=args.rate,
        pause=args.pause,
        only=tuple(name for name in args.faults.split(",") if name),
    )
    unknown = set(config.only) - {f.name for f in faults(config.pause)}
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    binary = nginx_binary()
    if binary is None:
        print("chaos: nginx is not installed (Debian: apt-get install nginx)", file=sys.stderr)
        return 2
    with System(binary) as system:
        try:
            results = asyncio.run(run(system, config))
        finally:
            system.keep_logs(args.logs)
    text = report.markdown(results, header(config))
    args.out.write_text(text)
    print(text)
    return 0 if all(row.clean for row in results) else 1

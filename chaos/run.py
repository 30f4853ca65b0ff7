"""`make chaos` / `python -m chaos`: one run of every fault, one after another, under load.

Starts the system (`chaos.system`), connects the clients through nginx (two sessions per user,
so each user's frames fan out to both gateways), starts the producer, and then for each fault:
steady traffic for `lead` seconds, the fault, and the wait until every part answers its probe
again and every client holds what was requested until then (bounded by `settle_timeout`); then
the fault's `restore`. After the last step the producer stops, every create it started is
answered, and every client is given the time to receive everything; the report is computed from
what was recorded and written to `--out` (default bench/CHAOS.md). Exit status 0 when no step
lost, duplicated or reordered a notification and the producer never saw a 500; 1 otherwise.
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

import httpx

from bench.local_nginx import nginx_binary
from chaos import plot, report
from chaos.chat import Asker
from chaos.faults import Fault, faults
from chaos.load import BATCH_EVERY, CREATE_TIMEOUT, MAX_BATCH, SENDERS, Client, Producer
from chaos.system import INTERNAL_TOKEN, System
from shared.auth import mint_token
from shared.settings import Settings


@dataclass(frozen=True)
class Config:
    clients: int = 2000
    rate: float = 1000.0  # creates per second
    answers: int = 20  # answers streaming at once (one chat user each)
    agent_workers: int = 12  # chat workers per agent process (two processes)
    answer_delay: float = 0.1  # AGENT_OFFLINE_DELAY: an answer lasts about 6 s
    reclaim_idle: float = 3.0  # AGENT_RECLAIM_IDLE: a killed worker's answer resumes after it
    pause: float = 10.0  # seconds a SIGSTOP lasts
    lead: float = 2.0  # seconds of steady traffic before each fault
    settle_timeout: float = 90.0  # seconds a step may take to recover before it is given up
    only: tuple[str, ...] = ()  # fault names to run (all when empty)


@dataclass(frozen=True)
class Result:
    """What a run measured: the table's rows, and what the header and the plot show."""

    rows: list[report.Row]
    steps: list[report.Step]
    started: float  # monotonic, when the clients began to connect
    arrivals: list[float]  # monotonic, every notification delivered to any client
    producer_lag: list[float]  # seconds each create started late
    loop_lag: list[float]  # the generator's event-loop lag, sampled every 100 ms
    achieved_rate: float  # creates requested per second
    held_back: int  # creates that fell due and were never offered (the producer's lanes full)
    reclaimed: int  # requests taken over by another worker (the agents' metrics)
    answer_seconds: list[float]  # asked to ended, every completed answer
    cpu: dict[str, float]  # CPU seconds per part (chaos.system) and of the generator
    wall: float  # seconds from the first connect to the end


def environment(config: Config) -> dict[str, str]:
    """What the run sets in every part's environment."""
    return {
        "AGENT_WORKERS": str(config.agent_workers),
        "AGENT_OFFLINE_DELAY": f"{config.answer_delay:g}",
        "AGENT_RECLAIM_IDLE": f"{config.reclaim_idle:g}",
    }


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


def _answers_done(askers: list[Asker], at: float) -> bool:
    """Every answer asked up to `at` (monotonic) has ended."""
    return all(
        answer.finished_at is not None
        for asker in askers
        for answer in asker.answers
        if answer.asked_at <= at
    )


async def _step(
    fault: Fault,
    system: System,
    clients: list[Client],
    producer: Producer,
    askers: list[Asker],
    config: Config,
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
    # Everything requested until every part was back: a later create may wait for its answer
    # whenever the service runs behind the producer's rate, fault or not.
    ready_at = time.monotonic()
    if not await _until(
        f"{fault.name}: clients caught up",
        lambda: _caught_up(clients, producer, ready_at),
        config.settle_timeout,
    ):
        _say(_behind(clients, producer, ready_at))
    await _until(
        f"{fault.name}: answers in flight at the fault ended",
        lambda: _answers_done(askers, fault_at),
        config.settle_timeout,
    )
    await fault.restore(system)
    return fault_at, fault_end


async def _loop_lag(samples: list[float]) -> None:
    """How late a 100 ms sleep wakes up, every 100 ms: the generator's own event-loop lag."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.1)
        samples.append(max(0.0, time.monotonic() - before - 0.1))


def _source(index: int, per_address: int, prefix: str) -> str:
    """The loopback address of the `index`th connection: nginx limits each address (limit_conn
    100, limit_req bursts), so the generator spreads its connections like real clients would."""
    return f"{prefix}.{1 + index // per_address}"


async def _reclaimed(system: System) -> int:
    """Requests taken over by another worker, from every running agent's /metrics."""
    total = 0
    async with httpx.AsyncClient(timeout=5) as http:
        for part in ("agent_svc", "agent2"):
            try:
                text = (await http.get(system.url(part) + "/metrics")).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                if line.startswith("chat_requests_reclaimed_total "):
                    total += int(float(line.split()[1]))
    return total


async def run(system: System, config: Config) -> Result:
    chosen = [f for f in faults(config.pause) if not config.only or f.name in config.only]
    settings = Settings.from_env(system.env)
    users = [uuid.uuid4() for _ in range(max(1, config.clients // 2))]
    clients = [
        Client(
            f"{system.nginx_url.replace('http', 'ws', 1)}/api/v1/ws/{uuid.uuid4()}"
            f"?token={mint_token(settings, user, 24 * 3600)}",
            user,
            _source(index, 50, "127.0.0"),
            # A gateway killed under 2,000 clients sends them all to the other at once: on 2
            # busy cores a handshake can take over 5 s, and giving up then only adds a storm.
            open_timeout=15,
        )
        for index in range(config.clients)
        for user in [users[index % len(users)]]
    ]
    askers = [
        Asker(
            system.nginx_url,
            mint_token(settings, uuid.uuid4(), 24 * 3600),
            _source(index, 5, "127.0.1"),
        )
        for index in range(config.answers)
    ]
    producer = Producer(system.url("notifications_svc"), INTERNAL_TOKEN, users, config.rate)
    lag: list[float] = []
    background = [asyncio.create_task(_loop_lag(lag))]
    client_tasks = [asyncio.create_task(c.run()) for c in clients]
    asker_tasks: list[asyncio.Task[None]] = []
    producer_task: asyncio.Task[None] | None = None
    steps: list[report.Step] = []
    started = time.monotonic()
    own_cpu = time.process_time()
    try:
        async with asyncio.timeout(300):
            for client in clients:
                await client.connected.wait()
        _say(
            f"{len(clients)} clients connected in {time.monotonic() - started:.1f} s; "
            f"producing {config.rate:g}/s, {len(askers)} answers streaming"
        )
        producer_task = asyncio.create_task(producer.run())
        asker_tasks = [asyncio.create_task(a.run()) for a in askers]
        for index, fault in enumerate(chosen):
            producer.step = index
            for asker in askers:
                asker.step = index
            fault_at, fault_end = await _step(fault, system, clients, producer, askers, config)
            steps.append(report.Step(fault.title, fault_at, fault_end, 0.0))
        step_ends = [s.fault_at for s in steps[1:]] + [time.monotonic()]
        steps = [
            report.Step(s.title, s.fault_at, s.fault_end, end)
            for s, end in zip(steps, step_ends, strict=True)
        ]
        producer_task.cancel()
        for asker in askers:
            asker.stopping = True
        await asyncio.gather(producer_task, return_exceptions=True)
        if not await _until(
            "every client received everything",
            lambda: _caught_up(clients, producer, time.monotonic()),
            config.settle_timeout,
        ):
            _say(_behind(clients, producer, time.monotonic()))
        await _until(
            "every answer ended",
            lambda: all(a.idle.is_set() for a in askers),
            config.settle_timeout,
        )
        for asker in askers:
            await asker.check(system.nginx_url)
        reclaimed = await _reclaimed(system)
        cpu = await asyncio.to_thread(system.cpu_seconds)
        cpu["load generator"] = time.process_time() - own_cpu
        wall = time.monotonic() - started
    finally:
        _say(f"finished: {_behind(clients, producer, time.monotonic())}")
        tasks = [*client_tasks, *asker_tasks, *background]
        for task in [*tasks, *([producer_task] if producer_task else [])]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    answers = [answer for asker in askers for answer in asker.answers]
    return Result(
        rows=report.rows(steps, producer.creates, clients, producer.errors, answers),
        steps=steps,
        started=started,
        arrivals=sorted(at for client in clients for _, at in client.received),
        producer_lag=producer.lag,
        loop_lag=lag,
        achieved_rate=_rate(producer, steps),
        held_back=producer.held_back,
        reclaimed=reclaimed,
        cpu=cpu,
        wall=wall,
        answer_seconds=[
            a.finished_at - a.asked_at
            for a in answers
            if a.finished_at is not None and a.status == "complete"
        ],
    )


def _rate(producer: Producer, steps: list[report.Step]) -> float:
    """Creates requested per second from the first fault's step to the end of the last."""
    if not steps or not producer.creates:
        return 0.0
    first = producer.creates[0].requested_at
    span = steps[-1].step_end - first
    return len(producer.creates) / span if span > 0 else 0.0


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def header(config: Config, result: Result, plot_name: str, note: str = "") -> str:
    """What was run, where, and how well the load generator kept up (all from `result`);
    `note` (the operator's, e.g. why this size) is added after what was run."""
    return (
        "# Chaos run (`make chaos`)\n\n"
        "The README's \"Two gateways behind nginx\" set-up on one machine: `make run`'s devstack "
        "(embedded PostgreSQL and Redis, notifications_svc, agent_svc, a gateway, all "
        "supervised), a second gateway and a second agent_svc started by hand, Debian's nginx "
        f"with `deploy/nginx.conf` in front of both gateways. {config.clients} WebSocket clients "
        "through nginx (two sessions per user, 50 per loopback source address: nginx limits "
        f"each address) resume with `?last_seq=`; a producer creates {config.rate:g} "
        "notifications/s through notifications_svc's batch endpoint (the users split over "
        f"{SENDERS} lanes, each sending what fell due as one batch of up to {MAX_BATCH} once "
        "its previous one was answered, checked every "
        f"{BATCH_EVERY * 1000:.0f} ms), each "
        "item with its own `dedupe_key`, a batch retried with the same body until answered "
        f"({CREATE_TIMEOUT:g} s timeout); {config.answers} chat users stream one answer after "
        "another over SSE through nginx (the offline model, `AGENT_OFFLINE_DELAY="
        f"{config.answer_delay:g}`: answers took p50 "
        f"{_quantile(result.answer_seconds, 0.5):.1f} s from question to `end`, "
        f"{len(result.answer_seconds)} completed) and resume a dropped stream with "
        f"`GET /api/v1/chat/stream/{{message_id}}` + `Last-Event-ID`; {config.agent_workers} "
        "workers in each of the two agent processes, `AGENT_RECLAIM_IDLE="
        f"{config.reclaim_idle:g}`. One fault at a time, in this order; columns as defined in "
        "`chaos/report.py` (every number counted from what the clients received, what the "
        "producer's creates answered, and the replies persisted in the chat history).\n\n"
        f"Run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end: times "
        f"stretch with the load), Python {platform.python_version()}."
        f"{(' ' + note) if note else ''}\n\n"
        "The load generator (clients, askers and producer) is one Python process on the same "
        f"2 cores: it requested {result.achieved_rate:.0f} creates/s of the {config.rate:g} "
        f"asked ({result.held_back:,} creates fell due while their lane already held a full "
        "batch and were never offered: the service answered more slowly than they fell due; "
        f"each create sent started late by p50 {_quantile(result.producer_lag, 0.5):.3f} s, "
        f"p99 {_quantile(result.producer_lag, 0.99):.3f} s, max "
        f"{max(result.producer_lag, default=0.0):.3f} s); its event loop woke late by p50 "
        f"{_quantile(result.loop_lag, 0.5) * 1000:.0f} ms, p99 "
        f"{_quantile(result.loop_lag, 0.99) * 1000:.0f} ms, max "
        f"{max(result.loop_lag, default=0.0) * 1000:.0f} ms. Its lag is part of every time "
        f"below. Requests taken over from a stopped worker (the agents' "
        f"`chat_requests_reclaimed_total`, the restarted process counting since its restart): "
        f"{result.reclaimed}.\n\n"
        f"Where the cores went over the {result.wall:.0f} s run (CPU seconds, and as a share of "
        "one core; a part restarted during the run counts since its restart): "
        + ", ".join(
            f"{part} {seconds:.0f} s ({seconds / result.wall:.0%})"
            for part, seconds in sorted(result.cpu.items(), key=lambda item: -item[1])
        )
        + f"; the machine's cores had {(os.cpu_count() or 1) * result.wall:.0f} s in all (the "
        "rest went to other work on the machine, or was idle).\n\n"
        f"![delivered notifications per second, faults shaded; catch-up per fault]({plot_name})\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inject faults under load; write the table.")
    parser.add_argument("--clients", type=int, default=Config.clients)
    parser.add_argument("--rate", type=float, default=Config.rate, help="creates per second")
    parser.add_argument("--answers", type=int, default=Config.answers, help="answers at once")
    parser.add_argument("--agent-workers", type=int, default=Config.agent_workers)
    parser.add_argument("--pause", type=float, default=Config.pause, help="SIGSTOP seconds")
    parser.add_argument("--faults", default="", help="comma-separated names (default: all)")
    parser.add_argument("--note", default="", help="a sentence added to the report")
    parser.add_argument("--out", type=Path, default=Path("bench/CHAOS.md"))
    parser.add_argument("--logs", type=Path, default=Path("bench/results/chaos"), help="logs kept")
    args = parser.parse_args(argv)
    config = Config(
        clients=args.clients,
        rate=args.rate,
        answers=args.answers,
        agent_workers=args.agent_workers,
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
    with System(binary, environment(config)) as system:
        try:
            result = asyncio.run(run(system, config))
        finally:
            system.keep_logs(args.logs)
    picture = args.out.with_suffix(".png")
    plot.draw(result.rows, result.steps, result.arrivals, result.started, picture)
    text = report.markdown(result.rows, header(config, result, picture.name, args.note))
    args.out.write_text(text)
    print(text)
    return 0 if all(row.clean for row in result.rows) else 1

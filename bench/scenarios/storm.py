"""e. Reconnect storm (issue 17): a gateway dies and all of its clients come back at once.

Two gateways behind nginx (`deploy/nginx.conf`, rendered by `deploy/local_nginx.py` as the chaos
harness does), both on the server core. `storm_clients` clients (one user and session each) connect
straight to gateway A; a producer creates `storm_rate` notifications/s for random users of them
through notifications_svc's batch endpoint (ten batches a second); after `storm_warm_seconds`
gateway A is killed with SIGKILL and every client reconnects at once through nginx, with
`?last_seq=`, to the survivor B. The producer goes on until every client is back and
`storm_warm_seconds` more, then stops; the clients are waited for until they hold every
notification created.

Reported, all from what the clients received and what the producer's creates answered:
- time from the kill until the last client is connected again (its process read B's greeting),
  and how the reconnections spread over time (quantiles);
- time from the kill until the last client holds every notification created before it was back
  (those it missed while away, replayed by B from `last_seq`);
- lost (created, never received) and duplicates (a `seq` at or below one already received): 0;
- connects/s on B (clients over the span between the first and the last reconnection) and B's CPU
  per reconnection over that span (replay of the missed notifications and live traffic
  included), with the CPU of B, notifications_svc, agent_svc and Redis over it.
Targets: every client caught up within 5 s, >= 2,500 connects/s per gateway process.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import gcpauses, local_nginx, storm_client, system
from bench.loadside import Remote
from bench.local_nginx import nginx_binary
from bench.profile import Profiler, hot_functions
from bench.progress import Progress
from bench.scale import Scale
from bench.scenarios.websocket import STALL_BUDGET_MS, ws_path
from bench.stack import Service, Stack
from bench.stats import percentile
from shared.http import internal_headers
from shared.infra import free_port

ROOT = Path(__file__).resolve().parents[2]
PROFILE_NAME = "gateway-storm.txt"
STEPS = 2  # progress steps: clients connected, storm over
CAUGHT_UP_TARGET_S = 5.0
CONNECT_RATE_TARGET = 2500.0
BATCHES_PER_SECOND = 10
RECONNECT_TIMEOUT = 120.0
DELIVERY_TIMEOUT = 30.0
RECONNECT_QUANTILES = (10, 50, 90, 99)


@contextlib.contextmanager
def nginx(stack: Stack, upstreams: list[int]) -> Iterator[tuple[int, int]]:
    """nginx with deploy/nginx.conf in front of `upstreams`, on the load cores; yields its port
    and its master's pid. Raises `RuntimeError` when nginx is not installed or does not start."""
    local = local_nginx.module()
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
    port = free_port()
    workdir = stack.root / f"nginx-{port}"
    workdir.mkdir()
    local.prepare(workdir, port=port, upstreams=upstreams)
    with open(stack.logs / "nginx.log", "ab") as log:
        process = subprocess.Popen(
            local.command(binary, workdir), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while not _healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start (status {process.poll()})")
            time.sleep(0.1)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/nginx-health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Producer:
    """Creates `rate` notifications/s for random users through the batch endpoint, in a thread;
    records every created notification as (user index, seq, monotonic ns when answered)."""

    url: str
    token: str
    users: list[uuid.UUID]
    rate: int
    user_index: array[int] = field(default_factory=lambda: array("q"))
    seq: array[int] = field(default_factory=lambda: array("q"))
    answered_ns: array[int] = field(default_factory=lambda: array("q"))
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        per_batch = max(1, self.rate // BATCHES_PER_SECOND)
        interval = per_batch / self.rate
        position = {str(user): i for i, user in enumerate(self.users)}
        with httpx.Client(base_url=self.url, headers=internal_headers(self.token)) as http:
            due = time.monotonic()
            while not self._stop.is_set():
                picked = random.sample(range(len(self.users)), min(per_batch, len(self.users)))
                body = {
                    "notifications": [
                        {
                            "user_id": str(self.users[i]),
                            "title": "storm",
                            "content": "",
                            "type": "bench",
                        }
                        for i in picked
                    ]
                }
                try:
                    answer = http.post("/internal/v1/notifications/batch", json=body, timeout=10)
                    answer.raise_for_status()
                except httpx.HTTPError:
                    # An error answer created nothing (all or none); a timed-out batch may have
                    # committed: its notifications are not counted, so never reported lost.
                    self.failures += 1
                else:
                    now = time.monotonic_ns()
                    for item in answer.json()["items"]:
                        created = item["notification"]
                        self.user_index.append(position[created["user_id"]])
                        self.seq.append(created["seq"])
                        self.answered_ns.append(now)
                due += interval
                self._stop.wait(max(0.0, due - time.monotonic()))


def run(
    stack: Stack,
    scale: Scale,
    cores: system.Cores,
    progress: Progress,
    module: str,
    env: dict[str, str],
    profiles: Path | None = None,
) -> dict[str, Any]:
    """The whole scenario; gateways, nginx and the load processes are stopped at the end. With
    `profiles`, the survivor is sampled with py-spy while the clients come back."""
    ports = [free_port(), free_port()]
    gateways: list[Service] = []
    workers: list[Remote] = []
    try:
        for name, port in (("gateway_b", ports[1]), ("gateway_a", ports[0])):
            gateways.append(
                stack.start(
                    name, module, port, pinned=True, extra_env=env | {"GATEWAY_PORT": str(port)}
                )
            )
        survivor, victim = gateways
        with nginx(stack, ports) as (nginx_port, nginx_pid):
            workers = [
                Remote(f"storm-{i}", storm_client.main, (cores.load,))
                for i in range(scale.loadgen_workers)
            ]
            load_side = {"nginx": [nginx_pid], "storm_clients": [w.pid for w in workers]}
            return _storm(
                stack, scale, progress, (victim, survivor), workers, nginx_port, load_side, profiles
            )
    finally:
        for worker in workers:
            worker.stop()
        for gateway in gateways:
            stack.stop(gateway)


def _storm(
    stack: Stack,
    scale: Scale,
    progress: Progress,
    gateways: tuple[Service, Service],
    workers: list[Remote],
    nginx_port: int,
    load_side: dict[str, list[int]],
    profiles: Path | None,
) -> dict[str, Any]:
    """`gateways`: the victim and the survivor; `load_side`: the load core's processes metered
    beside the services, by name (nginx's master, whose workers count with it; the clients)."""
    victim, survivor = gateways
    count = scale.storm_clients
    users = [uuid.uuid4() for _ in range(count)]
    paths = [ws_path(stack.settings, user) for user in users]
    for w, worker in enumerate(workers):
        share = [(i, paths[i]) for i in range(w, count, len(workers))]
        worker.send("connect", share, victim.port, scale.connect_concurrency)
    connected = [worker.reply(RECONNECT_TIMEOUT) for worker in workers]
    opened = sum(r["opened"] for r in connected)
    if opened != count:
        raise RuntimeError(f"{count - opened} clients could not connect: {connected}")
    progress.step(f"storm: {count:,} clients on gateway A")
    producer = Producer(
        f"http://127.0.0.1:{stack.ports['notifications_svc']}",
        stack.settings.internal_token,
        users,
        scale.storm_rate,
    )
    producer.start()
    try:
        time.sleep(scale.storm_warm_seconds)
        for worker in workers:
            worker.ask("arm", nginx_port)
        pids = _pids(stack, survivor) | load_side
        metrics_url = f"http://127.0.0.1:{survivor.port}/metrics"
        loop_before = gcpauses.scrape(metrics_url)
        cpu_before = {name: _cpu(group) for name, group in pids.items()}
        killed_ns = time.monotonic_ns()
        with _profiler(survivor.pid, profiles):
            os.kill(victim.pid, signal.SIGKILL)
            victim.process.wait()
            _wait_for(workers, "reconnected", count, RECONNECT_TIMEOUT)
        cpu = {name: _cpu(group) - cpu_before[name] for name, group in pids.items()}
        loop = gcpauses.window(loop_before, gcpauses.scrape(metrics_url), STALL_BUDGET_MS)
        time.sleep(scale.storm_warm_seconds)
    finally:
        producer.stop()
    created = len(producer.seq)
    _wait_arrivals(workers, created)
    progress.step(f"storm: gateway A killed, {count:,} clients back on gateway B")
    replies = [worker.ask("results") for worker in workers]
    result = summarize(replies, producer, killed_ns, cpu["gateway_b"])
    result["cpu_seconds"] = {name: round(seconds, 2) for name, seconds in cpu.items()}
    result["survivor_loop"] = loop
    if profiles is not None:
        result["profile"] = hot_functions(profiles / PROFILE_NAME)
    return result


def _pids(stack: Stack, survivor: Service) -> dict[str, list[int]]:
    """The processes a reconnection keeps busy: the survivor and what it calls."""
    pids = {"gateway_b": [survivor.pid]}
    pids |= {
        s.name: [s.pid] for s in stack.services if s.name in ("notifications_svc", "agent_svc")
    }
    if stack.redis_pid is not None:
        pids["redis"] = [stack.redis_pid]
    return pids


def _cpu(pids: list[int]) -> float:
    """CPU seconds of `pids` and their child processes (nginx's workers)."""
    return sum(system.cpu_seconds(p) for pid in pids for p in (pid, *system.children(pid)))


def _profiler(pid: int, profiles: Path | None) -> contextlib.AbstractContextManager[object]:
    """py-spy on the survivor from the kill until every client is back (`BENCH_PROFILE=1`)."""
    if profiles is None:
        return contextlib.nullcontext()
    return Profiler(pid, profiles / PROFILE_NAME)


def _wait_for(workers: list[Remote], key: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(worker.ask("status")[key] for worker in workers) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not every client {key} within {timeout:.0f} s")
        time.sleep(0.05)


def _wait_arrivals(workers: list[Remote], created: int) -> None:
    """Until the clients hold `created` notifications, or nothing arrived for a while (the rest
    is lost)."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while time.monotonic() < deadline:
        if sum(worker.ask("status")["arrivals"] for worker in workers) >= created:
            return
        time.sleep(0.1)


def summarize(
    replies: list[dict[str, Any]], producer: Producer, killed_ns: int, cpu_seconds: float
) -> dict[str, Any]:
    """The scenario's figures from the clients' records and the producer's (pure)."""
    reconnected: dict[int, int] = {}
    dropped: dict[int, int] = {}
    arrived: dict[tuple[int, int], int] = {}
    for reply in replies:
        for i, t, d in zip(
            _q(reply["index"]), _q(reply["reconnected_ns"]), _q(reply["dropped_seq"]), strict=True
        ):
            reconnected[i], dropped[i] = t, d
        for i, s, t in zip(
            _q(reply["arrival_index"]),
            _q(reply["arrival_seq"]),
            _q(reply["arrival_ns"]),
            strict=True,
        ):
            arrived[(i, s)] = t
    caught_up = dict(reconnected)
    lost = 0
    for i, s, answered in zip(producer.user_index, producer.seq, producer.answered_ns, strict=True):
        at = arrived.get((i, s))
        if at is None:
            lost += 1
        elif s > dropped[i] and answered <= reconnected[i]:
            caught_up[i] = max(caught_up[i], at)  # missed while away, replayed on reconnect
    back = sorted(reconnected.values())
    span_s = (back[-1] - back[0]) / 1e9 if len(back) > 1 else 0.0
    clients = len(reconnected)
    return {
        "clients": clients,
        "created": len(producer.seq),
        "create_failures": producer.failures,
        "rate": producer.rate,
        "all_connected_s": round((back[-1] - killed_ns) / 1e9, 3),
        "first_connected_s": round((back[0] - killed_ns) / 1e9, 3),
        # How the reconnections spread: a tail of retried clients looks different from a rate.
        "connected_quantiles_s": {
            f"p{q}": round(percentile([t - killed_ns for t in back], q) / 1000, 3)
            for q in RECONNECT_QUANTILES
        },
        "all_caught_up_s": round((max(caught_up.values()) - killed_ns) / 1e9, 3),
        "missed": sum(
            1
            for i, s, answered in zip(
                producer.user_index, producer.seq, producer.answered_ns, strict=True
            )
            if s > dropped[i] and answered <= reconnected[i]
        ),
        "lost": lost,
        "duplicates": sum(r["duplicates"] for r in replies),
        "attempts": sum(r["attempts"] for r in replies) - 2 * clients,  # retries, both phases
        "connects_per_s": round(clients / span_s, 1) if span_s else None,
        "survivor_cpu_ms_per_connect": round(cpu_seconds * 1000 / clients, 3),
        "errors": {k: v for r in replies for k, v in r["errors"].items()},
    }


def _q(raw: bytes) -> array[int]:
    values: array[int] = array("q")
    values.frombytes(raw)
    return values


def targets(result: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(name, target, measured, met) rows for the report."""
    rate = result["connects_per_s"] or 0.0
    clean = result["lost"] == 0 and result["duplicates"] == 0
    return [
        (
            "reconnect storm",
            f"10k clients of a killed gateway caught up within {CAUGHT_UP_TARGET_S:.0f} s, "
            "nothing lost or duplicated",
            f"{result['clients']:,} clients: all connected after {result['all_connected_s']} s, "
            f"all caught up after {result['all_caught_up_s']} s; {result['lost']} lost, "
            f"{result['duplicates']} duplicates",
            result["clients"] >= 10_000
            and result["all_caught_up_s"] <= CAUGHT_UP_TARGET_S
            and clean,
        ),
        (
            "connect rate",
            f">= {CONNECT_RATE_TARGET:,.0f} fresh connects/s per gateway process",
            f"{rate:,.0f}/s on the survivor, {result['survivor_cpu_ms_per_connect']} ms CPU each",
            result["clients"] >= 10_000 and rate >= CONNECT_RATE_TARGET,
        ),
    ]


def _busy(result: dict[str, Any]) -> str:
    """How busy each core was over the storm: the survivor alone on its core, every other
    process listed on the load core (runs before the load side was metered list neither)."""
    cpu, span = result.get("cpu_seconds", {}), result["all_connected_s"]
    if "storm_clients" not in cpu or not span:
        return ""
    load = sum(seconds for name, seconds in cpu.items() if name != "gateway_b")
    return (
        f" Over those {span} s the survivor's core was {cpu['gateway_b'] / span:.0%} busy with "
        f"it, the load core {load / span:.0%} with the rest."
    )


def _survivor_loop(window: dict[str, Any] | None) -> str:
    """The survivor's own loop over the same seconds (runs before it was scraped: nothing).
    Not a target (the stall target's windows are the WebSocket scenario's): what a storm costs
    the clients already on the survivor."""
    if not window or "lag_ticks" not in window:
        return ""
    causes = window.get("lag_stalls")
    return (
        f" The survivor's loop ran its 5 ms timer more than {STALL_BUDGET_MS:.0f} ms late in "
        f"{window['lag_over_budget']} of its {window['lag_ticks']:,} ticks (latest "
        f"{window['lag_longest']}"
        + ("; " + gcpauses.stall_causes(causes) if causes and window["lag_over_budget"] else "")
        + f"), {window['gc_collections']} collections, {window['gc_over_budget']} over "
        f"{STALL_BUDGET_MS:.0f} ms."
    )


def report_lines(result: dict[str, Any]) -> list[str]:
    """Markdown for the report."""
    return [
        "## Reconnect storm",
        "",
        f"{result['clients']:,} clients on gateway A, {result['rate']:,} notifications/s "
        f"({result['created']:,} created, {result['create_failures']} batches failed); A killed "
        "with SIGKILL, every client back through nginx with `?last_seq=` on gateway B.",
        "",
        "| first connected | all connected | all caught up | missed while away | lost | "
        "duplicates | retries | connects/s on B | B CPU per connect |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {result['first_connected_s']} s | {result['all_connected_s']} s | "
        f"{result['all_caught_up_s']} s | {result['missed']:,} | {result['lost']} | "
        f"{result['duplicates']} | {result['attempts']:,} | {result['connects_per_s']} | "
        f"{result['survivor_cpu_ms_per_connect']} ms |",
        "",
        "Clients connected again, seconds after the kill: "
        + ", ".join(f"{q} {s} s" for q, s in result["connected_quantiles_s"].items())
        + ".",
        "",
        "CPU from the kill until every client was back (s): "
        + ", ".join(f"{name} {seconds}" for name, seconds in result.get("cpu_seconds", {}).items())
        + "."
        + _busy(result)
        + _survivor_loop(result.get("survivor_loop")),
        "",
        *(
            [f"Client errors: {', '.join(f'{k} ({v})' for k, v in result['errors'].items())}.", ""]
            if result["errors"]
            else []
        ),
    ]

"""e. REST: the notification list and the unread count with `rest_rows` notifications over
`rest_users` users, through the gateway (the public path: gateway proxy, then notifications_svc,
then PostgreSQL) and straight at notifications_svc (to show what the proxy hop costs).

The rows are bulk-loaded with COPY (users, per-user counters, notifications with gapless per-user
seqs, about one in five unread, all already published so the outbox relay has nothing to do),
then ANALYZEd. Requests go to random users over keep-alive connections, at each in-flight level
of `rest_concurrency` (one request in flight is the latency; more show it under load); latency is
request written to response read, per request. Each run also reports the CPU the gateway and
notifications_svc spent per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from array import array
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import uvloop

from bench import stats, system
from bench.httpclient import HttpConnection
from bench.progress import Progress
from bench.scale import Scale
from shared.auth import mint_token
from shared.settings import Settings

STEPS = 2
_COPY_CHUNK = 100_000
ENDPOINTS = {
    "list": "/api/v1/notifications?page_size=20",
    "unread_count": "/api/v1/notifications/unread/count",
}


def _rows(users: list[uuid.UUID], total: int, rng: random.Random) -> Any:
    """Notification rows for COPY, spread evenly: user i gets seqs 1..n_i."""
    per_user, extra = divmod(total, len(users))
    base = datetime(2026, 1, 1, tzinfo=UTC)
    action = json.dumps({"type": "open", "url": "/reports/weekly"})
    for index, user in enumerate(users):
        count = per_user + (1 if index < extra else 0)
        for seq in range(1, count + 1):
            created = base + timedelta(seconds=seq * 60 + index)
            unread = rng.random() < 0.2
            yield (
                uuid.UUID(int=rng.getrandbits(128), version=4),
                user,
                seq,
                f"Notification {seq}",
                "Your weekly report is ready: 12 tasks completed, 3 due tomorrow.",
                rng.choice(("info", "reminder", "system", "task")),
                action,
                not unread,
                None if unread else created,
                created,
                created,
                created,
            )


async def load(settings: Settings, users: list[uuid.UUID], total: int) -> dict[str, Any]:
    """Bulk-load users, counters and `total` notifications; returns timings."""
    rng = random.Random(7)
    started = time.monotonic()
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await conn.copy_records_to_table(
            "users", schema_name="users", columns=["id"], records=[(u,) for u in users]
        )
        per_user, extra = divmod(total, len(users))
        await conn.copy_records_to_table(
            "user_counters",
            schema_name="notifications",
            columns=["user_id", "last_seq"],
            records=[(u, per_user + (1 if i < extra else 0)) for i, u in enumerate(users)],
        )
        columns = [
            "id",
            "user_id",
            "seq",
            "title",
            "content",
            "type",
            "action",
            "is_read",
            "read_at",
            "created_at",
            "updated_at",
            "published_at",
        ]
        chunk: list[tuple[Any, ...]] = []
        for row in _rows(users, total, rng):
            chunk.append(row)
            if len(chunk) == _COPY_CHUNK:
                await conn.copy_records_to_table(
                    "notifications", schema_name="notifications", columns=columns, records=chunk
                )
                chunk = []
        if chunk:
            await conn.copy_records_to_table(
                "notifications", schema_name="notifications", columns=columns, records=chunk
            )
        copied = time.monotonic() - started
        await conn.execute(
            "ANALYZE users.users, notifications.user_counters, notifications.notifications"
        )
        count = await conn.fetchval("SELECT count(*) FROM notifications.notifications")
    finally:
        await conn.close()
    return {
        "rows": count,
        "copy_seconds": round(copied, 2),
        "total_seconds": round(time.monotonic() - started, 2),
    }


async def _measure(
    port: int, path: str, tokens: list[str], requests: int, concurrency: int
) -> tuple[array[int], dict[int, int], float]:
    latencies: array[int] = array("q")
    statuses: dict[int, int] = {}
    rng = random.Random(11)
    plan = [rng.choice(tokens) for _ in range(requests)]

    async def caller(share: list[str]) -> None:
        conn = HttpConnection("127.0.0.1", port)
        try:
            for token in share:
                sent = time.monotonic_ns()
                response = await conn.request("GET", path, {"Authorization": f"Bearer {token}"})
                latencies.append(time.monotonic_ns() - sent)
                statuses[response.status] = statuses.get(response.status, 0) + 1
        finally:
            conn.close()

    warmup = HttpConnection("127.0.0.1", port)
    for token in plan[:20]:
        await warmup.request("GET", path, {"Authorization": f"Bearer {token}"})
    warmup.close()
    started = time.monotonic()
    await asyncio.gather(*(caller(plan[i::concurrency]) for i in range(concurrency)))
    return latencies, statuses, time.monotonic() - started


def _run_one(
    pids: dict[str, int],
    via: str,
    endpoint: str,
    port: int,
    tokens: list[str],
    scale: Scale,
    concurrency: int,
) -> dict[str, Any]:
    """One endpoint, one way in, one in-flight level: latency, throughput, server CPU."""
    seconds_before = {name: system.cpu_seconds(pid) for name, pid in pids.items()}
    latencies, statuses, seconds = uvloop.run(
        _measure(port, ENDPOINTS[endpoint], tokens, scale.rest_requests, concurrency)
    )
    used = {name: system.cpu_seconds(pid) - seconds_before[name] for name, pid in pids.items()}
    return {
        "via": via,
        "endpoint": endpoint,
        "concurrency": concurrency,
        **stats.summarize(latencies),
        "statuses": {str(k): v for k, v in statuses.items()},
        "throughput": round(len(latencies) / seconds, 1),
        "cpu": {name: round(cpu / seconds, 3) for name, cpu in used.items()},
        "cpu_ms_per_request": {
            name: round(cpu * 1000 / max(1, len(latencies)), 3) for name, cpu in used.items()
        },
    }


def run(
    scale: Scale,
    settings: Settings,
    ports: dict[str, int],
    pids: dict[str, int],
    progress: Progress,
) -> dict[str, Any]:
    """Measure every endpoint, straight and through the gateway, at each in-flight level.

    notifications_svc joins the gateway on the server core for the measurement (both are servers
    under test here; the client and PostgreSQL stay on the load core) and goes back afterwards.
    """
    users = [uuid.uuid4() for _ in range(scale.rest_users)]
    loaded = uvloop.run(load(settings, users, scale.rest_rows))
    progress.step(
        f"rest: {loaded['rows']:,} notifications over {scale.rest_users:,} users loaded in "
        f"{loaded['total_seconds']:.1f}s"
    )
    tokens = [mint_token(settings, user, ttl=3600) for user in users]
    servers = {name: pids[name] for name in ("gateway", "notifications_svc")}
    service = servers["notifications_svc"]
    home = frozenset(os.sched_getaffinity(service))
    system.pin(service, frozenset(os.sched_getaffinity(servers["gateway"])))
    runs = []
    try:
        for concurrency in scale.rest_concurrency:
            for via, port in ports.items():
                for endpoint in ENDPOINTS:
                    runs.append(_run_one(servers, via, endpoint, port, tokens, scale, concurrency))
    finally:
        system.pin(service, home)
    line = ", ".join(
        f"{r['via']} {r['endpoint']}@{r['concurrency']} p99 {r['p99_ms']:.1f} ms" for r in runs
    )
    progress.step(f"rest: {line}")
    return {"users": scale.rest_users, "load": loaded, "runs": runs}

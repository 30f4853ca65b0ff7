"""e. REST: the notification list and the unread count with `rest_rows` notifications over
`rest_users` users, through the gateway (the public path: gateway proxy, then notifications_svc,
then PostgreSQL) and straight at notifications_svc (to show what the proxy hop costs).

The rows are bulk-loaded with COPY (users, per-user counters, notifications with gapless per-user
seqs, about one in five unread, all already published so the outbox relay has nothing to do),
then ANALYZEd. Requests go to random users over `rest_concurrency` keep-alive connections;
latency is request written to response read, per request.
"""

from __future__ import annotations

import asyncio
import json
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


def run(
    scale: Scale,
    settings: Settings,
    ports: dict[str, int],
    pids: dict[str, int],
    progress: Progress,
) -> dict[str, Any]:
    users = [uuid.uuid4() for _ in range(scale.rest_users)]
    loaded = uvloop.run(load(settings, users, scale.rest_rows))
    progress.step(
        f"rest: {loaded['rows']:,} notifications over {scale.rest_users:,} users loaded in "
        f"{loaded['total_seconds']:.1f}s"
    )
    tokens = [mint_token(settings, user, ttl=3600) for user in users]
    results: dict[str, Any] = {
        "users": scale.rest_users,
        "load": loaded,
        "concurrency": scale.rest_concurrency,
        "via": {},
    }
    for via, port in ports.items():
        results["via"][via] = {}
        for name, path in ENDPOINTS.items():
            meters = {n: system.CpuMeter([pid]) for n, pid in pids.items()}
            for meter in meters.values():
                meter.start()
            latencies, statuses, seconds = uvloop.run(
                _measure(port, path, tokens, scale.rest_requests, scale.rest_concurrency)
            )
            summary = stats.summarize(latencies)
            results["via"][via][name] = {
                **summary,
                "statuses": {str(k): v for k, v in statuses.items()},
                "throughput": round(len(latencies) / seconds, 1),
                "cpu": {n: round(m.stop(), 3) for n, m in meters.items()},
            }
    line = ", ".join(
        f"{via} {name} p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms"
        for via, endpoints in results["via"].items()
        for name, r in endpoints.items()
    )
    progress.step(f"rest: {line}")
    return results

"""Every push statement finds its rows through an index, shown by EXPLAIN on a realistic
volume (a database of the module's own): 5,000 users with two subscriptions and 20
notifications each, 10,000
dead-lettered jobs kept for inspection and a few due ones."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from notifications_svc import push_store
from shared import migrate
from shared.settings import Settings

USERS = 5_000
PER_USER = 20  # notifications


async def _seed(conn: asyncpg.Connection, users: list[uuid.UUID]) -> None:
    async with conn.transaction():
        await conn.execute("INSERT INTO users.users (id) SELECT unnest($1::uuid[])", users)
        await conn.execute(
            """
            INSERT INTO notifications.push_subscriptions (id, user_id, endpoint, p256dh, auth)
            SELECT gen_random_uuid(), u, 'https://push.example/' || gen_random_uuid(), 'k', 'a'
            FROM unnest($1::uuid[]) AS u, generate_series(1, 2)
            """,
            users,
        )
        await conn.execute(
            """
            INSERT INTO notifications.notifications (id, user_id, seq, title, content, type)
            SELECT gen_random_uuid(), u, g, 't', 'c', 'task'
            FROM unnest($1::uuid[]) AS u, generate_series(1, $2) AS g
            """,
            users,
            PER_USER,
        )
        await conn.execute(
            """
            INSERT INTO notifications.push_jobs
                (notification_id, subscription_id, attempts, next_attempt_at, dead_at)
            SELECT n.id, s.id, 8, now(), CASE WHEN random() < 0.995 THEN now() END
            FROM notifications.notifications n
            JOIN notifications.push_subscriptions s ON s.user_id = n.user_id
            WHERE n.seq = 1
            """
        )
    for table in ("push_subscriptions", "push_jobs", "notifications"):
        await conn.execute(f"ANALYZE notifications.{table}")


async def _create_and_seed(settings: Settings, name: str, users: list[uuid.UUID]) -> str:
    admin = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = settings.asyncpg_dsn.rsplit("/", 1)[0] + f"/{name}"
    await migrate.apply_with_settings(dataclasses.replace(settings, database_url=dsn))
    conn = await asyncpg.connect(dsn)
    try:
        await _seed(conn, users)
    finally:
        await conn.close()
    return dsn


async def _drop(settings: Settings, name: str) -> None:
    admin = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclasses.dataclass(frozen=True)
class Seeded:
    dsn: str
    users: list[uuid.UUID]


@pytest.fixture(scope="module")
def seeded(settings: Settings) -> Iterator[Seeded]:
    """The seeded database, built once for the module: seeding is the slow part, and the tests
    only read and EXPLAIN (never execute) the statements, so they leave its rows as they were."""
    name = f"push_store_{uuid.uuid4().hex[:12]}"
    users = [uuid.uuid4() for _ in range(USERS)]
    try:
        yield Seeded(asyncio.run(_create_and_seed(settings, name, users)), users)
    finally:
        asyncio.run(_drop(settings, name))


@pytest.fixture
def database_dsn(seeded: Seeded) -> str:
    """`conn` (conftest) opens the module's seeded database."""
    return seeded.dsn


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _indexes_used(conn: asyncpg.Connection, sql: str, *args: object) -> set[str]:
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    nodes = list(_nodes(json.loads(raw)[0]["Plan"]))
    seq_scans = [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"]
    assert not seq_scans, f"sequential scan of {seq_scans} in:\n{raw}"
    return {n["Index Name"] for n in nodes if "Index Name" in n}


async def test_push_statements_use_an_index(conn: asyncpg.Connection, seeded: Seeded) -> None:
    """Subscriptions by user, by endpoint and by id, the enqueue in the create transaction, the
    sender's claim (the partial index of live jobs) and its settling writes: no sequential
    scan."""
    user = seeded.users[0]
    row = await conn.fetchrow(
        "SELECT id, endpoint FROM notifications.push_subscriptions WHERE user_id = $1", user
    )
    notification = await conn.fetchval(
        "SELECT id FROM notifications.notifications WHERE user_id = $1 AND seq = 1", user
    )
    now = time.time()
    cases: list[tuple[str, tuple[object, ...], set[str]]] = [
        ("FIND_ENDPOINT", (row["endpoint"],), {"push_subscriptions_endpoint"}),
        ("COUNT_USER", (user,), {"push_subscriptions_user"}),
        ("LIST_USER", (user,), {"push_subscriptions_user"}),
        ("HAS_SUBSCRIPTIONS", (user,), {"push_subscriptions_user"}),
        ("UPDATE_KEYS", (row["id"], user, "k", "a"), {"push_subscriptions_pkey"}),
        ("DELETE_USER_SUBSCRIPTION", (user, row["id"]), {"push_subscriptions_pkey"}),
        ("DELETE_BY_ID", (row["id"],), {"push_subscriptions_pkey"}),
        ("ENQUEUE", (notification, user, now), {"push_subscriptions_user"}),
        ("CLAIM", (now, now + 21, 32), {"push_jobs_due"}),
        ("DONE", (1,), {"push_jobs_pkey"}),
        ("RESCHEDULE", (1, now, "500"), {"push_jobs_pkey"}),
        ("DEAD", (1, now, "500"), {"push_jobs_pkey"}),
    ]
    for name, args, expected in cases:
        used = await _indexes_used(conn, getattr(push_store, name), *args)
        assert expected <= used, (name, used)


async def test_batch_push_statements_use_an_index(conn: asyncpg.Connection, seeded: Seeded) -> None:
    """A batch create's push planning over many users (who has a subscription; one job per
    subscription of each row's user) reads the subscriptions by user: no sequential scan."""
    batch = seeded.users[:50]
    notifications = await conn.fetch(
        "SELECT id, user_id FROM notifications.notifications WHERE user_id = ANY($1) AND seq = 2",
        batch,
    )
    ids = [r["id"] for r in notifications]
    owners = [r["user_id"] for r in notifications]
    cases: list[tuple[str, tuple[object, ...]]] = [
        ("SUBSCRIBED_USERS", (batch,)),
        ("ENQUEUE_MANY", (ids, owners, time.time())),
    ]
    for name, args in cases:
        used = await _indexes_used(conn, getattr(push_store, name), *args)
        assert "push_subscriptions_user" in used, (name, used)

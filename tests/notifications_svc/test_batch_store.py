"""`store.create_many` against real PostgreSQL and Redis: seqs, dedupe within and across
batches, atomicity, concurrent overlapping batches, and the Web Push jobs a batch plans."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as redis

from notifications_svc import store
from notifications_svc.push_policy import Presence, PushPlanner
from notifications_svc.wire import CreateNotification
from shared import db, keys
from shared.errors import ValidationFailed
from shared.settings import Settings


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    connections = await db.create_pool(settings, min_size=2, max_size=8)
    try:
        yield connections
    finally:
        await connections.close()


def item(user: uuid.UUID, key: str | None = None, **fields: object) -> CreateNotification:
    return CreateNotification(
        user_id=user,
        title=str(fields.get("title", "Build finished")),
        content=str(fields.get("content", "main is green")),
        type=str(fields.get("type", "build")),
        action={"url": "/builds/7"},
        dedupe_key=key,
        send_push=bool(fields.get("send_push", True)),
    )


async def seqs_of(pool: asyncpg.Pool, user: uuid.UUID) -> list[int]:
    records = await pool.fetch(
        "SELECT seq FROM notifications.notifications WHERE user_id = $1 ORDER BY seq", user
    )
    return [r["seq"] for r in records]


async def test_one_user_many_items_get_consecutive_seqs_in_request_order(
    pool: asyncpg.Pool,
) -> None:
    """A user's items in one batch follow the user's earlier notifications with consecutive
    seqs, in request order, interleaved with another user's items."""
    user, other = uuid.uuid4(), uuid.uuid4()
    await store.create_many(pool, [item(user), item(user)])
    batch = [item(user, title=f"n{n}") if n % 2 else item(other, title=f"o{n}") for n in range(10)]
    results = await store.create_many(pool, batch)
    assert [r.row.title for r in results] == [i.title for i in batch]
    assert all(r.created for r in results)
    assert [r.row.seq for r in results if r.row.user_id == user] == [3, 4, 5, 6, 7]
    assert [r.row.seq for r in results if r.row.user_id == other] == [1, 2, 3, 4, 5]
    assert await seqs_of(pool, user) == list(range(1, 8))


async def test_dedupe_within_and_across_batches(pool: asyncpg.Pool) -> None:
    """A key repeated in one batch answers the first occurrence's row (created=False) and takes
    no seq; a later batch answers the stored rows for its known keys and creates only the new."""
    a, b = uuid.uuid4(), uuid.uuid4()
    first = await store.create_many(
        pool, [item(a, "k1"), item(a, "k2"), item(a, "k1", title="again"), item(b, "k1")]
    )
    assert [r.created for r in first] == [True, True, False, True]
    assert first[2].row == first[0].row
    assert [r.row.seq for r in first] == [1, 2, 1, 1]

    second = await store.create_many(pool, [item(a, "k2"), item(a, "k3"), item(b, "k1")])
    assert [r.created for r in second] == [False, True, False]
    assert second[0].row == first[1].row
    assert second[2].row == first[3].row
    assert second[1].row.seq == 3
    assert await seqs_of(pool, a) == [1, 2, 3]
    last = await pool.fetchval(store.LAST_SEQ, a)
    assert last == 3, "a dedupe hit must not consume a seq"


async def test_a_refused_value_rejects_the_whole_batch(pool: asyncpg.Pool) -> None:
    """An item PostgreSQL refuses (a NUL character) is a ValidationFailed and nothing of the
    batch is stored, not even its valid items' users' counters."""
    user = uuid.uuid4()
    with pytest.raises(ValidationFailed):
        await store.create_many(pool, [item(user), item(user, content="nul \u0000 byte")])
    assert await seqs_of(pool, user) == []
    assert await pool.fetchval(store.LAST_SEQ, user) is None


async def test_concurrent_overlapping_batches_never_deadlock_and_stay_gapless(
    pool: asyncpg.Pool,
) -> None:
    """Batches over the same users in different orders, run at once, all commit (counters are
    locked in one order) and every user's seqs are 1..N without gap or repeat."""
    users = [uuid.uuid4() for _ in range(12)]
    rng = random.Random(7)
    batches = []
    for _ in range(16):
        chosen = rng.sample(users, 8)
        batches.append([item(u) for u in chosen + chosen[:3]])
    results = await asyncio.gather(*(store.create_many(pool, b) for b in batches))
    created: dict[uuid.UUID, int] = {}
    for batch in batches:
        for request in batch:
            created[request.user_id] = created.get(request.user_id, 0) + 1
    for user in users:
        assert await seqs_of(pool, user) == list(range(1, created.get(user, 0) + 1))
    for batch, answered in zip(batches, results, strict=True):
        assert [r.row.user_id for r in answered] == [i.user_id for i in batch]


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def _subscribe(pool: asyncpg.Pool, user: uuid.UUID) -> None:
    await pool.execute("INSERT INTO users.users (id) VALUES ($1) ON CONFLICT DO NOTHING", user)
    await pool.execute(
        "INSERT INTO notifications.push_subscriptions (id, user_id, endpoint, p256dh, auth)"
        " VALUES ($1, $2, $3, 'key', 'auth')",
        uuid.uuid4(),
        user,
        f"https://push.example/{uuid.uuid4()}",
    )


async def test_batch_plans_pushes_as_single_creates_do(
    pool: asyncpg.Pool, settings: Settings, redis_client: redis.Redis
) -> None:
    """Policy `offline`: a push job for each new row of a subscribed user with no live session
    that asked for a push; none for an online user, an unsubscribed one, `send_push` false, a
    type whose policy is `never`, or a dedupe hit."""
    own = dataclasses.replace(
        settings, push_policy="offline", push_policy_by_type=(("digest", "never"),)
    )
    woken: list[bool] = []
    planner = PushPlanner(own, Presence(redis_client), lambda: woken.append(True))
    offline, online, unsubscribed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for user in (offline, online):
        await _subscribe(pool, user)
    await redis_client.sadd(keys.user_sessions(online), "some-session")
    try:
        results = await store.create_many(
            pool,
            [
                item(offline, "k"),
                item(offline, send_push=False),
                item(online),
                item(unsubscribed),
                item(offline, type="digest"),
                item(offline, "k"),
            ],
            planner=planner,
        )
    finally:
        await redis_client.delete(keys.user_sessions(online))
    assert [r.pushes for r in results] == [1, 0, 0, 0, 0, 0]
    jobs = await pool.fetch(
        "SELECT notification_id FROM notifications.push_jobs WHERE notification_id = ANY($1)",
        [r.row.id for r in results],
    )
    assert [j["notification_id"] for j in jobs] == [results[0].row.id]
    assert woken == [True]

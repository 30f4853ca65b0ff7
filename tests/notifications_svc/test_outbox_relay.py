"""`Outbox.publish_users`, the relay's drain of many users per transaction, against real
PostgreSQL (a database of the test's own, so no service's relay publishes its rows first) and
Redis: every row once, each channel in seq order, and a user whose lock another publisher holds
left to that publisher."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
import redis.asyncio as redis

from notifications_svc import store
from notifications_svc.outbox import LOCK_NAMESPACE, Outbox
from notifications_svc.wire import CreateNotification
from shared import db, keys, migrate, redis_client
from shared.settings import Settings
from shared.wire import Notification, decode_envelope


@pytest.fixture
async def own(settings: Settings, private_database: str) -> Settings:
    configured = dataclasses.replace(settings, database_url=private_database)
    await migrate.apply_with_settings(configured)
    return configured


@pytest.fixture
async def pool(own: Settings) -> AsyncIterator[asyncpg.Pool]:
    connections = await db.create_pool(own, min_size=1, max_size=4)
    try:
        yield connections
    finally:
        await connections.close()


@pytest.fixture
async def outbox(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[Outbox]:
    client = redis_client.create_client(settings)
    try:
        yield Outbox(pool, client)
    finally:
        await client.aclose()


async def _create(pool: asyncpg.Pool, users: list[uuid.UUID], each: int) -> None:
    """`each` unpublished notifications per user, through the batch create."""
    requests = [
        CreateNotification(user_id=user, title=f"n{n}", content="c", type="build")
        for n in range(each)
        for user in users
    ]
    await store.create_many(pool, requests)


async def _drain(pubsub: redis.client.PubSub, count: int) -> list[tuple[str, int, int]]:
    """The next `count` frames as (channel, envelope seq, frame seq)."""
    got: list[tuple[str, int, int]] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is None:
                continue
            meta, frame = decode_envelope(message["data"])
            notification = msgspec.json.decode(frame, type=Notification)
            assert meta.seq is not None
            got.append((message["channel"].decode(), meta.seq, notification.data.seq))
    return got


async def test_many_users_published_once_each_in_seq_order(
    outbox: Outbox, pool: asyncpg.Pool, settings: Settings
) -> None:
    """One call publishes every row of every given user, each channel's in seq order, and marks
    them: a second call finds nothing."""
    users = [uuid.uuid4() for _ in range(5)]
    await _create(pool, users, each=3)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(*(keys.user_channel(u) for u in users))
            assert await outbox.publish_users(users) == 15
            got = await _drain(pubsub, 15)
    finally:
        await client.aclose()
    for user in users:
        seqs = [(meta, frame) for c, meta, frame in got if c == keys.user_channel(user)]
        assert seqs == [(1, 1), (2, 2), (3, 3)]
    assert await outbox.publish_users(users) == 0


async def test_a_user_locked_by_another_publisher_is_left_to_it(
    outbox: Outbox, pool: asyncpg.Pool, own: Settings
) -> None:
    """While another connection holds a user's advisory lock (another instance publishing it),
    the relay publishes the other users and leaves that one's rows unpublished; once the lock is
    free, the next call publishes them."""
    held, free = uuid.uuid4(), uuid.uuid4()
    await _create(pool, [held, free], each=2)
    other = await asyncpg.connect(own.asyncpg_dsn)
    try:
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_NAMESPACE, str(held)
            )
            assert await outbox.publish_users([held, free]) == 2
            left = await store.unpublished(other, held, 10)
            assert [row.seq for row in left] == [1, 2]
            assert await store.unpublished(other, free, 10) == []
    finally:
        await other.close()
    assert await outbox.publish_users([held, free]) == 2

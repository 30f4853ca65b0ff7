"""Publishing through the outbox, observed by a real Redis subscriber on the user's channel:
every committed notification arrives once, in seq order, also when Redis was down at create
time and across two service instances."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import msgspec
import redis.asyncio as redis

from notifications_svc import store
from notifications_svc.outbox import LOCK_NAMESPACE
from notifications_svc.wire import CreateNotification
from shared import db, keys
from shared.infra import EmbeddedRedis
from shared.settings import Settings
from shared.wire import Notification, decode_envelope
from tests.conftest import SpawnService
from tests.notifications_svc.conftest import INTERNAL, create, payload
from tests.support.processes import ServiceProcess


class Subscriber:
    def __init__(self, pubsub: redis.client.PubSub) -> None:
        self._pubsub = pubsub

    async def frames(self, count: int, timeout: float = 15) -> list[tuple[int, Notification]]:
        """The next `count` published notifications as (meta seq, frame)."""
        received: list[tuple[int, Notification]] = []
        deadline = time.monotonic() + timeout
        while len(received) < count and time.monotonic() < deadline:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None:
                continue
            meta, frame = decode_envelope(message["data"])
            notification = msgspec.json.decode(frame, type=Notification)
            assert meta.seq is not None
            received.append((meta.seq, notification))
        return received

    async def nothing_more(self, wait: float = 1.5) -> bool:
        return not await self.frames(1, timeout=wait)


@asynccontextmanager
async def subscribed(url: str, user: uuid.UUID) -> AsyncIterator[Subscriber]:
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(keys.user_channel(user))
        yield Subscriber(pubsub)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def test_subscriber_receives_frame_with_seq(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    """A create publishes the seed's notification frame with data.seq and the same meta seq,
    identical to what replay returns."""
    user = uuid.uuid4()
    async with subscribed(settings.redis_url, user) as subscriber:
        made = await create(http, user)
        [(seq, frame)] = await subscriber.frames(1)
    assert seq == frame.data.seq == made["seq"] == 1
    assert frame.data.id == made["id"]
    assert frame.data.notification_type == made["type"]
    replayed = await http.get(f"/internal/v1/users/{user}/notifications/replay", headers=INTERNAL)
    assert replayed.json()["items"] == [msgspec.to_builtins(frame)]


async def test_send_push_false_is_stored_not_published(
    http: httpx.AsyncClient, settings: Settings, conn: asyncpg.Connection
) -> None:
    """send_push=false stores the notification but never publishes it (nor leaves it to the
    relay)."""
    user = uuid.uuid4()
    async with subscribed(settings.redis_url, user) as subscriber:
        await create(http, user, title="quiet", send_push=False)
        await create(http, user, title="loud")
        received = await subscriber.frames(1)
        assert await subscriber.nothing_more(wait=1)
    assert [(seq, f.data.title) for seq, f in received] == [(2, "loud")]
    rows = await conn.fetch(
        "SELECT title, published_at IS NOT NULL AS settled FROM notifications.notifications"
        " WHERE user_id = $1 ORDER BY seq",
        user,
    )
    assert [(r["title"], r["settled"]) for r in rows] == [("quiet", True), ("loud", True)]


async def test_relay_publishes_rows_left_by_a_crash(
    notifications: ServiceProcess, settings: Settings
) -> None:
    """A row committed by a process that died before publishing (here: committed directly
    through the store, never published) is published by the running instance's relay."""
    user = uuid.uuid4()
    pool = await db.create_pool(settings, max_size=1)
    try:
        async with subscribed(settings.redis_url, user) as subscriber:
            created = await store.create(
                pool,
                CreateNotification(user_id=user, title="orphan", content="c", type="system"),
            )
            [(seq, frame)] = await subscriber.frames(1, timeout=10)
    finally:
        await pool.close()
    assert seq == created.row.seq == 1
    assert frame.data.id == str(created.row.id)


async def test_redis_down_during_create_then_relay_publishes(
    spawn_service: SpawnService, private_redis: EmbeddedRedis, private_database: str
) -> None:
    """With Redis stopped, creates still answer 201 and are kept unpublished; once Redis is
    back the relay publishes them, in seq order, without any caller retrying."""
    service = spawn_service(
        "notifications_svc", REDIS_URL=private_redis.url, DATABASE_URL=private_database
    )
    user = uuid.uuid4()
    conn = await asyncpg.connect(private_database)
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            private_redis.stop()
            started = time.monotonic()
            made = [await create(http, user, title=f"offline {n}") for n in range(3)]
            assert time.monotonic() - started < 10
            assert [m["seq"] for m in made] == [1, 2, 3]
            assert await _unpublished(conn, user) == 3

            # Hold the user's publish lock until we listen, so the relay cannot publish before
            # the subscriber exists (pub/sub keeps nothing for late subscribers).
            await conn.execute(
                "SELECT pg_advisory_lock($1, hashtext($2))", LOCK_NAMESPACE, str(user)
            )
            private_redis.start()
            async with subscribed(private_redis.url, user) as subscriber:
                await conn.execute("SELECT pg_advisory_unlock_all()")
                received = await subscriber.frames(3)
                assert [(seq, f.data.id) for seq, f in received] == [
                    (m["seq"], m["id"]) for m in made
                ], service.log()
                after = await create(http, user, title="online")
                [(seq, frame)] = await subscriber.frames(1)
                assert seq == after["seq"] == 4
                assert frame.data.title == "online"
                assert await subscriber.nothing_more(wait=1)
        assert await _unpublished(conn, user) == 0
    finally:
        await conn.close()
        service.stop()


async def _unpublished(conn: asyncpg.Connection, user: uuid.UUID) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM notifications.notifications"
            " WHERE user_id = $1 AND published_at IS NULL",
            user,
        )
    )


async def test_two_instances_publish_in_seq_order(
    spawn_service: SpawnService, notifications: ServiceProcess, settings: Settings
) -> None:
    """Concurrent creates through two instances for one user reach the subscriber exactly once
    each, in strictly increasing seq order."""
    other = spawn_service("notifications_svc")
    user = uuid.uuid4()
    async with (
        subscribed(settings.redis_url, user) as subscriber,
        httpx.AsyncClient(timeout=30) as http,
    ):
        urls = [notifications.url, other.url] * 20
        responses = await asyncio.gather(
            *(
                http.post(f"{url}/internal/v1/notifications", json=payload(user), headers=INTERNAL)
                for url in urls
            )
        )
        assert all(r.status_code == 201 for r in responses)
        received = await subscriber.frames(40)
        assert [seq for seq, _ in received] == list(range(1, 41))
        assert [f.data.seq for _, f in received] == list(range(1, 41))
        assert await subscriber.nothing_more(wait=1.5)

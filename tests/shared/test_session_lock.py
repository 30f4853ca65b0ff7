"""`shared.session_lock` against a real Redis: one answer per session, and only the holding
answer refreshes or releases the lock."""

from __future__ import annotations

import uuid

import redis.asyncio as redis

from shared import keys, session_lock
from shared.session_lock import SessionLock
from shared.settings import Settings


async def test_one_answer_holds_a_session(client: redis.Redis) -> None:
    """The first answer acquires the lock; a second one is refused and learns who holds it."""
    session = uuid.uuid4()
    first, second = SessionLock(session, "a", 60_000), SessionLock(session, "b", 60_000)
    assert await first.acquire(client)
    assert not await second.acquire(client)
    assert await session_lock.holder(client, session) == "a"
    assert await first.release(client)
    assert await session_lock.holder(client, session) is None
    assert await second.acquire(client)
    await second.release(client)


async def test_only_the_holder_refreshes_or_releases(client: redis.Redis) -> None:
    """A late answer's refresh and release leave a newer answer's lock as it was."""
    session = uuid.uuid4()
    newer, late = SessionLock(session, "new", 60_000), SessionLock(session, "old", 60_000)
    assert await newer.acquire(client)
    assert not await late.refresh(client)
    assert not await late.release(client)
    assert await session_lock.holder(client, session) == "new"
    await newer.release(client)


async def test_refresh_extends_the_expiry(client: redis.Redis) -> None:
    """Refreshing sets the lock's time to live back to `ttl_ms`."""
    session = uuid.uuid4()
    short = SessionLock(session, "m", 1_000)
    assert await short.acquire(client)
    short.ttl_ms = 60_000
    assert await short.refresh(client)
    assert await client.pttl(keys.chat_active(session)) > 1_000
    await short.release(client)


async def test_release_in_a_pipeline(client: redis.Redis) -> None:
    """`release_in` queues the same check-and-delete on a pipeline."""
    session = uuid.uuid4()
    lock = SessionLock(session, "m", 60_000)
    assert await lock.acquire(client)
    async with client.pipeline(transaction=False) as pipe:
        lock.release_in(pipe)
        assert await pipe.execute() == [1]
    assert await session_lock.holder(client, session) is None


def test_ttl_covers_three_reclaim_periods(settings: Settings) -> None:
    """The lock outlives three reclaim periods of the workers, and at least a minute."""
    assert session_lock.ttl_ms(settings) >= max(60_000, 3 * settings.agent_reclaim_idle * 1000)

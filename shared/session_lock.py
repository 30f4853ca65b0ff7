"""The chat-session lock `chat:active:{session_id}`: at most one answer streams in a session.

The gateway acquires it when it queues a question (the lock covers the wait in the queue), the
agent worker refreshes it on every heartbeat while it answers and releases it when the answer
ends; a lock nobody refreshes expires on its own after `ttl_ms(settings)`, so a crashed worker
never leaves a session busy for good. The lock's value is the holding answer's message id:
refreshing and releasing act only while that answer still holds it (a Lua check-and-act, atomic
in Redis), so a late worker never frees or extends the lock of a newer answer.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from shared import keys
from shared.redis_client import RedisClient
from shared.settings import Settings

_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def ttl_ms(settings: Settings) -> int:
    """How long a session stays busy without a worker heartbeat (at least a minute, and three
    times the worker's reclaim idle time, so a live worker always refreshes it in time)."""
    return int(max(60.0, 3 * settings.agent_reclaim_idle) * 1000)


async def holder(client: RedisClient, session_id: UUID | str) -> str | None:
    """The message id of the answer holding the session's lock, or None when it is free."""
    running: bytes | str | None = await client.get(keys.chat_active(session_id))
    return running.decode() if isinstance(running, bytes) else running


class SessionLock:
    """The lock of `session_id` as held (or wanted) by the answer `message_id`.

    Every method is one Redis round trip and safe to call again: acquiring a lock already held
    by this answer returns False like any other holder, refreshing or releasing a lock this
    answer no longer holds does nothing and returns False."""

    def __init__(self, session_id: UUID | str, message_id: str, ttl_ms: int) -> None:
        self.key = keys.chat_active(session_id)
        self.message_id = message_id
        self.ttl_ms = ttl_ms

    async def acquire(self, client: RedisClient) -> bool:
        """Take the lock if the session is free; False when another answer holds it."""
        return bool(await client.set(self.key, self.message_id, nx=True, px=self.ttl_ms))

    async def refresh(self, client: RedisClient) -> bool:
        """Extend the lock by `ttl_ms` if this answer still holds it."""
        return bool(await client.eval(_REFRESH, 1, self.key, self.message_id, self.ttl_ms))

    async def release(self, client: RedisClient) -> bool:
        """Free the session if this answer still holds it."""
        return bool(await client.eval(_RELEASE, 1, self.key, self.message_id))

    def release_in(self, pipe: Any) -> None:
        """Queue `release` on a pipeline (its result is the pipeline's)."""
        pipe.eval(_RELEASE, 1, self.key, self.message_id)

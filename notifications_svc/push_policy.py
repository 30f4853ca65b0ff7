"""When a notification is also pushed: the policy, the presence check, and the jobs it creates.

`PushPlanner.plan` runs inside the notification's create transaction, after the insert and just
before the commit: with policy `offline` it asks the gateway registry in Redis whether the user
has a live session (`SCARD user:sessions:{user_id}`: one key, so it works on a Redis Cluster), and
if not, inserts one push job per subscription in the same transaction. The notification and its
pushes commit together or not at all.

The race (docs/push.md): the answer is the registry's at that instant. A user who connects
between the check and the commit gets the notification twice (live or by replay, and as a push
the service worker shows): a duplicate across channels, carrying the same notification id. A
user whose last tab closes in that instant gets no push, and finds the notification in the inbox
on the next visit. The registry also counts a crashed gateway's connections until they are swept
(about two heartbeats). When Redis does not answer within `PRESENCE_TIMEOUT`, the user is taken
to be offline (a push too many beats a notification nobody sees), and Redis is not asked again
for `PRESENCE_RETRY_AFTER` seconds, so a Redis outage costs creates no more than one timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from uuid import UUID

import asyncpg
from redis.exceptions import RedisError

from notifications_svc import push_store
from notifications_svc.wire import Stored
from shared import keys
from shared.redis_client import RedisClient
from shared.settings import Settings

log = logging.getLogger(__name__)

PRESENCE_TIMEOUT = 0.5  # seconds
PRESENCE_RETRY_AFTER = 5.0  # seconds without asking Redis after it failed

Clock = Callable[[], float]


class Presence:
    """Whether a user has a live connection on any gateway, from the gateway registry."""

    def __init__(self, client: RedisClient, clock: Clock = time.monotonic) -> None:
        self._redis = client
        self._clock = clock
        self._skip_until = 0.0

    async def online(self, user_id: UUID) -> bool:
        """True when the registry lists a session of the user. Never raises: Redis unreachable
        or slow means False (see the module docstring)."""
        if self._clock() < self._skip_until:
            return False
        try:
            async with asyncio.timeout(PRESENCE_TIMEOUT):
                sessions = await self._redis.scard(keys.user_sessions(user_id))
        except (RedisError, OSError, TimeoutError) as exc:
            self._skip_until = self._clock() + PRESENCE_RETRY_AFTER
            log.warning("presence unknown, pushing", extra={"error": repr(exc)})
            return False
        return int(sessions) > 0


class PushPlanner:
    """Decides and enqueues a notification's pushes inside its create transaction."""

    def __init__(
        self,
        settings: Settings,
        presence: Presence,
        wake: Callable[[], None],
        clock: Clock = time.time,
    ) -> None:
        self._settings = settings
        self._presence = presence
        self._wake = wake
        self._clock = clock

    async def plan(self, conn: asyncpg.Connection, row: Stored, send_push: bool) -> int:
        """Insert the row's push jobs if the policy says so; returns how many (0: no push)."""
        if not send_push:
            return 0
        policy = self._settings.push_policy_for(row.type)
        if policy == "never" or not await push_store.has_subscriptions(conn, row.user_id):
            return 0
        if policy == "offline" and await self._presence.online(row.user_id):
            return 0
        return await push_store.enqueue(conn, row.id, row.user_id, self._clock())

    async def plan_many(
        self, conn: asyncpg.Connection, rows: Sequence[tuple[Stored, bool]]
    ) -> list[int]:
        """`plan` for a batch's new rows (row, send_push), in two statements for the batch and
        one presence check per user with subscriptions; how many jobs each row got, in order."""
        wanted = [
            row
            for row, send_push in rows
            if send_push and self._settings.push_policy_for(row.type) != "never"
        ]
        if not wanted:
            return [0] * len(rows)
        subscribed = await push_store.subscribed_users(conn, list({r.user_id for r in wanted}))
        online: dict[UUID, bool] = {}
        jobs: list[tuple[UUID, UUID]] = []
        for row in wanted:
            if row.user_id not in subscribed:
                continue
            if self._settings.push_policy_for(row.type) == "offline":
                if row.user_id not in online:
                    online[row.user_id] = await self._presence.online(row.user_id)
                if online[row.user_id]:
                    continue
            jobs.append((row.id, row.user_id))
        if not jobs:
            return [0] * len(rows)
        counts = await push_store.enqueue_many(conn, jobs, self._clock())
        return [counts[row.id] for row, _ in rows]

    def after_commit(self) -> None:
        """Jobs were committed: have the local sender look now rather than at its next poll."""
        self._wake()

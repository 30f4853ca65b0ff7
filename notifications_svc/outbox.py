"""The outbox: every committed notification reaches its user's pub/sub channel, in seq order.

After a create commits, the request publishes the user's unpublished rows itself (the fast path).
Whatever that could not publish (Redis down, the process died between commit and publish) stays
marked unpublished in PostgreSQL, and the relay, a background task of every instance, publishes
it as soon as Redis answers again: nobody has to retry.

Ordering: a user's rows are only ever published under a transaction-scoped advisory lock for that
user (across instances), held while everything still unpublished of that user goes out in seq
order and is marked: `Outbox.publish_user` (the fast path) waits for the lock, the relay's
`Outbox.publish_users` takes the free locks of many users at once and leaves the others to their
holder or its next pass. Seqs are handed out in commit order, so whoever holds the lock next only
finds higher seqs: a channel never sees seq k after seq k+1. Delivery is at-least-once: a publish
whose marking is lost (the database failed right after) is sent again with the same seq, which
the gateway drops (it ignores seq <= the last one it delivered).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from uuid import UUID

import asyncpg
from prometheus_client import Counter
from redis.exceptions import RedisError

from notifications_svc import store
from notifications_svc.wire import frame_bytes
from shared import db, publish, redis_client
from shared.backoff import Backoff
from shared.redis_client import RedisClient

log = logging.getLogger(__name__)

# Key space of the per-user advisory lock: pg_advisory_xact_lock(LOCK_NAMESPACE, hashtext(user)).
LOCK_NAMESPACE = 0x6E6F7466  # "notf"
RELAY_POLL_INTERVAL = 1.0  # seconds; also how soon another instance's orphans are picked up
# How long a create's answer may wait for its inline publish. A Redis that stops answering
# without closing connections (a half-open link) would otherwise hold the answer for the client's
# socket timeouts (10 s and more); past this, the relay publishes instead.
FAST_PATH_TIMEOUT = 1.0
_BATCH = 200
# Rows the relay publishes in one transaction and one Redis round trip (users: `_BATCH`).
_RELAY_ROWS = 2000
TRY_LOCK_USERS = (
    "SELECT u FROM unnest($2::uuid[]) AS u WHERE pg_try_advisory_xact_lock($1, hashtext(u::text))"
)

PUBLISHED = Counter("notifications_published_total", "Notification frames published to Redis")
PUBLISH_FAILURES = Counter(
    "notifications_publish_failures_total", "Publish attempts that failed (rows left to the relay)"
)

# redis-py wraps socket errors and timeouts into RedisError subclasses.
RedisDown = RedisError


class Outbox:
    """Publishes unpublished notifications. One per process; `run_relay` is its background loop."""

    def __init__(self, pool: asyncpg.Pool, client: RedisClient) -> None:
        self._pool = pool
        self._redis = client
        self._wake = asyncio.Event()
        # False after a failed publish: creates stop trying Redis inline (a blackholed Redis
        # would cost each of them a connect timeout) until the relay gets through again.
        self._redis_ok = True

    async def publish_user(self, user_id: UUID) -> int:
        """Publish the user's unpublished rows in seq order and mark them; returns how many.

        Raises the Redis error that stopped it; rows published before the failure stay marked.
        """
        total = 0
        while True:
            failure: BaseException | None = None
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_NAMESPACE, str(user_id)
                )
                rows = await store.unpublished(conn, user_id, _BATCH)
                sent: list[UUID] = []
                for row in rows:
                    try:
                        await publish.notification(self._redis, user_id, frame_bytes(row), row.seq)
                    except RedisDown as exc:
                        failure = exc
                        break
                    sent.append(row.id)
                if sent:
                    await store.mark_published(conn, user_id, sent)
            total += len(sent)
            PUBLISHED.inc(len(sent))
            if failure is not None:
                raise failure
            if len(rows) < _BATCH:
                return total

    async def publish_users(self, user_ids: Sequence[UUID]) -> int:
        """Publish, in one transaction and one Redis round trip, the unpublished rows of those of
        `user_ids` whose lock is free (up to `_RELAY_ROWS` rows, each user's in seq order), and
        mark them; returns how many. A user whose lock is held is skipped: its holder publishes
        its rows, or a later pass does. Raises the Redis error that stopped it; then nothing of
        this call is marked, and all of it is published again later."""
        async with self._pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(TRY_LOCK_USERS, LOCK_NAMESPACE, list(user_ids))
            locked = [r["u"] for r in records]
            rows = await store.unpublished_of(conn, locked, _RELAY_ROWS) if locked else []
            await publish.to_users(
                self._redis, [(row.user_id, frame_bytes(row), row.seq) for row in rows]
            )
            if rows:
                await store.mark_published_ids(conn, [row.id for row in rows])
        PUBLISHED.inc(len(rows))
        return len(rows)

    def wake(self) -> None:
        """Have the relay drain the outbox now (e.g. after a batch create)."""
        self._wake.set()

    async def after_commit(self, user_id: UUID) -> None:
        """The fast path after a create committed. Never raises: the notification is safe in
        PostgreSQL whatever happens here, and the relay takes over what is left."""
        if not self._redis_ok:
            self._wake.set()
            return
        try:
            async with asyncio.timeout(FAST_PATH_TIMEOUT):
                await self.publish_user(user_id)
        except (RedisDown, TimeoutError) as exc:
            # Rows published before a timeout but not marked are published again by the relay
            # with the same seqs, which the gateway drops.
            self._redis_ok = False
            PUBLISH_FAILURES.inc()
            log.warning("publish failed; relay will retry", extra={"error": repr(exc)})
            self._wake.set()
        except db.UNAVAILABLE as exc:
            # The database went away after our commit (a restart): the rows stay unpublished
            # for the relay. An outage, not a bug: one line, no traceback.
            PUBLISH_FAILURES.inc()
            log.warning(
                "publish failed, postgres unavailable; relay will retry", extra={"error": repr(exc)}
            )
            self._wake.set()
        except Exception:
            # Anything else after our commit: the rows stay unpublished for the relay.
            PUBLISH_FAILURES.inc()
            log.exception("publish failed; relay will retry")
            self._wake.set()

    async def relay_once(self) -> int:
        """Publish every unpublished row of every user whose lock is free; returns how many.
        Raises on failure."""
        total = 0
        while True:
            async with self._pool.acquire() as conn:
                users = await store.unpublished_users(conn, _BATCH)
            if not users:
                break
            # Many users per transaction and Redis round trip: one user at a time (four side
            # by side) cost about 0.9 ms of this process's CPU per row when each user had one
            # row waiting, the steady state of batch creates (docs/performance-notes.md).
            published = await self.publish_users(users)
            total += published
            if not published:
                break  # the waiting users' locks are all held: their holders publish them
        if not self._redis_ok:
            await redis_client.ping(self._redis)
            self._redis_ok = True
            log.info("redis reachable again; publishing inline")
        return total

    async def run_relay(self) -> None:
        """Forever: wake on a failed inline publish or every `RELAY_POLL_INTERVAL` seconds, and
        drain the outbox; after a failure retry with backoff. Cancel to stop."""
        backoff = Backoff(base=0.2, maximum=5.0)
        while True:
            try:
                async with asyncio.timeout(RELAY_POLL_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                published = await self.relay_once()
            except RedisDown as exc:
                self._redis_ok = False
                log.warning("relay: redis unreachable", extra={"error": repr(exc)})
            except (asyncpg.PostgresError, *db.UNAVAILABLE) as exc:
                log.warning("relay: postgres unreachable", extra={"error": repr(exc)})
            except Exception:
                # The relay is what makes delivery reliable: it must outlive any surprise.
                log.exception("relay: unexpected error")
            else:
                if published:
                    log.info("relay published", extra={"count": published})
                backoff.reset()
                continue
            PUBLISH_FAILURES.inc()
            await backoff.sleep()
            self._wake.set()

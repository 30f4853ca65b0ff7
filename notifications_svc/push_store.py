"""Every SQL statement on `notifications.push_subscriptions` and `notifications.push_jobs`.

Like `store`, the caller's id is part of every statement on subscriptions, so another user's
subscription is indistinguishable from a missing one. Jobs are an outbox: `enqueue` runs inside
the notification's create transaction; the sender leases due jobs (`claim`) by moving their
`next_attempt_at` past the lease, so a sender that dies mid-send leaves them due again later.
Times are epoch seconds from the caller's clock (`to_timestamp`), so tests can move time.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from notifications_svc.webpush import Subscription
from shared.errors import Conflict
from shared.users import ensure_user

_S = "notifications.push_subscriptions"
_J = "notifications.push_jobs"
_N = "notifications.notifications"
LOCK_NAMESPACE = 0x70757368  # "push": pg_advisory_xact_lock(LOCK_NAMESPACE, hashtext(user))

SUBSCRIPTION_COLUMNS = "id, endpoint, p256dh, auth, created_at"
FIND_ENDPOINT = f"SELECT id, user_id, p256dh, auth FROM {_S} WHERE endpoint = $1 FOR UPDATE"
COUNT_USER = f"SELECT count(*) FROM {_S} WHERE user_id = $1"
INSERT_SUBSCRIPTION = f"""
INSERT INTO {_S} (id, user_id, endpoint, p256dh, auth) VALUES ($1, $2, $3, $4, $5)
RETURNING {SUBSCRIPTION_COLUMNS}
"""
UPDATE_KEYS = f"""
UPDATE {_S} SET p256dh = $3, auth = $4 WHERE id = $1 AND user_id = $2
RETURNING {SUBSCRIPTION_COLUMNS}
"""
DELETE_BY_ID = f"DELETE FROM {_S} WHERE id = $1"
LIST_USER = f"SELECT {SUBSCRIPTION_COLUMNS} FROM {_S} WHERE user_id = $1 ORDER BY created_at, id"
DELETE_USER_SUBSCRIPTION = f"DELETE FROM {_S} WHERE user_id = $1 AND id = $2"
HAS_SUBSCRIPTIONS = f"SELECT EXISTS (SELECT 1 FROM {_S} WHERE user_id = $1)"
ENQUEUE = f"""
INSERT INTO {_J} (notification_id, subscription_id, next_attempt_at)
SELECT $1, id, to_timestamp($3) FROM {_S} WHERE user_id = $2
"""
SUBSCRIBED_USERS = f"SELECT DISTINCT user_id FROM {_S} WHERE user_id = ANY($1::uuid[])"
ENQUEUE_MANY = f"""
INSERT INTO {_J} (notification_id, subscription_id, next_attempt_at)
SELECT x.notification_id, s.id, to_timestamp($3)
FROM unnest($1::uuid[], $2::uuid[]) AS x(notification_id, user_id)
JOIN {_S} s ON s.user_id = x.user_id
WHERE s.user_id = ANY($2::uuid[])  -- the index scan; a join alone hashes every subscription
RETURNING notification_id
"""
CLAIM = f"""
WITH claimed AS (
    UPDATE {_J} SET attempts = attempts + 1, next_attempt_at = to_timestamp($2)
    WHERE id IN (
        SELECT id FROM {_J} WHERE dead_at IS NULL AND next_attempt_at <= to_timestamp($1)
        ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED
    )
    RETURNING id, attempts, notification_id, subscription_id
)
SELECT c.id, c.attempts, s.id AS subscription_id, s.endpoint, s.p256dh, s.auth,
       n.id AS notification_id, n.title, n.content, n.type, n.action, n.created_at
FROM claimed c
JOIN {_S} s ON s.id = c.subscription_id
JOIN {_N} n ON n.id = c.notification_id
"""
DONE = f"DELETE FROM {_J} WHERE id = $1"
RESCHEDULE = f"UPDATE {_J} SET next_attempt_at = to_timestamp($2), last_error = $3 WHERE id = $1"
DEAD = f"UPDATE {_J} SET dead_at = to_timestamp($2), last_error = $3 WHERE id = $1"


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    id: UUID
    endpoint: str
    p256dh: str
    auth: str
    created_at: datetime

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> StoredSubscription:
        return cls(**{name: record[name] for name in cls.__slots__})


async def subscribe(
    pool: asyncpg.Pool, user_id: UUID, subscription: Subscription, cap: int
) -> tuple[StoredSubscription, bool]:
    """Register a subscription for the user: (row, created). Idempotent per endpoint: the same
    endpoint again returns the same row (keys updated if the browser rotated them). An endpoint
    registered by another user moves to this one with a new id (the browser is now this user's),
    and the other user's pending pushes to it are dropped. `Conflict` when the user already has
    `cap` subscriptions."""
    try:
        return await _subscribe_once(pool, user_id, subscription, cap)
    except asyncpg.UniqueViolationError:
        # Another user registered the same endpoint at the same instant (the advisory lock only
        # serialises one user's requests): now that it committed, the row lock sees it.
        return await _subscribe_once(pool, user_id, subscription, cap)


async def _subscribe_once(
    pool: asyncpg.Pool, user_id: UUID, subscription: Subscription, cap: int
) -> tuple[StoredSubscription, bool]:
    async with pool.acquire() as conn, conn.transaction():
        await ensure_user(conn, user_id)
        # Serialises one user's registrations, so the cap holds under concurrent requests.
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_NAMESPACE, str(user_id)
        )
        existing = await conn.fetchrow(FIND_ENDPOINT, subscription.endpoint)
        if existing is not None and existing["user_id"] == user_id:
            record = await conn.fetchrow(
                UPDATE_KEYS, existing["id"], user_id, subscription.p256dh, subscription.auth
            )
            return StoredSubscription.from_record(record), False
        if int(await conn.fetchval(COUNT_USER, user_id)) >= cap:
            raise Conflict(
                f"at most {cap} push subscriptions per user; delete one first",
                details={"limit": cap},
            )
        if existing is not None:
            await conn.execute(DELETE_BY_ID, existing["id"])  # cascades to its pending jobs
        record = await conn.fetchrow(
            INSERT_SUBSCRIPTION,
            uuid.uuid4(),
            user_id,
            subscription.endpoint,
            subscription.p256dh,
            subscription.auth,
        )
        return StoredSubscription.from_record(record), True


async def list_subscriptions(pool: asyncpg.Pool, user_id: UUID) -> list[StoredSubscription]:
    return [StoredSubscription.from_record(r) for r in await pool.fetch(LIST_USER, user_id)]


async def unsubscribe(pool: asyncpg.Pool, user_id: UUID, subscription_id: UUID) -> bool:
    """Delete one of the user's subscriptions (and its pending pushes); False if none such."""
    status: str = await pool.execute(DELETE_USER_SUBSCRIPTION, user_id, subscription_id)
    return status == "DELETE 1"


async def has_subscriptions(conn: asyncpg.Connection, user_id: UUID) -> bool:
    return bool(await conn.fetchval(HAS_SUBSCRIPTIONS, user_id))


async def enqueue(
    conn: asyncpg.Connection, notification_id: UUID, user_id: UUID, now: float
) -> int:
    """One job per subscription of the user, due at `now`; call inside the create transaction.
    Returns how many."""
    status: str = await conn.execute(ENQUEUE, notification_id, user_id, now)
    return int(status.rsplit(" ", 1)[1])


async def subscribed_users(conn: asyncpg.Connection, user_ids: Sequence[UUID]) -> set[UUID]:
    """Which of `user_ids` have at least one subscription."""
    return {r["user_id"] for r in await conn.fetch(SUBSCRIBED_USERS, list(user_ids))}


async def enqueue_many(
    conn: asyncpg.Connection, notifications: Sequence[tuple[UUID, UUID]], now: float
) -> Counter[UUID]:
    """`enqueue` for many (notification id, user id) pairs in one statement; returns how many
    jobs each notification got."""
    records = await conn.fetch(
        ENQUEUE_MANY, [n for n, _ in notifications], [u for _, u in notifications], now
    )
    return Counter(r["notification_id"] for r in records)


@dataclass(frozen=True, slots=True)
class Job:
    """A leased push: the job, its subscription and the notification it carries."""

    id: int
    attempts: int
    subscription_id: UUID
    endpoint: str
    p256dh: str
    auth: str
    notification_id: UUID
    title: str
    content: str
    type: str
    action: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Job:
        return cls(**{name: record[name] for name in cls.__slots__})


async def claim(pool: asyncpg.Pool, now: float, lease_until: float, limit: int) -> list[Job]:
    """Lease up to `limit` due jobs until `lease_until` (counting an attempt each), oldest due
    first. Concurrent senders never lease the same job (SKIP LOCKED)."""
    records = await pool.fetch(CLAIM, now, lease_until, limit)
    return [Job.from_record(r) for r in records]


async def done(pool: asyncpg.Pool, job_id: int) -> None:
    await pool.execute(DONE, job_id)


async def reschedule(pool: asyncpg.Pool, job_id: int, at: float, error: str) -> None:
    await pool.execute(RESCHEDULE, job_id, at, error)


async def dead(pool: asyncpg.Pool, job_id: int, now: float, error: str) -> None:
    await pool.execute(DEAD, job_id, now, error)


async def forget_subscription(pool: asyncpg.Pool, subscription_id: UUID) -> None:
    """The push service said the subscription is gone: delete it and its pending pushes."""
    await pool.execute(DELETE_BY_ID, subscription_id)

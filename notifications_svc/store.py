"""Every SQL statement on `notifications.*`: create, list, read, delete, count, replay, outbox.

Ownership is part of each statement (`WHERE user_id = $caller`), never a fetch-then-check, so a
notification of another user is indistinguishable from a missing one. Functions take a pool or a
connection and never touch Redis; publishing lives in `notifications_svc.outbox`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg

from notifications_svc.wire import COLUMNS, CreateNotification, Stored
from shared.errors import ValidationFailed
from shared.users import ensure_user

if TYPE_CHECKING:
    from notifications_svc.push_policy import PushPlanner

_T = "notifications.notifications"

# Every fixed statement, named, so tests can EXPLAIN exactly what the service runs.
ENSURE_COUNTER = (
    "INSERT INTO notifications.user_counters (user_id) VALUES ($1) ON CONFLICT DO NOTHING"
)
LOCK_COUNTER = "SELECT last_seq FROM notifications.user_counters WHERE user_id = $1 FOR UPDATE"
BUMP_COUNTER = "UPDATE notifications.user_counters SET last_seq = $2 WHERE user_id = $1"
LAST_SEQ = "SELECT last_seq FROM notifications.user_counters WHERE user_id = $1"
FIND_DEDUPE = f"SELECT {COLUMNS} FROM {_T} WHERE user_id = $1 AND dedupe_key = $2"
INSERT = f"""
INSERT INTO {_T} (id, user_id, seq, title, content, type, action, related_entity_type,
                  related_entity_id, push, published_at, dedupe_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $10 THEN NULL ELSE now() END, $11)
RETURNING {COLUMNS}
"""
# The batch create's statements: each does one step for every item of the batch at once.
ENSURE_USERS_AND_COUNTERS = """
WITH new_users AS (
    INSERT INTO users.users (id) SELECT u FROM unnest($1::uuid[]) AS u ORDER BY u
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO notifications.user_counters (user_id) SELECT u FROM unnest($1::uuid[]) AS u ORDER BY u
ON CONFLICT DO NOTHING
"""
LOCK_COUNTERS = (
    "SELECT user_id, last_seq FROM notifications.user_counters"
    " WHERE user_id = ANY($1::uuid[]) ORDER BY user_id FOR UPDATE"
)
FIND_DEDUPES = f"""
SELECT {COLUMNS}, dedupe_key FROM {_T}
WHERE (user_id, dedupe_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
  AND dedupe_key IS NOT NULL
"""
BUMP_COUNTERS = """
UPDATE notifications.user_counters AS c SET last_seq = x.last_seq
FROM unnest($1::uuid[], $2::bigint[]) AS x(user_id, last_seq) WHERE c.user_id = x.user_id
"""
INSERT_MANY = f"""
INSERT INTO {_T} (id, user_id, seq, title, content, type, action, related_entity_type,
                  related_entity_id, push, published_at, dedupe_key)
SELECT id, user_id, seq, title, content, type, action, related_entity_type, related_entity_id,
       push, CASE WHEN push THEN NULL ELSE now() END, dedupe_key
FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::text[],
            $7::jsonb[], $8::text[], $9::uuid[], $10::boolean[], $11::text[])
    AS x(id, user_id, seq, title, content, type, action, related_entity_type, related_entity_id,
         push, dedupe_key)
RETURNING {COLUMNS}
"""
MARK_READ = f"""
UPDATE {_T}
SET is_read = true,
    read_at = coalesce(read_at, now()),
    updated_at = CASE WHEN is_read THEN updated_at ELSE now() END
WHERE user_id = $1 AND id = $2
RETURNING {COLUMNS}
"""
MARK_ALL_READ = (
    f"UPDATE {_T} SET is_read = true, read_at = now(), updated_at = now()"
    " WHERE user_id = $1 AND NOT is_read"
)
DELETE = f"DELETE FROM {_T} WHERE user_id = $1 AND id = $2"
UNREAD_COUNT = f"SELECT count(*) FROM {_T} WHERE user_id = $1 AND NOT is_read"
REPLAY = (
    f"SELECT {COLUMNS} FROM {_T} WHERE user_id = $1 AND seq > $2 AND push ORDER BY seq LIMIT $3"
)
# The replay of many asks in one statement (one snapshot, like REPLAY and LAST_SEQ in one
# repeatable-read transaction): per ask its number, the user's last seq, and its rows plus one
# (to tell whether more exist); an ask without rows is one row of NULL columns.
REPLAY_MANY = f"""
SELECT a.ask, coalesce(c.last_seq, 0) AS user_last_seq, r.*
FROM unnest($1::uuid[], $2::bigint[], $3::int[])
    WITH ORDINALITY AS a(user_id, after_seq, lim, ask)
LEFT JOIN notifications.user_counters AS c ON c.user_id = a.user_id
LEFT JOIN LATERAL (
    SELECT {COLUMNS} FROM {_T} AS n
    WHERE n.user_id = a.user_id AND n.seq > a.after_seq AND n.push
    ORDER BY n.seq LIMIT a.lim + 1
) AS r ON true
ORDER BY a.ask, r.seq
"""
# Oldest backlog first: while the relay runs behind, a plain DISTINCT handed it the same lowest
# user ids on every poll and users late in that order waited minutes (a chaos run at 1,000/s).
UNPUBLISHED_USERS = (
    f"SELECT user_id FROM {_T} WHERE published_at IS NULL"
    " GROUP BY user_id ORDER BY min(created_at) LIMIT $1"
)
UNPUBLISHED = (
    f"SELECT {COLUMNS} FROM {_T} WHERE user_id = $1 AND published_at IS NULL ORDER BY seq LIMIT $2"
)
MARK_PUBLISHED = f"UPDATE {_T} SET published_at = now() WHERE user_id = $1 AND id = ANY($2::uuid[])"
# The relay's drain of many users at once: each user's rows a prefix of its outbox in seq order.
UNPUBLISHED_OF = (
    f"SELECT {COLUMNS} FROM {_T} WHERE user_id = ANY($1::uuid[]) AND published_at IS NULL"
    " ORDER BY user_id, seq LIMIT $2"
)
MARK_PUBLISHED_IDS = f"UPDATE {_T} SET published_at = now() WHERE id = ANY($1::uuid[])"


@dataclass(frozen=True, slots=True)
class Created:
    """A create's outcome: the row, and whether this call inserted it (False: a dedupe hit)."""

    row: Stored
    created: bool
    pushes: int = 0  # Web Push jobs enqueued with it


async def _create_one(
    conn: asyncpg.Connection,
    request: CreateNotification,
    dedupe_key: str | None,
    planner: PushPlanner | None = None,
) -> Created:
    await ensure_user(conn, request.user_id)
    await conn.execute(ENSURE_COUNTER, request.user_id)
    # The counter row lock serialises this user's creates until commit: the dedupe lookup below
    # sees every committed earlier create, and seqs are handed out in commit order.
    last_seq = await conn.fetchval(LOCK_COUNTER, request.user_id)
    if dedupe_key is not None:
        existing = await conn.fetchrow(FIND_DEDUPE, request.user_id, dedupe_key)
        if existing is not None:
            return Created(Stored.from_record(existing), created=False)
    seq = last_seq + 1
    await conn.execute(BUMP_COUNTER, request.user_id, seq)
    record = await conn.fetchrow(
        INSERT,
        uuid.uuid4(),
        request.user_id,
        seq,
        request.title,
        request.content,
        request.type,
        request.action,
        request.related_entity_type,
        request.related_entity_id,
        request.send_push,
        dedupe_key,
    )
    row = Stored.from_record(record)
    pushes = 0 if planner is None else await planner.plan(conn, row, request.send_push)
    return Created(row, created=True, pushes=pushes)


async def create(
    pool: asyncpg.Pool,
    request: CreateNotification,
    *,
    idempotency_key: str | None = None,
    planner: PushPlanner | None = None,
) -> Created:
    """Insert one notification with the user's next seq, in one transaction, with its Web Push
    jobs when `planner` decides so (then woken after the commit).

    Idempotent by key: with `request.dedupe_key` (or `idempotency_key`) a repeat returns the
    first notification unchanged with `created=False`. Raises `ValidationFailed` when the two keys
    disagree or PostgreSQL refuses a value (e.g. a NUL character).
    """
    key = _dedupe_key(request, idempotency_key)
    try:
        async with pool.acquire() as conn, conn.transaction():
            result = await _create_one(conn, request, key, planner)
    except asyncpg.DataError as exc:
        raise ValidationFailed(f"value refused by the database: {exc}") from None
    if result.pushes and planner is not None:
        planner.after_commit()
    return result


async def create_many(
    pool: asyncpg.Pool,
    requests: Sequence[CreateNotification],
    *,
    planner: PushPlanner | None = None,
) -> list[Created]:
    """Insert many notifications atomically (all or none); results in request order.

    Each item is idempotent by its own `dedupe_key`, also within one batch: a repeat answers the
    first occurrence's row with `created=False`. A user's new items get consecutive seqs in
    request order. Users' counter rows are locked in user-id order, so two concurrent batches
    never deadlock. Raises `ValidationFailed` when PostgreSQL refuses a value.
    """
    try:
        async with pool.acquire() as conn, conn.transaction():
            results = await _create_batch(conn, requests, planner)
    except asyncpg.DataError as exc:
        raise ValidationFailed(f"value refused by the database: {exc}") from None
    if planner is not None and any(r.pushes for r in results):
        planner.after_commit()
    return results


async def _create_batch(
    conn: asyncpg.Connection,
    requests: Sequence[CreateNotification],
    planner: PushPlanner | None,
) -> list[Created]:
    # One statement per step for the whole batch (about six round trips per item before; the
    # chaos run's producer sends ~50 items of distinct users per batch): docs/performance-notes.md.
    users = sorted({r.user_id for r in requests})
    await conn.execute(ENSURE_USERS_AND_COUNTERS, users)
    # The counter row locks serialise each user's creates until commit, as in `_create_one`:
    # the dedupe lookup sees every committed earlier create, seqs follow commit order.
    last_seq = {r["user_id"]: r["last_seq"] for r in await conn.fetch(LOCK_COUNTERS, users)}
    keyed = {(r.user_id, r.dedupe_key) for r in requests if r.dedupe_key is not None}
    found: dict[tuple[UUID, str], Stored] = {}
    if keyed:
        pairs = sorted(keyed)
        records = await conn.fetch(FIND_DEDUPES, [u for u, _ in pairs], [k for _, k in pairs])
        found = {(r["user_id"], r["dedupe_key"]): Stored.from_record(r) for r in records}
    # Which item inserts which row: the first occurrence of a (user, key) in request order.
    first: dict[tuple[UUID, str], int] = {}
    repeats: dict[int, tuple[UUID, str]] = {}  # item -> the (user, key) it repeats
    new: list[int] = []
    seqs: list[int] = []
    for index, request in enumerate(requests):
        if request.dedupe_key is not None:
            pair = (request.user_id, request.dedupe_key)
            if pair in found or pair in first:
                repeats[index] = pair
                continue
            first[pair] = index
        last_seq[request.user_id] += 1
        new.append(index)
        seqs.append(last_seq[request.user_id])
    inserted = await _insert_many(conn, [requests[i] for i in new], seqs)
    bumped = sorted({requests[i].user_id for i in new})
    if bumped:
        await conn.execute(BUMP_COUNTERS, bumped, [last_seq[u] for u in bumped])
    rows = dict(zip(new, inserted, strict=True))
    pushes = [0] * len(new)
    if planner is not None and new:
        pushes = await planner.plan_many(conn, [(rows[i], requests[i].send_push) for i in new])
    planned = dict(zip(new, pushes, strict=True))
    results: list[Created] = []
    for index in range(len(requests)):
        if index in rows:
            results.append(Created(rows[index], created=True, pushes=planned[index]))
        else:
            pair = repeats[index]
            results.append(Created(found[pair] if pair in found else rows[first[pair]], False))
    return results


async def _insert_many(
    conn: asyncpg.Connection, requests: Sequence[CreateNotification], seqs: Sequence[int]
) -> list[Stored]:
    """Insert one row per request with its seq; the rows in the requests' order."""
    if not requests:
        return []
    ids = [uuid.uuid4() for _ in requests]
    records = await conn.fetch(
        INSERT_MANY,
        ids,
        [r.user_id for r in requests],
        list(seqs),
        [r.title for r in requests],
        [r.content for r in requests],
        [r.type for r in requests],
        [r.action for r in requests],
        [r.related_entity_type for r in requests],
        [r.related_entity_id for r in requests],
        [r.send_push for r in requests],
        [r.dedupe_key for r in requests],
    )
    # RETURNING's order is not promised: match rows to requests by the ids given here.
    by_id = {r["id"]: Stored.from_record(r) for r in records}
    return [by_id[i] for i in ids]


def _dedupe_key(request: CreateNotification, idempotency_key: str | None) -> str | None:
    if idempotency_key is not None and request.dedupe_key not in (None, idempotency_key):
        raise ValidationFailed(
            "Idempotency-Key header and dedupe_key differ; send one or make them equal",
            details={"field": "dedupe_key"},
        )
    return request.dedupe_key or idempotency_key


@dataclass(frozen=True, slots=True)
class Filters:
    unread_only: bool = False
    notification_type: str | None = None


def _where(user_id: UUID, filters: Filters) -> tuple[str, list[object]]:
    clauses: list[str] = ["user_id = $1"]
    args: list[object] = [user_id]
    if filters.unread_only:
        clauses.append("NOT is_read")
    if filters.notification_type is not None:
        args.append(filters.notification_type)
        clauses.append(f"type = ${len(args)}")
    return " AND ".join(clauses), args


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One statement for a list request: the total and the page in one round trip and one
    snapshot. It returns the page's rows plus one (to tell whether more exist), newest first, each
    with the `total` column; an empty page is one row with `total` and NULLs."""

    sql: str
    args: list[object]


def list_query(
    user_id: UUID, filters: Filters, *, limit: int, offset: int = 0, before_seq: int | None = None
) -> ListQuery:
    where, args = _where(user_id, filters)
    page_where = where
    if before_seq is not None:
        args.append(before_seq)
        page_where += f" AND seq < ${len(args)}"
        offset = 0
    args += [limit + 1, offset]
    sql = (
        f"SELECT t.total, p.* FROM (SELECT count(*) AS total FROM {_T} WHERE {where}) t"
        f" LEFT JOIN LATERAL (SELECT {COLUMNS} FROM {_T} WHERE {page_where} ORDER BY seq DESC"
        f" LIMIT ${len(args) - 1} OFFSET ${len(args)}) p ON true ORDER BY p.seq DESC"
    )
    return ListQuery(sql, args)


async def list_page(
    pool: asyncpg.Pool,
    user_id: UUID,
    filters: Filters,
    *,
    limit: int,
    offset: int = 0,
    before_seq: int | None = None,
) -> tuple[list[Stored], int, bool]:
    """The user's notifications newest first: (rows, total matching, more rows exist).

    `before_seq` (keyset) pages start below that seq and ignore `offset`; `total` counts every
    row matching the filters, regardless of the page. One statement: BEGIN, two queries and COMMIT
    cost four round trips and a quarter of the service's CPU per list request.
    """
    query = list_query(user_id, filters, limit=limit, offset=offset, before_seq=before_seq)
    records = await pool.fetch(query.sql, *query.args)
    rows = [Stored.from_record(r) for r in records[:limit] if r["id"] is not None]
    return rows, int(records[0]["total"]), len(records) > limit


async def mark_read(pool: asyncpg.Pool, user_id: UUID, notification_id: UUID) -> Stored | None:
    """Mark one notification read; None if the user has no such notification. Idempotent: an
    already read notification keeps its first `read_at`."""
    record = await pool.fetchrow(
        MARK_READ,
        user_id,
        notification_id,
    )
    return None if record is None else Stored.from_record(record)


async def mark_all_read(pool: asyncpg.Pool, user_id: UUID) -> int:
    """Mark every unread notification of the user read; returns how many changed."""
    status: str = await pool.execute(MARK_ALL_READ, user_id)
    return int(status.rsplit(" ", 1)[1])


async def delete(pool: asyncpg.Pool, user_id: UUID, notification_id: UUID) -> bool:
    """Delete one notification; False if the user has no such notification."""
    status: str = await pool.execute(DELETE, user_id, notification_id)
    return status == "DELETE 1"


async def unread_count(pool: asyncpg.Pool, user_id: UUID) -> int:
    """How many of the user's notifications are unread (served by the partial unread index)."""
    return int(await pool.fetchval(UNREAD_COUNT, user_id))


async def replay(
    pool: asyncpg.Pool, user_id: UUID, after_seq: int, limit: int
) -> tuple[list[Stored], bool, int]:
    """Pushed notifications with seq > `after_seq`, ascending: (rows, more exist, last seq).

    The last seq is the user's highest committed seq (0 for a user with none); a gap between
    consecutive rows is a deleted or push-less notification, never a lost one.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        records = await conn.fetch(
            REPLAY,
            user_id,
            after_seq,
            limit + 1,
        )
        last_seq = await conn.fetchval(LAST_SEQ, user_id)
    rows = [Stored.from_record(r) for r in records[:limit]]
    return rows, len(records) > limit, int(last_seq or 0)


@dataclass(frozen=True, slots=True)
class ReplayAsk:
    """One user's replay in a batch: up to `limit` pushed notifications with seq > `after_seq`."""

    user_id: UUID
    after_seq: int
    limit: int


@dataclass(frozen=True, slots=True)
class ReplayPage:
    rows: list[Stored]  # ascending seq
    has_more: bool
    last_seq: int  # the user's highest committed seq (0 for a user with none)


async def replay_many(pool: asyncpg.Pool, asks: Sequence[ReplayAsk]) -> list[ReplayPage]:
    """`replay()` for every ask at once, pages in ask order (a user may be asked twice).

    One statement, so one snapshot: each page and its `last_seq` are as consistent as
    `replay()`'s, and every page is of the same moment. One round trip instead of four per user
    (BEGIN, two statements, COMMIT): the reconnect storm's resumes (docs/performance-notes.md).
    """
    records = await pool.fetch(
        REPLAY_MANY,
        [a.user_id for a in asks],
        [a.after_seq for a in asks],
        [a.limit for a in asks],
    )
    rows: list[list[Stored]] = [[] for _ in asks]
    last_seqs = [0] * len(asks)
    for record in records:
        index = record["ask"] - 1
        last_seqs[index] = record["user_last_seq"]
        if record["id"] is not None:
            rows[index].append(Stored.from_record(record))
    return [
        ReplayPage(found[: ask.limit], len(found) > ask.limit, last_seq)
        for ask, found, last_seq in zip(asks, rows, last_seqs, strict=True)
    ]


# Outbox.


async def unpublished_users(conn: asyncpg.Connection, limit: int) -> list[UUID]:
    """Users with rows still to publish, the longest waiting first (read from the outbox
    partial index)."""
    records = await conn.fetch(UNPUBLISHED_USERS, limit)
    return [r["user_id"] for r in records]


async def unpublished(conn: asyncpg.Connection, user_id: UUID, limit: int) -> list[Stored]:
    """The user's rows still to publish, in seq order."""
    records = await conn.fetch(UNPUBLISHED, user_id, limit)
    return [Stored.from_record(r) for r in records]


async def mark_published(conn: asyncpg.Connection, user_id: UUID, ids: Sequence[UUID]) -> None:
    await conn.execute(MARK_PUBLISHED, user_id, list(ids))


async def unpublished_of(
    conn: asyncpg.Connection, user_ids: Sequence[UUID], limit: int
) -> list[Stored]:
    """The rows still to publish of several users, by user then seq, at most `limit`: each
    user's rows are the first of its outbox (the last user's may be cut short)."""
    records = await conn.fetch(UNPUBLISHED_OF, list(user_ids), limit)
    return [Stored.from_record(r) for r in records]


async def mark_published_ids(conn: asyncpg.Connection, ids: Sequence[UUID]) -> None:
    await conn.execute(MARK_PUBLISHED_IDS, list(ids))

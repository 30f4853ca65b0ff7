"""Every query the service runs uses an index, shown by EXPLAIN on a realistic volume: 20,000
users, 200 of them with 250 notifications each (mostly read, five types, some dedupe keys)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from notifications_svc import store
from shared.settings import Settings

USERS = 20_000
BUSY_USERS = 200
PER_USER = 250
# The tested user has this many times PER_USER rows: the most common user_id in ANALYZE's sample
# whatever other tests wrote, so always in the statistics' most-common-values list. (Among 200
# equally busy users, a random half made that list; the others were estimated from the rest of
# the table, a few rows each once other tests' users filled it, and the planner then sorted.)
BUSIEST = 4


async def _seed(dsn: str, users: list[uuid.UUID]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO users.users (id) SELECT unnest($1::uuid[])", users)
            await conn.execute(
                "INSERT INTO notifications.user_counters (user_id, last_seq)"
                " SELECT u, CASE WHEN u = $3::uuid THEN $2::int * $4::int ELSE $2::int END"
                " FROM unnest($1::uuid[]) AS u",
                users,
                PER_USER,
                users[0],
                BUSIEST,
            )
            await conn.execute(
                """
                INSERT INTO notifications.notifications
                    (id, user_id, seq, title, content, type, is_read, read_at, published_at,
                     dedupe_key)
                SELECT gen_random_uuid(), u, g, 'bulk', 'bulk',
                       (ARRAY['task_created', 'email_received', 'reminder', 'system',
                              'mention'])[1 + g % 5],
                       g % 10 <> 0, CASE WHEN g % 10 <> 0 THEN now() END, now(),
                       CASE WHEN g % 3 = 0 THEN 'key-' || g END
                FROM unnest($1::uuid[]) AS u,
                     generate_series(
                         1, CASE WHEN u = $3::uuid THEN $2::int * $4::int ELSE $2::int END
                     ) AS g
                """,
                users[:BUSY_USERS],
                PER_USER,
                users[0],
                BUSIEST,
            )
        await conn.execute("ANALYZE notifications.notifications")
        await conn.execute("ANALYZE notifications.user_counters")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def busy_user(settings: Settings) -> Iterator[uuid.UUID]:
    """The busiest user (PER_USER * BUSIEST notifications) among many users' rows, statistics up
    to date."""
    users = [uuid.uuid4() for _ in range(USERS)]
    asyncio.run(_seed(settings.asyncpg_dsn, users))
    yield users[0]


@pytest.fixture
async def conn(settings: Settings, busy_user: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        yield connection
    finally:
        await connection.close()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _indexes_used(conn: asyncpg.Connection, sql: str, *args: object) -> set[str]:
    """The indexes the plan of `sql` reads; fails if it scans a table sequentially."""
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    nodes = list(_nodes(json.loads(raw)[0]["Plan"]))
    seq_scans = [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"]
    assert not seq_scans, f"sequential scan of {seq_scans} in:\n{raw}"
    used = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert used, f"no index used in:\n{raw}"
    return used


LIST_CASES = [
    (store.Filters(), {"notifications_user_seq"}),
    (store.Filters(unread_only=True), {"notifications_user_unread"}),
    (store.Filters(notification_type="reminder"), {"notifications_user_type"}),
    (
        store.Filters(unread_only=True, notification_type="reminder"),
        {"notifications_user_type", "notifications_user_unread"},
    ),
]


@pytest.mark.parametrize(("filters", "expected"), LIST_CASES)
@pytest.mark.parametrize("keyset", [False, True])
async def test_list_queries_use_an_index(
    conn: asyncpg.Connection,
    busy_user: uuid.UUID,
    filters: store.Filters,
    expected: set[str],
    keyset: bool,
) -> None:
    """The list statement (total and page) uses a fitting index and no sequential scan, with every
    filter combination, for offset pages and for keyset (cursor) pages."""
    query = store.list_query(
        busy_user, filters, limit=20, offset=40, before_seq=120 if keyset else None
    )
    # Any index leading with user_id serves the total (PostgreSQL picks the smallest).
    assert await _indexes_used(conn, query.sql, *query.args) & expected


async def test_unread_count_uses_partial_index(
    conn: asyncpg.Connection, busy_user: uuid.UUID
) -> None:
    """The unread badge count reads only the partial index of unread rows."""
    assert await _indexes_used(conn, store.UNREAD_COUNT, busy_user) == {"notifications_user_unread"}


async def test_outbox_queries_use_partial_index(
    conn: asyncpg.Connection, busy_user: uuid.UUID
) -> None:
    """The relay's poll and per-user drain read the (nearly empty) outbox index."""
    assert await _indexes_used(conn, store.UNPUBLISHED_USERS, 100) == {"notifications_unpublished"}
    assert await _indexes_used(conn, store.UNPUBLISHED, busy_user, 100) == {
        "notifications_unpublished"
    }


async def test_relay_takes_the_longest_waiting_users_first(conn: asyncpg.Connection) -> None:
    """Users with unpublished rows come oldest row first, not in user-id order: a user late in
    that order whose row waits longest is served before newer rows of lower user ids."""
    late = uuid.UUID(int=2**128 - 1)  # last in any user-id order
    early = [uuid.UUID(int=n) for n in range(1, 4)]
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("INSERT INTO users.users (id) SELECT unnest($1::uuid[])", [late, *early])
        await conn.execute(
            """
            INSERT INTO notifications.notifications
                (id, user_id, seq, title, content, type, created_at)
            SELECT gen_random_uuid(), u, 1, 't', 'c', 'system', now() - make_interval(secs => w)
            FROM unnest($1::uuid[], $2::int[]) AS x(u, w)
            """,
            [late, *early],
            [60, 3, 2, 1],
        )
        assert await store.unpublished_users(conn, 2) == [late, early[0]]
    finally:
        await transaction.rollback()


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("LOCK_COUNTER", ("user",)),
        ("BUMP_COUNTER", ("user", 5)),
        ("LAST_SEQ", ("user",)),
        ("FIND_DEDUPE", ("user", "key-9")),
        ("MARK_READ", ("user", "id")),
        ("MARK_ALL_READ", ("user",)),
        ("DELETE", ("user", "id")),
        ("REPLAY", ("user", 200, 500)),
        ("MARK_PUBLISHED", ("user", "ids")),
    ],
)
async def test_statement_uses_an_index(
    conn: asyncpg.Connection, busy_user: uuid.UUID, name: str, args: tuple[object, ...]
) -> None:
    """Each fixed statement of the store (counters, dedupe, read, delete, replay, outbox marks)
    finds its rows through an index."""
    some_id = await conn.fetchval(
        "SELECT id FROM notifications.notifications WHERE user_id = $1 LIMIT 1", busy_user
    )
    values = {"user": busy_user, "id": some_id, "ids": [some_id]}
    bound = [values.get(a, a) if isinstance(a, str) and a in values else a for a in args]
    await _indexes_used(conn, getattr(store, name), *bound)


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("LOCK_COUNTERS", (["user"],), {"user_counters_pkey"}),
        ("FIND_DEDUPES", (["user"], ["key-9"]), {"notifications_user_dedupe"}),
        ("BUMP_COUNTERS", (["user"], [5]), {"user_counters_pkey"}),
        ("UNPUBLISHED_OF", (["user"], 2000), {"notifications_unpublished"}),
        ("MARK_PUBLISHED_IDS", (["id"],), {"notifications_pkey"}),
        ("REPLAY_MANY", (["user"], [200], [500]), {"notifications_user_seq", "user_counters_pkey"}),
    ],
)
async def test_batch_statement_uses_an_index(
    conn: asyncpg.Connection,
    busy_user: uuid.UUID,
    name: str,
    args: tuple[object, ...],
    expected: set[str],
) -> None:
    """The statements over a whole batch or many users (counter locks, dedupe lookup, counter
    bumps, the relay's drain and marks, the batch replay) find their rows through the fitting
    index."""
    some_id = await conn.fetchval(
        "SELECT id FROM notifications.notifications WHERE user_id = $1 LIMIT 1", busy_user
    )
    values = {"user": busy_user, "id": some_id}
    bound = [[values.get(v, v) for v in a] if isinstance(a, list) else a for a in args]
    assert await _indexes_used(conn, getattr(store, name), *bound) == expected

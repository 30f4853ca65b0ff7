"""Chat session ownership: a session belongs to the first user who uses it, durably.

The decision is a row in `chat.sessions`, so it holds across gateway restarts, Redis flushes and
any number of instances. Every query is scoped by the caller's user id.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from uuid import UUID, uuid4

import asyncpg

from shared.users import ensure_user, ensure_users


async def claim(pool: asyncpg.Pool, session_id: UUID, user_id: UUID) -> tuple[bool, bool]:
    """Attach `session_id` to `user_id` if nobody owns it yet.

    Returns `(owned, created)`: `owned` is False when another user owns the session. Safe under
    concurrency: two users racing for a new session id get exactly one owner.
    """
    async with pool.acquire() as conn, conn.transaction():
        await ensure_user(conn, user_id)
        inserted = await conn.fetchval(
            "INSERT INTO chat.sessions (id, user_id) VALUES ($1, $2) "
            "ON CONFLICT (id) DO NOTHING RETURNING true",
            session_id,
            user_id,
        )
        if inserted:
            return True, True
        # Read committed: this statement sees a row a concurrent claimer just committed.
        owner = await conn.fetchval("SELECT user_id FROM chat.sessions WHERE id = $1", session_id)
        return owner == user_id, False


async def claim_many(
    pool: asyncpg.Pool, claims: Sequence[tuple[UUID, UUID]]
) -> list[tuple[bool, bool]]:
    """`claim` for many `(session_id, user_id)` pairs in one transaction; `(owned, created)`
    for each, in order. Of several claims of one new session in the batch, the first creates
    it; another user's claim of it is then not owned, a repeat of the same claim owned but not
    created."""
    if not claims:
        return []
    async with pool.acquire() as conn, conn.transaction():
        await ensure_users(conn, {user_id for _, user_id in claims})
        rows = await conn.fetch(
            "INSERT INTO chat.sessions (id, user_id) "
            "SELECT s, u FROM unnest($1::uuid[], $2::uuid[]) AS c(s, u) "
            "ON CONFLICT (id) DO NOTHING RETURNING id, user_id",
            [session_id for session_id, _ in claims],
            [user_id for _, user_id in claims],
        )
        owners: dict[UUID, UUID] = {row["id"]: row["user_id"] for row in rows}
        created = set(owners)
        others = {session_id for session_id, _ in claims} - created
        if others:
            # Read committed: sees the rows concurrent claimers committed.
            owners |= await _owners(conn, others)
    results = []
    for session_id, user_id in claims:
        first = session_id in created and owners[session_id] == user_id
        if first:
            created.discard(session_id)
        results.append((owners.get(session_id) == user_id, first))
    return results


async def owners_of(pool: asyncpg.Pool, session_ids: Collection[UUID]) -> dict[UUID, UUID]:
    """The owners of those of `session_ids` somebody has used."""
    async with pool.acquire() as conn:
        return await _owners(conn, session_ids)


async def _owners(conn: asyncpg.Connection, session_ids: Collection[UUID]) -> dict[UUID, UUID]:
    rows = await conn.fetch(
        "SELECT id, user_id FROM chat.sessions WHERE id = ANY($1::uuid[])", list(session_ids)
    )
    return {row["id"]: row["user_id"] for row in rows}


async def owner_of(pool: asyncpg.Pool, session_id: UUID) -> UUID | None:
    """The session's owner, or None if nobody has used it yet."""
    async with pool.acquire() as conn:
        owner: UUID | None = await conn.fetchval(
            "SELECT user_id FROM chat.sessions WHERE id = $1", session_id
        )
    return owner


async def create(pool: asyncpg.Pool, user_id: UUID, title: str | None) -> asyncpg.Record:
    """A new session owned by `user_id`."""
    async with pool.acquire() as conn, conn.transaction():
        await ensure_user(conn, user_id)
        row: asyncpg.Record = await conn.fetchrow(
            "INSERT INTO chat.sessions (id, user_id, title) VALUES ($1, $2, $3) "
            "RETURNING id, title, created_at, updated_at",
            uuid4(),
            user_id,
            title,
        )
        return row


async def list_mine(
    pool: asyncpg.Pool, user_id: UUID, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    """The user's sessions, most recently used first, and how many there are in all."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, title, created_at, updated_at FROM chat.sessions WHERE user_id = $1 "
            "ORDER BY updated_at DESC, id DESC LIMIT $2 OFFSET $3",
            user_id,
            limit,
            offset,
        )
        total = await conn.fetchval(
            "SELECT count(*) FROM chat.sessions WHERE user_id = $1", user_id
        )
    return list(rows), int(total)


async def messages_of(
    pool: asyncpg.Pool, session_id: UUID, user_id: UUID, limit: int
) -> list[asyncpg.Record] | None:
    """The session's last `limit` messages, oldest first; None when the session is not the
    user's (missing and foreign look the same)."""
    async with pool.acquire() as conn:
        owned = await conn.fetchval(
            "SELECT true FROM chat.sessions WHERE id = $1 AND user_id = $2", session_id, user_id
        )
        if not owned:
            return None
        rows = await conn.fetch(
            "SELECT m.id, m.role, m.content, m.tool_calls, m.tokens_used, m.status, m.created_at "
            "FROM chat.messages m JOIN chat.sessions s ON s.id = m.session_id "
            "WHERE m.session_id = $1 AND s.user_id = $2 "
            "ORDER BY m.created_at DESC, m.id DESC LIMIT $3",
            session_id,
            user_id,
            limit,
        )
    return list(reversed(rows))

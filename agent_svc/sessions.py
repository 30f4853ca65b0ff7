"""Chat session ownership: a session belongs to the first user who uses it, durably.

The decision is a row in `chat.sessions`, so it holds across gateway restarts, Redis flushes and
any number of instances. Every query is scoped by the caller's user id.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from shared.users import ensure_user


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

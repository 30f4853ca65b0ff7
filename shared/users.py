"""The `users.users` anchor table: a row per user id, created on first use."""

from __future__ import annotations

from collections.abc import Collection
from uuid import UUID

import asyncpg


async def ensure_user(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Create the user's row if missing. Idempotent and safe under concurrency."""
    await conn.execute(
        "INSERT INTO users.users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", user_id
    )


async def ensure_users(conn: asyncpg.Connection, user_ids: Collection[UUID]) -> None:
    """`ensure_user` for many in one statement (in id order: concurrent batches lock the same
    rows in the same order, so they cannot deadlock)."""
    await conn.execute(
        "INSERT INTO users.users (id) SELECT u FROM unnest($1::uuid[]) AS u ORDER BY u "
        "ON CONFLICT (id) DO NOTHING",
        list(user_ids),
    )

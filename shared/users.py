"""The `users.users` anchor table: a row per user id, created on first use."""

from __future__ import annotations

from uuid import UUID

import asyncpg


async def ensure_user(conn: asyncpg.Connection, user_id: UUID) -> None:
    """Create the user's row if missing. Idempotent and safe under concurrency."""
    await conn.execute(
        "INSERT INTO users.users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", user_id
    )

"""PostgreSQL access: one asyncpg pool per process, created from `Settings`.

Connections carry JSON/JSONB codecs so `jsonb` columns read and write Python objects, and a
statement timeout so a stuck query fails instead of holding a pool slot forever.
"""

from __future__ import annotations

import json

import asyncpg

from shared.settings import Settings


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(settings: Settings, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A connected pool; raises `OSError`/`asyncpg.PostgresError` when the server is unreachable."""
    return await asyncpg.create_pool(
        settings.asyncpg_dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        server_settings={"statement_timeout": "30000", "application_name": "realtime-backend"},
    )


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> None:
    """Raise unless the database answers a trivial query within `timeout` seconds."""
    async with pool.acquire(timeout=timeout) as conn:
        await conn.fetchval("SELECT 1", timeout=timeout)

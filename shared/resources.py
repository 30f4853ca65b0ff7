"""What a service with a database starts with: migrations applied, a PostgreSQL pool, a Redis
client — as one async context manager, and the `/readyz` checks of those two.

Start-up waits (bounded, with backoff) for PostgreSQL to accept the migrations, so services
started together with their database come up in any order. Closing releases Redis first, then
the pool, whatever happened inside.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from starlette.requests import Request

from shared import db, migrate, redis_client
from shared.backoff import retry
from shared.http import Check
from shared.redis_client import RedisClient
from shared.settings import Settings

MIGRATION_TIMEOUT = 60.0  # seconds PostgreSQL has to come up at start-up


@asynccontextmanager
async def database_and_redis(
    settings: Settings, *, redis_max_connections: int | None = None
) -> AsyncIterator[tuple[asyncpg.Pool, RedisClient]]:
    """Apply the migrations, then open the pool and the Redis client; close both on exit."""
    await retry(
        lambda: migrate.apply_with_settings(settings), what="postgres", timeout=MIGRATION_TIMEOUT
    )
    pool = await db.create_pool(settings)
    try:
        client = redis_client.create_client(settings, max_connections=redis_max_connections)
        try:
            await redis_client.initialize(client)
            yield pool, client
        finally:
            await client.aclose()
    finally:
        await pool.close()


def readiness_checks(request: Request) -> dict[str, Check]:
    """`/readyz` of a service whose `app.state` holds `pool` and `redis`."""
    state = request.app.state
    return {
        "postgres": lambda: db.ping(state.pool),
        "redis": lambda: redis_client.ping(state.redis),
    }

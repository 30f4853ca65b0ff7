"""What a service with a database starts with: migrations applied, a PostgreSQL pool, a Redis
client — as one async context manager, and the `/readyz` checks of those two.

Start-up waits (bounded, with backoff) for PostgreSQL to accept the migrations, so services
started together with their database come up in any order. Closing runs the service's own
shutdown steps (`Resources.stopping`), then releases Redis, then the pool, whatever happened
inside — all under one `shared.shutdown.bounded` budget, so a step that hangs (a pool close
waiting for a connection a request still holds) is named in the log instead of holding the
process until it is killed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
from starlette.requests import Request

from shared import db, migrate, redis_client, shutdown
from shared.backoff import retry
from shared.http import Check
from shared.redis_client import RedisClient
from shared.settings import Settings

MIGRATION_TIMEOUT = 60.0  # seconds PostgreSQL has to come up at start-up


@dataclass
class Resources:
    """A service's pool and Redis client, and its own shutdown steps: appended by the service
    once what they stop is running, run first and in order when the context exits."""

    pool: asyncpg.Pool
    redis: RedisClient
    stopping: list[shutdown.Step] = field(default_factory=list)


@asynccontextmanager
async def database_and_redis(
    settings: Settings, *, redis_max_connections: int | None = None
) -> AsyncIterator[Resources]:
    """Apply the migrations, then open the pool and the Redis client; on exit, the service's
    steps, then close both (bounded in time: `shared.shutdown`)."""
    await retry(
        lambda: migrate.apply_with_settings(settings), what="postgres", timeout=MIGRATION_TIMEOUT
    )
    pool = await db.create_pool(settings)
    resources = None
    try:
        client = redis_client.create_client(settings, max_connections=redis_max_connections)
        resources = Resources(pool, client)
        await redis_client.initialize(client)
        yield resources
    finally:
        steps = [] if resources is None else [*resources.stopping, ("redis", client.aclose)]
        steps.append(("postgres pool", pool.close))
        await shutdown.bounded(steps, shutdown.SHUTDOWN_TIMEOUT)  # read now: tests shorten it


def readiness_checks(request: Request) -> dict[str, Check]:
    """`/readyz` of a service whose `app.state` holds `pool` and `redis`."""
    state = request.app.state
    return {
        "postgres": lambda: db.ping(state.pool),
        "redis": lambda: redis_client.ping(state.redis),
    }

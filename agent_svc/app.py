"""agent_svc's Starlette application: lifespan (pool, Redis, migrations, chat workers) and routes.

The chat workers (`AGENT_WORKERS` of them, none with 0) run inside this process's event loop and
stop with it; `python -m agent_svc.worker` runs them without the HTTP API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from agent_svc import api
from agent_svc.worker import WorkerPool, redis_pool_size
from shared import db
from shared.auth import TokenVerifier
from shared.http import EXCEPTION_HANDLERS, health_routes, metrics_route
from shared.quotas import HourlyCount
from shared.resources import database_and_redis, readiness_checks
from shared.settings import Settings


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = database_and_redis(settings, redis_max_connections=redis_pool_size(settings))
        async with started as resources:
            pool, redis = resources.pool, resources.redis
            app.state.settings, app.state.pool, app.state.redis = settings, pool, redis
            app.state.verifier = TokenVerifier(settings)
            app.state.new_sessions = HourlyCount(redis, settings.chat_max_new_sessions_per_hour)
            workers = WorkerPool(settings, pool, redis)
            await workers.start()
            resources.stopping += [
                ("chat workers", workers.stop),
                ("token verifier", app.state.verifier.aclose),
            ]
            yield

    routes = [*health_routes(readiness_checks), metrics_route(), *api.routes]
    # PostgreSQL unavailable: 503, never a 500 (shared.db owns the classification).
    handlers = dict(EXCEPTION_HANDLERS) | dict(db.exception_handlers())
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)

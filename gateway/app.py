"""The gateway's Starlette application: lifespan (Redis) and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request

from gateway import chat
from shared import redis_client
from shared.http import EXCEPTION_HANDLERS, Check, health_routes, metrics_route
from shared.settings import Settings


def _checks(request: Request) -> dict[str, Check]:
    state = request.app.state
    return {"redis": lambda: redis_client.ping(state.redis)}


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = redis_client.create_client(settings)
        app.state.settings, app.state.redis = settings, redis
        try:
            yield
        finally:
            await redis.aclose()

    routes = [*health_routes(_checks), metrics_route(), *chat.routes]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=dict(EXCEPTION_HANDLERS))

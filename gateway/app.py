"""The gateway's Starlette application: lifespan (Redis, upstream clients, connection manager)
and routes (WebSocket, REST facade, internal publish, chat, health, metrics)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute

from gateway import chat, internal, proxy, websocket
from gateway.manager import ConnectionManager
from shared import redis_client
from shared.auth import TokenVerifier
from shared.http import EXCEPTION_HANDLERS, Check, health_routes, metrics_route
from shared.settings import Settings


def _checks(request: Request) -> dict[str, Check]:
    state = request.app.state
    return {"redis": lambda: redis_client.ping(state.redis)}


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = redis_client.create_client(settings)
        timeout = httpx.Timeout(settings.upstream_timeout)
        upstreams = {
            "notifications": httpx.AsyncClient(
                base_url=settings.notifications_url, timeout=timeout
            ),
            "agent": httpx.AsyncClient(base_url=settings.agent_url, timeout=timeout),
        }
        state = app.state
        state.settings, state.redis, state.upstreams = settings, redis, upstreams
        state.verifier = TokenVerifier(settings)
        state.manager = ConnectionManager(
            settings, redis, upstreams["notifications"], upstreams["agent"], state
        )
        await state.manager.start()
        try:
            yield
        finally:
            await state.manager.stop()
            for client in upstreams.values():
                await client.aclose()
            await redis.aclose()

    routes: list[BaseRoute] = [
        *health_routes(_checks),
        metrics_route(),
        *websocket.routes,
        *internal.routes,
        *chat.routes,
        *proxy.proxy_routes(),
    ]
    allow_all = "*" in settings.cors_origins
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=["*"] if allow_all else list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["authorization", "content-type", "last-event-id"],
            allow_credentials=not allow_all,
        )
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=dict(EXCEPTION_HANDLERS),
    )

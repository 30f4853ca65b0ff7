"""notifications_svc's Starlette application: lifespan (migrations, pool, Redis, the outbox relay
and the ingest consumer) and routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette

from notifications_svc import api, internal_api, push_api
from notifications_svc.ingest import IngestConsumer
from notifications_svc.outbox import Outbox
from notifications_svc.push_policy import Presence, PushPlanner
from notifications_svc.push_sender import PushSender
from shared import db
from shared.auth import TokenVerifier
from shared.http import EXCEPTION_HANDLERS, health_routes, metrics_route
from shared.resources import database_and_redis, readiness_checks
from shared.settings import Settings


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with database_and_redis(settings) as resources:
            pool, redis = resources.pool, resources.redis
            # One immediate retry (a pooled connection gone stale across a Redis restart), no
            # more: redis-py's default of ten would hold a user's publish lock through a long
            # outage, and the outbox relay and the ingest consumer already retry with their own
            # backoff.
            redis.set_retry(Retry(NoBackoff(), 1))
            outbox = Outbox(pool, redis)
            sender = PushSender(pool, settings)
            planner = PushPlanner(settings, Presence(redis), sender.wake)
            app.state.settings, app.state.pool, app.state.redis = settings, pool, redis
            app.state.verifier = TokenVerifier(settings)
            app.state.outbox = outbox
            app.state.planner = planner
            ingest = IngestConsumer(pool, redis, outbox, settings.http_max_body_bytes, planner)
            tasks = [
                asyncio.create_task(outbox.run_relay(), name="outbox-relay"),
                asyncio.create_task(ingest.run(), name="ingest"),
                asyncio.create_task(sender.run(), name="push-sender"),
            ]

            async def stop_tasks() -> None:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

            resources.stopping += [
                ("outbox relay, ingest and push sender", stop_tasks),
                ("token verifier", app.state.verifier.aclose),
            ]
            yield

    routes = [
        *health_routes(readiness_checks),
        metrics_route(),
        *api.routes,
        *api.internal_routes,
        *push_api.routes,
        *internal_api.routes,
    ]
    # PostgreSQL unavailable: 503, never a 500 (shared.db owns the classification).
    handlers = dict(EXCEPTION_HANDLERS) | dict(db.exception_handlers())
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)

"""The gateway's Starlette application: lifespan (Redis, upstream clients, connection manager)
and routes (WebSocket, REST facade, internal publish, chat, health, metrics).

A WebSocket handshake to `WS /api/v1/ws/{session_id}` goes straight to its endpoint instead of
through the middleware stack and the router. Those layers do nothing for it (CORS and error pages
are HTTP concerns; the endpoint answers every failure itself with a close code), but each one stays
on the connection's task for the connection's whole life: about ten coroutine frames, their
closures and a second `WebSocket` object per connection, which at 10k connections is tens of MB
and hundreds of thousands of objects for the garbage collector to walk.

Once started, the process moves everything allocated so far (modules, clients, settings: about
60k objects that live as long as it does) out of the cyclic garbage collector's sight with
`gc.freeze()`, and collects the youngest generation after `GC_GEN0_THRESHOLD` allocations instead
of 700: most of what a delivered frame allocates is freed by reference counting before a collection
would have looked at it, so collections find less to walk and promote less. Not more: a young
collection walks everything allocated since the last one that is still alive (while clients
connect, the newest connections' objects, about 1.5 objects per counted allocation) and every
object each of those refers to; at 10k connections those referents are spread over a heap far
larger than the CPU's caches, about 0.5-1 µs per young object, so 20,000 made each young
collection 15-36 ms of CPU; at 2,000 the longest took 3-14 ms (5,000 left some at 12-19 ms).

Its shutdown runs under `shared.shutdown.bounded`: a step that never returns is named in the log
instead of holding the process until SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway import apidocs, chat, console, internal_api, metrics, proxy, topic_api, websocket
from gateway.chat import ChatQuotas
from gateway.heap import CollectionTimer
from gateway.looplag import LoopLagMonitor, RunQueueClock
from gateway.manager import ConnectionManager
from gateway.replies import ReplyReader
from gateway.state import GatewayState
from gateway.upstream import Upstream
from shared import log, redis_client, shutdown
from shared.auth import TokenVerifier
from shared.http import EXCEPTION_HANDLERS, Check, health_routes, metrics_route
from shared.quotas import TokenBucket
from shared.settings import Settings

GC_GEN0_THRESHOLD = 2_000
# uvicorn logs every WebSocket handshake at INFO, one JSON line per connect (the access log of
# WebSockets); unless WS_LOG_HANDSHAKES or DEBUG asks for all of them, one in this many is written
# and `gateway_ws_handshakes_total` counts them.
HANDSHAKE_LOG_SAMPLE = 1000
HANDSHAKE_LINE = '%s - "WebSocket %s"'


def _checks(request: Request) -> dict[str, Check]:
    state = request.app.state
    return {"redis": lambda: redis_client.ping(state.redis)}


class GatewayApp(Starlette):
    """Starlette, with the WebSocket connection route dispatched before the middleware stack."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            match, child_scope = websocket.route.matches(scope)
            if match is Match.FULL:
                scope["app"] = self
                scope.update(child_scope)
                await websocket.websocket_endpoint(WebSocket(scope, receive, send))
                return
        await super().__call__(scope, receive, send)


# On Redis Cluster every SSE chat stream waits in `XREAD BLOCK` on a pooled connection of its own
# for as long as its answer runs (on one Redis they share a lane's: gateway.replies), so the pool
# must outgrow the streams an instance serves at once: with redis-py's default of 100, the 101st
# concurrent stream (and any WebSocket connect at that moment) failed with MaxConnectionsError,
# an HTTP 500 (`make bench`, 200 streams: 100 answered 500).
REDIS_POOL_SIZE = 2048


def create_app(settings: Settings) -> Starlette:
    every_line = settings.ws_log_handshakes or settings.log_level == "DEBUG"
    log.sample("uvicorn.error", HANDSHAKE_LINE, 1 if every_line else HANDSHAKE_LOG_SAMPLE)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = redis_client.create_client(settings, max_connections=REDIS_POOL_SIZE)
        await redis_client.initialize(redis)
        # A multi-key XREAD must stay in one hash slot: on a cluster each chat reader reads alone.
        replies = None if redis_client.is_cluster(redis) else ReplyReader(redis)
        timeout = settings.upstream_timeout
        upstreams = {
            "notifications": Upstream(settings.notifications_url, timeout=timeout),
            "agent": Upstream(settings.agent_url, timeout=timeout),
        }
        shared = GatewayState(
            settings=settings,
            redis=redis,
            upstreams=upstreams,
            verifier=TokenVerifier(settings),
            chat_quotas=ChatQuotas.of(redis, settings),
            user_requests=TokenBucket(
                redis, settings.http_user_rate_limit, settings.http_user_rate_burst
            ),
            replies=replies,
        )
        state = app.state
        state.settings, state.redis, state.upstreams = settings, redis, upstreams
        state.verifier, state.chat_quotas = shared.verifier, shared.chat_quotas
        state.user_requests, state.replies = shared.user_requests, replies
        state.manager = ConnectionManager(shared)
        state.topics = state.manager.topics.topics
        await state.manager.start()
        ingest = asyncio.create_task(
            topic_api.consume_ingest(redis, state.topics, state.manager.instance_id)
        )
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        collections = CollectionTimer(metrics.observe_gc_pause)
        collections.install()
        run_queue = RunQueueClock.open()  # opened here: it reads the loop thread's own figures
        lag = LoopLagMonitor(
            asyncio.get_running_loop(),
            metrics.LOOP_LAG.observe,
            stalled=metrics.observe_loop_stall,
            wait_clock=run_queue,
        )
        lag.start()
        try:
            yield
        finally:
            lag.stop()
            if run_queue is not None:
                run_queue.close()
            collections.remove()
            ingest.cancel()

            async def stop_ingest() -> None:
                with contextlib.suppress(asyncio.CancelledError):
                    await ingest

            async def stop_replies() -> None:
                if replies is not None:
                    await replies.stop()

            async def close_upstreams() -> None:
                for client in upstreams.values():
                    await client.aclose()

            await shutdown.bounded(
                [
                    ("topic ingest", stop_ingest),
                    ("connections", state.manager.stop),
                    ("reply reader", stop_replies),
                    ("token verifier", state.verifier.aclose),
                    ("upstreams", close_upstreams),
                    ("redis", redis.aclose),
                ]
            )

    routes: list[BaseRoute] = [
        *health_routes(_checks),
        metrics_route(),
        *websocket.routes,
        *internal_api.routes,
        *topic_api.routes,
        *chat.routes,
        *console.routes,
        *apidocs.routes,
        *proxy.proxy_routes(),
    ]
    allow_all = "*" in settings.cors_origins
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=["*"] if allow_all else list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["authorization", "content-type", "last-event-id", "x-topic-token"],
            allow_credentials=not allow_all,
        )
    ]
    return GatewayApp(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=dict(EXCEPTION_HANDLERS),
    )

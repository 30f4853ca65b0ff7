"""Redis access: client construction with the timeouts and health checks every service needs.

Commands fail fast (socket timeouts) instead of hanging when Redis is gone, so callers can fall
back (the outbox, readiness checks) rather than stall their event loop's work.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from shared.settings import Settings


def create_client(
    settings: Settings, *, decode_responses: bool = False, max_connections: int | None = None
) -> redis.Redis:
    """A pooled client. Responses are bytes unless `decode_responses`; no I/O happens here.

    The pool holds at most `max_connections` (None: redis-py's default, 100); a command issued
    while every pooled connection is busy raises `redis.exceptions.MaxConnectionsError`."""
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=decode_responses,
        max_connections=max_connections,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry_on_timeout=False,
    )


def create_pubsub_client(settings: Settings) -> redis.Redis:
    """A client for long-lived subscriptions: no read timeout (silence is normal on pub/sub)."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=None,
        socket_keepalive=True,
        health_check_interval=10,
    )


async def ping(client: redis.Redis, timeout: float = 2.0) -> None:
    """Raise unless Redis answers PING."""
    async with asyncio.timeout(timeout):
        await client.ping()

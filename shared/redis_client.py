"""Redis access: client construction with the timeouts and health checks every service needs.

Commands fail fast (socket timeouts) instead of hanging when Redis is gone, so callers can fall
back (the outbox, readiness checks) rather than stall their event loop's work. With
`REDIS_CLUSTER` the client is a `RedisCluster` (`shared.cluster`): callers type it `RedisClient`,
use only single-slot commands (or non-transactional pipelines, which redis-py splits per node),
and ask `is_cluster` where a multi-key step must be split.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TypeAlias, TypeGuard

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from shared import cluster, redis_packing
from shared.backoff import retry
from shared.settings import Settings

RedisClient: TypeAlias = redis.Redis | RedisCluster


def is_cluster(client: RedisClient) -> TypeGuard[RedisCluster]:
    """Whether `client` talks to a Redis Cluster (keys of one command must share a slot)."""
    return isinstance(client, RedisCluster)


def create_client(
    settings: Settings, *, decode_responses: bool = False, max_connections: int | None = None
) -> RedisClient:
    """A pooled client; a `RedisCluster` when `REDIS_CLUSTER` is set. Responses are bytes unless
    `decode_responses`; no I/O happens here.

    The pool holds at most `max_connections` (None: redis-py's default, 100; per node in a
    cluster); a command issued while every pooled connection is busy raises
    `redis.exceptions.MaxConnectionsError`."""
    if settings.redis_cluster:
        return cluster.create_client(
            settings.redis_url, decode_responses=decode_responses, max_connections=max_connections
        )
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=decode_responses,
        max_connections=max_connections,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry_on_timeout=False,
        **cluster.lean_handshake(),
        **redis_packing.client_options(settings.redis_url),
    )


async def initialize(client: RedisClient, timeout: float = 60.0) -> None:
    """Learn a cluster's topology before first use, waiting up to `timeout` seconds for the
    cluster to answer (then re-raises); a no-op for one Redis, which connects lazily.

    Call it once, before any concurrent use: redis-py's asyncio `RedisCluster` can break a
    connection when many first commands race its lazy initialization."""
    if is_cluster(client):
        await retry(
            client.initialize, what="redis cluster", timeout=timeout, retry_on=(RedisError, OSError)
        )


async def ping(client: RedisClient, timeout: float = 2.0) -> None:
    """Raise unless Redis answers PING (in a cluster: every primary)."""
    async with asyncio.timeout(timeout):
        await client.ping()


async def load_scripts(client: RedisClient, scripts: Iterable[AsyncScript]) -> None:
    """Load `scripts` (from `client.register_script`) into Redis now — on a cluster into every
    primary — so that their first calls find them. Raises the Redis error that stopped it.

    redis-py runs a registered script with EVALSHA and loads it only when Redis answers
    NOSCRIPT: when many tasks make a script's first calls at once (a burst of detaches after a
    mass disconnect), each of them fails first, and each `NoScriptError` with its traceback is
    cyclic garbage for the collector. A Redis that lost its scripts since (a restart) is still
    served: redis-py loads them again on NOSCRIPT."""
    for script in scripts:
        await client.script_load(script.script)

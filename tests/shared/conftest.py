"""Fixtures of the `shared` tests: an asyncio client of the session's real Redis, and one of a
private Redis or of the local cluster, in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from shared import cluster
from shared.infra import EmbeddedRedis
from shared.local_cluster import LocalRedisCluster
from shared.redis_client import RedisClient
from shared.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[redis.Redis]:
    """A client of the test session's Redis, closed after the test."""
    connection = redis.Redis.from_url(settings.redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture(params=["single", "cluster"])
async def any_client(
    request: pytest.FixtureRequest, private_redis: EmbeddedRedis
) -> AsyncIterator[RedisClient]:
    """A byte-reply client for one Redis server, then for the local cluster."""
    made: RedisClient
    if request.param == "single":
        made = redis.Redis.from_url(private_redis.url)
    else:
        nodes: LocalRedisCluster = request.getfixturevalue("local_cluster")
        made = cluster.create_client(nodes.url)
        await made.initialize()
    try:
        yield made
    finally:
        await made.aclose()

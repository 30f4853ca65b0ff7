"""`shared.redis_client`: a new pooled connection opens with HELLO alone, no command the server
rejects (Redis before 7.2 has neither `CLIENT SETINFO` nor `CLIENT MAINT_NOTIFICATIONS`)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from shared import redis_client
from shared.infra import EmbeddedRedis
from shared.settings import Settings


async def _errors(client: redis_client.RedisClient) -> dict[str, object]:
    stats: dict[str, object] = await client.info("errorstats")
    return stats


async def test_new_connections_send_nothing_the_server_rejects(
    settings: Settings, private_redis: EmbeddedRedis
) -> None:
    """Twenty connections opened at once (a burst, as a mass disconnect's detaches open them)
    leave the server's error statistics empty."""
    client = redis_client.create_client(replace(settings, redis_url=private_redis.url))
    try:
        await asyncio.gather(*(client.blpop(["no-such-list"], timeout=0.05) for _ in range(20)))
        assert (await client.info("clients"))["connected_clients"] >= 20
        assert await _errors(client) == {}
    finally:
        await client.aclose()

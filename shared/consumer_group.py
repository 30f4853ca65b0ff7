"""Redis stream consumer groups: the group's creation and its repair, and the clean-up of
consumers left behind, shared by the agent's chat workers, the notifications ingest and the
gateways' topic ingest.

`ensure_group` is idempotent (an existing group, BUSYGROUP, is success). A read that fails with
NOGROUP means the stream or group vanished (Redis restarted without its data, FLUSHALL, a shard
replaced): `is_nogroup` says so, and the caller calls `ensure_group` again rather than retry a
command that cannot succeed. Consumer names carry the host and process id, so every restart adds
one; `prune_consumers` removes those idle for long and holding no pending entry (a live consumer
reclaims what a dead one held first), so the group's consumer list does not grow without bound.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis

from shared.redis_client import RedisClient

CONSUMER_MAX_IDLE_MS = 3600 * 1000  # an hour without reading: the process is gone


async def ensure_group(client: RedisClient, stream: str, group: str) -> None:
    """Create the group, reading the stream from its start, and the stream if missing.
    Idempotent. Raises `redis.RedisError` for anything but an existing group."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_nogroup(exc: redis.ResponseError) -> bool:
    """Whether Redis refused a group command because the stream or the group does not exist."""
    return "NOGROUP" in str(exc)


async def prune_consumers(
    client: RedisClient, stream: str, group: str, max_idle_ms: int = CONSUMER_MAX_IDLE_MS
) -> list[str]:
    """Delete the group's consumers idle for more than `max_idle_ms` with no pending entry;
    returns their names. Safe while consumers run: a consumer deleted and then reading again is
    recreated by Redis."""
    # redis-py types the reply loosely: a list of dicts with str keys.
    consumers: Any = await client.xinfo_consumers(stream, group)
    removed = []
    for consumer in consumers:
        if consumer["pending"] == 0 and consumer["idle"] > max_idle_ms:
            name = consumer["name"]
            await client.xgroup_delconsumer(stream, group, name)
            removed.append(name.decode() if isinstance(name, bytes) else name)
    return removed

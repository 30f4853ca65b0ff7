"""Publishing frames to connected clients, for any service: to a user, a session, or everyone.

A frame is encoded once by the caller (or here) and wrapped in the pub/sub envelope of
`shared.wire`; every gateway holding a connection of the target forwards the same bytes. Publishing
is fire-and-forget (Redis pub/sub): a caller that must not lose a frame keeps its own durable copy
and replays it — as notifications do with their per-user `seq` and outbox.

On a Redis Cluster (`REDIS_CLUSTER`, which makes the client a `RedisCluster`) every frame goes out
with SPUBLISH, routed to the shard owning the channel's slot, which is where the gateways'
SSUBSCRIBEs are: a classic PUBLISH would never reach a shard subscriber.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from uuid import UUID

import msgspec

from shared import keys
from shared.redis_client import RedisClient, is_cluster
from shared.wire import EnvelopeMeta, encode, encode_envelope


def _bytes(frame: bytes | msgspec.Struct | dict[str, object]) -> bytes:
    return frame if isinstance(frame, bytes) else encode(frame)


async def _publish(client: RedisClient, channel: str, payload: bytes) -> int:
    if is_cluster(client):
        return int(await client.spublish(channel, payload))
    return int(await client.publish(channel, payload))


async def to_user(
    client: RedisClient,
    user_id: UUID | str,
    frame: bytes | msgspec.Struct | dict[str, object],
    *,
    seq: int | None = None,
) -> int:
    """Publish to every connection of `user_id`; returns how many gateways received it (in a
    cluster: how many of the owning shard's subscribers)."""
    meta = EnvelopeMeta(seq=seq, user_id=str(user_id), ts=time.time())
    return await _publish(client, keys.user_channel(user_id), encode_envelope(_bytes(frame), meta))


# One frame of `to_users`: (user id, the frame's bytes, its seq or None).
UserFrame = tuple[UUID | str, bytes, int | None]


async def to_users(client: RedisClient, frames: Sequence[UserFrame]) -> list[int]:
    """`to_user` for many frames in one round trip (a pipeline; on a cluster one per shard),
    published in the given order, so each channel gets its frames in that order. Returns each
    frame's receiver count. Raises the Redis error that stopped it; which frames went out before
    is then unknown, so a caller that must not lose one publishes them all again."""
    if not frames:
        return []
    command = "SPUBLISH" if is_cluster(client) else "PUBLISH"
    async with client.pipeline(transaction=False) as pipe:
        for user_id, frame, seq in frames:
            meta = EnvelopeMeta(seq=seq, user_id=str(user_id), ts=time.time())
            pipe.execute_command(command, keys.user_channel(user_id), encode_envelope(frame, meta))
        return [int(count) for count in await pipe.execute()]


async def to_session(
    client: RedisClient, session_id: UUID | str, frame: bytes | msgspec.Struct | dict[str, object]
) -> int:
    """Publish to every connection attached to `session_id`."""
    meta = EnvelopeMeta(ts=time.time())
    return await _publish(
        client, keys.session_channel(session_id), encode_envelope(_bytes(frame), meta)
    )


async def to_everyone(
    client: RedisClient,
    frame: bytes | msgspec.Struct | dict[str, object],
    *,
    exclude_session: UUID | str | None = None,
) -> int:
    """Publish to every connection on every gateway, except those of `exclude_session`."""
    meta = EnvelopeMeta(
        exclude_session=str(exclude_session) if exclude_session else None, ts=time.time()
    )
    return await _publish(client, keys.BROADCAST_CHANNEL, encode_envelope(_bytes(frame), meta))

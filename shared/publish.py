"""Publishing frames to connected clients, for any service: to a user, a session, or everyone.

A frame is encoded once by the caller (or here) and wrapped in the pub/sub envelope of
`shared.wire`; every gateway holding a connection of the target forwards the same bytes. Publishing
is fire-and-forget (Redis pub/sub): a caller that must not lose a frame keeps its own durable copy
and replays it — as notifications do with their per-user `seq` and outbox.
"""

from __future__ import annotations

import time
from uuid import UUID

import msgspec
import redis.asyncio as redis

from shared import keys
from shared.wire import EnvelopeMeta, encode, encode_envelope


def _bytes(frame: bytes | msgspec.Struct | dict[str, object]) -> bytes:
    return frame if isinstance(frame, bytes) else encode(frame)


async def to_user(
    client: redis.Redis,
    user_id: UUID | str,
    frame: bytes | msgspec.Struct | dict[str, object],
    *,
    seq: int | None = None,
) -> int:
    """Publish to every connection of `user_id`; returns how many gateways received it."""
    meta = EnvelopeMeta(seq=seq, user_id=str(user_id), ts=time.time())
    return int(
        await client.publish(keys.user_channel(user_id), encode_envelope(_bytes(frame), meta))
    )


async def to_session(
    client: redis.Redis, session_id: UUID | str, frame: bytes | msgspec.Struct | dict[str, object]
) -> int:
    """Publish to every connection attached to `session_id`."""
    meta = EnvelopeMeta(ts=time.time())
    return int(
        await client.publish(keys.session_channel(session_id), encode_envelope(_bytes(frame), meta))
    )


async def to_everyone(
    client: redis.Redis,
    frame: bytes | msgspec.Struct | dict[str, object],
    *,
    exclude_session: UUID | str | None = None,
) -> int:
    """Publish to every connection on every gateway, except those of `exclude_session`."""
    meta = EnvelopeMeta(
        exclude_session=str(exclude_session) if exclude_session else None, ts=time.time()
    )
    return int(await client.publish(keys.BROADCAST_CHANNEL, encode_envelope(_bytes(frame), meta)))

"""Publishing frames to connected clients, for any service: to a user, a session, or everyone.

A frame is encoded once by the caller (or here) and wrapped in the pub/sub envelope of
`shared.wire`; every gateway holding a connection of the target forwards the same bytes. Publishing
is fire-and-forget (Redis pub/sub): a caller that must not lose a frame keeps its own durable copy
and replays it — as notifications do with their per-user `seq` and outbox.

A notification (`notification()`) also raises the user's latest seq in Redis (`keys.user_seq`) in
the same script as its publish, so a gateway can take a connection's seq baseline, or see that a
resuming client missed nothing, with one GET instead of asking the notifications service.

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

SEQ_TTL_MS = 30 * 86400 * 1000  # a user's latest seq is forgotten after 30 days without news

# KEYS[1] the user's seq key; ARGV: payload, seq, ttl ms, publish command, channel. Atomic: no
# reader ever sees the seq of a frame not yet published, nor a frame published without its seq.
_NOTIFICATION = """
local known = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[2]) > known then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return redis.call(ARGV[4], ARGV[5], ARGV[1])
"""

# KEYS: users' seq keys; ARGV[1] ttl ms, then one seq per key: each key raised to its seq.
_REMEMBER = """
for i = 1, #KEYS do
  if tonumber(ARGV[i + 1]) > tonumber(redis.call('GET', KEYS[i]) or '-1') then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return #KEYS
"""


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
    published in the given order, so each channel gets its frames in that order. A frame with a
    seq is a notification: it raises the user's latest seq as `notification()` does, in the same
    script. Returns each frame's receiver count. Raises the Redis error that stopped it; which
    frames went out before is then unknown, so a caller that must not lose one publishes them
    all again."""
    if not frames:
        return []
    command = "SPUBLISH" if is_cluster(client) else "PUBLISH"
    async with client.pipeline(transaction=False) as pipe:
        for user_id, frame, seq in frames:
            meta = EnvelopeMeta(seq=seq, user_id=str(user_id), ts=time.time())
            channel, payload = keys.user_channel(user_id), encode_envelope(frame, meta)
            if seq is None:
                pipe.execute_command(command, channel, payload)
            else:
                key = keys.user_seq(user_id)
                pipe.eval(_NOTIFICATION, 1, key, payload, seq, SEQ_TTL_MS, command, channel)
        return [int(count) for count in await pipe.execute()]


async def notification(client: RedisClient, user_id: UUID | str, frame: bytes, seq: int) -> int:
    """Publish a committed notification to `user_id` (as `to_user`) and, in the same script,
    raise the user's latest seq to `seq` (`keys.user_seq`; never lowered, so a frame published
    again after a lost marking changes nothing). Callers publish a user's notifications in seq
    order (the outbox's lock); returns how many gateways received it."""
    return (await to_users(client, [(user_id, frame, seq)]))[0]


async def remember_seq(client: RedisClient, user_id: UUID | str, seq: int) -> None:
    """Raise the user's latest seq in Redis to `seq`, the notifications service's answer for the
    user's highest committed seq (never lowers it)."""
    await remember_seqs(client, [(user_id, seq)])


async def remember_seqs(client: RedisClient, seqs: Sequence[tuple[UUID | str, int]]) -> None:
    """`remember_seq` for several users in one round trip (one per user on a cluster, whose
    keys are in slots of their own)."""
    if is_cluster(client):
        for user_id, seq in seqs:
            await client.eval(_REMEMBER, 1, keys.user_seq(user_id), SEQ_TTL_MS, seq)
        return
    names = [keys.user_seq(user_id) for user_id, _ in seqs]
    await client.eval(_REMEMBER, len(names), *names, SEQ_TTL_MS, *(seq for _, seq in seqs))


async def latest_seq(client: RedisClient, user_id: UUID | str) -> int | None:
    """The user's latest seq as far as Redis knows (`keys.user_seq`), None if it does not."""
    return (await latest_seqs(client, [user_id]))[0]


async def latest_seqs(client: RedisClient, user_ids: Sequence[UUID | str]) -> list[int | None]:
    """`latest_seq` of several users in one round trip (one per node of a cluster)."""
    names = [keys.user_seq(user_id) for user_id in user_ids]
    if is_cluster(client):
        values = await client.mget_nonatomic(names)
    else:
        values = await client.mget(names)
    return [None if value is None else int(value) for value in values]


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

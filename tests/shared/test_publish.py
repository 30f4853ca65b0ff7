"""`shared.publish` against a real Redis (and a real Redis Cluster): each target's channel, the
envelope's routing metadata, the frame's bytes as given or encoded once, and the receiver count."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as redis
from redis.asyncio.client import PubSub

from shared import cluster, keys, publish
from shared.wire import EnvelopeMeta, decode_envelope
from tests.support.redis_cluster import LocalRedisCluster


async def _next(pubsub: PubSub) -> tuple[str, EnvelopeMeta, bytes]:
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                meta, frame = decode_envelope(message["data"])
                return message["channel"].decode(), meta, frame


async def test_to_user_carries_seq_and_user(client: redis.Redis) -> None:
    """A user's frame goes to the user's channel with its seq, the user and a publish time; the
    bytes given are published as they are; the count is the subscribers that got it."""
    user = uuid.uuid4()
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(keys.user_channel(user))
        assert await publish.to_user(client, user, b'{"type":"x"}', seq=7) == 1
        channel, meta, frame = await _next(pubsub)
    assert (channel, frame) == (keys.user_channel(user), b'{"type":"x"}')
    assert (meta.seq, meta.user_id) == (7, str(user)) and meta.ts is not None


async def test_to_session_encodes_a_dict_once(client: redis.Redis) -> None:
    """A session's frame given as a dict is encoded to compact JSON and carries no user or seq."""
    session = uuid.uuid4()
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(keys.session_channel(session))
        assert await publish.to_session(client, session, {"type": "y", "n": 1}) == 1
        channel, meta, frame = await _next(pubsub)
    assert (channel, frame) == (keys.session_channel(session), b'{"type":"y","n":1}')
    assert (meta.seq, meta.user_id, meta.exclude_session) == (None, None, None)


async def test_to_everyone_names_the_excluded_session(client: redis.Redis) -> None:
    """A broadcast goes to the broadcast channel and names the session to skip, if any."""
    session = uuid.uuid4()
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(keys.BROADCAST_CHANNEL)
        await publish.to_everyone(client, b"{}", exclude_session=session)
        await publish.to_everyone(client, b"[]")
        first, second = await _next(pubsub), await _next(pubsub)
    assert first[0] == keys.BROADCAST_CHANNEL and first[1].exclude_session == str(session)
    assert second[1].exclude_session is None and second[2] == b"[]"


async def test_nobody_listening_counts_zero(client: redis.Redis) -> None:
    """Publishing to a channel without subscribers is not an error; it reaches nobody."""
    assert await publish.to_user(client, uuid.uuid4(), b"{}") == 0


async def test_cluster_publishes_on_the_shard_channel(local_cluster: LocalRedisCluster) -> None:
    """On a Redis Cluster the frame goes out with SPUBLISH, which a sharded subscriber of the
    channel receives (a classic PUBLISH would not reach it)."""
    client = cluster.create_client(local_cluster.url)
    user = uuid.uuid4()
    received: asyncio.Queue[bytes] = asyncio.Queue()
    try:
        async with cluster.ShardedSubscriber(
            client, on_message=lambda channel, payload: received.put_nowait(payload)
        ) as subscriber:
            await subscriber.subscribe(keys.user_channel(user))
            assert await publish.to_user(client, user, b'{"type":"z"}', seq=1) == 1
            async with asyncio.timeout(5):
                meta, frame = decode_envelope(await received.get())
    finally:
        await client.aclose()
    assert (meta.seq, frame) == (1, b'{"type":"z"}')


async def test_to_users_publishes_many_frames_in_order(client: redis.Redis) -> None:
    """Many users' frames in one call: each reaches its user's channel with its seq, in the
    order given, and the counts say who received each."""
    first, second = uuid.uuid4(), uuid.uuid4()
    frames: list[publish.UserFrame] = [
        (first, b'{"n":1}', 1),
        (second, b'{"n":2}', 1),
        (first, b'{"n":3}', 2),
    ]
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(keys.user_channel(first))
        assert await publish.to_users(client, frames) == [1, 0, 1]
        received = [await _next(pubsub), await _next(pubsub)]
    assert [(meta.seq, meta.user_id, frame) for _, meta, frame in received] == [
        (1, str(first), b'{"n":1}'),
        (2, str(first), b'{"n":3}'),
    ]
    assert await publish.to_users(client, []) == []


async def test_cluster_to_users_publishes_on_the_shard_channels(
    local_cluster: LocalRedisCluster,
) -> None:
    """On a Redis Cluster the frames of many users, in slots of different shards, reach their
    sharded subscribers, each channel's in the order given."""
    client = cluster.create_client(local_cluster.url)
    users = [uuid.uuid4() for _ in range(8)]
    received: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
    frames: list[publish.UserFrame] = [
        (user, f'{{"n":{seq}}}'.encode(), seq) for seq in (1, 2) for user in users
    ]
    try:
        async with cluster.ShardedSubscriber(
            client, on_message=lambda channel, payload: received.put_nowait((channel, payload))
        ) as subscriber:
            for user in users:
                await subscriber.subscribe(keys.user_channel(user))
            assert await publish.to_users(client, frames) == [1] * len(frames)
            async with asyncio.timeout(5):
                got = [await received.get() for _ in frames]
    finally:
        await client.aclose()
    for user in users:
        channel = keys.user_channel(user).encode()
        seqs = [decode_envelope(payload)[0].seq for c, payload in got if c == channel]
        assert seqs == [1, 2]

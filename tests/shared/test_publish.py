"""`shared.publish` against a real Redis (and a real Redis Cluster): each target's channel, the
envelope's routing metadata, the frame's bytes as given or encoded once, and the receiver count."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as redis
from redis.asyncio.client import PubSub

from shared import cluster, keys, publish
from shared.local_cluster import LocalRedisCluster
from shared.wire import EnvelopeMeta, decode_envelope


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
    """On a Redis Cluster a frame goes out with SPUBLISH, which a sharded subscriber of the
    channel receives (a classic PUBLISH would not reach it); a notification's script raises the
    user's seq key, which lives in the channel's slot, and SPUBLISHes the same way."""
    client = cluster.create_client(local_cluster.url)
    user = uuid.uuid4()
    received: asyncio.Queue[bytes] = asyncio.Queue()
    try:
        async with cluster.ShardedSubscriber(
            client, on_message=lambda channel, payload: received.put_nowait(payload)
        ) as subscriber:
            await subscriber.subscribe(keys.user_channel(user))
            assert await publish.to_user(client, user, b'{"type":"z"}', seq=1) == 1
            assert await publish.notification(client, user, b'{"type":"n"}', seq=5) == 1
            async with asyncio.timeout(5):
                got = [decode_envelope(await received.get()) for _ in range(2)]
        assert await publish.latest_seq(client, user) == 5
    finally:
        await client.aclose()
    assert [(meta.seq, frame) for meta, frame in got] == [
        (1, b'{"type":"z"}'),
        (5, b'{"type":"n"}'),
    ]


async def test_to_users_publishes_many_frames_in_order(client: redis.Redis) -> None:
    """Many users' frames in one call: each reaches its user's channel with its seq, in the
    order given, the counts say who received each, and each user's latest seq in Redis is
    raised to the highest of theirs (as `notification` does), a frame without seq leaving it."""
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
    assert await publish.latest_seqs(client, [first, second]) == [2, 1]
    assert await publish.to_users(client, [(second, b'{"n":4}', None)]) == [0]
    assert await publish.latest_seqs(client, [first, second]) == [2, 1]
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
            latest = await publish.latest_seqs(client, users)
    finally:
        await client.aclose()
    for user in users:
        channel = keys.user_channel(user).encode()
        seqs = [decode_envelope(payload)[0].seq for c, payload in got if c == channel]
        assert seqs == [1, 2]
    assert latest == [2] * len(users)


async def test_notification_publishes_and_raises_the_users_seq(client: redis.Redis) -> None:
    """A notification reaches the user's channel with its seq and raises the user's latest seq;
    a lower seq (published again after a lost marking) never lowers it, and neither does the
    notifications service's answer remembered by a gateway."""
    user = uuid.uuid4()
    assert await publish.latest_seq(client, user) is None
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(keys.user_channel(user))
        assert await publish.notification(client, user, b'{"type":"n"}', seq=4) == 1
        channel, meta, frame = await _next(pubsub)
    assert (channel, meta.seq, meta.user_id, frame) == (
        keys.user_channel(user),
        4,
        str(user),
        b'{"type":"n"}',
    )
    assert await publish.latest_seq(client, user) == 4
    await publish.notification(client, user, b'{"type":"n"}', seq=3)
    await publish.remember_seq(client, user, 2)
    assert await publish.latest_seq(client, user) == 4
    await publish.remember_seq(client, user, 9)
    assert await publish.latest_seq(client, user) == 9
    assert 0 < await client.pttl(keys.user_seq(user)) <= publish.SEQ_TTL_MS


async def test_latest_seqs_of_several_users_at_once(client: redis.Redis) -> None:
    """One read answers each user's latest seq, None for a user Redis knows nothing of."""
    known, unknown = uuid.uuid4(), uuid.uuid4()
    await publish.remember_seq(client, known, 12)
    assert await publish.latest_seqs(client, [known, unknown, known]) == [12, None, 12]


async def test_remember_seqs_raises_several_users_at_once(client: redis.Redis) -> None:
    """One call raises each user's latest seq, and lowers none."""
    first, second = uuid.uuid4(), uuid.uuid4()
    await publish.remember_seq(client, first, 8)
    await publish.remember_seqs(client, [(first, 3), (second, 5)])
    assert await publish.latest_seqs(client, [first, second]) == [8, 5]

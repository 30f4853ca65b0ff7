"""shared.cluster against a real three-primary Redis Cluster (Debian's redis-server 7).

SPUBLISH reaches a sharded subscriber on whichever shard owns the channel's slot as soon as
`subscribe` returns, channels of one subscriber spread over every shard, unsubscribing stops
delivery, and a subscription survives its slot moving to another primary and its primary
restarting — each time the owner is told, so it can replay what was missed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shared import cluster, keys
from shared.local_cluster import LocalRedisCluster


@pytest.fixture
async def client(local_cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    connection = cluster.create_client(local_cluster.url)
    await connection.initialize()
    try:
        yield connection
    finally:
        await connection.aclose()


class _Inbox:
    """The subscriber's `on_message`: keeps what arrives, in order, for a test to wait on."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def __call__(self, channel: bytes, payload: bytes) -> None:
        self.queue.put_nowait((channel.decode(), payload))


async def _receive(inbox: _Inbox, count: int) -> list[tuple[str, bytes]]:
    async with asyncio.timeout(5):
        return [await inbox.queue.get() for _ in range(count)]


class _Resubscribed:
    """Records `on_resubscribed` calls and lets a test wait for one."""

    def __init__(self) -> None:
        self.calls: list[frozenset[str]] = []
        self.event = asyncio.Event()

    def __call__(self, channels: frozenset[str]) -> None:
        self.calls.append(channels)
        self.event.set()

    async def wait(self, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            await self.event.wait()


async def test_spublish_reaches_subscribers_on_every_shard(
    client: RedisCluster, local_cluster: LocalRedisCluster
) -> None:
    """Channels on all three shards deliver through one subscriber, in order per channel, from
    the moment `subscribe` returns."""
    by_shard: dict[int, list[str]] = {0: [], 1: [], 2: []}
    while any(len(names) < 3 for names in by_shard.values()):
        channel = keys.user_channel(uuid.uuid4())
        by_shard[local_cluster.owner_of(client.keyslot(channel))].append(channel)
    channels = [channel for names in by_shard.values() for channel in names]
    inbox = _Inbox()
    async with cluster.ShardedSubscriber(client, on_message=inbox) as subscriber:
        await subscriber.subscribe(*channels)
        for channel in channels:
            assert await cluster.spublish(client, channel, b"first") == 1
            assert await cluster.spublish(client, channel, b"second") == 1
        received = await _receive(inbox, 2 * len(channels))
    for channel in channels:
        assert [data for name, data in received if name == channel] == [b"first", b"second"]


async def test_shard_links_speak_resp2(
    client: RedisCluster, local_cluster: LocalRedisCluster
) -> None:
    """Each shard's subscriber link reads its messages as RESP2 arrays (see
    `cluster.PUBSUB_PROTOCOL`), on every primary it subscribed on."""
    channels: dict[int, str] = {}
    while len(channels) < 3:
        channel = keys.user_channel(uuid.uuid4())
        channels.setdefault(local_cluster.owner_of(client.keyslot(channel)), channel)
    async with cluster.ShardedSubscriber(client, on_message=_Inbox()) as subscriber:
        await subscriber.subscribe(*channels.values())
        for node in client.get_primaries():
            links = await client.execute_command("CLIENT LIST", "TYPE", "pubsub", target_nodes=node)
            mine = [c for c in links if int(c.get("ssub", 0)) > 0]
            assert mine and all(c["resp"] == "2" for c in mine), (node.name, links)


async def test_read_reply_returns_replies_raises_errors_and_a_lost_link(
    client: RedisCluster,
) -> None:
    """`read_reply` on a subscriber link: a confirmation and a message as RESP2 arrays, an
    error reply raised as redis-py raises it, and a link the server closed as a connection
    error (what the readers' callers handle by re-subscribing)."""
    node = client.get_primaries()[0]
    conn = Connection(host=node.host, port=int(node.port), protocol=cluster.PUBSUB_PROTOCOL)
    await conn.connect()  # type: ignore[no-untyped-call]
    try:
        await conn.send_command("SUBSCRIBE", "plain")
        assert await cluster.read_reply(conn) == [b"subscribe", b"plain", 1]
        await client.publish("plain", b"hello", target_nodes=node)
        assert await cluster.read_reply(conn) == [b"message", b"plain", b"hello"]
        await conn.send_command("SUBSCRIBE")  # no channel: Redis answers with an error
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await cluster.read_reply(conn)
        await client.execute_command("CLIENT KILL", "TYPE", "pubsub", target_nodes=node)
        with pytest.raises((RedisConnectionError, OSError)):
            await cluster.read_reply(conn)
    finally:
        await conn.disconnect()


async def test_unsubscribed_channel_is_not_delivered(client: RedisCluster) -> None:
    """After unsubscribe, SPUBLISH finds no subscriber and nothing arrives."""
    kept, dropped = keys.user_channel(uuid.uuid4()), keys.session_channel(uuid.uuid4())
    inbox = _Inbox()
    async with cluster.ShardedSubscriber(client, on_message=inbox) as subscriber:
        await subscriber.subscribe(kept, dropped)
        await subscriber.unsubscribe(dropped)
        assert subscriber.channels == {kept}
        async with asyncio.timeout(5):
            # SUNSUBSCRIBE is not acknowledged to the caller: poll the server.
            while await cluster.spublish(client, dropped, b"x"):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert await cluster.spublish(client, kept, b"kept") == 1
        assert await _receive(inbox, 1) == [(kept, b"kept")]


async def test_plain_publish_is_not_sharded(client: RedisCluster) -> None:
    """A shard-channel subscriber does not receive classic PUBLISH on the same name: publishers
    and subscribers must switch together."""
    channel = keys.user_channel(uuid.uuid4())
    inbox = _Inbox()
    async with cluster.ShardedSubscriber(client, on_message=inbox) as subscriber:
        await subscriber.subscribe(channel)
        assert await client.publish(channel, b"classic") == 0
        assert await cluster.spublish(client, channel, b"sharded") == 1
        assert await _receive(inbox, 1) == [(channel, b"sharded")]


async def test_subscription_follows_a_moved_slot(
    client: RedisCluster, local_cluster: LocalRedisCluster
) -> None:
    """When the channel's slot moves to another primary, the subscriber re-subscribes there,
    tells its owner, and later messages arrive."""
    channel = keys.user_channel(uuid.uuid4())
    # A slot moves only empty (`move_slot`), and the cluster holds other tests' keys: a
    # channel whose slot shares one of them would be refused the move.
    while local_cluster.keys_in(client.keyslot(channel)):
        channel = keys.user_channel(uuid.uuid4())
    slot = client.keyslot(channel)
    owner = local_cluster.owner_of(slot)
    resubscribed = _Resubscribed()
    inbox = _Inbox()
    async with cluster.ShardedSubscriber(
        client, on_message=inbox, on_resubscribed=resubscribed
    ) as subscriber:
        await subscriber.subscribe(channel)
        assert await cluster.spublish(client, channel, b"before") == 1
        # Off the event loop, so the subscriber's reader sees the move while it happens.
        await asyncio.to_thread(local_cluster.move_slot, slot, to=(owner + 1) % 3)
        try:
            await resubscribed.wait()
            assert resubscribed.calls == [{channel}]
            assert await cluster.spublish(client, channel, b"after") == 1
            assert [data for _, data in await _receive(inbox, 2)] == [b"before", b"after"]
        finally:
            await asyncio.to_thread(local_cluster.move_slot, slot, to=owner)


async def test_subscription_survives_its_primary_restarting(
    client: RedisCluster, local_cluster: LocalRedisCluster
) -> None:
    """A primary restart drops the shard connection; the subscriber re-subscribes once the node
    is back, tells its owner, and delivery resumes (channels on other shards never stopped)."""
    channel = keys.user_channel(uuid.uuid4())
    owner = local_cluster.owner_of(client.keyslot(channel))
    other = keys.user_channel(uuid.uuid4())
    while local_cluster.owner_of(client.keyslot(other)) == owner:
        other = keys.user_channel(uuid.uuid4())
    resubscribed = _Resubscribed()
    inbox = _Inbox()
    async with cluster.ShardedSubscriber(
        client, on_message=inbox, on_resubscribed=resubscribed, ping_interval=0.5
    ) as subscriber:
        await subscriber.subscribe(channel, other)
        await asyncio.to_thread(local_cluster.restart, owner)
        await resubscribed.wait()
        assert resubscribed.calls == [{channel}]
        assert await cluster.spublish(client, other, b"other") == 1
        assert await cluster.spublish(client, channel, b"back") == 1
        assert sorted(await _receive(inbox, 2)) == sorted([(other, b"other"), (channel, b"back")])

"""`shared.topic_store` against real Redis (one server, and the local Redis Cluster): gapless
offsets, history trimmed and recovered exactly, epoch changes when the history is lost,
Idempotency-Key, the envelope on the topic's channel, and presence expiring on a fake clock."""

from __future__ import annotations

import asyncio
import json

import msgspec
import redis.asyncio as redis

from shared import keys
from shared.redis_client import RedisClient
from shared.topic_store import TopicStore
from shared.topic_wire import ClientInfo, Since
from shared.topics import Namespace
from shared.wire import decode_envelope

NS = Namespace(history_size=5, history_ttl=60)
NOW = 1_700_000_000.0


def _data(entries: list[object]) -> list[object]:
    return [json.loads(msgspec.json.encode(e)) for e in entries]


async def test_offsets_are_gapless_and_history_recovers_exactly(any_client: RedisClient) -> None:
    """Five publications get offsets 1..5 under one epoch; since offset 2 yields 3, 4, 5."""
    store = TopicStore(any_client)
    positions = [
        (await store.publish("public:a", NS, json.dumps({"n": n}).encode(), now=NOW))[0]
        for n in range(1, 6)
    ]
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions}) == 1
    got = await store.recover("public:a", NS, Since(offset=2, epoch=positions[0].epoch), 100)
    assert got.recovered and got.position == positions[-1]
    assert [p.offset for p in got.publications] == [3, 4, 5]
    assert _data([p.data for p in got.publications]) == [{"n": 3}, {"n": 4}, {"n": 5}]


async def test_up_to_date_and_fresh_subscribers(any_client: RedisClient) -> None:
    """since == top recovers nothing and says so; without since, only the position; an unknown
    topic gets an epoch at once, offset 0."""
    store = TopicStore(any_client)
    position, _ = await store.publish("public:b", NS, b"1", now=NOW)
    same = await store.recover("public:b", NS, Since(offset=1, epoch=position.epoch), 100)
    assert same.recovered and same.publications == []
    fresh = await store.recover("public:never", NS, None, 100)
    assert fresh.recovered and fresh.position.offset == 0 and fresh.position.epoch
    again = await store.recover("public:never", NS, None, 100)
    assert again.position == fresh.position


async def test_trimmed_history_is_not_recovered(any_client: RedisClient) -> None:
    """Missing more than history_size publications answers recovered false, no publications."""
    store = TopicStore(any_client)
    for n in range(8):
        position, _ = await store.publish("public:c", NS, str(n).encode(), now=NOW)
    got = await store.recover("public:c", NS, Since(offset=1, epoch=position.epoch), 100)
    assert not got.recovered and got.publications == []
    ok = await store.recover("public:c", NS, Since(offset=3, epoch=position.epoch), 100)
    assert ok.recovered and [p.offset for p in ok.publications] == [4, 5, 6, 7, 8]


async def test_lost_history_changes_the_epoch(any_client: RedisClient) -> None:
    """When Redis loses the topic's keys, offsets restart under a new epoch and the old
    position cannot be recovered."""
    store = TopicStore(any_client)
    old, _ = await store.publish("public:d", NS, b"1", now=NOW)
    await any_client.delete(keys.topic_meta("public:d"), keys.topic_history("public:d"))
    new, _ = await store.publish("public:d", NS, b"2", now=NOW)
    assert new.epoch != old.epoch and new.offset == 1
    got = await store.recover("public:d", NS, Since(offset=1, epoch=old.epoch), 100)
    assert not got.recovered and got.position == new


async def test_expired_history_with_meta_left_is_not_recovered(any_client: RedisClient) -> None:
    """The history expired but the offset survived: a gap, so recovered false."""
    store = TopicStore(any_client)
    first, _ = await store.publish("public:e", NS, b"1", now=NOW)
    await store.publish("public:e", NS, b"2", now=NOW)
    await any_client.delete(keys.topic_history("public:e"))
    got = await store.recover("public:e", NS, Since(offset=first.offset, epoch=first.epoch), 100)
    assert not got.recovered and got.position.epoch == first.epoch


async def test_idempotency_key_publishes_once(any_client: RedisClient) -> None:
    """The same Idempotency-Key answers the first position again and adds nothing."""
    store = TopicStore(any_client)
    first, repeated = await store.publish("public:f", NS, b"1", now=NOW, idempotency_key="k1")
    again, repeated_again = await store.publish("public:f", NS, b"1", now=NOW, idempotency_key="k1")
    assert not repeated
    assert again == first and repeated_again
    other, _ = await store.publish("public:f", NS, b"2", now=NOW, idempotency_key="k2")
    assert other.offset == 2


async def test_publication_envelope_reaches_the_topic_channel(any_client: RedisClient) -> None:
    """A subscriber of the topic's channel receives meta (topic, offset, epoch) and the frame."""
    store = TopicStore(any_client)
    channel = keys.topic_channel("public:g")
    if isinstance(any_client, redis.Redis):
        pubsub = any_client.pubsub()
        await pubsub.subscribe(channel)
    else:
        node = any_client.get_node_from_key(channel)
        assert node is not None
        single = redis.Redis(host=node.host, port=int(node.port))
        pubsub = single.pubsub()
        await pubsub.ssubscribe(channel)
    try:
        await pubsub.get_message(timeout=2)  # the confirmation
        position, _ = await store.publish("public:g", NS, b'{"x":[1,2]}', now=NOW)
        message = None
        async with asyncio.timeout(5):
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        meta, frame = decode_envelope(message["data"])
        assert (meta.topic, meta.offset, meta.epoch) == ("public:g", 1, position.epoch)
        assert json.loads(frame) == {
            "type": "publication",
            "topic": "public:g",
            "offset": 1,
            "data": {"x": [1, 2]},
        }
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_presence_joins_refreshes_and_expires_on_a_fake_clock(
    any_client: RedisClient,
) -> None:
    """An entry is new once, lives until its expiry, is kept alive by a refresh and dropped by
    the first read after it expired."""
    store = TopicStore(any_client)
    a = ClientInfo(user_id="u1", session_id="s1", conn_id="c1")
    b = ClientInfo(user_id="u2", session_id="s2", conn_id="c2")
    t = 1_000_000
    assert await store.presence_add("public:h", a, now_ms=t, lifetime_ms=2000)
    assert not await store.presence_add("public:h", a, now_ms=t, lifetime_ms=2000)
    assert await store.presence_add("public:h", b, now_ms=t, lifetime_ms=2000)
    assert await store.presence("public:h", now_ms=t + 1000) == [a, b]
    await store.presence_refresh([("public:h", "c1")], now_ms=t + 1500, lifetime_ms=2000)
    assert await store.presence("public:h", now_ms=t + 2500) == [a]
    await store.presence_remove("public:h", "c1")
    assert await store.presence("public:h", now_ms=t + 2500) == []

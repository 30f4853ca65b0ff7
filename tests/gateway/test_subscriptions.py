"""`TopicHub` in process over the real `Fanout` and a real Redis, with recording subscribers:
subscribe and live publications, recovery with `since`, a gap closed from the history, an
unrecoverable gap ending the subscription, refusals as error frames, presence with join/leave,
client publish rules and the token expiry, on the hub's own clock ticks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pytest
import redis.asyncio as redis

from gateway import subscriptions
from gateway.fanout import Fanout
from gateway.subscriptions import TopicHub
from gateway.topics import Topics
from gateway.wsprotocol import TextFrame
from shared import keys
from shared.auth import TokenVerifier, mint_subscription_token
from shared.infra import EmbeddedRedis
from shared.settings import Settings
from shared.topic_store import TopicStore
from shared.wire import EnvelopeMeta
from tests.gateway.conftest import eventually

NAMESPACES = json.dumps(
    {
        "public": {"history_size": 10, "history_ttl": 60, "presence": True, "join_leave": True},
        "plain": {"history_size": 10, "history_ttl": 60},
        "chat": {"publish": True, "history_size": 10, "history_ttl": 60},
        "private": {"subscribe": "token", "history_size": 10, "history_ttl": 60},
    }
)


@dataclass(eq=False)
class Recorder:
    """A `Subscriber` that keeps every frame it is given."""

    user_id: UUID = field(default_factory=uuid.uuid4)
    conn_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    session_key: str = field(default_factory=lambda: str(uuid.uuid4()))
    close_code: int | None = None
    frames: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def offer(self, frame: TextFrame) -> bool:
        self.frames.put_nowait(json.loads(frame.text))
        return True

    async def put(self, frame: TextFrame) -> None:
        self.offer(frame)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), 5)

    def drained(self) -> bool:
        return self.frames.empty()


@dataclass
class Rig:
    hub: TopicHub
    store: TopicStore
    redis: redis.Redis
    settings: Settings
    fanout: Fanout[Any]

    async def send(self, conn: Recorder, **frame: object) -> None:
        await self.hub.handle(conn, json.dumps(frame))


@pytest.fixture
async def rig(private_redis: EmbeddedRedis, base_env: dict[str, str]) -> AsyncIterator[Rig]:
    settings = Settings.from_env(
        base_env | {"REDIS_URL": private_redis.url, "TOPIC_NAMESPACES": NAMESPACES}
    )
    client = redis.Redis.from_url(private_redis.url)
    store = TopicStore(client)
    verifier = TokenVerifier(settings)
    topics = Topics(settings, store, verifier)
    hub: TopicHub | None = None

    def deliver(members: Any, meta: EnvelopeMeta, frame: bytes) -> None:
        assert hub is not None
        hub.deliver(members, meta, TextFrame(frame))

    def resync() -> None:
        if hub is not None:
            hub.resync(None)

    fanout: Fanout[Any] = Fanout(private_redis.url, set(), deliver, resync)
    hub = TopicHub(topics, fanout, client, heartbeat=1.0)
    await fanout.start()

    async def connected() -> bool:
        return fanout.connected

    await eventually(connected, 10)  # as a gateway is, before it serves connections
    try:
        yield Rig(hub, store, client, settings, fanout)
    finally:
        await hub.stop()
        await fanout.stop()
        await verifier.aclose()
        await client.aclose()


async def _publish(rig: Rig, topic: str, data: object) -> int:
    position, _ = await rig.hub.topics.publish(topic, data)
    return position.offset


async def test_subscribe_then_live_publications_in_order(rig: Rig) -> None:
    """`subscribed` at the topic's position, then each publication once, in offset order."""
    conn = Recorder()
    await _publish(rig, "plain:a", "before")
    await rig.send(conn, type="subscribe", topic="plain:a")
    subscribed = await conn.next()
    assert subscribed["type"] == "subscribed" and subscribed["offset"] == 1
    assert subscribed["recovered"] and subscribed["publications"] == []
    for n in range(3):
        await _publish(rig, "plain:a", n)
    got = [await conn.next() for _ in range(3)]
    assert [(f["type"], f["offset"], f["data"]) for f in got] == [
        ("publication", 2, 0),
        ("publication", 3, 1),
        ("publication", 4, 2),
    ]


async def test_resubscribe_with_since_recovers_exactly_the_missed(rig: Rig) -> None:
    """`since` the last seen position yields exactly the publications after it."""
    conn = Recorder()
    await rig.send(conn, type="subscribe", topic="plain:b")
    first = await conn.next()
    await _publish(rig, "plain:b", 1)
    seen = await conn.next()
    await rig.send(conn, type="unsubscribe", topic="plain:b")
    assert (await conn.next())["type"] == "unsubscribed"
    for n in (2, 3):
        await _publish(rig, "plain:b", n)
    since = {"offset": seen["offset"], "epoch": first["epoch"]}
    await rig.send(conn, type="subscribe", topic="plain:b", since=since)
    again = await conn.next()
    assert again["recovered"] is True
    assert [(p["offset"], p["data"]) for p in again["publications"]] == [(2, 2), (3, 3)]


async def test_since_another_epoch_is_not_recovered(rig: Rig) -> None:
    """A position of a lost epoch answers recovered false with no publications."""
    conn = Recorder()
    await _publish(rig, "plain:c", 1)
    await rig.send(conn, type="subscribe", topic="plain:c", since={"offset": 1, "epoch": "gone"})
    answer = await conn.next()
    assert answer["recovered"] is False and answer["publications"] == []


async def test_a_gap_is_closed_from_the_history(rig: Rig) -> None:
    """A publication lost on the way (added to the history without PUBLISH) is delivered
    from the history when the next one shows the gap, before it, once."""
    conn = Recorder()
    await rig.send(conn, type="subscribe", topic="plain:d")
    subscribed = await conn.next()
    # Offset 1 only in the history, as if its pub/sub message was lost.
    await rig.redis.hset(keys.topic_meta("plain:d"), "s", 1)
    await rig.redis.xadd(keys.topic_history("plain:d"), {"d": b'"lost"'}, id="1-0")
    await _publish(rig, "plain:d", "next")
    got = [await conn.next(), await conn.next()]
    assert [(f["offset"], f["data"]) for f in got] == [(1, "lost"), (2, "next")]
    assert subscribed["epoch"]


async def test_publication_lost_while_the_subscribe_reads_the_history_is_delivered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pub/sub link drops and comes back while a subscribe's history read is on its way
    back, and a publication made after the read was lost with the link: once live, the
    subscriber syncs again and gets it from the history, though no later publication shows
    the gap (it used to wait for one)."""
    conn = Recorder()
    store = rig.hub.topics.store
    read, released = asyncio.Event(), asyncio.Event()
    recover = store.recover

    async def held_recover(*args: Any, **kwargs: Any) -> Any:
        recovery = await recover(*args, **kwargs)
        read.set()
        await released.wait()
        return recovery

    resynced = asyncio.Event()
    resync = rig.hub.resync

    def noted_resync(channels: Any) -> None:
        resync(channels)
        resynced.set()

    monkeypatch.setattr(store, "recover", held_recover)
    monkeypatch.setattr(rig.hub, "resync", noted_resync)
    subscribing = asyncio.create_task(rig.send(conn, type="subscribe", topic="plain:f"))
    await read.wait()
    # Offset 1 reaches the history but not the subscriber: the link is down when it goes out.
    await rig.redis.hset(keys.topic_meta("plain:f"), "s", 1)
    await rig.redis.xadd(keys.topic_history("plain:f"), {"d": b'"lost"'}, id="1-0")
    await rig.redis.client_kill_filter(_type="pubsub")
    await asyncio.wait_for(resynced.wait(), 10)
    monkeypatch.setattr(store, "recover", recover)  # the sync after it reads at once
    released.set()
    await subscribing
    subscribed = await conn.next()
    assert subscribed["type"] == "subscribed" and subscribed["offset"] == 0
    lost = await conn.next()
    assert (lost["type"], lost["offset"], lost["data"]) == ("publication", 1, "lost")


def _insufficient_state(topic: str, reason: str) -> dict[str, str]:
    """The `unsubscribed` frame of a subscription whose gap could not be closed."""
    return {"type": "unsubscribed", "topic": topic, "code": "INSUFFICIENT_STATE", "reason": reason}


async def _gap_with_failing_reads(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, topic: str, failures: int
) -> tuple[Recorder, list[int]]:
    """A subscriber of `topic` whose next publication shows a gap (offset 1 only in the
    history); the history reads of the sync that follows fail `failures` times first. Returns
    the subscriber (its `subscribed` taken) and the sync's read attempts, one entry each."""
    monkeypatch.setattr(subscriptions, "SYNC_RETRY_BASE", 0.01)
    conn = Recorder()
    await rig.send(conn, type="subscribe", topic=topic)
    assert (await conn.next())["type"] == "subscribed"
    store = rig.hub.topics.store
    recover, attempts = store.recover, []

    async def failing_recover(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        if len(attempts) <= failures:
            raise redis.BusyLoadingError("Redis is loading the dataset in memory")
        return await recover(*args, **kwargs)

    monkeypatch.setattr(store, "recover", failing_recover)
    await rig.redis.hset(keys.topic_meta(topic), "s", 1)
    await rig.redis.xadd(keys.topic_history(topic), {"d": b'"lost"'}, id="1-0")
    await _publish(rig, topic, "next")
    return conn, attempts


async def test_a_failing_history_read_is_retried(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync whose history reads fail (Redis still loading) retries them: the subscriber
    stays subscribed and gets the missed publication, then the next, once each."""
    conn, attempts = await _gap_with_failing_reads(rig, monkeypatch, "plain:g", 2)
    got = [await conn.next(), await conn.next()]
    assert [(f["type"], f["offset"], f["data"]) for f in got] == [
        ("publication", 1, "lost"),
        ("publication", 2, "next"),
    ]
    assert len(attempts) == 3


async def test_a_history_that_cannot_be_read_ends_the_subscription(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every one of the sync's `SYNC_ATTEMPTS` reads fails, the subscription ends with
    `INSUFFICIENT_STATE`, after exactly that many reads, saying the history was unreadable."""
    conn, attempts = await _gap_with_failing_reads(
        rig, monkeypatch, "plain:h", subscriptions.SYNC_ATTEMPTS
    )
    ended = await conn.next()
    assert ended == _insufficient_state(
        "plain:h", "publications were missed and the history could not be read"
    )
    assert len(attempts) == subscriptions.SYNC_ATTEMPTS


async def test_lost_history_ends_the_subscription_with_insufficient_state(rig: Rig) -> None:
    """When Redis loses the topic (new epoch) a live subscriber gets unsubscribed
    INSUFFICIENT_STATE; resubscribing with its position says recovered false."""
    conn = Recorder()
    await rig.send(conn, type="subscribe", topic="plain:e")
    subscribed = await conn.next()
    await _publish(rig, "plain:e", 1)
    await conn.next()
    await rig.redis.delete(keys.topic_meta("plain:e"), keys.topic_history("plain:e"))
    await _publish(rig, "plain:e", 2)
    ended = await conn.next()
    assert ended == _insufficient_state("plain:e", "publications were missed")
    since = {"offset": 1, "epoch": subscribed["epoch"]}
    await rig.send(conn, type="subscribe", topic="plain:e", since=since)
    again = await conn.next()
    assert again["recovered"] is False and again["offset"] == 1
    assert again["epoch"] != subscribed["epoch"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "subscribe", "topic": "bad"}, "TOPIC_INVALID"),
        ({"type": "subscribe", "topic": "nope:x"}, "TOPIC_UNKNOWN_NAMESPACE"),
        ({"type": "subscribe", "topic": "private:x"}, "TOPIC_TOKEN_REQUIRED"),
        ({"type": "subscribe", "topic": "private:x", "token": "junk"}, "TOPIC_TOKEN_INVALID"),
        ({"type": "unsubscribe", "topic": "public:x"}, "NOT_SUBSCRIBED"),
        ({"type": "publish", "topic": "public:x", "data": 1}, "PUBLISH_FORBIDDEN"),
        ({"type": "publish", "topic": "chat:x", "data": 1}, "PUBLISH_FORBIDDEN"),
        ({"type": "presence", "topic": "chat:x"}, "PRESENCE_DISABLED"),
        ({"type": "subscribe"}, "INVALID_MESSAGE"),
    ],
)
async def test_refusals_are_error_frames(rig: Rig, frame: dict[str, Any], code: str) -> None:
    """Each refusal is one `error` frame with its stable code."""
    conn = Recorder()
    await rig.send(conn, **frame)
    answer = await conn.next()
    assert answer["type"] == "error" and answer["error"]["code"] == code


async def test_too_many_topics_and_already_subscribed(rig: Rig) -> None:
    """A second subscribe to the same topic and one over the per-connection cap are refused."""
    conn = Recorder()
    await rig.send(conn, type="subscribe", topic="plain:f")
    await conn.next()
    await rig.send(conn, type="subscribe", topic="plain:f")
    assert (await conn.next())["error"]["code"] == "ALREADY_SUBSCRIBED"
    limit = rig.settings.topics_max_per_connection
    for n in range(limit - 1):
        await rig.send(conn, type="subscribe", topic=f"plain:f{n}")
        assert (await conn.next())["type"] == "subscribed"
    await rig.send(conn, type="subscribe", topic="plain:over")
    assert (await conn.next())["error"]["code"] == "TOO_MANY_TOPICS"


async def test_presence_join_and_leave(rig: Rig) -> None:
    """A second subscriber's join reaches the first; presence lists both; its leave follows."""
    first, second = Recorder(), Recorder()
    await rig.send(first, type="subscribe", topic="public:g")
    await first.next()
    assert (await first.next())["type"] == "join"  # its own
    await rig.send(second, type="subscribe", topic="public:g")
    await second.next()
    join = await first.next()
    assert join == {
        "type": "join",
        "topic": "public:g",
        "user_id": str(second.user_id),
        "session_id": second.session_key,
    }
    await second.next()  # its own join
    await rig.send(first, type="presence", topic="public:g")
    listed = await first.next()
    assert {c["conn_id"] for c in listed["clients"]} == {first.conn_id, second.conn_id}
    await rig.send(first, type="presence_stats", topic="public:g")
    assert await first.next() == {
        "type": "presence_stats",
        "topic": "public:g",
        "clients": 2,
        "users": 2,
    }
    await rig.hub.drop(second)
    leave = await first.next()
    assert leave["type"] == "leave" and leave["user_id"] == str(second.user_id)


async def test_client_publish_where_allowed_and_rate_limited(rig: Rig) -> None:
    """In a `publish: true` namespace a subscriber publishes (answered `published`, received as
    a publication); past the burst it gets RATE_LIMITED, naming the topic and when to retry."""
    conn = Recorder()
    await rig.send(conn, type="subscribe", topic="chat:room")
    await conn.next()
    codes: list[str] = []
    limited: list[dict[str, Any]] = []
    for n in range(rig.settings.topic_client_publish_burst + 1):
        await rig.send(conn, type="publish", topic="chat:room", data={"n": n})
    while not conn.drained() or len(codes) < 2 * rig.settings.topic_client_publish_burst + 1:
        frame = await conn.next()
        codes.append(frame["type"] if frame["type"] != "error" else frame["error"]["code"])
        if frame["type"] == "error":
            limited.append(frame["error"]["details"])
    assert codes.count("published") == rig.settings.topic_client_publish_burst
    assert codes.count("publication") == rig.settings.topic_client_publish_burst
    assert codes.count("RATE_LIMITED") == 1
    assert limited == [{"topic": "chat:room", "retry_after": 1}]


async def test_token_subscription_refresh_and_expiry(rig: Rig) -> None:
    """A token subscription reports its exp, accepts a refresh for the same topic only, and
    ends with TOPIC_TOKEN_EXPIRED once the (refreshed) exp has passed at a tick."""
    conn = Recorder()
    token = mint_subscription_token(rig.settings, conn.user_id, "private:x", ttl=60)
    await rig.send(conn, type="subscribe", topic="private:x", token=token)
    subscribed = await conn.next()
    assert subscribed["type"] == "subscribed" and subscribed["expires_at"] > time.time()
    wrong = mint_subscription_token(rig.settings, conn.user_id, "private:y", ttl=60)
    await rig.send(conn, type="sub_refresh", topic="private:x", token=wrong)
    assert (await conn.next())["error"]["code"] == "TOPIC_TOKEN_INVALID"
    fresh = mint_subscription_token(rig.settings, conn.user_id, "private:x", ttl=120)
    await rig.send(conn, type="sub_refresh", topic="private:x", token=fresh)
    refreshed = await conn.next()
    assert refreshed["type"] == "sub_refreshed"
    await rig.hub.tick(refreshed["expires_at"] - 1)
    assert conn.drained()
    await rig.hub.tick(refreshed["expires_at"])
    ended = await conn.next()
    assert ended["type"] == "unsubscribed" and ended["code"] == "TOPIC_TOKEN_EXPIRED"
    assert rig.hub.count(conn) == 0


Token = Callable[..., str]

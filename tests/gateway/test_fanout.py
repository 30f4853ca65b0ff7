"""Fan-out across two gateway processes sharing Redis: to a user, to a session, to everyone with
an exclusion, published bytes forwarded as is, and subscriptions only for what is held."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis as sync_redis
import redis.asyncio as redis

from gateway import metrics
from gateway.fanout import Fanout
from shared import keys, publish
from shared.cluster import READ_SLICE
from shared.wire import EnvelopeMeta, Notification, NotificationData, encode, encode_envelope
from tests.conftest import Infra
from tests.gateway.conftest import Cluster, equals, eventually, open_ws, recv_json, silent
from tests.gateway.conftest import publish as publish_http

Token = Callable[..., str]


@pytest.fixture
async def r(infra: Infra) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(infra.redis.url)
    yield client
    await client.aclose()


async def test_user_frame_reaches_every_instance(
    cluster: Cluster, token_for: Token, r: redis.Redis
) -> None:
    """A frame for a user reaches that user's sessions on both gateways, byte for byte as
    published, and no other user."""
    user, other = uuid.uuid4(), uuid.uuid4()
    on_a = await open_ws(cluster.a, uuid.uuid4(), token_for(user))
    on_b = await open_ws(cluster.b, uuid.uuid4(), token_for(user))
    bystander = await open_ws(cluster.b, uuid.uuid4(), token_for(other))
    frame = encode(
        Notification(
            NotificationData(
                id=str(uuid.uuid4()),
                title="New Task Created",
                content="Buy milk",
                notification_type="task_created",
                action={"type": "open_task", "url": "/tasks/1"},
                created_at="2025-12-26T10:00:00+00:00",
            ),
            timestamp="2025-12-26T10:00:00.5+00:00",
        )
    )
    assert await publish.to_user(r, user, frame) == 2  # both gateways, nobody else
    for ws in (on_a, on_b):
        raw = await asyncio.wait_for(ws.recv(), 5)
        assert raw == frame.decode()
    assert await silent(bystander)
    for ws in (on_a, on_b, bystander):
        await ws.close()


async def test_session_frame_reaches_its_connections_only(
    cluster: Cluster, token_for: Token
) -> None:
    """The publish endpoint on gateway A reaches the session's connections on A and B only."""
    user, session = uuid.uuid4(), uuid.uuid4()
    token = token_for(user)
    first = await open_ws(cluster.a, session, token)
    second = await open_ws(cluster.b, session, token)
    elsewhere = await open_ws(cluster.b, uuid.uuid4(), token)
    frame = {
        "type": "message",
        "data": {
            "id": "m1",
            "reply": "hi",
            "tool_calls": [],
            "tokens_used": 3,
            "created_at": "2025-12-26T10:00:00+00:00",
        },
    }
    response = await publish_http(cluster.a, session_id=str(session), frame=frame)
    assert response.status_code == 202, response.text
    assert response.json() == {"receivers": 2}
    for ws in (first, second):
        assert await recv_json(ws) == frame
    assert await silent(elsewhere)
    for ws in (first, second, elsewhere):
        await ws.close()


async def test_broadcast_with_exclusion(cluster: Cluster, token_for: Token) -> None:
    """A broadcast reaches every connection on both gateways except the excluded session's."""
    excluded_session = uuid.uuid4()
    sockets = [
        await open_ws(cluster.a, uuid.uuid4(), token_for(uuid.uuid4())),
        await open_ws(cluster.b, uuid.uuid4(), token_for(uuid.uuid4())),
    ]
    excluded = await open_ws(cluster.b, excluded_session, token_for(uuid.uuid4()))
    marker = str(uuid.uuid4())
    response = await publish_http(
        cluster.b,
        broadcast=True,
        exclude_session=str(excluded_session),
        frame={"type": "announcement", "text": marker},
    )
    assert response.status_code == 202
    for ws in sockets:
        frame = await recv_json(ws)
        assert frame == {"type": "announcement", "text": marker}
    assert await silent(excluded)
    for ws in [*sockets, excluded]:
        await ws.close()


async def test_subscribes_only_to_held_channels(
    cluster: Cluster, token_for: Token, r: redis.Redis
) -> None:
    """Gateways subscribe to a user's and session's channels while they hold one of its
    connections, and unsubscribe after the last one leaves."""
    user, session = uuid.uuid4(), uuid.uuid4()
    channels = [keys.user_channel(user), keys.session_channel(session)]

    async def subscribers() -> list[int]:
        return [count for _, count in await r.pubsub_numsub(*channels)]

    assert await subscribers() == [0, 0]
    first = await open_ws(cluster.a, session, token_for(user))
    second = await open_ws(cluster.a, session, token_for(user))
    assert await subscribers() == [1, 1]  # one subscription per instance, not per connection
    third = await open_ws(cluster.b, session, token_for(user))
    assert await subscribers() == [2, 2]
    for ws in (first, second, third):
        await ws.close()
    await eventually(lambda: equals(subscribers(), [0, 0]))


async def test_pings_keep_a_healthy_link(infra: Infra, r: redis.Redis) -> None:
    """Over many ping intervals a healthy pub/sub link is kept (the PONGs count as life, the
    link is not replaced) and frames keep arriving."""
    received: list[bytes] = []
    member = object()
    fanout: Fanout[object] = Fanout(
        infra.redis.url,
        set(),
        lambda members, meta, text: received.append(text),
        lambda: None,
        ping_interval=0.1,
    )
    await fanout.start()
    try:
        channel = keys.user_channel(uuid.uuid4())
        await fanout.join(member, (channel.encode(),), timeout=5)
        reconnects = metrics.PUBSUB_RECONNECTS._value.get()
        # Ten ping intervals on: a PONG heard then proves the link was kept all along.
        ten_pings_on = asyncio.get_running_loop().time() + 1.0
        await eventually(lambda: _true(fanout._heard >= ten_pings_on), 5)
        assert fanout.connected
        assert metrics.PUBSUB_RECONNECTS._value.get() == reconnects
        frame = b'{"type":"pong"}'
        await r.publish(channel, encode_envelope(frame, EnvelopeMeta()))
        await eventually(lambda: _true(received == [frame]), 5)
    finally:
        await fanout.stop()


async def test_the_pubsub_link_speaks_resp2(infra: Infra) -> None:
    """The fan-out's link reads its messages as RESP2 arrays (redis-py 8 would speak RESP3 and
    pass each message through its push handler: twice the reader's CPU per message). The
    test's Redis (6.2) does not list a client's protocol: the link's own handshake says it."""
    fanout: Fanout[object] = Fanout(infra.redis.url, set(), lambda *_: None, lambda: None)
    await fanout.start()
    try:
        channel = keys.user_channel(uuid.uuid4()).encode()
        await fanout.join(object(), (channel,), timeout=5)
        assert fanout._conn is not None and fanout._conn.protocol == 2
    finally:
        await fanout.stop()


async def test_the_reader_lets_other_work_run_within_a_burst(infra: Infra) -> None:
    """Thousands of messages already buffered (published while the loop was held) are read at
    most `READ_SLICE` per event-loop step: a callback scheduled at the first delivery runs
    before the reader has handled more than that, not after the whole burst."""
    received: list[bytes] = []
    seen_by_other_work: list[int] = []
    loop = asyncio.get_running_loop()

    def deliver(members: object, meta: EnvelopeMeta, text: bytes) -> None:
        if not received:
            loop.call_soon(lambda: seen_by_other_work.append(len(received)))
        received.append(text)

    fanout: Fanout[object] = Fanout(infra.redis.url, set(), deliver, lambda: None)
    await fanout.start()
    sync = sync_redis.Redis.from_url(infra.redis.url)
    try:
        channel = keys.user_channel(uuid.uuid4()).encode()
        await fanout.join(object(), (channel,), timeout=5)
        burst = 4 * READ_SLICE
        envelope = encode_envelope(b"{}", EnvelopeMeta())
        # A blocking client: the loop (and the reader) waits while Redis sends the burst.
        with sync.pipeline(transaction=False) as pipe:
            for _ in range(burst):
                pipe.publish(channel, envelope)
            pipe.execute()
        await eventually(lambda: _true(len(received) == burst), 5)
        assert seen_by_other_work and seen_by_other_work[0] <= READ_SLICE, seen_by_other_work
    finally:
        sync.close()
        await fanout.stop()


async def _true(value: bool) -> bool:
    return value


async def test_forgotten_members_unsubscribed_together_unless_rejoined(
    infra: Infra, r: redis.Redis
) -> None:
    """Members `forget`-ten (closed connections, at once) are routed no frame from then on;
    `release()` unsubscribes the channels nobody needs any more, but not one a member joined
    meanwhile (it found the channel still subscribed), which keeps receiving."""
    received: list[tuple[set[object], bytes]] = []
    fanout: Fanout[object] = Fanout(
        infra.redis.url,
        set(),
        lambda members, meta, text: received.append((set(members), text)),
        lambda: None,
    )
    await fanout.start()
    first, second, kept, newcomer = object(), object(), object(), object()
    gone, rejoined, held = (keys.user_channel(uuid.uuid4()).encode() for _ in range(3))

    async def subscribers() -> list[int]:
        return [count for _, count in await r.pubsub_numsub(gone, rejoined, held)]

    try:
        await fanout.join(first, (gone,), timeout=5)
        await fanout.join(second, (rejoined,), timeout=5)
        await fanout.join(kept, (held,), timeout=5)
        fanout.forget(first, (gone,))
        fanout.forget(second, (rejoined,))
        frame = b'{"type":"pong"}'
        # Redis sends one connection's messages in order: had `first` been routed the frame
        # on `gone`, it would have arrived before `kept`'s.
        await r.publish(gone, encode_envelope(frame, EnvelopeMeta()))
        await r.publish(held, encode_envelope(frame, EnvelopeMeta()))
        await eventually(lambda: _true(len(received) == 1), 5)
        assert received == [({kept}, frame)]
        await fanout.join(newcomer, (rejoined,), timeout=5)
        assert await subscribers() == [1, 1, 1]  # nothing unsubscribed before `release()`
        await fanout.release()
        await eventually(lambda: equals(subscribers(), [0, 1, 1]))
        await r.publish(rejoined, encode_envelope(frame, EnvelopeMeta()))
        await eventually(lambda: _true(len(received) == 2), 5)
        assert received[1] == ({newcomer}, frame)
    finally:
        await fanout.stop()

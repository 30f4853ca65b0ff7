"""Reading an answer's reply stream while Redis restarts or stays away: `gateway.chat`'s reader
waits a restart out, and past its outage budget ends the SSE stream with `ANSWER_INTERRUPTED`
instead of a traceback; each test runs with the reader's own XREAD (Redis Cluster) and through
the shared reply reader (gateway.replies)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import redis.asyncio as redis
from redis.typing import EncodableT, FieldT

from gateway import chat
from gateway.replies import Entries, ReplyReader
from shared import chat_wire, keys
from shared.infra import EmbeddedRedis


@pytest.fixture(params=["own", "shared"])
def shared(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "shared")


def _reader(client: redis.Redis, shared: bool) -> ReplyReader | None:
    return ReplyReader(client) if shared else None


async def _stop(replies: ReplyReader | None) -> None:
    if replies is not None:
        await replies.stop()


def _event(event: chat_wire.Token | chat_wire.End) -> dict[FieldT, EncodableT]:
    return {chat_wire.EVENT_FIELD: chat_wire.encode(event)}


async def test_reader_rides_out_a_redis_restart(private_redis: EmbeddedRedis, shared: bool) -> None:
    """Redis restarting under a reader is waited out: the events written before and after the
    restart reach the reader in order, then the answer's end; nothing is raised."""
    client = redis.Redis.from_url(private_redis.url)
    replies = _reader(client, shared)
    message_id = str(uuid.uuid4())
    key = keys.chat_reply_stream(message_id)
    reader = chat.read_events(client, message_id, "0-0", keepalive=5.0, replies=replies)
    try:
        await client.xadd(key, _event(chat_wire.Token(content="a")))
        first = await anext(reader)
        private_redis.stop()
        waiting = asyncio.ensure_future(anext(reader))
        private_redis.start()
        writer = redis.Redis.from_url(private_redis.url)
        try:
            await writer.xadd(key, _event(chat_wire.Token(content="b")))
            await writer.xadd(key, _event(chat_wire.End(message_id=message_id, tokens_used=2)))
        finally:
            await writer.aclose()
        rest = [await waiting] + [item async for item in reader]
    finally:
        await reader.aclose()
        await _stop(replies)
        await client.aclose()
    events = [chat_wire.decode_event(item[1]) for item in (first, *rest) if item is not None]
    assert [getattr(event, "content", None) for event in events] == ["a", "b", None]
    assert isinstance(events[-1], chat_wire.End)


async def test_reader_gives_up_after_the_outage_budget(
    private_redis: EmbeddedRedis, shared: bool
) -> None:
    """A Redis that stays away longer than the outage budget ends the read with
    `ReadInterrupted`, for each of two readers."""
    client = redis.Redis.from_url(private_redis.url)
    replies = _reader(client, shared)
    private_redis.stop()

    async def read() -> None:
        with pytest.raises(chat.ReadInterrupted):
            async for _ in chat.read_batches(
                client, str(uuid.uuid4()), "0-0", 5.0, outage=0.3, replies=replies
            ):
                pass

    try:
        await asyncio.gather(read(), read())
    finally:
        await _stop(replies)
        await client.aclose()


async def test_sse_ends_with_answer_interrupted(
    private_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, shared: bool
) -> None:
    """The SSE body turns the interrupted read into a last `error` event, ANSWER_INTERRUPTED,
    without `event_id` (it is not in the stream), after the events read before the outage."""
    monkeypatch.setattr(chat, "READ_OUTAGE", 0.3)
    client = redis.Redis.from_url(private_redis.url)
    replies = _reader(client, shared)
    message_id = str(uuid.uuid4())
    await client.xadd(keys.chat_reply_stream(message_id), _event(chat_wire.Token(content="a")))
    body = chat._sse(client, message_id, "0-0", 5.0, chat_wire.sse_resumable, replies)
    try:
        chunks = [await anext(body)]
        private_redis.stop()
        chunks += [chunk async for chunk in body]
    finally:
        await _stop(replies)
        await client.aclose()
    assert b'"content":"a"' in chunks[0]
    last = json.loads(chunks[-1].removeprefix(b"data: "))
    assert last["type"] == "error"
    assert last["error"]["code"] == "ANSWER_INTERRUPTED"
    assert "event_id" not in last


async def test_entries_a_sink_takes_are_not_silence(private_redis: EmbeddedRedis) -> None:
    """With a sink taking the answer's tokens straight to the client, the reader yields none of
    them, and its keepalive measures silence from the last token the sink took: while tokens
    come more often than `keepalive`, no keepalive goes out."""
    keepalive = 0.5
    client = redis.Redis.from_url(private_redis.url)
    replies = ReplyReader(client)
    message_id = str(uuid.uuid4())
    key = keys.chat_reply_stream(message_id)
    taken: list[float] = []

    def sink(entries: Entries) -> bool:
        taken.extend(time.monotonic() for _ in entries)
        return True

    async def produce() -> None:
        for i in range(8):
            await client.xadd(key, _event(chat_wire.Token(content=str(i))))
            await asyncio.sleep(keepalive / 5)

    batches = chat.read_batches(client, message_id, "0-0", keepalive, replies=replies, sink=sink)
    producing = asyncio.create_task(produce())
    try:
        started = time.monotonic()
        first = await anext(batches)
        yielded = time.monotonic()
        await producing
    finally:
        producing.cancel()
        await batches.aclose()
        await replies.stop()
        await client.aclose()
    assert first is None  # a keepalive: the tokens went to the sink
    before = [at for at in taken if at <= yielded]
    assert before, "the sink took nothing before the keepalive"
    assert yielded - max(before) >= keepalive
    assert yielded - started >= keepalive

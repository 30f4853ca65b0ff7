"""agent_svc.answer against a real Redis (and a real three-primary Redis Cluster): events of many
answers written in order, text deltas queued during a write joined into one entry, and a failed
write failing only its own answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from agent_svc.answer import Answer, ReplyWriter
from agent_svc.tools import ToolContext, ToolRegistry
from shared import chat_wire, cluster, redis_client
from shared.chat_wire import ChatRequest, End, Token, ToolCall, Transcript
from shared.local_cluster import LocalRedisCluster
from shared.redis_client import RedisClient
from shared.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[RedisClient]:
    connection = redis_client.create_client(settings)
    yield connection
    await connection.aclose()


def _answer(writer: ReplyWriter, settings: Settings, client: RedisClient) -> Answer:
    ids = [uuid.uuid4() for _ in range(3)]
    request = ChatRequest(
        message_id=str(ids[0]),
        user_message_id=str(uuid.uuid4()),
        session_id=str(ids[1]),
        user_id=str(ids[2]),
        message="q",
        created_at="2026-01-01T00:00:00Z",
    )
    context = ToolContext(
        user_id=ids[2],
        session_id=ids[1],
        message_id=ids[0],
        settings=settings,
        redis=client,
        http=httpx.AsyncClient(),
    )
    return Answer(writer, request, Transcript(), ToolRegistry(), context)


async def _stream(client: RedisClient, answer: Answer) -> list[Any]:
    entries: Any = await client.xrange(answer.key)
    return [chat_wire.decode_event(fields[chat_wire.EVENT_FIELD]) for _, fields in entries]


async def test_deltas_queued_during_a_write_share_one_entry(
    settings: Settings, client: redis.Redis
) -> None:
    """The first delta is written at once; those queued meanwhile become one entry, a tool call
    is not merged across, and the transcript holds exactly what the stream holds."""
    writer = ReplyWriter(client)
    answer = _answer(writer, settings, client)
    await answer.token("a")
    await answer.flush()
    for text in ("b", "c", "d"):
        await answer.token(text)
    await answer.emit(ToolCall(id="t1", name="x", input={}))
    await answer.token("e")
    await answer.token("f")
    await answer.emit(End(answer.request.message_id, 3))
    events = await _stream(client, answer)
    assert events == [
        Token("a"),
        Token("bcd"),
        ToolCall(id="t1", name="x", input={}),
        Token("ef"),
        End(answer.request.message_id, 3),
    ]
    assert answer.transcript.reply == "abcdef" and answer.transcript.ending is not None
    await writer.aclose()
    await answer.tool_context.http.aclose()


async def _many_answers(settings: Settings, client: RedisClient) -> None:
    writer = ReplyWriter(client)
    answers = [_answer(writer, settings, client) for _ in range(20)]
    for n in range(50):
        for answer in answers:
            await answer.token(f"{n},")
        await asyncio.sleep(0)  # the writer sends a batch while the next deltas queue up
    for answer in answers:
        await answer.flush()
    expected = "".join(f"{n}," for n in range(50))
    for answer in answers:
        events = await _stream(client, answer)
        assert 1 < len(events) <= 50  # written over several batches
        assert "".join(e.content for e in events) == expected
        assert answer.transcript.reply == expected
        await answer.tool_context.http.aclose()
    await writer.aclose()


async def test_answers_share_a_round_trip_and_keep_their_order(
    settings: Settings, client: redis.Redis
) -> None:
    """Many answers writing at once each get their own events, complete and in order."""
    await _many_answers(settings, client)


async def test_answers_in_many_slots_on_a_cluster(
    settings: Settings, local_cluster: LocalRedisCluster
) -> None:
    """On a Redis Cluster, one batch spans the answers' slots (the pipeline is split by node)
    and every answer still gets its own events, complete and in order."""
    client = cluster.create_client(local_cluster.url)
    await redis_client.initialize(client)
    try:
        await _many_answers(settings, client)
    finally:
        await client.aclose()


async def test_a_failed_write_fails_only_its_answer(
    settings: Settings, client: redis.Redis
) -> None:
    """An XADD refused by Redis fails its answer (flush and later tokens raise, nothing more is
    written for it) while another answer of the same batch is written."""
    writer = ReplyWriter(client)
    broken, healthy = _answer(writer, settings, client), _answer(writer, settings, client)
    await client.set(broken.key, "not a stream")
    await broken.token("lost")
    await healthy.token("kept")
    with pytest.raises(redis.ResponseError):
        await broken.flush()
    await healthy.flush()
    with pytest.raises(redis.ResponseError):
        await broken.token("after")
    await broken.settled()  # settling never raises
    assert broken.transcript.reply == ""
    assert [e.content for e in await _stream(client, healthy)] == ["kept"]
    alone = _answer(writer, settings, client)  # a lone write takes the plain XADD path
    await client.set(alone.key, "not a stream")
    with pytest.raises(redis.ResponseError):
        await alone.emit(End(alone.request.message_id, 0))
    await writer.aclose()
    for answer in (broken, healthy, alone):
        await answer.tool_context.http.aclose()

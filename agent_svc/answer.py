"""One answer being written to its reply stream (the sink a model streams into), and the
process-wide `ReplyWriter` that appends every answer's events to Redis.

Every event goes to `chat:reply:{message_id}` as soon as it happens and into a `Transcript` of
what readers have seen. Events are never held back to wait for others; but while a write is in
flight, the events produced meanwhile queue up, and the next write sends all of them at once:
consecutive text deltas of one answer become one `token` entry with their texts joined (the
visible text is identical, and an event id still names one entry, so resume stays exact), and
the entries of every answer of the process go out in one pipeline, one round trip. Under light
load each delta is its own entry, as the model streamed it; under load a process costs fewer
Redis commands per token instead of falling behind.

An answer resumed by another worker starts from the transcript rebuilt from the stream, so it
appends rather than repeats: `continuation()` tells a model what was already said, and the
whitespace a model drops when continuing (the API refuses a prefill ending in whitespace) is not
sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

import redis.asyncio as redis

from agent_svc.tools import ToolContext, ToolOutcome, ToolRegistry
from shared import chat_wire, keys
from shared.chat_wire import ChatRequest, ReplyEvent, Token, ToolCall, ToolResult, Transcript
from shared.redis_client import RedisClient

log = logging.getLogger(__name__)

# A queued event and its encoding (None for a token: its text may still grow until it is sent).
Queued = tuple[ReplyEvent, bytes | None]


class ReplyWriter:
    """Appends queued reply events of many answers, one pipeline per round trip, in order.

    One drain task runs while any answer has unsent events; it takes every answer's queue, sends
    them as one non-transactional pipeline (an `XADD` per event; in Redis Cluster the pipeline
    is split by node, each key is one stream), and repeats while more was queued meanwhile.
    Writes of one answer are therefore never reordered and never overlap."""

    def __init__(self, client: RedisClient) -> None:
        self._redis = client
        self._queued: dict[Answer, None] = {}  # answers with unsent events, first come first
        self._task: asyncio.Task[None] | None = None

    def enqueue(self, answer: Answer) -> None:
        """Have `answer`'s queued events written (starts the drain task if idle)."""
        self._queued[answer] = None
        if self._task is None:
            self._task = asyncio.create_task(self._drain())

    async def aclose(self) -> None:
        """Stop writing (what is still queued is not written; its answers get the error)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        failed, self._queued = list(self._queued), {}
        for answer in failed:
            answer.written(answer.take(), [ConnectionError("the reply writer stopped")])

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch = [(answer, answer.take()) for answer in self._queued]
                self._queued = {}
                await self._write(batch)
        finally:
            self._task = None

    async def _write(self, batch: list[tuple[Answer, list[Queued]]]) -> None:
        commands = [
            (answer.key, encoded if encoded is not None else chat_wire.encode(event))
            for answer, events in batch
            for event, encoded in events
        ]
        try:
            results = await self._send(commands)
        except asyncio.CancelledError:
            for answer, events in batch:
                answer.written(events, [ConnectionError("the reply writer stopped")])
            raise
        except Exception as exc:  # never leave an answer waiting for a write that is over
            log.warning("writing reply events failed", extra={"error": repr(exc)})
            for answer, events in batch:
                answer.written(events, [exc])
            return
        position = 0
        for answer, events in batch:
            answer.written(events, results[position : position + len(events)])
            position += len(events)

    async def _send(self, commands: list[tuple[str, bytes]]) -> list[Any]:
        """XADD each `(key, event_json)`; a reply per command, an exception for a refused one.
        A lone command skips the pipeline, which costs about 25 % more client CPU for one."""
        if len(commands) == 1:
            key, data = commands[0]
            try:
                return [await self._redis.xadd(key, {chat_wire.EVENT_FIELD: data})]
            except redis.ResponseError as exc:
                return [exc]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, data in commands:
                pipe.xadd(key, {chat_wire.EVENT_FIELD: data})
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results


class Answer:
    """Appends events for one request. Not shared between tasks; events keep call order."""

    def __init__(
        self,
        writer: ReplyWriter,
        request: ChatRequest,
        transcript: Transcript,
        registry: ToolRegistry,
        tool_context: ToolContext,
    ) -> None:
        self.request = request
        self.transcript = transcript
        self.registry = registry
        self.tool_context = tool_context
        self.tokens_used = 0
        self.key = keys.chat_reply_stream(request.message_id)
        self._writer = writer
        self._skip = ""  # whitespace already sent that a continuing model will send again
        self._queue: list[Queued] = []  # not yet taken by the writer
        self._unsent = 0  # events queued or in flight
        self._flushed: asyncio.Future[None] | None = None  # resolved once `_unsent` is 0
        self._failure: BaseException | None = None

    def _put(self, event: ReplyEvent) -> None:
        if self._failure is not None:
            raise self._failure
        last = self._queue[-1][0] if self._queue else None
        if isinstance(event, Token):
            if isinstance(last, Token):
                last.content += event.content  # still unsent: one entry carries both deltas
            else:
                self._queue.append((event, None))
                self._unsent += 1
        else:
            self._queue.append((event, chat_wire.encode(event)))  # bad input fails its caller
            self._unsent += 1
        if self._flushed is None:
            self._flushed = asyncio.get_running_loop().create_future()
        self._writer.enqueue(self)

    def take(self) -> list[Queued]:
        """The writer's side: the queued events, now in flight (none once the answer failed:
        a later event must not follow a lost one)."""
        events, self._queue = self._queue, []
        if self._failure is not None:
            self._unsent -= len(events)
            return []
        return events

    def written(self, events: list[Queued], results: list[Any]) -> None:
        """The writer's side: `events` were written (`results`: the replies, or one error for
        all). The written ones go into the transcript; the first error fails the answer."""
        for (event, _), result in zip(events, results, strict=False):
            if isinstance(result, BaseException):
                break
            self.transcript.feed(event)
        error = next((r for r in results if isinstance(r, BaseException)), None)
        self._unsent -= len(events)
        if error is not None and self._failure is None:
            self._failure = error
        flushed = self._flushed
        if flushed is None or (self._unsent and self._failure is None):
            return
        self._flushed = None
        if not flushed.done():
            if self._failure is not None:
                flushed.set_exception(self._failure)
                flushed.exception()  # retrieved: nobody may be waiting, that is not an error
            else:
                flushed.set_result(None)

    async def flush(self) -> None:
        """Return once every event so far is written. Raises the error of a failed write (the
        answer cannot go on: its stream may miss events). A cancel of the caller leaves the
        writes going; the stream and the transcript never disagree."""
        if self._failure is not None:
            raise self._failure
        if self._flushed is not None:
            await asyncio.shield(self._flushed)

    async def emit(self, event: ReplyEvent) -> None:
        """Append `event` after everything before it, and wait until it is written."""
        self._put(event)
        await self.flush()

    async def settled(self) -> None:
        """Return once no write is in flight (errors of that write are the writer's to report)."""
        with contextlib.suppress(Exception):
            await self.flush()

    async def token(self, text: str) -> None:
        """Append a text delta (empty deltas are dropped) without waiting for it to be written:
        the model reads on while it is. Raises the error of an earlier failed write."""
        while self._skip and text and text[0] == self._skip[0]:
            text, self._skip = text[1:], self._skip[1:]
        if text:
            self._skip = ""
            self._put(Token(content=text))

    def continuation(self) -> str:
        """The text of the unfinished last round, for a model to continue (a prefill), without
        trailing whitespace; empty when the answer starts fresh or stopped at a tool call."""
        last = self.transcript.rounds[-1]
        if last.calls or not last.text.strip():
            return ""
        prefill = last.text.rstrip()
        self._skip = last.text[len(prefill) :]
        return prefill

    async def call_tool(self, call_id: str, name: str, tool_input: dict[str, Any]) -> ToolOutcome:
        """Announce a tool call, run it, and append its result (errors included)."""
        await self.emit(ToolCall(id=call_id, name=name, input=tool_input))
        return await self.finish_tool(ToolCall(id=call_id, name=name, input=tool_input))

    async def finish_tool(self, call: ToolCall) -> ToolOutcome:
        """Run an announced call and append its result."""
        context = dataclasses.replace(self.tool_context, call_id=call.id)
        outcome = await self.registry.run(call.name, call.input, context)
        await self.emit(
            ToolResult(
                id=call.id, name=call.name, content=outcome.content, is_error=outcome.is_error
            )
        )
        return outcome

"""One answer being written to its reply stream: the sink a model streams into.

Every event goes to `chat:reply:{message_id}` as it happens (one `XADD` each, so readers see the
model's real deltas) and into a `Transcript` of what readers have seen. An answer resumed by
another worker starts from the transcript rebuilt from the stream, so it appends rather than
repeats: `continuation()` tells a model what was already said, and the whitespace a model drops
when continuing (the API refuses a prefill ending in whitespace) is not sent twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from agent_svc.tools import ToolContext, ToolOutcome, ToolRegistry
from shared import chat_wire, keys
from shared.chat_wire import ChatRequest, ReplyEvent, Token, ToolCall, ToolResult, Transcript
from shared.redis_client import RedisClient


class Answer:
    """Appends events for one request. Not shared between tasks; events keep call order."""

    def __init__(
        self,
        client: RedisClient,
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
        self._redis = client
        self._key = keys.chat_reply_stream(request.message_id)
        self._skip = ""  # whitespace already sent that a continuing model will send again
        self._writing: asyncio.Future[None] | None = None

    async def emit(self, event: ReplyEvent) -> None:
        """Append `event` to the stream and the transcript, as one step.

        A cancel (the client's, or shutdown) that lands mid-write must not separate the two: the
        stored answer would then miss text a reader saw. The write is shielded, and `settled()`
        waits for a write the cancelled caller left in flight.
        """
        self._writing = asyncio.ensure_future(self._append(event))
        await asyncio.shield(self._writing)

    async def _append(self, event: ReplyEvent) -> None:
        await self._redis.xadd(self._key, {chat_wire.EVENT_FIELD: chat_wire.encode(event)})
        self.transcript.feed(event)

    async def settled(self) -> None:
        """Return once no write is in flight (errors of that write are the writer's to report)."""
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)

    async def token(self, text: str) -> None:
        """Append a text delta (empty deltas are dropped)."""
        while self._skip and text and text[0] == self._skip[0]:
            text, self._skip = text[1:], self._skip[1:]
        if text:
            self._skip = ""
            await self.emit(Token(content=text))

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

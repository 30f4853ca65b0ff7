"""Claude through the official `anthropic` SDK: async streaming with the tool-use loop.

Each text delta goes to the reply stream as it arrives. When a turn stops for `tool_use`, the
tools run (each call and result is an event), their results go back as a user turn, and the loop
continues, at most `MAX_TOOL_ROUNDS` times. Usage is the API's own input + output token counts,
summed over the rounds.

The SDK's raw event stream (`messages.create(stream=True)`) is read, not its `messages.stream()`
helper: the helper builds a second event object and updates a message snapshot for every delta,
which doubled the SDK's CPU per token (about 45 against 100 µs measured, docs/performance-notes.md).
`RoundResult` keeps only what the tool loop needs from a round: the stop reason, the usage and the
content blocks.

Failures become `ModelError` with a stable code, whatever their shape: an HTTP error before the
stream (the SDK has already retried 429/5xx/529 with backoff, never after output started), an
`error` event inside a 200 stream (an `APIStatusError` with status 200: classified by the body's
`error.type`), a timeout (`ANTHROPIC_TIMEOUT` of silence; once the stream is open the SDK
raises the bare `httpx2` error), or a stream that simply stops before `message_delta`
(`stop_reason` None: a cut stream is not a finished answer).

An answer reclaimed from a crashed worker is continued, not restarted: the rounds already streamed
are replayed to the API as the assistant's turns, and an unfinished text is sent as a prefill,
which the model continues.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
from anthropic import AsyncStream
from anthropic.types import RawMessageStreamEvent

from agent_svc.answer import Answer
from agent_svc.model import HistoryMessage, ModelError, Turn
from agent_svc.tools import ToolRegistry
from shared.settings import Settings

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 8

_CODES_BY_TYPE = {
    "rate_limit_error": ("MODEL_RATE_LIMITED", "the model is rate limited; try again shortly"),
    "overloaded_error": ("MODEL_OVERLOADED", "the model is overloaded; try again shortly"),
    "authentication_error": ("MODEL_AUTH_FAILED", "the model API refused our credentials"),
    "permission_error": ("MODEL_AUTH_FAILED", "the model API refused our credentials"),
    "invalid_request_error": ("MODEL_BAD_REQUEST", "the model API refused the request"),
    "request_too_large": ("MODEL_BAD_REQUEST", "the conversation is too large for the model"),
    "not_found_error": ("MODEL_BAD_REQUEST", "the configured model was not found"),
    "api_error": ("MODEL_UNAVAILABLE", "the model API failed"),
}
_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def classify(exc: anthropic.APIError | httpx2.HTTPError) -> ModelError:
    """The stable error for an SDK exception (pure; see the module docstring). Errors of the
    open stream's transport surface as the SDK's `httpx2` exceptions, unwrapped."""
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return ModelError("MODEL_TIMEOUT", "the model did not answer in time")
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelError("MODEL_UNAVAILABLE", "the model API is unreachable")
    if isinstance(exc, httpx2.HTTPError):
        return ModelError("MODEL_STREAM_CUT", "the model's stream broke off")
    error_type = ""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error_type = str(body["error"].get("type", ""))
    if not error_type and isinstance(exc, anthropic.APIStatusError):
        error_type = _TYPES_BY_STATUS.get(exc.status_code, "api_error")
    code, message = _CODES_BY_TYPE.get(error_type, ("MODEL_ERROR", "the model call failed"))
    return ModelError(code, message)


def conversation(history: list[HistoryMessage], message: str) -> list[dict[str, Any]]:
    """Messages API turns: history then the new message, consecutive same-role turns merged and
    empty ones dropped (the API wants non-empty, alternating turns starting with the user)."""
    turns: list[dict[str, Any]] = []
    for role, content in [(m.role, m.content) for m in history] + [("user", message)]:
        if not content.strip():
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        elif turns or role == "user":
            turns.append({"role": role, "content": content})
    return turns


@dataclass(slots=True)
class RoundResult:
    """One streamed round, folded from the API's raw events (`feed`, in stream order).

    `blocks` are the round's text and `tool_use` blocks as request params (other block types are
    not sent back); a tool's `input` is parsed from its `input_json_delta` fragments when its
    block stops. `stop_reason` stays None unless `message_delta` arrived (a cut stream). Usage
    counts in `message_delta` are cumulative, so they replace those of `message_start`."""

    stop_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    blocks: list[dict[str, Any]] = field(default_factory=list)
    _by_index: dict[int, dict[str, Any]] = field(default_factory=dict)
    _parts: dict[int, list[str]] = field(default_factory=dict)

    def feed(self, event: RawMessageStreamEvent) -> str:
        """Fold `event` in; returns its text delta ("" for any other event).

        Raises `ModelError` (`MODEL_ERROR`) for a tool input that is not a JSON object."""
        if event.type == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                self._parts[event.index].append(delta.text)
                return delta.text
            if delta.type == "input_json_delta":
                self._parts[event.index].append(delta.partial_json)
        elif event.type == "content_block_start":
            block = event.content_block
            param: dict[str, Any] = {"type": block.type}
            if block.type == "tool_use":
                param |= {"id": block.id, "name": block.name, "input": block.input}
            elif block.type == "text":
                param["text"] = block.text
            self._by_index[event.index] = param
            self._parts[event.index] = []
            if block.type in ("text", "tool_use"):
                self.blocks.append(param)
        elif event.type == "content_block_stop":
            self._finish_block(event.index)
        elif event.type == "message_start":
            self.input_tokens = event.message.usage.input_tokens
            self.output_tokens = event.message.usage.output_tokens
        elif event.type == "message_delta":
            self.stop_reason = event.delta.stop_reason
            self.output_tokens = event.usage.output_tokens
            if event.usage.input_tokens is not None:
                self.input_tokens = event.usage.input_tokens
        return ""

    def _finish_block(self, index: int) -> None:
        param, parts = self._by_index.get(index), self._parts.pop(index, [])
        if param is None:
            return
        if param["type"] == "text":
            param["text"] += "".join(parts)
        elif param["type"] == "tool_use" and "".join(parts):
            try:
                tool_input = json.loads("".join(parts))
            except ValueError:
                tool_input = None
            if not isinstance(tool_input, dict):
                raise ModelError("MODEL_ERROR", "the model sent a malformed tool input")
            param["input"] = tool_input

    def params(self) -> list[dict[str, Any]]:
        """The assistant turn to send back: non-empty text blocks and the tool calls."""
        return [b for b in self.blocks if b["type"] == "tool_use" or b.get("text")]

    def tool_calls(self) -> list[dict[str, Any]]:
        return [b for b in self.blocks if b["type"] == "tool_use"]


class ClaudeModel:
    """Streams answers from the Messages API. One instance (one HTTP pool) per process."""

    name = "claude"

    def __init__(self, settings: Settings, registry: ToolRegistry) -> None:
        self._settings = settings
        self._tools = registry.specs() or anthropic.omit  # tools are registered at start-up
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key,
            base_url=settings.anthropic_base_url or None,
            timeout=settings.anthropic_timeout,
            max_retries=2,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def answer(self, turn: Turn, out: Answer) -> None:
        messages = conversation(turn.history, turn.message)
        await self._replay(out, messages)
        prefill = out.continuation()
        for _ in range(MAX_TOOL_ROUNDS):
            if prefill:
                messages.append({"role": "assistant", "content": prefill})
            try:
                final = await self._stream_round(messages, out)
            except (anthropic.APIError, httpx2.HTTPError) as exc:
                error = classify(exc)
                log.warning("model call failed", extra={"code": error.code, "error": repr(exc)})
                raise error from None
            out.tokens_used += final.input_tokens + final.output_tokens
            if final.stop_reason is None:
                raise ModelError("MODEL_STREAM_CUT", "the model's stream ended unexpectedly")
            if final.stop_reason != "tool_use":
                return
            blocks = final.params()
            if prefill:
                messages.pop()
                blocks.insert(0, {"type": "text", "text": prefill})
                prefill = ""
            messages.append({"role": "assistant", "content": blocks})
            results = []
            for call in final.tool_calls():
                outcome = await out.call_tool(call["id"], call["name"], dict(call["input"]))
                results.append(_tool_result(call["id"], outcome.content, outcome.is_error))
            messages.append({"role": "user", "content": results})
        raise ModelError("MODEL_TOOL_LOOP", f"more than {MAX_TOOL_ROUNDS} tool rounds")

    async def _stream_round(self, messages: list[dict[str, Any]], out: Answer) -> RoundResult:
        result = RoundResult()
        stream: AsyncStream[RawMessageStreamEvent] = await self._client.messages.create(
            model=self._settings.anthropic_model,
            max_tokens=self._settings.anthropic_max_tokens,
            system=self._settings.agent_system_prompt,
            messages=messages,  # type: ignore[arg-type]  # plain dicts of the documented shape
            tools=self._tools,  # type: ignore[arg-type]
            stream=True,
        )  # type: ignore[assignment]  # the overload is lost to the two ignores above
        async with stream:
            async for event in stream:
                text = result.feed(event)
                if text:
                    await out.token(text)
        return result

    async def _replay(self, out: Answer, messages: list[dict[str, Any]]) -> None:
        """Append the rounds a previous worker already streamed (running a tool whose result
        never made it to the stream), so the API sees the answer so far."""
        for r in out.transcript.rounds:
            if not r.calls:
                continue
            blocks: list[dict[str, Any]] = [{"type": "text", "text": r.text}] if r.text else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in r.calls
            ]
            results = []
            for call in r.calls:
                done = r.results.get(call.id)
                if done is None:
                    outcome = await out.finish_tool(call)
                    results.append(_tool_result(call.id, outcome.content, outcome.is_error))
                else:
                    results.append(_tool_result(call.id, done.content, done.is_error))
            messages += [
                {"role": "assistant", "content": blocks},
                {"role": "user", "content": results},
            ]


def _tool_result(tool_use_id: str, content: str, is_error: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}
    if is_error:
        result["is_error"] = True
    return result

"""Claude through the official `anthropic` SDK: async streaming with the tool-use loop.

Each text delta goes to the reply stream as it arrives. When a turn stops for `tool_use`, the
tools run (each call and result is an event), their results go back as a user turn, and the loop
continues, at most `MAX_TOOL_ROUNDS` times. Usage is the API's own input + output token counts,
summed over the rounds.

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

import logging
from typing import Any

import anthropic
import httpx2
from anthropic.types import Message

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
        return ModelError("MODEL_TIMEOUT", "the model did not answer in time", retryable=True)
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelError("MODEL_UNAVAILABLE", "the model API is unreachable", retryable=True)
    if isinstance(exc, httpx2.HTTPError):
        return ModelError("MODEL_STREAM_CUT", "the model's stream broke off", retryable=True)
    error_type = ""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error_type = str(body["error"].get("type", ""))
    if not error_type and isinstance(exc, anthropic.APIStatusError):
        error_type = _TYPES_BY_STATUS.get(exc.status_code, "api_error")
    code, message = _CODES_BY_TYPE.get(error_type, ("MODEL_ERROR", "the model call failed"))
    return ModelError(code, message, retryable=code in {"MODEL_RATE_LIMITED", "MODEL_OVERLOADED"})


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


def _block_params(content: list[Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for block in content:
        if block.type == "text" and block.text:
            blocks.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            blocks.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
    return blocks


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
            out.tokens_used += final.usage.input_tokens + final.usage.output_tokens
            if final.stop_reason is None:
                raise ModelError("MODEL_STREAM_CUT", "the model's stream ended unexpectedly")
            if final.stop_reason != "tool_use":
                return
            blocks = _block_params(final.content)
            if prefill:
                messages.pop()
                blocks.insert(0, {"type": "text", "text": prefill})
                prefill = ""
            messages.append({"role": "assistant", "content": blocks})
            results = []
            for block in final.content:
                if block.type == "tool_use":
                    outcome = await out.call_tool(block.id, block.name, dict(block.input))
                    results.append(_tool_result(block.id, outcome.content, outcome.is_error))
            messages.append({"role": "user", "content": results})
        raise ModelError("MODEL_TOOL_LOOP", f"more than {MAX_TOOL_ROUNDS} tool rounds")

    async def _stream_round(self, messages: list[dict[str, Any]], out: Answer) -> Message:
        async with self._client.messages.stream(
            model=self._settings.anthropic_model,
            max_tokens=self._settings.anthropic_max_tokens,
            system=self._settings.agent_system_prompt,
            messages=messages,  # type: ignore[arg-type]  # plain dicts of the documented shape
            tools=self._tools,  # type: ignore[arg-type]
        ) as stream:
            async for event in stream:
                if event.type == "text":
                    await out.token(event.text)
            return await stream.get_final_message()

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

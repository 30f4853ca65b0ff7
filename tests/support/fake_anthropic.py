"""A fake Anthropic Messages API on a loopback port, speaking the real streaming wire format.

The official SDK runs against it through `base_url`. Frames follow
/work/shared/reference/anthropic-streaming.md: named `event:` lines equal to the `type` in
`data:`, every frame (the last included) ending with a blank line, `ping` interleaved, the empty
first `partial_json` of a tool_use block, cumulative usage in `message_delta`, mid-stream `error`
events, HTTP 429/529 JSON errors, truncated streams, and configurable pacing.

Replies are scripted per test: `fake.script(key, reply, ...)` answers the requests whose latest
user text contains `key` with the given replies in order. A text reply is a deterministic model:
asked to continue an assistant prefill, it streams the rest of its text after that prefill, as
Claude continues a prefilled turn. Every request body is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.threaded_server import ThreadedServer


@dataclass
class Frame:
    event: str
    data: dict[str, Any]
    delay: float = 0.0  # seconds to wait before sending this frame


@dataclass
class Reply:
    """One scripted answer: a 200 event stream, or an HTTP error (`status` != 200)."""

    frames: list[Frame] = field(default_factory=list)
    status: int = 200
    error_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    text_chunks: list[str] | None = None  # a continuable text reply (see `text`)
    delay: float = 0.0
    hang: float = 0.0  # after the frames, stay silent this long before closing


def _frame(event: str, **data: Any) -> Frame:
    return Frame(event, {"type": event, **data})


def _message_start(input_tokens: int) -> Frame:
    return _frame(
        "message_start",
        message={
            "id": "msg_01FAKE",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-6",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    )


def _text_frames(index: int, chunks: list[str], delay: float) -> list[Frame]:
    frames = [
        _frame("content_block_start", index=index, content_block={"type": "text", "text": ""})
    ]
    for n, chunk in enumerate(chunks):
        if n == 1:
            frames.append(_frame("ping"))
        delta = {"type": "text_delta", "text": chunk}
        frames.append(
            Frame(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
                delay,
            )
        )
    frames.append(_frame("content_block_stop", index=index))
    return frames


def _end(stop_reason: str, output_tokens: int) -> list[Frame]:
    return [
        _frame(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"output_tokens": output_tokens},
        ),
        _frame("message_stop"),
    ]


def text(
    *chunks: str, delay: float = 0.0, input_tokens: int = 25, output_tokens: int = 12
) -> Reply:
    """A text answer streamed as `chunks` (continuable: see the module docstring)."""
    return Reply(
        frames=[
            _message_start(input_tokens),
            *_text_frames(0, list(chunks), delay),
            *_end("end_turn", output_tokens),
        ],
        text_chunks=list(chunks),
        delay=delay,
    )


def tool_use(
    tool_id: str,
    name: str,
    tool_input: dict[str, Any],
    *,
    preface: str = "Let me check.",
    input_tokens: int = 377,
    output_tokens: int = 65,
) -> Reply:
    """Text at index 0, then a tool_use block whose input arrives as JSON fragments."""
    encoded = json.dumps(tool_input)
    middle = max(1, len(encoded) // 2)
    frames = [_message_start(input_tokens), *_text_frames(0, [preface], 0.0)]
    frames.append(
        _frame(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": tool_id, "name": name, "input": {}},
        )
    )
    for part in ("", encoded[:middle], encoded[middle:]):
        frames.append(
            _frame(
                "content_block_delta",
                index=1,
                delta={"type": "input_json_delta", "partial_json": part},
            )
        )
    frames.append(_frame("content_block_stop", index=1))
    return Reply(frames=frames + _end("tool_use", output_tokens))


def error_midstream(*chunks: str, error_type: str = "overloaded_error") -> Reply:
    """Some text, then an `error` event inside the 200 stream."""
    frames = [_message_start(10), *_text_frames(0, list(chunks), 0.0)[:-1]]
    frames.append(_frame("error", error={"type": error_type, "message": "Overloaded"}))
    return Reply(frames=frames)


def truncated(*chunks: str) -> Reply:
    """A stream that stops mid-block, without `message_delta` or `message_stop`."""
    return Reply(frames=[_message_start(10), *_text_frames(0, list(chunks), 0.0)[:-1]])


def silent(seconds: float) -> Reply:
    """`message_start`, then nothing for `seconds` (a stalled model)."""
    return Reply(frames=[_message_start(10)], hang=seconds)


def http_error(status: int, error_type: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, error_type=error_type, headers=headers or {})


def _continuation(reply: Reply, prefill: str) -> list[Frame]:
    """The frames of a continuable text reply asked to continue `prefill`."""
    assert reply.text_chunks is not None
    full = "".join(reply.text_chunks)
    assert full.startswith(prefill), f"prefill {prefill!r} is not a prefix of {full!r}"
    rest, chunks, seen = full[len(prefill) :], [], 0
    for chunk in reply.text_chunks:
        start, seen = seen, seen + len(chunk)
        if seen > len(prefill):
            chunks.append(chunk[max(0, len(prefill) - start) :])
    assert "".join(chunks) == rest
    return [_message_start(30), *_text_frames(0, chunks, reply.delay), *_end("end_turn", 12)]


def _latest_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        if texts:
            return "\n".join(texts)
    return ""


def _prefill(body: dict[str, Any]) -> str:
    messages = body.get("messages", [])
    if messages and messages[-1].get("role") == "assistant":
        content = messages[-1]["content"]
        return content if isinstance(content, str) else ""
    return ""


class FakeAnthropic:
    """The server. Start with `start()` (returns self), stop with `stop()`; thread-safe scripts."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._scripts: dict[str, deque[Reply]] = {}
        self._last: dict[str, Reply] = {}
        self._lock = threading.Lock()
        routes = [Route("/v1/messages", self._messages, methods=["POST"])]
        self._http = ThreadedServer("fake Anthropic server", routes)

    @property
    def url(self) -> str:
        return self._http.origin

    def start(self) -> FakeAnthropic:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def script(self, key: str, *replies: Reply) -> None:
        """Answer requests whose latest user text contains `key` with `replies`, in order."""
        with self._lock:
            self._scripts[key] = deque(replies)

    def requests_for(self, key: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if key in _latest_user_text(r)]

    def _next_reply(self, body: dict[str, Any]) -> Reply | None:
        """The next scripted reply; a request continuing a prefill gets the text reply it
        continues again (a deterministic model says the same thing twice)."""
        prompt = _latest_user_text(body)
        with self._lock:
            self.requests.append(body)
            for key, replies in self._scripts.items():
                if key not in prompt:
                    continue
                last = self._last.get(key)
                if _prefill(body) and last is not None and last.text_chunks is not None:
                    return last
                if replies:
                    self._last[key] = replies.popleft()
                    return self._last[key]
        return None

    async def _messages(self, request: Request) -> Response:
        if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
            return _error(401, "authentication_error", {})
        body = await request.json()
        self.headers.append(dict(request.headers))
        reply = self._next_reply(body)
        if reply is None:
            return _error(400, "invalid_request_error", {})
        if reply.status != 200:
            return _error(reply.status, reply.error_type, reply.headers)
        frames = reply.frames
        prefill = _prefill(body)
        if prefill and reply.text_chunks is not None:
            frames = _continuation(reply, prefill)
        return StreamingResponse(
            _stream(frames, reply.hang),
            media_type="text/event-stream",
            headers={"request-id": "req_fake", "cache-control": "no-cache"},
        )


async def _stream(frames: list[Frame], hang: float) -> AsyncIterator[bytes]:
    for frame in frames:
        if frame.delay:
            await asyncio.sleep(frame.delay)
        yield f"event: {frame.event}\ndata: {json.dumps(frame.data)}\n\n".encode()
    if hang:
        await asyncio.sleep(hang)


def _error(status: int, error_type: str, headers: dict[str, str]) -> Response:
    body = {
        "type": "error",
        "error": {"type": error_type, "message": f"fake {error_type}"},
        "request_id": "req_fake",
    }
    return JSONResponse(body, status, headers={"request-id": "req_fake", **headers})

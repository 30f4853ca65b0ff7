"""Chat wire formats: the request stream entry, the reply events, and their SSE/WebSocket framing.

Pure code, no I/O. A chat request is one entry of the `chat:requests` stream (field `r`, signed
by the gateway: `sign_request`/`verify_request`); an
answer is a stream of reply events, one entry each (field `e`), in the seed's SSE shapes:
`start`(session_id, message_id) · `token`(content) · `tool_call` · `tool_result` ·
`end`(message_id, tokens_used) · `error`. Entry ids are the SSE event ids. New fields always get
defaults, so old and new workers and gateways interoperate.

Framing: the seed's POST stream is `data: {json}\\n\\n` per event with the entry id inside the JSON
(`event_id`); the resume stream adds standard `id:` lines; WebSocket streaming wraps the same JSON
in a `chat_event` frame. The event JSON is spliced, never decoded and re-encoded, on the way out.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from typing import Any

import msgspec

from shared.wire import ErrorBody

# Stream entry field names (short: every token of every answer carries one).
REQUEST_FIELD = b"r"
EVENT_FIELD = b"e"
OWNER_FIELD = b"u"  # on the `start` entry only: the user the answer belongs to


class ChatErrorCode(enum.StrEnum):
    """`error.code` of a failed answer (SSE `error` event, WebSocket `error` frame) and of a
    refused chat request. MODEL_*: the model provider failed (rate limit 429, overloaded 529,
    auth, bad request, unavailable or 5xx, ANTHROPIC_TIMEOUT of silence, stream cut short, more
    than 8 tool rounds, anything else); AGENT_FAILED: the request failed 5 deliveries;
    AGENT_ERROR: a bug; ANSWER_EXPIRED: the reply stream expired under the reader;
    ANSWER_INTERRUPTED: the gateway could not reach Redis for `READ_OUTAGE` (30 s) while
    reading the answer (it goes on being written: resume it);
    CHAT_BUSY: an answer already streams in the session (details name it); CHAT_UNAVAILABLE: no
    agent worker runs; NOTHING_TO_CANCEL / ANSWER_NOT_FOUND / SESSION_NOT_FOUND: no such thing
    of the caller's; VALIDATION_ERROR: an empty message or one with NUL characters;
    CHAT_QUEUE_FULL / SESSION_LIMIT / TOKEN_BUDGET_EXHAUSTED: a per-user limit refused the
    question (details carry `retry_after`).
    """

    MODEL_RATE_LIMITED = "MODEL_RATE_LIMITED"
    MODEL_OVERLOADED = "MODEL_OVERLOADED"
    MODEL_AUTH_FAILED = "MODEL_AUTH_FAILED"
    MODEL_BAD_REQUEST = "MODEL_BAD_REQUEST"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    MODEL_TIMEOUT = "MODEL_TIMEOUT"
    MODEL_STREAM_CUT = "MODEL_STREAM_CUT"
    MODEL_TOOL_LOOP = "MODEL_TOOL_LOOP"
    MODEL_ERROR = "MODEL_ERROR"
    AGENT_FAILED = "AGENT_FAILED"
    AGENT_ERROR = "AGENT_ERROR"
    ANSWER_EXPIRED = "ANSWER_EXPIRED"
    ANSWER_INTERRUPTED = "ANSWER_INTERRUPTED"
    CHAT_BUSY = "CHAT_BUSY"
    CHAT_UNAVAILABLE = "CHAT_UNAVAILABLE"
    NOTHING_TO_CANCEL = "NOTHING_TO_CANCEL"
    ANSWER_NOT_FOUND = "ANSWER_NOT_FOUND"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    CHAT_QUEUE_FULL = "CHAT_QUEUE_FULL"
    SESSION_LIMIT = "SESSION_LIMIT"
    TOKEN_BUDGET_EXHAUSTED = "TOKEN_BUDGET_EXHAUSTED"


class ChatRequest(msgspec.Struct, frozen=True):
    """One question for the agent workers. `message_id` names the answer (and its reply stream);
    `user_message_id` the stored question, so a reclaimed request stores it only once."""

    message_id: str
    user_message_id: str
    session_id: str
    user_id: str
    message: str
    created_at: str


class Start(msgspec.Struct, tag="start", tag_field="type"):
    session_id: str
    message_id: str


class Token(msgspec.Struct, tag="token", tag_field="type"):
    content: str


class ToolCall(msgspec.Struct, tag="tool_call", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResult(msgspec.Struct, tag="tool_result", tag_field="type"):
    id: str
    name: str
    content: str
    is_error: bool = False


class End(msgspec.Struct, tag="end", tag_field="type"):
    """The answer is finished; `status` is `complete` or `cancelled` (partial answer kept)."""

    message_id: str
    tokens_used: int
    status: str = "complete"


class Error(msgspec.Struct, tag="error", tag_field="type"):
    """The answer failed; `error.code` is stable (e.g. `MODEL_RATE_LIMITED`)."""

    message_id: str
    error: ErrorBody


ReplyEvent = Start | Token | ToolCall | ToolResult | End | Error


# The events as clients receive them: the stored event with its stream entry id spliced in as
# `event_id` (`with_event_id`). Subclasses, so a field added to an event reaches the contract.


class StartEvent(Start, kw_only=True):
    event_id: str


class TokenEvent(Token, kw_only=True):
    event_id: str


class ToolCallEvent(ToolCall, kw_only=True):
    event_id: str


class ToolResultEvent(ToolResult, kw_only=True):
    event_id: str


class EndEvent(End, kw_only=True):
    event_id: str


class ErrorEvent(Error, kw_only=True):
    """`ANSWER_EXPIRED` (the reply stream expired under the reader) and `ANSWER_INTERRUPTED`
    (Redis unreachable for too long while reading it) come without `event_id`."""

    event_id: str = ""


ChatEvent = StartEvent | TokenEvent | ToolCallEvent | ToolResultEvent | EndEvent | ErrorEvent


class ChatEventFrame(msgspec.Struct, tag="chat_event", tag_field="type"):
    """WebSocket streaming frame (opt-in with `"stream": true`): one reply event."""

    event: ChatEvent


TERMINAL_EVENTS = (End, Error)

_encoder = msgspec.json.Encoder()
encode = _encoder.encode
decode_request = msgspec.json.Decoder(ChatRequest).decode


# Signed requests. Whoever can write to Redis could otherwise queue a question with any
# `user_id`, which a worker would answer with that user's tools. The gateway signs each encoded
# request with a key derived from INTERNAL_TOKEN (which gateways and agents hold, Redis does
# not); a worker verifies before decoding. Entry value: b"v1." + hex HMAC-SHA256 + b"." + JSON.
_SIGNED_PREFIX = b"v1."
_MAC_HEX = 64


class ForgedRequest(ValueError):
    """A request entry without a valid signature (forged, altered, or from an unsigned writer)."""


def request_key(internal_token: str) -> bytes:
    """The HMAC key for chat requests, derived so the token itself is never used as one."""
    return hmac.new(internal_token.encode(), b"realtime chat request v1", hashlib.sha256).digest()


def sign_request(key: bytes, encoded: bytes) -> bytes:
    """The stream entry value for an encoded request."""
    mac = hmac.new(key, encoded, hashlib.sha256).hexdigest().encode()
    return _SIGNED_PREFIX + mac + b"." + encoded


def verify_request(key: bytes, value: bytes) -> bytes:
    """The encoded request inside a signed entry value; `ForgedRequest` unless its signature
    verifies (compared in constant time)."""
    prefix, mac, dot = _SIGNED_PREFIX, slice(3, 3 + _MAC_HEX), 3 + _MAC_HEX
    if not value.startswith(prefix) or value[dot : dot + 1] != b".":
        raise ForgedRequest("request is not signed")
    encoded = value[dot + 1 :]
    expected = hmac.new(key, encoded, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(value[mac], expected):
        raise ForgedRequest("request signature does not verify")
    return encoded


decode_event = msgspec.json.Decoder(ReplyEvent).decode


def error_event(message_id: str, code: str, message: str, details: Any = None) -> Error:
    return Error(
        message_id=message_id, error=ErrorBody(code=code, message=message, details=details)
    )


def is_terminal(event_json: bytes) -> bool:
    """Whether an encoded event ends its answer (cheap: no full decode)."""
    return event_json.startswith((b'{"type":"end"', b'{"type":"error"'))


def with_event_id(event_json: bytes, event_id: str) -> bytes:
    """The event JSON with `event_id` added as its first field (`event_json` is an object)."""
    return b'{"event_id":"' + event_id.encode() + b'",' + event_json[1:]


def sse_data(event_json: bytes, event_id: str) -> bytes:
    """A POST-stream event: one `data:` line and a blank line, as the seed's client parses it."""
    return b"data: " + with_event_id(event_json, event_id) + b"\n\n"


def sse_resumable(event_json: bytes, event_id: str) -> bytes:
    """A resume-stream event: standard SSE with an `id:` line (EventSource's Last-Event-ID)."""
    return b"id: " + event_id.encode() + b"\n" + sse_data(event_json, event_id)


SSE_KEEPALIVE = b": keep-alive\n\n"


def ws_chat_event(event_json: bytes, event_id: str) -> bytes:
    """The WebSocket streaming frame (opt-in): `{"type":"chat_event","event":{...}}`."""
    return b'{"type":"chat_event","event":' + with_event_id(event_json, event_id) + b"}"


class Round(msgspec.Struct):
    """One model turn as the client saw it: text, then the tool calls it made (with results)."""

    text: str = ""
    calls: list[ToolCall] = msgspec.field(default_factory=list)
    results: dict[str, ToolResult] = msgspec.field(default_factory=dict)


class Transcript:
    """An answer folded from its reply events, in order: what the client has seen so far.

    Used by the gateway to build the seed's complete `message` frame, and by a worker that
    reclaims an interrupted answer to continue it exactly where the reply stream stops.
    A token after tool calls opens a new round (the model continued after the tool results).
    """

    def __init__(self) -> None:
        self.rounds: list[Round] = [Round()]
        self.ending: End | Error | None = None

    def feed(self, event: ReplyEvent) -> None:
        current = self.rounds[-1]
        if isinstance(event, Token):
            if current.calls:
                current = Round()
                self.rounds.append(current)
            current.text += event.content
        elif isinstance(event, ToolCall):
            current.calls.append(event)
        elif isinstance(event, ToolResult):
            current.results[event.id] = event
        elif isinstance(event, End | Error):
            self.ending = event

    @property
    def reply(self) -> str:
        return "".join(r.text for r in self.rounds)

    def tool_calls(self) -> list[dict[str, Any]]:
        """Every tool call with its result: `{id, name, input, result, is_error}`."""
        calls: list[dict[str, Any]] = []
        for r in self.rounds:
            for call in r.calls:
                result = r.results.get(call.id)
                calls.append(
                    {
                        "id": call.id,
                        "name": call.name,
                        "input": call.input,
                        "result": result.content if result else None,
                        "is_error": result.is_error if result else False,
                    }
                )
        return calls

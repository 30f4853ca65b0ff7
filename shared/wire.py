"""Wire formats shared by the services: the seed's WebSocket frames and the pub/sub envelope.

Pure code, no I/O. Server frames are msgspec structs tagged by `type`, encoded once per event;
the same bytes go to every recipient. Field names are the seed's (a compatibility promise): new
fields may be added with defaults, none removed or renamed.

Pub/sub envelope: `<meta JSON>\\n<client frame JSON>`. The gateway reads the small meta part
(sequence number, session to exclude) and forwards the frame part untouched — it never decodes
and re-encodes the frame per connection. JSON never contains a raw newline, so the first `\\n`
is an unambiguous separator.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec


def utc_now_iso() -> str:
    """The seed's timestamp format: ISO 8601 with UTC offset (`...T10:00:00.123456+00:00`)."""
    return datetime.now(UTC).isoformat()


# Server -> client frames (seed shapes).


class ConnectionEstablishedData(msgspec.Struct):
    session_id: str
    user_id: str
    connected_at: str


class ConnectionEstablished(msgspec.Struct, tag="connection_established", tag_field="type"):
    data: ConnectionEstablishedData


class Pong(msgspec.Struct, tag="pong", tag_field="type"):
    timestamp: str


class ToolCallRecord(msgspec.Struct):
    """A tool call of a finished answer, with its result (`Transcript.tool_calls`); also how
    the agent stores it (`GET /api/v1/sessions/{id}/messages`)."""

    id: str
    name: str
    input: dict[str, Any]
    result: str | None
    is_error: bool


class MessageData(msgspec.Struct):
    id: str
    reply: str
    tool_calls: list[ToolCallRecord]
    tokens_used: int
    created_at: str


class Message(msgspec.Struct, tag="message", tag_field="type"):
    data: MessageData


class NotificationData(msgspec.Struct):
    id: str
    title: str
    content: str
    notification_type: str
    action: dict[str, Any] | None
    created_at: str
    related_entity_type: str | None = None
    related_entity_id: str | None = None
    is_read: bool = False
    seq: int = 0


class Notification(msgspec.Struct, tag="notification", tag_field="type"):
    data: NotificationData
    timestamp: str


class ErrorBody(msgspec.Struct):
    code: Annotated[str, msgspec.Meta(description="stable, for programs (see the error codes)")]
    message: Annotated[str, msgspec.Meta(description="for humans; may change")]
    details: Any = None


class ErrorResponse(msgspec.Struct):
    """Every HTTP error body: `{"error": {"code", "message", "details"}}`."""

    error: ErrorBody


class Error(msgspec.Struct, tag="error", tag_field="type"):
    error: ErrorBody


class NotificationsChangedData(msgspec.Struct):
    """`change`: `read` (the `ids` were marked read), `all_read` (every notification; `ids` is
    empty) or `deleted` (the `ids` were deleted); `unread_count`: the user's count after it."""

    change: Literal["read", "all_read", "deleted"]
    ids: list[str]
    unread_count: int


class NotificationsChanged(msgspec.Struct, tag="notifications_changed", tag_field="type"):
    """Extension: the user's notifications changed (from any client, tab or service), so every
    connected client can update its inbox and badge live. Not stored, not replayed: a client that
    reconnects reloads its inbox instead."""

    data: NotificationsChangedData


ServerFrame = ConnectionEstablished | Pong | Message | Notification | Error | NotificationsChanged


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses. Every close also carries a short reason.

    1000 idle timeout (no frame for WS_CONNECTION_TIMEOUT seconds); 1008 policy violation
    (token missing/invalid/expired, foreign session, origin not allowed, bad last_seq, rate
    limit exceeded): do not retry with the same credentials; 1009 frame too large; 1011
    keepalive ping timeout or internal error: reconnect with backoff; 1012 server restarting:
    reconnect at once with last_seq; 1013 try again later (too many connections for the
    session, slow consumer, server at capacity, a dependency unavailable): reconnect with
    backoff and jitter, with last_seq.
    """

    NORMAL = 1000
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


class FrameErrorCode(enum.StrEnum):
    """`error.code` of the gateway's WebSocket `error` frames (chat adds the codes of
    `ChatErrorCode`). Bad input is answered with one of these and never closes the connection.

    INVALID_JSON not JSON (or nested too deep to parse); INVALID_MESSAGE not an object, no
    string `type`, a binary frame, or wrong fields for the type; UNKNOWN_TYPE a `type` the
    server does not know; RATE_LIMITED refused by a frame rate limit; TOKEN_INVALID a
    `refresh_token` with a bad token or another user's; TOO_MANY_IN_FLIGHT more chat frames
    of the connection being processed than allowed; PROCESSING_ERROR the server failed to
    process a valid frame.
    """

    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    RATE_LIMITED = "RATE_LIMITED"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOO_MANY_IN_FLIGHT = "TOO_MANY_IN_FLIGHT"
    PROCESSING_ERROR = "PROCESSING_ERROR"


_encoder = msgspec.json.Encoder()
encode = _encoder.encode
decode_server_frame = msgspec.json.Decoder(ServerFrame).decode


def error_frame(code: str, message: str, details: Any = None) -> bytes:
    return encode(Error(ErrorBody(code=code, message=message, details=details)))


# Pub/sub envelope.


class EnvelopeMeta(msgspec.Struct, omit_defaults=True):
    """Routing metadata published ahead of a frame. All fields optional, so old and new
    publishers and gateways interoperate."""

    seq: int | None = None  # per-user notification sequence, for gap detection and dedupe
    user_id: str | None = None
    exclude_session: str | None = None  # broadcast: skip this session's connections
    ts: float | None = None  # publish time (Unix seconds), for the gateway's fan-out latency
    # Topics (shared.topic_store): the topic of a publication, join or leave; a publication's
    # offset and epoch, so a gateway can drop duplicates and notice gaps.
    topic: str | None = None
    offset: int | None = None
    epoch: str | None = None


_meta_decoder = msgspec.json.Decoder(EnvelopeMeta)


def encode_envelope(frame: bytes, meta: EnvelopeMeta | None = None) -> bytes:
    """`frame` (already-encoded JSON) with its routing metadata, ready to PUBLISH."""
    return _encoder.encode(meta or EnvelopeMeta()) + b"\n" + frame


def decode_envelope(payload: bytes) -> tuple[EnvelopeMeta, bytes]:
    """Split a published payload; raises `ValueError` on anything that is not an envelope."""
    head, sep, frame = payload.partition(b"\n")
    if not sep or not frame:
        raise ValueError("not an envelope: missing meta/frame separator")
    try:
        return _meta_decoder.decode(head), frame
    except msgspec.DecodeError as exc:
        raise ValueError(f"not an envelope: {exc}") from None

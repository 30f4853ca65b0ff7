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

from datetime import UTC, datetime
from typing import Any

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


class MessageData(msgspec.Struct):
    id: str
    reply: str
    tool_calls: list[Any]
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
    code: str
    message: str
    details: Any = None


class Error(msgspec.Struct, tag="error", tag_field="type"):
    error: ErrorBody


ServerFrame = ConnectionEstablished | Pong | Message | Notification | Error

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
